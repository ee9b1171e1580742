"""The two-stage detectors' RoI heads as MMDetection's ``StandardRoIHead``: torchvision's ``RoIHeads``
(sampling, losses, mask inference) with MMDetection's class layout, assignment and post-processing.

Class layout. MMDetection's ``BBoxHead`` has K + 1 class scores (background last) and 4K class-specific
deltas; its ``FCNMaskHead`` K mask logits. :class:`BoxPredictor` and :class:`MaskPredictor` hold exactly those
weights (the scores with the background first, our labels' order: a row permutation, lossless), and hand
torchvision's ``RoIHeads`` its own layout by putting zeros in front for the background, which it never
reads. Checkpoints of the torchvision layout (4(K + 1) deltas, K + 1 mask logits) load by dropping the
background's rows.

Inference (``test_cfg.rcnn``): softmax scores; each class's box decoded (``DeltaXYWHBBoxCoder``, stds 0.1,
0.1, 0.2, 0.2) and clipped to the image; ``multiclass_nms``: the (box, class) pairs scoring above the
threshold, mmcv's ``batched_nms`` over the classes in the resized image's pixels, the best 100 kept; no
small-box removal (torchvision drops boxes under 1e-2 pixels). The masks of the kept boxes follow
(torchvision's ``maskrcnn_inference``), then the transform maps boxes back and pastes the masks.

Training: ``MaxIoUAssigner(0.5, 0.5, min_pos_iou 0.5)`` with its low-quality rule
(:class:`~pvtv2.detection.max_iou_assigner.MaxIoUMatcher`), 512 RoIs per image at 25% positives with the ground
truth added, torchvision's losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import clip_boxes_to_image

from ..boxes import DeltaXYWHCoder, batched_nms
from ..max_iou_assigner import MaxIoUMatcher

BOX_STDS = (0.1, 0.1, 0.2, 0.2)  # the official bbox_coder's target_stds
MATCH_IOU = 0.5  # the official train_cfg.rcnn assigner: pos_iou_thr = neg_iou_thr = min_pos_iou
SAMPLED_ROIS, POSITIVE_FRACTION = 512, 0.25
SCORE_THRESH, NMS_IOU, DETECTIONS_PER_IMG = 0.05, 0.5, 100  # the official test_cfg.rcnn


def _drop_leading_rows(state_dict: dict[str, Tensor], prefix: str, rows: int, expected: int) -> None:
    """Torchvision-layout weights under ``prefix`` (``expected`` + ``rows`` outputs, the background's
    first) in place as ours: without the background's ``rows``."""
    for name in ("weight", "bias"):
        value = state_dict.get(prefix + name)
        if value is not None and value.shape[0] == expected + rows:
            state_dict[prefix + name] = value[rows:]


class BoxPredictor(nn.Module):
    """MMDetection's ``fc_cls`` and ``fc_reg``: ``cls_score`` K + 1 logits (background first), ``bbox_pred``
    4K class-specific deltas; ``forward`` gives torchvision's (K + 1) x 4 deltas, zeros for the background."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, 4 * num_classes)
        if self.cls_score.weight.device.type != "meta":  # MMDetection's BBoxHead init
            nn.init.normal_(self.cls_score.weight, std=0.01)
            nn.init.normal_(self.bbox_pred.weight, std=0.001)
            nn.init.zeros_(self.cls_score.bias)
            nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), F.pad(self.bbox_pred(x), (4, 0))  # (N, K + 1), (N, 4(K + 1))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        _drop_leading_rows(state_dict, prefix + "bbox_pred.", 4, 4 * self.num_classes)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MaskPredictor(MaskRCNNPredictor):
    """torchvision's mask predictor (2x deconv, 1x1 logits) with MMDetection's K logits (``conv_logits``);
    ``forward`` gives torchvision's K + 1, zeros for the background."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__(in_channels, dim_reduced, num_classes)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(super().forward(x), (0, 0, 0, 0, 1, 0))  # (N, K + 1, 2H, 2W)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        _drop_leading_rows(state_dict, prefix + "mask_fcn_logits.", 1, self.num_classes)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class StandardRoIHeads(RoIHeads):
    """torchvision's RoIHeads with MMDetection's assignment, box decoding and post-processing (module
    docstring); ``box_predictor`` a :class:`BoxPredictor`, ``mask_predictor`` a :class:`MaskPredictor`."""

    def __init__(self, box_roi_pool: nn.Module, box_head: nn.Module, box_predictor: nn.Module,
                 mask_roi_pool: nn.Module, mask_head: nn.Module, mask_predictor: nn.Module, *,
                 score_thresh: float = SCORE_THRESH, nms_thresh: float = NMS_IOU,
                 detections_per_img: int = DETECTIONS_PER_IMG, batch_size_per_image: int = SAMPLED_ROIS,
                 positive_fraction: float = POSITIVE_FRACTION, box_stds: Sequence[float] = BOX_STDS) -> None:
        super().__init__(box_roi_pool, box_head, box_predictor, MATCH_IOU, MATCH_IOU, batch_size_per_image,
                         positive_fraction, None, score_thresh, nms_thresh, detections_per_img,
                         mask_roi_pool=mask_roi_pool, mask_head=mask_head, mask_predictor=mask_predictor)
        self.box_coder = DeltaXYWHCoder(box_stds)
        self.proposal_matcher = MaxIoUMatcher(MATCH_IOU, MATCH_IOU, allow_low_quality_matches=True,
                                              min_pos_iou=MATCH_IOU)

    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                               image_shapes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Each image's boxes, scores and labels (1..K) as MMDetection's ``BBoxHead.predict_by_feat`` with
        ``multiclass_nms``; ``box_regression`` in torchvision's layout (background first)."""
        scores = F.softmax(class_logits.float(), dim=-1)[:, 1:]  # (N, K): the classes, not the background
        deltas = box_regression.float().unflatten(1, (-1, 4))[:, 1:].flatten(1)
        boxes = self.box_coder.decode_single(deltas, torch.cat(proposals).float()).unflatten(1, (-1, 4))
        all_boxes, all_scores, all_labels = [], [], []
        for image_boxes, image_scores, shape in zip(boxes.split([len(p) for p in proposals]),
                                                     scores.split([len(p) for p in proposals]), image_shapes):
            image_boxes = clip_boxes_to_image(image_boxes, shape).reshape(-1, 4)
            groups = torch.arange(image_scores.shape[1], device=scores.device).expand_as(image_scores).reshape(-1)
            image_scores = image_scores.reshape(-1)
            valid = torch.where(image_scores > self.score_thresh)[0]
            image_boxes, image_scores, groups = image_boxes[valid], image_scores[valid], groups[valid]
            # MMDetection's classes 0..K-1 offset the boxes for NMS; our labels are those + 1.
            keep = batched_nms(image_boxes, image_scores, groups, self.nms_thresh)[:self.detections_per_img]
            all_boxes.append(image_boxes[keep])
            all_scores.append(image_scores[keep])
            all_labels.append(groups[keep] + 1)
        return all_boxes, all_scores, all_labels
