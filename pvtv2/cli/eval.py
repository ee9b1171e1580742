"""pvt eval: top-1, top-5 and loss of a classifier on an image folder (or the digits' held-out split).

The checkpoint is one of pvt train's (its model, classes and image size are read from it) or any weights
the zoo loads: the official release, a timm file, an HF folder, a safetensors file (give --model, or the
model is recognised from the keys and shapes). Images are resized to img-size / crop-pct and center
cropped to img-size: 256 and 224 as in the paper for weights that are not ours.

  pvt eval --checkpoint runs/digits/pvt_v2_b0/last.pth --data digits
  pvt eval --checkpoint pvt_v2_b2.pth --data /data/imagenet          # uses /data/imagenet/val
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..engine.config import check_option


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="top-1 / top-5 / loss of a checkpoint on a dataset", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="pvt train checkpoint, or official/timm/HF weights")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="folder of class folders, a root with val/, or 'digits'")
    parser.add_argument("--model", metavar="NAME", help="model of the weights (default: from the checkpoint)")
    parser.add_argument("--img-size", type=int, help="center-crop size (default: the training size, else 224)")
    parser.add_argument("--crop-pct", type=float,
                        help="crop / resize ratio (default: the training config's, else 0.875)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="data-loading processes (default: 4, or fewer on a smaller machine)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                        help="autocast on GPU (default: none, float32)")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a pvt train checkpoint")
    parser.add_argument("--bad-images", choices=("error", "skip"), default="error",
                        help="an unreadable image stops the evaluation (error) or is skipped")
    parser.add_argument("--json", action="store_true", help="print the result as a JSON object")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, so that the other subcommands do not load the training stack (timm).
    from ..classification.config import AugmentConfig, DataConfig, OptimConfig
    from ..classification.evaluate import evaluate

    # Options that stand in for config keys are held to the same limits (0 is a value, not "the default").
    check_option(args.img_size, DataConfig, "img_size", "--img-size")
    check_option(args.crop_pct, AugmentConfig, "eval_crop_pct", "--crop-pct")
    check_option(args.batch_size, OptimConfig, "batch_size", "--batch-size")
    check_option(args.workers, DataConfig, "num_workers", "--workers")
    measured = evaluate(
        args.checkpoint, args.data, model=args.model, img_size=args.img_size, crop_pct=args.crop_pct,
        batch_size=args.batch_size, workers=args.workers, device=args.device, amp=args.amp, use_ema=args.ema,
        bad_images=args.bad_images,
    )
    if not measured.is_main:
        return 0
    result = measured.result
    if args.json:
        print(json.dumps(dict(model=measured.model_name, checkpoint=str(args.checkpoint), data=measured.data,
                              img_size=measured.img_size, resize=measured.resize, top1=result.top1,
                              top5=result.top5, loss=result.loss, images=result.images)))
    else:
        print(f"{measured.description}\n{measured.data}: resize {measured.resize}, center crop {measured.img_size}")
        print(result.summary())
    return 0
