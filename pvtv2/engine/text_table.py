"""Plain-text tables, as the ``pvt`` subcommands and the task reports print them."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any


def format_table(
    rows: Sequence[Mapping[str, Any]], headers: Mapping[str, str], left: Collection[str] | None = None
) -> str:
    """Rows as aligned text, ``headers`` mapping row keys to column titles (in order).

    Columns in ``left`` (default: the first, a name) are left-aligned, the others (figures) right-aligned.
    Values are printed with ``str``, so format them first.
    """
    keys = list(headers)
    left = {keys[0]} if left is None else set(left)
    cells = [list(headers.values())] + [["" if row[key] is None else str(row[key]) for key in keys] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(keys))]
    return "\n".join(
        "  ".join(cell.ljust(w) if key in left else cell.rjust(w) for key, cell, w in zip(keys, line, widths)).rstrip()
        for line in cells
    )
