"""Anchors where MMDetection puts them: at each FPN level's own stride, of the exact (unrounded) sizes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

FPN_STRIDES = (8, 16, 32, 64, 128)  # P3-P7


class LevelAnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` with anchors at each level's own stride (8, 16, ..., 128, or the
    RPN's 4, ..., 64), of the sizes MMDetection gives them.

    torchvision derives a level's stride as padded image size // feature size, which is off wherever the
    stride-2 convs of P6 and P7 round up: a batch padded to 800 x 1344 has a 7 x 11 P7 and gets strides
    114 x 122 instead of 128, so its anchors drift away from the places the features look at (by ~90
    pixels at the far edge). torchvision also rounds its base anchors to whole pixels (a 32-pixel anchor of
    ratio 0.5 becomes 46 x 22 instead of 45.25 x 22.63); MMDetection's ``AnchorGenerator`` does not.
    """

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int] = FPN_STRIDES) -> None:
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in aspect_ratios))
        if len(strides) != len(sizes):
            raise ValueError(f"one stride per level of anchor sizes ({len(sizes)}), got {list(strides)}")
        self.strides = tuple(strides)

    def generate_anchors(self, scales: list[int], aspect_ratios: list[float], dtype: torch.dtype = torch.float32,
                         device: torch.device = torch.device("cpu")) -> torch.Tensor:
        """The base anchors of one level (ratio-major, centred on 0): torchvision's, not rounded."""
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        grid_sizes = [feature_map.shape[-2:] for feature_map in feature_maps]
        device = feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        # float32 whatever the features' dtype (MMDetection's training anchors are): float16 under autocast
        # would round corners past 1024 pixels to whole pixels.
        self.set_cell_anchors(torch.float32, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]


def one_anchor_per_place(sizes: Sequence[float]) -> LevelAnchorGenerator:
    """One square anchor per place on each level, of base size ``sizes[level]`` (ATSS's and GFL's)."""
    return LevelAnchorGenerator([[size] for size in sizes], [[1.0]] * len(sizes))
