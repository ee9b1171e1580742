"""pvt predict: the top-k classes of images, with their probabilities.

  pvt predict cat.jpg dog.png --checkpoint runs/my_run/best.pth --topk 5
  pvt predict photo.jpg --checkpoint pvt_v2_b2.pth        # official weights: ImageNet-1K class names
  pvt predict photo.jpg --checkpoint pvt_v2_b2.pth --dtype bf16   # bfloat16 weights and images

``--dtype bf16`` converts the model to bfloat16 (half the memory); on CPUs with AVX512-BF16 or AMX its
blocks run on oneDNN's fused bfloat16 kernels (the API: ``model.to(torch.bfloat16)``, or a float32 model
under ``torch.autocast("cpu", torch.bfloat16)``). Probabilities are computed in float32 either way.

Class names come from the pvt train checkpoint (its training folders); a 1000-class head of other weights
is given the ImageNet-1K names, any other head class indices.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .common import CommandError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="top-k classes of images", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="pvt train checkpoint, or official/timm/HF weights")
    parser.add_argument("--model", metavar="NAME", help="model of the weights (default: from the checkpoint)")
    parser.add_argument("--topk", type=int, default=5, help="how many classes per image (default: 5)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--ema", action="store_true", help="use the EMA weights of a pvt train checkpoint")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                        help="weights and images in float32 or bfloat16 (default: fp32)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise CommandError(f"--topk must be at least 1, got {args.topk}")
    from ..classification.predict import predict  # the training stack (timm) is loaded for this command only

    predictions = predict(args.checkpoint, args.images, model=args.model, topk=args.topk, device=args.device,
                          dtype=DTYPES[args.dtype], use_ema=args.ema)
    for prediction in predictions:
        if args.json:
            print(json.dumps(dict(image=str(prediction.image), top=[dict(index=i, name=n, probability=p)
                                                                    for i, n, p in prediction.top])))
            continue
        print(prediction.image)
        for rank, (_, name, probability) in enumerate(prediction.top, start=1):
            print(f"  {rank}. {name:30s} {100 * probability:6.2f}%")
    return 0
