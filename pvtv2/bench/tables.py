"""The tables ``pvt bench`` prints of its results (:func:`pvtv2.bench.run_suite`, :func:`run_isolated`): throughput,
memory, resolution scaling, or the times of implementations each alone in its processes."""

from __future__ import annotations

from typing import Any

from ..engine.text_table import format_table
from .peers import PEERS
from .report import describe_mode

PEER_TITLES = {"timm": "timm", "hf": "HF"}
# What the throughput table shows beside ours: the peers, and ours in onnxruntime (its own rows).
OTHER_TITLES = {**PEER_TITLES, "onnxruntime": "onnxruntime"}
TASK_WORDS = {"inference": "infer", "inference bf16": "infer bf16", "inference onnxruntime": "infer ORT",
              "training": "train"}
BUSY_LOAD_PER_CPU = 0.25  # a 1-minute load average above this per CPU means the machine was not idle


def format_report(results: dict[str, Any]) -> str:
    """The tables of a benchmark's ``results``: throughput, memory, resolution scaling (or, for an isolated
    run, the times of implementations each alone in its processes)."""
    if results.get("isolated"):
        return _isolated_report(results)
    config, machine = results["config"], results["machine"]
    peak, nominal = machine["attainable_peak"], machine["nominal_peak"]
    lines = [
        f"{machine['name']} ({config['device']}, {machine['torch_threads']} torch threads), "
        f"{describe_mode(config)}; "
        f"medians of {config['rounds']} interleaved rounds, after {config['warmup']} warm-up rounds and a memory call",
        f"peak: {peak['gflops']:.1f} GFLOP/s attainable, {peak['method']}",
    ]
    if nominal:
        lines.append(f"      {nominal['gflops']:.1f} GFLOP/s nominal = {nominal['method']}")
    lines += _load_lines(results)
    lines += [
        results["flop_convention"],
        f"memory: {results['memory_method']}",
        "max rel. diff: largest difference of a peer's logits from ours over their largest value (same weights)",
        "",
    ]
    if results["throughput"]:
        lines += ["throughput (images/s)", _throughput_table(results["throughput"]), "",
                  "peak memory (MB)", _memory_table(results["throughput"]), ""]
        if any(r.get("page_faults_per_call") for row in results["throughput"] for r in row["impls"].values()):
            lines += ["minor page faults per call (median; first touches of memory the OS handed out)",
                      _memory_table(results["throughput"], "page_faults_per_call"), ""]
    if results["sweep"]:
        lines += [f"cost against resolution (batch 1, medians of {config['sweep_rounds']} rounds)",
                  _sweep_table(results["sweep"]), "",
                  "growth exponent in pixel count (time ~ pixels^k; 1 = linear, 2 = quadratic)",
                  _fits_table(results["sweep_fits"])]
    return "\n".join(lines).rstrip()


def _load_lines(results: dict[str, Any]) -> list[str]:
    """The load average around the run, and a warning when the machine was not idle."""
    load = results["meta"]["load_average"]
    if load["before"] is None:
        return []
    # This run's own threads count in the "after" figure; the "before" one is other processes'.
    lines = [f"load average (1 min): {load['before']:.2f} before the run, {load['after']:.2f} after"]
    if load["before"] > BUSY_LOAD_PER_CPU * results["machine"]["cpu_count"]:
        lines.append("WARNING: other processes were using the CPU: threads waiting for descheduled peers make "
                     "every figure slower and noisier (the ratios less so, being interleaved)")
    return lines


def _isolated_report(results: dict[str, Any]) -> str:
    config, machine, isolated = results["config"], results["machine"], results["isolated"]
    lines = [
        f"{machine['name']} ({config['device']}, {machine['torch_threads']} torch threads), "
        f"{describe_mode(config)}, {config['image_size']} px; each implementation alone in {isolated['runs']} fresh "
        f"process{'es' if isolated['runs'] != 1 else ''}, in turn; "
        f"per process the median of {isolated['calls_per_process']} calls after {isolated['warmup_calls']} "
        f"warm-up calls and a memory call; figures: medians over the processes",
        *_load_lines(results),
        f"memory: {results['memory_method']}",
        "",
        "inference, each implementation in its own processes: ms per call (ours/peer = peer time / ours), "
        "minor page faults per call",
        _isolated_table(isolated["rows"]),
        "",
        "each process's median (ms), and peak memory (MB, median over processes)",
        _isolated_processes_table(isolated["rows"]),
    ]
    return "\n".join(lines)


IMPLS = ("ours", *PEERS)
IMPL_TITLES = {"ours": "ours", **PEER_TITLES}


def _per_impl(row: dict[str, Any], suffix: str, text: Any) -> dict[str, str]:
    """One column per implementation (``<impl><suffix>``): ``text`` of its figures, "-" where it did not run."""
    return {f"{impl}{suffix}": _maybe(row["impls"].get(impl), text) for impl in IMPLS}


def _per_impl_headers(suffix: str, unit: str) -> dict[str, str]:
    return {f"{impl}{suffix}": f"{title} {unit}".rstrip() for impl, title in IMPL_TITLES.items()}


def _times_and_ratios(row: dict[str, Any], decimals: int) -> dict[str, str]:
    """Each implementation's median time per call (ms) and, per peer, the peer's time over ours."""
    return {
        **_per_impl(row, "_ms", lambda r: f"{r['median_s'] * 1e3:.{decimals}f}"),
        **{f"vs_{peer}": _maybe(row["ratios"].get(f"ours/{peer}"), lambda r: f"{r:.2f}x") for peer in PEERS},
    }


def _times_and_ratios_headers() -> dict[str, str]:
    return {**_per_impl_headers("_ms", "ms"), **{f"vs_{peer}": f"ours/{title}" for peer, title in PEER_TITLES.items()}}


def _peak_memory(figures: dict[str, Any]) -> str:
    return f"{figures['peak_memory_mb']:.0f}"


def _isolated_table(rows: list[dict[str, Any]]) -> str:
    def faults(figures: dict[str, Any]) -> str:
        return _maybe(figures["page_faults_per_call"], lambda v: f"{v:.0f}")

    text_rows = [dict(model=row["model"], batch=f"{row['batch']}", **_times_and_ratios(row, decimals=1),
                      **_per_impl(row, "_faults", faults)) for row in rows]
    headers = dict(model="model", batch="batch", **_times_and_ratios_headers(),
                   **_per_impl_headers("_faults", "faults"))
    return format_table(text_rows, headers)


def _isolated_processes_table(rows: list[dict[str, Any]]) -> str:
    def each(figures: dict[str, Any]) -> str:
        return ", ".join(f"{p['median_s'] * 1e3:.1f}" for p in figures["processes"])

    text_rows = [dict(model=row["model"], batch=f"{row['batch']}", **_per_impl(row, "", each),
                      **_per_impl(row, "_mb", _peak_memory)) for row in rows]
    headers = dict(model="model", batch="batch", **_per_impl_headers("", ""), **_per_impl_headers("_mb", "MB"))
    return format_table(text_rows, headers)


def _task(row: dict[str, Any]) -> str:
    return f"{TASK_WORDS.get(row['task'], row['task'])} b{row['batch']}"


def _throughput_table(rows: list[dict[str, Any]]) -> str:
    text_rows = []
    for row in rows:
        impls, ours = row["impls"], row["impls"]["ours"]
        diffs = row.get("max_rel_diff", {})
        text_rows.append(dict(
            model=row["model"], task=_task(row), ours=f"{ours['images_per_s']:.1f}",
            **{peer: _maybe(impls.get(peer), lambda r: f"{r['images_per_s']:.1f}") for peer in OTHER_TITLES},
            **{f"vs_{peer}": _maybe(row["ratios"].get(f"ours/{peer}"), lambda r: f"{r:.2f}x") for peer in OTHER_TITLES},
            gflops=f"{ours['gflops_per_s']:.1f}", fraction=f"{100 * ours['peak_fraction']:.0f}%",
            diff=_maybe(max(diffs.values(), default=None), lambda d: f"{d:.0e}"),
        ))
    headers = dict(model="model", task="task", ours="ours", **OTHER_TITLES,
                   **{f"vs_{peer}": f"ours/{title}" for peer, title in OTHER_TITLES.items()},
                   gflops="ours GFLOP/s", fraction="of peak", diff="max rel. diff")
    return format_table(text_rows, headers)


def _memory_table(rows: list[dict[str, Any]], field: str = "peak_memory_mb") -> str:
    """Each implementation's ``field`` (peak memory, page faults) per throughput row."""
    text_rows = [
        dict(model=row["model"], task=_task(row),
             **{impl: _maybe(row["impls"].get(impl), lambda r: _maybe(r.get(field), lambda v: f"{v:.0f}"))
                for impl in ("ours", *OTHER_TITLES)})
        for row in rows
    ]
    return format_table(text_rows, dict(model="model", task="task", ours="ours", **OTHER_TITLES))


def _sweep_table(rows: list[dict[str, Any]]) -> str:
    text_rows = [
        dict(model=row["model"], size=f"{row['image_size']}", **_times_and_ratios(row, decimals=0),
             **_per_impl(row, "_mb", _peak_memory),
             diff=_maybe(max(row.get("max_rel_diff", {}).values(), default=None), lambda d: f"{d:.0e}"))
        for row in rows
    ]
    headers = dict(model="model", size="px", **_times_and_ratios_headers(), **_per_impl_headers("_mb", "MB"),
                   diff="max rel. diff")
    return format_table(text_rows, headers)


def _fits_table(fits: list[dict[str, Any]]) -> str:
    text_rows = [
        dict(model=fit["model"], impl=PEER_TITLES.get(fit["impl"], fit["impl"]),
             time=_maybe(fit["time_exponent"], lambda k: f"{k:.2f}"),
             memory=_maybe(fit["memory_exponent"], lambda k: f"{k:.2f}"),
             sizes=f"{fit['fit_sizes'][0]}..{fit['fit_sizes'][-1]} px")
        for fit in fits
    ]
    headers = dict(model="model", impl="impl", time="time", memory="memory", sizes="fitted over")
    return format_table(text_rows, headers, left=("model", "impl", "sizes"))


def _maybe(value: Any, text: Any) -> str:
    """``text(value)``, or "-" for a peer that did not run (timm has no PVTv1; a package not installed)."""
    return "-" if value is None else text(value)
