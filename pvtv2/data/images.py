"""Image files for every task and command: one reader, the size checks a model input needs, writing, and
the official test pipelines' resize (mmcv's ``imresize``: OpenCV's bilinear on the image's own pixels).

:func:`read_image` is the only way the package reads a picture (training data, ``predict``, ``det-predict``,
``seg-predict``, ``show``): the picture as the user sees it in a viewer, as 8-bit RGB.

* EXIF orientation is applied (a phone's portrait JPEG is stored sideways with an orientation tag).
* 16-bit greyscale (PNG, TIFF) is scaled from 0..65535 to 0..255; PIL's ``convert("RGB")`` clips it instead,
  which turns almost every pixel white. Float images are scaled from 0..1 and refused outside that range,
  which has no agreed meaning.
* Transparent pixels (RGBA, LA, a palette or greyscale with a transparent colour) are composited over
  white, as a viewer on a white page shows them, instead of showing the colour stored under them (often
  black). CMYK, palette, bilevel and YCbCr pictures are converted by PIL.

A model takes pictures down to a smallest side, after the command's resize; :meth:`ModelInput.check`
refuses one it cannot take (too small, or so far from square that it resizes to a sliver, or to more
pixels than memory holds) with the file's name, its real size and the limit, where the model would
otherwise fail on a tensor shape.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch import Tensor

from ..engine.files import check_output_file
from ..errors import InputError
from ..files import written_atomically

# The normalisation every model of the package is trained with: timm's IMAGENET_DEFAULT_MEAN / STD, which are
# MMDetection's and MMSegmentation's (123.675, 116.28, 103.53) and (58.395, 57.12, 57.375) over 255.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COMMON_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# Formats that store 8- and 16-bit greyscale exactly: a class map (one index per pixel) is saved in one.
CLASS_MAP_SUFFIXES = (".png", ".tif", ".tiff")
MAX_CLASS_MAP_CLASSES = 65536  # 16-bit pixels


class DatasetError(InputError):
    """A dataset that is missing, empty, inconsistent or has an unreadable image (named in the message)."""


def read_image(path: str | Path) -> Image.Image:
    """The picture in ``path`` as a viewer shows it, as 8-bit RGB (see the module's notes); a
    :class:`DatasetError` naming the file when it is missing, not an image, truncated, of pixels without an
    agreed meaning, or so large that PIL refuses it as a possible decompression bomb."""
    try:
        with Image.open(path) as file:
            return _as_rgb(ImageOps.exif_transpose(file), path)
    except DatasetError:  # a picture read, but of pixels without an agreed meaning: said as it is
        raise
    # DecompressionBombError derives from neither OSError nor ValueError; some PIL decoders raise SyntaxError.
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
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


def picture_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the picture in ``path`` as :func:`read_image` gives it (EXIF orientation applied),
    read from its header without decoding the pixels."""
    try:
        with Image.open(path) as file:
            width, height = file.size
            turned = file.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)  # the 90-degree turns
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error
    return (height, width) if turned else (width, height)


def _as_rgb(image: Image.Image, path: str | Path) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return Image.fromarray(_to_8_bits(np.asarray(image), image.mode, path)).convert("RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def _to_8_bits(values: np.ndarray, mode: str, path: str | Path) -> np.ndarray:
    """Greyscale pixels of 16-bit, 32-bit integer or float ``mode``, scaled to uint8 from their range."""
    if mode == "F":
        if not np.isfinite(values).all():
            raise DatasetError(f"image {path} has float pixels that are not finite numbers (NaN or infinity)")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            raise DatasetError(f"image {path} has float pixels from {low:g} to {high:g}; float images are read as "
                               f"0..1: save it with pixels in 0..1, or as an 8- or 16-bit image")
        full_scale = 1.0
    else:
        # 32-bit integer pictures ("I": some TIFF and PGM writers) are taken as 16-bit, the widest that
        # image formats hold greyscale in; values beyond it have no agreed range.
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise DatasetError(f"image {path} has {mode} pixels from {low} to {high}, outside the 16-bit range "
                               f"0..65535 that it is read in: save it as an 8- or 16-bit image")
        full_scale = 65535.0
    return np.rint(values.astype(np.float64) * (255.0 / full_scale)).astype(np.uint8)


# -- what a model can take ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInput:
    """How a command resizes pictures for a model and the smallest side the model takes.

    The resize keeps the aspect ratio: shorter side ``shorter`` (None: as it is) with the longer side at most
    ``longest`` (None: no bound), then times each of ``ratios`` (test scales), as torchvision's detectors
    (``rounding="floor"``) and MMSegmentation's test pipeline (``"nearest"``, then floor for the ratios) do.
    """

    smallest: int  # pixels per side the model needs (its stages' spatial reductions need whole windows)
    shorter: int | None = None
    longest: int | None = None
    rounding: str = "floor"
    ratios: tuple[float, ...] = (1.0,)
    option: str = "--size"  # what sets the scale, for the advice when the scale itself is too small

    def resized(self, width: int, height: int, ratio: float = 1.0) -> tuple[int, int]:
        """The (width, height) that a picture of ``width`` x ``height`` pixels becomes at ``ratio``."""
        if self.shorter is None:
            size = width, height
        else:
            factor = self.shorter / min(width, height)
            if self.longest is not None:
                factor = min(factor, self.longest / max(width, height))
            if self.rounding == "floor":
                size = math.floor(width * factor), math.floor(height * factor)
            else:
                size = max(1, int(width * factor + 0.5)), max(1, int(height * factor + 0.5))
        return size if ratio == 1 else (math.floor(size[0] * ratio), math.floor(size[1] * ratio))

    def describe(self, ratio: float) -> str:
        words = [] if self.shorter is None else [f"shorter side {self.shorter}"]
        if self.longest is not None:
            words.append(f"longer side at most {self.longest}")
        if ratio != 1:
            words.append(f"times {ratio:g}")
        return ", ".join(words)

    def check_scale(self) -> None:
        """Refuse, before any picture is read, a scale at which no picture fits the model (not even a square)."""
        if self.shorter is None:
            return
        side = min(self.shorter, self.longest or self.shorter)
        ratio = min(self.ratios)
        if math.floor(side * ratio) < self.smallest:
            least = math.ceil(self.smallest / side * 100) / 100
            raise InputError(f"{self.option}: at {self.describe(ratio)} every picture is at most "
                             f"{math.floor(side * ratio)} pixels on its shorter side, but the model needs at least "
                             f"{self.smallest}: use a scale of at least {least:g}")

    def check(self, path: str | Path, size: tuple[int, int]) -> None:
        """Refuse the picture ``path`` of ``size`` (width, height) when the model cannot take it at this resize,
        or it would become more pixels than PIL opens (an allocation that cannot succeed): one sentence with
        the file, its real size, what it becomes and the limit it misses."""
        width, height = size
        ratio = min(self.ratios)
        model_size = self.resized(width, height, ratio)
        seen = f"; resized ({self.describe(ratio)}) it is {model_size[0]}x{model_size[1]}" if model_size != size else ""
        if model_size[0] * model_size[1] > Image.MAX_IMAGE_PIXELS:
            side = min(model_size)
            advice = (f"{self.option} is too large" if side * side > Image.MAX_IMAGE_PIXELS else
                      f"crop it to an aspect ratio of at most {_one_decimal(Image.MAX_IMAGE_PIXELS / side ** 2)}:1")
            raise DatasetError(f"image {path} is {width}x{height} pixels{seen}, more than the {Image.MAX_IMAGE_PIXELS} "
                               f"pixels of a picture that can be opened: {advice}")
        if min(model_size) >= self.smallest:
            return
        if self.shorter is None:
            advice = f"use a larger image, or give {self.option}"
        elif min(self.shorter, self.longest or self.shorter) * ratio < self.smallest:
            advice = f"{self.option} is too small for this model: even a square picture would be"
            advice += f" {math.floor(min(self.shorter, self.longest or self.shorter) * ratio)} pixels"
        else:  # the longer side's bound squeezes the shorter one
            advice = f"crop it to an aspect ratio of at most {_one_decimal(self.longest * ratio / self.smallest)}:1"
        raise DatasetError(f"image {path} is {width}x{height} pixels{seen}, but the model needs at least "
                           f"{self.smallest} pixels on each side: {advice}")


def _one_decimal(value: float) -> str:
    return f"{math.floor(value * 10) / 10:g}"


# -- writing pictures --------------------------------------------------------------------------------------
@functools.cache
def image_suffixes() -> tuple[str, ...]:
    """The file name extensions PIL writes an RGB picture in, the common ones first: each format PIL
    registers a writer for is asked to write a tiny picture (some hold only other modes, or need a plugin)."""
    writable = []
    probe = Image.new("RGB", (2, 2))
    for suffix, name in Image.registered_extensions().items():
        if name not in Image.SAVE:
            continue
        try:
            with warnings.catch_warnings():  # a format PIL deprecates says so on every save
                warnings.simplefilter("ignore")
                probe.save(io.BytesIO(), format=name)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        writable.append(suffix)
    rank = {suffix: place for place, suffix in enumerate(COMMON_SUFFIXES)}
    return tuple(sorted(writable, key=lambda suffix: (rank.get(suffix, len(rank)), suffix)))


def check_image_output(path: str | Path, option: str, inputs: Sequence[Path] = ()) -> None:
    """Before any work: ``path`` (given with ``option``) names a picture format PIL writes, is none of the
    command's ``inputs`` and lies in a folder that can be written."""
    check_output_file(Path(path), option, image_suffixes(), "a picture", inputs)


def check_class_map_output(path: str | Path, option: str, num_classes: int | None = None,
                           inputs: Sequence[Path] = ()) -> None:
    """Before any work: ``path`` (given with ``option``) names a lossless format that holds the class index
    of ``num_classes`` classes (when known) per pixel, in a folder that can be written."""
    if num_classes is not None and num_classes > MAX_CLASS_MAP_CLASSES:
        raise InputError(f"{option}: a class map of {num_classes} classes does not fit 16-bit pixels, the widest "
                         f"that PNG and TIFF hold")
    check_output_file(Path(path), option, CLASS_MAP_SUFFIXES,
                      "a class map, whose values must come back exactly (a lossless format)", inputs)


def save_image(image: Image.Image, path: str | Path) -> None:
    """Write ``image`` to ``path`` in the format of its extension, whole or not at all."""
    path = Path(path)
    fmt = Image.registered_extensions()[path.suffix.lower()]
    with written_atomically(path) as temporary:
        image.save(temporary, format=fmt)


def save_class_map(labels: np.ndarray, path: str | Path, num_classes: int) -> None:
    """Write the class index per pixel (H, W) of a model of ``num_classes`` classes, losslessly: 8-bit
    greyscale up to 256 classes, 16-bit beyond."""
    depth = np.uint8 if num_classes <= 256 else np.uint16
    save_image(Image.fromarray(labels.astype(depth)), path)
