"""Matplotlib figures of attention maps, pyramid levels and task predictions (Agg canvas, no pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..engine.files import check_output_file
from ..files import written_atomically
from .attention import AttentionMaps

PANEL_INCHES = 2.0
DPI = 80  # small files: the README's pictures stay well under 150 KB


def _axes_grid(rows: int, cols: int, panel: float = PANEL_INCHES) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(cols * panel, rows * panel + 0.5), dpi=DPI, layout="constrained")
    axes = np.asarray(figure.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    return figure, axes


def attention_figure(picture: np.ndarray, result: AttentionMaps, title: str) -> Figure:
    """One panel per head (columns) and query point (rows): the attention map under the faint picture
    (H, W, 3 in [0, 1]), each panel from its lowest to its highest value (the title gives the range of
    the weights over the keys, in %), the query marked with a cross."""
    points, heads = result.maps.shape[:2]
    figure, axes = _axes_grid(points, heads)
    grey = picture.mean(-1)
    for p in range(points):
        for h in range(heads):
            ax = axes[p, h]
            attention = result.maps[p, h].numpy()
            # From the panel's least to its most attended pixel (the title gives the keys' range), so that a
            # nearly uniform attention still shows its pattern; the picture faintly on top.
            ax.imshow(attention, cmap="inferno", interpolation="nearest")
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1, alpha=0.45)
            x, y = result.points[p]
            ax.plot([x], [y], marker="x", color="cyan", markersize=9, markeredgewidth=2)
            weights = result.weights[p, h]
            name = "rollout, head mean" if result.rollout else f"head {h + 1}"
            ax.set_title(f"{name}: {100 * weights.min():.1f}-{100 * weights.max():.1f}%", fontsize=8)
            if h == 0:
                ax.text(-0.04, 0.5, f"query ({x}, {y})", transform=ax.transAxes, rotation=90, ha="right",
                        va="center", fontsize=8)
    figure.suptitle(title, fontsize=9)
    return figure


def features_figure(picture: np.ndarray, levels: Sequence[torch.Tensor], channels: Sequence[int], title: str) -> Figure:
    """The picture and each pyramid level at its own resolution (strides 4, 8, 16, 32), side by side."""
    figure, axes = _axes_grid(1, 1 + len(levels))
    axes[0, 0].imshow(picture)
    axes[0, 0].set_title(f"input {picture.shape[0]}x{picture.shape[1]}", fontsize=9)
    for i, (level, width) in enumerate(zip(levels, channels)):
        ax = axes[0, i + 1]
        array = level.permute(1, 2, 0).numpy() if level.ndim == 3 else level.numpy()
        ax.imshow(array, cmap=None if level.ndim == 3 else "viridis", interpolation="nearest")
        ax.set_title(f"stride {4 * 2**i}: {array.shape[0]}x{array.shape[1]}x{width}", fontsize=9)
    figure.suptitle(title, fontsize=9)
    return figure


def predictions_figure(rows: Sequence[tuple[str, Mapping[str, np.ndarray]]], columns: Sequence[str]) -> Figure:
    """The layout of the paper's Fig. 3: one row per input, one column per model (its title at the top)."""
    figure, axes = _axes_grid(len(rows), len(columns), panel=3.0)
    for r, (name, cells) in enumerate(rows):
        for c, column in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(cells[column])
            if r == 0:
                ax.set_title(column, fontsize=10)
            if c == 0:
                ax.text(-0.03, 0.5, name, transform=ax.transAxes, rotation=90, ha="right", va="center", fontsize=8)
    return figure


def figure_suffixes() -> tuple[str, ...]:
    """The file name extensions matplotlib writes a figure in (``.png``, ``.pdf``, ``.svg``...)."""
    return tuple(f".{name}" for name in Figure().canvas.get_supported_filetypes())


def check_figure_output(path: str | Path, option: str, inputs: Sequence[Path] = ()) -> None:
    """Before any work: ``path`` (given with ``option``) names a format matplotlib writes, is none of the
    command's ``inputs`` and lies in a folder that can be written."""
    check_output_file(Path(path), option, figure_suffixes(), "a figure", inputs)


def save(figure: Figure, path: str | Path) -> None:
    """Write ``figure`` to ``path`` in the format of its extension, whole or not at all."""
    path = Path(path)
    with written_atomically(path) as temporary:
        figure.savefig(temporary, dpi=DPI, format=path.suffix.lstrip(".").lower())
