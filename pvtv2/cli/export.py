"""pvt export NAME: write a model as ONNX (onnxruntime-ready) or a torch.export program, with dynamic
batch, height and width, and check the result against PyTorch at sizes other than the example's."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..models import create_model
from ..models.export import MAX_EXPORT_SIDE, MIN_EXPORT_SIDE, check_onnx, export_onnx, export_program
from .common import CommandError, check_output_path

CHECK_SIZES = [(1, 224, 224), (2, 250, 333), (1, 512, 384)]  # (batch, height, width)
TOLERANCE = 1e-4


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export to ONNX or torch.export", description=__doc__)
    parser.add_argument("name", help="model name, e.g. pvt_v2_b2")
    parser.add_argument("--format", choices=("onnx", "torch-export"), default="onnx")
    parser.add_argument("--out", type=Path, help="output file (default: NAME.onnx or NAME.pt2)")
    parser.add_argument("--pretrained", metavar="CHECKPOINT",
                        help="weights to load: a checkpoint path, or 'official' for the release file")
    parser.add_argument("--features-only", action="store_true", help="export the 4-level pyramid instead of logits")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--no-check", action="store_true", help="skip comparing the exported model with PyTorch")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    suffix = ".onnx" if args.format == "onnx" else ".pt2"
    out = args.out or Path(args.name + ("_features" if args.features_only else "") + suffix)
    check_output_path(out, "--out")  # before the export's tens of seconds of work
    model = create_model(args.name, pretrained=args.pretrained, features_only=args.features_only,
                         num_classes=args.num_classes).eval()
    print(f"exporting {args.name} to {out} (dynamic batch; height and width {MIN_EXPORT_SIDE}..{MAX_EXPORT_SIDE})")
    if args.format == "onnx":
        export_onnx(model, out)
        if not args.no_check:
            errors = check_onnx(model, out, CHECK_SIZES)
            for (batch, height, width), error in zip(CHECK_SIZES, errors):
                print(f"  onnxruntime vs PyTorch at {batch}x{height}x{width}: relative error {error:.1e}")
            if max(errors) > TOLERANCE:
                raise CommandError(f"the exported model differs from PyTorch by {max(errors):.1e} (> {TOLERANCE})")
    else:
        program = export_program(model)
        torch.export.save(program, out)
        if not args.no_check:
            x = torch.randn(*CHECK_SIZES[1][:1], getattr(model, "in_chans", 3), *CHECK_SIZES[1][1:])
            with torch.no_grad():
                expected, got = model(x), torch.export.load(out).module()(x)
            expected, got = (expected, got) if isinstance(expected, list) else ([expected], [got])
            error = max(float((g - e).abs().max() / e.abs().max()) for g, e in zip(got, expected))
            print(f"  exported program vs eager at 2x250x333: relative error {error:.1e}")
    print(f"wrote {out}")
    return 0
