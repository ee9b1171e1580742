"""Counted params and GFLOPs beside the papers' figures: one row type and one table for every task.

Each task builds its rows (``pvtv2.classification.complexity``, ``pvtv2.detection.complexity``,
``pvtv2.segmentation.complexity``: ``paper_tables(names)``); this module checks them against the published
figures and prints them, as ``pvt table`` does. A counted figure is within tolerance when it is within the
row's relative tolerance of the published one or within that figure's printed rounding (the paper prints
0.6 GFLOPs for 0.57; see :func:`pvtv2.models.reference.matches`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..models.reference import matches
from .text_table import format_table


@dataclass(frozen=True)
class PaperRow:
    """One counted model beside the paper: ``model`` names it as ``reference.json`` does (``pvt_v2_b2``,
    ``atss/pvt_v2_b2``); a published figure is ``None`` where the papers do not list it."""

    model: str
    params: int
    paper_params_M: float | None
    flops: int | None  # multiply-adds at the table's input size; None when not counted
    paper_GFLOPs: float | None
    tolerance: float  # relative, for params and GFLOPs alike
    # The official code's count, compared with instead of the paper's where the two differ (PVTv2-B0/B1's heads).
    official_params_M: float | None = None
    extra: Mapping[str, float | None] = field(default_factory=dict)  # further columns: GFLOPs_1024, mIoU_paper...

    @property
    def params_M(self) -> float:
        return self.params / 1e6

    @property
    def GFLOPs(self) -> float | None:
        return None if self.flops is None else self.flops / 1e9

    @property
    def compared_params_M(self) -> float | None:
        """The published params the count is held to: the official code's where known, else the paper's."""
        return self.paper_params_M if self.official_params_M is None else self.official_params_M

    @property
    def params_diff_pct(self) -> float | None:
        return _diff_pct(self.params_M, self.compared_params_M)

    @property
    def GFLOPs_diff_pct(self) -> float | None:
        return _diff_pct(self.GFLOPs, self.paper_GFLOPs)

    @property
    def params_ok(self) -> bool | None:
        return _within(self.params_M, self.compared_params_M, self.tolerance)

    @property
    def GFLOPs_ok(self) -> bool | None:
        return _within(self.GFLOPs, self.paper_GFLOPs, self.tolerance)

    @property
    def ok(self) -> bool | None:
        """Whether every published figure is matched; ``None`` when there is none to match."""
        checked = [ok for ok in (self.params_ok, self.GFLOPs_ok) if ok is not None]
        return all(checked) if checked else None

    def as_dict(self) -> dict[str, Any]:
        return dict(
            model=self.model, params=self.params, params_M=self.params_M, params_M_paper=self.paper_params_M,
            params_M_official=self.official_params_M, params_diff_pct=self.params_diff_pct, params_ok=self.params_ok,
            flops=self.flops, GFLOPs=self.GFLOPs, GFLOPs_paper=self.paper_GFLOPs,
            GFLOPs_diff_pct=self.GFLOPs_diff_pct, GFLOPs_ok=self.GFLOPs_ok, tolerance=self.tolerance, ok=self.ok,
            **self.extra,
        )


@dataclass(frozen=True)
class PaperTable:
    """Rows beside one of the papers' tables, and what a reader needs to know to read them."""

    number: int  # the paper's table number
    rows: Sequence[PaperRow]
    note: str

    @property
    def ok(self) -> bool:
        """No counted figure is out of tolerance (models without published figures have nothing to be out of)."""
        return all(row.ok is not False for row in self.rows)

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(row.as_dict(), table=self.number) for row in self.rows]

    def text(self) -> str:
        """The rows as an aligned text table, then the note."""
        extra = list(dict.fromkeys(key for row in self.rows for key in row.extra))
        cells = [dict(
            model=row.model, params=f"{row.params_M:.2f}", paper=_shown(row.paper_params_M),
            official=_shown(row.official_params_M), params_diff=_percent(row.params_diff_pct),
            flops="-" if row.GFLOPs is None else f"{row.GFLOPs:.2f}", flops_paper=_shown(row.paper_GFLOPs),
            flops_diff=_percent(row.GFLOPs_diff_pct),
            **{key: _shown(None if row.extra.get(key) is None else round(row.extra[key], 2)) for key in extra},
            tolerance=f"{row.tolerance:.0%}", ok=_yes_no(row.ok),
        ) for row in self.rows]
        headers = dict(model="model", params="params (M)", paper="paper", official="official code",
                       params_diff="diff", flops="GFLOPs", flops_paper="paper", flops_diff="diff",
                       **{key: key.replace("_", " ") for key in extra}, tolerance="tolerance", ok="in tolerance")
        return f"{format_table(cells, headers)}\n\n{self.note}"


def tables_text(tables: Sequence[PaperTable]) -> str:
    """``tables`` as text, one after the other."""
    return "\n\n".join(table.text() for table in tables)


def all_ok(tables: Sequence[PaperTable]) -> bool:
    """No counted figure of ``tables`` is out of its tolerance."""
    return all(table.ok for table in tables)


def _diff_pct(measured: float | None, published: float | None) -> float | None:
    if measured is None or published is None:
        return None
    return round(100 * (measured / published - 1), 3)


def _within(measured: float | None, published: float | None, tolerance: float) -> bool | None:
    if measured is None or published is None:
        return None
    return matches(measured, published, tolerance)


def _percent(value: float | None) -> str:
    if value is None:
        return "-"
    # Adding 0.0 turns a rounded -0.0 into 0.0, so a tiny negative difference prints as +0.0%.
    return f"{round(value, 1) + 0.0:+.1f}%"


def _shown(value: Any) -> str:
    return "-" if value is None else str(value)


def _yes_no(ok: bool | None) -> str:
    return "-" if ok is None else "yes" if ok else "NO"
