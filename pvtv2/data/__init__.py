"""Datasets and transforms for classification: ImageFolder roots and the built-in ``digits``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from .digits import Digits
from .folder import BadImages, DatasetError, ImageFolder, eval_folder, split_folder
from .transforms import eval_resize, eval_transform, train_transform

DATASETS = ("folder", "digits")


def build_dataset(
    dataset: str,
    split: str,
    transform: Callable | None,
    *,
    root: str | Path | None = None,
    img_size: int = 224,
    bad_images: BadImages = "error",
) -> Dataset:
    """Split ``split`` (``train`` or ``val``) of ``dataset``; it has ``.classes``, the class names in label order.

    ``folder``: ``root/split`` of an ImageFolder root. ``digits``: the built-in digits, upscaled to ``img_size``.
    """
    if dataset == "digits":
        return Digits(split, img_size, transform)  # type: ignore[arg-type]
    if dataset == "folder":
        return ImageFolder(split_folder(root, split), transform, bad_images)
    raise DatasetError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")


__all__ = [
    "DATASETS", "BadImages", "DatasetError", "Digits", "ImageFolder", "build_dataset", "eval_folder", "eval_resize",
    "eval_transform", "split_folder", "train_transform",
]
