"""The official 3x configs' multi-scale training augmentation (from DETR), in torchvision.transforms.v2.

``AutoAugment`` of MMDetection chooses, per image and uniformly, between two policies:

(a) resize to a shorter side drawn from 480, 512, ..., 800 (longer side <= 1333);
(b) resize to a shorter side of 400, 500 or 600, crop a random region of height and width each drawn from
    [384, 600], then (a).

Both are torchvision pieces (``RandomChoice``, ``RandomShortestSize``) except the crop of a random size,
which torchvision lacks (``v2.RandomCrop`` takes one fixed size): :class:`RandomSizeCrop`.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

# The official configs' sizes for COCO (shorter side 800); other scales multiply them by (scale / 800).
OFFICIAL_SCALE = 800
OFFICIAL_SIZES = tuple(range(480, 801, 32))
OFFICIAL_CROP_RESIZE = (400, 500, 600)
OFFICIAL_CROP = (384, 600)


class RandomSizeCrop(v2.Transform):
    """A crop of height and width each drawn uniformly from ``[low, high]`` (capped by the image's), at a
    uniformly random place: MMDetection's ``RandomCrop(crop_type='absolute_range')``. Boxes are cut to the
    region (a later ``SanitizeBoundingBoxes`` drops those left empty; an image may keep no box)."""

    def __init__(self, low: int, high: int) -> None:
        super().__init__()
        if not 0 < low <= high:
            raise ValueError(f"the crop size range must be 0 < low <= high, got ({low}, {high})")
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        image = next((x for x in flat_inputs if isinstance(x, tv_tensors.Image)), None)
        if image is None:
            raise TypeError("RandomSizeCrop needs a tv_tensors.Image among its inputs")
        height, width = v2.functional.get_size(image)
        crop_height = int(torch.randint(min(height, self.low), min(height, self.high) + 1, ()))
        crop_width = int(torch.randint(min(width, self.low), min(width, self.high) + 1, ()))
        top = int(torch.randint(0, height - crop_height + 1, ()))
        left = int(torch.randint(0, width - crop_width + 1, ()))
        return dict(top=top, left=left, height=crop_height, width=crop_width)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return v2.functional.crop(inpt, **params)


def official_multiscale(scale: int = OFFICIAL_SCALE, max_size: int = 1333) -> v2.RandomChoice:
    """Policy (a) or (b) of the module docstring, each with probability 1/2; the sizes are the official ones
    times ``scale / 800`` (the official ones for ``scale=800``)."""
    def sized(values: tuple[int, ...]) -> list[int]:
        return [max(1, round(v * scale / OFFICIAL_SCALE)) for v in values]

    def resize() -> v2.RandomShortestSize:
        return v2.RandomShortestSize(sized(OFFICIAL_SIZES), max_size=max_size, antialias=True)

    crop_low, crop_high = sized(OFFICIAL_CROP)
    return v2.RandomChoice([
        resize(),
        v2.Compose([v2.RandomShortestSize(sized(OFFICIAL_CROP_RESIZE), max_size=max_size, antialias=True),
                    RandomSizeCrop(crop_low, crop_high), resize()]),
    ])
