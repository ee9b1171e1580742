"""pvt show: pictures of what a model sees.

  pvt show attention photo.jpg --model pvt_v2_b2 --pretrained official --stage 2 --point 120 80 --out attn.png
  pvt show features photo.jpg --checkpoint runs/digits/pvt_v2_b0/last.pth --size 128 --out pyramid.png
  pvt show predictions a.jpg b.jpg --detection retinanet/last.pth mask_rcnn/last.pth \\
      --segmentation fpn/last.pth --out fig3.png

attention: the spatial-reduction attention of every head of a stage's last block for query pixels,
mapped from the reduced key grid (SRA: sr x sr token cells; linear SRA: the 7x7 pooled cells) onto the
image. features: the four pyramid levels at strides 4-32. predictions: detections, masks and
segmentation of each image by each model, in the layout of the paper's Fig. 3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from ..data import read_image
from ..data.images import IMAGENET_MEAN, IMAGENET_STD, ModelInput
from ..detection.registry import DETECTORS
from .common import CommandError, check_score_threshold

STAGES = (1, 2, 3, 4)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show", help="pictures of attention maps, pyramid levels and predictions", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="what", required=True, metavar="WHAT")

    attention = kinds.add_parser(
        "attention", help="attention of query pixels, one panel per head",
        description="The attention of query pixels in a stage's last block, per head, mapped onto the image "
                    "(each panel scaled to its own maximum; the query marked with a cross). A key of SRA stands "
                    "for an sr x sr cell of tokens, a key of linear SRA for one cell of a 7x7 partition; its "
                    "weight is spread evenly over its cell's pixels.",
    )
    _add_model_arguments(attention)
    attention.add_argument("--stage", type=int, default=4, metavar="S",
                           help="stage 1-4 (strides 4, 8, 16, 32; default: 4)")
    attention.add_argument("--point", nargs=2, type=int, action="append", metavar=("X", "Y"),
                           help="a query pixel of the image as given (x to the right, y down, from 0); repeat for "
                                "several (one row each; default: the centre)")
    attention.add_argument(
        "--rollout", action="store_true",
        help="attention rollout instead: the product over the stage's blocks of 0.5 A + 0.5 I (A: the head-mean "
             "attention; I: the residual), one panel per point. Only in stages whose keys are their own tokens "
             "(sr_ratio 1: stage 4 of PVTv2 B0-B5 and of PVTv1): where SRA or linear SRA reduces the keys, a "
             "key stands for a window of tokens and the matrices of two blocks cannot be multiplied",
    )
    attention.set_defaults(handler=run_attention)

    features = kinds.add_parser(
        "features", help="the four pyramid levels as pictures",
        description="The four pyramid levels (strides 4, 8, 16, 32) of an image, each at its own resolution: "
                    "the first three principal components of its tokens as RGB, or the channel mean of the "
                    "absolute activations as a heat map.",
    )
    _add_model_arguments(features)
    features.add_argument("--mode", choices=("pca", "mean"), default="pca",
                          help="pca: first three principal components as RGB (default); mean: heat map of the channel "
                               "mean of the absolute activations")
    features.set_defaults(handler=run_features)

    predictions = kinds.add_parser(
        "predictions", help="a grid of detections and segmentations (the paper's Fig. 3)",
        description="One row per image, one column per checkpoint: boxes, class names, scores and masks of each "
                    f"detector checkpoint ({', '.join(spec.title for spec in DETECTORS.values())}: det-train's or an "
                    "official release file), then the class overlay of a seg-train checkpoint (Semantic FPN), as the "
                    "paper's Fig. 3. Any subset of columns.",
    )
    predictions.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predictions.add_argument("--detection", nargs="+", type=Path, default=[], metavar="CKPT",
                             help="detector checkpoints (det-train's or release files), one column each, in this order")
    predictions.add_argument("--segmentation", nargs="+", type=Path, default=[], metavar="CKPT",
                             help="seg-train (or MMSegmentation Semantic FPN) checkpoints, one column each, last")
    predictions.add_argument("--score-threshold", type=float, default=0.5,
                             help="detections with a lower score are not drawn (default: 0.5)")
    predictions.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    predictions.add_argument("--out", type=Path, required=True, metavar="FILE", help="the picture (.png, .jpg...)")
    predictions.set_defaults(handler=run_predictions)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, metavar="IMAGE", help="an image file")
    parser.add_argument("--model", metavar="NAME", help="model name (see pvt models); with --pretrained for weights")
    parser.add_argument("--pretrained", metavar="WEIGHTS",
                        help="with --model: 'official' (the release) or a weights file (official, timm, HF); "
                             "without it the weights are random")
    parser.add_argument("--checkpoint", type=Path, metavar="FILE",
                        help="a pvt train checkpoint or a classifier's weights; the model is read from it")
    parser.add_argument("--size", type=int, metavar="PX",
                        help="resize the image so that its shorter side is PX pixels first (default: as it is). "
                             "A model trained on small images (digits: 32 px) has 1x1 key grids at its own size")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="the picture (.png, .jpg...)")


# -- attention and features -------------------------------------------------------------------------------
def _model(args: argparse.Namespace) -> tuple[nn.Module, str]:
    """The model the arguments name, in eval mode, and its description (which says when weights are random)."""
    from ..models import create_model

    if args.checkpoint is not None:
        if args.pretrained is not None:
            raise CommandError("give either --checkpoint FILE or --model NAME --pretrained WEIGHTS, not both")
        from ..classification.inference import load_classifier

        loaded = load_classifier(args.checkpoint, args.model)
        return loaded.model.eval(), loaded.description
    if args.model is None:
        raise CommandError("name the model: --checkpoint FILE, or --model NAME (with --pretrained official or a file)")
    pretrained = args.pretrained
    model = create_model(args.model, pretrained=pretrained)
    return model.eval(), f"{args.model} ({'random weights' if pretrained is None else pretrained})"


def _picture(args: argparse.Namespace) -> tuple[torch.Tensor, tuple[int, int]]:
    """The image as float RGB (3, H, W) in [0, 1], resized by --size, and its size in the file (H, W)."""
    if args.size is not None and args.size < 1:
        raise CommandError(f"--size must be a positive number of pixels, got {args.size}")
    image = read_image(args.image)  # names the file when it cannot be read
    # Refused before the model is loaded: any PVT needs at least this many pixels per side, and no picture
    # may become larger than PIL opens.
    ModelInput(smallest=1, shorter=args.size).check(args.image, image.size)
    pixels = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
    original = (pixels.shape[1], pixels.shape[2])
    if args.size is not None:
        pixels = TF.resize(pixels, [args.size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    return pixels, original


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    return TF.normalize(pixels, IMAGENET_MEAN, IMAGENET_STD)


def _check_model_input(model: nn.Module, args: argparse.Namespace, original: tuple[int, int]) -> None:
    smallest = getattr(model, "min_input_size", 1)
    ModelInput(smallest=smallest, shorter=args.size).check(args.image, (original[1], original[0]))


def _points(args: argparse.Namespace, original: tuple[int, int], pixels: torch.Tensor) -> list[tuple[int, int]] | None:
    """--point pixels of the file, checked against it, in the pixels of the (resized) model input."""
    if not args.point:
        return None
    height, width = original
    scaled = []
    for x, y in args.point:
        if not (0 <= x < width and 0 <= y < height):
            raise CommandError(f"--point {x} {y} is outside image {args.image} ({width}x{height} pixels): "
                               f"give x in 0..{width - 1} and y in 0..{height - 1}")
        scaled.append((int(x * pixels.shape[2] / width), int(y * pixels.shape[1] / height)))
    return scaled


def run_attention(args: argparse.Namespace) -> int:
    from ..visualize import attention_maps
    from ..visualize.figures import attention_figure, check_figure_output, save

    if args.stage not in STAGES:
        raise CommandError(f"--stage {args.stage} does not exist: PVT models have stages 1 to 4")
    check_figure_output(args.out, "--out", [args.image])
    pixels, original = _picture(args)
    model, description = _model(args)
    _check_model_input(model, args, original)
    points = _points(args, original, pixels)
    result = attention_maps(model, _normalise(pixels), stage=args.stage, points=points, rollout=args.rollout)
    block = "rollout over its" if args.rollout else f"block {result.block + 1} of"
    blocks = len(model.blocks(args.stage - 1))
    title = (f"{description}\nstage {args.stage}, {block} {blocks}: queries on {result.token_grid[0]}x"
             f"{result.token_grid[1]} tokens, keys on {result.key_grid[0]}x{result.key_grid[1]} cells")
    save(attention_figure(pixels.permute(1, 2, 0).numpy(), result, title), args.out)
    _note_random_weights(args)
    heads = result.maps.shape[1]
    print(f"{args.out}: stage {args.stage}, {len(result.points)} point(s) x {heads} "
          f"{'rollout map' if args.rollout else 'head(s)'}, keys on a {result.key_grid[0]}x{result.key_grid[1]} grid")
    return 0


def run_features(args: argparse.Namespace) -> int:
    from ..visualize import feature_maps
    from ..visualize.figures import check_figure_output, features_figure, save

    check_figure_output(args.out, "--out", [args.image])
    pixels, original = _picture(args)
    model, description = _model(args)
    _check_model_input(model, args, original)
    levels = feature_maps(model, _normalise(pixels), args.mode)
    what = "first 3 principal components as RGB" if args.mode == "pca" else "channel mean of |activation|"
    save(features_figure(pixels.permute(1, 2, 0).numpy(), levels, model.embed_dims, f"{description}: {what}"),
         args.out)
    _note_random_weights(args)
    shapes = ", ".join(f"{level.shape[-2]}x{level.shape[-1]}" for level in levels)
    print(f"{args.out}: pyramid levels {shapes} ({what})")
    return 0


def _note_random_weights(args: argparse.Namespace) -> None:
    if args.checkpoint is None and args.pretrained is None:
        print(f"pvt show: note: {args.model} had random weights (give --pretrained official or a file)",
              file=sys.stderr)


# -- predictions ------------------------------------------------------------------------------------------
def run_predictions(args: argparse.Namespace) -> int:
    from ..detection.loading import load_detector
    from ..detection.predict import detect, draw
    from ..engine.distributed import resolve_device
    from ..segmentation.predict import load_segmenter, overlay, segment
    from ..visualize.figures import check_figure_output, predictions_figure, save

    if not args.detection and not args.segmentation:
        raise CommandError("give at least one checkpoint: --detection CKPT... and/or --segmentation CKPT...")
    check_score_threshold(args.score_threshold)
    check_figure_output(args.out, "--out", [*args.images, *args.detection, *args.segmentation])
    pictures = {path: np.asarray(read_image(path)).copy() for path in args.images}  # each file read once, named if bad
    columns: list[tuple[str, Any]] = []
    for loaded in [*(load_detector(path, args.device) for path in args.detection),
                   *(load_segmenter(path) for path in args.segmentation)]:
        columns.append((_unique(columns, loaded.title), loaded))
    # Every picture against every model's resize, before any model runs.
    for path, pixels in pictures.items():
        for _, loaded in columns:
            loaded.model_input().check(path, (pixels.shape[1], pixels.shape[0]))
    device = resolve_device(args.device)
    rows = []
    for path, pixels in pictures.items():
        cells = {}
        for title, loaded in columns:
            if loaded.task == "detection":
                image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
                drawing = draw(image, detect(loaded, image, args.score_threshold), loaded.class_names)
                cells[title] = drawing.permute(1, 2, 0).numpy()
            else:
                labels = segment(loaded, pixels, device)
                cells[title] = np.asarray(overlay(pixels, labels, loaded.class_names, colours=loaded.colours))
        rows.append((path.name, cells))
    titles = [title for title, _ in columns]
    save(predictions_figure(rows, titles), args.out)
    print(f"{args.out}: {len(rows)} image(s) x {len(titles)} model(s): {', '.join(titles)}")
    return 0


def _unique(columns: list[tuple[str, Any]], title: str) -> str:
    """``title``, numbered when an earlier column has it already (two checkpoints of the same kind)."""
    taken = {t for t, _ in columns}
    if title not in taken:
        return title
    return next(f"{title} ({n})" for n in range(2, len(columns) + 2) if f"{title} ({n})" not in taken)
