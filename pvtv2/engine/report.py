"""What a run leaves beside its checkpoints: ``metrics.jsonl`` (one JSON object per epoch) and ``curves.png``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
CURVES = "curves.png"


class MetricsLog:
    """The epochs' records, one JSON line each, appended as they finish."""

    def __init__(self, output_dir: str | Path, resumed_epoch: int = 0, key: str = "epoch") -> None:
        """A new run (``resumed_epoch=0``) starts an empty file; a resumed one keeps the records of the
        epochs its checkpoint has and drops later ones, which the resumed run trains again. ``key`` names
        the record field that counts progress (``"iteration"`` for iteration-based training)."""
        self.path = Path(output_dir) / METRICS
        kept = [r for r in read_metrics(self.path) if r[key] <= resumed_epoch] if resumed_epoch else []
        self.records: list[dict[str, Any]] = kept
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: Mapping[str, Any]) -> None:
        self.records.append(dict(record))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[Mapping[str, Any]], path: str | Path) -> None:
    """Loss (training and held-out) and held-out accuracy per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in any process
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axes.plot(epochs, [r["train_loss"] for r in records], marker=".", label="training")
    loss_axes.plot(epochs, [r["val_loss"] for r in records], marker=".", label="held-out")
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    accuracy_axes.plot(epochs, [r["val_top1"] for r in records], marker=".", label="top-1")
    accuracy_axes.plot(epochs, [r["val_top5"] for r in records], marker=".", label="top-5")
    if any("ema_top1" in r for r in records):
        accuracy_axes.plot(epochs, [r.get("ema_top1") for r in records], marker=".", label="EMA top-1")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="held-out accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
