"""Peak memory of one call, above what was in use before it.

GPU: ``torch.cuda.max_memory_allocated`` after resetting the peak: the tensors' bytes, exactly.

CPU: the process's resident set size (RSS). PyTorch's CPU allocator keeps no statistics, so the only
measure common to every implementation is the memory the process holds from the OS. Two things make it
mean "memory the call needed":
- before the call, freed heap memory is handed back to the OS (glibc ``malloc_trim``), otherwise a call
  reuses what an earlier one left in the allocator's free lists and seems to need nothing;
- the peak is the kernel's own high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) where
  Linux allows it, exact however short the peak; elsewhere a thread samples the RSS every millisecond
  (with psutil), which can miss peaks shorter than that.
"""

from __future__ import annotations

import functools
import gc
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from ..engine.allocator import release_free_heap

MB = 2**20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_SAMPLE_INTERVAL_S = 0.001
T = TypeVar("T")


def measure_peak_memory(call: Callable[[], T], device: str) -> tuple[float, T]:
    """Peak memory of ``call()`` above the memory in use just before it, in MiB (see the module doc), and
    what ``call`` returned."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = call()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / MB, result
    release_free_heap()
    if cpu_memory_method() == "VmHWM":
        before = _resident_kib("VmRSS")
        _CLEAR_REFS.write_text("5")  # the high-water mark restarts from the current RSS
        result = call()
        return max(0, _resident_kib("VmHWM") - before) / 1024, result
    return _sampled_peak(call)


@functools.cache
def cpu_memory_method() -> str:
    """How the CPU peak is read here: ``VmHWM`` (kernel high-water mark) or ``sampled`` (1 ms)."""
    try:
        _resident_kib("VmHWM")
        _CLEAR_REFS.write_text("5")
        return "VmHWM"
    except (OSError, AttributeError):  # not Linux, or /proc is read-only in this sandbox
        return "sampled"


def describe_method(device: str) -> str:
    if device == "cuda":
        return "torch.cuda.max_memory_allocated above the memory allocated before the call"
    if cpu_memory_method() == "VmHWM":
        return "RSS high-water mark (VmHWM, reset before the call) above the RSS before it, after malloc_trim"
    return "RSS sampled every 1 ms (psutil) above the RSS before the call, after malloc_trim"


def _resident_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise AttributeError(f"no {field} in {_STATUS}")
    return int(match[1])


def _sampled_peak(call: Callable[[], T]) -> tuple[float, T]:
    import psutil  # only here: Linux reads the exact peak from /proc

    process = psutil.Process()
    before = process.memory_info().rss
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(_SAMPLE_INTERVAL_S):  # torch releases the GIL in its kernels, so this runs
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = call()
    finally:
        done.set()
        sampler.join()
    return max(0, max(peak, process.memory_info().rss) - before) / MB, result
