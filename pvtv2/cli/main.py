"""Entry point of the ``pvt`` command: builds the parser from the subcommand modules and runs one."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import bench, convert, data, demo, detection, eval, export, info, models, predict, segmentation, table, train, weights
from .common import CommandError

# Each module adds its own subcommand; a new one (train, bench, export...) is one more entry here.
SUBCOMMANDS = (
    demo, models, table, info, weights, convert, export, bench, train, eval, predict, data, detection, segmentation,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pvt", description="Pyramid Vision Transformer (PVTv1, PVTv2) tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pvt`` with ``argv`` (default: the process's arguments); returns the exit status.

    Bad input (unknown model, impossible size...) is one line on stderr and status 2, as for bad usage.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse has printed usage or help already
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return args.handler(args)
    except (CommandError, ValueError) as error:
        print(f"pvt {args.command}: error: {error}", file=sys.stderr)
        return 2
