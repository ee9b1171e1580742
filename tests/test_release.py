"""Release files of the dense tasks, whatever the detector: config texts read without running them, MMDetection's
FPN names, the table of released files, their cache and the error for one not imported yet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pvtv2.cli.main import main
from pvtv2.detection.release import neck_to_ours, neck_to_release
from pvtv2.engine.release import (
    ReleaseFileError,
    is_release_layout,
    parse_config_text,
    read_config_file,
    released_cache_path,
    released_models,
    resolve_checkpoint,
)

PRETTY_TEXT = """
model = dict(
    type='RetinaNet',
    backbone=dict(type='pvt_v2_b0', style='pytorch'),
    neck=dict(type='FPN', in_channels=[32, 64, 160, 256], out_channels=256, start_level=1, num_outs=5),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),
                  max_per_img=100))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
data_root = 'data/coco/'
data = dict(test=dict(ann_file=data_root + 'annotations/instances_val2017.json',
                      pipeline=[dict(type='Normalize', **img_norm_cfg), dict(type='Pad', size_divisor=32)]))
stages = [dict(type='DIIHead', index=i) for i in range(3)]
lr_steps = (80000 // 2, -1)
"""


def test_config_text_is_read_without_running_it() -> None:
    config = parse_config_text(PRETTY_TEXT)
    assert config["model"]["type"] == "RetinaNet" and config["model"]["backbone"]["type"] == "pvt_v2_b0"
    assert config["model"]["test_cfg"]["nms"]["iou_threshold"] == 0.5
    assert config["data"]["test"]["ann_file"] == "data/coco/annotations/instances_val2017.json"
    assert config["data"]["test"]["pipeline"][0] == dict(type="Normalize", mean=[123.675, 116.28, 103.53],
                                                          std=[58.395, 57.12, 57.375], to_rgb=True)
    assert [s["index"] for s in config["stages"]] == [0, 1, 2] and config["lr_steps"] == (40000, -1)


@pytest.mark.parametrize("text", [
    "model = __import__('os').system('touch {marker}')",
    "model = open('{marker}', 'w')",
    "model = [open('{marker}', 'w') for f in range(3)]",
    "model = dict(type=unknown_name)",
    "for i in range(3):\n    model = open('{marker}', 'w')",
])
def test_code_in_a_config_text_is_refused_not_run(text: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(ReleaseFileError, match="line 1"):
        parse_config_text(text.format(marker=marker), "the test's config")
    assert not marker.exists()


def test_imports_and_bare_expressions_are_skipped_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    config = parse_config_text(f"import os\nos.system('touch {marker}')\nmodel = dict(type='GFL')\n")
    assert config == {"model": {"type": "GFL"}} and not marker.exists()


def test_config_files_merge_their_bases_as_mmcv(tmp_path: Path) -> None:
    (tmp_path / "_base_").mkdir()
    (tmp_path / "_base_" / "model.py").write_text(
        "model = dict(type='RetinaNet', backbone=dict(type='ResNet', depth=50), test_cfg=dict(score_thr=0.05))\n"
        "optimizer = dict(type='SGD', lr=0.01, momentum=0.9)\n")
    (tmp_path / "config.py").write_text(
        "_base_ = ['_base_/model.py']\n"
        "model = dict(backbone=dict(type='pvt_v2_b0'), test_cfg=dict(max_per_img=100))\n"
        "optimizer = dict(_delete_=True, type='AdamW', lr=0.0001)\n")
    config = read_config_file(tmp_path / "config.py")
    assert config["model"] == dict(type="RetinaNet", backbone=dict(type="pvt_v2_b0", depth=50),
                                   test_cfg=dict(score_thr=0.05, max_per_img=100))
    assert config["optimizer"] == dict(type="AdamW", lr=0.0001)  # replaced, not merged
    with pytest.raises(ReleaseFileError, match="does not exist"):
        read_config_file(tmp_path / "missing.py")


def test_fpn_weights_round_trip_through_mmdetection_names() -> None:
    ours = {"backbone.fpn.inner_blocks.0.0.weight": torch.randn(2, 3, 1, 1),
            "backbone.fpn.layer_blocks.2.0.bias": torch.randn(2),
            "backbone.fpn.extra_blocks.p6.weight": torch.randn(2, 2, 3, 3),
            "backbone.fpn.extra_blocks.p7.bias": torch.randn(2)}
    release = neck_to_release(ours, levels=3)
    assert sorted(release) == ["neck.fpn_convs.2.conv.bias", "neck.fpn_convs.3.conv.weight",
                               "neck.fpn_convs.4.conv.bias", "neck.lateral_convs.0.conv.weight"]
    back = neck_to_ours(release, levels=3)
    assert back.keys() == ours.keys() and all(back[k] is ours[k] for k in ours)
    with pytest.raises(ReleaseFileError, match="neck.fpn_convs.9.conv.weight"):
        neck_to_ours({"neck.fpn_convs.9.conv.weight": torch.zeros(1)}, levels=3, source="x.pth")


def test_release_layout_is_told_from_ours_and_from_classifiers() -> None:
    release = {"state_dict": {"backbone.patch_embed1.proj.weight": torch.zeros(1), "bbox_head.retina_cls.weight": 0},
               "meta": {}}
    assert is_release_layout(release)
    assert not is_release_layout({**release, "pvtv2_train_checkpoint": 2})
    assert not is_release_layout({"patch_embed1.proj.weight": torch.zeros(1), "head.weight": torch.zeros(1)})


def test_released_files_table() -> None:
    released = released_models()
    detection = [r for r in released.values() if r.task == "detection"]
    segmentation = [r for r in released.values() if r.task == "segmentation"]
    # Table 3's RetinaNet and Mask R-CNN for every backbone (RetinaNet PVT-Small twice: 640 and 800 px), Table 4's four
    # detectors with B2 and B2-Li, Semantic FPN with PVTv1.
    assert len(detection) == 31 and len(segmentation) == 4
    assert released["gfl_pvt_v2_b2_fpn_3x_mstrain_fp16"].box_AP == 50.2
    assert released["mask_rcnn_pvt_v2_b0_fpn_1x_coco"].published == "box AP 38.2, mask AP 36.2"
    assert {r.model for r in detection} == {"retinanet", "mask_rcnn", "atss", "gfl", "cascade_mask_rcnn", "sparse_rcnn"}
    assert all(r.page or r.note for r in released.values())


def test_a_released_name_finds_its_cached_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVT_HOME", str(tmp_path))
    name = "retinanet_pvt_v2_b0_fpn_1x_coco"
    with pytest.raises(ReleaseFileError, match=f"not in the cache yet: download it from https://drive.*{name} FILE"):
        resolve_checkpoint(name)
    released_cache_path(name).parent.mkdir(parents=True)
    released_cache_path(name).write_bytes(b"")
    assert resolve_checkpoint(name) == tmp_path / "released" / f"{name}.pth"
    assert resolve_checkpoint(tmp_path / "other.pth") == tmp_path / "other.pth"  # any other path as it is


def test_weights_list_shows_released_detectors_and_segmenters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "list", "--task", "detection", "gfl_*"]) == 0
    out = capsys.readouterr().out
    assert "gfl_pvt_v2_b2_fpn_3x_mstrain_fp16" in out and "box AP 50.2" in out and "drive.google.com" in out
    assert "retinanet" not in out
    assert main(["weights", "list", "--task", "segmentation"]) == 0
    assert "mIoU 36.6 (paper 35.7)" in capsys.readouterr().out
    assert main(["weights", "list", "--task", "detection", "nothing_*"]) == 2


@pytest.mark.slow
def test_convert_a_release_detector_both_ways(released, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``pvt convert --to pvtv2`` makes a det-train checkpoint that predicts what the release file does;
    ``--to mmdet`` writes it back in the release layout, every tensor as it was."""
    import json

    from PIL import Image

    from . import oracle

    release = released("retinanet", "pvt_v2_b0")
    ours, back = tmp_path / "ours.pth", tmp_path / "back.pth"
    assert main(["convert", str(release.path), str(ours), "--to", "pvtv2"]) == 0
    assert main(["convert", str(ours), str(back), "--to", "mmdet"]) == 0
    original = torch.load(release.path, weights_only=True)["state_dict"]
    written = torch.load(back, weights_only=True)
    assert written["state_dict"].keys() == original.keys()
    assert all(torch.equal(written["state_dict"][k], original[k]) for k in original)
    assert written["meta"]["CLASSES"] == oracle.coco_classes()
    image = tmp_path / "photo.png"
    Image.fromarray(release.photo("427x640")).save(image)
    outputs = []
    for checkpoint in (release.path, ours, back):
        capsys.readouterr()
        assert main(["det-predict", str(image), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out.png"),
                     "--score-threshold", "0.05", "--json", "--device", "cpu"]) == 0
        outputs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["detections"])
    assert len(outputs[0]) > 10 and outputs[0] == outputs[1] == outputs[2]


def test_coco_figures_are_mmdetections_cocometric(tmp_path: Path) -> None:
    """The same detections scored by det-eval's evaluation and by MMDetection's CocoMetric: the same box and mask
    figures (CocoMetric prints them to 3 decimals). Made so that what CocoMetric does differently from plain
    pycocotools decides: 130 detections of one class per image, whose true ones score lowest (maxDets 100, 300,
    1000, not 1, 10, 100), and medium boxes around small masks (mask results scored without their box)."""
    import json

    from PIL import Image

    from pvtv2.detection.data import CocoDetection
    from pvtv2.detection.coco_metric import STAT_NAMES, coco_metrics, to_coco_results

    from . import oracle

    oracle.install_mmcv_ops_shim()
    from mmdet.evaluation.metrics import CocoMetric

    size, objects = 200, [(1, (10, 10, 20, 20)), (1, (50, 20, 20, 20)), (2, (20, 60, 40, 40))]  # xywh
    (tmp_path / "images").mkdir()
    images, annotations = [], []
    for image_id in (1, 2):
        Image.new("RGB", (size, size)).save(tmp_path / "images" / f"{image_id}.png")
        images.append(dict(id=image_id, file_name=f"{image_id}.png", width=size, height=size))
        for category, (x, y, w, h) in objects:
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=category, bbox=[x, y, w, h],
                                    area=w * h, iscrowd=0, segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]]))
    categories = [dict(id=1, name="square"), dict(id=2, name="big square")]
    (tmp_path / "instances.json").write_text(json.dumps(dict(images=images, annotations=annotations,
                                                             categories=categories)))
    dataset = CocoDetection(tmp_path / "images", tmp_path / "instances.json", with_masks=True)
    generator = torch.Generator().manual_seed(0)
    ours, samples = [], []
    for image_id in (1, 2):
        true = torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h) in objects], dtype=torch.float32)
        true += torch.randn(true.shape, generator=generator) * 0.5
        # 130 wrong "square"s of 36 x 36 px in the lower right, where no object is, scoring above the true ones.
        corners = 100 + torch.rand(130, 2, generator=generator) * 60
        wrong = torch.cat([corners, corners + 36], dim=1)
        boxes = torch.cat([true, wrong])
        scores = torch.cat([torch.tensor([0.02, 0.03, 0.9]), 0.1 + 0.8 * torch.rand(130, generator=generator)])
        labels = torch.tensor([0, 0, 1] + [0] * 130)
        masks = torch.zeros(len(boxes), 1, size, size)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.round().int().tolist()):
            if x1 - x0 > 30 and y0 >= 100:  # a wrong one: a mask of a quarter of its box's area (small, box medium)
                x0, y0, x1, y1 = (3 * x0 + x1) // 4, (3 * y0 + y1) // 4, (x0 + 3 * x1) // 4, (y0 + 3 * y1) // 4
            mask[0, y0:y1, x0:x1] = 1.0
        ours += to_coco_results(dict(boxes=boxes, scores=scores, labels=labels + 1, masks=masks), image_id,
                                dataset.category_ids)
        samples.append(dict(img_id=image_id, ori_shape=(size, size), pred_instances=dict(
            bboxes=boxes, scores=scores, labels=labels, masks=masks[:, 0].bool())))
    metric = CocoMetric(ann_file=str(tmp_path / "instances.json"), metric=["bbox", "segm"],
                        outfile_prefix=str(tmp_path / "results"))
    metric.dataset_meta = dict(classes=tuple(dataset.classes))
    metric.process({}, samples)
    theirs = metric.compute_metrics(metric.results)
    figures = coco_metrics(dataset, ours, ("bbox", "segm"))
    names = dict(AP="mAP", AP50="mAP_50", AP75="mAP_75", APs="mAP_s", APm="mAP_m", APl="mAP_l")
    for iou_type in ("bbox", "segm"):
        for name in STAT_NAMES:
            assert round(figures[f"{iou_type}_{name}"], 3) == theirs[f"{iou_type}_{names[name]}"], (iou_type, name)


@pytest.mark.slow
def test_weights_import_checks_a_released_file_and_finds_it_by_name(released, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``pvt weights import NAME FILE`` caches a release file that is NAME's detector and backbone (refusing one
    that is not), and ``--checkpoint NAME`` finds it afterwards, offline."""
    from PIL import Image

    monkeypatch.setenv("PVT_HOME", str(tmp_path / "cache"))
    release = released("retinanet", "pvt_v2_b0")
    assert main(["weights", "import", "mask_rcnn_pvt_v2_b0_fpn_1x_coco", str(release.path)]) == 2
    assert "holds a retinanet with pvt_v2_b0, not mask_rcnn_pvt_v2_b0_fpn_1x_coco's mask_rcnn" in capsys.readouterr().err
    assert main(["weights", "import", "retinanet_pvt_v2_b1_fpn_1x_coco", str(release.path)]) == 2
    name = "retinanet_pvt_v2_b0_fpn_1x_coco"
    assert main(["weights", "import", name, str(release.path)]) == 0
    assert released_cache_path(name).read_bytes() == release.path.read_bytes()
    assert main(["weights", "list", "--task", "detection", name]) == 0
    assert " yes " in capsys.readouterr().out
    image = tmp_path / "photo.png"
    Image.fromarray(release.photo("427x640")).save(image)
    assert main(["det-predict", str(image), "--checkpoint", name, "--out", str(tmp_path / "out.png"),
                 "--score-threshold", "0.05", "--device", "cpu"]) == 0
