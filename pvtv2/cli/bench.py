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

from ..bench import BenchConfig, format_report, run_suite, write_results
from ..bench.isolated import run_isolated
from ..engine.allocator import ALLOCATORS
from ..engine.files import check_writable
from .common import CommandError, select_models

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
