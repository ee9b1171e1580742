"""pvt train: train a classifier (or fine-tune one) as a YAML config describes.

  pvt train --config configs/digits/pvt_v2_b0.yaml
  pvt train --config configs/imagenet/pvt_v2_b2.yaml --root /data/imagenet --epochs 100
  pvt train --config configs/imagenet/pvt_v2_b0.yaml --resume auto
  torchrun --nproc_per_node 8 -m pvtv2 train --config configs/imagenet/pvt_v2_b2.yaml --root /data/imagenet

Every config key can be overridden as --key value or --section.key value (listed below). The output
folder (run.output_dir) gets last.pth and best.pth (checkpoints), metrics.jsonl, curves.png and the
resolved config.yaml.
"""

from __future__ import annotations

import argparse

from ..classification.config import ClassificationConfig
from .common import add_config_arguments, run_training


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train or fine-tune a classifier from a YAML config", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="pvt train --config YAML [--print-config] [--KEY VALUE ...]",
    )
    add_config_arguments(
        parser, ClassificationConfig, "configs/<dataset>/<model>.yaml",
        "--resume auto|PATH continues a run; --pretrained PATH|official fine-tunes from weights "
        "(a head with another number of classes is replaced)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..classification.train import train  # the training stack (timm) is loaded for this command only

    return run_training(args, ClassificationConfig, train)
