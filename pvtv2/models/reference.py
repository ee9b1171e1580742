"""Published figures of the PVT family (papers and official model zoo), and how to compare against them.

The figures live in ``reference.json`` beside this file (package data). Each table maps a row name
(a model, or ``"detector/model"``) to its figures by column name::

    >>> published("imagenet_224")["pvt_v2_b2"]
    {'params_M': 25.4, 'GFLOPs': 4.0, 'top1': 82.0}

A measured figure matches a published one when it is within a relative tolerance (2% by default) or
within the rounding of the published figure: the paper prints 0.6 GFLOPs for a model that counts 0.57.
"""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

from ..errors import InputError

IMAGENET = "imagenet_224"
COCO = "coco_val2017"
COCO_DETECTORS = "coco_detectors_3x_1280x800"
ADE20K = "ade20k_semantic_fpn_512"

DEFAULT_REL_TOL = 0.02


@cache
def load() -> dict[str, Any]:
    """The whole of ``reference.json`` (do not mutate: it is cached)."""
    return json.loads(resources.files(__package__).joinpath("reference.json").read_text(encoding="utf-8"))


def tables() -> list[str]:
    """Names of the tables of published results (those with ``_columns``)."""
    return [name for name, value in load().items() if isinstance(value, dict) and "_columns" in value]


def published(table: str) -> dict[str, dict[str, float]]:
    """Rows of ``table`` as ``{row: {column: value}}``, in file order."""
    data = load()
    if table not in tables():
        raise InputError(f"no published table {table!r}; known tables: {', '.join(tables())}")
    columns = data[table]["_columns"]
    return {
        row: dict(zip(columns, values))
        for row, values in data[table].items()
        if not row.startswith("_") and isinstance(values, list)
    }


def params_from_official_code() -> dict[str, float]:
    """Parameters (millions) that the official code's ImageNet models count, where they differ in
    precision or value from the paper (B0 and B1 are published without their 1000-class head)."""
    return dict(load()[IMAGENET]["params_from_official_code"])


def architecture(name: str) -> dict[str, Any]:
    """Published architecture settings of model ``name``: its family's common settings, overridden by its own."""
    for family in load()["architectures"].values():
        if name in family:
            return {**family["common"], **family[name]}
    raise InputError(f"no published architecture for {name!r}")


def rounding(value: float) -> float:
    """Half a unit of the last printed digit of ``value``: the rounding a printed figure carries (4.0 -> 0.05)."""
    # repr gives the shortest text that reads back as value, which is how reference.json prints it.
    return 0.5 * 10.0 ** Decimal(repr(value)).as_tuple().exponent


def matches(measured: float, published_value: float, rel_tol: float = DEFAULT_REL_TOL) -> bool:
    """Whether ``measured`` agrees with ``published_value``: within ``rel_tol`` or within its rounding."""
    error = abs(measured - published_value)
    return error <= rel_tol * abs(published_value) or error <= rounding(published_value) + 1e-12
