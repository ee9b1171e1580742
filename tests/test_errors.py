"""Bad input and faults end in one sentence through the CLI, never a traceback or a silent wrong result.

One test (or a parametrized family) per class of fault: the CLI's error boundary (our errors, the machine's,
Ctrl-C, --debug), errors raised in DataLoader workers, image files PIL refuses, the structure of COCO files,
values that cannot work, training semantics at the edges (lr below min_lr, crops with no labelled pixel), a
batch of zero images, and messages that used to mislead.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pvtv2
from pvtv2 import errors
from pvtv2.classification.config import OptimConfig
from pvtv2.classification.recipe import build_scheduler
from pvtv2.cli.errors import original_message
from pvtv2.cli.main import main
from pvtv2.data.shapes import write_coco_shapes
from pvtv2.detection.data import CocoDetection, split_paths
from pvtv2.engine.metrics import MetricsLog, read_metrics
from pvtv2.engine.training_state import FORMAT_KEY, LAST, atomic_save
from pvtv2.models import cpu_inference, download
from pvtv2.segmentation.train import pixel_cross_entropy

# The module (the attribute pvtv2.classification.train is the function the package exports).
CLASSIFICATION_TRAINING = importlib.import_module("pvtv2.classification.train")

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "configs/digits/pvt_v2_b0.yaml"
DET_SHAPES = REPO / "configs/detection/shapes_retinanet_pvt_v2_b0.yaml"
SEG_SHAPES = REPO / "configs/segmentation/shapes_semantic_fpn_pvt_v2_b0.yaml"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``pvt ARGV`` in this process: its exit status and what it printed on stderr."""
    status = main(argv)
    return status, capsys.readouterr().err


def assert_one_sentence(err: str, command: str, *parts: str) -> None:
    """The last line of ``err`` is ``pvt COMMAND: ...`` holding ``parts``; no traceback anywhere."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"pvt {command}: "), last
    for part in parts:
        assert part in last, (part, last)


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    """A plain file: any path below it is a folder that cannot be made (what an unwritable target is, for root too)."""
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty weights cache and a release address that refuses connections, as on a machine without network."""
    monkeypatch.setenv(download.HOME_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(download.MIRROR_ENV, "http://127.0.0.1:9/")  # the discard port: connection refused


# -- 1. the CLI's error boundary ----------------------------------------------------------------------------

TINY_RUNS = {
    "train": [str(DIGITS), "--epochs", "1"],
    "det-train": [str(DET_SHAPES), "--shapes_train", "2", "--shapes_val", "1", "--shapes_size", "64", "--batch_size", "2"],
    "seg-train": [str(SEG_SHAPES), "--shapes_train", "2", "--shapes_val", "1", "--shapes_size", "64"],
}


@pytest.mark.parametrize("command", sorted(TINY_RUNS))
def test_offline_pretrained_official_is_one_sentence_in_every_training_command(
    command: str, tmp_path: Path, offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config, *overrides = TINY_RUNS[command]
    status, err = run([command, "--config", config, *overrides, "--pretrained", "official", "--root",
                       str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")] if command != "train" else
                      [command, "--config", config, *overrides, "--pretrained", "official",
                       "--output_dir", str(tmp_path / "out")], capsys)
    assert status == 2
    assert_one_sentence(err, command, "error: could not fetch the pretrained weights of pvt_v2_b0",
                        "pvt weights import pvt_v2_b0 FILE")


def test_offline_export_is_one_sentence(tmp_path: Path, offline: None, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run(["export", "pvt_v2_b0", "--pretrained", "official", "--out", str(tmp_path / "b0.onnx")], capsys)
    assert status == 2
    assert_one_sentence(err, "export", "could not fetch the pretrained weights of pvt_v2_b0")


def test_unwritable_output_dir_is_named_before_training(a_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run(["train", "--config", str(DIGITS), "--output_dir", str(a_file / "run")], capsys)
    assert status == 2
    assert_one_sentence(err, "train", f"run.output_dir {a_file / 'run'} cannot be written",
                        f"{a_file} is a file, not a folder", "--output_dir")


def test_unwritable_export_target_fails_before_any_work(
    a_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was built before the target was checked")

    monkeypatch.setattr("pvtv2.cli.export.create_model", no_work)
    status, err = run(["export", "pvt_v2_b0", "--out", str(a_file / "b0.onnx")], capsys)
    assert status == 2
    assert_one_sentence(err, "export", f"{a_file / 'b0.onnx'} cannot be written", "choose another --out")


def test_unwritable_convert_target(tmp_path: Path, a_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "b0.pth"
    torch.save(pvtv2.create_model("pvt_v2_b0").state_dict(), source)
    status, err = run(["convert", str(source), str(a_file / "b0_timm.pth"), "--to", "timm"], capsys)
    assert status == 2
    assert_one_sentence(err, "convert", f"{a_file / 'b0_timm.pth'} cannot be written")


def test_an_os_error_names_its_file(a_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run(["data", "shapes", str(a_file / "shapes"), "--train", "1", "--val", "1"], capsys)
    assert status == 2
    assert_one_sentence(err, "data", str(a_file / "shapes"), "check that the path exists")


def test_ctrl_c_in_training_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(config: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(CLASSIFICATION_TRAINING, "train", interrupted)
    out = tmp_path / "run"
    status, err = run(["train", "--config", str(DIGITS), "--output_dir", str(out)], capsys)
    assert status == 130
    assert_one_sentence(err, "train", "interrupted; no checkpoint was written", "start the run again")
    atomic_save({FORMAT_KEY: 2, "task": "classification"}, out / LAST)
    status, err = run(["train", "--config", str(DIGITS), "--output_dir", str(out)], capsys)
    assert status == 130
    assert_one_sentence(err, "train", f"interrupted; {out / LAST} holds the run", "--resume auto")


def test_ctrl_c_elsewhere_and_debug_tracebacks(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("pvtv2.classification.complexity.count_params", interrupted)
    status, err = run(["table", "--models", "pvt_v2_b0"], capsys)
    assert (status, err.strip()) == (130, "pvt table: interrupted")
    # --debug, anywhere on the line, or PVT_DEBUG=1: the exception itself, for its traceback.
    with pytest.raises(KeyboardInterrupt):
        main(["table", "--models", "pvt_v2_b0", "--debug"])
    monkeypatch.setenv("PVT_DEBUG", "1")
    with pytest.raises(errors.InputError, match="no model matches 'nope'"):
        main(["models", "nope"])


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug, not the user's input")

    monkeypatch.setattr("pvtv2.classification.complexity.count_params", bug)
    with pytest.raises(ZeroDivisionError):
        main(["table", "--models", "pvt_v2_b0"])


def test_run_failures_exit_with_status_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def diverged(config: object) -> None:
        raise errors.RunFailure("loss_classifier is nan at batch 3; lower the lr")

    monkeypatch.setattr(CLASSIFICATION_TRAINING, "train", diverged)
    status, err = run(["train", "--config", str(DIGITS), "--output_dir", "unused"], capsys)
    assert status == 1
    assert_one_sentence(err, "train", "error: loss_classifier is nan at batch 3")


# -- 2. errors raised in DataLoader worker processes ------------------------------------------------------

def _image_folder(root: Path, corrupt: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / split / label / f"{i}.png")
    if corrupt:
        (root / corrupt).write_bytes(b"not an image")
    return root


def test_a_worker_process_error_reaches_the_user_unwrapped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _image_folder(tmp_path / "data", corrupt="train/a/0.png")
    status, err = run(["train", "--config", str(DIGITS), "--dataset", "folder", "--root", str(root), "--num_workers",
                       "1", "--batch_size", "2", "--epochs", "1", "--output_dir", str(tmp_path / "out")], capsys)
    assert status == 2
    assert_one_sentence(err, "train", f"error: cannot read image {root / 'train/a/0.png'}", "data.bad_images: skip")
    assert "DataLoader worker" not in err


def test_original_message_of_a_wrapped_worker_error() -> None:
    wrapped = errors.InputError(
        "Caught InputError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise InputError(...)\npvtv2.errors.InputError: cannot read image a.png: bad'
    )
    assert original_message(wrapped) == "cannot read image a.png: bad"
    assert original_message(errors.InputError("plain")) == "plain"


# -- 3. image files PIL refuses ------------------------------------------------------------------------------

def test_an_oversized_image_is_one_sentence_and_skippable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _image_folder(tmp_path / "data")
    # PIL refuses images of more than 2 x MAX_IMAGE_PIXELS as possible decompression bombs.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    image = root / "val/a/0.png"
    weights = tmp_path / "b0.pth"
    torch.save(pvtv2.create_model("pvt_v2_b0").state_dict(), weights)
    for command in (["predict", str(image), "--checkpoint", str(weights)],
                    ["seg-predict", str(image), "--checkpoint", str(tmp_path / "x.pth"), "--out", str(tmp_path / "o.png")]):
        status, err = run(command, capsys)
        assert status == 2
        assert_one_sentence(err, command[0], f"cannot read image {image}", "decompression bomb")
    from pvtv2.classification.datasets import ImageFolder

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 32 * 32 // 2 - 1)  # every image of the folder is refused
    skipping = ImageFolder(root / "val", bad_images="skip")
    with pytest.raises(errors.InputError, match="no image of .* can be read"):
        skipping[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**9)
    assert skipping[0][1] == 0


# -- 4. the structure of COCO files -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco_shapes(tmp_path_factory.mktemp("coco"), num_train=2, num_val=2, size=64, seed=0)


BROKEN_COCO = [
    # (what is done to the val file, the words the error must hold)
    (lambda d: d.pop("categories"), "the 'categories' entry must be a list, but the file has none"),
    (lambda d: d.__setitem__("categories", []), "has no categories"),
    (lambda d: d["images"][0].pop("file_name"), "image 1 has no 'file_name'; expected text"),
    (lambda d: d["images"][0].pop("width"), "image 1 has no 'width'; expected an integer"),
    (lambda d: d["images"][1].__setitem__("height", "64"), "image 2 has '64' as its 'height'; expected an integer"),
    (lambda d: d["categories"][0].pop("name"), "category 1 has no 'name'"),
    (lambda d: d["annotations"][0]["bbox"].__setitem__(2, float("nan")), "expected [x, y, width, height], four finite"),
    (lambda d: d["annotations"][0].__setitem__("segmentation", [[1, 2, 3, 4]]), "segmentation polygon [1, 2, 3, 4]"),
    (lambda d: d["annotations"][0].__setitem__("segmentation", {"size": [1, 1], "counts": "x"}),
     "RLE segmentation with size [1, 1]"),
    (lambda d: d["annotations"][0].__setitem__("segmentation", 7), "segmentation of type int"),
    (lambda d: d["annotations"][0].__setitem__("iscrowd", 2), "has iscrowd 2"),
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), "two annotation entries have the id"),
    (lambda d: d["annotations"][0].pop("image_id"), "has no 'image_id'"),
]


@pytest.mark.parametrize("edit, words", BROKEN_COCO)
def test_coco_structure_is_checked_on_load_naming_the_entry_and_field(coco: Path, tmp_path: Path, edit, words: str) -> None:
    document = json.loads(split_paths(coco, "val").annotations.read_text())
    edit(document)
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(document))
    with pytest.raises(errors.InputError) as caught:
        CocoDetection(coco / "val", path, with_masks=True)
    assert str(caught.value).startswith(f"{path}") and words in str(caught.value), str(caught.value)


def test_a_coco_file_that_is_a_list_fails_through_det_train(coco: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / split).symlink_to(coco / split)
    split_paths(root, "train").annotations.write_text("[]")
    split_paths(root, "val").annotations.write_text(split_paths(coco, "val").annotations.read_text())
    status, err = run(["det-train", "--config", str(DET_SHAPES), "--dataset", "coco", "--root", str(root),
                       "--output_dir", str(tmp_path / "out")], capsys)
    assert status == 2
    assert_one_sentence(err, "det-train", f"{split_paths(root, 'train').annotations} holds a JSON list")


# -- 5. values that cannot work -------------------------------------------------------------------------------

def test_export_refuses_a_negative_class_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run(["export", "pvt_v2_b0", "--num-classes", "-5", "--out", str(tmp_path / "b0.onnx")], capsys)
    assert status == 2
    assert_one_sentence(err, "export", "num_classes must be an integer >= 0")
    assert not (tmp_path / "b0.onnx").exists()


@pytest.mark.parametrize("content, words", [
    (b"model: [\n", "is not valid YAML: expected the node content, but found '<stream end>' at line 2, column 1"),
    (b"- 1\n- 2\n", "must be a mapping of sections, got list"),
])
def test_a_broken_config_file_is_one_line(tmp_path: Path, content: bytes, words: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "broken.yaml"
    config.write_bytes(content)
    status, err = run(["train", "--config", str(config)], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert_one_sentence(err, "train", f"config file {config}", words)


@pytest.mark.parametrize("content, words", [
    (b"hello, not weights", "neither a PyTorch zip archive nor a pickle"),
    (b"PK\x03\x04 torn zip", "PytorchStreamReader failed reading zip archive: not a ZIP archive"),
])
def test_a_damaged_checkpoint_is_one_short_line(tmp_path: Path, content: bytes, words: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(content)
    for command in (["train", "--config", str(DIGITS), "--resume", str(damaged), "--output_dir", str(tmp_path / "o")],
                    ["train", "--config", str(DIGITS), "--pretrained", str(damaged), "--output_dir", str(tmp_path / "o")]):
        status, err = run(command, capsys)
        assert status == 2
        assert_one_sentence(err, "train", f"cannot read checkpoint {damaged} (damaged, truncated or not a checkpoint): "
                                          f"{words}")
        assert "If you are seeing this error" not in err


# -- 6. training semantics at the edges ----------------------------------------------------------------------

def test_a_scaled_lr_below_min_lr_clamps_the_schedule_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = torch.nn.Linear(2, 2)
    lr = 5e-4 * 4 / 512  # base lr at a total batch of 4: 3.9e-6, below the default min_lr 1e-5
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    with caplog.at_level(logging.WARNING, "pvtv2"):
        scheduler = build_scheduler(optimizer, OptimConfig(epochs=4, warmup_epochs=1), steps_per_epoch=5)
    assert "optim.min_lr 1e-05 is above the scaled lr 3.91e-06" in caplog.text
    lrs = []
    for t in range(20):
        scheduler.step_update(t)
        lrs.append(optimizer.param_groups[0]["lr"])
    after_warmup = lrs[5:]
    assert max(lrs) <= lr * (1 + 1e-9) and all(b <= a * (1 + 1e-9) for a, b in zip(after_warmup, after_warmup[1:]))


def test_a_batch_with_no_labelled_pixel_contributes_zero_loss() -> None:
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    masks = torch.full((2, 8, 8), 255)
    loss = pixel_cross_entropy(logits, masks)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().max().item() == 0.0
    masks[1, :4] = 2  # half of one crop labelled: the mean over those pixels only
    expected = torch.nn.functional.cross_entropy(logits[1:, :, :4], masks[1:, :4])
    torch.testing.assert_close(pixel_cross_entropy(logits, masks), expected)


# -- 7. a batch of zero images ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_tiny"])
@pytest.mark.parametrize("features_only", [False, True])
def test_a_batch_of_zero_images_gives_an_empty_output(name: str, features_only: bool) -> None:
    model = pvtv2.create_model(name, num_classes=10, features_only=features_only).eval()
    x = torch.randn(0, 3, 64, 96)
    with torch.inference_mode():
        fused = model(x)
        with cpu_inference.disabled():
            plain = model(x)
    trained = model.train()(x)
    for out in (fused, plain, trained):
        if features_only:
            assert [tuple(f.shape) for f in out] == [(0, c, 64 // s, 96 // s)
                                                     for c, s in zip(model.embed_dims, (4, 8, 16, 32))]
        else:
            assert tuple(out.shape) == (0, 10)


# -- 8. messages that used to mislead --------------------------------------------------------------------------

def test_seg_predict_names_the_task_of_another_tasks_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "det.pth"
    atomic_save({FORMAT_KEY: 2, "task": "detection", "model_name": "retinanet/pvt_v2_b0"}, checkpoint)
    image = tmp_path / "scene.png"
    Image.new("RGB", (64, 64)).save(image)
    status, err = run(["seg-predict", str(image), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o.png")],
                      capsys)
    assert status == 2
    assert_one_sentence(err, "seg-predict", f"{checkpoint} is a checkpoint of pvt det-train (detection), "
                                            f"not of pvt seg-train")


def test_seg_eval_names_a_missing_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pvtv2.segmentation.config import SegmentationConfig
    from pvtv2.segmentation.model import build_segmenter

    config = SegmentationConfig.from_dict({"model": {"neck_channels": 16, "head_channels": 16},
                                           "data": {"dataset": "folder", "root": str(tmp_path / "was_here")}})
    model = build_segmenter("semantic_fpn", backbone="pvt_v2_b0", num_classes=2, neck_channels=16, head_channels=16)
    checkpoint = tmp_path / "seg.pth"
    atomic_save({FORMAT_KEY: 2, "task": "segmentation", "model_name": "pvt_v2_b0", "segmenter": "semantic_fpn",
                 "class_names": ["background", "thing"], "config": config.to_dict(), "iteration": 1,
                 "model": model.state_dict()}, checkpoint)
    for data in ([], ["--data", str(tmp_path / "missing")]):  # the checkpoint's own folder, then another
        status, err = run(["seg-eval", "--checkpoint", str(checkpoint), *data], capsys)
        assert status == 2
        missing = tmp_path / ("missing" if data else "was_here")
        assert_one_sentence(err, "seg-eval", f"dataset folder {missing} does not exist")


def test_a_torn_last_metrics_line_is_dropped_and_resume_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "train_loss": 2.0}\n{"epoch": 2, "train_loss": 1.5}\n{"epoch": 3, "trai')
    with caplog.at_level(logging.WARNING, "pvtv2"):
        log = MetricsLog(tmp_path, resumed_at=2)
    assert [r["epoch"] for r in log.records] == [1, 2] and "dropped its last line, torn" in caplog.text
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2]  # rewritten without the torn line
    path.write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(errors.InputError, match=rf"{path}: line 2 is not a JSON record"):
        read_metrics(path)


def test_imported_weights_follow_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(download.HOME_ENV, str(tmp_path / "cache"))
    source = tmp_path / "b0.pth"
    torch.save(pvtv2.create_model("pvt_v2_b0").state_dict(), source)
    previous = os.umask(0o022)
    try:
        cached = download.import_weights("pvt_v2_b0", source)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(cached.stat().st_mode) == 0o644  # readable by the others who share the cache
