"""Building a detector by name on a PVT backbone with an FPN neck: :func:`build_detector` (each detector's
parts are its module's, found through :mod:`pvtv2.detection.registry`).

Targets use labels 1..K for K classes (0 is the two-stage detectors' background), so every detector reads the
same targets; detections come back labelled 1..K.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..errors import InputError
from .config import DetDataConfig, DetModelConfig
from .neck import PyramidBackboneWithFPN, build_neck
from .registry import detector_spec
from .spec import BuildSettings
from .transform import DetectionTransform


def build_backbone(
    kind: str,
    backbone: str,
    *,
    fpn_channels: int = 256,
    pretrained_backbone: str | os.PathLike | Mapping | bool | None = None,
    drop_path_rate: float = 0.0,
) -> PyramidBackboneWithFPN:
    """PVT ``backbone`` with the FPN neck of detector ``kind`` (the stages it reads, the levels it adds)."""
    spec = detector_spec(kind)
    return build_neck(backbone, spec.feature_levels, spec.extra_levels, fpn_channels=fpn_channels,
                      pretrained_backbone=pretrained_backbone, drop_path_rate=drop_path_rate)


def build_detector(
    kind: str,
    backbone: str = "pvt_v2_b2",
    *,
    num_classes: int = 80,
    pretrained_backbone: str | os.PathLike | Mapping | bool | None = None,
    drop_path_rate: float = 0.0,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[float] | None = None,
    box_head_channels: int = 1024,
    mask_head_channels: int = 256,
    **detector_kwargs: Any,
) -> nn.Module:
    """Detector ``kind`` (a name of :data:`~pvtv2.detection.registry.DETECTORS`) with PVT ``backbone`` and an FPN, for ``num_classes``
    object classes.

    ``min_size``/``max_size``: evaluation images are resized to a shorter side of ``min_size`` (the last
    one when several) and a longer side of at most ``max_size``; training images are resized by the data
    pipeline (:mod:`pvtv2.detection.data`) and enter the model as they are. ``anchor_sizes``: one base
    size per anchor level (default: the paper's, for 800-pixel images). ``fpn_channels``,
    ``box_head_channels`` and ``mask_head_channels`` default to the paper's (256, 1024, 256); smaller
    values make quick models for small images (the head widths are the two-stage detectors' only). Other
    keywords go to the detector's builder (``score_thresh``, ``nms_thresh``, ``detections_per_img``; the one-stage
    detectors' ``topk_candidates``, ``min_box_size``; torchvision's ``box_batch_size_per_image``...; Sparse
    R-CNN's ``num_proposals``...).
    """
    spec = detector_spec(kind)
    if num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}")
    if spec.anchor_sizes is None and anchor_sizes is not None:
        raise InputError(f"anchor_sizes does not apply to {kind}, which has learned proposals, not anchors")
    sizes = None if spec.anchor_sizes is None else tuple(spec.anchor_sizes if anchor_sizes is None else anchor_sizes)
    if sizes is not None and len(sizes) != len(spec.anchor_sizes):
        raise InputError(f"anchor_sizes needs one base size per FPN level ({len(spec.anchor_sizes)}), got {list(sizes)}")
    settings = BuildSettings(
        num_classes=num_classes, fpn_channels=fpn_channels, anchor_sizes=sizes, box_head_channels=box_head_channels,
        mask_head_channels=mask_head_channels, min_size=(min_size,) if isinstance(min_size, int) else tuple(min_size),
        max_size=max_size,
    )
    neck = build_backbone(kind, backbone, fpn_channels=fpn_channels, pretrained_backbone=pretrained_backbone,
                          drop_path_rate=drop_path_rate)
    detector = spec.build(neck, settings, **detector_kwargs)
    detector.transform = DetectionTransform(settings.min_size, settings.max_size)
    return detector


def build_from_config(model: DetModelConfig, data: DetDataConfig, num_classes: int, pretrained: bool = True,
                      **options: Any) -> nn.Module:
    """The detector a training config describes; ``pretrained=False`` leaves out the backbone weights
    (when a detector checkpoint is loaded over it anyway); ``options`` add to or override the config's
    keywords of the detector's builder."""
    return build_detector(
        model.detector, model.backbone, num_classes=num_classes,
        pretrained_backbone=model.pretrained if pretrained else None,  # "official", a checkpoint path, or None
        drop_path_rate=model.drop_path_rate, min_size=data.min_size, max_size=data.max_size,
        fpn_channels=model.fpn_channels, anchor_sizes=model.anchor_sizes, box_head_channels=model.box_head_channels,
        mask_head_channels=model.mask_head_channels, **{**detector_spec(model.detector).config_options(model), **options},
    )
