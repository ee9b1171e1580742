"""Parameters and FLOPs of the paper's detectors, beside Table 3's parameter counts and Table 4's parameters
and GFLOPs (``pvt table --task detection``).

Parameters are those of the full detector for COCO's 80 classes; RetinaNet's and Mask R-CNN's must be
within 3% of Table 3's, Table 4's detectors' within 1% of Table 4's or of the official tool's count where we
have it (or of the printed figure's rounding: Table 4 prints whole millions). FLOPs follow MMDetection's
``get_flops.py`` (the mmcv counting convention of :mod:`pvtv2.models.complexity`) at 1280x800: the
backbone, FPN and dense head on the whole image, and for Mask R-CNN the box head on 1,000 RoIs and the mask
head on 100, as MMDetection's dummy forward runs them, and for Cascade Mask R-CNN each of the three
stages' box and mask heads on those RoIs, and for Sparse R-CNN its six stages on its 300 proposals (RoIAlign,
anchors and NMS are not counted, nor, as in mmcv, the dynamic convolution's two batched matmuls and the
self-attention, which are not modules it hooks). The paper gives no
FLOPs for RetinaNet and Mask R-CNN; Table 4's GFLOPs must match within 1% too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..engine.paper_table import PaperRow, PaperTable
from ..models import reference
from ..models.complexity import count_flops, count_params
from .model import build_detector
from .registry import DETECTORS
from .spec import DetectorSpec

INPUT_SIZE = (800, 1280)  # (H, W): the "1280 x 800" of the paper's detection tables
COCO_CLASSES = 80
TABLE3_TOLERANCE = 0.03
# Table 3's detectors (a params column of each backbone's row) and Table 4's (a row per detector and backbone).
PAPER_COLUMN = {name: spec.paper[1] for name, spec in DETECTORS.items() if spec.paper[0] == 3}
TABLE4_DETECTORS = tuple(name for name, spec in DETECTORS.items() if spec.paper[0] == 4)
TABLE4_TOLERANCE = 0.01
# The official tool's count (MMDetection's get_flops.py on the official config) where it is known more
# precisely than Table 4's whole millions.
OFFICIAL_PARAMS_M = {"gfl/pvt_v2_b2": 33.11}
TABLE3_NOTE = ("Table 3: the whole detector for 80 classes vs the paper's params. GFLOPs at 1280x800: backbone, FPN "
               "and heads as MMDetection's get_flops counts them\n(box head on 1,000 RoIs, mask head on 100); the "
               "paper gives none for these detectors.")
TABLE4_NOTE = ("Table 4 (3x schedule): params and GFLOPs at 1280x800 vs the paper's, which prints whole millions and "
               "GFLOPs.\nGFL-B2's params are compared with the official tool's 33.11 M. Cascade Mask R-CNN's GFLOPs: "
               "each of its 3 stages' box head on 1,000 RoIs and mask head on 100.")


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


def table3_rows(names: Sequence[str], with_flops: bool = True) -> list[PaperRow]:
    """One row per (backbone, detector) of Table 3 (RetinaNet, Mask R-CNN): params beside the paper's, GFLOPs at
    1280x800 (not counted without ``with_flops``; the paper gives none)."""
    paper = reference.published(reference.COCO)
    rows = []
    for name in names:
        for kind in PAPER_COLUMN:
            params, flops = _count(kind, name, with_flops)
            rows.append(PaperRow(model=f"{kind}/{name}", params=params,
                                 paper_params_M=paper.get(name, {}).get(PAPER_COLUMN[kind]), flops=flops,
                                 paper_GFLOPs=None, tolerance=TABLE3_TOLERANCE))
    return rows


def table4_rows(names: Sequence[str], with_flops: bool = True) -> list[PaperRow]:
    """One row per (backbone, detector) of Table 4 (ATSS, GFL, Cascade Mask R-CNN, Sparse R-CNN) among ``names``:
    params and GFLOPs at 1280x800 (not counted without ``with_flops``) beside Table 4's."""
    paper = reference.published(reference.COCO_DETECTORS)
    rows = []
    for name in names:
        for kind in TABLE4_DETECTORS:
            key = f"{kind}/{name}"
            if key not in paper:
                continue
            params, flops = _count(kind, name, with_flops)
            rows.append(PaperRow(model=key, params=params, paper_params_M=paper[key]["params_M"], flops=flops,
                                 paper_GFLOPs=paper[key]["GFLOPs"], tolerance=TABLE4_TOLERANCE,
                                 official_params_M=OFFICIAL_PARAMS_M.get(key), extra={"APb_paper": paper[key]["APb"]}))
    return rows


def paper_tables(names: Sequence[str]) -> list[PaperTable]:
    """The detectors on the backbones among ``names`` beside Table 3 and Table 4 (when it lists any of them)."""
    tables = [PaperTable(3, table3_rows(names), TABLE3_NOTE)]
    rows4 = table4_rows(names)
    return tables + [PaperTable(4, rows4, TABLE4_NOTE)] if rows4 else tables


def _count(kind: str, backbone: str, with_flops: bool) -> tuple[int, int | None]:
    """(params, multiply-adds at 1280x800 or None) of detector ``kind`` on ``backbone`` for COCO's 80 classes."""
    with torch.device("meta"):  # shapes only: every detector builds in a blink and counts without memory
        detector = build_detector(kind, backbone, num_classes=COCO_CLASSES)
    flops = count_flops(DenseForward(detector, DETECTORS[kind]), INPUT_SIZE) if with_flops else None
    return count_params(detector), flops
