"""Detection: RetinaNet's and Mask R-CNN's specifics with PVT backbones on tiny generated shapes (64x64 scenes):
the masks in the original pixels, the training transform, the data set's errors, the config's, P6 from C5,
every backbone's parameter count under both against the paper's Table 3, and Mask R-CNN fitting its scenes
(what every detector goes through: test_detectors.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pvtv2.cli.main import main
from pvtv2.data import DatasetError
from pvtv2.detection import build_backbone, build_detector
from pvtv2.detection.complexity import PAPER_COLUMN, table3_rows
from pvtv2.detection.config import DetectionConfig
from pvtv2.detection.data import CocoDetection, collate, eval_transform, split_paths, train_transform
from pvtv2.engine.config import ConfigError
from pvtv2.models import reference

from .detectors import SCENE_SIZE as SIZE
from .detectors import tiny_detector

# The paper's models (the zoo also has -Li variants of every size, which the paper has no figures for).
PAPER_MODELS = list(reference.published(reference.IMAGENET))

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny runs: see conftest.py


def _dataset(root: Path, split: str, train: bool, with_masks: bool = True) -> CocoDetection:
    paths = split_paths(root, split)
    transform = train_transform((SIZE - 8, SIZE), SIZE) if train else eval_transform()
    return CocoDetection(paths.images, paths.annotations, transform, with_masks=with_masks, skip_empty=train)


def test_mask_rcnn_output_in_original_pixels(shapes: Path) -> None:
    """Evaluation images of any size come back as boxes and masks of that size (COCO compares there)."""
    model = tiny_detector("mask_rcnn", box_score_thresh=0.0).eval()
    with torch.no_grad():
        (output,) = model([torch.rand(3, 48, 80)])
    assert output["masks"].shape[-2:] == (48, 80)
    if len(output["boxes"]):
        assert output["boxes"][:, 2].max() <= 80 and output["boxes"][:, 3].max() <= 48


def test_train_transform_keeps_boxes_and_masks_together(shapes: Path) -> None:
    """Multi-scale resize and flip move boxes, masks and image as one; the longer side stays <= max_size."""
    dataset = _dataset(shapes, "train", train=False)
    image, target = dataset[0]
    transform = train_transform((40, 56), max_size=60, hflip=1.0)
    for _ in range(3):
        resized, moved = transform(image, target)
        height, width = resized.shape[-2:]
        assert 40 <= min(height, width) <= 56 and max(height, width) <= 60
        assert moved["masks"].shape[-2:] == (height, width)
        for box, mask in zip(moved["boxes"], moved["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            # The mask's extent and its box agree to within a pixel or two of resampling.
            assert abs(xs.min() - box[0]) <= 2 and abs(xs.max() + 1 - box[2]) <= 2
            assert abs(ys.min() - box[1]) <= 2 and abs(ys.max() + 1 - box[3]) <= 2


def _broken(shapes: Path, tmp_path: Path, edit) -> Path:
    document = json.loads(split_paths(shapes, "val").annotations.read_text())
    edit(document)
    (tmp_path / "annotations").mkdir(exist_ok=True)
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(document))
    (tmp_path / "val").symlink_to(shapes / "val")
    return tmp_path


def test_unknown_category_is_named(shapes: Path, tmp_path: Path) -> None:
    def edit(document: dict) -> None:
        document["annotations"][0]["category_id"] = 7

    root = _broken(shapes, tmp_path, edit)
    with pytest.raises(DatasetError, match=r"annotation 1 \(image 000008.png\) has category_id 7"):
        _dataset(root, "val", train=False)


def test_box_outside_image_is_named(shapes: Path, tmp_path: Path) -> None:
    def edit(document: dict) -> None:
        document["annotations"][1]["bbox"] = [50.0, 10.0, 30.0, 20.0]

    root = _broken(shapes, tmp_path, edit)
    with pytest.raises(DatasetError, match=r"annotation 2 .* outside the 64x64 image"):
        _dataset(root, "val", train=False)


def test_degenerate_boxes_are_dropped_and_counted(shapes: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def edit(document: dict) -> None:
        document["annotations"][0]["bbox"][2] = 0.0
        document["annotations"][2]["bbox"][3] = 0.0

    root = _broken(shapes, tmp_path, edit)
    dataset = _dataset(root, "val", train=False)
    assert dataset.dropped_boxes == 2 and "dropped 2 degenerate boxes" in caplog.text
    total = sum(len(dataset[i][1]["boxes"]) for i in range(len(dataset)))
    assert total == len(json.loads(split_paths(shapes, "val").annotations.read_text())["annotations"]) - 2


def test_missing_image_is_named(shapes: Path, tmp_path: Path) -> None:
    def edit(document: dict) -> None:
        document["images"][0]["file_name"] = "nowhere.png"

    root = _broken(shapes, tmp_path, edit)
    with pytest.raises(DatasetError, match=r"nowhere\.png"):
        _dataset(root, "val", train=False)


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  detector: mask_rcnn\n  fpn_channel: 64\n")
    with pytest.raises(ConfigError, match="fpn_channel.*did you mean fpn_channels"):
        DetectionConfig.load(path)
    with pytest.raises(ConfigError, match="detector must be one of"):
        DetectionConfig.from_dict({"model": {"detector": "yolo"}})


def test_param_counts_within_3_percent_of_paper() -> None:
    """Every backbone under both detectors (80 classes) counts within 3% of the paper's Table 3."""
    names = list(reference.published(reference.COCO))
    assert set(names) == set(PAPER_MODELS)
    for row in table3_rows(names, with_flops=False):
        detector, backbone = row.model.split("/")
        paper = reference.published(reference.COCO)[backbone][PAPER_COLUMN[detector]]
        assert row.params_M == pytest.approx(paper, rel=0.03), row


def test_table_cli_prints_detection_rows(capsys: pytest.CaptureFixture[str]) -> None:
    """pvt table --task detection: params beside the paper's, GFLOPs at 1280x800, status 0 within 3%."""
    assert main(["table", "--task", "detection", "--models", "pvt_v2_b0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["retinanet/pvt_v2_b0", "mask_rcnn/pvt_v2_b0"]
    assert all(r["params_ok"] and r["GFLOPs"] > 100 for r in rows)


def test_retinanet_p6_comes_from_c5() -> None:
    """MMDetection's add_extra_convs='on_input': P6 from C5, even where C5 and the FPN are both 256 wide (B0)."""
    backbone = build_backbone("retinanet", "pvt_v2_b0", fpn_channels=256)
    assert backbone.body.feature_info.channels() == [64, 160, 256]
    calls = []
    backbone.fpn.extra_blocks.p6.register_forward_hook(lambda module, args, output: calls.append(args[0]))
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        c5 = backbone.body(image)[-1]
        levels = backbone(image)
    assert list(levels) == ["0", "1", "2", "p6", "p7"]
    torch.testing.assert_close(calls[0], c5)


def test_unknown_detector_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown detector 'yolo'"):
        build_detector("yolo", "pvt_v2_b0")


@pytest.mark.slow
def test_training_loss_falls(shapes: Path) -> None:
    """40 AdamW steps of Mask R-CNN on the same 8 scenes: it fits them, its loss falls well below the start.
    (RetinaNet's focal loss, from a random backbone, moves too little in 40 steps for such a check.)"""
    detector = "mask_rcnn"
    model = tiny_detector(detector)
    dataset = _dataset(shapes, "train", train=True, with_masks=detector == "mask_rcnn")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for step in range(40):
        images, targets = collate([dataset[(step * 4 + i) % len(dataset)] for i in range(4)])
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-8:]) / 8 < 0.6 * sum(losses[:4]) / 4, losses
