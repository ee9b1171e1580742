"""Inference time of each implementation alone in its own fresh process, as a user runs it (``pvt bench --isolate``).

``run_suite`` times every implementation in one process, so that they run under the same conditions;
but with glibc's default allocator they then share one heap, and whether an implementation's big
activations are faulted in afresh on every call depends on what ran before it (benchmarks/README.md,
"Page faults and the allocator"): the figures become order-dependent. Here each implementation gets a
fresh Python process per run, the runs take turns (ours, timm, HF, ours, timm, HF...) so drift in the
machine falls on all alike, and each process times its calls with the suite's own helpers. A row's
figure is the median over processes of each process's median call time.

A child is ``python -m pvtv2.bench.isolated SPEC``: it prints one line of JSON with its figures.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from typing import Any

import torch

from ..engine.allocator import keep_freed_memory
from ..errors import InputError, RunFailure
from ..models import create_model
from .machine import describe_machine
from .memory import describe_method, measure_peak_memory
from .peers import peer_with_weights_of, peers_of
from .suite import (
    FLOP_CONVENTION, OURS, BenchConfig, Log, bench_images, inference_call, load_average, prepared_models, run_meta,
)
from .timing import interleaved_times, median, synchronizer, warm_up

_STDERR_TAIL = 4000  # characters of a failed child's stderr in the error: the end of its traceback


class IsolatedRunError(RunFailure):
    """A child process failed; the message ends with its stderr."""


def run_isolated(config: BenchConfig, runs: int = 3, log: Log = lambda line: None) -> dict[str, Any]:
    """Inference of every model and batch of ``config``, each implementation alone in ``runs`` fresh
    processes; results shaped as ``run_suite``'s (empty throughput and sweep) plus ``"isolated"``.

    Each process runs ``config.warmup`` untimed calls, one memory call, then ``config.rounds`` timed calls.
    """
    if runs < 1:
        raise InputError(f"runs must be at least 1, got {runs}")
    started, load_before = time.perf_counter(), load_average()
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)  # so the machine's description counts the children's threads
    try:
        machine = describe_machine(config.device, config.dtype)
    finally:
        torch.set_num_threads(threads_before)
    log(f"machine: {machine['name']}")
    rows = []
    for name in config.models:
        impls = [OURS, *peers_of(name)]
        for batch in config.infer_batches:
            processes: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
            for _ in range(runs):
                for impl in impls:  # in turn, so that no implementation always runs on a fresher machine
                    processes[impl].append(time_in_fresh_process(impl, name, batch, config))
            rows.append(_row(name, batch, config.image_size, processes))
            log(f"{name} batch {batch}: "
                + ", ".join(f"{impl} {r['median_s'] * 1e3:.1f} ms" for impl, r in rows[-1]["impls"].items()))
    every_process = [p for row in rows for r in row["impls"].values() for p in r["processes"]]
    kept = bool(every_process) and all(p["freed_memory_kept"] for p in every_process)
    return dict(
        meta=run_meta(started, load_before) | {"freed_memory_kept": kept},
        config=dataclasses.asdict(config),
        machine=machine,
        flop_convention=FLOP_CONVENTION,
        memory_method=describe_method(config.device),
        throughput=[], sweep=[], sweep_fits=[],
        isolated=dict(runs=runs, warmup_calls=config.warmup, calls_per_process=config.rounds, rows=rows),
    )


def time_in_fresh_process(impl: str, name: str, batch: int, config: BenchConfig) -> dict[str, Any]:
    """``impl``'s figures for model ``name`` at ``batch``, measured by a new Python process."""
    spec = dict(impl=impl, name=name, batch=batch, config=dataclasses.asdict(config))
    # The same interpreter as ours; stdin closed, so nothing in the child can wait on it.
    done = subprocess.run([sys.executable, "-m", __spec__.name, json.dumps(spec)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise IsolatedRunError(
            f"the process timing {impl} on {name} at batch {batch} failed (exit status {done.returncode}); "
            f"its stderr:\n{done.stderr[-_STDERR_TAIL:]}"
        )
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise IsolatedRunError(f"the process timing {impl} on {name} at batch {batch} printed nothing; "
                               f"its stderr:\n{done.stderr[-_STDERR_TAIL:]}")
    return json.loads(lines[-1])  # the last line: a library may have printed before it


def time_here(impl: str, name: str, batch: int, config: BenchConfig) -> dict[str, Any]:
    """What a child measures: ``impl`` alone in this process, built, warmed up, then timed."""
    with keep_freed_memory(config.allocator == "keep") as kept:
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(0)  # every process builds the same weights and images
        model = create_model(name).eval()
        if impl != OURS:
            model = peer_with_weights_of(impl, model, name, config.image_size)
        model = prepared_models({impl: model.to(config.device)}, config)[impl]
        call = inference_call(model, bench_images(batch, config.image_size, config), config)
        synchronize = synchronizer(config.device)
        warm_up({impl: call}, config.warmup, synchronize)
        memory_mb, _ = measure_peak_memory(call, config.device)  # also the last untimed call, as in the suite
        faults: dict[str, list[int]] = {}
        times = interleaved_times({impl: call}, config.rounds, synchronize, faults)[impl]
    return dict(
        median_s=median(times), times_s=times, peak_memory_mb=memory_mb,
        page_faults_per_call=median(faults[impl]) if impl in faults else None,
        torch_threads=torch.get_num_threads(), freed_memory_kept=kept,
    )


def _row(name: str, batch: int, size: int, processes: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One model and batch: each implementation's median over its processes, and ours against each peer."""
    impls = {}
    for impl, runs in processes.items():
        seconds = median([p["median_s"] for p in runs])
        faults = [p["page_faults_per_call"] for p in runs]
        impls[impl] = dict(
            median_s=seconds, images_per_s=batch / seconds,
            page_faults_per_call=None if None in faults else median(faults),
            peak_memory_mb=median([p["peak_memory_mb"] for p in runs]),
            processes=runs,
        )
    ours = impls[OURS]["median_s"]
    # As in the suite's rows: ours/peer is a ratio of speeds (peer time over ours), above 1 when ours is faster.
    ratios = {f"{OURS}/{impl}": r["median_s"] / ours for impl, r in impls.items() if impl != OURS}
    return dict(model=name, task="inference", batch=batch, image_size=size, impls=impls, ratios=ratios)


def _config_from_dict(fields: dict[str, Any]) -> BenchConfig:
    """A ``BenchConfig`` back from its JSON form (lists where it holds tuples)."""
    return BenchConfig(**{key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()})


def _child_main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    figures = time_here(spec["impl"], spec["name"], spec["batch"], _config_from_dict(spec["config"]))
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
