"""Training and evaluation transforms: timm's ``create_transform``, the recipe DeiT and PVT trained with."""

from __future__ import annotations

from collections.abc import Callable

from timm.data import create_transform

from ..errors import InputError


def train_transform(
    img_size: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    color_jitter: float = 0.4,
    interpolation: str = "bicubic",
    re_prob: float = 0.25,
    re_mode: str = "pixel",
    re_count: int = 1,
) -> Callable:
    """PIL image -> normalised (3, img_size, img_size) tensor: random resized crop, flip, RandAugment (or
    color jitter), then random erasing. The defaults are the paper's ImageNet recipe."""
    return create_transform(
        img_size, is_training=True, scale=scale, ratio=ratio, hflip=hflip, auto_augment=auto_augment,
        color_jitter=color_jitter or None, interpolation=interpolation,
        re_prob=re_prob, re_mode=re_mode, re_count=re_count,
    )


def eval_transform(img_size: int, crop_pct: float = 0.875, interpolation: str = "bicubic") -> Callable:
    """PIL image -> normalised tensor: resize the shorter side to ``img_size / crop_pct`` (256 for 224), then
    center crop ``img_size``."""
    if not 0 < crop_pct <= 1:
        raise InputError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return create_transform(img_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation)


def eval_resize(img_size: int, crop_pct: float) -> int:
    """The side the evaluation transform resizes to before cropping (timm's rule)."""
    return int(img_size / crop_pct)
