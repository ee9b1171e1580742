"""Anchors as MMDetection's ``AnchorGenerator`` makes them: at each FPN level's own stride, unrounded."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

FPN_STRIDES = (8, 16, 32, 64, 128)  # P3-P7


def base_anchors(stride: int, sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """One level's anchors around (0, 0), ratio-major then size, as MMDetection's ``AnchorGenerator`` with
    ``base_size`` = ``stride``, ``scales`` = ``sizes / stride`` and ``center_offset`` 0 (float32, in its order of
    operations, so the same bits)."""
    # torchvision's generate_anchors rounds the corners to whole pixels and multiplies in another order.
    scales = torch.tensor([size / stride for size in sizes], dtype=torch.float32)
    h_ratios = torch.tensor(aspect_ratios, dtype=torch.float32).sqrt()
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (stride * h_ratios[:, None] * scales[None, :]).view(-1)
    return torch.stack([0.0 - 0.5 * ws, 0.0 - 0.5 * hs, 0.0 + 0.5 * ws, 0.0 + 0.5 * hs], dim=-1)


class LevelAnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` with MMDetection's anchors: each level's at its own stride (8, 16, ...,
    128) and unrounded (:func:`base_anchors`); per place the anchors of every ratio and size, places row by row.

    torchvision derives a level's stride as padded image size // feature size, which is off wherever the
    stride-2 convs of P6 and P7 round up: a batch padded to 800 x 1344 has a 7 x 11 P7 and gets strides
    114 x 122 instead of 128, so its anchors drift away from the places the features look at (by ~90
    pixels at the far edge). It also rounds the anchors' corners to whole pixels, which MMDetection does not.
    """

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int] = FPN_STRIDES) -> None:
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in aspect_ratios))
        if len(strides) != len(sizes):
            raise ValueError(f"one stride per level of anchor sizes ({len(sizes)}), got {list(strides)}")
        self.strides = tuple(strides)
        self.cell_anchors = [base_anchors(stride, level_sizes, ratios)
                             for stride, level_sizes, ratios in zip(self.strides, sizes, aspect_ratios)]

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        grid_sizes = [feature_map.shape[-2:] for feature_map in feature_maps]
        device = feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        # float32 whatever the features' dtype: in float16, corners past 1024 pixels would round to whole pixels.
        self.set_cell_anchors(torch.float32, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]
