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

from ..detection.registry import DETECTORS


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


def run_attention(args: argparse.Namespace) -> int:
    from ..visualize.pictures import draw_attention

    result = draw_attention(args.image, args.out, model=args.model, pretrained=args.pretrained,
                            checkpoint=args.checkpoint, size=args.size, stage=args.stage, points=args.point,
                            rollout=args.rollout)
    _note_random_weights(args)
    heads = result.maps.shape[1]
    print(f"{args.out}: stage {args.stage}, {len(result.points)} point(s) x {heads} "
          f"{'rollout map' if args.rollout else 'head(s)'}, keys on a {result.key_grid[0]}x{result.key_grid[1]} grid")
    return 0


def run_features(args: argparse.Namespace) -> int:
    from ..visualize.pictures import FEATURE_WORDS, draw_features

    levels = draw_features(args.image, args.out, model=args.model, pretrained=args.pretrained,
                           checkpoint=args.checkpoint, size=args.size, mode=args.mode)
    _note_random_weights(args)
    shapes = ", ".join(f"{level.shape[-2]}x{level.shape[-1]}" for level in levels)
    print(f"{args.out}: pyramid levels {shapes} ({FEATURE_WORDS[args.mode]})")
    return 0


def _note_random_weights(args: argparse.Namespace) -> None:
    if args.checkpoint is None and args.pretrained is None:
        print(f"pvt show: note: {args.model} had random weights (give --pretrained official or a file)",
              file=sys.stderr)


def run_predictions(args: argparse.Namespace) -> int:
    from ..visualize.pictures import draw_predictions

    titles, rows = draw_predictions(args.images, args.out, detection=args.detection, segmentation=args.segmentation,
                                    score_threshold=args.score_threshold, device=args.device)
    print(f"{args.out}: {rows} image(s) x {len(titles)} model(s): {', '.join(titles)}")
    return 0
