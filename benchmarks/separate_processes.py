"""Inference time of each implementation alone in its own process, as a user runs it.

`pvt bench` runs every implementation in one process, so that they are timed under the same conditions;
but with glibc's default allocator they then share one heap, and whether an implementation's big
activations are faulted in afresh on every call depends on what ran before it (see benchmarks/README.md,
"Page faults and the allocator"). This script gives each implementation a fresh process per run, runs
them in turn (ours, timm, HF, ours, timm, HF...), and reports the median over runs of each process's
median call time, with its page faults per call.

    .venv/bin/python benchmarks/separate_processes.py --model pvt_v2_b2 --batch 8 [--size 224]
        [--runs 3] [--calls 5] [--threads 2] [--allocator system|keep]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys


def child(args: argparse.Namespace) -> None:
    """One implementation, one process: build, warm up, time ``args.calls`` calls, print JSON."""
    import torch

    from pvtv2 import create_model
    from pvtv2.bench.peers import peer_with_weights_of
    from pvtv2.bench.timing import interleaved_times, median, warm_up
    from pvtv2.engine.allocator import keep_freed_memory

    with keep_freed_memory(args.allocator == "keep"):
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        model = create_model(args.model).eval()
        if args.child != "ours":
            model = peer_with_weights_of(args.child, model, args.model, args.size).eval()
        images = torch.randn(args.batch, 3, args.size, args.size)

        def call() -> None:
            with torch.inference_mode():
                model(images)

        # The bench's own timing, with one implementation: warm-up, then timed calls and their page faults.
        warm_up({args.child: call}, 2)
        faults: dict[str, list[int]] = {}
        times = interleaved_times({args.child: call}, args.calls, page_faults=faults)[args.child]
    print(json.dumps({"median_s": median(times), "faults": median(faults.get(args.child, [0]))}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pvt_v2_b2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per implementation")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--allocator", choices=("system", "keep"), default="system")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from pvtv2.bench.peers import peers_of

    impls = ["ours", *peers_of(args.model)]
    results: dict[str, list[dict[str, float]]] = {impl: [] for impl in impls}
    for _ in range(args.runs):
        for impl in impls:
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", impl],
                                 capture_output=True, text=True, check=True).stdout
            results[impl].append(json.loads(out.strip().splitlines()[-1]))
    ours = statistics.median(r["median_s"] for r in results["ours"])
    print(f"{args.model}, batch {args.batch}, {args.size} px, {args.threads} threads, allocator {args.allocator}, "
          f"{args.runs} processes each, median of {args.calls} calls per process")
    for impl in impls:
        seconds = statistics.median(r["median_s"] for r in results[impl])
        faults = statistics.median(r["faults"] for r in results[impl])
        each = ", ".join(f"{r['median_s'] * 1e3:.0f}" for r in results[impl])
        print(f"  {impl:5s} {seconds * 1e3:8.1f} ms  ours faster by {seconds / ours:.2f}x  "
              f"faults/call {faults:8.0f}  (per process: {each} ms)")


if __name__ == "__main__":
    main()
