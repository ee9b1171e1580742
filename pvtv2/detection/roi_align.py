"""RoIAlign as MMDetection's: torchvision's multi-scale pooler with ``aligned=True``.

mmcv's ``RoIAlign`` defaults to ``aligned=True`` (pixel centres at +0.5, so a box samples where its pixels
are), and the official configs keep that default; torchvision's ``MultiScaleRoIAlign`` hard-codes
``aligned=False``, half a feature pixel off. The level mapping is the same as MMDetection's
``SingleRoIExtractor(finest_scale=56)`` (torchvision's canonical 224 at level 4), so only the per-level
loop is written again here, with the flag.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _setup_scales

FPN_LEVELS = ["0", "1", "2", "3"]  # the FPN's P2-P5 (P6 is the RPN's only)
ADAPTIVE_SAMPLING = 0  # sampling_ratio 0: ceil(bin size) points per bin, as mmcv's Mask R-CNN / Cascade configs


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign with ``roi_align(aligned=True)``."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """Pool each box from its FPN level: (sum of boxes, C, *output_size)."""
        features = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[index], self.output_size, scale, self.sampling_ratio, aligned=True)
            result[index] = pooled.to(result.dtype)  # autocast may give levels different dtypes
        return result
