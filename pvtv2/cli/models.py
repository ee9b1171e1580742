"""pvt models [PATTERN]: the model names, optionally with family, depths and parameter count."""

from __future__ import annotations

import argparse

from ..models import reference
from ..models.complexity import count_params, create_for_counting
from .common import format_table, select_models


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list the model names", description=__doc__)
    parser.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'pvt_v2_*'")
    parser.add_argument("-l", "--long", action="store_true", help="add family, depths, params and published top-1")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    names = select_models([args.pattern] if args.pattern else None)
    if not args.long:
        print("\n".join(names))
        return 0
    top1 = {name: row["top1"] for name, row in reference.published(reference.IMAGENET).items()}
    rows = []
    for name in names:
        model = create_for_counting(name)
        rows.append(dict(
            name=name, family=type(model).__name__, depths="-".join(map(str, model.depths)),
            params=f"{count_params(model) / 1e6:.2f}", top1=top1.get(name, "-"),  # "-": not in the papers
        ))
    headers = dict(name="model", family="family", depths="depths", params="params (M)", top1="top-1 (paper)")
    print(format_table(rows, headers, left=("name", "family")))
    return 0
