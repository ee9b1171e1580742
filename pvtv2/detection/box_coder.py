"""MMDetection's ``DeltaXYWHBBoxCoder`` decoding on torchvision's ``BoxCoder``.

The two compute the same boxes from the same deltas (centre shift by the box size, size scaled by
``exp``), with one difference that shows on trained and random weights alike: MMDetection clamps the size
deltas ``dw``, ``dh`` to ``+-log(1000 / 16)``, torchvision only from above, so a very negative delta gives a
box of near-zero size here and one of 1.6% of the reference box there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder


class DeltaXYWHCoder(BoxCoder):
    """torchvision's ``BoxCoder`` for MMDetection's ``target_stds`` (its weights are their inverses), decoding
    with the size deltas clamped on both sides as MMDetection's ``delta2bbox``."""

    def __init__(self, stds: Sequence[float]) -> None:
        super().__init__(tuple(1 / s for s in stds))

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        # torchvision divides the size codes by their weights and clamps the result from above only: bound
        # the codes from below so that the divided deltas are at least -bbox_xform_clip.
        size_weights = torch.tensor(self.weights[2:], dtype=rel_codes.dtype, device=rel_codes.device)
        codes = rel_codes.reshape(rel_codes.shape[0], -1, 4)
        sizes = torch.maximum(codes[..., 2:], -self.bbox_xform_clip * size_weights)
        codes = torch.cat([codes[..., :2], sizes], dim=-1).reshape(rel_codes.shape)
        return super().decode_single(codes, boxes)
