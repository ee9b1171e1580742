"""Parameters and FLOPs of the paper's detectors, beside Table 3's parameter counts and Table 4's parameters
and GFLOPs (``pvt table --task detection``).

Parameters are those of the full detector for COCO's 80 classes; RetinaNet's and Mask R-CNN's must be
within 3% of Table 3's, ATSS's, GFL's and Cascade Mask R-CNN's within 1% of Table 4's (or of its rounding:
it prints whole millions) or of the official tool's count where we have it. FLOPs follow MMDetection's
``get_flops.py`` (the mmcv counting convention of :mod:`pvtv2.models.complexity`) at 1280x800: the
backbone, FPN and dense head on the whole image, and for Mask R-CNN the box head on 1,000 RoIs and the mask
head on 100, as MMDetection's dummy forward runs them, and for Cascade Mask R-CNN each of the three
stages' box and mask heads on those RoIs, and for Sparse R-CNN its six stages on its 300 proposals (RoIAlign,
anchors and NMS are not counted, nor, as in mmcv, the dynamic convolution's two batched matmuls and the
self-attention, which are not modules it hooks). The paper gives no
FLOPs for RetinaNet and Mask R-CNN; Table 4's GFLOPs must match within 1% too.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from ..engine.text_table import format_table
from ..models import reference
from ..models.complexity import count_flops, count_params
from .model import build_detector
from .registry import DETECTORS
from .spec import DetectorSpec

INPUT_SIZE = (800, 1280)  # (H, W): the "1280 x 800" of the paper's detection tables
COCO_CLASSES = 80
PARAMS_REL_TOL = 0.03
# Table 3's detectors (a params column of each backbone's row) and Table 4's (a row per detector and backbone).
PAPER_COLUMN = {name: spec.paper[1] for name, spec in DETECTORS.items() if spec.paper[0] == 3}
TABLE4_DETECTORS = tuple(name for name, spec in DETECTORS.items() if spec.paper[0] == 4)
TABLE4_REL_TOL = 0.01
# The official tool's count (MMDetection's get_flops.py on the official config) where it is known more
# precisely than Table 4's whole millions.
OFFICIAL_PARAMS_M = {"gfl/pvt_v2_b2": 33.11}


class DenseForward(nn.Module):
    """What MMDetection's FLOP count runs of a detector (its spec's ``flops_forward``): backbone, neck and
    heads, without the pre-processing, anchors, sampling and NMS, which have no FLOPs in the mmcv convention."""

    def __init__(self, detector: nn.Module, spec: DetectorSpec) -> None:
        super().__init__()
        self.detector = detector
        self.spec = spec
        self.in_chans = 3

    def forward(self, images: torch.Tensor) -> None:
        self.spec.flops_forward(self.detector, images)


def complexity_rows(names: list[str], with_flops: bool = True) -> list[dict[str, Any]]:
    """One row per (backbone, detector): params and GFLOPs at 1280x800 (None without ``with_flops``), the
    paper's params, the difference."""
    paper = reference.published(reference.COCO)
    rows = []
    for name in names:
        for kind in PAPER_COLUMN:
            with torch.device("meta"):  # shapes only: every detector builds in a blink and counts without memory
                detector = build_detector(kind, name, num_classes=COCO_CLASSES)
            params = count_params(detector)
            flops = count_flops(DenseForward(detector, DETECTORS[kind]), INPUT_SIZE) if with_flops else None
            published = paper.get(name, {}).get(PAPER_COLUMN[kind])
            diff = None if published is None else 100 * (params / 1e6 / published - 1)
            rows.append(dict(
                backbone=name, detector=kind, params=params, params_M=params / 1e6, params_M_paper=published,
                params_diff_pct=None if diff is None else round(diff, 3),
                params_ok=None if published is None else abs(diff) <= 100 * PARAMS_REL_TOL,
                GFLOPs=None if flops is None else flops / 1e9,
            ))
    return rows


def table4_rows(names: list[str], with_flops: bool = True) -> list[dict[str, Any]]:
    """One row per (backbone, detector) of Table 4's ATSS and GFL among ``names``: params and GFLOPs at
    1280x800 (None without ``with_flops``) beside Table 4's, and whether each is within 1% (or rounding)."""
    paper = reference.published(reference.COCO_DETECTORS)
    rows = []
    for name in names:
        for kind in TABLE4_DETECTORS:
            key = f"{kind}/{name}"
            if key not in paper:
                continue
            with torch.device("meta"):
                detector = build_detector(kind, name, num_classes=COCO_CLASSES)
            params_M = count_params(detector) / 1e6
            flops = count_flops(DenseForward(detector, DETECTORS[kind]), INPUT_SIZE) / 1e9 if with_flops else None
            published_params = OFFICIAL_PARAMS_M.get(key, paper[key]["params_M"])
            rows.append(dict(
                backbone=name, detector=kind, params=round(params_M * 1e6), params_M=params_M,
                params_M_paper=paper[key]["params_M"], params_M_official=OFFICIAL_PARAMS_M.get(key),
                params_diff_pct=round(100 * (params_M / published_params - 1), 3),
                params_ok=reference.matches(params_M, published_params, TABLE4_REL_TOL),
                GFLOPs=flops, GFLOPs_paper=paper[key]["GFLOPs"],
                GFLOPs_diff_pct=None if flops is None else round(100 * (flops / paper[key]["GFLOPs"] - 1), 3),
                GFLOPs_ok=None if flops is None else reference.matches(flops, paper[key]["GFLOPs"], TABLE4_REL_TOL),
                APb_paper=paper[key]["APb"],
            ))
    return rows


def print_table(names: list[str], as_json: bool) -> int:
    """Print the rows of :func:`complexity_rows` (Table 3's detectors) and of :func:`table4_rows` (as text, or
    JSON with ``table`` 3 or 4 in each row); 0 if every count is within its tolerance of the published one, else 1."""
    rows, rows4 = complexity_rows(names), table4_rows(names)
    ok = all(r["params_ok"] is not False for r in rows) and all(r["params_ok"] and r["GFLOPs_ok"] for r in rows4)
    if as_json:
        print(json.dumps([dict(r, table=3) for r in rows] + [dict(r, table=4) for r in rows4], indent=1))
        return 0 if ok else 1
    text_rows = [dict(
        backbone=r["backbone"], detector=r["detector"], params=f"{r['params_M']:.2f}", paper=r["params_M_paper"],
        diff="" if r["params_diff_pct"] is None else _percent(r["params_diff_pct"]),
        flops=f"{r['GFLOPs']:.1f}", ok={True: "yes", False: "NO", None: ""}[r["params_ok"]],
    ) for r in rows]
    headers = dict(backbone="backbone", detector="detector", params="params (M)", paper="paper (M)", diff="diff",
                   flops="GFLOPs 1280x800", ok="within 3%")
    print(format_table(text_rows, headers, left=("backbone", "detector")))
    print("\nParams: the whole detector for 80 classes vs the paper's Table 3. GFLOPs: backbone, FPN and heads as "
          "MMDetection's get_flops counts them\n(box head on 1,000 RoIs, mask head on 100); the paper gives none "
          "for these detectors.")
    if rows4:
        text_rows4 = [dict(
            backbone=r["backbone"], detector=r["detector"], params=f"{r['params_M']:.2f}",
            paper=f"{r['params_M_paper']}" + (f" ({r['params_M_official']} official)" if r["params_M_official"] else ""),
            diff=_percent(r["params_diff_pct"]), flops=f"{r['GFLOPs']:.1f}", flops_paper=r["GFLOPs_paper"],
            flops_diff=_percent(r["GFLOPs_diff_pct"]), ok="yes" if r["params_ok"] and r["GFLOPs_ok"] else "NO",
        ) for r in rows4]
        headers4 = dict(backbone="backbone", detector="detector", params="params (M)", paper="paper (M)", diff="diff",
                        flops="GFLOPs 1280x800", flops_paper="paper", flops_diff="diff", ok="within 1%")
        print("\n" + format_table(text_rows4, headers4, left=("backbone", "detector", "paper")))
        print("\nTable 4 (3x schedule): params and GFLOPs vs the paper's, which prints whole millions and GFLOPs; "
              "within 1% or that rounding.\nGFL-B2's params are compared with the official tool's 33.11 M. "
              "Cascade Mask R-CNN's GFLOPs: each of its 3 stages' box head on 1,000 RoIs and mask head on 100.")
    return 0 if ok else 1


def _percent(value: float) -> str:
    # Adding 0.0 turns a rounded -0.0 into 0.0, so a tiny negative difference prints as +0.0%.
    return f"{round(value, 1) + 0.0:+.1f}%"
