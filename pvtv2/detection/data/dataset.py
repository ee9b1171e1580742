"""COCO-format detection data: an images folder and an ``instances`` JSON, checked on load, with the
paper's training pipeline in torchvision.transforms.v2 (tv_tensors keep boxes and masks with the image).

Training images are resized to a shorter side drawn from ``[low, high]`` (800 for 1x, 640-800 for 3x)
with the longer side at most ``max_size`` (1333), and flipped horizontally with probability 0.5.
Evaluation images stay as they are: the detector resizes them and maps its boxes and masks back to the
original pixels, which is what COCO evaluation compares against.

Labels are the categories in id order, numbered from 1 (0 is Mask R-CNN's background).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor

from ...data import DatasetError, read_image
from ...data.images import ModelInput
from ...data.shapes import write_coco_shapes
from ...errors import InputError
from ...models import min_input_size
from ..config import DetectionConfig
from .augment import OFFICIAL_SCALE, OFFICIAL_SIZES, official_multiscale
from .coco_format import load_coco

logger = logging.getLogger("pvtv2")

BOX_TOLERANCE = 1.0  # pixels a box may stick out of its image (rounding in annotation tools) before it is an error
MIN_BOX_SIDE = 1.0  # boxes narrower or lower than this many pixels are degenerate and dropped


@dataclass(frozen=True)
class SplitPaths:
    """Where one split of a COCO-format data set lies."""

    images: Path
    annotations: Path


def split_paths(root: str | Path, split: str) -> SplitPaths:
    """COCO layout: images in ``root/split``, annotations in ``root/annotations/instances_<split>.json``."""
    root = Path(root)
    return SplitPaths(root / split, root / "annotations" / f"instances_{split}.json")


class CocoDetection(Dataset):
    """One split of a COCO-format data set; item ``i`` is ``(image, target)`` for torchvision's detectors:
    a float image (3, H, W) in [0, 1] and ``boxes`` (N, 4) xyxy, ``labels`` (N,), ``masks`` (N, H, W) uint8
    (with ``with_masks``), ``image_id``.

    Checked on load, each a :class:`DatasetError` that names the image or annotation: a missing image
    file or folder, an annotation of an unknown category or image, a box outside its image. Boxes of zero
    width or height are dropped with a warning that counts them. Crowd regions are left out of training
    targets (COCO evaluation reads them from the JSON). ``skip_empty`` leaves out images with no object,
    as MMDetection does for training.
    """

    def __init__(
        self,
        images: str | Path,
        annotations: str | Path,
        transform: Callable | None = None,
        *,
        with_masks: bool = True,
        skip_empty: bool = False,
    ) -> None:
        self.images_dir, self.annotation_file = Path(images), Path(annotations)
        if not self.annotation_file.is_file():
            raise DatasetError(f"annotation file {self.annotation_file} does not exist")
        if not self.images_dir.is_dir():
            raise DatasetError(f"image folder {self.images_dir} does not exist")
        self.coco = load_coco(self.annotation_file, with_masks=with_masks, images_dir=self.images_dir)  # checked
        self.transform = transform
        self.with_masks = with_masks
        self.category_ids = sorted(self.coco.getCatIds())
        self.classes = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.label_of = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.objects, degenerate = self._check_annotations()
        if degenerate:
            logger.warning("%s: dropped %d degenerate boxes (width or height under %g pixel), e.g. annotation ids %s",
                           self.annotation_file, len(degenerate), MIN_BOX_SIDE, degenerate[:5])
        self.dropped_boxes = len(degenerate)
        self.image_ids = [i for i in sorted(self.coco.imgs) if not skip_empty or self.objects[i]]
        if not self.image_ids:
            raise DatasetError(f"{self.annotation_file} has no images" + (" with objects" if skip_empty else ""))
        missing = [self._path(i) for i in self.image_ids if not self._path(i).is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} images of {self.annotation_file} do not exist, e.g. {missing[0]}")

    def _path(self, image_id: int) -> Path:
        return self.images_dir / self.coco.imgs[image_id]["file_name"]

    def check_model_input(self, model_input: ModelInput) -> None:
        """Refuse, before any work, an image (by its size in the annotation file) that the detector cannot
        take at ``model_input``'s resize: too small, or of an aspect ratio that resizes to a sliver."""
        for image_id in self.image_ids:
            info = self.coco.imgs[image_id]
            model_input.check(self._path(image_id), (info["width"], info["height"]))

    def _check_annotations(self) -> tuple[dict[int, list[dict[str, Any]]], list[int]]:
        """Per image, its valid non-crowd annotations; and the ids of the degenerate boxes dropped. (The
        file's structure, references and numbers were checked by :func:`load_coco`.)"""
        objects: dict[int, list[dict[str, Any]]] = {i: [] for i in self.coco.imgs}
        degenerate = []
        for ann in self.coco.anns.values():
            image = self.coco.imgs[ann["image_id"]]
            where = f"{self.annotation_file}: annotation {ann['id']} (image {image['file_name']})"
            x, y, w, h = ann["bbox"]
            if w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
                degenerate.append(ann.get("id"))
                continue
            width, height = image["width"], image["height"]
            if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
                raise DatasetError(f"{where} has bbox [x, y, w, h] = {ann['bbox']}, outside the {width}x{height} image")
            if ann.get("iscrowd", 0):
                continue
            objects[ann["image_id"]].append(ann)
        return objects, degenerate

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self._path(image_id)
        pixels = pil_to_tensor(read_image(path))  # uint8 (3, H, W)
        height, width = pixels.shape[-2:]
        if (height, width) != (info["height"], info["width"]):
            with Image.open(path) as file:  # its stored size: the EXIF orientation may turn it
                stored = file.size
            why = (f" (stored as {stored[0]}x{stored[1]} and turned by its EXIF orientation, as a viewer shows it; "
                   f"annotations are read in the picture as shown)" if stored != (width, height) else "")
            raise DatasetError(f"image {path} is {width}x{height}{why}, but {self.annotation_file} says "
                               f"{info['width']}x{info['height']}")
        anns = self.objects[image_id]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)  # within the tolerance checked on load
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": image_id,
        }
        if self.with_masks:
            masks = [torch.from_numpy(self.coco.annToMask(a)) for a in anns]
            target["masks"] = tv_tensors.Mask(torch.stack(masks) if masks else torch.zeros(0, height, width,
                                                                                          dtype=torch.uint8))
        image = tv_tensors.Image(pixels)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target


def train_transform(min_size: tuple[int, int] = (800, 800), max_size: int = 1333, hflip: float = 0.5,
                    augment: str = "paper") -> v2.Compose:
    """Resize, flip, scale to [0, 1]; boxes left degenerate by the resize (or crop) are dropped with their
    labels and masks. The resize, for ``min_size = (low, high)`` and a longer side <= ``max_size``:

    * ``augment="paper"``, or ``low == high``: a shorter side drawn uniformly from ``[low, high]`` (section
      5.2's text: 800 for 1x, 640-800 for 3x; the official 1x configs' single scale);
    * ``augment="official"`` with ``low < high``: the official 3x configs' choice between two multi-scale
      policies (:func:`pvtv2.detection.data.augment.official_multiscale`), its sizes scaled by ``high / 800``.
    """
    low, high = min_size
    if not 0 < low <= high:
        raise InputError(f"the training shorter side range must be 0 < low <= high, got {min_size}")
    if augment not in ("paper", "official"):
        raise InputError(f"the training augmentation must be 'paper' or 'official', got {augment!r}")
    if augment == "official" and low < high:
        resize: v2.Transform = official_multiscale(high, max_size)
    else:
        resize = v2.RandomShortestSize(list(range(low, high + 1)), max_size=max_size, antialias=True)
    return v2.Compose([
        resize,
        v2.RandomHorizontalFlip(hflip),
        v2.ToDtype(torch.float32, scale=True),
        v2.SanitizeBoundingBoxes(min_size=MIN_BOX_SIDE),
    ])


def eval_transform() -> v2.Transform:
    """Nothing: evaluation images stay uint8, which the detector resizes with OpenCV as MMDetection does
    (:mod:`pvtv2.detection.transform`) and maps its output back from."""
    return v2.Identity()


def model_input(cfg: DetectionConfig, training: bool = False) -> ModelInput:
    """How the detector of ``cfg`` resizes an image (evaluation, or the smallest of training's random
    sizes) and the smallest side its backbone takes."""
    data = cfg.data
    low, high = data.train_min_size
    if not training:
        shorter = data.min_size
    elif data.train_augment == "official" and low < high:  # its smallest size, scaled as official_multiscale does
        shorter = max(1, round(OFFICIAL_SIZES[0] * high / OFFICIAL_SCALE))
    else:
        shorter = low
    return ModelInput(smallest=min_input_size(cfg.model.backbone), shorter=shorter, longest=data.max_size,
                      option="data.train_min_size" if training else "data.min_size")


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Images of different sizes stay a list, as torchvision's detectors take them."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def ensure_shapes(root: str | Path, num_train: int, num_val: int, size: int, seed: int = 0) -> Path:
    """The generated shapes data set at ``root``, written first if it is not there (the offline default);
    a folder holding another shapes data set (other counts or size) is an error, not silently used."""
    root = Path(root)
    files = {split: split_paths(root, split).annotations for split in ("train", "val")}
    if not all(path.is_file() for path in files.values()):
        logger.warning("writing the generated shapes data set (%d + %d scenes, %d px) to %s", num_train, num_val,
                       size, root)
        return write_coco_shapes(root, num_train=num_train, num_val=num_val, size=size, seed=seed)
    for split, wanted in (("train", num_train), ("val", num_val)):
        images = json.loads(files[split].read_text())["images"]
        if len(images) != wanted or any((i["height"], i["width"]) != (size, size) for i in images[:1]):
            raise DatasetError(
                f"{root} holds a shapes data set with {len(images)} {split} scenes of {images[0]['width']} px, but the "
                f"config asks for {wanted} of {size} px; remove the folder to regenerate it, or set another root"
            )
    return root


def build_datasets(cfg: DetectionConfig) -> tuple[CocoDetection, CocoDetection]:
    """The training and held-out splits a config names (the shapes data set is written when missing)."""
    data, with_masks = cfg.data, cfg.model.with_masks
    if data.dataset == "shapes":
        ensure_shapes(data.root, data.shapes_train, data.shapes_val, data.shapes_size, seed=cfg.run.seed)
    train_paths, val_paths = split_paths(data.root, data.train_split), split_paths(data.root, data.val_split)
    train_set = CocoDetection(train_paths.images, train_paths.annotations,
                              train_transform(data.train_min_size, data.max_size, data.hflip, data.train_augment),
                              with_masks=with_masks, skip_empty=True)
    val_set = CocoDetection(val_paths.images, val_paths.annotations, eval_transform(), with_masks=with_masks)
    if not val_set.coco.anns:  # found now rather than at the first evaluation, after an epoch of training
        raise DatasetError(f"{val_paths.annotations} has no annotated object: there is nothing to evaluate against")
    train_set.check_model_input(model_input(cfg, training=True))
    val_set.check_model_input(model_input(cfg))
    if train_set.category_ids != val_set.category_ids:
        raise DatasetError(f"{train_paths.annotations} and {val_paths.annotations} have different categories "
                           f"({train_set.category_ids} vs {val_set.category_ids}); they must be the same")
    return train_set, val_set
