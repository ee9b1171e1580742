"""pvt seg-train / seg-eval / seg-predict: Semantic FPN semantic segmentation with PVT backbones.

  pvt seg-train --config configs/segmentation/shapes_semantic_fpn_pvt_v2_b0.yaml      # offline, CPU
  torchrun --nproc_per_node 4 -m pvtv2 seg-train --config configs/segmentation/ade20k_semantic_fpn_pvt_v2_b2.yaml \\
      --root /data/ADEChallengeData2016 --pretrained official
  pvt seg-eval --checkpoint runs/ade20k/semantic_fpn_pvt_v2_b2/last.pth --mode slide --flip
  pvt seg-predict photo.jpg --checkpoint runs/ade20k/semantic_fpn_pvt_v2_b2/last.pth --out overlay.png
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..engine.config import check_option
from ..segmentation.config import SegDataConfig, SegmentationConfig, SegTestConfig
from .common import CommandError, add_config_arguments, run_training


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    _add_train(subparsers)
    _add_eval(subparsers)
    _add_predict(subparsers)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "seg-train", help="train a Semantic FPN segmenter from a YAML config",
        description="Train (or continue) a Semantic FPN segmenter as a YAML config describes (configs/segmentation/). "
                    "The output folder gets last.pth and best.pth, metrics.jsonl, curves.png and config.yaml.\n\n"
                    + __doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="pvt seg-train --config YAML [--print-config] [--KEY VALUE ...]",
    )
    add_config_arguments(
        parser, SegmentationConfig, "configs/segmentation/<name>.yaml",
        "--resume auto|PATH continues a run; --pretrained official|PATH starts the backbone from ImageNet weights "
        "(or from a detector or segmenter checkpoint's backbone)",
    )
    parser.set_defaults(handler=run_train)


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "seg-eval", help="mIoU, mAcc, aAcc and per-class IoU of a segmentation checkpoint",
        description="Evaluate a pvt seg-train (or MMSegmentation Semantic FPN) checkpoint on the validation split "
                    "of its dataset, or of --data. Metrics are taken at each mask's own size.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", metavar="DIR", help="dataset root (default: the checkpoint's)")
    parser.add_argument("--dataset", choices=("ade20k", "folder", "shapes"),
                        help="layout of --data (default: the checkpoint's)")
    parser.add_argument("--split", choices=("train", "val"), default="val")
    parser.add_argument("--mode", choices=("whole", "slide"), help="test mode (default: the checkpoint's)")
    parser.add_argument("--stride", type=int, help="sliding-window stride (default: the checkpoint's)")
    parser.add_argument("--flip", action="store_true", help="also predict mirrored images and average")
    parser.add_argument("--scales", metavar="R,R,...", help="ratios of the test scale to average, e.g. 0.75,1.0,1.25")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--json", action="store_true", help="print the metrics as a JSON object")
    parser.set_defaults(handler=run_eval)


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "seg-predict", help="segment an image: a colour overlay with a legend",
        description="Segment IMAGE and write it with each class tinted in its colour and a legend of the classes "
                    "found (and, with --labels, the class index per pixel as a PNG).",
    )
    parser.add_argument("image", type=Path, metavar="IMAGE")
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=Path("overlay.png"), help="overlay file (default: overlay.png)")
    parser.add_argument("--labels", type=Path,
                        help="also write the class index per pixel to this file (.png or .tif: lossless)")
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the colours (default: 0.5)")
    parser.add_argument("--mode", choices=("whole", "slide"), help="test mode (default: the checkpoint's)")
    parser.add_argument("--flip", action="store_true", help="also predict the mirrored image and average")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.set_defaults(handler=run_predict)


def run_train(args: argparse.Namespace) -> int:
    from ..segmentation.train import train  # the training stack is loaded for this command only

    return run_training(args, SegmentationConfig, train)


def run_eval(args: argparse.Namespace) -> int:
    from ..segmentation.config import parse_scales
    from ..segmentation.evaluate import evaluate

    # Options that stand in for config keys are held to the same limits, before anything is loaded.
    check_option(args.stride, SegTestConfig, "slide_stride", "--stride")
    check_option(args.workers, SegDataConfig, "num_workers", "--workers")
    scales = None if args.scales is None else parse_scales(args.scales, "--scales")
    measured = evaluate(
        args.checkpoint, args.data, dataset=args.dataset, split=args.split, mode=args.mode, stride=args.stride,
        flip=args.flip, scales=scales, workers=args.workers, device=args.device, amp=args.amp,
        progress=not args.json,
    )
    if not measured.is_main:
        return 0
    if args.json:
        print(json.dumps(dict(checkpoint=str(args.checkpoint), data=str(measured.data), split=args.split,
                              images=measured.images, **measured.metrics.as_dict())))
    else:
        print(f"{measured.description}\n{measured.data} ({args.split}, {measured.images} images)")
        print(measured.metrics.table())
        print(measured.metrics.summary())
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..data.images import check_class_map_output, check_image_output
    from ..segmentation.predict import predict

    if not 0 <= args.alpha <= 1:
        raise CommandError(f"--alpha must be between 0 and 1, got {args.alpha}")
    check_image_output(args.out, "--out", [args.image, args.checkpoint])
    if args.labels is not None:
        check_class_map_output(args.labels, "--labels", inputs=[args.image, args.checkpoint, args.out])
    prediction = predict(args.checkpoint, args.image, out=args.out, labels=args.labels, alpha=args.alpha,
                         mode=args.mode, flip=args.flip, device=args.device)
    print(f"{args.image}: {', '.join(prediction.found)}\noverlay written to {args.out}")
    return 0
