"""Box deltas to boxes as MMDetection's ``DeltaXYWHBBoxCoder.decode`` (``delta2bbox``), for the anchor heads.

torchvision's ``BoxCoder`` (kept for encoding the training targets) divides the deltas by weights and clamps
the log width and height ratios from above only; MMDetection multiplies by its ``target_stds`` and clamps them
on both sides at ``log(1000 / 16)``, so a very negative ratio gives a box of 16/1000 of the anchor, not a
vanishing one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.ops import clip_boxes_to_image

WH_RATIO_CLIP = 16 / 1000
MAX_LOG_RATIO = abs(math.log(WH_RATIO_CLIP))


def decode_deltas(anchors: torch.Tensor, deltas: torch.Tensor, stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                  image_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Boxes (N, 4) from ``anchors`` (N, 4) and their ``deltas`` (N, 4: dx, dy, dw, dh, means 0), clipped to
    ``image_shape`` (H, W) when given; the same operations in the same order as MMDetection's."""
    scaled = deltas * deltas.new_tensor(stds)
    centres = (anchors[:, :2] + anchors[:, 2:]) * 0.5
    sizes = anchors[:, 2:] - anchors[:, :2]
    new_centres = centres + sizes * scaled[:, :2]
    new_sizes = sizes * scaled[:, 2:].clamp(min=-MAX_LOG_RATIO, max=MAX_LOG_RATIO).exp()
    boxes = torch.cat([new_centres - new_sizes * 0.5, new_centres + new_sizes * 0.5], dim=-1)
    return boxes if image_shape is None else clip_boxes_to_image(boxes, image_shape)
