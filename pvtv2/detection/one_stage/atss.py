"""ATSS (Zhang et al., CVPR 2020), one of Table 4's one-stage detectors, as the official MMDetection 2.x config
(``atss_pvt_v2_b2_fpn_3x_mstrain_fp16.py``): the shared frame of :mod:`.atss_assigned` with a centerness conv
on the reg tower; sigmoid focal loss (gamma 2, alpha 0.25) over the positives, GIoU (weight 2) of the decoded
boxes (box coder stds 0.1, 0.1, 0.2, 0.2) weighted by the centerness target, centerness BCE; at test the class
scores times the centerness."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import clip_boxes_to_image, sigmoid_focal_loss

from ..anchors import LevelAnchorGenerator
from ..boxes import DeltaXYWHCoder
from ..key_map import KeyRule
from .atss_assigned import AtssAssignedDetector, PositiveTerms, atss_assigned_spec, release_layout
from .dense_detector import FOCAL_ALPHA, FOCAL_GAMMA
from .dense_head import DenseHead

ATSS_BOX_STDS = (0.1, 0.1, 0.2, 0.2)  # the official DeltaXYWHBBoxCoder's target_stds
CENTERNESS_WEIGHT = 1.0


def centerness_target(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS's centerness of each anchor centre in its box: ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``."""
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    left_top, right_bottom = centres - boxes[:, :2], boxes[:, 2:] - centres
    ratios = torch.minimum(left_top, right_bottom) / torch.maximum(left_top, right_bottom)
    return ratios.prod(dim=1).sqrt()


class ATSS(AtssAssignedDetector):
    """ATSS (Zhang et al., CVPR 2020) as the official config: see the module docstring."""

    name = "atss"
    box_channels = 4
    with_centerness = True

    def __init__(self, backbone: nn.Module, head: DenseHead, anchor_generator: LevelAnchorGenerator,
                 **kwargs: Any) -> None:
        if head.centerness is None or head.bbox_reg.out_channels != 4:
            raise ValueError("ATSS needs a DenseHead with 4 box channels and a centerness conv")
        super().__init__(backbone, head, anchor_generator, **kwargs)
        self.box_coder = DeltaXYWHCoder(ATSS_BOX_STDS)

    def positive_terms(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, strides: torch.Tensor,
                       boxes: torch.Tensor) -> PositiveTerms:
        # The centerness target weighs the box loss and is the centerness branch's target.
        centerness = centerness_target(anchors, boxes)
        return PositiveTerms(class_target=1.0, predicted=self.box_coder.decode_single(outputs["bbox_regression"], anchors),
                             true=boxes, weight=centerness, extra=(outputs["centerness"][..., 0],))

    def classification_loss(self, logits: torch.Tensor, class_targets: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(logits, class_targets, FOCAL_ALPHA, FOCAL_GAMMA, reduction="sum")

    def extra_losses(self, extra: list[torch.Tensor], weight: torch.Tensor, normaliser: torch.Tensor,
                     box_normaliser: torch.Tensor) -> dict[str, torch.Tensor]:
        centre_logits, = extra
        return {"centerness": CENTERNESS_WEIGHT * F.binary_cross_entropy_with_logits(
            centre_logits, weight, reduction="sum") / normaliser}

    def decode(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, level: int,
               image_shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = self.box_coder.decode_single(outputs["bbox_regression"].float(), anchors)
        return clip_boxes_to_image(boxes, image_shape), outputs["centerness"].float()[:, 0].sigmoid()


RELEASE = release_layout("ATSS", "atss", [KeyRule("head.centerness.{p}", "bbox_head.atss_centerness.{p}")])
SPEC = atss_assigned_spec(ATSS, "ATSS", RELEASE)
