"""pvt export NAME: write a model as ONNX (onnxruntime-ready) or a torch.export program, with dynamic
batch, height and width, and check the result against PyTorch at sizes other than the example's."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..engine.files import check_output_file
from ..models import create_model, download
from ..models.conversion import detect_checkpoint_format, head_classes
from ..models.export import MAX_EXPORT_SIDE, MIN_EXPORT_SIDE, export_checked
from ..models.factory import OFFICIAL
from ..models.loading import read_checkpoint
from .common import CommandError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export to ONNX or torch.export", description=__doc__)
    parser.add_argument("name", help="model name, e.g. pvt_v2_b2")
    parser.add_argument("--format", choices=("onnx", "torch-export"), default="onnx")
    parser.add_argument("--out", type=Path, help="output file (default: NAME.onnx or NAME.pt2)")
    parser.add_argument("--pretrained", metavar="CHECKPOINT",
                        help="weights to load: a checkpoint path, or 'official' for the release file")
    parser.add_argument("--features-only", action="store_true", help="export the 4-level pyramid instead of logits")
    parser.add_argument("--num-classes", type=int, metavar="N",
                        help="classes of the head: by default the checkpoint's (with --pretrained), else 1000; "
                             "0: no head (pooled features)")
    parser.add_argument("--no-check", action="store_true", help="skip comparing the exported model with PyTorch")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    suffix = ".onnx" if args.format == "onnx" else ".pt2"
    out = args.out if args.out is not None else Path(args.name + ("_features" if args.features_only else "") + suffix)
    # Before the export's tens of seconds of work.
    check_output_file(out, "--out", (suffix,), "an ONNX model" if args.format == "onnx" else "a torch.export program")
    source = download.fetch(args.name) if args.pretrained == OFFICIAL else args.pretrained
    num_classes = head_size(args, None if source is None else read_checkpoint(source))
    model = create_model(args.name, pretrained=source, features_only=args.features_only,
                         num_classes=num_classes).eval()
    print(f"exporting {args.name} to {out} (dynamic batch; height and width {MIN_EXPORT_SIDE}..{MAX_EXPORT_SIDE})")
    checker = "onnxruntime" if args.format == "onnx" else "exported program"
    for (batch, height, width), error in export_checked(model, out, args.format, check=not args.no_check):
        print(f"  {checker} vs PyTorch at {batch}x{height}x{width}: relative error {error:.1e}")
    print(f"wrote {out}" + ("" if source is not None else " (random weights: give --pretrained for trained ones)"))
    return 0


def head_size(args: argparse.Namespace, weights: dict[str, torch.Tensor] | None) -> int:
    """The classes of the exported head: the checkpoint's (0, pooled features, for a backbone), so that no
    head is left random; an explicit --num-classes that the checkpoint's head does not have is refused."""
    if args.num_classes is not None and args.num_classes < 0:
        raise CommandError(f"--num-classes {args.num_classes}: num_classes must be an integer >= 0 (0: no "
                           f"classification head)")
    if weights is None or args.features_only:
        return 1000 if args.num_classes is None else args.num_classes
    trained = head_classes(weights, detect_checkpoint_format(weights, f"checkpoint {args.pretrained}"))
    wanted = trained if args.num_classes is None else args.num_classes
    if wanted not in (trained, 0):  # 0: the checkpoint's head left out on purpose
        has = f"a {trained}-class head" if trained else "no classification head (a backbone)"
        keep = (f"leave out --num-classes to export its {trained} classes" if trained else
                "export the pyramid with --features-only, or the pooled features with --num-classes 0")
        raise CommandError(f"checkpoint {args.pretrained} has {has}, so a {wanted}-class head would be exported with "
                           f"random weights; {keep}")
    if wanted == 0 and args.num_classes is None:
        print(f"pvt export: note: {args.pretrained} has no classification head: exporting the pooled features",
              file=sys.stderr)
    return wanted
