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
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engine.config import SECTIONS, config_yaml, field_names, load_config


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train or fine-tune a classifier from a YAML config", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="pvt train --config YAML [--print-config] [--KEY VALUE ...]",
    )
    parser.add_argument("--config", type=Path, required=True, metavar="YAML", help="configs/<dataset>/<model>.yaml")
    parser.add_argument("--print-config", action="store_true",
                        help="print the config with the overrides applied, then exit")
    overrides = parser.add_argument_group(
        "config overrides", "--resume auto|PATH continues a run; --pretrained PATH|official fine-tunes from weights "
        "(a head with another number of classes is replaced)",
    )
    defaults = {section: dataclasses.asdict(cls()) for section, cls in SECTIONS.items()}
    for key, section in field_names().items():
        overrides.add_argument(
            f"--{key}", f"--{section}.{key}", dest="overrides", action=_Override, key=f"{section}.{key}",
            metavar="VALUE", help=f"{section}.{key} (default: {defaults[section][key]})",
        )
    parser.set_defaults(handler=run, overrides=[])


class _Override(argparse.Action):
    """Collects ``--key value`` as ``(section.key, value)`` pairs, in command-line order."""

    def __init__(self, option_strings: Sequence[str], dest: str, key: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.key = key

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), (self.key, values)])


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if args.print_config:
        print(config_yaml(config), end="")
        return 0
    from ..engine.train import train  # the training stack (timm...) only when training

    train(config)
    return 0
