"""Box decoding and NMS as MMDetection computes them: ``DeltaXYWHBBoxCoder`` and mmcv's ``batched_nms``.

torchvision's ``BoxCoder`` clamps the decoded log-width and log-height from above only, and its
``batched_nms`` runs one NMS per class without coordinate offsets above 4,000 coordinates (CPU); MMDetection
clamps both sides and offsets every class's boxes apart below 10,000 boxes, which rounds the IoUs near the
threshold differently. Both are a few lines, written here in MMDetection's arithmetic so that a release file
gives MMDetection's boxes to the last float.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import nms

# MMDetection's wh_ratio_clip: a decoded side is at most 1000/16 times, and at least 16/1000 times, the box's.
MAX_LOG_RATIO = abs(math.log(16 / 1000))
NMS_SPLIT = 10_000  # mmcv's split_thr: from this many boxes on, one NMS per class


class DeltaXYWHCoder(BoxCoder):
    """torchvision's ``BoxCoder`` (its ``encode`` for training targets) with MMDetection's
    ``DeltaXYWHBBoxCoder`` decode: deltas times ``stds``, centre shift by the box's size, log-size ratio
    clamped to +-log(1000/16)."""

    def __init__(self, stds: Sequence[float]) -> None:
        # torchvision weights divide where MMDetection's stds multiply; the stds are kept for the decode.
        super().__init__(tuple(1 / s for s in stds), bbox_xform_clip=MAX_LOG_RATIO)
        self.stds = tuple(float(s) for s in stds)

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """Boxes (N, 4k) from deltas (N, 4k) of ``boxes`` (N, 4), each group of 4 for one class."""
        boxes = boxes.to(rel_codes.dtype)
        deltas = rel_codes.unflatten(1, (-1, 4)) * rel_codes.new_tensor(self.stds)  # (N, k, 4)
        centres = ((boxes[:, :2] + boxes[:, 2:]) * 0.5)[:, None]  # (N, 1, 2)
        sizes = (boxes[:, 2:] - boxes[:, :2])[:, None]
        new_centres = centres + sizes * deltas[..., :2]
        new_sizes = sizes * deltas[..., 2:].clamp(min=-MAX_LOG_RATIO, max=MAX_LOG_RATIO).exp()
        decoded = torch.cat([new_centres - new_sizes * 0.5, new_centres + new_sizes * 0.5], dim=-1)
        return decoded.flatten(1)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the boxes NMS keeps within each group (class or level), by decreasing score, as mmcv's
    ``batched_nms``: the groups' boxes offset apart by the largest coordinate + 1 and one NMS, or from
    :data:`NMS_SPLIT` boxes on one NMS per group (of the offset boxes, as mmcv)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    offsets = groups.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    apart = boxes + offsets[:, None]
    if len(boxes) < NMS_SPLIT:
        return nms(apart, scores, iou_threshold)
    kept = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for group in torch.unique(groups):
        members = torch.where(groups == group)[0]
        kept[members[nms(apart[members], scores[members], iou_threshold)]] = True
    index = torch.where(kept)[0]
    return index[scores[index].sort(descending=True)[1]]
