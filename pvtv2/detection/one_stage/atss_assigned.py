"""What ATSS and GFL share (Table 4's one-stage detectors): :class:`AtssAssignedDetector`, a
:class:`~pvtv2.detection.one_stage.dense_detector.DenseDetector` with one anchor per place, ATSS assignment
(:func:`~pvtv2.detection.one_stage.atss_assigner.atss_assign`, top 9 per level), a
:class:`~pvtv2.detection.one_stage.dense_head.DenseHead` and one loss loop, and their release layout and spec.

The settings are the official MMDetection 2.x configs' (``{atss,gfl}_pvt_v2_b2_fpn_3x_mstrain_fp16.py``):
octave base scale 8 (anchor sizes 64-1024 on strides 8-128), one ratio, GIoU (weight 2) of each positive's
predicted box, weighted per box by a detector's own weight (ATSS: the centerness target; GFL: the detached top
class score) and normalised by the sum of those weights; the classification loss and any further loss are the
detector's (:meth:`AtssAssignedDetector.positive_terms`).
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from ...engine.distributed import mean_over_processes
from ...engine.release import ReleaseFileError
from ..anchors import FPN_STRIDES, LevelAnchorGenerator, one_anchor_per_place
from ..key_map import KeyMap, KeyRule
from ..neck import PyramidBackboneWithFPN, p6p7_from_p5
from ..spec import BuildSettings, DetectorSpec, ReleaseLayout
from .atss_assigner import atss_assign
from .dense_detector import (DenseDetector, channels_of, dense_flops_forward, dense_test_cfg, dense_test_options,
                             positive_matches)
from .dense_head import DenseHead, check_group_norm, tower_key_rules

# Base size per level P3-P7: the official configs' octave base scale 8 x strides 8..128, one scale, ratio 1.
ANCHOR_SIZES = (64, 128, 256, 512, 1024)
ATSS_TOPK = 9
GIOU_WEIGHT = 2.0


@dataclass
class PositiveTerms:
    """One image's positive anchors as a detector's losses see them (P positives)."""

    class_target: torch.Tensor | float  # the classification target at each positive's class: 1, or a quality
    predicted: torch.Tensor  # (P, 4) predicted boxes, in the units of ``true``
    true: torch.Tensor  # (P, 4) their ground-truth boxes
    weight: torch.Tensor  # (P,) the weight of each box's losses
    extra: tuple[torch.Tensor, ...] = ()  # the detector's own terms, joined over the batch for extra_losses


class AtssAssignedDetector(DenseDetector):
    """ATSS and GFL: one anchor per place, ATSS assignment (the ``assign_topk`` anchors per level nearest each
    box centre) and one loss loop; a subclass says what each positive contributes (:meth:`positive_terms`),
    its classification loss (:meth:`classification_loss`) and its further losses (:meth:`extra_losses`).

    ``name``, ``box_channels`` and ``with_centerness`` describe the head :meth:`build` gives it."""

    name: ClassVar[str]
    box_channels: ClassVar[int]
    with_centerness: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, head: DenseHead, anchor_generator: LevelAnchorGenerator, *,
                 assign_topk: int = ATSS_TOPK, **kwargs: Any) -> None:
        if anchor_generator.num_anchors_per_location() != [1] * len(anchor_generator.strides):
            raise ValueError("ATSS and GFL heads predict one anchor per place: give one size and one ratio per level")
        super().__init__(backbone, head, anchor_generator, **kwargs)
        self.assign_topk = assign_topk

    @classmethod
    def build(cls, neck: PyramidBackboneWithFPN, settings: BuildSettings, **kwargs: Any) -> AtssAssignedDetector:
        """The detector on ``neck`` with its :class:`DenseHead`; ``kwargs`` go to :class:`DenseDetector`."""
        check_group_norm(cls.name, settings.fpn_channels)
        head = DenseHead(settings.fpn_channels, settings.num_classes, cls.box_channels,
                         with_centerness=cls.with_centerness)
        return cls(neck, head, one_anchor_per_place(settings.anchor_sizes), min_size=settings.min_size,
                   max_size=settings.max_size, **kwargs)

    def assign(self, anchors: torch.Tensor, level_counts: list[int], boxes: torch.Tensor) -> torch.Tensor:
        return atss_assign(anchors, level_counts, boxes, self.assign_topk)

    def losses(self, targets: list[dict[str, torch.Tensor]], outputs: dict[str, torch.Tensor], anchors: torch.Tensor,
               assigned: list[torch.Tensor], level_counts: list[int]) -> dict[str, torch.Tensor]:
        logits = outputs["cls_logits"].float()
        class_targets = torch.zeros_like(logits)
        level_strides = torch.tensor(self.anchor_generator.strides, dtype=torch.float32, device=anchors.device)
        strides = level_strides.repeat_interleave(torch.tensor(level_counts, device=anchors.device))
        matches, normaliser = positive_matches(targets, assigned)
        terms = []
        for i, (where, boxes, labels) in enumerate(matches):
            image = self.positive_terms({name: values[i, where].float() for name, values in outputs.items()},
                                        anchors[where], strides[where], boxes)
            class_targets[i, where, labels] = image.class_target
            terms.append(image)
        weight = torch.cat([image.weight for image in terms])
        box_normaliser = mean_over_processes(weight.sum()).clamp(min=1)
        giou = generalized_box_iou_loss(torch.cat([image.predicted for image in terms]),
                                        torch.cat([image.true for image in terms]), reduction="none")
        extra = [torch.cat(parts) for parts in zip(*(image.extra for image in terms))]
        return {
            "classification": self.classification_loss(logits, class_targets) / normaliser,
            "bbox_regression": GIOU_WEIGHT * (giou * weight).sum() / box_normaliser,
            **self.extra_losses(extra, weight, normaliser, box_normaliser),
        }

    @abstractmethod
    def positive_terms(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, strides: torch.Tensor,
                       boxes: torch.Tensor) -> PositiveTerms:
        """What one image's positives contribute: ``outputs`` are the head's rows at the positives (float),
        ``anchors`` (P, 4) theirs, ``strides`` (P,) their levels' strides, ``boxes`` (P, 4) their ground truth."""

    @abstractmethod
    def classification_loss(self, logits: torch.Tensor, class_targets: torch.Tensor) -> torch.Tensor:
        """The summed classification loss of ``logits`` (N, A, K) against ``class_targets`` (the positives'
        :attr:`PositiveTerms.class_target` at their class, 0 elsewhere)."""

    @abstractmethod
    def extra_losses(self, extra: list[torch.Tensor], weight: torch.Tensor, normaliser: torch.Tensor,
                     box_normaliser: torch.Tensor) -> dict[str, torch.Tensor]:
        """The detector's further losses from its :attr:`PositiveTerms.extra` (joined over the batch), the box
        weights, the positives' normaliser and the box weights' normaliser."""


# -- release files (MMDetection 2.x names) ------------------------------------------------------------------------
_SCALE_KEY = re.compile(r"^bbox_head\.scales\.(\d+)\.scale$")  # MMCV's Scale, one module per level
INTEGRAL_KEY = "bbox_head.integral.project"  # GFLHead's Integral buffer, linspace(0, reg_max, reg_max + 1)


def _head_to_ours(keys: KeyMap, head: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    scales = {int(match[1]): value for key, value in head.items() if (match := _SCALE_KEY.match(key))}
    if sorted(scales) != list(range(len(FPN_STRIDES))):
        raise ReleaseFileError(f"its MMDetection {keys.title} head has scales for levels {sorted(scales)}, "
                               f"expected 0-{len(FPN_STRIDES) - 1}")
    rest = {key: value for key, value in head.items() if not _SCALE_KEY.match(key) and key != INTEGRAL_KEY}
    return {**keys.to_ours(rest), "head.scales": torch.stack([scales[i].reshape(()) for i in range(len(scales))])}


def _head_to_release(keys: KeyMap, head: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = keys.to_release({key: value for key, value in head.items() if key != "head.scales"})
    out.update({f"bbox_head.scales.{i}.scale": scale.clone() for i, scale in enumerate(head["head.scales"])})
    return out


def release_layout(mmdet_type: str, prefix: str, extra: Sequence[KeyRule],
                   fixed: Mapping[str, torch.Tensor] | None = None) -> ReleaseLayout:
    """How a release file of ``mmdet_type`` names the head (``bbox_head.<prefix>_cls``..., plus ``extra`` rules);
    ``fixed``: buffers of MMDetection's head that ours computes, written as they are into the files we make."""
    keys = KeyMap(mmdet_type, [*tower_key_rules(), KeyRule("head.cls_logits.{p}", f"bbox_head.{prefix}_cls.{{p}}"),
                               KeyRule("head.bbox_reg.{p}", f"bbox_head.{prefix}_reg.{{p}}"), *extra])
    return ReleaseLayout(
        mmdet_type=mmdet_type,
        recognise=lambda names: any(name.startswith(f"bbox_head.{prefix}_cls.") for name in names),
        num_classes=lambda head: channels_of(head, f"bbox_head.{prefix}_cls.weight"),
        head_to_ours=lambda head, num_classes: _head_to_ours(keys, head),
        head_to_release=lambda head, num_classes: {**_head_to_release(keys, head),
                                                   **{key: value.clone() for key, value in (fixed or {}).items()}},
        test_options=dense_test_options,
        test_cfg=dense_test_cfg(0.6),
    )


def atss_assigned_spec(detector: type[AtssAssignedDetector], title: str, release: ReleaseLayout) -> DetectorSpec:
    """The :class:`~pvtv2.detection.spec.DetectorSpec` of ATSS or GFL (``detector``), named by its ``name``."""
    return DetectorSpec(
        name=detector.name, title=title, family="one-stage", with_masks=False, feature_levels=(1, 2, 3),
        extra_levels=p6p7_from_p5, anchor_sizes=ANCHOR_SIZES, build=detector.build,
        config_options=lambda model: dict(detections_per_img=model.detections_per_img),
        check_config=lambda model: check_group_norm(detector.name, model.fpn_channels, "model.fpn_channels"),
        flops_forward=dense_flops_forward, paper=(4, None), release=release,
    )
