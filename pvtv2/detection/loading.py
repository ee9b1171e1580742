"""A trained detector, ready to use: :func:`load_detector` reads a det-train checkpoint or an official release
file (MMDetection 2.x) into a :class:`LoadedDetector`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.images import ModelInput
from ..engine.distributed import resolve_device
from ..engine.release import is_release_layout, read_config_file, read_release, resolve_checkpoint
from ..engine.training_state import FORMAT_KEY, training_checkpoint
from ..models import min_input_size
from ..models.loading import CheckpointError, check_weights, read_file
from .config import DetectionConfig
from .model import build_detector, build_from_config
from .registry import detector_spec
from .release import from_release
from .spec import DetectorSpec


@dataclass
class LoadedDetector:
    """A detector in evaluation mode, with its class names and where it came from."""

    task: ClassVar[str] = "detection"
    model: nn.Module
    spec: DetectorSpec
    backbone: str
    class_names: list[str]
    # The category id of each class in the data set it was trained on; None for a release file, whose classes
    # are found in a data set by name (as MMDetection's CocoMetric does).
    category_ids: list[int] | None
    # The det-train config it was trained with; None for a release file.
    config: DetectionConfig | None
    device: torch.device

    @property
    def title(self) -> str:
        return f"{self.spec.title} {self.backbone}"

    def model_input(self) -> ModelInput:
        """How the detector resizes a picture at test (mmcv's keep-ratio rescale, rounded to the nearest pixel)
        and the smallest side its backbone takes: to refuse, naming the file, a picture it cannot take."""
        transform = self.model.transform
        return ModelInput(smallest=min_input_size(self.backbone), shorter=transform.min_size[-1],
                          longest=transform.max_size, rounding="nearest", option="the detector's test scale")


def load_detector(path: str | Path, device: str = "auto", config: str | Path | None = None) -> LoadedDetector:
    """The detector of a det-train checkpoint or of an official release file, in evaluation mode on
    ``device``; ``config``: an MMDetection config file (``_base_`` files beside it) for a release file, in
    place of the one its meta holds (or lacks)."""
    path = resolve_checkpoint(path)  # a released model's name: its cached file
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give a checkpoint file (last.pth, best.pth or a release .pth)")
    loaded = read_file(path)  # a clear error for a missing, damaged or foreign file
    target = resolve_device(device)
    if FORMAT_KEY not in loaded and is_release_layout(loaded):
        return _load_release(path, loaded, config, target)
    if FORMAT_KEY not in loaded:
        raise CheckpointError(
            f"{path} is neither a det-train checkpoint (no {FORMAT_KEY!r} entry) nor an official release file (an "
            f"MMDetection checkpoint whose state_dict has backbone.patch_embed1.* beside neck. and head keys)")
    if config is not None:
        raise CheckpointError(f"{path} is a det-train checkpoint, which holds its config; leave out --config")
    state = training_checkpoint(loaded, path, "detection")
    config = DetectionConfig.from_dict(state["config"], f"the config stored in {path}")
    class_names = list(state["class_names"])
    # build_options: the test settings of a release file converted by pvt convert --to pvtv2
    model = build_from_config(config.model, config.data, len(class_names), pretrained=False,
                              **state.get("build_options", {}))
    _load_weights(model, state["model"], path)
    return LoadedDetector(model.eval().to(target), detector_spec(config.model.detector), config.model.backbone,
                          class_names, list(state["category_ids"]), config, target)


def _load_release(path: Path, loaded: dict[str, Any], config: str | Path | None, device: torch.device) -> LoadedDetector:
    release = read_release(path, loaded)
    if config is not None:
        release = dataclasses.replace(release, config=read_config_file(config))
    release = from_release(release)
    model = build_detector(release.spec.name, release.backbone, num_classes=len(release.class_names),
                           min_size=release.min_size, max_size=release.max_size, **release.test_options)
    _load_weights(model, release.state_dict, path)
    return LoadedDetector(model.eval().to(device), release.spec, release.backbone, list(release.class_names), None,
                          None, device)


def _load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    check_weights(state_dict, model.state_dict(), f"checkpoint {path}")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CheckpointError(f"the weights of {path} do not fit the detector they describe: {error}") from error
