"""How the C allocator treats the large blocks a forward pass frees, and how often memory first-touches cost.

glibc's ``malloc`` serves big blocks (a stage's activations: megabytes) from fresh ``mmap`` memory and
gives them back to the OS when freed, so the next call's block page-faults again on first touch: on this
project's 2-core VM about 10 us per 4 KiB page, a quarter of a B2 forward pass's time for an
implementation that allocates large temporaries. Servers often swap in an allocator that keeps freed
memory (jemalloc, tcmalloc); ``keep_freed_memory`` gets the same effect from glibc itself, so the kernels
alone are compared. Both settings are worth knowing: users running the default allocator see the first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Iterator
from contextlib import contextmanager

try:
    import resource
except ImportError:  # Windows: no getrusage
    resource = None  # type: ignore[assignment]

ALLOCATORS = ("system", "keep")
# mallopt parameters (malloc.h) and glibc's static defaults, restored afterwards.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_DEFAULT_THRESHOLD = 128 * 1024
_KEEP_THRESHOLD = 2**30  # blocks up to 1 GiB come from the heap (1024 px activations are ~100 MB)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None where the C library is another one (no mallopt / malloc_trim)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError, TypeError):
        return None


@contextmanager
def keep_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, glibc keeps freed memory in its heap instead of returning it to the OS.

    Yields whether that took effect (False off glibc, or with ``enabled=False``). Afterwards glibc's
    static default thresholds are set again (its dynamic raising of the mmap threshold stays off).
    """
    libc = _libc() if enabled else None
    applied = bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_THRESHOLD)
                   and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_THRESHOLD))
    try:
        yield applied
    finally:
        if applied:
            libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_THRESHOLD)


def release_free_heap() -> None:
    """Give freed heap memory back to the OS now (glibc's ``malloc_trim``; elsewhere nothing happens)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def minor_page_faults() -> int | None:
    """Minor page faults of this process so far (first touches of memory the OS handed out), or None."""
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt
