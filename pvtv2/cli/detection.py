"""pvt det-train, det-eval, det-predict: {titles} with PVT backbones on COCO-format data.

  pvt det-train --config configs/detection/shapes_mask_rcnn_pvt_v2_b0.yaml      # offline: generated shapes
  pvt det-train --config configs/detection/mask_rcnn_pvt_v2_b2_1x.yaml --root /data/coco --pretrained official
  torchrun --nproc_per_node 8 -m pvtv2 det-train --config configs/detection/retinanet_pvt_v2_b2_1x.yaml
  torchrun --nproc_per_node 8 -m pvtv2 det-train --config configs/detection/gfl_pvt_v2_b2_3x.yaml --root /data/coco
  pvt det-eval --checkpoint runs/detection/shapes_mask_rcnn_pvt_v2_b0/last.pth
  pvt det-predict scene.png --checkpoint runs/detection/shapes_mask_rcnn_pvt_v2_b0/last.pth --out result.png
  pvt det-predict photo.jpg --checkpoint retinanet_pvt_v2_b0_fpn_1x_coco.pth --out result.png --json
  pvt det-eval --checkpoint mask_rcnn_pvt_v2_b0_fpn_1x_coco.pth --root /data/coco

det-eval and det-predict take a det-train checkpoint or an official release file of the paper's detectors
(MMDetection 2.x, as downloaded: `pvt weights list --task detection`); a release file runs as MMDetection runs
it. --config names an MMDetection config file for a release file whose meta has none.

det-train: every config key can be overridden as --key value or --section.key value (see
`pvt det-train --help`); the output folder gets last.pth, best.pth (highest box AP), metrics.jsonl (one
JSON line per epoch: losses, lr, throughput, COCO AP figures) and the resolved config.yaml. The config's lr
is for a total batch of lr_base_batch (16) and scales with the run's total batch; --train_augment official|paper
picks the 3x multi-scale recipe (the official configs' or the paper's text).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.images import check_image_output
from ..detection.config import DetDataConfig, DetectionConfig, DetOptimConfig
from ..detection.registry import DETECTORS
from ..engine.config import check_option
from ..engine.files import check_output_file
from ..files import written_atomically
from .common import CommandError, add_config_arguments, run_training

_TITLES = ", ".join(spec.title for spec in DETECTORS.values())


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "det-train", help=f"train a {_TITLES} with a PVT backbone from a YAML config",
        description=__doc__.format(titles=_TITLES), formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="pvt det-train --config YAML [--print-config] [--KEY VALUE ...]",
    )
    add_config_arguments(
        train, DetectionConfig, "configs/detection/<name>.yaml",
        "--resume auto|PATH continues a run; --pretrained PATH|official starts the backbone from ImageNet weights "
        "(or from a detector or segmenter checkpoint's backbone)",
    )
    train.set_defaults(handler=run_train)

    evaluate = subparsers.add_parser(
        "det-eval", help="COCO box (and mask) AP of a detection checkpoint",
        description="COCO box and mask AP, AP50, AP75, APs/m/l (pycocotools, as MMDetection's CocoMetric) of a "
                    "det-train checkpoint on the held-out split of its config's data set, or of another COCO-format "
                    "split, or of an official release file on COCO.",
    )
    evaluate.add_argument("--checkpoint", required=True, type=Path,
                          help="a det-train checkpoint (last.pth, best.pth) or an official release file")
    evaluate.add_argument("--config", type=Path, help="the MMDetection config file of a release file without one")
    evaluate.add_argument("--root", help="data set root (default: the checkpoint's config; a release file needs it)")
    evaluate.add_argument("--split", help="split to evaluate: root/SPLIT images, root/annotations/instances_SPLIT.json "
                                          "(default: the config's val_split; val2017 for a release file)")
    evaluate.add_argument("--batch-size", type=int, default=2)
    evaluate.add_argument("--workers", type=int, default=2)
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    evaluate.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast on GPU")
    evaluate.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    evaluate.set_defaults(handler=run_eval)

    predict = subparsers.add_parser(
        "det-predict", help="draw a detector's boxes, labels, scores and masks on an image",
        description="Boxes, class names, scores and instance masks of a det-train checkpoint or an official release "
                    "file, drawn on the image (as the paper's Fig. 3) and listed.",
    )
    predict.add_argument("image", type=Path, metavar="IMAGE")
    predict.add_argument("--checkpoint", required=True, type=Path,
                         help="a det-train checkpoint or an official release file")
    predict.add_argument("--config", type=Path, help="the MMDetection config file of a release file without one")
    predict.add_argument("--out", required=True, type=Path, help="where to write the drawing (PNG or JPEG)")
    predict.add_argument("--score-threshold", type=float, default=0.5, help="detections drawn (default: 0.5)")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    predict.add_argument("--json", action="store_true",
                         help="print the detections as JSON: label (class name), score, box [x0, y0, x1, y1] in image "
                              "pixels and, for mask detectors, mask as COCO RLE")
    predict.set_defaults(handler=run_predict)


def run_train(args: argparse.Namespace) -> int:
    from ..detection.train import train  # the detection stack (torchvision detection, pycocotools) only here

    return run_training(args, DetectionConfig, train)


def run_eval(args: argparse.Namespace) -> int:
    from ..detection.coco_metric import NO_FIGURE
    from ..detection.evaluate import evaluate

    check_option(args.batch_size, DetOptimConfig, "batch_size", "--batch-size")
    check_option(args.workers, DetDataConfig, "num_workers", "--workers")
    if args.json is not None:
        check_output_file(args.json, "--json", (".json",), "the figures", [args.checkpoint])
    metrics = evaluate(args.checkpoint, args.root, split=args.split, batch_size=args.batch_size,
                       workers=args.workers, device=args.device, amp=args.amp, config=args.config)
    # pycocotools' -1 marks a figure that has no ground truth (APs of a split without small objects): it is
    # shown as such, never as a number.
    for name, value in metrics.items():
        print(f"{name:12s} " + (f"{value:.4f}" if value != NO_FIGURE else "n/a (no ground truth of this kind)"))
    if args.json is not None:
        figures = {name: None if value == NO_FIGURE else value for name, value in metrics.items()}
        with written_atomically(args.json) as temporary:
            temporary.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..detection.predict import check_score_threshold, predict

    if not args.image.is_file():
        raise CommandError(f"image {args.image} does not exist")
    check_score_threshold(args.score_threshold)
    check_image_output(args.out, "--out", [args.image, args.checkpoint])
    detections = predict(args.checkpoint, args.image, out=args.out, score_threshold=args.score_threshold,
                         device=args.device, config=args.config)
    if args.json:
        print(json.dumps(dict(image=str(args.image), out=str(args.out), detections=detections)))
        return 0
    print(f"{args.image}: {len(detections)} detections with score >= {args.score_threshold:g}, drawn in {args.out}")
    for d in detections:
        x0, y0, x1, y1 = d["box"]
        print(f"  {d['label']:20s} {d['score']:.3f}  box ({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f})")
    return 0
