"""What the package knows about one detector, in one entry: :class:`DetectorSpec`.

Each detector module declares its spec beside its code; :mod:`pvtv2.detection.registry` collects them. The
config's choice of detector, ``pvt table``, ``pvt show``, the command's help, building, FLOP counting and
the official release files all read the spec, so a detector is added or changed in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from ..engine.config import ConfigError

if TYPE_CHECKING:
    from .config import DetModelConfig

# MMDetection's FLOP count (its dummy forward) runs a two-stage detector's box head on this many RoIs and its
# mask head on this many.
DUMMY_BOX_ROIS, DUMMY_MASK_ROIS = 1000, 100


@dataclass(frozen=True)
class BuildSettings:
    """The settings every detector's builder takes (its own keywords come beside them)."""

    num_classes: int
    fpn_channels: int = 256
    # One base size per anchor level (None for a detector without anchors): the spec's default unless given.
    anchor_sizes: tuple[float, ...] | None = None
    box_head_channels: int = 1024
    mask_head_channels: int = 256
    min_size: tuple[int, ...] = (800,)
    max_size: int = 1333


@dataclass(frozen=True)
class ReleaseLayout:
    """How the detector's official release files (MMDetection 2.x checkpoints) name its head weights and
    settings (the backbone's and the FPN's are shared: :mod:`pvtv2.detection.release`).

    ``mmdet_type``: the model ``type`` of the release config (``RetinaNet``); ``recognise(keys)``: whether
    release head keys (those outside ``backbone.`` and ``neck.``) are this detector's, for a file whose config
    names none; ``num_classes(head)``: the classes its head weights are for; ``head_to_ours(head,
    num_classes)`` and ``head_to_release(head, num_classes)``: the head weights in the other layout (ours
    are the detector's state dict keys outside ``backbone.``); ``test_options(model_config)``: our builder's
    keywords for the release config's ``model`` dict (its ``test_cfg``: score threshold, NMS IoU, top-k...);
    ``test_cfg``: the official config's ``test_cfg``, written into the files we make.
    """

    mmdet_type: str
    recognise: Callable[[Sequence[str]], bool]
    num_classes: Callable[[Mapping[str, torch.Tensor]], int]
    head_to_ours: Callable[[Mapping[str, torch.Tensor], int], dict[str, torch.Tensor]]
    head_to_release: Callable[[Mapping[str, torch.Tensor], int], dict[str, torch.Tensor]]
    test_options: Callable[[Mapping[str, Any]], dict[str, Any]]
    test_cfg: Mapping[str, Any]


@dataclass(frozen=True)
class DetectorSpec:
    """One detector: how to build it and everything derived from what it is.

    ``feature_levels``: the backbone stages its FPN reads (0 = stride 4 ... 3 = stride 32);
    ``extra_levels(channels, fpn_channels)``: the FPN's block for levels past the backbone's (or None);
    ``build(neck, settings, **kwargs)``: the detector on a backbone with its FPN; ``config_options(model)``:
    the keywords a training config gives ``build``; ``check_config(model)``: rules of the detector on its
    config section (raises :class:`~pvtv2.engine.config.ConfigError`); ``flops_forward(detector, images)``:
    what MMDetection's ``get_flops.py`` runs of it; ``paper``: ``(table, column)`` of its published figures
    in the reference (Table 3: a column of the backbone's row; Table 4: rows named ``<name>/<backbone>``).
    """

    name: str
    title: str
    family: Literal["one-stage", "two-stage", "query"]
    with_masks: bool
    feature_levels: tuple[int, ...]
    extra_levels: Callable[[Sequence[int], int], nn.Module | None]
    anchor_sizes: tuple[float, ...] | None
    build: Callable[..., nn.Module]
    config_options: Callable[[DetModelConfig], dict[str, Any]]
    flops_forward: Callable[[nn.Module, torch.Tensor], None]
    paper: tuple[int, str | None]
    check_config: Callable[[DetModelConfig], None] = field(default=lambda model: None)
    release: ReleaseLayout | None = None


def check_multiple(key: str, value: int, divisor: int, detector: str, reason: str) -> None:
    """A :class:`~pvtv2.engine.config.ConfigError` unless ``value`` (named ``key``) is a multiple of ``divisor``,
    which ``reason`` explains (a layer of ``detector`` that splits its channels into groups or heads)."""
    if value % divisor:
        raise ConfigError(f"{key} must be a multiple of {divisor} for {detector} ({reason}), got {value}")
