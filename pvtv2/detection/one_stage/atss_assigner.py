"""ATSS, Adaptive Training Sample Selection (Zhang et al., CVPR 2020): the label assignment of ATSS and GFL, as
MMDetection 2.x's ``ATSSAssigner(topk=9)``.

torchvision's detectors assign by fixed IoU thresholds (``Matcher``); ATSS picks each box's threshold from
the statistics of its own candidates, which no library piece does, so it is written here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

BACKGROUND = -1
INSIDE_MARGIN = 0.01  # an anchor centre must lie this far inside the box (MMDetection's value)


def atss_assign(anchors: torch.Tensor, level_counts: Sequence[int], gt_boxes: torch.Tensor, topk: int = 9) -> torch.Tensor:
    """The index of the box each anchor is a positive of, or -1 (background), for one image.

    ``anchors`` (A, 4) are the image's anchors level by level, ``level_counts[l]`` of them on level ``l``;
    ``gt_boxes`` (G, 4); both x0, y0, x1, y1. Per box: on each level the ``topk`` anchors whose centres are
    nearest the box centre are candidates; those whose IoU with the box is at least the mean + standard
    deviation (unbiased, as ``torch.std`` and MMDetection) of the candidates' IoUs, and whose centre lies
    inside the box, are its positives. An anchor positive for several boxes goes to the one of highest IoU.
    """
    num_anchors, num_boxes = anchors.shape[0], gt_boxes.shape[0]
    assigned = anchors.new_full((num_anchors,), BACKGROUND, dtype=torch.long)
    if num_boxes == 0 or num_anchors == 0:
        return assigned
    if sum(level_counts) != num_anchors:
        raise ValueError(f"level_counts {list(level_counts)} do not add up to the {num_anchors} anchors")
    ious = box_iou(anchors, gt_boxes)  # (A, G)
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    distances = torch.cdist(anchor_centres, (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2)  # (A, G)

    candidates = []  # per level, the indices of the topk nearest anchors of each box: (k, G)
    start = 0
    for count in level_counts:
        nearest = distances[start:start + count].topk(min(topk, count), dim=0, largest=False).indices
        candidates.append(nearest + start)
        start += count
    candidate_index = torch.cat(candidates)  # (C, G)
    candidate_ious = ious.gather(0, candidate_index)
    threshold = candidate_ious.mean(0) + candidate_ious.std(0)
    centres = anchor_centres[candidate_index]  # (C, G, 2)
    sides = torch.stack([centres[..., 0] - gt_boxes[:, 0], centres[..., 1] - gt_boxes[:, 1],
                         gt_boxes[:, 2] - centres[..., 0], gt_boxes[:, 3] - centres[..., 1]])
    positive = (candidate_ious >= threshold) & (sides.min(dim=0).values > INSIDE_MARGIN)

    box_index = torch.arange(num_boxes, device=anchors.device).expand_as(candidate_index)
    positive_ious = torch.full_like(ious, -1.0)  # IoUs are >= 0: -1 marks "not a positive of this box"
    rows, columns = candidate_index[positive], box_index[positive]
    positive_ious[rows, columns] = ious[rows, columns]
    best_iou, best_box = positive_ious.max(dim=1)
    return torch.where(best_iou >= 0, best_box, assigned)
