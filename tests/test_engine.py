"""The engine every task stands on: config validation through each task's CLI, the optimizer step with
accumulation, checkpoints of every task, the shared loop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from pvtv2.classification.config import ClassificationConfig
from pvtv2.cli.main import main
from pvtv2.detection.config import DetectionConfig
from pvtv2.detection.model import build_from_config
from pvtv2.engine.config import Config, ConfigError, checked
from pvtv2.engine.distributed import DistributedEnv
from pvtv2.engine.loop import progress_bar, train_steps
from pvtv2.engine.optim import OptimizerStep
from pvtv2.engine.training_state import FORMAT_KEY, atomic_save, read_training_checkpoint
from pvtv2.models import create_model
from pvtv2.models.loading import CheckpointError
from pvtv2.segmentation import build_segmenter
from pvtv2.segmentation.config import SegmentationConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "train": REPO / "configs/digits/pvt_v2_b0.yaml",
    "det-train": REPO / "configs/detection/shapes_retinanet_pvt_v2_b0.yaml",
    "seg-train": REPO / "configs/segmentation/shapes_semantic_fpn_pvt_v2_b0.yaml",
}
CPU = DistributedEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
SHIPPED_CONFIGS = sorted((REPO / "configs").glob("**/*.yaml"))


# -- every shipped config loads, validates and builds its model -------------------------------------------

def _build_model(config: Config) -> nn.Module:
    """The model a training run of ``config`` builds (without pretrained weights: shapes only)."""
    if isinstance(config, ClassificationConfig):
        return create_model(config.model.name, num_classes=10, drop_path_rate=config.model.drop_path_rate)
    if isinstance(config, DetectionConfig):
        return build_from_config(config.model, config.data, num_classes=80, pretrained=False)
    m = config.model
    return build_segmenter(m.segmenter, backbone=m.backbone, num_classes=150, drop_path_rate=m.drop_path_rate,
                           norm=m.norm, dropout=m.dropout, neck_channels=m.neck_channels, head_channels=m.head_channels)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda path: str(path.relative_to(REPO / "configs")))
def test_shipped_config_loads_validates_and_builds(path: Path) -> None:
    config_type = {"imagenet": ClassificationConfig, "digits": ClassificationConfig, "detection": DetectionConfig,
                   "segmentation": SegmentationConfig}[path.parent.name]
    config = config_type.load(path)  # every key known, every value within its limits, the task's rules
    assert config_type.from_dict(config.to_dict()) == config  # as a checkpoint stores and reads it back
    with torch.device("meta"):
        assert sum(p.numel() for p in _build_model(config).parameters()) > 0


# -- every task's config is validated through its CLI, before any work -----------------------------------

INVALID = [
    # (command, overrides, the key and words the message must hold)
    ("train", ["--epochs", "0"], "optim.epochs must be at least 1, got 0"),
    ("train", ["--scale", "0.9,0.5"], "augment.scale must be (low, high) with low <= high, got 0.9, 0.5"),
    ("train", ["--dataset", "folder"], "data.root is needed for dataset 'folder'"),
    ("train", ["--hflip", "1.5"], "augment.hflip must be at most 1, got 1.5"),
    ("train", ["--base_lr", "nan"], "optim.base_lr must be a finite number, got 'nan'"),
    ("det-train", ["--epochs", "0"], "optim.epochs must be at least 1, got 0"),
    ("det-train", ["--train_min_size", "800,640"], "data.train_min_size must be (low, high) with low <= high"),
    ("det-train", ["--min_size", "900", "--max_size", "800"], "data.min_size (900) must not exceed data.max_size"),
    ("det-train", ["--lr", "0"], "optim.lr must be greater than 0, got 0"),
    ("seg-train", ["--iterations", "0"], "optim.iterations must be at least 1, got 0"),
    ("seg-train", ["--ratio_range", "2,0.5"], "augment.ratio_range must be (low, high) with low <= high, got 2.0, 0.5"),
    ("seg-train", ["--dataset", "ade20k", "--root", "null"], "data.root is needed for dataset 'ade20k'"),
    ("seg-train", ["--test_scales", "1,-2"], "test.test_scales must be positive numbers"),
    ("seg-train", ["--batch_size", "-1"], "optim.batch_size must be at least 1, got -1"),
]


@pytest.mark.parametrize("command, overrides, message", INVALID)
def test_invalid_config_values_are_refused_by_every_task_naming_the_key(
    command: str, overrides: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # --print-config stops after loading: a config that passes it would start training as it is.
    assert main([command, "--config", str(CONFIGS[command]), *overrides, "--print-config"]) == 2
    captured = capsys.readouterr()
    assert f"pvt {command}: error: config file {CONFIGS[command]}: {message}" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_unknown_keys_in_a_config_file_are_refused_by_every_task(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load(CONFIGS[command].read_text())
    config["optim"]["epoks"] = 3
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main([command, "--config", str(path), "--print-config"]) == 2
    error = capsys.readouterr().err
    assert f"pvt {command}: error: config file {path}: unknown key of section 'optim' 'epoks'" in error


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_the_shipped_shapes_and_digits_configs_print_resolved(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--config", str(CONFIGS[command]), "--print-config", "--seed", "3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["run"]["seed"] == 3 and printed["optim"]["accumulate_steps"] == 1


@dataclass
class Section:
    count: int = checked(2, min=1)
    pair: tuple[float, float] = checked((0.1, 0.5), above=0, ordered=True)
    optional: float | None = checked(None, below=1)


class Example(Config):
    section: Section

    def check(self) -> None:
        if self.section.count == 3:
            raise ConfigError("section.count may not be 3")


def test_checked_limits_and_cross_field_rules_of_a_config_class() -> None:
    assert Example.from_dict({}).section == Section()
    assert Example.from_dict({"section": {"optional": 0.5}}).section.optional == 0.5
    for values, message in [({"count": 0}, "section.count must be at least 1, got 0"),
                            ({"pair": [0, 1]}, "each value of section.pair must be greater than 0, got 0.0, 1.0"),
                            ({"pair": [0.5, 0.1]}, "section.pair must be (low, high) with low <= high"),
                            ({"optional": 1}, "section.optional must be less than 1, got 1.0"),
                            ({"count": 3}, "here: section.count may not be 3")]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            Example.from_dict({"section": values}, "here")


# -- the optimizer step -------------------------------------------------------------------------------------

def _linear_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(6, 3), torch.randn(8, 6), torch.randn(8, 3)


@pytest.mark.parametrize("clip_grad", [None, 0.05])
def test_accumulating_two_half_batches_steps_like_the_whole_batch(clip_grad: float | None) -> None:
    whole, x, y = _linear_problem()
    halves = nn.Linear(6, 3)
    halves.load_state_dict(whole.state_dict())
    steps = {}
    for model, accumulate, batches in ((whole, 1, [(x, y)]), (halves, 2, [(x[:4], y[:4]), (x[4:], y[4:])])):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        step = OptimizerStep(model, optimizer, torch.device("cpu"), "none", clip_grad=clip_grad,
                             accumulate_steps=accumulate)
        steps[accumulate] = [step.step(nn.functional.mse_loss(model(a), b)) for a, b in batches]
    assert steps == {1: [True], 2: [False, True]}  # the weights move once, after the second half
    for key, tensor in whole.state_dict().items():
        torch.testing.assert_close(halves.state_dict()[key], tensor, rtol=1e-6, atol=1e-7)


def test_the_loop_averages_named_losses_and_refuses_a_non_finite_one() -> None:
    model, x, y = _linear_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = OptimizerStep(model, optimizer, torch.device("cpu"), "none")
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    calls = []

    def losses_of(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = model(batch[0])
        return {"mse": nn.functional.mse_loss(out, batch[1]), "l1": nn.functional.l1_loss(out, batch[1])}

    with progress_bar(CPU, len(batches), "test") as bar:
        stats = train_steps(model, batches, losses_of, step, CPU, bar, after_step=lambda: calls.append(1))
    assert len(calls) == 2 and stats["train_loss"] == pytest.approx(stats["mse"] + stats["l1"])
    assert stats["images_per_s"] > 0 and stats["lr"] == 0.1

    def infinite(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"mse": model(batch[0]).sum() * float("inf"), "l1": torch.tensor(1.0)}

    # Only the loss that is not finite is named (l1 is 1).
    with progress_bar(CPU, 1, "test") as bar, pytest.raises(FloatingPointError, match=r"^mse is inf at batch 0; lower"):
        train_steps(model, batches, infinite, step, CPU, bar)


# -- training checkpoints -----------------------------------------------------------------------------------

def test_checkpoints_name_their_task_and_refuse_another_tasks_resume(tmp_path: Path) -> None:
    path = tmp_path / "det.pth"
    atomic_save({FORMAT_KEY: 2, "task": "detection", "best": 0.5}, path)
    assert read_training_checkpoint(path, "detection")["best"] == 0.5
    with pytest.raises(CheckpointError, match="is a checkpoint of pvt det-train \\(detection\\), not of pvt train"):
        read_training_checkpoint(path, "classification")


@pytest.mark.parametrize("old, task, best", [
    ({"best_top1": 91.0}, "classification", 91.0),
    ({"task": "detection", "best_ap": 0.4}, "detection", 0.4),
    ({"task": "semantic_segmentation", "best_mIoU": 0.7}, "segmentation", 0.7),
])
def test_checkpoints_of_the_first_format_still_resume(tmp_path: Path, old: dict, task: str, best: float) -> None:
    atomic_save({FORMAT_KEY: 1, **old}, tmp_path / "old.pth")
    state = read_training_checkpoint(tmp_path / "old.pth", task)
    assert (state["task"], state["best"]) == (task, best)
