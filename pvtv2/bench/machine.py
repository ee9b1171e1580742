"""What the machine can do: a description of it and its peak arithmetic rate, against which the models'
achieved GFLOP/s are a fraction.

Two peaks, both in FLOP/s where one multiply-add is 2 FLOPs:
- attainable (the denominator of "% of peak"): a large square matmul timed with torch on all the
  threads torch uses, in the benchmark's compute dtype: what the best-tuned kernel reaches here;
- nominal (CPU only, for reference): threads x clock x FLOPs per cycle per core, the last from the SIMD
  flags in /proc/cpuinfo. Virtual machines may report a base clock and hide turbo, and vCPUs may be
  hyper-threads of one core, so this is an estimate; that is why the measured peak is the one used.
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path
from typing import Any

import torch

from .timing import synchronizer

_CPUINFO = Path("/proc/cpuinfo")
_MATMUL_SIDE = {"cpu": 2048, "cuda": 8192}  # big enough to be compute-bound, small enough to take < 1 s
_MATMUL_REPS = 5


def attainable_peak_gflops(device: str, dtype: torch.dtype) -> dict[str, Any]:
    """The best rate of ``_MATMUL_REPS`` timed n x n matmuls (after one untimed), in GFLOP/s.

    On the CPU both of PyTorch's matmul kernels are timed, ``a @ b`` (MKL's sgemm in float32) and oneDNN's
    (what the fused and training paths run), and the faster counts: on AMD CPUs MKL reaches about half of
    oneDNN's rate, so MKL alone would put the models above "100% of peak".
    """
    side = _MATMUL_SIDE[device]
    a = torch.randn(side, side, device=device).to(dtype)
    b = torch.randn(side, side, device=device).to(dtype)
    kernels = {"torch.matmul": lambda: a @ b}
    if device == "cpu" and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        b_t = b.t().contiguous()
        kernels["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b_t, None, "none", [], "")
    sync = synchronizer(device)
    best = {}
    for name, kernel in kernels.items():
        try:
            kernel()
        except RuntimeError:  # a dtype this oneDNN build has no kernel for
            continue
        sync()
        best[name] = float("inf")
        for _ in range(_MATMUL_REPS):
            start = time.perf_counter()
            kernel()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    fastest = min(best, key=best.get)
    return dict(
        gflops=2 * side**3 / best[fastest] / 1e9,
        method=f"best of {_MATMUL_REPS} {side}x{side} {str(dtype).removeprefix('torch.')} matmuls "
               f"({fastest}, the faster of {' and '.join(best)}; "
               f"{torch.get_num_threads() if device == 'cpu' else 'all'} threads)",
    )


def nominal_cpu_peak_gflops() -> dict[str, Any] | None:
    """threads x clock x FP32 FLOPs per cycle per core, from /proc/cpuinfo; ``None`` where it is missing."""
    try:
        info = _CPUINFO.read_text()
    except OSError:
        return None
    first = info.split("\n\n")[0]
    fields = dict(re.findall(r"^([^\t:]+?)\s*:\s*(.*)$", first, re.MULTILINE))
    if "cpu MHz" not in fields or "flags" not in fields:
        return None
    threads = torch.get_num_threads()
    ghz = float(fields["cpu MHz"]) / 1000
    per_cycle, why = _fp32_flops_per_cycle(
        set(fields["flags"].split()), fields.get("vendor_id", ""),
        int(fields.get("cpu family", "0")), int(fields.get("model", "0")),
    )
    return dict(
        gflops=threads * ghz * per_cycle,
        method=f"{threads} threads x {ghz:.2f} GHz (cpu MHz in /proc/cpuinfo) x {per_cycle} FP32 FLOP/cycle ({why})",
    )


def _fp32_flops_per_cycle(flags: set[str], vendor: str, family: int, model: int) -> tuple[int, str]:
    """Single-precision FLOPs one core can issue per cycle, assuming two FMA pipes as most x86 cores have."""
    if "avx512f" in flags:
        return 64, "AVX-512 FMA: 16 lanes x 2 pipes x 2"
    if {"avx2", "fma"} <= flags:
        # AMD Zen and Zen+ (family 17h, models below 30h) split each 256-bit FMA over two 128-bit pipes.
        if vendor == "AuthenticAMD" and family == 0x17 and model < 0x30:
            return 16, "Zen/Zen+ AVX2 FMA on 128-bit pipes: 4 lanes x 2 pipes x 2"
        return 32, "AVX2 FMA: 8 lanes x 2 pipes x 2"
    if "avx" in flags:
        return 16, "AVX: 8-lane add + 8-lane multiply"
    return 8, "SSE: 4-lane add + 4-lane multiply"


def describe_machine(device: str, dtype: torch.dtype) -> dict[str, Any]:
    """The machine the figures come from, and its peaks (see the module doc)."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        nominal = None
    else:
        name = _cpu_model_name()
        nominal = nominal_cpu_peak_gflops()
    return dict(
        device=device,
        name=name,
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        attainable_peak=attainable_peak_gflops(device, dtype),
        nominal_peak=nominal,
    )


def _cpu_model_name() -> str:
    try:
        match = re.search(r"^model name\s*:\s*(.*)$", _CPUINFO.read_text(), re.MULTILINE)
    except OSError:
        match = None
    return match[1] if match else platform.processor() or platform.machine()
