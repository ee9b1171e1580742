"""Image files and pixels for every task: reading with one clear error for any file that cannot be used, and
the official test pipelines' resize (mmcv's ``imresize``: OpenCV's bilinear on the image's own pixels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import InputError


class DatasetError(InputError):
    """A dataset that is missing, empty, inconsistent or has an unreadable image (named in the message)."""


def open_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` as an RGB PIL image; :class:`DatasetError` naming the file when it is missing,
    not an image, truncated, or so large that PIL refuses it as a possible decompression bomb."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    # DecompressionBombError derives from neither OSError nor ValueError.
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """``image`` (C, H, W), uint8 or float, resized to ``size`` (H, W) with OpenCV's bilinear (mmcv's
    ``imresize``), same dtype and device."""
    import cv2  # OpenCV only where a test pipeline resizes

    if tuple(image.shape[-2:]) == tuple(size):
        return image  # OpenCV returns the pixels unchanged at the same size
    pixels = image.detach().permute(1, 2, 0).cpu().numpy()
    resized = cv2.resize(np.ascontiguousarray(pixels), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2:  # OpenCV drops a single channel
        resized = resized[:, :, None]
    return torch.from_numpy(resized).permute(2, 0, 1).to(image.device)
