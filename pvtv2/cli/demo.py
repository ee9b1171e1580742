"""pvt demo: a tour of the model zoo: build every model, run it on a real photo, print the params/GFLOPs table.

Not `make demo`, which trains PVTv2-B0 from scratch on scikit-learn's digits (pvt train --config
configs/digits/pvt_v2_b0.yaml) and reports its held-out accuracy.

The photo is one of scikit-learn's bundled sample images, so the demo runs offline. Without
``--weights DIR`` the models are randomly initialised: the demo shows that every model builds, classifies
and gives a 4-level pyramid at the photo's own (odd) size; with official checkpoints in DIR
(``<name>.pth``) it also prints each model's top-5 ImageNet class indices.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torchvision.transforms import v2 as transforms

from ..classification.complexity import paper_tables
from ..data.images import IMAGENET_MEAN, IMAGENET_STD
from ..engine.paper_table import all_ok, tables_text
from ..models import create_model
from .common import select_models


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="zoo tour: build every model, run it on a sample photo, print the table (no training; "
                "`make demo` trains B0 on the digits)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", metavar="PATTERN", help="shell-style filters (default: all models)")
    parser.add_argument("--weights", type=Path, metavar="DIR", help="folder of official checkpoints <name>.pth")
    parser.set_defaults(handler=run)


def sample_photo() -> torch.Tensor:
    """scikit-learn's bundled photo of a Chinese temple, (3, 427, 640) uint8."""
    from sklearn.datasets import load_sample_image

    return torch.from_numpy(load_sample_image("china.jpg").copy()).permute(2, 0, 1).contiguous()


def evaluation_transform(size: int = 224) -> transforms.Compose:
    """The paper's evaluation preprocessing: resize to size/0.875, center crop, ImageNet normalisation."""
    return transforms.Compose([
        transforms.Resize(int(size / 0.875), interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.CenterCrop(size),
        transforms.ToDtype(torch.float32, scale=True),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def run(args: argparse.Namespace) -> int:
    names = select_models(args.models)
    photo = sample_photo()
    crop = evaluation_transform()(photo).unsqueeze(0)
    full = transforms.Compose(evaluation_transform().transforms[2:])(photo).unsqueeze(0)  # no resize: odd size
    print(f"sample photo: scikit-learn china.jpg, {photo.shape[1]}x{photo.shape[2]}; "
          f"classifier input {crop.shape[2]}x{crop.shape[3]}, pyramid input {full.shape[2]}x{full.shape[3]}\n")
    for name in names:
        checkpoint = args.weights / f"{name}.pth" if args.weights else None
        pretrained = checkpoint if checkpoint is not None and checkpoint.is_file() else None
        model = create_model(name, pretrained=pretrained).eval()
        start = time.perf_counter()
        with torch.inference_mode():
            logits = model(crop)
            pyramid = model.forward_intermediates(full, intermediates_only=True)
        seconds = time.perf_counter() - start
        levels = " ".join(f"{f.shape[1]}x{f.shape[2]}x{f.shape[3]}" for f in pyramid)
        line = f"{name:13s} logits {tuple(logits.shape)}  pyramid {levels}  ({seconds:.2f} s)"
        if pretrained is not None:
            top5 = logits.softmax(-1)[0].topk(5)
            line += "  top-5 " + ", ".join(f"{i}:{p:.2f}" for p, i in zip(top5.values.tolist(), top5.indices.tolist()))
        print(line)
    print()
    tables = paper_tables(names)
    print(tables_text(tables))
    return 0 if all_ok(tables) else 1
