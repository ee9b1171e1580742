"""pvt demo: a tour of the model zoo: build every model, run it on a real photo, print the params/GFLOPs table.

Not `make demo`, which trains PVTv2-B0 from scratch on scikit-learn's digits (pvt train --config
configs/digits/pvt_v2_b0.yaml) and reports its held-out accuracy.

The photo is one of scikit-learn's bundled sample images, so the demo runs offline. Without
``--weights DIR`` the models are randomly initialised: the demo shows that every model builds, classifies
and gives a 4-level pyramid at the photo's own (odd) size; with official checkpoints in DIR
(``<name>.pth``) it also prints each model's top-5 ImageNet class indices (:mod:`pvtv2.classification.tour`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..classification.complexity import paper_tables
from ..engine.paper_table import all_ok, tables_text
from .common import select_models


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="zoo tour: build every model, run it on a sample photo, print the table (no training; "
                "`make demo` trains B0 on the digits)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", metavar="PATTERN", help="shell-style filters (default: all models)")
    parser.add_argument("--weights", type=Path, metavar="DIR", help="folder of official checkpoints <name>.pth")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..classification.tour import tour_inputs, zoo_tour

    names = select_models(args.models)
    inputs = tour_inputs()
    print(inputs.summary() + "\n")
    for stop in zoo_tour(names, inputs, args.weights):
        print(stop.summary())
    print()
    tables = paper_tables(names)
    print(tables_text(tables))
    return 0 if all_ok(tables) else 1
