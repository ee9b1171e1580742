"""Classification datasets: ImageFolder roots (``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``)
and the built-in ``digits``, with clear errors.

torchvision's ImageFolder does the scanning; this adds what a long run needs: a missing or empty folder
is named before training starts, and an image that cannot be decoded is reported with its path, then
either stops the run or is skipped, as ``bad_images`` says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset
from torchvision import datasets

from ..data import DatasetError, read_image
from ..data.images import ModelInput
from .digits import Digits

logger = logging.getLogger("pvtv2")

BadImages = Literal["error", "skip"]
DATASETS = ("folder", "digits")
LAYOUT = "an ImageFolder root holds train/ and val/, each with one sub-folder of images per class"


def build_dataset(
    dataset: str,
    split: str,
    transform: Callable | None,
    *,
    root: str | Path | None = None,
    img_size: int = 224,
    bad_images: BadImages = "error",
    model_input: ModelInput | None = None,
) -> Dataset:
    """Split ``split`` (``train`` or ``val``) of ``dataset``; it has ``.classes``, the class names in label order.

    ``folder``: ``root/split`` of an ImageFolder root (``model_input``: how ``transform`` resizes a picture, to
    refuse by name one that it would blow up). ``digits``: the built-in digits, upscaled to ``img_size``.
    """
    if dataset == "digits":
        return Digits(split, img_size, transform)  # type: ignore[arg-type]
    if dataset == "folder":
        return ImageFolder(split_folder(root, split), transform, bad_images, model_input)
    raise DatasetError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")


class ImageFolder(datasets.ImageFolder):
    """One split folder of class sub-folders. ``bad_images="skip"`` warns once per unreadable file (or one
    ``model_input`` refuses: the evaluation resize would make it more pixels than can be held) and returns
    the next readable image instead, so that a batch keeps its size."""

    def __init__(self, folder: str | Path, transform: Callable | None = None, bad_images: BadImages = "error",
                 model_input: ModelInput | None = None) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise DatasetError(f"dataset folder {folder} does not exist; {LAYOUT}")
        if not any(p.is_dir() for p in folder.iterdir()):
            raise DatasetError(f"dataset folder {folder} has no class sub-folders; {LAYOUT}")
        try:
            super().__init__(str(folder), transform=transform, loader=read_image)
        except FileNotFoundError as error:  # torchvision: a class folder without a single image file
            raise DatasetError(f"dataset folder {folder}: {error}") from error
        self.bad_images = bad_images
        self.model_input = model_input
        self._reported: set[str] = set()

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} images")
        for offset in range(len(self.samples)):
            path, target = self.samples[(index + offset) % len(self.samples)]
            try:
                image = self.loader(path)
                if self.model_input is not None:
                    self.model_input.check(path, image.size)
            except DatasetError as error:  # unidentified, truncated, damaged or oversized file
                if self.bad_images == "error":
                    raise DatasetError(
                        f"{error} (fix or remove the file, or skip such images with data.bad_images: skip)"
                    ) from error
                if path not in self._reported:
                    self._reported.add(path)
                    logger.warning("skipping an image that cannot be used: %s", error)
                continue
            return (self.transform(image) if self.transform is not None else image), target
        raise DatasetError(f"no image of {self.root} can be read")


def split_folder(root: str | Path | None, split: str) -> Path:
    """``root/split``, checked: the folder of one split of an ImageFolder root."""
    if root is None:
        raise DatasetError(f"no dataset folder given (data.root); {LAYOUT}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist; {LAYOUT}")
    folder = root / split
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {root} has no {split}/ folder; {LAYOUT}")
    return folder


def eval_folder(path: str | Path) -> Path:
    """The folder to evaluate for ``--data PATH``: ``PATH/val`` when there is one, else ``PATH`` itself."""
    path = Path(path)
    return path / "val" if (path / "val").is_dir() else path
