"""pvt bench: our models against timm's and HF transformers' with the same weights, side by side.

All implementations run in one process, interleaved round by round, after warm-up; figures are medians.
Measured: inference images/s (batch 1 and 8 on CPU, 64 and 256 on GPU, 224x224, inference mode), one
training step's images/s (forward, backward, AdamW; batch 8 on CPU, 128 on GPU), peak memory (CPU RSS or
CUDA allocations above the idle process), achieved GFLOP/s as a fraction of a measured matmul peak, and
batch-1 cost against resolution (224..1024 px) for B2, B2-Li and PVT-Small with its growth exponent in
pixel count, and each call's minor page faults (--allocator keep: glibc keeps freed memory, so none after
warm-up and the kernels alone are compared). timm has no PVTv1; a peer that is not installed is left out.

Writes DIR/bench.json (every figure) and DIR/resolution.png (the resolution sweep). --quick runs B0 and
B2 (training at batch 2) with B2-Li's scaling up to 640 px, 2 rounds: under 3 minutes on a 2-core CPU.

--isolate measures inference only, each implementation alone, as a user's own program runs it: in one
process the implementations share the C allocator's heap, and with the system allocator whether a call
faults its memory in afresh depends on what ran before. For each model and --batch, every implementation
runs in --runs fresh processes, in turn (ours, timm, HF, ours...); each process makes --warmup untimed
calls and a memory call, then times --rounds calls. It reports the median over processes of each
process's median, page faults per call and each process's time, into bench.json's "isolated"; the
in-process throughput, training and sweep runs are skipped (--train-batch, --sweep-models, --sizes and
--sweep-rounds do not apply). Example: pvt bench --isolate --models pvt_v2_b2 --batch 8 --runs 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..bench import BenchConfig, run_suite, write_results
from ..bench.isolated import run_isolated
from ..bench.peers import PEERS
from ..bench.report import describe_mode
from ..engine.allocator import ALLOCATORS
from ..engine.files import check_writable
from .common import CommandError, format_table, select_models

PEER_TITLES = {"timm": "timm", "hf": "HF"}
# What the throughput table shows beside ours: the peers, and ours in onnxruntime (its own rows).
OTHER_TITLES = {**PEER_TITLES, "onnxruntime": "onnxruntime"}
TASK_WORDS = {"inference": "infer", "inference bf16": "infer bf16", "inference onnxruntime": "infer ORT",
              "training": "train"}
BUSY_LOAD_PER_CPU = 0.25  # a 1-minute load average above this per CPU means the machine was not idle
ISOLATED_RUNS = 3  # fresh processes per implementation under --isolate, unless --runs says otherwise


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="speed and memory against timm and HF transformers", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="a small configuration (< 3 min on a 2-core CPU)")
    parser.add_argument("--models", nargs="+", metavar="PATTERN",
                        help="shell-style filters for the throughput (or --isolate) runs "
                             "(default: B0, B1, B2, B2-Li, Tiny, Small)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every implementation")
    parser.add_argument("--channels-last", action="store_true", help="channels-last weights and images")
    parser.add_argument("--amp", choices=("bf16",), help="autocast to this dtype (meant for GPUs)")
    parser.add_argument("--no-bf16", action="store_true",
                        help="skip the bf16-autocast inference rows a CPU with bf16 kernels gets by default")
    parser.add_argument("--no-onnxruntime", action="store_true",
                        help="skip the onnxruntime rows (ours exported to ONNX) of CPU runs with onnxruntime installed")
    parser.add_argument("--allocator", choices=ALLOCATORS, default="system",
                        help="system: the C allocator as is (what users run); keep: glibc keeps freed memory, "
                             "so no call page-faults and the kernels alone are compared (default: system)")
    parser.add_argument("--isolate", action="store_true",
                        help="inference only, each implementation alone in fresh processes, in turn (see above); "
                             "skips the in-process runs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), metavar="DIR",
                        help="folder for bench.json and resolution.png (default: benchmarks/results)")
    finer = parser.add_argument_group("finer settings (defaults: those of --device and --quick)")
    finer.add_argument("--image-size", type=int, metavar="PX",
                       help="input size of the throughput (or --isolate) runs (224)")
    finer.add_argument("--batch", nargs="+", type=int, metavar="N", help="inference batch sizes")
    finer.add_argument("--train-batch", type=int, metavar="N", help="training batch size; 0: no training step")
    finer.add_argument("--sweep-models", nargs="*", metavar="PATTERN",
                       help="models of the resolution sweep; none given: no sweep")
    finer.add_argument("--sizes", nargs="+", type=int, metavar="PX", help="input sizes of the resolution sweep")
    finer.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's, all cores)")
    finer.add_argument("--warmup", type=int, metavar="N", help="untimed rounds before the memory call and timing")
    finer.add_argument("--rounds", type=int, metavar="N",
                       help="timed rounds of the throughput runs; with --isolate, timed calls per process")
    finer.add_argument("--runs", type=int, metavar="N",
                       help=f"with --isolate: fresh processes per implementation (default: {ISOLATED_RUNS})")
    finer.add_argument("--sweep-rounds", type=int, metavar="N", help="timed rounds at each sweep size")
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The preset of --device and --quick, with whatever the other options set."""
    overrides: dict[str, Any] = dict(compile=args.compile, channels_last=args.channels_last, amp=args.amp,
                                     allocator=args.allocator)
    if args.no_bf16:
        overrides["bf16"] = False
    if args.no_onnxruntime:
        overrides["onnxruntime"] = False
    if args.isolate:
        # Rejected rather than ignored: a user asking for them would otherwise think they had run.
        in_process_only = dict(train_batch="--train-batch", sweep_models="--sweep-models", sizes="--sizes",
                               sweep_rounds="--sweep-rounds")
        given = [option for dest, option in in_process_only.items() if getattr(args, dest) is not None]
        if given:
            raise CommandError(f"--isolate times inference only: {', '.join(given)} do not apply")
        overrides |= dict(train_batch=None, sweep_models=())
    elif args.runs is not None:
        raise CommandError("--runs counts the fresh processes of --isolate; without it there are none")
    if args.models:
        overrides["models"] = tuple(select_models(args.models))
    if args.sweep_models is not None:
        overrides["sweep_models"] = tuple(select_models(args.sweep_models)) if args.sweep_models else ()
    optional = dict(image_size=args.image_size, infer_batches=args.batch and tuple(args.batch),
                    sweep_sizes=args.sizes and tuple(args.sizes), threads=args.threads, warmup=args.warmup,
                    rounds=args.rounds, sweep_rounds=args.sweep_rounds)
    overrides |= {key: value for key, value in optional.items() if value is not None}
    if args.train_batch is not None:
        overrides["train_batch"] = args.train_batch or None
    return BenchConfig.preset(args.device, args.quick, **overrides)


def log(line: str) -> None:
    """Progress, on stderr: the tables alone go to stdout."""
    print(f"  {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    check_writable(args.out, f"--out {args.out}", "choose another --out")  # a folder; before minutes of timing
    started = time.perf_counter()
    if args.isolate:
        # A child that fails raises IsolatedRunError (a RunFailure: status 1, its message ends with the
        # child's traceback).
        results = run_isolated(config, ISOLATED_RUNS if args.runs is None else args.runs, log)
    else:
        results = run_suite(config, log=log)
    print(format_report(results))
    written = write_results(results, args.out)
    print(f"\nwrote {', '.join(map(str, written))} in {time.perf_counter() - started:.0f} s")
    return 0


def format_report(results: dict[str, Any]) -> str:
    """The tables ``pvt bench`` prints: throughput, memory, resolution scaling (or, under --isolate, the
    times of implementations each alone in its processes)."""
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


def _isolated_table(rows: list[dict[str, Any]]) -> str:
    text_rows = []
    for row in rows:
        impls = row["impls"]
        text_rows.append(dict(
            model=row["model"], batch=f"{row['batch']}",
            **{f"{impl}_ms": _maybe(impls.get(impl), lambda r: f"{r['median_s'] * 1e3:.1f}")
               for impl in ("ours", *PEERS)},
            **{f"vs_{peer}": _maybe(row["ratios"].get(f"ours/{peer}"), lambda r: f"{r:.2f}x") for peer in PEERS},
            **{f"{impl}_faults": _maybe(impls.get(impl), lambda r: _maybe(r["page_faults_per_call"],
                                                                             lambda v: f"{v:.0f}"))
               for impl in ("ours", *PEERS)},
        ))
    titles = dict(ours="ours", **PEER_TITLES)
    headers = dict(model="model", batch="batch", **{f"{i}_ms": f"{t} ms" for i, t in titles.items()},
                   **{f"vs_{peer}": f"ours/{title}" for peer, title in PEER_TITLES.items()},
                   **{f"{i}_faults": f"{t} faults" for i, t in titles.items()})
    return format_table(text_rows, headers)


def _isolated_processes_table(rows: list[dict[str, Any]]) -> str:
    def each(r: dict[str, Any]) -> str:
        return ", ".join(f"{p['median_s'] * 1e3:.1f}" for p in r["processes"])

    text_rows = [
        dict(model=row["model"], batch=f"{row['batch']}",
             **{impl: _maybe(row["impls"].get(impl), each) for impl in ("ours", *PEERS)},
             **{f"{impl}_mb": _maybe(row["impls"].get(impl), lambda r: f"{r['peak_memory_mb']:.0f}")
                for impl in ("ours", *PEERS)})
        for row in rows
    ]
    titles = dict(ours="ours", **PEER_TITLES)
    headers = dict(model="model", batch="batch", **titles, **{f"{i}_mb": f"{t} MB" for i, t in titles.items()})
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
    text_rows = []
    for row in rows:
        impls = row["impls"]
        text_rows.append(dict(
            model=row["model"], size=f"{row['image_size']}",
            **{f"{impl}_ms": _maybe(impls.get(impl), lambda r: f"{r['median_s'] * 1e3:.0f}")
               for impl in ("ours", *PEERS)},
            **{f"vs_{peer}": _maybe(row["ratios"].get(f"ours/{peer}"), lambda r: f"{r:.2f}x") for peer in PEERS},
            **{f"{impl}_mb": _maybe(impls.get(impl), lambda r: f"{r['peak_memory_mb']:.0f}")
               for impl in ("ours", *PEERS)},
            diff=_maybe(max(row.get("max_rel_diff", {}).values(), default=None), lambda d: f"{d:.0e}"),
        ))
    titles = dict(ours="ours", **PEER_TITLES)
    headers = dict(model="model", size="px", **{f"{i}_ms": f"{t} ms" for i, t in titles.items()},
                   **{f"vs_{peer}": f"ours/{title}" for peer, title in PEER_TITLES.items()},
                   **{f"{i}_mb": f"{t} MB" for i, t in titles.items()}, diff="max rel. diff")
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
