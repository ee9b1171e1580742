"""Helpers shared by the subcommands: user errors and model selection (tables: :mod:`pvtv2.engine.text_table`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..engine.allocator import keep_freed_memory
from ..engine.config import Config
from ..engine.files import check_writable
from ..engine.text_table import format_table  # noqa: F401  (the subcommands take it from here)
from ..engine.training_state import LAST
from ..errors import InputError, Interrupted
from ..models import list_models


class CommandError(InputError):
    """A user error in a command's arguments: reported as one line on stderr, exit status 2."""


def select_models(patterns: Sequence[str] | None) -> list[str]:
    """Model names matching any of the shell-style ``patterns`` (all models for none), in zoo order."""
    if not patterns:
        return list_models()
    chosen = {name for pattern in patterns for name in list_models(pattern)}
    if not chosen:
        raise CommandError(
            f"no model matches {' '.join(map(repr, patterns))}; known models: {', '.join(list_models())}"
        )
    return [name for name in list_models() if name in chosen]


class _Override(argparse.Action):
    """Collects ``--key value`` as ``(section.key, value)`` pairs, in command-line order."""

    def __init__(self, option_strings: Sequence[str], dest: str, key: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.key = key

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), (self.key, values)])


def add_config_arguments(
    parser: argparse.ArgumentParser, config_type: type[Config], config_help: str, overrides_help: str
) -> None:
    """``--config YAML``, ``--print-config`` and, per field of ``config_type``'s sections, an override
    ``--key VALUE`` (also ``--section.key VALUE``); the overrides land in ``args.overrides``."""
    parser.add_argument("--config", type=Path, required=True, metavar="YAML", help=config_help)
    parser.add_argument("--print-config", action="store_true",
                        help="print the config with the overrides applied, then exit")
    parser.add_argument("--system-allocator", action="store_true",
                        help="leave glibc's allocator as it is; by default it keeps freed memory for the run, so "
                             "big activations are not faulted in afresh every step (the process then holds its "
                             "peak memory)")
    overrides = parser.add_argument_group("config overrides", overrides_help)
    defaults = config_type().to_dict()
    old_names = {f"{old.partition('.')[0]}.{new}": old for old, new in config_type.RENAMED.items()}
    for key, section in config_type.keys().items():
        old = old_names.get(f"{section}.{key}")  # a renamed key's old option still works
        aliases = () if old is None else (f"--{old.partition('.')[2]}", f"--{old}")
        overrides.add_argument(
            f"--{key}", f"--{section}.{key}", *aliases, dest="overrides", action=_Override, key=f"{section}.{key}",
            metavar="VALUE", help=f"{section}.{key} (default: {defaults[section][key]})"
                                  + ("" if old is None else f"; formerly {old}"),
        )
    parser.set_defaults(overrides=[])


def run_training(args: argparse.Namespace, config_type: type[Config], train: Callable[[Any], Any]) -> int:
    """Load ``args.config`` with its overrides as a ``config_type`` (validated); print it (``--print-config``)
    or pass it to the task's ``train`` function."""
    config = config_type.load(args.config, args.overrides)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    # A training process allocates and frees the same big activations every step; glibc would hand them
    # back to the OS and fault them in again (engine/allocator.py). The process is ours, so keep them.
    try:
        with keep_freed_memory(enabled=not args.system_allocator):
            train(config)
    except KeyboardInterrupt:
        raise Interrupted(what_a_stopped_run_left(Path(config.run.output_dir))) from None
    return 0


def check_output_path(path: Path, option: str) -> None:
    """Fail before any work when the file or folder ``path`` (given with ``option``) cannot be written."""
    folder = path if path.is_dir() else path.parent
    check_writable(folder, f"{path}", f"choose another {option}")


def what_a_stopped_run_left(output_dir: Path) -> str:
    """What a user whose run stopped midway can do next (checkpoints are written atomically, so the last
    one is whole)."""
    last = output_dir / LAST
    if last.is_file():
        return f"{last} holds the run up to its last checkpoint: continue it with --resume auto"
    return f"no checkpoint was written to {output_dir} yet: start the run again"
