"""The errors the package raises for what a user gave it or the machine it runs on, as opposed to bugs.

Every layer raises these (models, data, engine, tasks), so they live at the package's root. The ``pvt``
command prints their message as one sentence and exits with their ``exit_code``; any other exception is
a bug and keeps its traceback. Each also derives from the built-in type that code calling the Python API
would expect (``ValueError`` for a bad value, ``OSError`` for the machine, ``RuntimeError`` for a run that
failed), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class PvtError(Exception):
    """Base of the errors the ``pvt`` command reports in one sentence, without a traceback."""

    exit_code = 2


class InputError(PvtError, ValueError):
    """A value, file or setting that the user gave and that cannot work (named in the message)."""


class EnvironmentProblem(PvtError, OSError):
    """Something of the machine's that the run needs and cannot get: a network, a writable folder, a package."""


class RunFailure(PvtError, RuntimeError):
    """A run that started well and could not go on (a loss that is no longer finite, a child process that died)."""

    exit_code = 1


class Interrupted(PvtError):
    """The user stopped the run (Ctrl-C); the message says what it left and how to continue."""

    exit_code = 130  # 128 + SIGINT, as shells report a process that SIGINT ended
