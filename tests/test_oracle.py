"""Self-tests of the MMDetection / MMSegmentation oracle harness (tests/oracle.py).

Fast: the mmcv op shim against mmcv's semantics, the official configs, the backbone layout conversion against
MMDetection's ``pvt_convert`` and our package's key names. Slow (a model each): the seven released detectors
and the Semantic FPN build, detect deterministically with 50-100 detections above 0.05, and round-trip through
their release-layout files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests import oracle

mmdet = pytest.importorskip("mmdet", reason="the oracle needs MMDetection 3.3 (the test extra)")

# The B2 releases' heads run on PVTv2-B0 (a few times faster, and the release tests' models); PVT_ORACLE_BACKBONE=
# pvt_v2_b2 runs them on the released backbone.
RELEASED_B2 = os.environ.get("PVT_ORACLE_BACKBONE", "pvt_v2_b0")


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """The builds and detections are long: one torch thread (the machine is shared)."""


# ----------------------------------------------------------------------------------------------------------------
# mmcv ops
# ----------------------------------------------------------------------------------------------------------------

def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    """mmcv's CPU NMS rule, spelled out: visit by ``scores.sort(descending=True)``, drop a box whose IoU with
    an already kept one is > thr."""
    order = torch.sort(scores, 0, descending=True)[1].tolist()
    b = boxes.double()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            w = max(0.0, float(min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])))
            h = max(0.0, float(min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])))
            inter = w * h
            if inter / float(area[i] + area[j] - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def test_shim_nms_follows_mmcv_order_and_rule() -> None:
    oracle.install_mmcv_ops_shim()
    oracle.install_mmcv_ops_shim()  # idempotent
    from mmcv.ops import batched_nms, nms

    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        n = 60
        xy = torch.rand(n, 2, generator=g) * 100
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 40 + 1], 1)
        scores = torch.rand(n, generator=g)
        if trial % 2:  # ties: mmcv's visiting order decides
            scores = (scores * 4).round() / 4
        dets, keep = nms(boxes, scores, 0.5)
        assert keep.tolist() == _reference_nms(boxes, scores, 0.5)
        torch.testing.assert_close(dets[:, 4], scores[keep])
    labels = torch.randint(0, 3, (n,), generator=g)
    _, keep = batched_nms(boxes, scores, labels, dict(type="nms", iou_threshold=0.5))
    for c in range(3):  # class-aware: each class on its own
        mine = sorted(k for k in keep.tolist() if labels[k] == c)
        idx = torch.nonzero(labels == c).flatten()
        assert mine == sorted(idx[_reference_nms(boxes[idx], scores[idx], 0.5)].tolist())


def _reference_roi_align(x: np.ndarray, roi: np.ndarray, out_hw: tuple[int, int], scale: float,
                         sampling_ratio: int, aligned: bool) -> np.ndarray:
    """mmcv's RoIAlign (average pooling) for one roi, spelled out: the roi shifted by half a pixel when
    ``aligned`` (else its size at least 1), ``sampling_ratio`` samples a bin side (0: ceil(roi size / bins)),
    bilinear samples that are 0 beyond one pixel outside the map and clamp to its border."""
    c, h, w = x.shape
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (float(v) * scale - offset for v in roi[1:])
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = max(rw, 1.0), max(rh, 1.0)
    ph, pw = out_hw
    bh, bw = rh / ph, rw / pw
    gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rh / ph))
    gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rw / pw))
    count = max(gh * gw, 1)

    def sample(yy: float, xx: float) -> np.ndarray:
        if yy < -1.0 or yy > h or xx < -1.0 or xx > w:
            return np.zeros(c)
        yy, xx = max(yy, 0.0), max(xx, 0.0)
        y0, x0 = int(yy), int(xx)
        if y0 >= h - 1:
            y0 = y1_ = h - 1
            yy = float(y0)
        else:
            y1_ = y0 + 1
        if x0 >= w - 1:
            x0 = x1_ = w - 1
            xx = float(x0)
        else:
            x1_ = x0 + 1
        ly, lx = yy - y0, xx - x0
        return ((1 - ly) * (1 - lx) * x[:, y0, x0] + (1 - ly) * lx * x[:, y0, x1_]
                + ly * (1 - lx) * x[:, y1_, x0] + ly * lx * x[:, y1_, x1_])

    out = np.zeros((c, ph, pw))
    for i in range(ph):
        for j in range(pw):
            acc = np.zeros(c)
            for iy in range(gh):
                yy = y1 + i * bh + (iy + 0.5) * bh / gh
                for ix in range(gw):
                    acc += sample(yy, x1 + j * bw + (ix + 0.5) * bw / gw)
            out[:, i, j] = acc / count
    return out


def test_shim_roi_align_follows_mmcv_semantics() -> None:
    oracle.install_mmcv_ops_shim()
    from mmcv.ops import RoIAlign

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 13, 17, generator=g)
    rois = torch.tensor([[0, 3.0, 5.0, 40.0, 30.0], [1, -6.0, -3.0, 20.0, 9.0], [0, 50.0, 40.0, 70.0, 60.0],
                         [1, 10.0, 10.0, 10.5, 10.2], [0, 0.0, 0.0, 68.0, 52.0]])
    for aligned in (True, False):
        for sampling_ratio in (0, 2):
            layer = RoIAlign((5, 4), spatial_scale=0.25, sampling_ratio=sampling_ratio, aligned=aligned)
            got = layer(x, rois).numpy()
            for r, roi in enumerate(rois.numpy()):
                want = _reference_roi_align(x[int(roi[0])].numpy().astype(np.float64), roi, (5, 4), 0.25,
                                            sampling_ratio, aligned)
                np.testing.assert_allclose(got[r], want, rtol=1e-5, atol=1e-5)


def test_shim_refuses_other_ops() -> None:
    oracle.install_mmcv_ops_shim()
    from mmcv.ops import sigmoid_focal_loss

    with pytest.raises(NotImplementedError, match="mmcv-lite"):
        sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 2.0, 0.25, None, "mean")


# ----------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(oracle.DETECTORS))
def test_official_config_text_is_the_resolved_config(name: str) -> None:
    release = oracle.DETECTORS[name]
    text = oracle.official_config_text(release.kind, release.backbone)
    namespace: dict[str, Any] = {}
    exec(text, {}, namespace)  # the text is python, like mmcv's pretty_text
    assert namespace == oracle.official_config(release.kind, release.backbone)
    model = namespace["model"]
    bb = oracle.BACKBONES[release.backbone]
    assert model["backbone"]["type"] == release.backbone
    assert model["pretrained"] == f"https://github.com/whai362/PVT/releases/download/v2/{release.backbone}.pth"
    assert model["neck"]["in_channels"] == bb.channels
    test = namespace["data"]["test"]["pipeline"][1]
    assert test["type"] == "MultiScaleFlipAug" and test["img_scale"] == (1333, 800)
    assert namespace["img_norm_cfg"] == dict(mean=oracle.COCO_MEAN, std=oracle.COCO_STD, to_rgb=True)
    assert namespace["dataset_type"] == "CocoDataset"
    assert namespace["work_dir"] == f"./work_dirs/{release.config_name}"
    from mmengine.config import Config

    assert Config.fromstring(text, ".py").model.type == model["type"]


def test_official_configs_hold_the_official_values() -> None:
    retina = oracle.official_config("retinanet", "pvt_v2_b0")["model"]
    # the released file's backbone dict is merged into the R-50 base's (mmcv 1.x Config semantics)
    assert retina["backbone"] == dict(type="pvt_v2_b0", depth=50, num_stages=4, out_indices=(0, 1, 2, 3),
                                      frozen_stages=1, norm_cfg=dict(type="BN", requires_grad=True),
                                      norm_eval=True, style="pytorch")
    assert retina["neck"]["add_extra_convs"] == "on_input" and retina["neck"]["start_level"] == 1
    assert retina["test_cfg"]["nms"]["iou_threshold"] == 0.5
    assert oracle.official_config("retinanet", "pvt_tiny")["model"]["neck"]["in_channels"] == [64, 128, 320, 512]
    atss = oracle.official_config("atss")
    assert atss["model"]["neck"]["add_extra_convs"] == "on_output"
    assert atss["model"]["test_cfg"]["nms"]["iou_threshold"] == 0.6
    assert atss["optimizer"]["type"] == "AdamW" and "momentum" not in atss["optimizer"]
    assert atss["lr_config"]["step"] == [27, 33] and atss["lr_config"]["warmup"] == "linear"
    cascade = oracle.official_config("cascade_mask_rcnn")["model"]
    assert cascade["backbone"] == dict(type="pvt_v2_b2", style="pytorch")
    heads = cascade["roi_head"]["bbox_head"]
    assert [h["type"] for h in heads] == ["ConvFCBBoxHead"] * 3
    assert [h["bbox_coder"]["target_stds"] for h in heads] == [list(s) for s in oracle._CASCADE_STDS]
    assert not heads[0]["reg_class_agnostic"] and heads[0]["reg_decoded_bbox"]
    sparse = oracle.official_config("sparse_rcnn")
    assert sparse["num_proposals"] == 300 and sparse["model"]["test_cfg"]["rcnn"]["max_per_img"] == 300
    assert sparse["model"]["neck"]["num_outs"] == 4 and sparse["model"]["neck"]["start_level"] == 0
    assert sparse["model"]["roi_head"]["bbox_head"][0]["bbox_coder"]["clip_border"] is False
    assert sparse["optimizer"]["lr"] == 0.000025 / 1.4
    mask = oracle.official_config("mask_rcnn", num_classes=3)["model"]
    assert mask["roi_head"]["bbox_head"]["num_classes"] == 3 and mask["roi_head"]["mask_head"]["num_classes"] == 3
    seg = oracle.official_seg_config()
    assert seg["model"]["decode_head"]["num_classes"] == 150 and seg["model"]["neck"]["in_channels"] == [
        64, 128, 320, 512]
    assert seg["test_pipeline"][1]["transforms"][0] == dict(type="AlignResize", keep_ratio=True, size_divisor=32)
    assert seg["runner"]["max_iters"] == 40000 and seg["optimizer"]["lr"] == 0.0002
    namespace: dict[str, Any] = {}
    exec(oracle.official_seg_config_text(), {}, namespace)
    assert namespace == seg


# ----------------------------------------------------------------------------------------------------------------
# Backbone layout
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2", "pvt_tiny", "pvt_small"])
def test_backbone_layout_inverts_pvt_convert(name: str) -> None:
    oracle._import_mmdet()
    from mmdet.models.backbones.pvt import pvt_convert
    from mmdet.registry import MODELS

    import pvtv2

    bb = oracle.BACKBONES[name]
    backbone = MODELS.build(oracle._mmdet3_backbone(bb))
    oracle._randomize(backbone, seed=1)
    state = backbone.state_dict()
    official = oracle.backbone_to_official(state, bb.version, torch.ones(1, 1, bb.channels[-1]))
    back = pvt_convert(official)
    assert list(back) == list(state) if bb.version == 2 else set(back) == set(state)
    for k, v in state.items():
        assert torch.equal(back[k].reshape(v.shape), v), k
    # our package's names and shapes (its classification model: minus the head, and for PVTv1 minus the
    # cls_token and final norm the official detection/segmentation backbones do not have)
    ours = {k: v.shape for k, v in pvtv2.create_model(name).state_dict().items()
            if not k.startswith("head.") and k != "cls_token" and not k.startswith("norm.")}
    assert {k: v.shape for k, v in official.items()} == ours  # (the order is the official modules')
    if bb.version == 1:
        assert official["pos_embed4"].shape[1] == 50 and torch.equal(official["pos_embed4"][:, 0],
                                                                      torch.ones(1, bb.channels[-1]))


def test_official_eps() -> None:
    oracle._import_mmdet()
    from mmdet.registry import MODELS

    backbone = MODELS.build(oracle._mmdet3_backbone(oracle.BACKBONES["pvt_v2_b0"]))
    oracle._set_official_eps(backbone)
    eps = {n: m.eps for n, m in backbone.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps["layers.0.0.norm"] == 1e-5 and eps["layers.0.1.0.attn.norm"] == 1e-5
    assert eps["layers.3.0.norm"] == 1e-5 and "layers.3.1.0.attn.norm" not in eps  # sr_ratio 1: no sr norm
    assert eps["layers.0.1.0.norm1"] == eps["layers.0.1.0.norm2"] == eps["layers.0.2"] == 1e-6


# ----------------------------------------------------------------------------------------------------------------
# Photos, comparison
# ----------------------------------------------------------------------------------------------------------------

def test_test_photo() -> None:
    small = oracle.test_photo()
    assert small.shape == (427, 640, 3) and small.dtype == np.uint8
    big = oracle.test_photo((800, 1216))
    assert big.shape == (800, 1216, 3) and big.dtype == np.uint8
    import mmcv

    # MMDetection's test Resize keeps it as it is
    assert np.array_equal(mmcv.imrescale(big[..., ::-1], (1333, 800), interpolation="bilinear"), big[..., ::-1])


def _fake(n: int, seed: int, masks: bool = False) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 300, (n, 2))
    out: dict[str, Any] = dict(boxes=np.concatenate([xy, xy + rng.uniform(10, 80, (n, 2))], 1).astype(np.float32),
                               scores=rng.uniform(0.0, 1.0, n).astype(np.float32), labels=rng.integers(0, 5, n))
    if masks:
        out["masks"] = rng.uniform(size=(n, 40, 50)) > 0.5
    return out


def test_compare_detections() -> None:
    theirs = _fake(150, 0, masks=True)
    same = oracle.compare_detections(theirs, theirs)
    assert same.matched == 1.0 and same.n_top == 100 and same.count_close
    ours = {k: v.copy() for k, v in theirs.items()}
    top = np.argsort(-theirs["scores"])[:100]
    ours["scores"][top[:3]] += 0.02  # score off
    ours["labels"][top[3]] += 1  # class off
    ours["boxes"][top[4], 2] += 30  # box off
    ours["masks"][top[5]] = ~ours["masks"][top[5]]  # mask off
    perm = np.random.default_rng(1).permutation(150)  # order does not matter
    ours = {k: v[perm] for k, v in ours.items()}
    report = oracle.compare_detections(ours, theirs)
    assert report.n_matched == 94 and report.matched == 0.94
    assert sorted(u["index"] for u in report.unmatched) == sorted(top[:6].tolist())
    assert "94/100" in str(report)


# ----------------------------------------------------------------------------------------------------------------
# Detectors (slow)
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=sorted(oracle.DETECTORS))
def detector(request: pytest.FixtureRequest, released, one_thread: None) -> Iterator[dict[str, Any]]:
    """The session's model of each release (the release tests' too): B2 releases on B0 unless
    PVT_ORACLE_BACKBONE=pvt_v2_b2, which builds the released backbone."""
    release = oracle.DETECTORS[request.param]
    backbone = release.backbone if release.backbone != "pvt_v2_b2" else RELEASED_B2
    made = released(release.kind, backbone)
    names = list(oracle.PHOTO_SIZES)
    yield dict(kind=release.kind, backbone=backbone, model=made.model, photo=made.photo(names[0]),
               photos=[made.photo(n) for n in names], detections=[made.detections(n) for n in names])


@pytest.mark.slow
def test_detector_detects(detector: dict[str, Any]) -> None:
    counts = []
    for photo, d in zip(detector["photos"], detector["detections"]):
        scores, boxes = d["scores"], d["boxes"]
        n_above = int((scores > oracle.SCORE_THR).sum())
        counts.append(n_above)
        print(detector["kind"], detector["backbone"], photo.shape[:2], "above 0.05:", n_above, "of", len(scores))
        assert 50 <= n_above < 100
        top = np.sort(scores)[::-1][:n_above]
        assert top.std() > 0.02 and len(np.unique(np.round(top, 3))) > 20  # varied scores
        assert len(np.unique(d["labels"][scores > oracle.SCORE_THR])) >= 3
        assert np.all(boxes[:, 2:] > boxes[:, :2])  # non-degenerate
        assert d["labels"].min() >= 0 and d["labels"].max() < 80
        h, w = photo.shape[:2]
        assert d["clips"] == (detector["kind"] != "sparse_rcnn")
        c = d["boxes_clipped"]
        assert c[:, 0::2].min() >= 0 and c[:, 0::2].max() <= w and c[:, 1::2].max() <= h
        if d["clips"]:
            np.testing.assert_array_equal(c, boxes)
        if detector["kind"] in oracle.MASK_KINDS:
            masks = d["masks"]
            assert masks.shape == (len(scores), h, w) and masks.dtype == bool
            assert (masks.reshape(len(masks), -1).sum(1) > 0).mean() > 0.9
        else:
            assert "masks" not in d
    assert abs(math.sqrt(counts[0] * counts[1]) - oracle.TARGET_DETECTIONS) <= oracle.CALIBRATION_TOLERANCE
    d = detector["detections"][0]
    again = oracle.mmdet_detect(detector["model"], detector["photo"])
    for key in d:
        np.testing.assert_array_equal(again[key], d[key])
    assert oracle.compare_detections(d, again).matched == 1.0


@pytest.mark.slow
def test_detector_release_file(detector: dict[str, Any], tmp_path: Path) -> None:
    from mmdet.models.backbones.pvt import pvt_convert

    kind, backbone, model = detector["kind"], detector["backbone"], detector["model"]
    path = oracle.release_checkpoint(model, kind, backbone, tmp_path / "release.pth")
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"meta", "state_dict"}
    meta = ckpt["meta"]
    assert meta["mmdet_version"] == "2.13.0"
    assert meta["CLASSES"] == oracle.coco_classes() and len(meta["CLASSES"]) == 80
    assert meta["CLASSES"][:3] == ("person", "bicycle", "car") and meta["CLASSES"][-1] == "toothbrush"
    assert meta["config"] == oracle.official_config_text(kind, backbone)
    state = ckpt["state_dict"]
    ours = model.state_dict()
    official = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    assert "patch_embed1.proj.weight" in official and "block1.0.attn.q.weight" in official
    assert not any(k.startswith(("cls_token", "norm.", "layers.")) for k in official)
    converted = pvt_convert(official)
    mine = {k[len("backbone."):]: v for k, v in ours.items() if k.startswith("backbone.")}
    assert set(converted) == set(mine)
    for k, v in mine.items():
        assert torch.equal(converted[k].reshape(v.shape), v), k
    rest = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    assert set(rest) == {k for k in ours if not k.startswith("backbone.")}  # 2.13 names = 3.3 names here
    for k, v in rest.items():
        assert torch.equal(v, ours[k]), k
    # the file's weights load back into an MMDetection 3.3 model (after pvt_convert) and detect the same
    model.load_state_dict({**rest, **{"backbone." + k: v.reshape(mine[k].shape) for k, v in converted.items()}})
    assert oracle.compare_detections(oracle.mmdet_detect(model, detector["photo"]),
                                     detector["detections"][0]).matched == 1.0


@pytest.mark.slow
def test_build_is_deterministic(released) -> None:
    a = released("retinanet", "pvt_v2_b0").model.state_dict()  # the session's, built with seed 0
    b = oracle.build_mmdet_model("retinanet", "pvt_v2_b0", seed=0).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_random_weights_depend_on_the_seed() -> None:
    oracle._import_mmdet()
    from mmdet.registry import MODELS

    def weights(seed: int) -> dict[str, torch.Tensor]:
        backbone = MODELS.build(oracle._mmdet3_backbone(oracle.BACKBONES["pvt_v2_b0"]))
        oracle._randomize(backbone, seed)
        return backbone.state_dict()

    a, b, c = weights(3), weights(3), weights(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    # every parameter random: norms are not identities, biases not zero
    assert a["layers.0.1.0.norm1.weight"].std() > 0.05 and a["layers.0.1.0.attn.attn.in_proj_bias"].abs().min() > 0


# ----------------------------------------------------------------------------------------------------------------
# Semantic FPN (slow)
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def segmentor(one_thread: None) -> dict[str, Any]:
    model = oracle.build_mmseg_semantic_fpn("pvt_tiny")
    photo = oracle.test_photo()
    labels, logits = oracle.mmseg_segment(model, photo, return_logits=True)
    return dict(model=model, photo=photo, labels=labels, logits=logits)


@pytest.mark.slow
def test_segmentor_segments(segmentor: dict[str, Any]) -> None:
    labels, photo = segmentor["labels"], segmentor["photo"]
    assert labels.shape == photo.shape[:2] and labels.dtype == np.int64
    assert len(np.unique(labels)) >= 10
    assert np.bincount(labels.ravel()).max() < 0.5 * labels.size
    np.testing.assert_array_equal(oracle.mmseg_segment(segmentor["model"], photo), labels)
    np.testing.assert_array_equal(segmentor["logits"].argmax(0), labels)


@pytest.mark.slow
def test_segmentor_follows_the_official_test_path(segmentor: dict[str, Any]) -> None:
    """AlignResize to 512x768, logits at stride 4 resized to the input, then to the photo; arg-max."""
    import mmcv

    model, photo = segmentor["model"], segmentor["photo"]
    bgr = photo[..., ::-1]
    img = mmcv.imresize(mmcv.imrescale(bgr, (2048, 512)), (768, 512))
    x = torch.from_numpy(img[..., ::-1].astype(np.float32)).permute(2, 0, 1)[None]
    x = (x - torch.tensor(oracle.COCO_MEAN).view(1, 3, 1, 1)) / torch.tensor(oracle.COCO_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model.decode_head(model.extract_feat(x))
        assert logits.shape[-2:] == (128, 192)
        logits = torch.nn.functional.interpolate(logits, (512, 768), mode="bilinear", align_corners=False)
        logits = torch.nn.functional.interpolate(logits, photo.shape[:2], mode="bilinear", align_corners=False)
    np.testing.assert_allclose(logits[0].numpy(), segmentor["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_segmentation_release_file(segmentor: dict[str, Any], tmp_path: Path) -> None:
    from mmdet.models.backbones.pvt import pvt_convert

    model = segmentor["model"]
    path = oracle.release_segmentation_checkpoint(model, "pvt_tiny", tmp_path / "fpn.pth")
    ckpt = torch.load(path, weights_only=True)
    meta, state = ckpt["meta"], ckpt["state_dict"]
    classes, palette = oracle.ade20k_classes_and_palette()
    assert meta["mmseg_version"] == "0.13.0" and meta["CLASSES"] == classes and len(classes) == 150
    assert meta["PALETTE"] == palette and len(palette) == 150 and meta["CLASSES"][0] == "wall"
    assert meta["config"] == oracle.official_seg_config_text("pvt_tiny")
    official = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    assert official["pos_embed4"].shape == (1, 50, 512)
    assert "cls_token" not in official and "norm.weight" not in official
    converted = pvt_convert(official)
    ours = model.state_dict()
    for k, v in converted.items():
        assert torch.equal(v.reshape(ours["backbone." + k].shape), ours["backbone." + k]), k
    assert len(converted) == sum(k.startswith("backbone.") for k in ours)
    rest = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    assert set(rest) == {k for k in ours if not k.startswith("backbone.")}
    assert "decode_head.conv_seg.weight" in rest and "decode_head.scale_heads.0.0.bn.running_var" in rest
