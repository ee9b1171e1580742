"""The detection tests' shared sizes and checks: tiny models of every detector for the generated 64-pixel
scenes (the ``shapes`` fixture), their training configs, and a strict save/load round trip."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pvtv2.detection import build_detector
from pvtv2.detection.config import DetectionConfig

SCENE_SIZE = 64  # the generated scenes' side, and the tiny detectors' test scale
# The paper's structure, narrow layers: each detector's build keywords for the 64-pixel scenes (ATSS's and GFL's
# 32 FPN channels are their GroupNorm's 32 groups; Sparse R-CNN's 16 a multiple of its 8 heads).
TINY: dict[str, dict[str, Any]] = {
    "retinanet": dict(fpn_channels=32, anchor_sizes=(8, 16, 32, 64, 128)),
    "mask_rcnn": dict(fpn_channels=32, box_head_channels=64, mask_head_channels=32, anchor_sizes=(8, 16, 32, 64, 128),
                      box_batch_size_per_image=32, rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=50),
    "atss": dict(fpn_channels=32, anchor_sizes=(16, 32, 64, 128, 256)),
    "gfl": dict(fpn_channels=32, anchor_sizes=(16, 32, 64, 128, 256)),
    "cascade_mask_rcnn": dict(fpn_channels=16, box_head_channels=32, mask_head_channels=16,
                              anchor_sizes=(8, 16, 32, 64, 128), box_batch_size_per_image=32,
                              rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=50),
    "sparse_rcnn": dict(fpn_channels=16, num_proposals=12, num_stages=2, detections_per_img=20),
}
# Build keywords that keep every detection at test, so that an untrained detector still outputs some.
KEEP_ALL: dict[str, dict[str, Any]] = {
    "retinanet": dict(score_thresh=0.0, detections_per_img=20),
    "mask_rcnn": dict(box_score_thresh=0.0, box_detections_per_img=20),
    "atss": dict(score_thresh=0.0, detections_per_img=20),
    "gfl": dict(score_thresh=0.0, detections_per_img=20),
    "cascade_mask_rcnn": dict(box_score_thresh=0.0, box_detections_per_img=20),
    "sparse_rcnn": {},
}


def tiny_detector(name: str, keep_all: bool = False, **kwargs: Any) -> torch.nn.Module:
    """Detector ``name`` with a PVTv2-B0 for 3 classes, sized for the 64-pixel scenes (:data:`TINY`)."""
    return build_detector(name, "pvt_v2_b0", num_classes=3, min_size=SCENE_SIZE, max_size=SCENE_SIZE,
                          **{**TINY[name], **(KEEP_ALL[name] if keep_all else {}), **kwargs})


def tiny_config(name: str, root: Path, output_dir: Path, **optim: Any) -> DetectionConfig:
    """A one-epoch det-train config of the tiny detector ``name`` on the scenes at ``root``."""
    model = {key: list(value) if isinstance(value, tuple) else value for key, value in TINY[name].items()
             if key != "num_stages"}
    return DetectionConfig.from_dict(dict(
        model=dict(detector=name, backbone="pvt_v2_b0", drop_path_rate=0.0, **model),
        data=dict(dataset="coco", root=str(root), train_split="train", val_split="val",
                  train_min_size=[SCENE_SIZE, SCENE_SIZE], min_size=SCENE_SIZE, max_size=SCENE_SIZE, num_workers=0),
        optim={**dict(epochs=1, batch_size=4, lr=1e-3, warmup_iters=2, lr_steps=[1, 2]), **optim},
        run=dict(output_dir=str(output_dir), device="cpu", seed=0),
    ))


def assert_loads_strictly(build: Callable[[], torch.nn.Module], images: list[torch.Tensor], path: Path) -> None:
    """A detector saved by ``build()`` loads into a fresh one (other weights) with strict=True and predicts
    the same on ``images``."""
    model = build().eval()
    torch.save(model.state_dict(), path)
    torch.manual_seed(1)  # the fresh one starts from other weights
    fresh = build().eval()
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    with torch.no_grad():
        ours, theirs = model(images), fresh(images)
    for a, b in zip(ours, theirs):
        assert len(a["boxes"]) > 0
        for key in a:
            torch.testing.assert_close(a[key], b[key])
