"""ImageNet models' params and GFLOPs at 224x224 beside the paper's Table 2 (``pvt table``).

Params are compared with the official code's count where ``reference.json`` has it (PVTv2: the paper's B0
and B1 figures leave out the 1000-class head), else with the paper; both within 2% or the figure's rounding.
Models the papers do not list (linear SRA other than B2) are counted all the same, without published figures.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..engine.paper_table import PaperRow, PaperTable
from ..errors import InputError
from ..models import min_input_size, reference
from ..models.complexity import count_flops, count_params, create_for_counting

INPUT_SIZE = (224, 224)  # the size of the published ImageNet figures
TOLERANCE = reference.DEFAULT_REL_TOL


def paper_rows(names: Sequence[str], sizes: Sequence[int] = ()) -> list[PaperRow]:
    """One row per model: counted at 224x224 beside Table 2, with ``GFLOPs_<px>`` at each of ``sizes`` (px x px)."""
    for px in sizes:
        if px < 1:
            raise InputError(f"--size takes image sides in pixels (>= 1), got {' '.join(map(str, sizes))}")
    for name in names:
        if sizes and min(sizes) < min_input_size(name):
            raise InputError(f"--size {min(sizes)} is too small for {name}: it needs at least {min_input_size(name)} "
                             f"pixels per side (choose the models with --models)")
    paper = reference.published(reference.IMAGENET)
    official = reference.params_from_official_code()
    rows = []
    for name in names:
        model = create_for_counting(name)
        published = paper.get(name, {})
        rows.append(PaperRow(
            model=name, params=count_params(model), paper_params_M=published.get("params_M"),
            flops=count_flops(model, INPUT_SIZE), paper_GFLOPs=published.get("GFLOPs"), tolerance=TOLERANCE,
            official_params_M=official.get(name),
            extra={f"GFLOPs_{px}": count_flops(model, (px, px)) / 1e9 for px in sizes},
        ))
    return rows


def paper_tables(names: Sequence[str], sizes: Sequence[int] = ()) -> list[PaperTable]:
    """The classification models among ``names`` beside Table 2 (see :func:`paper_rows`)."""
    rows = paper_rows(names, sizes)
    note = _params_note()
    if any(row.paper_params_M is None for row in rows):
        note += '\n"-": no published figure (the papers have linear SRA for B2 only); counted as the others.'
    return [PaperTable(2, rows, note)]


def _params_note() -> str:
    """Which published params disagree with the released code beyond the tolerance, read from the reference."""
    paper = reference.published(reference.IMAGENET)
    differ = {name: (paper[name]["params_M"], code) for name, code in reference.params_from_official_code().items()
              if not reference.matches(code, paper[name]["params_M"], TOLERANCE)}
    shown = ", ".join(f"{name} {published}M vs {code}M" for name, (published, code) in differ.items())
    return (f"ImageNet at {INPUT_SIZE[0]}x{INPUT_SIZE[1]} (paper Table 2). Params are compared with the official "
            "code's count where reference.json has it"
            + (f"; the paper's figures differ from the released code's (with the 1000-class head) for {shown}."
               if differ else "."))
