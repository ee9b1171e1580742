"""RoI pooling as MMDetection's ``SingleRoIExtractor`` with mmcv's ``RoIAlign``: torchvision's multi-scale
pooler with ``aligned=True`` and MMDetection's level of each RoI.

mmcv's ``RoIAlign`` defaults to ``aligned=True`` (pixel centres at +0.5, so a box samples where its pixels
are), and the official configs keep that default; torchvision's ``MultiScaleRoIAlign`` hard-codes
``aligned=False``, half a feature pixel off. The level of a box of scale s (the square root of its area) is
``floor(log2(s / 56 + 1e-6))`` in MMDetection (``finest_scale=56``), ``floor(4 + log2(s / 224) + 1e-6) - 2``
in torchvision's ``LevelMapper``: the same but for the epsilon's place, which sends boxes just under 112,
224 or 448 pixels to different levels. So the per-level loop is written again here, with both.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _setup_scales

FPN_LEVELS = ["0", "1", "2", "3"]  # the FPN's P2-P5 (P6 is the RPN's only)
ADAPTIVE_SAMPLING = 0  # sampling_ratio 0: ceil(bin size) points per bin, as mmcv's Mask R-CNN / Cascade configs
FINEST_SCALE = 56  # MMDetection's SingleRoIExtractor: boxes under 2 x 56 pixels pool from the finest level


def roi_levels(rois: Tensor, num_levels: int) -> Tensor:
    """The level (0 = finest) each RoI (K, 5: image index, x0, y0, x1, y1) pools from, as MMDetection's
    ``SingleRoIExtractor.map_roi_levels``."""
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    return torch.floor(torch.log2(scale / FINEST_SCALE + 1e-6)).clamp(min=0, max=num_levels - 1).long()


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign with ``roi_align(aligned=True)`` and MMDetection's levels."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """Pool each box from its FPN level: (sum of boxes, C, *output_size)."""
        features = [x[name] for name in self.featmap_names]
        if self.scales is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = roi_levels(rois, len(features))
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[index], self.output_size, scale, self.sampling_ratio, aligned=True)
            result[index] = pooled.to(result.dtype)  # autocast may give levels different dtypes
        return result
