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

from .common import CommandError


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
    from torch.utils.data import DataLoader

    from ..classification.config import AugmentConfig, DataConfig, OptimConfig
    from ..classification.datasets import ImageFolder, eval_folder
    from ..classification.digits import Digits
    from ..classification.evaluate import evaluate
    from ..classification.inference import load_classifier
    from ..classification.transforms import eval_resize, eval_transform
    from ..data.images import ModelInput
    from ..engine import distributed
    from ..engine.config import check_option
    from ..engine.distributed import shard
    from ..models import min_input_size

    # Options that stand in for config keys are held to the same limits (0 is a value, not "the default").
    check_option(args.img_size, DataConfig, "img_size", "--img-size")
    check_option(args.crop_pct, AugmentConfig, "eval_crop_pct", "--crop-pct")
    check_option(args.batch_size, OptimConfig, "batch_size", "--batch-size")
    check_option(args.workers, DataConfig, "num_workers", "--workers")
    env = distributed.setup(args.device)
    try:
        classifier = load_classifier(args.checkpoint, args.model, use_ema=args.ema)
        img_size = classifier.img_size if args.img_size is None else args.img_size
        crop_pct = classifier.crop_pct if args.crop_pct is None else args.crop_pct
        smallest = min_input_size(classifier.model_name)
        if img_size < smallest:
            raise CommandError(f"--img-size {img_size} is too small for {classifier.model_name}: it needs at least "
                               f"{smallest} pixels per side")
        transform = eval_transform(img_size, crop_pct, classifier.interpolation)
        if args.data == "digits":
            dataset, where = Digits("val", img_size, transform), "digits (held-out split)"
        else:
            folder = eval_folder(args.data)
            resized = ModelInput(smallest=1, shorter=eval_resize(img_size, crop_pct))  # refuses a sliver by name
            dataset, where = ImageFolder(folder, transform, args.bad_images, resized), str(folder)
        if len(dataset.classes) != len(classifier.class_names) or (
            classifier.from_training and list(dataset.classes) != classifier.class_names
        ):
            raise CommandError(
                f"{where} has {len(dataset.classes)} classes ({', '.join(dataset.classes[:5])}...), but the "
                f"classifier has {len(classifier.class_names)} ({', '.join(classifier.class_names[:5])}...)"
            )
        workers = 0 if args.data == "digits" else args.workers  # the digits are in memory already
        loader = DataLoader(shard(dataset, env.rank, env.world_size), args.batch_size, num_workers=workers,
                            pin_memory=env.device.type == "cuda")
        result = evaluate(classifier.model.to(env.device), loader, env.device, args.amp)
    finally:
        distributed.cleanup()
    if not env.is_main:
        return 0
    if args.json:
        print(json.dumps(dict(model=classifier.model_name, checkpoint=str(args.checkpoint), data=where,
                              img_size=img_size, resize=eval_resize(img_size, crop_pct), top1=result.top1,
                              top5=result.top5, loss=result.loss, images=result.images)))
    else:
        print(f"{classifier.description}\n{where}: resize {eval_resize(img_size, crop_pct)}, center crop {img_size}")
        print(result.summary())
    return 0
