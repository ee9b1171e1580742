"""GFL (Li et al., NeurIPS 2020), one of Table 4's one-stage detectors, as the official MMDetection 2.x config
(``gfl_pvt_v2_b2_fpn_3x_mstrain_fp16.py``): the shared frame of :mod:`.atss_assigned` with 4 x 17 distribution
logits per place, their integral times the stride as the distances from the anchor centre; Quality Focal Loss
(beta 2) against the detached IoU of predicted and true box, Distribution Focal Loss (weight 0.25) and GIoU
(weight 2), both weighted by the detached top class score (:mod:`.gfl_losses`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.ops import box_iou, clip_boxes_to_image

from ..anchors import LevelAnchorGenerator
from .atss_assigned import INTEGRAL_KEY, AtssAssignedDetector, PositiveTerms, atss_assigned_spec, release_layout
from .dense_head import DenseHead
from .gfl_losses import boxes_to_distances, distances_to_boxes, distribution_focal_loss, integral, quality_focal_loss

REG_MAX = 16  # the distribution's bins per side: 0..16 strides
QFL_BETA = 2.0
DFL_WEIGHT = 0.25
DFL_TARGET_MARGIN = 0.1  # distance targets stay below reg_max by this much, so the right-hand bin exists


class GFL(AtssAssignedDetector):
    """GFL (Li et al., NeurIPS 2020) as the official config: see the module docstring."""

    name = "gfl"
    box_channels = 4 * (REG_MAX + 1)

    def __init__(self, backbone: nn.Module, head: DenseHead, anchor_generator: LevelAnchorGenerator,
                 reg_max: int = REG_MAX, **kwargs: Any) -> None:
        if head.bbox_reg.out_channels != 4 * (reg_max + 1):
            raise ValueError(f"GFL with reg_max {reg_max} needs a DenseHead with {4 * (reg_max + 1)} box channels")
        super().__init__(backbone, head, anchor_generator, **kwargs)
        self.reg_max = reg_max

    def positive_terms(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, strides: torch.Tensor,
                       boxes: torch.Tensor) -> PositiveTerms:
        # Everything in units of the level's stride, as the distribution's bins are.
        stride = strides[:, None]
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2 / stride
        boxes = boxes / stride
        side_logits = outputs["bbox_regression"]
        predicted = distances_to_boxes(centres, integral(side_logits, self.reg_max))
        return PositiveTerms(
            class_target=box_iou(predicted.detach(), boxes).diagonal(),  # QFL's soft target: the IoU
            predicted=predicted, true=boxes, weight=outputs["cls_logits"].detach().sigmoid().max(dim=1).values,
            extra=(side_logits.reshape(-1, self.reg_max + 1),
                   boxes_to_distances(centres, boxes, self.reg_max - DFL_TARGET_MARGIN).reshape(-1)),
        )

    def classification_loss(self, logits: torch.Tensor, class_targets: torch.Tensor) -> torch.Tensor:
        return quality_focal_loss(logits, class_targets, QFL_BETA).sum()

    def extra_losses(self, extra: list[torch.Tensor], weight: torch.Tensor, normaliser: torch.Tensor,
                     box_normaliser: torch.Tensor) -> dict[str, torch.Tensor]:
        side_logits, side_targets = extra
        dfl = distribution_focal_loss(side_logits, side_targets)
        # MMDetection averages DFL over the 4 sides of each box (avg_factor 4).
        return {"distribution": DFL_WEIGHT * (dfl * weight.repeat_interleave(4)).sum() / 4 / box_normaliser}

    def decode(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, level: int,
               image_shape: tuple[int, int]) -> tuple[torch.Tensor, None]:
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        distances = integral(outputs["bbox_regression"].float(), self.reg_max) * self.anchor_generator.strides[level]
        return clip_boxes_to_image(distances_to_boxes(centres, distances), image_shape), None


RELEASE = release_layout("GFL", "gfl", [], {INTEGRAL_KEY: torch.linspace(0, REG_MAX, REG_MAX + 1)})
SPEC = atss_assigned_spec(GFL, "GFL", RELEASE)
