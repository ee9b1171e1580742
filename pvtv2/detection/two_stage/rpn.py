"""The two-stage detectors' region proposal network as MMDetection's ``RPNHead``: torchvision's
``RegionProposalNetwork`` and ``RPNHead`` (one 3x3 conv, objectness and box convs) on the FPN's P2-P6, with
MMDetection's anchors, assignment and proposals.

* Anchors (:class:`~pvtv2.detection.anchors.LevelAnchorGenerator`): 3 ratios of 8 x the level's stride, at
  the strides 4-64 themselves and of unrounded sizes (torchvision's ``AnchorGenerator`` rounds them and
  derives P6's stride from the padded image, 61 instead of 64 at 800 x 1216).
* Assignment: ``MaxIoUAssigner(pos 0.7, neg 0.3, min_pos_iou 0.3)`` with its low-quality rule
  (:class:`~pvtv2.detection.max_iou_assigner.MaxIoUMatcher`); 256 anchors sampled per image, half positive.
* Proposals, per image: each level's top-k scores (``sort``, as MMDetection), decoded with
  ``DeltaXYWHBBoxCoder`` (log-sizes clamped on both sides) and clipped to the image, boxes of zero width or
  height dropped (``min_bbox_size=0``; torchvision drops those under 1e-3), NMS per level (mmcv's
  ``batched_nms``), the best ``post_nms_top_n`` kept. Training uses the same with its own top-k numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import clip_boxes_to_image

from ..anchors import LevelAnchorGenerator
from ..boxes import DeltaXYWHCoder, batched_nms
from ..max_iou_assigner import MaxIoUMatcher

ASPECT_RATIOS = (0.5, 1.0, 2.0)
RPN_STRIDES = (4, 8, 16, 32, 64)  # P2-P6
# RPN anchor base size per level P2-P6: MMDetection's scale 8 x strides 4..64.
ANCHOR_SIZES = (32, 64, 128, 256, 512)
POSITIVE_IOU, NEGATIVE_IOU = 0.7, 0.3  # the official train_cfg.rpn assigner (min_pos_iou 0.3)
SAMPLED_ANCHORS, POSITIVE_FRACTION = 256, 0.5
NMS_IOU = 0.7


class ProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with MMDetection's assignment, box decoding and proposal selection (module docstring)."""

    def __init__(self, anchor_generator: LevelAnchorGenerator, head: RPNHead, *, pre_nms_top_n: dict[str, int],
                 post_nms_top_n: dict[str, int], nms_thresh: float = NMS_IOU, min_box_size: float = 0.0) -> None:
        super().__init__(anchor_generator, head, POSITIVE_IOU, NEGATIVE_IOU, SAMPLED_ANCHORS, POSITIVE_FRACTION,
                         pre_nms_top_n, post_nms_top_n, nms_thresh)
        self.box_coder = DeltaXYWHCoder((1.0, 1.0, 1.0, 1.0))
        self.proposal_matcher = MaxIoUMatcher(POSITIVE_IOU, NEGATIVE_IOU, allow_low_quality_matches=True,
                                              min_pos_iou=NEGATIVE_IOU)
        self.min_size = min_box_size  # kept: boxes wider and higher than this (MMDetection's min_bbox_size)

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        """Each image's proposals (boxes decoded from every anchor, (B, A, 4)) and their scores, as
        MMDetection's ``RPNHead.predict_by_feat``."""
        scores = objectness.detach().reshape(len(proposals), -1).sigmoid()
        top_n = self.pre_nms_top_n()
        final_boxes, final_scores = [], []
        for image_boxes, image_scores, image_shape in zip(proposals, scores, image_shapes):
            boxes, kept_scores, levels = [], [], []
            for level, (level_boxes, level_scores) in enumerate(zip(image_boxes.split(num_anchors_per_level),
                                                                    image_scores.split(num_anchors_per_level))):
                if len(level_scores) > top_n:  # sorted only then, as MMDetection (the order breaks NMS ties)
                    level_scores, order = level_scores.sort(descending=True)
                    level_scores, level_boxes = level_scores[:top_n], level_boxes[order[:top_n]]
                boxes.append(level_boxes)
                kept_scores.append(level_scores)
                levels.append(torch.full((len(level_scores),), level, device=level_scores.device))
            boxes = clip_boxes_to_image(torch.cat(boxes), image_shape)
            image_scores, levels = torch.cat(kept_scores), torch.cat(levels)
            valid = ((boxes[:, 2:] - boxes[:, :2]) > self.min_size).all(dim=1)
            boxes, image_scores, levels = boxes[valid], image_scores[valid], levels[valid]
            keep = batched_nms(boxes, image_scores, levels, self.nms_thresh)[:self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(image_scores[keep])
        return final_boxes, final_scores


def build_rpn(fpn_channels: int, anchor_sizes: Sequence[float], *, pre_nms_top_n_train: int = 2000,
              pre_nms_top_n_test: int = 1000, post_nms_top_n_train: int = 1000, post_nms_top_n_test: int = 1000,
              nms_thresh: float = NMS_IOU, min_box_size: float = 0.0) -> ProposalNetwork:
    """The RPN on an FPN of ``fpn_channels`` with one anchor base size per level (P2-P6); the defaults are
    the official Mask R-CNN config's ``rpn_proposal`` (training) and ``test_cfg.rpn``."""
    anchors = LevelAnchorGenerator([(s,) for s in anchor_sizes], [ASPECT_RATIOS] * len(anchor_sizes), RPN_STRIDES)
    head = RPNHead(fpn_channels, anchors.num_anchors_per_location()[0])
    return ProposalNetwork(anchors, head, pre_nms_top_n=dict(training=pre_nms_top_n_train, testing=pre_nms_top_n_test),
                           post_nms_top_n=dict(training=post_nms_top_n_train, testing=post_nms_top_n_test),
                           nms_thresh=nms_thresh, min_box_size=min_box_size)
