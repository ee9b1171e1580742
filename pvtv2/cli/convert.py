"""``pvt convert IN OUT --to official|timm|hf|safetensors|mmdet|mmseg|pvtv2 [--model NAME]``: rewrite a checkpoint
in another layout.

A backbone (--to official|timm|hf|safetensors): IN may be an official, timm or HF checkpoint (.pth,
.safetensors or an HF folder), a training checkpoint that wraps one, or an MMDetection / MMSegmentation
checkpoint, whose backbone is taken. The model is inferred from the keys and shapes unless --model names it.
OUT is a folder for --to hf (config.json and model.safetensors, loadable with transformers'
from_pretrained), a file otherwise.

A whole detector or segmenter: --to mmdet (--to mmseg) writes a det-train (seg-train) checkpoint in the
official release's layout (MMDetection 2.x / 3.x, MMSegmentation 0.x / 1.x load it with strict keys into the
official config's model); --to pvtv2 writes a release file as a det-train or seg-train checkpoint (model only,
with the release's test settings).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.conversion import TARGETS, check_destination, convert_checkpoint
from ..engine.files import check_output_file
from .common import check_output_path

MODEL_TARGETS = ("mmdet", "mmseg", "pvtv2")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a checkpoint between official, timm, HF and safetensors", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", type=Path, metavar="IN", help="checkpoint file or HF folder")
    parser.add_argument("destination", type=Path, metavar="OUT", help="file to write (a folder for --to hf)")
    parser.add_argument("--to", required=True, choices=(*TARGETS, *MODEL_TARGETS),
                        help="layout to write: a backbone's (official, timm, hf, safetensors) or a whole detector's "
                             "or segmenter's (mmdet, mmseg: the release layout; pvtv2: a det-train or seg-train "
                             "checkpoint)")
    parser.add_argument("--model", metavar="NAME", help="the model it holds (default: inferred from the file)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.to in MODEL_TARGETS:  # a torch pickle, as the release files and our training checkpoints
        check_output_file(args.destination, "OUT", (".pth", ".pt"), "a checkpoint", [args.source])
    else:
        check_destination(args.destination, args.to)
        check_output_path(args.destination, "OUT")
    if args.to in MODEL_TARGETS:
        from ..segmentation.release import holds_segmenter

        if args.to == "mmseg" or (args.to == "pvtv2" and holds_segmenter(args.source)):
            from ..segmentation.release import CONVERTER
        else:
            from ..detection.release import CONVERTER
        print(CONVERTER.convert(args.source, args.destination, args.to))
        return 0
    done = convert_checkpoint(args.source, args.destination, args.to, args.model)
    if done.backbone_only:
        parts = sorted({key.split(".", 1)[0] for key in done.dropped})
        print(f"{args.source} is a detector or segmenter checkpoint: took its backbone, left out "
              f"{len(done.dropped)} tensors of {', '.join(parts)}")
    head = f"{done.num_classes}-class head" if done.num_classes else "no classification head"
    print(f"{args.destination}: {done.model} ({head}), {done.source_format} -> {done.target}")
    return 0
