"""Interleaved timing: every round times each implementation once, so drift in the machine's load,
clock or caches during a run falls on all of them alike instead of on whichever ran last."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from ..engine.allocator import minor_page_faults


def synchronizer(device: str) -> Callable[[], None]:
    """What makes a call's work finished when it returns: CUDA kernels run asynchronously."""
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def warm_up(
    calls: Mapping[str, Callable[[], object]], rounds: int, synchronize: Callable[[], None] = lambda: None
) -> None:
    """``rounds`` untimed rounds of ``calls``: first calls pay for allocation, autotuning and compilation."""
    for _ in range(rounds):
        for call in calls.values():
            call()
        synchronize()


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """The Python objects alive on entry are left out of every garbage collection until exit (``gc.freeze``).

    The suite collects before each measurement so that garbage from the last one is not counted; with torch,
    timm and transformers imported, a full collection walks millions of objects that none of the
    measurements created (~0.25 s each, a third of a small run). Objects made inside are collected as usual.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def interleaved_times(
    calls: Mapping[str, Callable[[], object]], rounds: int, synchronize: Callable[[], None] = lambda: None,
    page_faults: dict[str, list[int]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each of ``calls`` over ``rounds`` rounds.

    Each round runs every call once, starting one further along the list each time, so none is always
    first (right after another's memory was freed) or last. The garbage collector is off while timing,
    as in ``timeit``, so a collection does not land in one implementation's figures. Where the OS counts
    them, ``page_faults`` (if given) receives each call's minor page faults.
    """
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_index in range(rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                synchronize()
                faults_before = minor_page_faults()
                start = time.perf_counter()
                calls[name]()
                synchronize()
                times[name].append(time.perf_counter() - start)
                if page_faults is not None and faults_before is not None:
                    page_faults.setdefault(name, []).append(minor_page_faults() - faults_before)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def median(times: Sequence[float]) -> float:
    return statistics.median(times)
