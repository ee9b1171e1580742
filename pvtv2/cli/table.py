"""pvt table: every model's params and GFLOPs, counted, beside the published figures.

classification (default): the ImageNet models at 224x224 (--size 1024 adds GFLOPs at 1024x1024; models the
papers do not list, such as pvt_v2_b0_li, show "-"); detection: the detectors of the paper's Tables 3 and 4
at 1280x800; segmentation: Semantic FPN at 512x512 (Table 5).

A figure is within tolerance when it is within the row's tolerance of the published one or within that
figure's rounding (the paper prints 0.6 GFLOPs for 0.57). Params are compared with the official code's count
where the reference has it (PVTv2), else with the paper. Exit status 1 if any figure is out of tolerance.
"""

from __future__ import annotations

import argparse
import importlib
import json

from ..detection.registry import DETECTORS
from ..engine.paper_table import all_ok, tables_text
from .common import CommandError, select_models

TASKS = ("classification", "detection", "segmentation")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "table", help="params and GFLOPs vs the published figures", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", metavar="PATTERN", help="shell-style filters (default: all models)")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list of objects")
    parser.add_argument(
        "--size", type=int, nargs="+", default=[], metavar="PX",
        help="classification: also count GFLOPs at PX x PX pixels (one column per size, e.g. --size 1024); "
             "no figure is published at other sizes than 224",
    )
    parser.add_argument(
        "--task", choices=TASKS, default="classification",
        help="classification: ImageNet models at 224x224 (default); detection: "
             + "; ".join(f"{' and '.join(s.title for s in DETECTORS.values() if s.paper[0] == table)} (Table {table})"
                         for table in (3, 4))
             + " at 1280x800; segmentation: Semantic FPN at 512x512",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.size and args.task != "classification":
        raise CommandError(f"--size counts the classification models only; the {args.task} table has its own size")
    task = importlib.import_module(f"..{args.task}.complexity", __package__)  # the task's own models and tables
    sizes = {"sizes": args.size} if args.task == "classification" else {}
    tables = task.paper_tables(select_models(args.models), **sizes)
    if args.json:
        print(json.dumps([row for table in tables for row in table.as_dicts()], indent=1))
    else:
        print(tables_text(tables))
    return 0 if all_ok(tables) else 1
