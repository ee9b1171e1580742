"""Sparse R-CNN release files (MMDetection 2.13 layout) against MMDetection 3.3 itself (tests/oracle.py): the
official config's model with random weights, written as a release file, gives MMDetection's detections through
``pvt det-predict --json`` on a photo the pipeline keeps (800x1216) and on one it resizes; the file's weights go
through our layout and back unchanged and load strictly into MMDetection's model; MMDetection's box decoding.

The release model is the official B2 config's head on PVTv2-B0 (the same head and FPN, a few times faster);
``PVT_ORACLE_BACKBONE=pvt_v2_b2`` runs the released backbone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pvtv2.cli.main import main
from pvtv2.detection import build_detector
from pvtv2.detection.boxes import DeltaXYWHCoder
from pvtv2.detection.registry import detector_spec
from pvtv2.detection.release import from_release, to_release
from pvtv2.detection.query.sparse_rcnn import BOX_STDS
from pvtv2.engine.release import ReleaseFileError, read_release
from tests import oracle

pytest.importorskip("mmdet", reason="the oracle needs MMDetection 3.3 (the test extra)")

BACKBONE = os.environ.get("PVT_ORACLE_BACKBONE", "pvt_v2_b0")
SCORE_THRESHOLD = 0.05  # det-predict's, as the Done-when runs it
SPEC = detector_spec("sparse_rcnn")


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """The models are large for the CPU: one torch thread (the machine is shared)."""


@pytest.fixture(scope="module")
def sparse(released) -> oracle.Released:
    """MMDetection's Sparse R-CNN of the official config (random weights calibrated to ~75 detections above
    0.05), its release-layout file and its detections."""
    return released("sparse_rcnn", BACKBONE)


def _det_predict(path: Path, image: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """``pvt det-predict IMAGE --checkpoint FILE --score-threshold 0.05 --json``'s detections as arrays, labels
    0..K-1 as MMDetection's."""
    photo = tmp_path / "photo.png"
    Image.fromarray(image).save(photo)
    capsys.readouterr()
    assert main(["det-predict", str(photo), "--checkpoint", str(path), "--out", str(tmp_path / "drawing.png"),
                 "--score-threshold", str(SCORE_THRESHOLD), "--json", "--device", "cpu"]) == 0
    detections = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["detections"]
    classes = oracle.coco_classes()
    return dict(boxes=np.array([d["box"] for d in detections], dtype=np.float64).reshape(-1, 4),
                scores=np.array([d["score"] for d in detections]),
                labels=np.array([classes.index(d["label"]) for d in detections], dtype=np.int64))


def _compare(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[float, oracle.DetectionComparison, int, float]:
    """The Done-when comparison against MMDetection's boxes clipped to the image (ours are; MMDetection's Sparse
    R-CNN does not clip), of MMDetection's detections at det-predict's threshold (it keeps all 300 pairs, ours
    only those det-predict prints). A box wholly outside the image clips to a line of zero area, which IoU
    cannot compare: such a box is matched by one of ours of the same class, score within 0.01 and corners within
    half a pixel. Returns the matched fraction, the comparison of the other boxes, the lines and the largest
    corner difference of the lines' matches."""
    kept = theirs["scores"] >= SCORE_THRESHOLD
    boxes = theirs["boxes_clipped"][kept]
    line = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) <= 0
    areas = {k: theirs[k][kept][~line] for k in ("boxes_clipped", "scores", "labels")}
    comparison = oracle.compare_detections(ours, areas, box_key="boxes_clipped")
    lines_matched, worst = 0, 0.0
    for box, score, label in zip(boxes[line], theirs["scores"][kept][line], theirs["labels"][kept][line]):
        same = (ours["labels"] == label) & (np.abs(ours["scores"] - score) <= 0.01)
        corners = np.abs(ours["boxes"][same] - box).max(1) if same.any() else np.array([np.inf])
        worst = max(worst, float(corners.min()))
        lines_matched += bool(corners.min() <= 0.5)
    matched = (comparison.n_matched + lines_matched) / max(comparison.n_top + int(line.sum()), 1)
    return matched, comparison, int(line.sum()), worst


@pytest.mark.slow
@pytest.mark.parametrize("photo", oracle.PHOTO_SIZES)
def test_det_predict_gives_mmdetections_detections(sparse: oracle.Released, photo: str,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Of MMDetection's top 100 (above 0.05): >= 95% matched by class, box IoU >= 0.98 and score within 0.01;
    the counts above 0.05 within 5%; 50-100 of them, so that the comparison means something."""
    image, theirs = sparse.photo(photo), sparse.detections(photo)
    ours = _det_predict(sparse.path, image, tmp_path, capsys)
    matched, comparison, lines, worst = _compare(ours, theirs)
    count_theirs = int((theirs["scores"] > SCORE_THRESHOLD).sum())
    assert 50 <= count_theirs <= 100
    assert abs(int((ours["scores"] > SCORE_THRESHOLD).sum()) - count_theirs) <= 0.05 * count_theirs
    assert matched >= 0.95, f"{comparison}; {lines} boxes outside the image, worst corner {worst:.3f}; " \
                            f"unmatched {comparison.unmatched[:3]}"
    # Our boxes lie within the image (clipped, as every detector's here).
    height, width = image.shape[:2]
    assert (ours["boxes"] >= 0).all() and (ours["boxes"][:, 0::2] <= width).all() and (ours["boxes"][:, 1::2] <= height).all()


@pytest.mark.slow
def test_release_file_round_trips_and_loads_strictly_into_mmdetection(sparse: oracle.Released) -> None:
    """Release file -> our detector's state dict -> release layout: the same keys and tensors; those outside
    the backbone load with strict keys into MMDetection's model (its backbone keys are its own); the test
    settings are the official config's."""
    model, path = sparse.model, sparse.path
    release = from_release(read_release(path))
    assert (release.spec.name, release.backbone, release.class_names) == ("sparse_rcnn", BACKBONE, oracle.coco_classes())
    assert release.test_options == dict(num_proposals=300, num_stages=6, detections_per_img=300, num_heads=8,
                                        ffn_channels=2048, dynamic_channels=64)
    written = to_release(release.state_dict, SPEC, 80)
    original = torch.load(path, weights_only=True)["state_dict"]
    assert written.keys() == original.keys()
    assert all(torch.equal(written[k], original[k]) for k in original)
    mmdet_state = model.state_dict()
    heads = {k: v for k, v in written.items() if not k.startswith("backbone.")}
    model.load_state_dict({**{k: v for k, v in mmdet_state.items() if k.startswith("backbone.")}, **heads}, strict=True)


def test_head_names_both_ways_and_an_unknown_key() -> None:
    """Our stage names <-> DIIHead's, every key, and back; a key of neither layout is named."""
    with torch.device("meta"):
        state = build_detector("sparse_rcnn", "pvt_v2_b0", num_classes=3, num_proposals=5, num_stages=2).state_dict()
    head = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    release = SPEC.release.head_to_release(head, 3)
    assert "roi_head.bbox_head.1.instance_interactive_conv.dynamic_layer.weight" in release
    assert {"rpn_head.init_proposal_bboxes.weight", "roi_head.bbox_head.0.ffn.layers.0.0.weight",
            "roi_head.bbox_head.0.ffn.layers.1.bias", "roi_head.bbox_head.0.attention.attn.in_proj_weight",
            "roi_head.bbox_head.0.fc_cls.weight", "roi_head.bbox_head.0.reg_fcs.7.weight"} <= release.keys()
    assert SPEC.release.head_to_ours(release, 3).keys() == head.keys()
    assert SPEC.release.num_classes(release) == 3 and SPEC.release.recognise(list(release))
    with pytest.raises(ReleaseFileError, match=r"roi_head\.bbox_head\.0\.mask_head\.weight is not a weight"):
        SPEC.release.head_to_ours({**release, "roi_head.bbox_head.0.mask_head.weight": torch.zeros(1)}, 3)


def test_box_decoding_is_mmdetections() -> None:
    """Our coder decodes as MMDetection's DeltaXYWHBBoxCoder (Sparse R-CNN's stds, no clipping), with size
    deltas beyond +-log(1000/16) on both sides clamped as there."""
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder

    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand(200, 2, generator=generator) * 500
    boxes = torch.cat([boxes, boxes + 1 + torch.rand(200, 2, generator=generator) * 300], 1)
    deltas = torch.randn(200, 4, generator=generator) * 6  # many beyond the clamp, both ways
    theirs = DeltaXYWHBBoxCoder(target_means=[0.0] * 4, target_stds=list(BOX_STDS), clip_border=False).decode(boxes, deltas)
    torch.testing.assert_close(DeltaXYWHCoder(BOX_STDS).decode_single(deltas, boxes), theirs, rtol=1e-5, atol=1e-3)
