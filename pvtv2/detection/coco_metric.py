"""COCO evaluation with pycocotools as MMDetection's ``CocoMetric`` runs it: box AP (and mask AP for the
mask detectors), AP50, AP75 and AP for small, medium and large objects, over a data set's ground-truth JSON.

As ``CocoMetric``: up to 100, 300 and 1,000 detections per image (``maxDets``; the figures are read at the last,
so a detector that keeps 300 per image, as Sparse R-CNN, is scored on all of them), the categories of the
detector's classes only, every image of the split, and mask results without their box (so that the size
ranges of mask AP go by the mask's area). Figures are fractions (0.382), as pycocotools gives them; the paper
prints them x 100 (38.2).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import DatasetError
from ..engine import distributed
from ..engine.optim import autocast
from .data import CocoDetection
from .transform import MASK_THRESHOLD

# pycocotools' summary order: COCOeval.stats[i] for the first six figures.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MAX_DETECTIONS = [100, 300, 1000]  # CocoMetric's proposal_nums, its maxDets
NO_FIGURE = -1.0  # pycocotools' mark for a figure without ground truth (no small objects for APs, say)


def to_coco_results(output: dict[str, torch.Tensor], image_id: int, category_ids: list[int]) -> list[dict[str, Any]]:
    """One image's detections in COCO result format: xywh boxes, dataset category ids, RLE masks if any."""
    boxes = output["boxes"].float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = output["scores"].float().cpu().tolist()
    labels = output["labels"].cpu().tolist()
    results = [{"image_id": image_id, "category_id": category_ids[label - 1], "bbox": box, "score": score}
               for box, score, label in zip(xywh, scores, labels)]
    if "masks" in output:
        for result, rle in zip(results, mask_rles(output["masks"])):
            result["segmentation"] = rle
    return results


def mask_rles(masks: torch.Tensor) -> list[dict[str, Any]]:
    """Mask probabilities (N, 1, H, W) as COCO RLE dicts of the masks they threshold to, JSON-able."""
    from pycocotools import mask as mask_utils

    rles = []
    for mask in (masks[:, 0] >= MASK_THRESHOLD).cpu().numpy().astype(np.uint8):
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")  # the COCO result format's text form
        rles.append(rle)
    return rles


@torch.no_grad()
def predict_dataset(model: nn.Module, loader: DataLoader, device: torch.device, amp: str = "none",
                    show_progress: bool = True, category_ids: list[int] | None = None) -> list[dict[str, Any]]:
    """This process's detections over ``loader``, in COCO result format; label ``i`` is category
    ``category_ids[i - 1]`` (default: the data set's, in id order)."""
    model.eval()
    dataset = loader.dataset
    base = getattr(dataset, "dataset", dataset)  # a shard is a Subset of the CocoDetection
    category_ids = base.category_ids if category_ids is None else category_ids
    results: list[dict[str, Any]] = []
    for images, targets in tqdm(loader, desc="evaluating", unit="batch", disable=not show_progress,
                                dynamic_ncols=True, leave=False):
        with autocast(device, amp):
            outputs = model([image.to(device, non_blocking=True) for image in images])
        for output, target in zip(outputs, targets):
            results.extend(to_coco_results(output, target["image_id"], category_ids))
    return results


def coco_metrics(dataset: CocoDetection, results: list[dict[str, Any]], iou_types: tuple[str, ...],
                 category_ids: list[int] | None = None) -> dict[str, float]:
    """pycocotools' figures of ``results`` against ``dataset``'s annotations, as ``{bbox_AP: ..., segm_AP50: ...}``,
    over the categories ``category_ids`` (default: all of the data set's); zeros when there is no detection at
    all (pycocotools refuses an empty result list)."""
    from pycocotools.cocoeval import COCOeval

    if not dataset.coco.anns:  # every figure would be pycocotools' -1 (or 0 with no detection): nothing scored
        raise DatasetError(f"{dataset.annotation_file} has no annotated object, so there is nothing to score "
                           f"detections against; evaluate on a split with annotations")
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        if not results:
            metrics.update({f"{iou_type}_{name}": 0.0 for name in STAT_NAMES})
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables; we print ours
            # A mask result's box would make pycocotools take the box's area for the size ranges.
            kept = results if iou_type == "bbox" else [{k: v for k, v in r.items() if k != "bbox"} for r in results]
            detections = dataset.coco.loadRes(kept)
            evaluator = COCOeval(dataset.coco, detections, iou_type)
            evaluator.params.imgIds = list(dataset.image_ids)
            evaluator.params.catIds = list(dataset.category_ids if category_ids is None else category_ids)
            evaluator.params.maxDets = list(MAX_DETECTIONS)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        # pycocotools gives -1 where a size range has no ground truth; keep it as the "no figure" mark (NO_FIGURE).
        metrics.update({f"{iou_type}_{name}": float(v) for name, v in zip(STAT_NAMES, evaluator.stats[:6])})
    return metrics


def evaluate_model(model: nn.Module, loader: DataLoader, dataset: CocoDetection, device: torch.device,
                   amp: str = "none", with_masks: bool = False, show_progress: bool = True,
                   category_ids: list[int] | None = None) -> dict[str, float]:
    """COCO metrics of ``model`` on ``dataset`` (``loader`` yields this process's share of it): every
    process predicts, the main process gathers and scores (others get an empty dict). Label ``i`` is category
    ``category_ids[i - 1]`` (default: the data set's, in id order)."""
    local = predict_dataset(model, loader, device, amp, show_progress, category_ids)
    gathered = distributed.all_gather_objects(local)
    if dist.is_initialized() and dist.get_rank() != 0:
        return {}
    results = [r for part in gathered for r in part]
    return coco_metrics(dataset, results, ("bbox", "segm") if with_masks else ("bbox",), category_ids)


def summary(metrics: dict[str, float]) -> str:
    """``box AP 0.523 (AP50 0.812, AP75 0.601), mask AP 0.471 (...)`` from :func:`coco_metrics`'s figures."""
    parts = []
    for iou_type, name in (("bbox", "box"), ("segm", "mask")):
        if f"{iou_type}_AP" in metrics:
            parts.append(f"{name} AP {metrics[f'{iou_type}_AP']:.3f} (AP50 {metrics[f'{iou_type}_AP50']:.3f}, "
                         f"AP75 {metrics[f'{iou_type}_AP75']:.3f})")
    return ", ".join(parts)
