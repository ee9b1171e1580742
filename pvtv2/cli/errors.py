"""How the ``pvt`` command reports what went wrong: one sentence and an exit status per kind of failure.

:func:`pvtv2.cli.main.main` catches the exceptions :func:`is_reported` accepts and prints
:func:`describe_failure` of them; everything else is a bug and keeps its traceback (as do these with ``--debug``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import Interrupted, PvtError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "PVT_DEBUG"

# What a user's input or machine causes: our own errors, the operating system's (a folder that cannot be
# written, a full disk, a missing file), running out of memory (is_out_of_memory), and Ctrl-C.
REPORTED = (PvtError, OSError, KeyboardInterrupt)
# torch's CPU allocator reports a failed allocation as a plain RuntimeError with this text.
_CPU_ALLOCATION_FAILED = "DefaultCPUAllocator: can't allocate memory"

# torch re-raises an exception of a DataLoader worker process as the same type, its message replaced by
# "Caught X in DataLoader worker process N.\nOriginal Traceback ...": the original message ends that text.
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


@dataclass(frozen=True)
class Failure:
    text: str  # what follows "pvt COMMAND: "
    exit_code: int


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation that could not succeed: on the GPU, in torch's CPU allocator, or in Python (PIL, numpy)."""
    return (isinstance(error, (torch.OutOfMemoryError, MemoryError))
            or (isinstance(error, RuntimeError) and _CPU_ALLOCATION_FAILED in str(error)))


def is_reported(error: BaseException) -> bool:
    """Whether ``error`` is the user's input or machine (one sentence), not a bug (a traceback)."""
    return isinstance(error, REPORTED) or is_out_of_memory(error)


def describe_failure(error: BaseException) -> Failure:
    """The line a user sees for ``error`` (one of :data:`REPORTED`) and the command's exit status."""
    if isinstance(error, KeyboardInterrupt):
        return Failure("interrupted", Interrupted.exit_code)
    if isinstance(error, Interrupted):
        return Failure(f"interrupted; {error}", error.exit_code)
    if isinstance(error, PvtError):
        return Failure(f"error: {original_message(error)}", error.exit_code)
    if is_out_of_memory(error):
        text = str(error).strip()
        if _CPU_ALLOCATION_FAILED in text:  # "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPU...: ..."
            text = text[text.index(_CPU_ALLOCATION_FAILED):]
        first_line = text.splitlines()[0].rstrip(".") if text else "out of memory"
        return Failure(f"error: out of memory ({first_line}); lower the batch size or the image size, or train with "
                       f"--amp bf16 or --grad_checkpointing true", 1)
    return Failure(f"error: {_os_error_text(error)}", 2)


def original_message(error: BaseException) -> str:
    """``error``'s message, without the wrapping a DataLoader worker process adds to it."""
    text = str(error)
    if _WORKER_TRACEBACK not in text:
        return text
    kind = type(error)
    for prefix in (f"\n{kind.__module__}.{kind.__qualname__}: ", f"\n{kind.__qualname__}: "):
        at = text.rfind(prefix)
        if at >= 0:
            return text[at + len(prefix):].strip()
    return text


def _os_error_text(error: OSError) -> str:
    if error.filename is None or not error.strerror:
        return original_message(error)
    target = f"{error.filename} -> {error.filename2}" if error.filename2 else str(error.filename)
    return f"{error.strerror.lower()}: {target}; check that the path exists and that you may read or write it"
