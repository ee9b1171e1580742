"""scikit-learn's hand-written digits as a small, offline image-classification dataset.

1,797 real 8x8 grey images of the digits 0-9 (scikit-learn ships them, nothing is downloaded). They are
split 80/20 once, stratified by class with a fixed seed (1,437 training and 360 held-out images), and
upscaled to RGB images of ``img_size`` pixels, so that they go through the same transforms and models
as photos.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import InputError

CLASSES = [str(digit) for digit in range(10)]
HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0
_MAX_VALUE = 16  # the images' grey levels are 0..16


class Digits(Dataset):
    """The ``train`` or held-out ``val`` split, as (transformed PIL image, class index) pairs."""

    def __init__(self, split: Literal["train", "val"], img_size: int, transform: Callable | None = None) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "val"):
            raise InputError(f"digits has the splits 'train' and 'val', not {split!r}")
        digits = load_digits()
        train_images, val_images, train_labels, val_labels = train_test_split(
            digits.images, digits.target, test_size=HELD_OUT_FRACTION, random_state=SPLIT_SEED, stratify=digits.target,
        )
        images, labels = (train_images, train_labels) if split == "train" else (val_images, val_labels)
        self.images = [_upscale(image, img_size) for image in images]
        self.targets = [int(label) for label in labels]
        self.classes = list(CLASSES)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


def _upscale(image: np.ndarray, size: int) -> Image.Image:
    # (8, 8) grey levels 0..16 -> (size, size) RGB, bicubic like the photos' resizing.
    grey = Image.fromarray((image * (255 / _MAX_VALUE)).round().astype(np.uint8))  # uint8 (8, 8) -> mode "L"
    return grey.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
