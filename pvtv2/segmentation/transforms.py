"""The paper's (MMSegmentation's ADE20K) pipelines with torchvision.transforms.v2, on (image, mask) pairs.

Training: random rescale (ratio 0.5-2.0 of the keep-ratio scale 2048x512) -> random 512x512 crop in which
no class covers more than 75% of the labelled pixels (up to 10 tries) -> horizontal flip -> photometric
distortion -> normalise -> pad to the crop size (image 0, mask ignore). Testing: the official ``AlignResize``
(rescale to the scale, shorter side 512 and longer at most 2048, then each side to a multiple of 32, with
OpenCV's bilinear on the uint8 image as mmcv) and normalise; the mask keeps its size, as metrics are taken at
the original resolution.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..data.images import IMAGENET_MEAN, IMAGENET_STD, ModelInput, resize_image
from ..models import min_input_size
from .config import SegmentationConfig, parse_scales
from .data import IGNORE_INDEX

SIZE_DIVISOR = 32  # AlignResize's: the test image's sides are multiples of the backbone's largest stride


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with the longer side <= max(scale) and the shorter <= min(scale)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def model_input(cfg: SegmentationConfig, backbone: str, scales: Sequence[float] | None = None,
                option: str = "test.test_scales") -> ModelInput:
    """How testing resizes a picture (the keep-ratio test scale, times each of ``scales``: by default the
    config's test scales) and the smallest side the ``backbone`` takes: to refuse, naming the file, a
    picture the segmenter cannot take."""
    scales = parse_scales(cfg.test.test_scales) if scales is None else scales
    scale = cfg.augment.scale
    return ModelInput(smallest=min_input_size(backbone), shorter=min(scale), longest=max(scale), rounding="nearest",
                      ratios=tuple(scales), option=option)


def _image_size(flat_inputs: list[Any]) -> tuple[int, int]:
    for item in flat_inputs:
        if isinstance(item, (tv_tensors.Image, tv_tensors.Mask)):
            return tuple(F.get_size(item))  # type: ignore[return-value]
    raise TypeError("expected a tv_tensors.Image or Mask among the inputs")


class RandomRescale(v2.Transform):
    """Rescale (keeping the aspect ratio) to ``scale`` times a ratio drawn from ``ratio_range``; masks nearest."""

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float]) -> None:
        super().__init__()
        self.scale, self.ratio_range = scale, ratio_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        ratio = random.uniform(*self.ratio_range)
        return {"size": list(rescale_size(height, width, (int(self.scale[0] * ratio), int(self.scale[1] * ratio))))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)


class CategoryBalancedCrop(v2.Transform):
    """A random ``size`` crop (smaller where the image is), redrawn up to 10 times while one class covers
    ``cat_max_ratio`` or more of its labelled pixels (MMSegmentation's RandomCrop)."""

    TRIES = 10

    def __init__(self, size: int, cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size, self.cat_max_ratio, self.ignore_index = size, cat_max_ratio, ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        crop_h, crop_w = min(self.size, height), min(self.size, width)
        mask = next((item for item in flat_inputs if isinstance(item, tv_tensors.Mask)), None)
        for _ in range(self.TRIES):
            top, left = random.randint(0, height - crop_h), random.randint(0, width - crop_w)
            if mask is None or self.cat_max_ratio >= 1:
                break
            labels = mask[..., top:top + crop_h, left:left + crop_w]
            _, counts = torch.unique(labels[labels != self.ignore_index], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class PadTo(v2.Transform):
    """Pad bottom and right to ``size`` x ``size``: images with 0 (the mean, once normalised), masks with ignore."""

    def __init__(self, size: int, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size, self.ignore_index = size, ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        return {"padding": [0, 0, max(0, self.size - width), max(0, self.size - height)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.ignore_index if isinstance(inpt, tv_tensors.Mask) else 0
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=fill)


def photometric_distortion() -> v2.Transform:
    """MMSegmentation's PhotoMetricDistortion, each part with probability 0.5: brightness +-32/255 (here
    x0.75-1.25, torchvision's is multiplicative), contrast and saturation x0.5-1.5, hue +-18 of OpenCV's 180
    (0.1 of the circle)."""
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(brightness=0.25)], p=0.5),
        v2.RandomApply([v2.ColorJitter(contrast=0.5)], p=0.5),
        v2.RandomApply([v2.ColorJitter(saturation=0.5)], p=0.5),
        v2.RandomApply([v2.ColorJitter(hue=0.1)], p=0.5),
    ])


def _to_model_input() -> list[v2.Transform]:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(
    crop_size: int = 512,
    scale: tuple[int, int] = (2048, 512),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    hflip: float = 0.5,
    photometric: bool = True,
) -> v2.Transform:
    """(uint8 image, mask) -> (normalised float image (3, crop, crop), int64 mask (crop, crop)); the paper's recipe."""
    return v2.Compose([
        RandomRescale(scale, ratio_range),
        CategoryBalancedCrop(crop_size, cat_max_ratio),
        v2.RandomHorizontalFlip(hflip),
        *([photometric_distortion()] if photometric else []),
        *_to_model_input(),
        PadTo(crop_size),
    ])


class EvalTransform:
    """(uint8 image, mask) -> (normalised image as the official test pipeline's ``AlignResize`` makes it, the
    mask unchanged): a keep-ratio rescale to fit ``scale``, then each side resized to the next multiple of
    ``size_divisor``, both with OpenCV's bilinear on the uint8 pixels (mmcv's ``imrescale`` and ``imresize``)."""

    def __init__(self, scale: tuple[int, int] = (2048, 512), size_divisor: int = SIZE_DIVISOR) -> None:
        self.scale, self.size_divisor = scale, size_divisor
        self.normalise = v2.Compose(_to_model_input())

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 image (3, H, W) rescaled to the test scale and aligned, as ``AlignResize``."""
        rescaled = resize_image(image, rescale_size(*image.shape[-2:], self.scale))
        aligned = [math.ceil(side / self.size_divisor) * self.size_divisor for side in rescaled.shape[-2:]]
        return tv_tensors.Image(resize_image(rescaled, tuple(aligned)))

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalise(self.resize(image)), mask
