"""The official release files of the paper's Semantic FPN segmenters (MMSegmentation 0.13 checkpoints), both ways.

A release file's backbone keys are the official segmentation backbone's (ours, under ``backbone.``: the dense
PVT, ``features_only=True``), its neck is MMSegmentation's ``FPN`` (``neck.lateral_convs.i.conv``,
``neck.fpn_convs.i.conv``) and its head ``FPNHead``: ``decode_head.scale_heads.i.j.conv`` and ``.bn`` (``.gn``
under GroupNorm) for each conv module, the 2x upsamplings between them holding no weights, and
``decode_head.conv_seg``. The backbone, classes and palette come from the file's ``meta`` (the config's backbone
``type``, ``CLASSES``, ``PALETTE``) or, where it has none, from the weights' shapes; the test scale and mode from
its config (the official ``AlignResize`` at 2048x512, whole-image inference, where it is silent).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..engine.release import (
    LayoutConverter,
    ReleaseFile,
    ReleaseFileError,
    config_value,
    is_release_layout,
    pipeline_scale,
    release_backbone,
    write_release,
)
from .config import SegmentationConfig
from .data import ADE20K_CLASSES
from .model import FEATURE_STRIDES, Norm
from .transforms import SIZE_DIVISOR

DEFAULT_SCALE = (2048, 512)  # the official test pipeline's img_scale: (longer side, shorter side)
DEFAULT_ROOT = "data/ade/ADEChallengeData2016"  # the official configs' data_root
MMSEG_VERSION = "0.13.0"  # what the files we write say they are (the official code's MMSegmentation)
MMSEG_MODEL, MMSEG_HEAD = "EncoderDecoder", "FPNHead"
EXPECTED = ("neck.lateral_convs.<i>.conv, neck.fpn_convs.<i>.conv, decode_head.scale_heads.<i>.<j>.conv/.bn and "
            "decode_head.conv_seg (MMSegmentation's FPN and FPNHead)")
# MMSegmentation's name of each norm's layer in a conv module, and its config type.
NORM_NAMES: dict[Norm, str] = {"batch": "bn", "group": "gn"}
NORM_CONFIGS: dict[Norm, dict[str, Any]] = {"batch": dict(type="SyncBN", requires_grad=True),
                                            "group": dict(type="GN", num_groups=32, requires_grad=True)}

# (release, ours) names: the FPN's convs are conv modules (.conv) where torchvision's FPN blocks are
# Conv2dNormActivation (.0); a scale head's conv module (.conv, .bn or .gn) is our ConvNormReLU (.0, .1).
KEY_NAMES = (
    ("neck.lateral_convs.{i}.conv.{p}", "neck.inner_blocks.{i}.0.{p}"),
    ("neck.fpn_convs.{i}.conv.{p}", "neck.layer_blocks.{i}.0.{p}"),
    ("decode_head.scale_heads.{i}.{j}.conv.{p}", "decode_head.scale_heads.{i}.{j}.0.{p}"),
    ("decode_head.scale_heads.{i}.{j}.{norm}.{p}", "decode_head.scale_heads.{i}.{j}.1.{p}"),
    ("decode_head.conv_seg.{p}", "decode_head.classifier.{p}"),
)
_FIELDS = {"i": r"\d+", "j": r"\d+", "p": r"\w+", "norm": "bn|gn"}


@functools.cache
def _pattern(template: str) -> re.Pattern[str]:
    """A key template (``neck.fpn_convs.{i}.conv.{p}``) as a regular expression capturing its fields."""
    parts = re.split(r"\{(\w+)\}", template)  # text, field, text, field, ..., text
    return re.compile("".join(re.escape(part) if n % 2 == 0 else f"(?P<{part}>{_FIELDS[part]})"
                              for n, part in enumerate(parts)))


def _rename(key: str, direction: int, **fields: str) -> str | None:
    """``key`` written in the other layout (``direction`` 0: release -> ours, 1: ours -> release), or None;
    ``fields``: values the target names and the source does not (the norm's name)."""
    for names in KEY_NAMES:
        match = _pattern(names[direction]).fullmatch(key)
        if match:
            return names[1 - direction].format(**fields, **match.groupdict())
    return None


@dataclass(frozen=True)
class ReleaseSegmenter:
    """What a release file holds, in our terms: the Semantic FPN to build, its weights in our layout, and the
    test settings of its config (as our config's sections)."""

    backbone: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] | None
    state_dict: dict[str, torch.Tensor]
    config: SegmentationConfig


def from_release(release: ReleaseFile) -> ReleaseSegmenter:
    """The Semantic FPN in ``release`` (its config, if any, names the backbone and the test settings)."""
    source = str(release.path)
    model = release.config.get("model", {})
    for keys, expected in ((("type",), MMSEG_MODEL), (("decode_head", "type"), MMSEG_HEAD)):
        named = config_value(model, *keys)
        if named is not None and named != expected:
            raise ReleaseFileError(f"{source}: its config's model {'.'.join(keys)} is {named!r}; this package runs "
                                   f"Semantic FPN, an {MMSEG_MODEL} with an {MMSEG_HEAD}")
    backbone_state = {k.removeprefix("backbone."): v for k, v in release.state_dict.items() if k.startswith("backbone.")}
    backbone = release_backbone(backbone_state, config_value(model, "backbone", "type"), source,
                                "expected a PVT backbone in the official layout (patch_embed1..4, block1..4)")
    state = {f"backbone.{k}": v for k, v in backbone_state.items()}
    state.update(to_ours({k: v for k, v in release.state_dict.items() if not k.startswith("backbone.")}, source))
    if "decode_head.classifier.weight" not in state or "neck.inner_blocks.0.0.weight" not in state:
        raise ReleaseFileError(f"{source} has no decode_head.conv_seg or neck.lateral_convs weights; expected {EXPECTED}")
    num_classes = state["decode_head.classifier.weight"].shape[0]
    # MMSegmentation's ADE20K names have a stray space ("bed "): names are compared without the spaces around.
    class_names = tuple(c.strip() for c in release.classes) if release.classes is not None else (
        ADE20K_CLASSES if num_classes == len(ADE20K_CLASSES) else tuple(f"class {i}" for i in range(num_classes)))
    if len(class_names) != num_classes:
        raise ReleaseFileError(f"{source}: meta['CLASSES'] names {len(class_names)} classes, but its decode_head."
                               f"conv_seg is for {num_classes}")
    if release.palette is not None and len(release.palette) != num_classes:
        raise ReleaseFileError(f"{source}: meta['PALETTE'] has {len(release.palette)} colours for {num_classes} classes")
    norm: Norm = "group" if any(re.fullmatch(r"decode_head\.scale_heads\.\d+\.\d+\.gn\.\w+", k)
                                for k in release.state_dict) else "batch"
    config = _config(release.config, backbone, tuple(class_names), norm, state, source)
    return ReleaseSegmenter(backbone, tuple(class_names), release.palette, state, config)


def to_ours(state: Mapping[str, torch.Tensor], source: str = "the file") -> dict[str, torch.Tensor]:
    """MMSegmentation's FPN and FPNHead weights (``neck.`` and ``decode_head.`` keys) in our Semantic FPN's names."""
    out = {}
    for key, value in state.items():
        renamed = _rename(key, 0)
        if renamed is None:
            raise ReleaseFileError(f"{source}: {key} is not a weight of MMSegmentation's Semantic FPN; expected {EXPECTED}")
        out[renamed] = value
    return out


def to_release(state_dict: Mapping[str, torch.Tensor], norm: Norm = "batch") -> dict[str, torch.Tensor]:
    """Our Semantic FPN's state dict in the release layout (as MMSegmentation 0.x / 1.x loads it with strict
    keys); ``norm``: the head's norm, which names its layers."""
    out = {}
    for key, value in state_dict.items():
        renamed = key if key.startswith("backbone.") else _rename(key, 1, norm=NORM_NAMES[norm])
        if renamed is None:
            raise ValueError(f"{key} is not a weight of Semantic FPN")
        out[renamed] = value
    return out


def _config(config: Mapping[str, Any], backbone: str, class_names: tuple[str, ...], norm: Norm,
            state: Mapping[str, torch.Tensor], source: str) -> SegmentationConfig:
    """Our config of the release's segmenter: its widths (from the weights) and norm, its data root, the test
    pipeline's scale and the test_cfg's mode (whole, or slide with its window and stride)."""
    model = config.get("model", {})
    test: dict[str, Any] = dict(test_mode=config_value(model, "test_cfg", "mode", default="whole"))
    augment: dict[str, Any] = dict(scale=list(pipeline_scale(config, DEFAULT_SCALE)))
    if test["test_mode"] == "slide":
        crop, stride = (config_value(model, "test_cfg", k) for k in ("crop_size", "stride"))
        if not all(isinstance(v, (list, tuple)) and len(v) == 2 and v[0] == v[1] for v in (crop, stride)):
            raise ReleaseFileError(f"{source}: its sliding-window test needs square windows and one stride, got "
                                   f"crop_size {crop!r} and stride {stride!r}")
        augment["crop_size"], test["slide_stride"] = crop[0], stride[0]
    ade20k = tuple(class_names) == ADE20K_CLASSES
    root = config_value(config, "data", "test", "data_root", default=config.get("data_root", DEFAULT_ROOT))
    return SegmentationConfig.from_dict(dict(
        model=dict(backbone=backbone, norm=norm, neck_channels=state["neck.inner_blocks.0.0.weight"].shape[0],
                   head_channels=state["decode_head.classifier.weight"].shape[1]),
        data=dict(dataset="ade20k" if ade20k else "folder", root=root, num_classes=len(class_names)),
        augment=augment, test=test,
    ), f"the settings of {source}")


def write_release_file(path: str | Path, state_dict: Mapping[str, torch.Tensor], config: SegmentationConfig,
                       class_names: tuple[str, ...], palette: tuple[tuple[int, int, int], ...] | None = None) -> None:
    """A release-layout file of our Semantic FPN (as MMSegmentation loads it with strict keys into the official
    config's model): its weights, ``CLASSES``, ``PALETTE`` and a config naming the backbone, the widths, the
    test scale (``AlignResize``) and mode (what this module reads back)."""
    m, norm = config.model, config.model.norm
    in_channels = [state_dict[f"neck.inner_blocks.{i}.0.weight"].shape[1] for i in range(len(FEATURE_STRIDES))]
    test_cfg: dict[str, Any] = dict(mode=config.test.test_mode)
    if config.test.test_mode == "slide":
        test_cfg.update(crop_size=(config.augment.crop_size,) * 2, stride=(config.test.slide_stride,) * 2)
    decode_head = dict(type=MMSEG_HEAD, in_channels=[m.neck_channels] * len(in_channels),
                       in_index=list(range(len(in_channels))), feature_strides=list(FEATURE_STRIDES),
                       channels=m.head_channels, dropout_ratio=m.dropout, num_classes=len(class_names),
                       norm_cfg=NORM_CONFIGS[norm], align_corners=False)
    model = dict(type=MMSEG_MODEL, backbone=dict(type=m.backbone, style="pytorch"),
                 neck=dict(type="FPN", in_channels=in_channels, out_channels=m.neck_channels, num_outs=len(in_channels)),
                 decode_head=decode_head, test_cfg=test_cfg)
    test_pipeline = [dict(type="LoadImageFromFile"), dict(
        type="MultiScaleFlipAug", img_scale=tuple(config.augment.scale), flip=False, transforms=[
            dict(type="AlignResize", keep_ratio=True, size_divisor=SIZE_DIVISOR), dict(type="RandomFlip"),
            dict(type="Normalize", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True),
            dict(type="ImageToTensor", keys=["img"]), dict(type="Collect", keys=["img"])])]
    text = "\n".join([f"model = {model!r}",
                      f"data = {dict(test=dict(data_root=config.data.root or DEFAULT_ROOT, pipeline=test_pipeline))!r}"])
    write_release(path, to_release(state_dict, norm), tuple(class_names), text, {"mmseg_version": MMSEG_VERSION},
                  palette)


def as_training_checkpoint(segmenter: ReleaseSegmenter, source: str) -> dict[str, Any]:
    """A release file's segmenter as a seg-train checkpoint (model only, no optimizer state), which seg-eval,
    seg-predict and show read, with the release's test settings and palette."""
    from ..engine.training_state import FORMAT_KEY, FORMAT_VERSION

    return {
        FORMAT_KEY: FORMAT_VERSION, "task": "segmentation", "model_name": segmenter.backbone,
        "segmenter": "semantic_fpn", "class_names": list(segmenter.class_names), "config": segmenter.config.to_dict(),
        "palette": None if segmenter.palette is None else [list(c) for c in segmenter.palette],
        "model": segmenter.state_dict, "iteration": 0, "best": None, "converted_from": source,
    }


def is_segmenter_release(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a loaded checkpoint is an MMSegmentation release file (the release layout with a ``decode_head``)."""
    return is_release_layout(checkpoint) and any(
        isinstance(k, str) and k.startswith("decode_head.") for k in checkpoint.get("state_dict", checkpoint))


def holds_segmenter(path: str | Path) -> bool:
    """Whether ``path`` is a segmentation release file or a seg-train checkpoint."""
    from ..engine.training_state import FORMAT_KEY
    from ..models.loading import read_file

    loaded = read_file(path)
    return loaded.get("task") == "segmentation" if FORMAT_KEY in loaded else is_segmenter_release(loaded)


def _checkpoint_of(release: ReleaseFile, source: str) -> tuple[dict[str, Any], str]:
    segmenter = from_release(release)
    return as_training_checkpoint(segmenter, source), _holding(segmenter.backbone, segmenter.class_names)


def _write_release_of(source: str | Path, destination: str | Path) -> str:
    from .predict import load_segmenter

    segmenter = load_segmenter(source)
    write_release_file(destination, segmenter.model.state_dict(), segmenter.config, tuple(segmenter.class_names),
                       tuple(tuple(int(v) for v in c) for c in segmenter.colours))
    return _holding(segmenter.backbone, segmenter.class_names)


def _holding(backbone: str, class_names: Sequence[str]) -> str:
    return f"Semantic FPN {backbone}, {len(class_names)} classes"


# ``pvt convert`` of a segmenter: a seg-train checkpoint to the release layout (--to mmseg: a file MMSegmentation
# 0.x / 1.x loads with strict keys, and this package reads back), or a release file to a seg-train checkpoint.
CONVERTER = LayoutConverter("MMSegmentation", "seg-train", "seg-eval, seg-predict, show", _checkpoint_of,
                            _write_release_of)
