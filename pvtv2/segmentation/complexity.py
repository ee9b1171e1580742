"""Semantic FPN parameter and FLOP counts beside the paper's Table 5 (``pvt table --task segmentation``).

FLOPs are multiply-adds at 512x512, counted as mmcv's ``get_flops`` does (the paper's tool; see
:mod:`pvtv2.models.complexity`), with the attention matmuls added as the official tool does. Parameters
are for 150 classes (ADE20K). Tolerances: 3% for parameters, 5% for GFLOPs.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ..engine.text_table import format_table
from ..models import reference
from ..models.complexity import count_flops, count_params
from .model import build_segmenter

INPUT_SIZE = (512, 512)
NUM_CLASSES = 150
PARAMS_TOL = 0.03
FLOPS_TOL = 0.05


def count_segmenter(backbone: str, num_classes: int = NUM_CLASSES, input_size: tuple[int, int] = INPUT_SIZE) -> tuple[int, int]:
    """(parameters, multiply-adds at ``input_size``) of Semantic FPN on ``backbone``, built on the meta device."""
    with torch.device("meta"):  # shapes only: every backbone counts in a blink, without memory
        model = build_segmenter("semantic_fpn", backbone=backbone, num_classes=num_classes)
    return count_params(model), count_flops(model, input_size)


def complexity_rows(names: list[str]) -> list[dict[str, Any]]:
    """One row per model with published Semantic FPN figures: counts, paper figures, differences, tolerance."""
    paper = reference.published(reference.ADE20K)
    rows = []
    for name in names:
        if name not in paper:
            continue
        params, flops = count_segmenter(name)
        published = paper[name]
        params_diff = params / 1e6 / published["params_M"] - 1
        flops_diff = flops / 1e9 / published["GFLOPs"] - 1
        rows.append(dict(
            model=name, params=params, flops=flops, params_M=params / 1e6, params_M_paper=published["params_M"],
            params_diff_pct=round(100 * params_diff, 3), params_ok=abs(params_diff) <= PARAMS_TOL,
            GFLOPs=flops / 1e9, GFLOPs_paper=published["GFLOPs"], GFLOPs_diff_pct=round(100 * flops_diff, 3),
            GFLOPs_ok=abs(flops_diff) <= FLOPS_TOL, mIoU_paper=published["mIoU"],
        ))
        rows[-1]["ok"] = rows[-1]["params_ok"] and rows[-1]["GFLOPs_ok"]
    return rows


def print_table(names: list[str], as_json: bool) -> int:
    """Print the rows of ``names`` (models without published figures are left out); 0 if all are in tolerance."""
    rows = complexity_rows(names)
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        text = [dict(
            model=r["model"], params=f"{r['params_M']:.2f}", params_paper=r["params_M_paper"],
            params_diff=_percent(r["params_diff_pct"]), flops=f"{r['GFLOPs']:.2f}", flops_paper=r["GFLOPs_paper"],
            flops_diff=_percent(r["GFLOPs_diff_pct"]), miou=r["mIoU_paper"], ok="yes" if r["ok"] else "NO",
        ) for r in rows]
        headers = dict(model="model", params="params (M)", params_paper="paper", params_diff="diff",
                       flops="GFLOPs", flops_paper="paper", flops_diff="diff", miou="paper mIoU",
                       ok="in tolerance")
        print(format_table(text, headers))
        print(f"\nSemantic FPN, {NUM_CLASSES} classes, {INPUT_SIZE[0]}x{INPUT_SIZE[1]} input; tolerance "
              f"{PARAMS_TOL:.0%} for params and {FLOPS_TOL:.0%} for GFLOPs (paper Table 5).")
    return 0 if all(r["ok"] for r in rows) else 1


def _percent(value: float) -> str:
    return f"{round(value, 1) + 0.0:+.1f}%"
