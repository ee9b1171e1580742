"""pvt data: write the generated data sets that detection and segmentation use by default.

``pvt data shapes OUT`` writes a COCO-format instance data set (``OUT/{train,val}`` images and
``OUT/annotations/instances_{train,val}.json``); ``pvt data shapes-seg OUT`` writes an ADE20K-format
semantic data set (``OUT/images/{training,validation}``, ``OUT/annotations/{training,validation}``).
Scenes are coloured circles, squares and triangles on textured backgrounds; the same seed writes the
same files.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..data.shapes import DEFAULT_SIZE_RANGE, write_coco_shapes, write_segmentation_shapes
from .common import CommandError

WRITERS = {"shapes": write_coco_shapes, "shapes-seg": write_segmentation_shapes}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="write a generated shapes data set (COCO or ADE20K format)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=sorted(WRITERS), help="shapes: COCO instances; shapes-seg: ADE20K semantic")
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--train", type=int, default=400, help="training scenes (default: 400)")
    parser.add_argument("--val", type=int, default=100, help="validation scenes (default: 100)")
    parser.add_argument("--size", type=int, default=128, help="scene side in pixels (default: 128)")
    parser.add_argument("--max-objects", type=int, default=4, help="most shapes per scene (default: 4)")
    parser.add_argument("--shape-size", type=float, nargs=2, default=DEFAULT_SIZE_RANGE, metavar=("LOW", "HIGH"),
                        help="shape sizes as fractions of the scene side (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.train < 1 or args.val < 1:
        raise CommandError(f"--train and --val must be at least 1, got {args.train} and {args.val}")
    if args.size < 32:
        raise CommandError(f"--size must be at least 32 pixels (the shapes need room), got {args.size}")
    if args.max_objects < 1:
        raise CommandError(f"--max-objects must be at least 1, got {args.max_objects}")
    started = time.perf_counter()
    out = WRITERS[args.kind](
        args.out, args.train, args.val, args.size, args.seed, args.max_objects, tuple(args.shape_size)
    )
    print(f"wrote {args.train} training and {args.val} validation scenes ({args.size}x{args.size}) to {out} "
          f"in {time.perf_counter() - started:.1f} s")
    return 0
