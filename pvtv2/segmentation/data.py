"""Semantic segmentation datasets: ADE20K's layout, a generic image + mask folder, and generated shapes.

ADE20K (``layout="ade20k"``, as MMSegmentation reads ADEChallengeData2016)::

    root/images/training/NAME.jpg       root/annotations/training/NAME.png
    root/images/validation/NAME.jpg     root/annotations/validation/NAME.png

Mask value 0 is "other / unlabelled" and is ignored; class k is stored as k + 1, so labels are shifted
down by one (MMSegmentation's ``reduce_zero_label``). Generic folder (``layout="folder"``)::

    root/images/{train,val}/NAME.(jpg|png|...)   root/masks/{train,val}/NAME.png

with labels 0..classes-1 stored as they are and 255 ignored. Either root may hold ``classes.json``, a list
of class names; otherwise ADE20K's 150 names (ade20k) or ``class_0``, ``class_1``... are used. Images and
masks are paired by file name; a missing mask, a mask of another size than its image, or a label outside
the classes is an error that names the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors

from ..data import DatasetError, read_image
from ..data.images import ModelInput
from ..data.shapes import write_segmentation_shapes
from .config import SegmentationConfig

logger = logging.getLogger("pvtv2")
DEFAULT_SHAPES_ROOT = "data/shapes-seg"

IGNORE_INDEX = 255  # labels the loss and the metrics skip (ADE20K's 0 after the shift)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CLASSES_FILE = "classes.json"
Layout = Literal["ade20k", "folder"]


@dataclass(frozen=True)
class LayoutSpec:
    images: str  # folder of a split's images, with {split}
    masks: str
    splits: dict[str, str]  # train/val -> the split's folder name
    reduce_zero_label: bool  # stored 0 = ignore, k + 1 = class k


LAYOUTS: dict[str, LayoutSpec] = {
    "ade20k": LayoutSpec("images/{split}", "annotations/{split}", {"train": "training", "val": "validation"}, True),
    "folder": LayoutSpec("images/{split}", "masks/{split}", {"train": "train", "val": "val"}, False),
}

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier",
    "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)


def read_class_names(root: str | Path, layout: Layout, num_classes: int | None = None) -> list[str]:
    """Class names of a dataset root: its ``classes.json``, else ADE20K's (ade20k), else numbered names."""
    root = Path(root)
    file = root / CLASSES_FILE
    if file.is_file():
        try:
            names = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise DatasetError(f"{file} is not valid JSON: {error}") from error
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"{file} must be a non-empty JSON list of class names")
        if num_classes is not None and num_classes != len(names):
            raise DatasetError(f"{file} names {len(names)} classes, but num_classes is {num_classes}")
        return names
    if layout == "ade20k" and num_classes in (None, len(ADE20K_CLASSES)):
        return list(ADE20K_CLASSES)
    if num_classes is None:
        raise DatasetError(f"{root} has no {CLASSES_FILE}: give the number of classes (data.num_classes)")
    return [f"class_{i}" for i in range(num_classes)]


class SegmentationDataset(Dataset):
    """Image / label-map pairs of one split; items are ``(image, mask)`` after ``transform``.

    Before the transform, ``image`` is a uint8 ``tv_tensors.Image`` (3, H, W) and ``mask`` an int64
    ``tv_tensors.Mask`` (H, W) of class indices, ``IGNORE_INDEX`` where unlabelled. With ``model_input``
    (how testing resizes a picture for the model), a picture the model cannot take is refused by name.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        layout: Layout = "ade20k",
        *,
        class_names: list[str] | None = None,
        transform: Callable | None = None,
        model_input: ModelInput | None = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise DatasetError(f"unknown dataset layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
        spec = LAYOUTS[layout]
        if split not in spec.splits:
            raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(spec.splits)}")
        self.root, self.split, self.layout, self.transform = Path(root), split, layout, transform
        self.model_input = model_input
        self.reduce_zero_label = spec.reduce_zero_label
        where = (f"a {layout} root holds {spec.images.format(split=spec.splits[split])}/ and "
                 f"{spec.masks.format(split=spec.splits[split])}/")
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder {self.root} does not exist; {where}")
        image_dir = self.root / spec.images.format(split=spec.splits[split])
        mask_dir = self.root / spec.masks.format(split=spec.splits[split])
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise DatasetError(f"dataset folder {self.root} has no {folder.relative_to(self.root)}/ folder; {where}")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DatasetError(f"{image_dir} has no images ({', '.join(IMAGE_SUFFIXES)})")
        self.samples: list[tuple[Path, Path]] = []
        for image in images:
            mask = mask_dir / f"{image.stem}.png"
            if not mask.is_file():
                raise DatasetError(f"image {image} has no mask: expected {mask}")
            self.samples.append((image, mask))
        self.classes = class_names if class_names is not None else read_class_names(self.root, layout)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Sample ``index`` before the transform, checked: uint8 image (3, H, W), labels (H, W)."""
        image_path, mask_path = self.samples[index]
        picture = read_image(image_path)
        if self.model_input is not None:
            self.model_input.check(image_path, picture.size)
        pixels = np.asarray(picture)
        try:
            with Image.open(mask_path) as file:
                mode = file.mode
                # Oriented as its image is read (a viewer shows both turned by their EXIF orientation).
                stored = np.asarray(ImageOps.exif_transpose(file)).astype(np.int64)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DatasetError(f"cannot read mask {mask_path}: {error}") from error
        if mode not in ("L", "P", "I", "I;16", "1"):
            raise DatasetError(f"mask {mask_path} has {mode} pixels; a mask holds one class index per pixel "
                               f"(a greyscale or palette PNG)")
        if stored.shape != pixels.shape[:2]:
            raise DatasetError(f"mask {mask_path} is {stored.shape[1]}x{stored.shape[0]} but its image {image_path} "
                               f"is {pixels.shape[1]}x{pixels.shape[0]} (width x height); they must be the same size")
        labels = self.to_labels(stored, mask_path)
        return (tv_tensors.Image(torch.from_numpy(pixels.copy()).permute(2, 0, 1)),
                tv_tensors.Mask(torch.from_numpy(labels)))

    def to_labels(self, stored: np.ndarray, path: Path) -> np.ndarray:
        """Stored mask values -> class indices (``IGNORE_INDEX`` where ignored), checked against the classes."""
        if self.reduce_zero_label:
            labels = stored - 1
            labels[stored == 0] = IGNORE_INDEX
        else:
            labels = stored
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= self.num_classes))
        if bad.any():
            values = np.unique(stored[bad])[:10].tolist()
            allowed = (f"1..{self.num_classes} (0 = ignore)" if self.reduce_zero_label
                       else f"0..{self.num_classes - 1} ({IGNORE_INDEX} = ignore)")
            raise DatasetError(f"mask {path} has values {values} outside the {self.num_classes} classes: "
                               f"expected {allowed}")
        return labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask


def ensure_shapes(
    root: str | Path, num_train: int, num_val: int, size: int, seed: int, max_objects: int,
    size_range: tuple[float, float] = (0.15, 0.5),
) -> Path:
    """The generated shapes scenes at ``root``, written first if the folder is missing (the embedded default)."""
    root = Path(root)
    if (root / CLASSES_FILE).is_file():
        return root
    logger.warning("writing %d + %d generated shapes scenes (%dx%d) to %s", num_train, num_val, size, size, root)
    return write_segmentation_shapes(root, num_train, num_val, size, seed, max_objects, size_range)


def dataset_root(cfg: SegmentationConfig) -> Path:
    """The data folder of ``cfg``; the generated shapes are written there first when they are missing."""
    data = cfg.data
    if data.dataset == "shapes":
        return ensure_shapes(data.root or DEFAULT_SHAPES_ROOT, data.shapes_train, data.shapes_val, data.shapes_size,
                             data.shapes_seed, data.shapes_max_objects, data.shapes_size_range)
    root = Path(data.root)  # type: ignore[arg-type]  # the config's check() requires it
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist (data.root, or --data for seg-eval)")
    return root


def find_dataset(cfg: SegmentationConfig, num_classes: int | None = None) -> tuple[Path, Layout, list[str]]:
    """``cfg``'s data folder (see :func:`dataset_root`), its layout (the shapes are written as ADE20K) and its
    class names (``num_classes`` of them, when given)."""
    root = dataset_root(cfg)
    layout: Layout = "folder" if cfg.data.dataset == "folder" else "ade20k"
    return root, layout, read_class_names(root, layout, num_classes)


class IterationSampler(Sampler[int]):
    """This process's share of an endless stream of epochs, each shuffled from (seed, epoch), starting after
    ``start`` indices: the stream a run interrupted after ``start`` samples would have gone on with."""

    def __init__(self, size: int, rank: int, world_size: int, seed: int, start: int = 0) -> None:
        if size < world_size:
            raise DatasetError(f"{size} training images cannot be shared among {world_size} processes")
        self.size, self.rank, self.world_size, self.seed, self.start = size, rank, world_size, seed, start
        self.per_process = size // world_size  # every process gets as many, so steps stay in lockstep

    def __iter__(self) -> Iterator[int]:
        epoch, position = divmod(self.start, self.per_process)
        while True:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.size, generator=generator)[: self.per_process * self.world_size]
            yield from order[self.rank::self.world_size][position:].tolist()
            epoch, position = epoch + 1, 0
