"""Entry point of the ``pvt`` command: builds the parser from the subcommand modules and runs one."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import (bench, convert, data, demo, detection, eval, export, info, models, predict, segmentation, show, table,
               train, weights)
from .errors import DEBUG_ENV, DEBUG_FLAG, describe_failure, is_reported

# Each module adds its own subcommand; a new one (train, bench, export...) is one more entry here.
SUBCOMMANDS = (
    demo, models, table, info, weights, convert, export, bench, train, eval, predict, data, detection, segmentation,
    show,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pvt", description="Pyramid Vision Transformer (PVTv1, PVTv2) tools.")
    # Read (and taken off the command line) by main() wherever it stands; declared here for --help.
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help=f"show the full traceback of any error (or set {DEBUG_ENV}=1); anywhere on the line")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pvt`` with ``argv`` (default: the process's arguments); returns the exit status.

    The one error boundary of the command: a mistake in the user's input or environment is one sentence
    on stderr (``pvt COMMAND: error: ...``) and status 2, a run that failed midway status 1, Ctrl-C status
    130; any other exception is a bug and keeps its traceback. ``--debug`` (anywhere on the line) or
    ``PVT_DEBUG=1`` shows the traceback of every error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse has printed usage or help already
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return args.handler(args)
    except BrokenPipeError:  # `pvt ... | head`: the reader left; say nothing, as other tools
        # Python flushes stdout again at exit and would report the closed pipe then (its documented recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except BaseException as error:
        if debug or not is_reported(error):
            raise
        failure = describe_failure(error)
        print(f"pvt {args.command}: {failure.text}", file=sys.stderr)
        return failure.exit_code
