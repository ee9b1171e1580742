"""Reading a COCO instances file and checking its structure before anything trains on it.

pycocotools trusts its input: a file without ``categories``, an image without ``width``, a NaN box or a
polygon of two points surface later as a ``KeyError``, an ``AssertionError`` or "input type is not
supported" in the middle of an epoch, or as silently wrong targets. Here every field that training and
evaluation read is checked once on load, and each problem is a :class:`DatasetError` naming the file,
the entry (image, category or annotation id) and the field.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from ...data import DatasetError
from ...data.images import picture_size

_LAYOUT = 'a COCO instances file: {"images": [...], "annotations": [...], "categories": [...]}'


def load_coco(path: Path, *, with_masks: bool, images_dir: Path | None = None) -> COCO:
    """The pycocotools index of the instances file ``path``, after :func:`check_instances` (``images_dir``:
    where its images are, to tell which of two disagreeing sizes is the file's)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read annotation file {path}: {error}") from error
    except json.JSONDecodeError as error:
        raise DatasetError(f"annotation file {path} is not valid JSON: {error}") from error
    check_instances(data, path, with_masks=with_masks, images_dir=images_dir)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def check_instances(data: Any, path: Path, *, with_masks: bool, images_dir: Path | None = None) -> None:
    """Raise :class:`DatasetError` for the first entry of ``data`` (the parsed file ``path``) that training
    or COCO evaluation could not use. ``images_dir``, where the images are, is read only to say which of two
    disagreeing sizes (an image entry's and its RLE masks') is wrong."""
    if not isinstance(data, Mapping):
        raise DatasetError(f"{path} holds a JSON {type(data).__name__}; expected {_LAYOUT}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            found = "has none" if key not in data else f"has a {type(data[key]).__name__}"
            raise DatasetError(f"{path}: the {key!r} entry must be a list, but the file {found}; expected {_LAYOUT}")
    if not data["categories"]:
        raise DatasetError(f"{path} has no categories; expected at least one {{'id': ..., 'name': ...}}")
    images = _check_entries(data["images"], path, "image", {"file_name": str, "width": int, "height": int})
    for image in images.values():
        if image["width"] < 1 or image["height"] < 1 or not image["file_name"]:
            raise DatasetError(f"{path}: image {image['id']} has width {image['width']}, height {image['height']} "
                               f"and file_name {image['file_name']!r}; expected a file name and a size of at least 1")
    categories = _check_entries(data["categories"], path, "category", {"name": str})
    annotations = _check_entries(data["annotations"], path, "annotation", {"image_id": int, "category_id": int})
    for ann in annotations.values():
        where = f"{path}: annotation {ann['id']}"
        image = images.get(ann["image_id"])
        if image is None:
            raise DatasetError(f"{where} refers to image id {ann['image_id']!r}, which is not in 'images'")
        where += f" (image {image['file_name']})"
        if ann["category_id"] not in categories:
            raise DatasetError(f"{where} has category_id {ann['category_id']!r}, which is not one of the file's "
                               f"categories {sorted(categories)}")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(_is_finite_number(v) for v in box)):
            raise DatasetError(f"{where} has bbox {box!r}; expected [x, y, width, height], four finite numbers")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise DatasetError(f"{where} has iscrowd {ann['iscrowd']!r}; expected 0 or 1")
        segmentation = ann.get("segmentation")
        if segmentation:
            _check_segmentation(segmentation, where, image, path, images_dir)
        elif with_masks and not ann.get("iscrowd", 0):
            raise DatasetError(f"{where} has no segmentation; a mask detector needs one per object")


def _check_entries(entries: list[Any], path: Path, kind: str, fields: Mapping[str, type]) -> dict[int, Mapping]:
    """Each entry an object with an integer ``id`` (unique) and the ``fields`` of the given types; by id."""
    by_id: dict[int, Mapping] = {}
    for position, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise DatasetError(f"{path}: {kind} number {position} is a JSON {type(entry).__name__}, not an object")
        for field, expected in {"id": int, **fields}.items():
            value = entry.get(field)
            if not isinstance(value, expected) or isinstance(value, bool):
                label = f"{kind} {entry['id']}" if _is_int(entry.get("id")) else f"{kind} number {position}"
                shown = "has no" if field not in entry else f"has {value!r} as its"
                raise DatasetError(f"{path}: {label} {shown} {field!r}; expected {_TYPE_WORDS[expected]}")
        if entry["id"] in by_id:
            raise DatasetError(f"{path}: two {kind} entries have the id {entry['id']}; ids must be unique")
        by_id[entry["id"]] = entry
    return by_id


_TYPE_WORDS = {int: "an integer", str: "text"}


def _check_segmentation(segmentation: Any, where: str, image: Mapping, path: Path, images_dir: Path | None) -> None:
    """Polygons ``[[x1, y1, x2, y2, ...], ...]`` of at least 3 points, or an RLE ``{"size": [h, w], "counts": ...}``
    of the image's size: the two forms pycocotools reads."""
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
                    and all(_is_finite_number(v) for v in polygon)):
                shown = repr(polygon) if len(repr(polygon)) < 80 else repr(polygon)[:77] + "..."
                raise DatasetError(f"{where} has a segmentation polygon {shown}; each polygon must be a list of at "
                                   f"least 3 points as finite x, y numbers")
        return
    if isinstance(segmentation, Mapping):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if size != [image["height"], image["width"]] and isinstance(counts, (list, str)) and images_dir is not None:
            _check_image_entry_size(image, size, path, images_dir)
        if size != [image["height"], image["width"]] or not isinstance(counts, (list, str)):
            raise DatasetError(f"{where} has an RLE segmentation with size {size!r} and counts of type "
                               f"{type(counts).__name__}; expected size [height, width] = "
                               f"[{image['height']}, {image['width']}] and counts as a list or a string")
        return
    raise DatasetError(f"{where} has a segmentation of type {type(segmentation).__name__}; expected a list of "
                       f"polygons or an RLE object")


def _check_image_entry_size(image: Mapping, rle_size: Any, path: Path, images_dir: Path) -> None:
    """An RLE mask whose size differs from its image entry's: when the image file has the RLE's size, the
    entry is what is wrong, and the message says so rather than blaming the (right) mask."""
    file = images_dir / image["file_name"]
    if not file.is_file():
        return
    width, height = picture_size(file)
    if [height, width] == rle_size:
        raise DatasetError(f"{path}: image {image['id']} ({image['file_name']}) has width {image['width']} and "
                           f"height {image['height']}, but the file is {width}x{height}, as its RLE masks say: "
                           f"correct the image entry's width and height")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
