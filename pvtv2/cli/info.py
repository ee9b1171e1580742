"""pvt info NAME: a model's stages, params, FLOPs at an input size, and output features."""

from __future__ import annotations

import argparse
import json
from typing import Any

from torch import nn

from ..models import min_input_size
from ..models.complexity import count_params, create_for_counting, flop_breakdown
from .common import CommandError, format_table


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="describe one model", description=__doc__)
    parser.add_argument("name", help="model name (see 'pvt models')")
    parser.add_argument("--size", nargs=2, type=int, default=(224, 224), metavar=("H", "W"),
                        help="input size for the FLOPs (default: 224 224)")
    parser.add_argument("--features-only", action="store_true",
                        help="the backbone for dense prediction (no classification head)")
    parser.add_argument("--json", action="store_true", help="print the description as a JSON object")
    parser.set_defaults(handler=run)


def stage_rows(model: nn.Module) -> list[dict[str, Any]]:
    """Each stage's settings, read from the built model."""
    rows = []
    for i, dim in enumerate(model.embed_dims):
        block = model.blocks(i)[0]
        embed = getattr(model, f"patch_embed{i + 1}").proj
        rows.append(dict(
            stage=i + 1, depth=len(model.blocks(i)), dim=dim, heads=block.attn.num_heads,
            sr_ratio=block.attn.sr_ratio, mlp_ratio=block.mlp.fc1.out_features / dim, linear=block.attn.linear,
            patch_kernel=embed.kernel_size[0], patch_stride=embed.stride[0],
        ))
    return rows


def describe(name: str, size: tuple[int, int], features_only: bool = False) -> dict[str, Any]:
    """Everything ``pvt info`` prints, as plain data."""
    model = create_for_counting(name, features_only=features_only)
    flops = flop_breakdown(model, size)
    return dict(
        model=name,
        family=type(model).__name__,
        features_only=features_only,
        stages=stage_rows(model),
        params=count_params(model),
        input_size=list(size),
        flops=sum(flops.values()),
        attention_flops=flops.get("attention", 0),
        feature_strides=model.feature_info.reduction(),
        feature_channels=model.feature_info.channels(),
        min_input_size=model.min_input_size,
    )


def run(args: argparse.Namespace) -> int:
    smallest = min_input_size(args.name)  # also names an unknown model
    if min(args.size) < smallest:
        raise CommandError(f"--size {args.size[0]} {args.size[1]}: a {args.size[0]}x{args.size[1]} input is too small "
                           f"for {args.name}, which needs at least {smallest} pixels per side")
    info = describe(args.name, tuple(args.size), args.features_only)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    stages = [
        # Linear SRA pools keys and values to a fixed grid, so its sr ratio goes unused.
        dict(row, sr_ratio="-" if row["linear"] else row["sr_ratio"], linear="yes" if row["linear"] else "no",
             mlp_ratio=f"{row['mlp_ratio']:g}",
             patch=f"{row['patch_kernel']}x{row['patch_kernel']}/{row['patch_stride']}")
        for row in info["stages"]
    ]
    headers = dict(stage="stage", depth="depth", dim="dim", heads="heads", sr_ratio="sr ratio",
                   mlp_ratio="mlp ratio", linear="linear", patch="patch embed (k/s)")
    height, width = info["input_size"]
    print(f"{info['model']} ({info['family']}{', features only' if info['features_only'] else ''})")
    print(format_table(stages, headers))
    print(f"params:           {info['params'] / 1e6:.2f} M")
    print(f"FLOPs at {height}x{width}: {info['flops'] / 1e9:.2f} G multiply-adds "
          f"(attention matmuls {info['attention_flops'] / 1e9:.2f} G)")
    print(f"feature strides:  {', '.join(map(str, info['feature_strides']))}")
    print(f"feature channels: {', '.join(map(str, info['feature_channels']))}")
    print(f"min input size:   {info['min_input_size']} px")
    return 0
