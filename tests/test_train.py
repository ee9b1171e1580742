"""Training, resuming, evaluating and predicting with ``pvt train / eval / predict`` on tiny data.

Every run is PVTv2-B0 on a generated ImageFolder of 32x32 images (4 classes), a few steps long.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pvtv2 import create_model
from pvtv2.cli.main import main
from pvtv2.classification.config import ClassificationConfig
from pvtv2.classification.datasets import ImageFolder
from pvtv2.data import DatasetError
from pvtv2.engine.config import ConfigError
from pvtv2.engine.training_state import read_training_checkpoint
from pvtv2.engine.distributed import resolve_device
from pvtv2.models.keys import from_official

CLASSES = ["circle", "cross", "square", "stripes"]
SIZE = 32
REPO = Path(__file__).resolve().parents[1]


def _image(kind: str, rng: np.random.Generator) -> Image.Image:
    """A noisy 32x32 drawing of ``kind``: four classes a tiny model can tell apart in a few steps."""
    y, x = np.mgrid[:SIZE, :SIZE] - SIZE / 2 + rng.uniform(-3, 3, size=2)[:, None, None]
    shape = {
        "circle": x**2 + y**2 < 100,
        "cross": (abs(x) < 3) | (abs(y) < 3),
        "square": (abs(x) < 9) & (abs(y) < 9),
        "stripes": (x // 4) % 2 == 0,
    }[kind]
    pixels = shape[..., None] * rng.uniform(150, 255, size=3) + rng.normal(0, 20, size=(SIZE, SIZE, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny runs: see conftest.py


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageFolder root: train/ with 8 images per class (32), val/ with 3 per class (12)."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 3)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                _image(name, rng).save(root / split / name / f"{i}.png")
    return root


def tiny_config(folder: Path, output_dir: Path, **sections: dict) -> dict:
    """A config for seconds-long runs: 32x32 images, batch 8 (4 steps per epoch), 2 epochs, 1 warm-up epoch."""
    config = {
        "model": {"name": "pvt_v2_b0", "drop_path_rate": 0.0},
        "data": {"dataset": "folder", "root": str(folder), "img_size": SIZE, "num_workers": 0},
        "augment": {"repeated_aug": False, "eval_crop_pct": 1.0},
        "optim": {"epochs": 2, "batch_size": 8, "base_lr": 5e-3, "warmup_epochs": 1},
        "run": {"output_dir": str(output_dir), "device": "cpu", "seed": 0},
    }
    for section, values in sections.items():
        config[section].update(values)
    return config


# No random augmentation: the images a process sees depend only on the sampler, not on its RNG stream.
DETERMINISTIC_AUGMENT = {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "hflip": 0.0, "auto_augment": None,
                         "color_jitter": 0.0, "re_prob": 0.0, "mixup": 0.0, "cutmix": 0.0}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def train_cli(config: Path, *overrides: str) -> int:
    return main(["train", "--config", str(config), *overrides])


def train_error(capsys: pytest.CaptureFixture[str], config: Path, *overrides: str) -> str:
    """The one-line error of a ``pvt train`` run that must fail (exit status 2)."""
    capsys.readouterr()
    assert train_cli(config, *overrides) == 2
    return capsys.readouterr().err


def model_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return read_training_checkpoint(checkpoint)["model"]


# -- config ---------------------------------------------------------------------------------------------

def test_config_round_trips_through_yaml_with_overrides(tmp_path: Path) -> None:
    config = ClassificationConfig.from_dict(tiny_config(tmp_path, tmp_path / "run"))
    config.save(tmp_path / "config.yaml")
    assert ClassificationConfig.load(tmp_path / "config.yaml") == config

    changed = ClassificationConfig.load(tmp_path / "config.yaml", [
        ("epochs", "7"), ("optim.base_lr", "5e-4"), ("scale", "0.5,1"), ("clip_grad", "none"), ("ema", "true"),
        ("auto_augment", "rand-m9-mstd0.5-inc1"),
    ])
    assert (changed.optim.epochs, changed.optim.base_lr, changed.augment.scale) == (7, 5e-4, (0.5, 1.0))
    assert changed.optim.clip_grad is None and changed.optim.ema is True
    assert changed.augment.auto_augment == "rand-m9-mstd0.5-inc1"
    # The defaults are the paper's ImageNet recipe.
    recipe = ClassificationConfig()
    optim, augment = recipe.optim, recipe.augment
    assert (optim.epochs, optim.base_lr, optim.weight_decay, optim.warmup_epochs) == (300, 5e-4, 0.05, 5)
    assert (optim.warmup_lr, optim.min_lr, optim.batch_size) == (1e-6, 1e-5, 128)
    assert (augment.mixup, augment.cutmix, augment.label_smoothing, augment.re_prob) == (0.8, 1.0, 0.1, 0.25)


@pytest.mark.parametrize("content, overrides, message", [
    ({"optim": {"epocs": 3}}, [], "unknown key of section 'optim' 'epocs'; did you mean epochs"),
    ({"optimizer": {}}, [], "unknown section 'optimizer'"),
    ({"optim": {"epochs": "many"}}, [], "optim.epochs must be an integer, got 'many'"),
    ({"run": {"device": "tpu"}}, [], "run.device must be one of 'auto', 'cpu', 'cuda'"),
    ({}, [("epocs", "3")], "unknown config key '--epocs'"),
    ({}, [("model.epochs", "3")], "unknown config key '--model.epochs'"),
])
def test_config_errors_name_the_key(tmp_path: Path, content: dict, overrides: list, message: str) -> None:
    path = write_config(tmp_path / "bad.yaml", content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")):
        ClassificationConfig.load(path, overrides)


def test_print_config_shows_every_value_with_the_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    config = REPO / "configs/imagenet/pvt_v2_b2.yaml"
    assert main(["train", "--config", str(config), "--print-config", "--epochs", "3", "--optim.base_lr", "1e-3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["name"] == "pvt_v2_b2" and printed["augment"]["auto_augment"] == "rand-m9-mstd0.5-inc1"
    assert (printed["optim"]["epochs"], printed["optim"]["base_lr"]) == (3, 1e-3)


@pytest.mark.parametrize("flag, kept", [([], True), (["--system-allocator"], False)])
def test_training_keeps_freed_memory_unless_told_not_to(monkeypatch: pytest.MonkeyPatch, flag: list, kept: bool) -> None:
    # What keeping freed memory does is tested in a fresh process (test_bench.py); here: who asks for it.
    import contextlib

    import importlib

    import pvtv2.cli.common

    training = importlib.import_module("pvtv2.classification.train")  # pvtv2.classification.train is the function

    seen = {}

    @contextlib.contextmanager
    def recording(enabled: bool = True) -> Iterator[bool]:
        seen["enabled"] = enabled
        seen["inside"] = True
        yield enabled
        seen["inside"] = False

    def fake_train(config: ClassificationConfig) -> None:
        seen["trained_inside"], seen["epochs"] = seen["inside"], config.optim.epochs

    monkeypatch.setattr(pvtv2.cli.common, "keep_freed_memory", recording)
    monkeypatch.setattr(training, "train", fake_train)
    assert main(["train", "--config", str(REPO / "configs/digits/pvt_v2_b0.yaml"), "--epochs", "2", *flag]) == 0
    assert seen == {"enabled": kept, "inside": False, "trained_inside": True, "epochs": 2}


def test_unknown_override_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "c.yaml", {})
    assert train_cli(path, "--epocs", "3") == 2
    assert "unrecognized arguments: --epocs" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="device 'cuda' was asked for, but this machine has no usable CUDA"):
        resolve_device("cuda")


# -- data -----------------------------------------------------------------------------------------------

def test_bad_dataset_folders_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = train_error(capsys, write_config(tmp_path / "a.yaml", tiny_config(tmp_path / "nowhere", tmp_path / "run")))
    assert f"pvt train: error: dataset folder {tmp_path / 'nowhere'} does not exist" in error
    (tmp_path / "flat").mkdir()
    error = train_error(capsys, write_config(tmp_path / "b.yaml", tiny_config(tmp_path / "flat", tmp_path / "run")))
    assert f"dataset folder {tmp_path / 'flat'} has no train/ folder" in error
    (tmp_path / "flat" / "train").mkdir()
    with pytest.raises(DatasetError, match="has no class sub-folders"):
        ImageFolder(tmp_path / "flat" / "train")
    (tmp_path / "flat" / "train" / "cat").mkdir()
    with pytest.raises(DatasetError, match="Found no valid file for the classes cat"):
        ImageFolder(tmp_path / "flat" / "train")


def test_unreadable_image_fails_with_its_path_or_is_skipped(folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    shutil.copytree(folder, root)
    bad = root / "train" / "cross" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        [sample for sample in ImageFolder(root / "train")]
    skipping = ImageFolder(root / "train", bad_images="skip")
    labels = [label for _, label in skipping]
    # broken.png sorts last among the crosses: the next image, the first square, stands in for it.
    assert len(labels) == 33 and [labels.count(CLASSES.index(name)) for name in CLASSES] == [8, 8, 9, 8]

    config = tiny_config(root, tmp_path / "run", optim={"epochs": 1}, data={"bad_images": "skip"})
    assert train_cli(write_config(tmp_path / "c.yaml", config)) == 0


# -- training, evaluation, prediction -------------------------------------------------------------------

def test_train_eval_predict(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    config = tiny_config(folder, run, optim={"ema": True, "ema_decay": 0.9, "clip_grad": 1.0})
    assert train_cli(write_config(tmp_path / "c.yaml", config)) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy: top-1" in out and f"checkpoint {run / 'last.pth'}" in out
    assert {p.name for p in run.iterdir()} >= {"last.pth", "best.pth", "metrics.jsonl", "curves.png", "config.yaml"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "lr", "images_per_s", "val_loss", "val_top1", "val_top5", "ema_top1"} <= set(records[-1])
    state = read_training_checkpoint(run / "last.pth")
    assert state["class_names"] == CLASSES and state["epoch"] == 2 and state["model_name"] == "pvt_v2_b0"

    assert main(["eval", "--checkpoint", str(run / "last.pth"), "--data", str(folder), "--json", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 12 and result["top1"] == pytest.approx(records[-1]["val_top1"])
    assert result["top5"] == 100.0  # 4 classes: the top-5 holds them all
    assert main(["eval", "--checkpoint", str(run / "last.pth"), "--data", str(folder), "--ema", "--workers", "0"]) == 0
    assert "EMA weights" in capsys.readouterr().out

    images = [str(folder / "val" / "square" / "0.png"), str(folder / "val" / "circle" / "1.png")]
    assert main(["predict", *images, "--checkpoint", str(run / "best.pth"), "--topk", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == images[0] and lines[4] == images[1] and len(lines) == 8
    assert [line.split()[0] for line in lines[1:4]] == ["1.", "2.", "3."]
    assert {line.split()[1] for line in lines[1:4]} <= set(CLASSES)
    # bfloat16 weights and images: the same probabilities to bfloat16's precision.
    top = {}
    for dtype in ("fp32", "bf16"):
        assert main(["predict", *images, "--checkpoint", str(run / "best.pth"), "--json", "--dtype", dtype]) == 0
        top[dtype] = [{t["name"]: t["probability"] for t in json.loads(line)["top"]}
                      for line in capsys.readouterr().out.splitlines()]
    for full, half in zip(top["fp32"], top["bf16"]):
        assert full.keys() == half.keys() and all(abs(full[k] - half[k]) < 0.03 for k in full), (full, half)


def test_eval_takes_weights_that_are_not_ours(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Official (and timm) state dicts, as the release ships them: the model is recognised from the keys."""
    weights = create_model("pvt_v2_b0", num_classes=len(CLASSES)).state_dict()
    torch.save(weights, tmp_path / "official.pth")
    torch.save(from_official(weights, "timm"), tmp_path / "timm.pth")
    for name in ("official.pth", "timm.pth"):
        code = main(["eval", "--checkpoint", str(tmp_path / name), "--data", str(folder), "--img-size", "32",
                     "--json", "--workers", "0"])
        assert code == 0
        result = json.loads(capsys.readouterr().out)
        assert result["model"] == "pvt_v2_b0" and result["images"] == 12 and 0 <= result["top1"] <= 100
        assert result["resize"] == 36  # 32 / 0.875, the paper's crop ratio for weights without a config
    assert main(["predict", str(folder / "val" / "cross" / "0.png"), "--checkpoint", str(tmp_path / "timm.pth"),
                 "--model", "pvt_v2_b0", "--topk", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_fine_tuning_replaces_a_head_of_another_size(folder: Path, tmp_path: Path) -> None:
    torch.save(create_model("pvt_v2_b0", num_classes=1000).state_dict(), tmp_path / "imagenet.pth")
    config = tiny_config(folder, tmp_path / "run", optim={"epochs": 1})
    assert train_cli(write_config(tmp_path / "c.yaml", config), "--pretrained", str(tmp_path / "imagenet.pth")) == 0
    assert model_weights(tmp_path / "run" / "last.pth")["head.weight"].shape == (len(CLASSES), 256)


# -- distributed ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_train_the_same_model_as_one(folder: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes with gloo and batch 4 each == 1 process with batch 8 (same images per step)."""
    one = tiny_config(folder, tmp_path / "one", augment=DETERMINISTIC_AUGMENT, optim={"batch_size": 8, "clip_grad": 1})
    two = tiny_config(folder, tmp_path / "two", augment=DETERMINISTIC_AUGMENT, optim={"batch_size": 4, "clip_grad": 1})
    assert train_cli(write_config(tmp_path / "one.yaml", one)) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "pvtv2", "train", "--config", str(write_config(tmp_path / "two.yaml", two))]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "2 process(es) on cpu" in finished.stdout and "batch 4 x 2 = 8" in finished.stdout
    single, pair = model_weights(tmp_path / "one" / "last.pth"), model_weights(tmp_path / "two" / "last.pth")
    assert single.keys() == pair.keys()
    for key in single:
        torch.testing.assert_close(pair[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    assert not torch.equal(single["head.weight"], create_model("pvt_v2_b0", num_classes=4).state_dict()["head.weight"])


# -- checkpoints ----------------------------------------------------------------------------------------

# Runs `pvt train` and kills the process (SIGKILL, no cleanup) right after optimizer step N.
KILL_AFTER_STEPS = """
import os, signal, sys
from torch.optim.optimizer import register_optimizer_step_post_hook
from pvtv2.cli.main import main

steps = 0
def kill(optimizer, args, kwargs):
    global steps
    steps += 1
    if steps == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)

register_optimizer_step_post_hook(kill)
main(sys.argv[2:])
"""


@pytest.mark.slow
def test_killed_run_resumes_to_exactly_the_uninterrupted_weights(folder: Path, tmp_path: Path) -> None:
    """Everything random is on (RandAugment, erasing, mixup/cutmix, stochastic depth, workers) and EMA:
    the resumed run must still end bit for bit where the uninterrupted one does."""
    random_everything = {"model": {"drop_path_rate": 0.1}, "data": {"num_workers": 1},
                         "optim": {"epochs": 3, "ema": True, "ema_decay": 0.9}}
    whole = tiny_config(folder, tmp_path / "whole", **random_everything)
    assert train_cli(write_config(tmp_path / "whole.yaml", whole)) == 0

    broken = write_config(tmp_path / "broken.yaml", tiny_config(folder, tmp_path / "broken", **random_everything))
    killed = subprocess.run(
        # Killed after step 6: in the middle of epoch 2 of 3 (4 steps each).
        [sys.executable, "-c", KILL_AFTER_STEPS, "6", "train", "--config", str(broken)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # the same threads as this process: the same float sums
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert read_training_checkpoint(tmp_path / "broken" / "last.pth")["epoch"] == 1
    assert train_cli(broken, "--resume", "auto") == 0

    expected = read_training_checkpoint(tmp_path / "whole" / "last.pth")
    resumed = read_training_checkpoint(tmp_path / "broken" / "last.pth")
    assert resumed["epoch"] == 3
    for part in ("model", "ema"):
        for key, tensor in expected[part].items():
            assert torch.equal(resumed[part][key], tensor), f"{part} {key} differs after resuming"
    metrics = [json.loads(line) for line in (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]


def test_corrupt_or_mismatched_checkpoint_is_a_clear_error(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_config(folder, tmp_path / "run", optim={"epochs": 1}))
    assert train_cli(config) == 0
    last = tmp_path / "run" / "last.pth"

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    error = train_error(capsys, config, "--resume", str(truncated))
    assert f"cannot read checkpoint {truncated} (damaged, truncated" in error
    error = train_error(capsys, config, "--resume", str(last), "--name", "pvt_v2_b1")
    assert f"checkpoint {last} is of model pvt_v2_b0, but the config trains pvt_v2_b1" in error
    torch.save(create_model("pvt_v2_b0", num_classes=4).state_dict(), tmp_path / "weights.pth")
    error = train_error(capsys, config, "--resume", str(tmp_path / "weights.pth"))
    assert "is not a training checkpoint of pvt train" in error and "--pretrained" in error

    other = tmp_path / "other"
    shutil.copytree(folder, other)
    for split in ("train", "val"):
        (other / split / "stripes").rename(other / split / "zigzag")
    error = train_error(capsys, config, "--resume", str(last), "--root", str(other))
    assert ("was trained on 4 classes (circle, cross, square, stripes), "
            "but the dataset has 4 (circle, cross, square, zigzag)") in error
