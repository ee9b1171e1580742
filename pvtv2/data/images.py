"""Reading image files for every task, with one clear error for any file that cannot be used."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

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
