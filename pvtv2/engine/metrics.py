"""What a run leaves beside its checkpoints: ``metrics.jsonl`` (one JSON object per record) and ``curves.png``."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import written_atomically

logger = logging.getLogger("pvtv2")

METRICS = "metrics.jsonl"
CURVES = "curves.png"

# A panel of curves.png: its title and y-axis label, and the (record key, legend label, scale) of each curve.
Panel = tuple[str, str, Sequence[tuple[str, str, float]]]


class MetricsLog:
    """The run's records (an epoch's or an interval's figures), one JSON line each, appended as they come."""

    def __init__(self, output_dir: str | Path, resumed_at: int = 0, key: str = "epoch") -> None:
        """A new run (``resumed_at=0``) starts an empty file; a resumed one keeps the records up to its
        checkpoint's progress and drops later ones, which the resumed run makes again. ``key`` names the
        record field that counts progress (``"iteration"`` for iteration-based training)."""
        self.path = Path(output_dir) / METRICS
        kept = [r for r in read_metrics(self.path) if r[key] <= resumed_at] if resumed_at else []
        self.records: list[dict[str, Any]] = kept
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: Mapping[str, Any]) -> None:
        self.records.append(dict(record))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics file. A run killed while appending can leave its last line torn: that line
    is dropped with a warning (the resumed run writes the record again); a damaged line before it is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                logger.warning("%s: dropped its last line, torn (%s): %.60s", path, error, line)
                break
            raise InputError(f"{path}: line {number} is not a JSON record ({error}); remove or repair the line, or "
                             f"start a new run in another output_dir") from error
    return records


def plot_curves(records: Sequence[Mapping[str, Any]], path: str | Path, x: str, panels: Sequence[Panel]) -> None:
    """One panel per entry of ``panels``, side by side, each curve over the records that have its key."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in any process
    import matplotlib.pyplot as plt

    figure, axes_row = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axes, (title, ylabel, curves) in zip(axes_row[0], panels):
        for key, label, scale in curves:
            shown = [r for r in records if r.get(key) is not None]
            if shown:
                axes.plot([r[x] for r in shown], [scale * r[key] for r in shown], marker=".", label=label)
        axes.set(xlabel=x, ylabel=ylabel, title=title)
        axes.grid(alpha=0.3)
        if len(curves) > 1:
            axes.legend()
    figure.tight_layout()
    with written_atomically(path) as temporary:  # a run killed while drawing leaves the previous picture
        figure.savefig(temporary, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(figure)
