"""Semantic FPN parameter and FLOP counts beside the paper's Table 5 (``pvt table --task segmentation``).

FLOPs are multiply-adds at 512x512, counted as mmcv's ``get_flops`` does (the paper's tool; see
:mod:`pvtv2.models.complexity`), with the attention matmuls added as the official tool does. Parameters
are for 150 classes (ADE20K). Both within 3% of the paper's (or of its rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..engine.paper_table import PaperRow, PaperTable
from ..models import reference
from ..models.complexity import count_flops, count_params
from .model import build_segmenter

INPUT_SIZE = (512, 512)
NUM_CLASSES = 150
TOLERANCE = 0.03


def count_segmenter(backbone: str, num_classes: int = NUM_CLASSES,
                    input_size: tuple[int, int] = INPUT_SIZE) -> tuple[int, int]:
    """(parameters, multiply-adds at ``input_size``) of Semantic FPN on ``backbone``, built on the meta device."""
    with torch.device("meta"):  # shapes only: every backbone counts in a blink, without memory
        model = build_segmenter("semantic_fpn", backbone=backbone, num_classes=num_classes)
    return count_params(model), count_flops(model, input_size)


def paper_rows(names: Sequence[str]) -> list[PaperRow]:
    """One row per model of ``names`` with published Semantic FPN figures (the others are left out)."""
    paper = reference.published(reference.ADE20K)
    rows = []
    for name in names:
        if name not in paper:
            continue
        params, flops = count_segmenter(name)
        rows.append(PaperRow(model=name, params=params, paper_params_M=paper[name]["params_M"], flops=flops,
                             paper_GFLOPs=paper[name]["GFLOPs"], tolerance=TOLERANCE,
                             extra={"mIoU_paper": paper[name]["mIoU"]}))
    return rows


def paper_tables(names: Sequence[str]) -> list[PaperTable]:
    """Semantic FPN on the backbones among ``names`` beside Table 5."""
    note = (f"Semantic FPN, {NUM_CLASSES} classes, {INPUT_SIZE[0]}x{INPUT_SIZE[1]} input (paper Table 5); "
            "models without published figures are left out.")
    return [PaperTable(5, paper_rows(names), note)]
