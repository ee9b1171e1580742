"""Output files: checked before any work is done, written whole or not at all, one run per folder.

A command that computes for minutes and then fails to write its result (an unknown extension, a folder
that cannot be written) has wasted the minutes; one that dies while writing leaves a torn file that looks
like a result. So outputs are checked first (:func:`check_output_file`, :func:`check_writable`) and written
to a temporary file beside their place, then renamed over it (:func:`pvtv2.files.written_atomically`).

Two training runs into one folder would each append their epochs to ``metrics.jsonl`` and overwrite each
other's checkpoints, and both end well. :func:`output_folder_lock` makes the second one stop at once,
naming the first.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import EnvironmentProblem, InputError

logger = logging.getLogger("pvtv2")

LOCK_NAME = ".pvt-run.lock"

_SHOWN_SUFFIXES = 8


def check_writable(folder: Path, what: str, advice: str) -> None:
    """Create ``folder`` if needed and make sure files can be written in it, before any work is done;
    else an error that names ``what`` cannot be written and gives ``advice``."""
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise EnvironmentProblem(f"{what} cannot be written: {existing} is a file, not a folder; {advice}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise EnvironmentProblem(f"{what} cannot be written ({error.strerror or error}); {advice}") from error


def check_output_file(path: Path, option: str, suffixes: Sequence[str], what: str, inputs: Sequence[Path] = ()) -> None:
    """Before any work: ``path`` (given with ``option``) is a file name ending in one of ``suffixes`` (the
    formats of ``what``), not a folder, none of the command's other files (``inputs``, which it would
    overwrite), in a folder that can be written."""
    if path.suffix.lower() not in suffixes:
        found = f"its extension {path.suffix!r}" if path.suffix else "it has no extension, which"
        shown = ", ".join(suffixes[:_SHOWN_SUFFIXES]) + (f" (or {len(suffixes) - _SHOWN_SUFFIXES} more)"
                                                          if len(suffixes) > _SHOWN_SUFFIXES else "")
        raise InputError(f"{option} {path}: {found} names no format for {what}; end the name with one of {shown}")
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name")
    for source in inputs:
        if path.resolve() == Path(source).resolve():
            raise InputError(f"{option} {path} would overwrite {source}, which this command also reads or writes; "
                             f"choose another name")
    check_writable(path.parent, f"{option} {path}", f"choose another {option}")


@contextmanager
def output_folder_lock(folder: Path, command: str, option: str = "--output_dir") -> Iterator[None]:
    """Hold ``folder`` for this process's run of ``command`` while inside: a second run into it is refused
    with an :class:`InputError` naming the holder (command, pid, host, start), given with ``option``.

    The lock is the operating system's lock on ``folder/.pvt-run.lock`` (``flock``), which the system
    releases when its process ends in any way, Ctrl-C, SIGKILL or a crash: a lock left by a process that
    no longer runs is taken over with a note. The file holds the holder's description for the message.
    """
    try:
        import fcntl  # POSIX
    except ImportError:  # Windows: no flock; runs are not guarded there
        logger.warning("this system has no file locks (fcntl): nothing stops a second run into %s", folder)
        yield
        return
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise InputError(f"{folder} is the output folder of a run still going on"
                             f"{f' ({holder})' if holder else ''}: wait for it to end, or choose another "
                             f"{option}") from None
        except OSError as error:  # a file system without locks (some network ones): run, unguarded
            os.close(fd)
            logger.warning("%s: the file system refuses a lock (%s): nothing stops a second run into it", folder,
                           error.strerror or error)
            yield
            return
        # A holder that ended between our open and our lock may have removed the file: lock the current one.
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)
    try:
        previous = _read_holder(fd)
        if previous:
            logger.warning("%s: taking over the lock of a run that is no longer running (%s)", folder, previous)
        me = dict(command=command, pid=os.getpid(), host=socket.gethostname(),
                  started=time.strftime("%Y-%m-%d %H:%M:%S"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked, so no other run locks this file in between
        os.close(fd)


def _read_holder(fd: int) -> str:
    """The description of the run that wrote the lock file ``fd`` ("" when it holds none yet)."""
    text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    try:
        holder = json.loads(text)
        return f"{holder['command']}, pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return f"lock file {text!r}" if text else ""
