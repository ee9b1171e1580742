"""Label assignment by IoU thresholds as MMDetection's ``MaxIoUAssigner``: :class:`MaxIoUMatcher`, on
torchvision's ``Matcher`` (RetinaNet, the RPN and the RoI heads)."""

from __future__ import annotations

import torch
from torchvision.models.detection._utils import Matcher


class MaxIoUMatcher(Matcher):
    """torchvision's ``Matcher`` with MMDetection's ``MaxIoUAssigner`` rule for low-quality matches.

    Both give a prediction the ground truth it overlaps most, -1 below ``low_threshold`` and -2 between the
    two thresholds. For the low-quality matches (``allow_low_quality_matches``), torchvision gives each
    prediction that is some ground truth's best its *own* best ground truth, whatever the overlap;
    MMDetection (``gt_max_assign_all=True``) gives every prediction tied for ground truth ``i``'s best overlap
    to ``i`` itself, ground truths in order (a later one wins a prediction two share), and only where that best
    overlap is at least ``min_pos_iou`` (RetinaNet 0, the RPN 0.3, the RoI head 0.5).
    """

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False,
                 min_pos_iou: float = 0.0) -> None:
        super().__init__(high_threshold, low_threshold, allow_low_quality_matches)
        self.min_pos_iou = min_pos_iou

    def set_low_quality_matches_(self, matches: torch.Tensor, all_matches: torch.Tensor,
                                 match_quality_matrix: torch.Tensor) -> None:
        best = match_quality_matrix.max(dim=1, keepdim=True).values  # (G, 1): each ground truth's best overlap
        tied = (match_quality_matrix == best) & (best >= self.min_pos_iou)  # (G, P)
        claimed = tied.any(dim=0)
        last = len(tied) - 1 - tied.flip(0).to(torch.uint8).argmax(dim=0)  # the last ground truth tied, per prediction
        matches[claimed] = last[claimed]
