"""The generated shapes data sets: deterministic, consistent masks/boxes/labels, readable by pycocotools."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pvtv2.cli.main import main
from pvtv2.data.shapes import CATEGORIES, MIN_VISIBLE_PIXELS, scene, semantic_map, write_coco_shapes, write_segmentation_shapes


def test_scene_is_a_function_of_seed_and_index():
    image_a, instances_a = scene(3, 7, 64, 80)
    image_b, instances_b = scene(3, 7, 64, 80)
    image_c, _ = scene(3, 8, 64, 80)
    assert image_a.shape == (64, 80, 3) and image_a.dtype == np.uint8
    assert np.array_equal(image_a, image_b) and not np.array_equal(image_a, image_c)
    assert [i.category for i in instances_a] == [i.category for i in instances_b]


def test_visible_masks_do_not_overlap_and_are_large_enough():
    for index in range(20):
        _, instances = scene(0, index, 96, 96, max_objects=6)
        if not instances:
            continue
        stacked = np.stack([i.mask for i in instances]).astype(int)
        assert stacked.sum(0).max() <= 1  # a pixel belongs to at most one visible object
        assert all(i.mask.sum() >= MIN_VISIBLE_PIXELS for i in instances)


def test_coco_shapes_boxes_and_masks_agree(tmp_path):
    root = write_coco_shapes(tmp_path / "coco", num_train=6, num_val=3, size=64, seed=1)
    coco = COCO(str(root / "annotations" / "instances_train.json"))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == sorted(CATEGORIES)
    assert len(coco.getImgIds()) == 6
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert ann["area"] == mask.sum() and 1 <= ann["category_id"] <= 3
    image = coco.loadImgs(1)[0]
    assert Image.open(root / "train" / image["file_name"]).size == (64, 64)
    val = json.loads((root / "annotations" / "instances_val.json").read_text())
    assert len(val["images"]) == 3


def test_segmentation_shapes_follow_ade20k_label_convention(tmp_path):
    root = write_segmentation_shapes(tmp_path / "seg", num_train=4, num_val=2, size=64, seed=2)
    masks = sorted((root / "annotations" / "training").glob("*.png"))
    images = sorted((root / "images" / "training").glob("*.jpg"))
    assert [m.stem for m in masks] == [i.stem for i in images] and len(masks) == 4
    stored = np.array(Image.open(masks[0]))
    _, instances = scene(2, 0, 64, 64)
    assert np.array_equal(stored, semantic_map(instances, 64, 64) + 1)  # 0 stays free for "ignore"
    assert stored.min() >= 1 and stored.max() <= len(CATEGORIES) + 1
    assert json.loads((root / "classes.json").read_text())[0] == "background"


def test_pvt_data_command_writes_both_formats(tmp_path, capsys):
    assert main(["data", "shapes", str(tmp_path / "a"), "--train", "2", "--val", "1", "--size", "48"]) == 0
    assert (tmp_path / "a" / "annotations" / "instances_val.json").is_file()
    assert main(["data", "shapes-seg", str(tmp_path / "b"), "--train", "2", "--val", "1", "--size", "48"]) == 0
    assert len(list((tmp_path / "b" / "annotations" / "validation").glob("*.png"))) == 1
    assert main(["data", "shapes", str(tmp_path / "c"), "--size", "8"]) == 2
    assert "--size must be at least 32" in capsys.readouterr().err


def test_rle_round_trip_of_written_masks(tmp_path):
    root = write_coco_shapes(tmp_path / "coco", num_train=2, num_val=1, size=48, seed=4)
    document = json.loads((root / "annotations" / "instances_train.json").read_text())
    ann = document["annotations"][0]
    decoded = mask_utils.decode({"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()})
    assert decoded.sum() == ann["area"]


@pytest.mark.parametrize("size", [40, 97])
def test_shapes_stay_inside_odd_sized_images(size):
    _, instances = scene(5, 0, size, size + 13)
    for instance in instances:
        assert instance.mask.shape == (size, size + 13)


def test_size_range_sets_the_shape_size():
    def mean_area(size_range):
        areas = [i.mask.sum() for k in range(12) for i in scene(6, k, 64, 64, 1, size_range)[1]]
        return np.mean(areas)

    small, large = mean_area((0.15, 0.2)), mean_area((0.6, 0.7))
    assert large > 6 * small  # area grows with the square of the size
    with pytest.raises(ValueError, match="0 < low <= high <= 1"):
        write_coco_shapes("unused", size_range=(0.5, 0.2))
