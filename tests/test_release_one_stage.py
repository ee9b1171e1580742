"""The one-stage detectors (RetinaNet, ATSS, GFL) against MMDetection 3.3 itself (the oracle, tests/oracle.py).

Fast: anchors equal to MMDetection's ``AnchorGenerator``'s; RetinaNet's loss equal to ``RetinaHead.loss_by_feat``
on the same weights and targets (normalised by the batch's positives); the release head key maps both ways, the
release keys loading strictly into MMDetection's heads (giving their outputs) and whole detectors; the release test
settings; old det-train RetinaNet checkpoints (K + 1 class channels) loading with their classes 1..K. (Box decoding
and batched NMS against MMDetection's: tests/test_release_two_stage.py.)
Slow: ``pvt det-predict --json`` on a release-layout file against MMDetection's detections, on an 800x1216 photo
and on a 427x640 one that the pipeline resizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead

from pvtv2.cli.main import main
from pvtv2.detection import build_detector
from pvtv2.detection.config import DetectionConfig
from pvtv2.detection.model import build_from_config
from pvtv2.detection.loading import load_detector
from pvtv2.detection.predict import detect
from pvtv2.detection.registry import detector_spec
from pvtv2.detection.release import to_release
from pvtv2.engine.training_state import FORMAT_KEY, FORMAT_VERSION, atomic_save

from . import oracle

pytestmark = pytest.mark.usefixtures("one_thread")

SCORE_THRESHOLD = 0.05  # det-predict's --score-threshold in the acceptance check
FPN_SIZES = [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]  # P3-P7 of an 800 x 1216 image


def _mmdet_build(config: dict[str, Any], registry: str = "MODELS") -> Any:
    """What MMDetection's ``registry`` (MODELS, TASK_UTILS) builds of ``config``."""
    oracle._import_mmdet()
    from mmdet import registry as registries
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope("mmdet"):
        return getattr(registries, registry).build(ConfigDict(config))


def _official_head(kind: str, num_classes: int = 80, channels: int = 256, **extra: Any) -> torch.nn.Module:
    """MMDetection's head of the official ``kind`` config (``num_classes``, ``channels`` wide)."""
    head = oracle.mmdet3_model_config(kind, num_classes=num_classes)["bbox_head"]
    head.update(in_channels=channels, feat_channels=channels, **extra)
    return _mmdet_build(head).eval()


@pytest.mark.parametrize("kind", ["retinanet", "atss", "gfl"])
def test_anchors_are_mmdetections(kind: str) -> None:
    """Our anchors of an 800 x 1216 image equal, bit for bit and in order, those of MMDetection's AnchorGenerator
    of the official config (9 per place for RetinaNet: octave base scale 4, 3 scales, 3 ratios; 1 for ATSS/GFL)."""
    generator = _mmdet_build(oracle.mmdet3_model_config(kind)["bbox_head"]["anchor_generator"], "TASK_UTILS")
    theirs = torch.cat(generator.grid_priors(FPN_SIZES, device="cpu"))
    model = build_detector(kind, "pvt_v2_b0", num_classes=3)
    features = [torch.zeros(1, 1, h, w) for h, w in FPN_SIZES]
    (ours,) = model.anchor_generator(ImageList(torch.zeros(1, 3, 800, 1216), [(800, 1216)]), features)
    assert ours.shape == theirs.shape == (sum(h * w for h, w in FPN_SIZES) * (9 if kind == "retinanet" else 1), 4)
    assert torch.equal(ours, theirs)


def test_retinanet_loss_is_mmdetections() -> None:
    """RetinaNet's focal and L1 losses equal MMDetection's RetinaHead.loss_by_feat (MaxIoUAssigner 0.5 / 0.4 with
    low-quality matches, ignored anchors left out) on the same head weights, features and targets. The two images
    have 3 boxes and none: a per-image normalisation (torchvision's) would give other values."""
    torch.manual_seed(0)
    classes, channels, height, width = 3, 32, 256, 320
    model = build_detector("retinanet", "pvt_v2_b0", num_classes=classes, fpn_channels=channels)
    theirs = _official_head("retinanet", classes, channels, train_cfg=dict(
        assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1),
        allowed_border=-1, pos_weight=-1, debug=False))
    head = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
    release = detector_spec("retinanet").release.head_to_release(head, classes)
    theirs.load_state_dict({k.removeprefix("bbox_head."): v for k, v in release.items()})
    features = [torch.randn(2, channels, height // s, width // s) for s in (8, 16, 32, 64, 128)]
    targets = [dict(boxes=torch.tensor([[10.0, 20, 90, 150], [100, 40, 300, 240], [150, 60, 170, 75]]),
                    labels=torch.tensor([1, 3, 2])),
               dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))]
    anchors = model.anchor_generator(ImageList(torch.zeros(2, 3, height, width), [(height, width)] * 2), features)[0]
    counts = [f.shape[-2] * f.shape[-1] * 9 for f in features]
    assigned = [model.assign(anchors, counts, t["boxes"]) for t in targets]
    assert (assigned[0] == -2).any() and (assigned[0] >= 0).sum() > 3  # ignored anchors, low-quality matches
    ours = model.losses(targets, model.head(features), anchors, assigned, counts)

    from mmengine.structures import InstanceData

    gt = [InstanceData(bboxes=t["boxes"], labels=t["labels"] - 1) for t in targets]
    metas = [dict(img_shape=(height, width), pad_shape=(height, width), batch_input_shape=(height, width))] * 2
    expected = theirs.loss_by_feat(*theirs(features), gt, metas)
    torch.testing.assert_close(ours["classification"], sum(expected["loss_cls"]), rtol=1e-5, atol=0)
    torch.testing.assert_close(ours["bbox_regression"], sum(expected["loss_bbox"]), rtol=1e-5, atol=0)


def _per_place(levels: list[torch.Tensor]) -> torch.Tensor:
    """MMDetection's per-level (N, A * C, H, W) outputs as ours: (N, sum of H * W * A, C)."""
    return torch.cat([x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 1) for x in levels], dim=1)


@pytest.mark.parametrize("kind", ["retinanet", "atss", "gfl"])
def test_head_key_map_round_trip_and_mmdetections_head(kind: str) -> None:
    """Our head weights (all random, the level scales too) -> release names -> ours gives them back unchanged;
    the release names load strictly into MMDetection's head of the official config, which then computes our
    head's outputs."""
    torch.manual_seed(0)
    model = build_detector(kind, "pvt_v2_b0", num_classes=80)
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.05)
    layout = detector_spec(kind).release
    head = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
    release = layout.head_to_release(head, 80)
    assert layout.recognise(list(release)) and layout.num_classes(release) == 80
    back = layout.head_to_ours(release, 80)
    assert back.keys() == head.keys() and all(torch.equal(back[k], v) for k, v in head.items())
    theirs = _official_head(kind)
    theirs.load_state_dict({k.removeprefix("bbox_head."): v for k, v in release.items()}, strict=True)
    features = [torch.randn(1, 256, h, w) for h, w in [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]]
    with torch.no_grad():
        ours, expected = model.head(features), theirs(features)
    names = ["cls_logits", "bbox_regression", "centerness"][:len(expected)]
    for name, levels in zip(names, expected):
        torch.testing.assert_close(ours[name].flatten(1), _per_place(levels).flatten(1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["retinanet", "atss", "gfl"])
def test_release_weights_load_strictly_into_mmdetections_detector(kind: str) -> None:
    """A whole detector's weights in the release layout (official backbone keys, MMDetection 2.13 FPN and head
    names; GFL's integral buffer too) are exactly the keys and shapes of MMDetection's model of the official
    config, once its backbone keys pass MMDetection's own pvt_convert."""
    oracle._import_mmdet()
    from mmdet.models.backbones.pvt import pvt_convert

    model = build_detector(kind, "pvt_v2_b0", num_classes=80)
    release = to_release(model.state_dict(), detector_spec(kind), 80)
    theirs = _mmdet_build(oracle.mmdet3_model_config(kind, "pvt_v2_b0"))
    shapes = {k: v.shape for k, v in theirs.state_dict().items()}
    backbone = pvt_convert({k.removeprefix("backbone."): v for k, v in release.items() if k.startswith("backbone.")})
    state = {**{k: v for k, v in release.items() if not k.startswith("backbone.")},
             **{f"backbone.{k}": v.reshape(shapes[f"backbone.{k}"]) for k, v in backbone.items()}}
    theirs.load_state_dict(state, strict=True)


def test_release_test_settings() -> None:
    """test_options reads the config's test_cfg (nms_pre, min_bbox_size, score_thr, nms IoU, max_per_img); the
    official test_cfg has RetinaNet's NMS at 0.5 and ATSS's and GFL's at 0.6; other NMS kinds are refused."""
    retinanet, atss, gfl = (detector_spec(k).release for k in ("retinanet", "atss", "gfl"))
    assert (retinanet.mmdet_type, atss.mmdet_type, gfl.mmdet_type) == ("RetinaNet", "ATSS", "GFL")
    for layout, iou in ((retinanet, 0.5), (atss, 0.6), (gfl, 0.6)):
        assert layout.test_cfg == oracle.official_config("retinanet" if iou == 0.5 else "atss")["model"]["test_cfg"]
        assert layout.test_options(dict(test_cfg=layout.test_cfg)) == dict(
            score_thresh=0.05, topk_candidates=1000, detections_per_img=100, nms_thresh=iou, min_box_size=0)
    assert retinanet.test_options({}) == dict(min_box_size=None)  # no min_bbox_size: MMDetection filters none
    with pytest.raises(ValueError, match="only dict\\(type='nms'"):
        retinanet.test_options(dict(test_cfg=dict(nms=dict(type="soft_nms", iou_threshold=0.5))))
    model = build_detector("retinanet", "pvt_v2_b0", num_classes=3, **retinanet.test_options(dict(test_cfg=dict(
        score_thr=0.1, nms_pre=500, min_bbox_size=2, nms=dict(type="nms", iou_threshold=0.4), max_per_img=30))))
    assert (model.score_thresh, model.topk_candidates, model.min_box_size, model.nms_thresh,
            model.detections_per_img) == (0.1, 500, 2, 0.4, 30)


def test_old_retinanet_checkpoint_loads_with_its_classes(tmp_path: Path) -> None:
    """A det-train RetinaNet checkpoint from before K-class RetinaNet (K + 1 class channels per anchor, class 0
    never a positive) loads through load_detector; its class scores are the old head's channels 1..K, and its
    detections are labelled 1..K."""
    torch.manual_seed(0)
    config = DetectionConfig.from_dict(dict(
        model=dict(detector="retinanet", backbone="pvt_v2_b0", fpn_channels=32, anchor_sizes=[16, 32, 64, 128, 256]),
        data=dict(dataset="coco", root=str(tmp_path), min_size=64, max_size=64)))
    model = build_from_config(config.model, config.data, 3, pretrained=False)
    old_head = RetinaNetHead(32, 9, 3 + 1)  # the head as it was: torchvision's, K + 1 classes
    with torch.no_grad():
        old_head.classification_head.cls_logits.bias.copy_(torch.randn(9 * 4))
    state = {**{k: v for k, v in model.state_dict().items() if not k.startswith("head.")},
             **{f"head.{k}": v for k, v in old_head.state_dict().items()}}
    path = tmp_path / "last.pth"
    atomic_save({FORMAT_KEY: FORMAT_VERSION, "task": "detection", "model_name": "retinanet/pvt_v2_b0",
                 "config": config.to_dict(), "class_names": ["circle", "square", "triangle"],
                 "category_ids": [1, 2, 3], "model": state}, path)
    loaded = load_detector(path, "cpu")
    features = [torch.randn(2, 32, s, s) for s in (8, 4, 2, 1, 1)]
    with torch.no_grad():
        old, new = old_head(features)["cls_logits"], loaded.model.head(features)["cls_logits"]
    assert new.shape[-1] == 3
    torch.testing.assert_close(new, old[..., 1:])
    output = detect(loaded, torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), score_threshold=0.0)
    assert len(output["labels"]) and set(output["labels"].tolist()) <= {1, 2, 3}


# -- the acceptance check: pvt det-predict on release files against MMDetection (slow) ------------------------------
RELEASES = [("retinanet", "pvt_v2_b0"), ("retinanet", "pvt_tiny"), ("atss", "pvt_v2_b0"), ("gfl", "pvt_v2_b0")]


@pytest.mark.slow
@pytest.mark.parametrize("photo", oracle.PHOTO_SIZES)
@pytest.mark.parametrize("kind_backbone", RELEASES, ids=["/".join(r) for r in RELEASES])
def test_det_predict_gives_mmdetections_detections(kind_backbone: tuple[str, str], photo: str, released,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``pvt det-predict IMAGE --checkpoint RELEASE --score-threshold 0.05 --json`` against MMDetection's
    detections at the same threshold (ATSS's scores are times its centerness after MMDetection's threshold, so
    it returns some below 0.05): of its top 100 at least 95% matched by class, box IoU >= 0.98 and score within
    0.01, and as many above 0.05 within 5%. (Measured: all matched, scores within 2e-5, boxes within 1e-3 px.)"""
    release = released(*kind_backbone)
    image = tmp_path / "photo.png"
    Image.fromarray(release.photo(photo)).save(image)
    theirs = release.detections(photo)
    kept = theirs["scores"] >= SCORE_THRESHOLD
    theirs = {k: v[kept] for k, v in theirs.items() if isinstance(v, np.ndarray)}
    capsys.readouterr()
    assert main(["det-predict", str(image), "--checkpoint", str(release.path), "--out", str(tmp_path / "out.png"),
                 "--score-threshold", str(SCORE_THRESHOLD), "--json", "--device", "cpu"]) == 0
    detections = json.loads(capsys.readouterr().out)["detections"]
    classes = oracle.coco_classes()
    ours = dict(boxes=np.array([d["box"] for d in detections]).reshape(-1, 4),
                scores=np.array([d["score"] for d in detections]),
                labels=np.array([classes.index(d["label"]) for d in detections]))
    report = oracle.compare_detections(ours, theirs)
    assert report.matched >= 0.95 and report.count_close, (report, report.unmatched[:3])
    assert 50 <= report.count_theirs <= 100  # the calibration's range: enough detections to mean something
