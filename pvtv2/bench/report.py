"""The files a run leaves: ``bench.json`` (every figure) and ``resolution.png`` (the resolution sweep)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import written_atomically

JSON_NAME = "bench.json"
PLOT_NAME = "resolution.png"
_IMPL_STYLES = {"ours": "-o", "timm": "--s", "hf": ":^"}
_IMPL_LABELS = {"ours": "ours", "timm": "timm", "hf": "HF"}


def write_results(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Writes ``bench.json``, and ``resolution.png`` when there is a sweep, into ``out_dir``; returns them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / JSON_NAME]
    with written_atomically(written[0]) as temporary:
        temporary.write_text(json.dumps(results, indent=1) + "\n")
    if results["sweep"]:
        written.append(out_dir / PLOT_NAME)
        plot_resolution(results, written[-1])
    return written


def plot_resolution(results: dict[str, Any], path: Path) -> None:
    """Time and memory against pixel count, log-log, one colour per model and one line style per
    implementation; the legend gives each line's fitted growth exponent."""
    # Imported here, not above: the ``pvt`` command imports this module for every subcommand.
    # A bare Figure draws with Agg: no display needed, no pyplot state.
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, ScalarFormatter

    figure = Figure(figsize=(12, 5), layout="constrained")
    time_axes, memory_axes = figure.subplots(1, 2)
    exponents = {(f["model"], f["impl"]): f for f in results["sweep_fits"]}
    models = list(dict.fromkeys(row["model"] for row in results["sweep"]))
    for color, model in zip(_colors(len(models)), models):
        rows = [row for row in results["sweep"] if row["model"] == model]
        pixels = [row["image_size"] ** 2 for row in rows]
        for impl in rows[0]["impls"]:
            fit = exponents.get((model, impl), {})
            for axes, key, scale, exponent in (
                (time_axes, "median_s", 1e3, fit.get("time_exponent")),
                (memory_axes, "peak_memory_mb", 1, fit.get("memory_exponent")),
            ):
                label = f"{model} {_IMPL_LABELS.get(impl, impl)}"
                if exponent is not None:
                    label += f" (x^{exponent:.2f})"
                axes.plot(pixels, [row["impls"][impl][key] * scale for row in rows], _IMPL_STYLES.get(impl, "-."),
                          color=color, label=label)
    sizes = sorted({row["image_size"] for row in results["sweep"]})
    fit_sizes = next((f["fit_sizes"] for f in results["sweep_fits"]), sizes)
    config, machine = results["config"], results["machine"]
    for axes, ylabel in ((time_axes, "time per image (ms)"), (memory_axes, "peak memory above idle (MB)")):
        _linear_guide(axes)
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xticks([s * s for s in sizes], [f"{s}²" for s in sizes])
        axes.minorticks_off()
        axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # a log axis labels powers of 10 only
        axes.yaxis.set_major_formatter(ScalarFormatter())
        axes.set_xlabel("input pixels (batch 1)")
        axes.set_ylabel(ylabel)
        axes.grid(True, which="major", alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle(
        f"Cost against resolution on {machine['name']} ({config['device']}, {describe_mode(config)}); "
        f"exponents fitted over {fit_sizes[0]}..{fit_sizes[-1]} px", fontsize=10,
    )
    figure.savefig(path, dpi=120)


def _linear_guide(axes: Any) -> None:
    """A grey line of slope 1 (cost proportional to pixels) through the first line's first point: what
    linear SRA's Eq. 2 predicts, to hold the measured lines against."""
    first = axes.get_lines()[0]
    x0, y0 = first.get_xdata()[0], first.get_ydata()[0]
    x1 = max(max(line.get_xdata()) for line in axes.get_lines())
    axes.plot([x0, x1], [y0, y0 * x1 / x0], color="0.6", linestyle=(0, (1, 3)), linewidth=1.5,
              label="∝ pixels (linear)", zorder=0)


def describe_mode(config: dict[str, Any]) -> str:
    """How the models ran, from a run's config: "eager, float32", "compiled, bf16 autocast, channels-last"."""
    parts = ["compiled" if config["compile"] else "eager", "bf16 autocast" if config["amp"] else "float32"]
    parts += ["channels-last"] if config["channels_last"] else []
    # Older bench.json files have no allocator setting: they ran the system allocator.
    parts += ["glibc keeping freed memory"] if config.get("allocator") == "keep" else []
    return ", ".join(parts)


def _colors(count: int) -> list[str]:
    return [f"C{i % 10}" for i in range(count)]
