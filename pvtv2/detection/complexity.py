"""Parameters and FLOPs of the paper's detectors, beside Table 3's parameter counts (``pvt table --task detection``).

Parameters are those of the full detector for COCO's 80 classes; each must be within 3% of the paper's.
FLOPs follow MMDetection's ``get_flops.py`` (the mmcv counting convention of
:mod:`pvtv2.models.complexity`) at 1280x800: the backbone, FPN and dense head on the whole image, and for
Mask R-CNN the box head on 1,000 RoIs and the mask head on 100, as MMDetection's dummy forward runs them
(RoIAlign, anchors and NMS are not counted). The paper gives no FLOPs for these two detectors.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import RetinaNet

from ..engine.text_table import format_table
from ..models import reference
from ..models.complexity import count_flops, count_params
from .model import DETECTORS, build_detector

INPUT_SIZE = (800, 1280)  # (H, W): the "1280 x 800" of the paper's detection tables
COCO_CLASSES = 80
PARAMS_REL_TOL = 0.03
BOX_ROIS, MASK_ROIS = 1000, 100  # as MMDetection's forward_dummy of two-stage detectors
PAPER_COLUMN = {"retinanet": "retinanet_params_M", "mask_rcnn": "maskrcnn_params_M"}


class DenseForward(nn.Module):
    """What MMDetection's FLOP count runs of a detector: backbone, neck and heads, without the
    pre-processing, anchors, sampling and NMS, which have no FLOPs in the mmcv convention."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.in_chans = 3

    def forward(self, images: torch.Tensor) -> None:
        detector = self.detector
        features = list(detector.backbone(images).values())
        if isinstance(detector, RetinaNet):
            detector.head(features)
            return
        detector.rpn.head(features)
        channels = detector.backbone.out_channels
        heads = detector.roi_heads
        heads.box_predictor(heads.box_head(images.new_zeros(BOX_ROIS, channels, 7, 7)))
        heads.mask_predictor(heads.mask_head(images.new_zeros(MASK_ROIS, channels, 14, 14)))


def complexity_rows(names: list[str], with_flops: bool = True) -> list[dict[str, Any]]:
    """One row per (backbone, detector): params and GFLOPs at 1280x800 (None without ``with_flops``), the
    paper's params, the difference."""
    paper = reference.published(reference.COCO)
    rows = []
    for name in names:
        for kind in DETECTORS:
            with torch.device("meta"):  # shapes only: every detector builds in a blink and counts without memory
                detector = build_detector(kind, name, num_classes=COCO_CLASSES)
            params = count_params(detector)
            flops = count_flops(DenseForward(detector), INPUT_SIZE) if with_flops else None
            published = paper.get(name, {}).get(PAPER_COLUMN[kind])
            diff = None if published is None else 100 * (params / 1e6 / published - 1)
            rows.append(dict(
                backbone=name, detector=kind, params=params, params_M=params / 1e6, params_M_paper=published,
                params_diff_pct=None if diff is None else round(diff, 3),
                params_ok=None if published is None else abs(diff) <= 100 * PARAMS_REL_TOL,
                GFLOPs=None if flops is None else flops / 1e9,
            ))
    return rows


def print_table(names: list[str], as_json: bool) -> int:
    """Print the rows of :func:`complexity_rows` (as text or JSON); 0 if every count with a paper figure is
    within 3% of it, else 1."""
    rows = complexity_rows(names)
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        text_rows = [dict(
            backbone=r["backbone"], detector=r["detector"], params=f"{r['params_M']:.2f}", paper=r["params_M_paper"],
            diff="" if r["params_diff_pct"] is None else f"{round(r['params_diff_pct'], 1) + 0.0:+.1f}%",
            flops=f"{r['GFLOPs']:.1f}", ok={True: "yes", False: "NO", None: ""}[r["params_ok"]],
        ) for r in rows]
        headers = dict(backbone="backbone", detector="detector", params="params (M)", paper="paper (M)", diff="diff",
                       flops="GFLOPs 1280x800", ok="within 3%")
        print(format_table(text_rows, headers, left=("backbone", "detector")))
        print("\nParams: the whole detector for 80 classes vs the paper's Table 3. GFLOPs: backbone, FPN and heads as "
              "MMDetection's get_flops counts them\n(box head on 1,000 RoIs, mask head on 100); the paper gives none "
              "for these detectors.")
    return 0 if all(r["params_ok"] is not False for r in rows) else 1
