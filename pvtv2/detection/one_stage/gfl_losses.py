"""GFL's losses and box representation (Li et al., "Generalized Focal Loss", NeurIPS 2020), as MMDetection 2.x
computes them: Quality Focal Loss, Distribution Focal Loss and the integral of a general distribution.

torchvision has the focal loss, GIoU and box IoU (used as they are elsewhere) but none of these three, so
they are written here, each from its formula in the GFL paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def quality_focal_loss(logits: torch.Tensor, quality: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """QFL per element: ``-|y - s|^beta * ((1 - y) log(1 - s) + y log s)`` with ``s = sigmoid(logits)`` and the
    soft target ``y`` (``quality``: the IoU of the predicted and true box at a positive's class, 0 elsewhere)."""
    # torchvision.ops.sigmoid_focal_loss takes hard 0/1 targets and an alpha; QFL modulates a soft-target BCE by
    # the distance to the target instead, so it has no library form.
    modulation = (quality - logits.sigmoid()).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(logits, quality, reduction="none") * modulation


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL per row: cross-entropy of the two bins around the continuous ``target`` in ``[0, bins - 1)``,
    weighted by its distance to the other bin: ``-((y_r - y) log S_l + (y - y_l) log S_r)``."""
    # A linear interpolation of two cross-entropies; no library loss takes a real-valued class.
    left = target.long()
    right = left + 1
    weight_left = right.to(target.dtype) - target
    weight_right = target - left.to(target.dtype)
    return (F.cross_entropy(logits, left, reduction="none") * weight_left
            + F.cross_entropy(logits, right, reduction="none") * weight_right)


def integral(logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """The expected distance of each side, ``sum_i i * softmax(logits)_i`` over ``i = 0..reg_max``: ``(..., 4 *
    (reg_max + 1))`` logits to ``(..., 4)`` distances, in units of the level's stride."""
    # GFL's "general distribution" regression: a softmax over reg_max + 1 bins per side, then its mean.
    probabilities = logits.reshape(*logits.shape[:-1], 4, reg_max + 1).softmax(dim=-1)
    bins = torch.arange(reg_max + 1, dtype=probabilities.dtype, device=probabilities.device)
    return probabilities @ bins


def distances_to_boxes(points: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Boxes (x0, y0, x1, y1) from points (x, y) and their distances (left, top, right, bottom) to the sides."""
    return torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)


def boxes_to_distances(points: torch.Tensor, boxes: torch.Tensor, max_distance: float) -> torch.Tensor:
    """Distances (left, top, right, bottom) from points to the sides of their boxes, clamped to ``[0, max_distance]``
    (MMDetection's ``bbox2distance``)."""
    distances = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)
    return distances.clamp(min=0, max=max_distance)
