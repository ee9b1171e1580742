"""pvt table: every model's params and GFLOPs at 224x224, counted, beside the published figures
(--size 1024 adds GFLOPs at 1024x1024; models the papers do not list, such as pvt_v2_b0_li, show "-").

A figure is within tolerance when it is within 2% of the published one or within that figure's
rounding (the paper prints 0.6 GFLOPs for 0.57). Params are compared with the official code's count
where the reference has it (PVTv2), else with the paper. Exit status 1 if any figure is out of tolerance.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Sequence
from typing import Any

from ..detection.registry import DETECTORS
from ..models import min_input_size, reference
from ..models.complexity import count_flops, count_params, create_for_counting
from .common import CommandError, format_table, select_models

INPUT_SIZE = (224, 224)  # the size of the published ImageNet figures
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


def complexity_rows(names: list[str], sizes: Sequence[int] = ()) -> list[dict[str, Any]]:
    """One row per model: exact counts, published figures, differences and whether they are within tolerance
    (``None`` for the published columns of models the papers do not list); ``GFLOPs_<px>`` for each of ``sizes``."""
    paper = reference.published(reference.IMAGENET)
    rows = []
    for name in names:
        model = create_for_counting(name)
        params, flops = count_params(model), count_flops(model, INPUT_SIZE)
        at_sizes = {f"GFLOPs_{px}": count_flops(model, (px, px)) / 1e9 for px in sizes}
        if name not in paper:  # e.g. linear SRA at sizes the paper did not build: counts only
            rows.append(dict(
                model=name, params=params, flops=flops, params_M=params / 1e6, params_M_published=None,
                params_M_source=None, params_M_paper=None, params_diff_pct=None, params_ok=None,
                GFLOPs=flops / 1e9, GFLOPs_published=None, GFLOPs_diff_pct=None, GFLOPs_ok=None, ok=None,
                **at_sizes,
            ))
            continue
        cmp = reference.compare_imagenet(name, params, flops)
        rows.append(dict(
            model=name,
            params=params,
            flops=flops,
            params_M=params / 1e6,
            params_M_published=cmp["params_M"].published,
            params_M_source=cmp["params_M"].source,
            params_M_paper=paper[name]["params_M"],
            params_diff_pct=round(cmp["params_M"].diff_pct, 3),
            params_ok=cmp["params_M"].ok,
            GFLOPs=flops / 1e9,
            GFLOPs_published=cmp["GFLOPs"].published,
            GFLOPs_diff_pct=round(cmp["GFLOPs"].diff_pct, 3),
            GFLOPs_ok=cmp["GFLOPs"].ok,
            ok=cmp["params_M"].ok and cmp["GFLOPs"].ok,
            **at_sizes,
        ))
    return rows


def run(args: argparse.Namespace) -> int:
    sizes = getattr(args, "size", None) or []  # pvt demo calls run() with the table's basic arguments only
    if sizes and args.task != "classification":
        raise CommandError(f"--size counts the classification models only; the {args.task} table has its own size")
    if args.task != "classification":
        # Each task package prints its own table (its own models, input size and published columns).
        task_table = importlib.import_module(f"..{args.task}.complexity", __package__)
        return task_table.print_table(select_models(args.models), args.json)
    if any(px < 1 for px in sizes):
        raise CommandError(f"--size takes image sides in pixels (>= 1), got {' '.join(map(str, sizes))}")
    names = select_models(args.models)
    for name in names:
        if sizes and min(sizes) < min_input_size(name):
            raise CommandError(f"--size {min(sizes)} is too small for {name}: it needs at least {min_input_size(name)} "
                               f"pixels per side (choose the models with --models)")
    rows = complexity_rows(names, sizes)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        text_rows = [
            dict(
                model=r["model"],
                params=f"{r['params_M']:.2f}", params_pub=_shown(r["params_M_published"]),
                params_src=_shown(r["params_M_source"]), params_paper=_shown(r["params_M_paper"]),
                params_diff=_percent(r["params_diff_pct"]),
                flops=f"{r['GFLOPs']:.2f}", flops_pub=_shown(r["GFLOPs_published"]),
                flops_diff=_percent(r["GFLOPs_diff_pct"]),
                **{f"flops_{px}": f"{r[f'GFLOPs_{px}']:.2f}" for px in sizes},
                ok="-" if r["ok"] is None else "yes" if r["ok"] else "NO",
            )
            for r in rows
        ]
        headers = dict(
            model="model", params="params (M)", params_pub="reference", params_src="reference from", params_diff="diff",
            params_paper="paper",
            flops="GFLOPs", flops_pub="published", flops_diff="diff",
            **{f"flops_{px}": f"GFLOPs {px}" for px in sizes},
            ok="in tolerance",
        )
        print(format_table(text_rows, headers, left=("model", "params_src")))
        print("\n" + _params_note())
        if any(r["ok"] is None for r in rows):
            print('"-": no published figure (the papers have linear SRA for B2 only); counted as the others.')
    # Models without published figures have nothing to be out of tolerance with.
    return 0 if all(r["ok"] is not False for r in rows) else 1


def _params_note() -> str:
    """Which published params disagree with the released code by more than the tolerance, read from the
    reference (the paper's B0 and B1 figures leave out the 1000-class head)."""
    paper = reference.published(reference.IMAGENET)
    differ = {name: (paper[name]["params_M"], code) for name, code in reference.params_from_official_code().items()
              if not reference.matches(code, paper[name]["params_M"])}
    shown = ", ".join(f"{name} {published}M vs {code}M" for name, (published, code) in differ.items())
    return ("Params are compared with the official code's count where reference.json has it"
            + (f"; the paper's figures differ from the released code's (with the 1000-class head) for {shown}."
               if differ else "."))


def _percent(value: float | None) -> str:
    if value is None:
        return "-"
    # Adding 0.0 turns a rounded -0.0 into 0.0, so a tiny negative difference prints as +0.0%.
    return f"{round(value, 1) + 0.0:+.1f}%"


def _shown(value: Any) -> Any:
    return "-" if value is None else value
