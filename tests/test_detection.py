"""Detection: RetinaNet and Mask R-CNN with PVT backbones, on tiny generated shapes (64x64 scenes).

Builds, a few training steps, COCO evaluation, checkpoints and resume, prediction drawings, bad input,
and every detector's parameter count against the paper's Table 3.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from pvtv2.models import reference
from pvtv2.cli.main import main
from pvtv2.data import DatasetError
from pvtv2.detection import build_backbone, build_detector
from pvtv2.detection.complexity import PAPER_COLUMN, table3_rows
from pvtv2.detection.config import DetectionConfig
from pvtv2.detection.data import CocoDetection, collate, eval_transform, split_paths, train_transform
from pvtv2.detection.evaluate import STAT_NAMES, coco_metrics, predict_dataset
from pvtv2.detection.predict import evaluate_checkpoint, load_detector
from pvtv2.detection.train import train
from pvtv2.engine.config import ConfigError
from pvtv2.engine.training_state import read_training_checkpoint

from .distributed import det_train_alone_and_in_two_processes

# The paper's models (the zoo also has -Li variants of every size, which the paper has no figures for).
PAPER_MODELS = list(reference.published(reference.IMAGENET))

SIZE = 64
REPO = Path(__file__).resolve().parents[1]
# Quick models for 64-pixel scenes: the paper's structure, narrow layers.
TINY = dict(fpn_channels=32, box_head_channels=64, mask_head_channels=32, anchor_sizes=(8, 16, 32, 64, 128),
            min_size=SIZE, max_size=SIZE)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny runs: see conftest.py


def _dataset(root: Path, split: str, train: bool, with_masks: bool = True) -> CocoDetection:
    paths = split_paths(root, split)
    transform = train_transform((SIZE - 8, SIZE), SIZE) if train else eval_transform()
    return CocoDetection(paths.images, paths.annotations, transform, with_masks=with_masks, skip_empty=train)


def _config(root: Path, out: Path, detector: str, **optim: object):
    return DetectionConfig.from_dict(dict(
        model=dict(detector=detector, backbone="pvt_v2_b0", drop_path_rate=0.0, fpn_channels=32, box_head_channels=64,
                   mask_head_channels=32, anchor_sizes=[8, 16, 32, 64, 128], box_batch_size_per_image=32,
                   rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=50, detections_per_img=20),
        data=dict(dataset="coco", root=str(root), train_split="train", val_split="val", train_min_size=[SIZE, SIZE],
                  min_size=SIZE, max_size=SIZE, num_workers=0),
        optim={**dict(epochs=1, batch_size=4, lr=1e-3, warmup_iters=2, lr_steps=[1, 2]), **optim},
        run=dict(output_dir=str(out), device="cpu", seed=0),
    ))


@pytest.mark.parametrize("detector", ["retinanet", "mask_rcnn"])
def test_detector_trains_and_evaluates(shapes: Path, detector: str) -> None:
    """A few AdamW steps change the weights with finite losses; evaluation gives pycocotools' figures."""
    with_masks = detector == "mask_rcnn"
    model = build_detector(detector, "pvt_v2_b0", num_classes=3, **TINY)
    train_set = _dataset(shapes, "train", train=True, with_masks=with_masks)
    images, targets = collate([train_set[i] for i in range(4)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    for _ in range(2):
        losses = model(images, targets)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert ("loss_mask" in losses) == with_masks
    assert sum(not torch.equal(a, b) for a, b in zip(before, model.parameters())) > len(before) // 2

    val_set = _dataset(shapes, "val", train=False, with_masks=with_masks)
    loader = torch.utils.data.DataLoader(val_set, 2, collate_fn=collate)
    results = predict_dataset(model, loader, torch.device("cpu"), show_progress=False)
    assert all(r["category_id"] in (1, 2, 3) and len(r["bbox"]) == 4 for r in results)
    assert all(("segmentation" in r) == with_masks for r in results)
    iou_types = ("bbox", "segm") if with_masks else ("bbox",)
    metrics = coco_metrics(val_set, results, iou_types)
    assert set(metrics) == {f"{t}_{s}" for t in iou_types for s in STAT_NAMES}
    assert all(-1.0 <= v <= 1.0 for v in metrics.values())


def test_mask_rcnn_output_in_original_pixels(shapes: Path) -> None:
    """Evaluation images of any size come back as boxes and masks of that size (COCO compares there)."""
    model = build_detector("mask_rcnn", "pvt_v2_b0", num_classes=3, **TINY,
                           box_score_thresh=0.0).eval()
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


def test_train_checkpoint_resume_eval_predict(shapes: Path, tmp_path: Path) -> None:
    """det-train writes a checkpoint that det-eval scores as training did; resume continues; det-predict draws."""
    out = tmp_path / "run"
    metrics = train(_config(shapes, out, "mask_rcnn"))
    state = read_training_checkpoint(out / "last.pth")
    assert state["task"] == "detection" and state["epoch"] == 1 and state["class_names"] == ["circle", "square", "triangle"]
    assert evaluate_checkpoint(out / "last.pth", device="cpu", num_workers=0) == pytest.approx(metrics)

    resumed = _config(shapes, out, "mask_rcnn", **{})
    resumed.optim.epochs, resumed.run.resume = 2, "auto"
    train(resumed)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert read_training_checkpoint(out / "last.pth")["epoch"] == 2

    scene = next((shapes / "val").glob("*.png"))
    drawing = tmp_path / "drawing.png"
    assert main(["det-predict", str(scene), "--checkpoint", str(out / "last.pth"), "--out", str(drawing),
                 "--score-threshold", "0", "--device", "cpu"]) == 0
    assert Image.open(drawing).size == Image.open(scene).size
    detector = load_detector(out / "last.pth", "cpu")
    assert detector.class_names == ["circle", "square", "triangle"] and not detector.model.training


def test_det_train_cli_retinanet(shapes: Path, tmp_path: Path) -> None:
    """The CLI reads a YAML config with overrides and trains; det-eval prints box figures only."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(_config(shapes, tmp_path / "out", "retinanet").to_dict()))
    assert main(["det-train", "--config", str(config), "--batch_size", "8"]) == 0
    assert read_training_checkpoint(tmp_path / "out" / "last.pth")["config"]["optim"]["batch_size"] == 8
    figures = tmp_path / "figures.json"
    assert main(["det-eval", "--checkpoint", str(tmp_path / "out" / "last.pth"), "--device", "cpu", "--workers", "0",
                 "--json", str(figures)]) == 0
    assert sorted(json.loads(figures.read_text())) == sorted(f"bbox_{s}" for s in STAT_NAMES)


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


def test_every_detector_config_loads() -> None:
    """A COCO config for every backbone x detector of Table 3, each valid."""
    configs = REPO / "configs" / "detection"
    for name in reference.published(reference.COCO):
        for detector in ("retinanet", "mask_rcnn"):
            config = DetectionConfig.load(configs / f"{detector}_{name}_1x.yaml")
            assert (config.model.detector, config.model.backbone, config.optim.epochs) == (detector, name, 12)


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


def test_two_processes_train_the_same_retinanet_as_one(shapes: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes with gloo and batch 2 each == 1 process with batch 4: RetinaNet's loss is a
    mean over images and DDP averages gradients over processes, so the steps are the same."""
    def config(out: str, batch: int) -> Path:
        cfg = _config(shapes, tmp_path / out, "retinanet", batch_size=batch)
        cfg.data.hflip = 0.0  # no random draw: each process would draw its own
        path = tmp_path / f"{out}.yaml"
        path.write_text(yaml.safe_dump(cfg.to_dict()))
        return path

    single, pair, printed = det_train_alone_and_in_two_processes(config, tmp_path)
    assert "2 process(es) on cpu" in printed
    for key, value in single["model"].items():
        torch.testing.assert_close(pair["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # Every held-out image is scored once, whichever process predicted it.
    assert pair["metrics"]["bbox_AP"] == pytest.approx(single["metrics"]["bbox_AP"], abs=1e-3)


@pytest.mark.parametrize("detector", ["retinanet", "mask_rcnn", "sparse_rcnn"])
def test_shapes_config_generates_its_data_and_trains(tmp_path: Path, detector: str) -> None:
    """The shipped shapes configs (the slow check's), scaled to a few scenes: the data set is written on
    first use, training and evaluation run, and a folder of another shapes data set is refused."""
    config = REPO / "configs" / "detection" / f"shapes_{detector}_pvt_v2_b0.yaml"
    overrides = ["--root", str(tmp_path / "shapes"), "--shapes_train", "4", "--shapes_val", "2", "--epochs", "1",
                 "--output_dir", str(tmp_path / "run"), "--device", "cpu", "--warmup_iters", "1"]
    assert main(["det-train", "--config", str(config), *overrides]) == 0
    assert split_paths(tmp_path / "shapes", "val").annotations.is_file()
    assert "bbox_AP" in read_training_checkpoint(tmp_path / "run" / "last.pth")["metrics"]
    with pytest.raises(DatasetError, match="holds a shapes data set with 4 train scenes"):
        train(DetectionConfig.load(config, [("root", str(tmp_path / "shapes")), ("shapes_train", "5"), ("device", "cpu")]))


@pytest.mark.slow
def test_training_loss_falls(shapes: Path) -> None:
    """40 AdamW steps of Mask R-CNN on the same 8 scenes: it fits them, its loss falls well below the start.
    (RetinaNet's focal loss, from a random backbone, moves too little in 40 steps for such a check.)"""
    detector = "mask_rcnn"
    model = build_detector(detector, "pvt_v2_b0", num_classes=3, **TINY)
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
