"""A tour of the model zoo (``pvt demo``): every model built and run on a real photo, offline.

The photo is one of scikit-learn's bundled sample images. Without weights the models are randomly
initialised: the tour shows that every model builds, classifies and gives a 4-level pyramid at the photo's
own (odd) size; with official checkpoints (``<name>.pth`` in a folder) it also gives each model's top-5
ImageNet class indices.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.transforms import v2 as transforms

from ..data.images import IMAGENET_MEAN, IMAGENET_STD
from ..models import create_model


def sample_photo() -> torch.Tensor:
    """scikit-learn's bundled photo of a Chinese temple, (3, 427, 640) uint8."""
    from sklearn.datasets import load_sample_image

    return torch.from_numpy(load_sample_image("china.jpg").copy()).permute(2, 0, 1).contiguous()


def evaluation_transform(size: int = 224) -> transforms.Compose:
    """The paper's evaluation preprocessing: resize to size/0.875, center crop, ImageNet normalisation."""
    return transforms.Compose([
        transforms.Resize(int(size / 0.875), interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.CenterCrop(size),
        transforms.ToDtype(torch.float32, scale=True),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


@dataclass(frozen=True)
class TourInputs:
    """The photo, its classifier input (1, 3, 224, 224) and its pyramid input at its own size (1, 3, H, W)."""

    photo: torch.Tensor
    crop: torch.Tensor
    full: torch.Tensor

    def summary(self) -> str:
        return (f"sample photo: scikit-learn china.jpg, {self.photo.shape[1]}x{self.photo.shape[2]}; classifier "
                f"input {self.crop.shape[2]}x{self.crop.shape[3]}, pyramid input {self.full.shape[2]}x"
                f"{self.full.shape[3]}")


def tour_inputs() -> TourInputs:
    photo = sample_photo()
    crop = evaluation_transform()(photo).unsqueeze(0)
    full = transforms.Compose(evaluation_transform().transforms[2:])(photo).unsqueeze(0)  # no resize: odd size
    return TourInputs(photo, crop, full)


@dataclass(frozen=True)
class TourStop:
    """One model on the photo: its logits' shape, its pyramid's levels (C, H, W), the time both took, and
    with weights its top-5 (class index, probability)."""

    name: str
    logits_shape: tuple[int, ...]
    levels: list[tuple[int, int, int]]
    seconds: float
    top5: list[tuple[int, float]] | None

    def summary(self) -> str:
        levels = " ".join(f"{c}x{h}x{w}" for c, h, w in self.levels)
        line = f"{self.name:13s} logits {self.logits_shape}  pyramid {levels}  ({self.seconds:.2f} s)"
        if self.top5 is not None:
            line += "  top-5 " + ", ".join(f"{i}:{p:.2f}" for i, p in self.top5)
        return line


def zoo_tour(names: Sequence[str], inputs: TourInputs, weights: Path | None = None) -> Iterator[TourStop]:
    """Each of the models ``names`` built (from ``weights/<name>.pth`` where that file exists, else random)
    and run on ``inputs``, one at a time."""
    for name in names:
        checkpoint = weights / f"{name}.pth" if weights else None
        pretrained = checkpoint if checkpoint is not None and checkpoint.is_file() else None
        model = create_model(name, pretrained=pretrained).eval()
        start = time.perf_counter()
        with torch.inference_mode():
            logits = model(inputs.crop)
            pyramid = model.forward_intermediates(inputs.full, intermediates_only=True)
        seconds = time.perf_counter() - start
        top5 = None
        if pretrained is not None:
            best = logits.softmax(-1)[0].topk(5)
            top5 = list(zip(best.indices.tolist(), best.values.tolist()))
        yield TourStop(name, tuple(logits.shape), [tuple(f.shape[1:4]) for f in pyramid], seconds, top5)
