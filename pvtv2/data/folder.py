"""ImageFolder datasets (``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``) with clear errors.

torchvision's ImageFolder does the scanning; this adds what a long run needs: a missing or empty folder
is named before training starts, and an image that cannot be decoded is reported with its path, then
either stops the run or is skipped, as ``bad_images`` says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from torchvision import datasets

logger = logging.getLogger("pvtv2")

BadImages = Literal["error", "skip"]
LAYOUT = "an ImageFolder root holds train/ and val/, each with one sub-folder of images per class"


class DatasetError(ValueError):
    """A dataset that is missing, empty, inconsistent or has an unreadable image (named in the message)."""


class ImageFolder(datasets.ImageFolder):
    """One split folder of class sub-folders. ``bad_images="skip"`` warns once per unreadable file and
    returns the next readable image instead, so that a batch keeps its size."""

    def __init__(self, folder: str | Path, transform: Callable | None = None, bad_images: BadImages = "error") -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise DatasetError(f"dataset folder {folder} does not exist; {LAYOUT}")
        if not any(p.is_dir() for p in folder.iterdir()):
            raise DatasetError(f"dataset folder {folder} has no class sub-folders; {LAYOUT}")
        try:
            super().__init__(str(folder), transform=transform)
        except FileNotFoundError as error:  # torchvision: a class folder without a single image file
            raise DatasetError(f"dataset folder {folder}: {error}") from error
        self.bad_images = bad_images
        self._reported: set[str] = set()

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} images")
        for offset in range(len(self.samples)):
            path, target = self.samples[(index + offset) % len(self.samples)]
            try:
                image = self.loader(path)
            except (OSError, ValueError) as error:  # PIL: unidentified, truncated or damaged file
                if self.bad_images == "error":
                    raise DatasetError(
                        f"cannot read image {path}: {error} (fix or remove the file, or skip such images "
                        f"with data.bad_images: skip)"
                    ) from error
                if path not in self._reported:
                    self._reported.add(path)
                    logger.warning("skipping unreadable image %s: %s", path, error)
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
