"""Generated shapes scenes: the offline default data for detection and semantic segmentation.

Each scene is a textured background with a few coloured circles, squares and triangles (rotated, of
varied size, possibly overlapping). Every object has its visible instance mask, so one generator
serves COCO-format detection/instance segmentation and ADE20K-format semantic segmentation. Scenes
are a pure function of (seed, index), so a data set written twice is identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import written_atomically
from PIL import Image

CATEGORIES = ("circle", "square", "triangle")  # COCO ids 1..3; semantic labels 1..3 (0 = background)
SEMANTIC_CLASSES = ("background", *CATEGORIES)
MIN_VISIBLE_PIXELS = 24  # objects hidden below this by later ones are left out of the annotations


@dataclass(frozen=True)
class ShapeInstance:
    """One visible object: its category index into ``CATEGORIES`` and its boolean mask (H, W)."""

    category: int
    mask: np.ndarray


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A low-contrast texture: a colour gradient, stripes at a random angle and pixel noise."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 190, size=3)
    tilt = rng.uniform(-40, 40, size=3)
    gradient = base + tilt * (xs / max(width - 1, 1))[..., None]
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 24)
    stripes = 12 * np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period)[..., None]
    noise = rng.normal(0, 8, size=(height, width, 3))
    return gradient + stripes + noise


def _shape_mask(rng: np.random.Generator, category: int, height: int, width: int, size: float) -> np.ndarray:
    """Mask of one shape of ``size`` pixels across, at a random place and rotation, fully inside the image."""
    radius = size / 2
    cy = rng.uniform(radius, height - radius)
    cx = rng.uniform(radius, width - radius)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = ys - cy, xs - cx
    theta = rng.uniform(0, 2 * np.pi)
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    name = CATEGORIES[category]
    if name == "circle":
        return dx * dx + dy * dy <= radius * radius
    if name == "square":
        half = radius / np.sqrt(2)  # the square's corners lie on the circle of ``radius``
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    # Equilateral triangle inscribed in the circle: inside all three edge half-planes.
    inside = np.ones((height, width), dtype=bool)
    for k in range(3):
        phi = 2 * np.pi * k / 3
        inside &= u * np.cos(phi) + v * np.sin(phi) <= radius / 2
    return inside


def _colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    """A saturated colour far enough from the background's mean to be seen."""
    while True:
        colour = rng.uniform(0, 255, size=3)
        colour[rng.integers(3)] = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])
        if np.abs(colour - background_mean).sum() > 150:
            return colour


def render_scene(
    rng: np.random.Generator,
    height: int = 128,
    width: int = 128,
    max_objects: int = 4,
    size_range: tuple[float, float] = (0.15, 0.5),
) -> tuple[np.ndarray, list[ShapeInstance]]:
    """One scene: the image (H, W, 3) uint8 and its visible objects, bottom to top.

    ``size_range`` is the shape size as a fraction of the shorter image side.
    """
    image = _background(rng, height, width)
    background_mean = image.reshape(-1, 3).mean(0)
    short = min(height, width)
    placed: list[tuple[int, np.ndarray]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        category = int(rng.integers(len(CATEGORIES)))
        size = rng.uniform(*size_range) * short
        mask = _shape_mask(rng, category, height, width, size)
        shade = 1 + rng.uniform(-0.15, 0.15) * (np.arange(width, dtype=np.float32) / width)[None, :, None]
        image = np.where(mask[..., None], _colour(rng, background_mean) * shade, image)
        placed = [(c, m & ~mask) for c, m in placed]  # the new shape hides what lies below it
        placed.append((category, mask))
    instances = [ShapeInstance(c, m) for c, m in placed if m.sum() >= MIN_VISIBLE_PIXELS]
    return np.clip(image, 0, 255).astype(np.uint8), instances


def semantic_map(instances: list[ShapeInstance], height: int, width: int) -> np.ndarray:
    """Per-pixel class (H, W) uint8: 0 background, 1 + category index for shapes."""
    labels = np.zeros((height, width), dtype=np.uint8)
    for instance in instances:
        labels[instance.mask] = instance.category + 1
    return labels


DEFAULT_SIZE_RANGE = (0.15, 0.5)


def scene(
    seed: int, index: int, height: int, width: int, max_objects: int = 4,
    size_range: tuple[float, float] = DEFAULT_SIZE_RANGE,
) -> tuple[np.ndarray, list[ShapeInstance]]:
    """Scene ``index`` of the data set generated from ``seed``."""
    return render_scene(np.random.default_rng([seed, index]), height, width, max_objects, size_range)


def check_size_range(size_range: tuple[float, float]) -> tuple[float, float]:
    """``size_range`` as (low, high) fractions of the image side, or a ValueError saying what is wrong."""
    low, high = (float(v) for v in size_range)
    if not 0 < low <= high <= 1:
        raise InputError(f"shape size range must satisfy 0 < low <= high <= 1 (fractions of the image side), "
                         f"got {low}, {high}")
    return low, high


def _split_sizes(num_train: int, num_val: int) -> dict[str, tuple[int, int]]:
    """Split name -> (first scene index, count); validation scenes follow the training ones."""
    return {"train": (0, num_train), "val": (num_train, num_val)}


def write_coco_shapes(
    out: str | Path, num_train: int = 400, num_val: int = 100, size: int = 128, seed: int = 0, max_objects: int = 4,
    size_range: tuple[float, float] = DEFAULT_SIZE_RANGE,
) -> Path:
    """Write a COCO-format detection/instance data set; returns ``out``.

    Layout: ``out/{train,val}/NNNNNN.png`` and ``out/annotations/instances_{train,val}.json`` with
    polygon-free RLE masks (pycocotools), ``bbox`` as [x, y, w, h] and categories 1..3. ``size_range``:
    shape sizes as fractions of the image side.
    """
    from pycocotools import mask as mask_utils

    size_range = check_size_range(size_range)
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)]
    for split, (first, count) in _split_sizes(num_train, num_val).items():
        (out / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for image_id, index in enumerate(range(first, first + count), start=1):
            pixels, instances = scene(seed, index, size, size, max_objects, size_range)
            file_name = f"{index:06d}.png"
            Image.fromarray(pixels).save(out / split / file_name)
            images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
            for instance in instances:
                rle = mask_utils.encode(np.asfortranarray(instance.mask.astype(np.uint8)))
                x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                rle["counts"] = rle["counts"].decode("ascii")
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": instance.category + 1,
                    "bbox": [x, y, w, h], "area": float(mask_utils.area(rle)), "iscrowd": 0, "segmentation": rle,
                })
        document = {"images": images, "annotations": annotations, "categories": categories,
                    "info": {"description": f"generated shapes, seed {seed}"}}
        # Written whole, after the split's images: a run killed while writing leaves no file that says the
        # data set is there (ensure_shapes then writes it again).
        with written_atomically(out / "annotations" / f"instances_{split}.json") as temporary:
            temporary.write_text(json.dumps(document))
    return out


def write_segmentation_shapes(
    out: str | Path, num_train: int = 400, num_val: int = 100, size: int = 128, seed: int = 0, max_objects: int = 4,
    size_range: tuple[float, float] = DEFAULT_SIZE_RANGE,
) -> Path:
    """Write an ADE20K-format semantic segmentation data set; returns ``out``.

    Layout: ``out/images/{training,validation}/NNNNNN.jpg`` and ``out/annotations/{training,validation}/
    NNNNNN.png``. As in ADE20K, mask value 0 means "ignore" and class k is stored as k + 1, so the
    stored values are 1 (background) to 4 (triangle); ``out/classes.json`` names the classes.
    """
    size_range = check_size_range(size_range)
    out = Path(out)
    folders = {"train": "training", "val": "validation"}
    for split, (first, count) in _split_sizes(num_train, num_val).items():
        image_dir = out / "images" / folders[split]
        mask_dir = out / "annotations" / folders[split]
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for index in range(first, first + count):
            pixels, instances = scene(seed, index, size, size, max_objects, size_range)
            Image.fromarray(pixels).save(image_dir / f"{index:06d}.jpg", quality=95)
            Image.fromarray(semantic_map(instances, size, size) + 1).save(mask_dir / f"{index:06d}.png")
    with written_atomically(out / "classes.json") as temporary:  # last and whole: it marks the data set complete
        temporary.write_text(json.dumps(list(SEMANTIC_CLASSES)))
    return out
