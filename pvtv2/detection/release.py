"""The official release files of the paper's detectors (MMDetection 2.x checkpoints), both ways.

A release file's backbone keys are the official model's (ours too, under ``backbone.body.``), its FPN is
MMDetection's ``FPN`` (``neck.lateral_convs.i.conv``, ``neck.fpn_convs.i.conv``, the extra levels' convs after
the regular ones) and its heads are named by each detector's :class:`~pvtv2.detection.spec.ReleaseLayout`.
Which detector, backbone and classes a file holds come from its ``meta`` (the config's model ``type``, the
backbone's ``type``, ``CLASSES``) or, where it has none, from its keys and shapes; what the file cannot say
is given by an MMDetection config file (``--config``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engine.release import (
    LayoutConverter, ReleaseFile, ReleaseFileError, config_value, pipeline_scale, release_backbone, write_release,
)
from .registry import DETECTORS
from .spec import DetectorSpec

# COCO's 80 classes in MMDetection's order (its CocoDataset.CLASSES, the category ids sorted), for files
# without meta["CLASSES"].
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
DEFAULT_TEST_SCALE = (1333, 800)  # the official test pipeline's img_scale: (longer side, shorter side)
MMDET_VERSION = "2.13.0"  # what the files we write say they are (the official code's MMDetection)


@dataclass(frozen=True)
class ReleaseDetector:
    """What a release file holds, in our terms: the detector to build and its weights in our layout."""

    spec: DetectorSpec
    backbone: str
    class_names: tuple[str, ...]
    state_dict: dict[str, torch.Tensor]
    min_size: int = DEFAULT_TEST_SCALE[1]
    max_size: int = DEFAULT_TEST_SCALE[0]
    # build_detector keywords from the release config's test_cfg (score threshold, NMS IoU, top-k ...).
    test_options: dict[str, Any] = field(default_factory=dict)


def from_release(release: ReleaseFile) -> ReleaseDetector:
    """The detector in ``release`` (its config, if any, names the detector, backbone and test settings)."""
    source = str(release.path)
    model_config = release.config.get("model", {})
    spec = _detector_of(release, model_config, source)
    layout = spec.release
    backbone_state = {k.removeprefix("backbone."): v for k, v in release.state_dict.items() if k.startswith("backbone.")}
    neck_state = {k: v for k, v in release.state_dict.items() if k.startswith("neck.")}
    head_state = {k: v for k, v in release.state_dict.items() if not k.startswith(("backbone.", "neck."))}
    backbone = release_backbone(backbone_state, config_value(model_config, "backbone", "type"), source,
                                "give its MMDetection config file with --config")
    num_classes = layout.num_classes(head_state)
    class_names = release.classes if release.classes is not None else (
        COCO_CLASSES if num_classes == len(COCO_CLASSES) else tuple(f"class {i + 1}" for i in range(num_classes)))
    if len(class_names) != num_classes:
        raise ReleaseFileError(f"{source}: meta['CLASSES'] names {len(class_names)} classes, but its "
                               f"{spec.name} head is for {num_classes}")
    state = {f"backbone.body.{k}": v for k, v in backbone_state.items()}
    state.update(neck_to_ours(neck_state, len(spec.feature_levels), source))
    state.update(layout.head_to_ours(head_state, num_classes))
    long_side, short_side = pipeline_scale(release.config, DEFAULT_TEST_SCALE)
    return ReleaseDetector(spec, backbone, tuple(class_names), state, short_side, long_side,
                           layout.test_options(model_config))


def to_release(state_dict: Mapping[str, torch.Tensor], spec: DetectorSpec, num_classes: int) -> dict[str, torch.Tensor]:
    """Our detector's state dict in the release layout (as MMDetection 2.x/3.x loads it with strict keys)."""
    if spec.release is None:
        raise ReleaseFileError(f"{spec.name} has no release layout")
    backbone = {f"backbone.{k.removeprefix('backbone.body.')}": v for k, v in state_dict.items()
                if k.startswith("backbone.body.")}
    neck = neck_to_release({k: v for k, v in state_dict.items() if k.startswith("backbone.fpn.")},
                           len(spec.feature_levels))
    head = spec.release.head_to_release({k: v for k, v in state_dict.items() if not k.startswith("backbone.")},
                                        num_classes)
    return {**backbone, **neck, **head}


def write_release_file(path: str, state_dict: Mapping[str, torch.Tensor], spec: DetectorSpec, backbone: str,
                       class_names: tuple[str, ...], min_size: int = 800, max_size: int = 1333,
                       detections_per_img: int | None = None) -> None:
    """A release-layout file of our detector: its weights, ``CLASSES`` and a config naming the detector, the
    backbone, the official test settings and the test scale (what this module reads back)."""
    test_cfg = copy.deepcopy(dict(spec.release.test_cfg))  # the spec's own stays as it is
    if detections_per_img is not None:
        _set_max_per_img(test_cfg, detections_per_img)
    text = "\n".join([
        f"model = dict(type={spec.release.mmdet_type!r}, backbone=dict(type={backbone!r}, style='pytorch'), "
        f"test_cfg={test_cfg!r})",
        "data = dict(test=dict(pipeline=[dict(type='LoadImageFromFile'), dict(type='MultiScaleFlipAug', "
        f"img_scale={(max_size, min_size)!r}, flip=False, transforms=[dict(type='Resize', keep_ratio=True), "
        "dict(type='RandomFlip'), dict(type='Normalize', mean=[123.675, 116.28, 103.53], "
        "std=[58.395, 57.12, 57.375], to_rgb=True), dict(type='Pad', size_divisor=32), "
        "dict(type='ImageToTensor', keys=['img']), dict(type='Collect', keys=['img'])])]))",
    ])
    write_release(path, to_release(state_dict, spec, len(class_names)), tuple(class_names), text,
                  {"mmdet_version": MMDET_VERSION})


def _set_max_per_img(test_cfg: dict[str, Any], value: int) -> None:
    # Two-stage configs keep the final settings under "rcnn", one-stage ones at the top.
    target = test_cfg["rcnn"] if isinstance(test_cfg.get("rcnn"), dict) else test_cfg
    target["max_per_img"] = value


# -- the FPN --------------------------------------------------------------------------------------------------
_LATERAL = re.compile(r"^neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)$")
_OUTPUT = re.compile(r"^neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)$")
_EXTRA_NAMES = ("p6", "p7")  # MMDetection's extra convs, after the regular outputs


def neck_to_ours(neck: Mapping[str, torch.Tensor], levels: int, source: str = "the file") -> dict[str, torch.Tensor]:
    """MMDetection's FPN weights as our neck's (torchvision's ``FeaturePyramidNetwork`` under ``backbone.fpn.``);
    ``levels``: the backbone levels it reads."""
    out = {}
    for key, value in neck.items():
        if match := _LATERAL.match(key):
            out[f"backbone.fpn.inner_blocks.{match[1]}.0.{match[2]}"] = value
        elif match := _OUTPUT.match(key):
            index = int(match[1])
            if index < levels:
                out[f"backbone.fpn.layer_blocks.{index}.0.{match[2]}"] = value
            elif index - levels < len(_EXTRA_NAMES):
                out[f"backbone.fpn.extra_blocks.{_EXTRA_NAMES[index - levels]}.{match[2]}"] = value
            else:
                raise ReleaseFileError(f"{source}: {key} is an FPN output past P7")
        else:
            raise ReleaseFileError(f"{source}: {key} is not a weight of MMDetection's FPN")
    return out


def neck_to_release(neck: Mapping[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """Our neck's weights (``backbone.fpn.``) in MMDetection's FPN names."""
    out = {}
    for key, value in neck.items():
        parts = key.removeprefix("backbone.fpn.").split(".")
        if parts[0] == "inner_blocks":
            out[f"neck.lateral_convs.{parts[1]}.conv.{parts[-1]}"] = value
        elif parts[0] == "layer_blocks":
            out[f"neck.fpn_convs.{parts[1]}.conv.{parts[-1]}"] = value
        elif parts[0] == "extra_blocks":
            out[f"neck.fpn_convs.{levels + _EXTRA_NAMES.index(parts[1])}.conv.{parts[-1]}"] = value
        else:
            raise ValueError(f"{key} is not a weight of the FPN")
    return out


# -- what the file holds --------------------------------------------------------------------------------------
def _detector_of(release: ReleaseFile, model_config: Mapping[str, Any], source: str) -> DetectorSpec:
    with_layout = [spec for spec in DETECTORS.values() if spec.release is not None]
    named = config_value(model_config, "type")
    if named is not None:
        found = [spec for spec in with_layout if spec.release.mmdet_type == named]
        if not found:
            raise ReleaseFileError(f"{source}: its config's model type {named!r} is none of the detectors this package "
                                   f"runs ({', '.join(s.release.mmdet_type for s in with_layout)})")
        spec = found[0]
    else:
        head_keys = [k for k in release.state_dict if not k.startswith(("backbone.", "neck."))]
        found = [spec for spec in with_layout if spec.release.recognise(head_keys)]
        if len(found) != 1:
            raise ReleaseFileError(f"{source} has no config naming its detector and its head keys fit "
                                   f"{'none' if not found else ' and '.join(s.name for s in found)} of the detectors; "
                                   f"give its MMDetection config file with --config")
        spec = found[0]
    return spec


# COCO's category ids of its 80 classes, in COCO_CLASSES' order (annotations/instances_*.json).
COCO_CATEGORY_IDS = (*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
                     *range(84, 91))


def as_training_checkpoint(release: ReleaseDetector, source: str) -> dict[str, Any]:
    """A release file's detector as a det-train checkpoint (model only, no optimizer state), which det-eval,
    det-predict and show read: its config names the detector, backbone, test scale and COCO at the release
    config's data root; ``build_options`` keeps the release's test settings."""
    from ..engine.training_state import FORMAT_KEY, FORMAT_VERSION
    from .config import DetectionConfig

    coco = release.class_names == COCO_CLASSES
    config = DetectionConfig.from_dict(dict(
        model=dict(detector=release.spec.name, backbone=release.backbone),
        data=dict(dataset="coco", min_size=release.min_size, max_size=release.max_size),
    ), f"the config made for {source}")
    return {
        FORMAT_KEY: FORMAT_VERSION, "task": "detection", "model_name": release.backbone,
        "class_names": list(release.class_names),
        "category_ids": list(COCO_CATEGORY_IDS) if coco else list(range(1, len(release.class_names) + 1)),
        "config": config.to_dict(), "build_options": dict(release.test_options), "model": release.state_dict,
        "epoch": 0, "best": None, "converted_from": source,
    }


def _checkpoint_of(release: ReleaseFile, source: str) -> tuple[dict[str, Any], str]:
    detector = from_release(release)
    return as_training_checkpoint(detector, source), _holding(detector.spec, detector.backbone, detector.class_names)


def _write_release_of(source: str | Path, destination: str | Path) -> str:
    from .loading import load_detector

    detector = load_detector(source, "cpu")
    config = detector.config
    write_release_file(str(destination), detector.model.state_dict(), detector.spec, detector.backbone,
                       tuple(detector.class_names), config.data.min_size, config.data.max_size,
                       config.model.detections_per_img)
    return _holding(detector.spec, detector.backbone, detector.class_names)


def _holding(spec: DetectorSpec, backbone: str, class_names: Sequence[str]) -> str:
    return f"{spec.title} {backbone}, {len(class_names)} classes"


# ``pvt convert`` of a detector: a det-train checkpoint to the release layout (--to mmdet: a file MMDetection
# 2.x / 3.x loads with strict keys, and this package reads back), or a release file to a det-train checkpoint.
CONVERTER = LayoutConverter("MMDetection", "det-train", "det-eval, det-predict, show", _checkpoint_of,
                            _write_release_of)
