"""RetinaNet (section 5.2, Table 3) with a PVT backbone, as the official ``retinanet_pvt_*_fpn_1x_coco.py`` configs
(MMDetection's ``RetinaHead``): torchvision's ``RetinaNetHead`` (4 cls + 4 reg convs of 256 with ReLU, no norm)
with K sigmoid class channels per anchor on the FPN's P3-P7, P6 computed from C5 (MMDetection's ``on_input``),
9 anchors per place (3 ratios x 3 octave scales of 4 x the level's stride).

Training as MMDetection's: ``MaxIoUAssigner(0.5, 0.4, min_pos_iou=0)`` with its low-quality matches
(:class:`~pvtv2.detection.max_iou_assigner.MaxIoUMatcher`), the anchors between the thresholds ignored; sigmoid focal
loss (gamma 2, alpha 0.25) over the other anchors and L1 of the box deltas (stds 1) over the positives, both
divided by the positives of the batch (at least one per image; MMDetection's ``avg_factor``), averaged over the
processes of a distributed run. Test: :class:`~pvtv2.detection.one_stage.dense_detector.DenseDetector`'s, MMDetection's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import box_iou, clip_boxes_to_image, sigmoid_focal_loss

from ...engine.release import ReleaseFileError
from ..anchors import LevelAnchorGenerator
from ..boxes import DeltaXYWHCoder
from ..key_map import KeyMap, KeyRule
from ..max_iou_assigner import MaxIoUMatcher
from ..neck import PyramidBackboneWithFPN, p6p7_from_c5
from ..spec import BuildSettings, DetectorSpec, ReleaseLayout
from .dense_detector import (FOCAL_ALPHA, FOCAL_GAMMA, DenseDetector, channels_of, dense_flops_forward, dense_test_cfg,
                             dense_test_options, positive_matches)

ASPECT_RATIOS = (0.5, 1.0, 2.0)
SCALES_PER_OCTAVE = 3
ANCHORS_PER_PLACE = len(ASPECT_RATIOS) * SCALES_PER_OCTAVE
# Base size per level P3-P7: MMDetection's octave base scale 4 x strides 8..128 (torchvision's defaults too).
ANCHOR_SIZES = (32, 64, 128, 256, 512)
POSITIVE_IOU, NEGATIVE_IOU = 0.5, 0.4  # the official MaxIoUAssigner's pos_iou_thr and neg_iou_thr
NMS_IOU = 0.5  # the official test_cfg's


class RetinaNet(DenseDetector):
    """RetinaNet: see the module docstring. Keywords as :class:`DenseDetector`'s (the official test settings)."""

    def __init__(self, backbone: nn.Module, head: RetinaNetHead, anchor_generator: LevelAnchorGenerator, *,
                 nms_thresh: float = NMS_IOU, **kwargs: Any) -> None:
        super().__init__(backbone, head, anchor_generator, nms_thresh=nms_thresh, **kwargs)
        self.matcher = MaxIoUMatcher(POSITIVE_IOU, NEGATIVE_IOU, allow_low_quality_matches=True, min_pos_iou=0.0)
        self.box_coder = DeltaXYWHCoder((1.0, 1.0, 1.0, 1.0))  # MMDetection's target_stds for RetinaNet

    def assign(self, anchors: torch.Tensor, level_counts: list[int], boxes: torch.Tensor) -> torch.Tensor:
        if len(boxes) == 0:
            return torch.full((len(anchors),), Matcher.BELOW_LOW_THRESHOLD, dtype=torch.long, device=anchors.device)
        return self.matcher(box_iou(boxes, anchors))

    def losses(self, targets: list[dict[str, torch.Tensor]], outputs: dict[str, torch.Tensor], anchors: torch.Tensor,
               assigned: list[torch.Tensor], level_counts: list[int]) -> dict[str, torch.Tensor]:
        logits, deltas = outputs["cls_logits"].float(), outputs["bbox_regression"].float()
        classes = torch.zeros_like(logits)
        counted = torch.stack([matched != Matcher.BETWEEN_THRESHOLDS for matched in assigned])  # not ignored
        box_loss = deltas.new_zeros(())
        matches, normaliser = positive_matches(targets, assigned)
        for i, (where, boxes, labels) in enumerate(matches):
            classes[i, where, labels] = 1.0
            box_loss = box_loss + F.l1_loss(deltas[i, where], self.box_coder.encode_single(boxes, anchors[where]),
                                            reduction="sum")
        focal = sigmoid_focal_loss(logits, classes, FOCAL_ALPHA, FOCAL_GAMMA, reduction="none")
        return {"classification": (focal * counted[..., None]).sum() / normaliser,
                "bbox_regression": box_loss / normaliser}

    def decode(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, level: int,
               image_shape: tuple[int, int]) -> tuple[torch.Tensor, None]:
        return clip_boxes_to_image(self.box_coder.decode_single(outputs["bbox_regression"].float(), anchors),
                                   image_shape), None

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any) -> None:
        # det-train checkpoints written before K-class RetinaNet have K + 1 class channels per anchor, the first
        # (class 0) never a positive: dropping it leaves the K classes 1..K in the channels they have now.
        classes, anchors = self.head.classification_head.num_classes, self.head.classification_head.num_anchors
        for name in ("weight", "bias"):
            key = f"{prefix}head.classification_head.cls_logits.{name}"
            stored = state_dict.get(key)
            if stored is not None and stored.shape[0] == anchors * (classes + 1):
                state_dict[key] = stored.reshape(anchors, classes + 1, *stored.shape[1:])[:, 1:].flatten(0, 1)
        super()._load_from_state_dict(state_dict, prefix, *args)


def build_retinanet(neck: PyramidBackboneWithFPN, settings: BuildSettings, **kwargs: Any) -> RetinaNet:
    """RetinaNet on ``neck``; ``kwargs`` go to :class:`RetinaNet` (``score_thresh``, ``nms_thresh``,
    ``detections_per_img``, ``topk_candidates``, ``min_box_size``)."""
    octave = [2 ** (i / SCALES_PER_OCTAVE) for i in range(SCALES_PER_OCTAVE)]
    anchors = LevelAnchorGenerator([[s * o for o in octave] for s in settings.anchor_sizes],
                                   [ASPECT_RATIOS] * len(settings.anchor_sizes))
    head = RetinaNetHead(settings.fpn_channels, anchors.num_anchors_per_location()[0], settings.num_classes)
    return RetinaNet(neck, head, anchors, min_size=settings.min_size, max_size=settings.max_size, **kwargs)


# -- release files: MMDetection 2.x's RetinaHead names ------------------------------------------------------------
RELEASE_KEYS = KeyMap("RetinaNet", [
    KeyRule("head.classification_head.conv.{i}.0.{p}", "bbox_head.cls_convs.{i}.conv.{p}"),
    KeyRule("head.regression_head.conv.{i}.0.{p}", "bbox_head.reg_convs.{i}.conv.{p}"),
    KeyRule("head.classification_head.cls_logits.{p}", "bbox_head.retina_cls.{p}"),
    KeyRule("head.regression_head.bbox_reg.{p}", "bbox_head.retina_reg.{p}"),
])


def _release_classes(head: Mapping[str, torch.Tensor]) -> int:
    channels = channels_of(head, "bbox_head.retina_cls.weight")
    if channels % ANCHORS_PER_PLACE:
        raise ReleaseFileError(f"its bbox_head.retina_cls has {channels} channels, not {ANCHORS_PER_PLACE} anchors "
                               f"x classes")
    return channels // ANCHORS_PER_PLACE


RELEASE = ReleaseLayout(
    mmdet_type="RetinaNet",
    recognise=lambda names: any(name.startswith("bbox_head.retina_cls.") for name in names),
    num_classes=_release_classes,
    head_to_ours=lambda head, num_classes: RELEASE_KEYS.to_ours(head),
    head_to_release=lambda head, num_classes: RELEASE_KEYS.to_release(head),
    test_options=dense_test_options,
    test_cfg=dense_test_cfg(NMS_IOU),
)

SPEC = DetectorSpec(
    name="retinanet", title="RetinaNet", family="one-stage", with_masks=False, feature_levels=(1, 2, 3),
    extra_levels=p6p7_from_c5, anchor_sizes=ANCHOR_SIZES, build=build_retinanet,
    config_options=lambda model: dict(detections_per_img=model.detections_per_img),
    flops_forward=dense_flops_forward, paper=(3, "retinanet_params_M"), release=RELEASE,
)
