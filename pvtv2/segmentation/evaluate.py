"""Inference (whole image or sliding window, optional flip and multi-scale) and the mIoU family of metrics.

Metrics come from one confusion matrix over every labelled pixel of the dataset, summed over processes,
as MMSegmentation computes them: per class IoU = TP / (TP + FP + FN) and accuracy = TP / (TP + FN); mIoU
and mAcc are their means over classes present in the ground truth or the predictions (IoU) / in the
ground truth (accuracy); aAcc is the fraction of labelled pixels predicted right.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import InputError, RunFailure
from ..engine import distributed
from ..engine.optim import autocast
from ..engine.text_table import format_table
from .config import parse_scales
from .data import IGNORE_INDEX, SegmentationDataset, find_dataset
from .transforms import EvalTransform, model_input

Mode = Literal["whole", "slide"]
T = TypeVar("T")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(classes, classes) int64 counts, rows = ground truth, columns = prediction, over pixels not ignored."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    keep = target != ignore_index
    index = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class SegmentationMetrics:
    """Metrics of a confusion matrix (rows = ground truth, columns = prediction)."""

    confusion: torch.Tensor
    class_names: Sequence[str]

    @property
    def iou(self) -> torch.Tensor:
        """Per class IoU, NaN for a class neither labelled nor predicted."""
        c = self.confusion.double()
        tp = c.diag()
        union = c.sum(0) + c.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.nan)

    @property
    def accuracy(self) -> torch.Tensor:
        """Per class accuracy (recall), NaN for a class without labelled pixels."""
        c = self.confusion.double()
        labelled = c.sum(1)
        return torch.where(labelled > 0, c.diag() / labelled.clamp(min=1), torch.nan)

    @property
    def mIoU(self) -> float:
        return float(self.iou.nanmean())

    @property
    def mAcc(self) -> float:
        return float(self.accuracy.nanmean())

    @property
    def aAcc(self) -> float:
        total = self.confusion.sum()
        return float(self.confusion.diag().sum() / total) if total > 0 else math.nan

    def summary(self) -> str:
        return f"mIoU {100 * self.mIoU:.2f}  mAcc {100 * self.mAcc:.2f}  aAcc {100 * self.aAcc:.2f}"

    def as_dict(self) -> dict[str, object]:
        """Plain values: the three means and the per class IoU and accuracy (None for NaN)."""
        def plain(values: torch.Tensor) -> dict[str, float | None]:
            return {n: None if math.isnan(v) else v for n, v in zip(self.class_names, values.tolist())}

        return dict(mIoU=self.mIoU, mAcc=self.mAcc, aAcc=self.aAcc, IoU=plain(self.iou), Acc=plain(self.accuracy))

    def table(self) -> str:
        """Per class IoU and accuracy (percent), one class a line."""
        rows = [dict(name=n, iou="nan" if math.isnan(i) else f"{100 * i:.2f}", acc="nan" if math.isnan(a) else f"{100 * a:.2f}")
                for n, i, a in zip(self.class_names, self.iou.tolist(), self.accuracy.tolist())]
        return format_table(rows, dict(name="class", iou="IoU", acc="Acc"))


def _sliding_logits(model: nn.Module, image: torch.Tensor, crop: int, stride: int, num_classes: int) -> torch.Tensor:
    """Logits (B, classes, H, W) averaged over ``crop`` windows every ``stride`` pixels (MMSegmentation's slide)."""
    batch, _, height, width = image.shape
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    logits = image.new_zeros(batch, num_classes, height, width)
    counts = image.new_zeros(1, 1, height, width)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)  # the last window ends at the border
            logits[:, :, y1:y2, x1:x2] += model(image[:, :, y1:y2, x1:x2]).float()
            counts[:, :, y1:y2, x1:x2] += 1
    return logits / counts


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    image: torch.Tensor,
    out_size: Sequence[int],
    *,
    num_classes: int,
    mode: Mode = "whole",
    crop_size: int = 512,
    stride: int = 341,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    amp: str = "none",
) -> torch.Tensor:
    """Class probabilities (B, classes, *out_size) of a normalised image batch (B, 3, H, W) at the test scale:
    softmax averaged over ``scales`` (ratios of the test scale) and, with ``flip``, mirrored copies."""
    if mode not in ("whole", "slide"):
        raise InputError(f"test mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and (crop_size < 1 or stride < 1):
        # A stride below 1 runs no window (each pixel then averages 0 / 0 logits): never a result.
        raise InputError(f"sliding windows need a crop size and a stride of at least 1 pixel, got {crop_size} and "
                         f"{stride}")
    if not scales or not all(0 < ratio < math.inf for ratio in scales):
        raise InputError(f"test scales must be positive numbers, got {tuple(scales)}")
    total = None
    for ratio in scales:
        scaled = image if ratio == 1 else F.interpolate(
            image, scale_factor=ratio, mode="bilinear", align_corners=False, recompute_scale_factor=False)
        for mirrored in (False, True) if flip else (False,):
            x = scaled.flip(-1) if mirrored else scaled
            with autocast(image.device, amp):
                logits = model(x).float() if mode == "whole" else _sliding_logits(model, x, crop_size, stride, num_classes)
            if mirrored:
                logits = logits.flip(-1)
            logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            total = probs if total is None else total + probs
    if not torch.isfinite(total).all():
        raise RunFailure("the segmenter's output is not finite (NaN or infinity) for an image: its weights hold "
                         "such values, or fp16 overflowed (evaluate with --amp bf16 or none)")
    return total / (len(scales) * (2 if flip else 1))


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    class_names: Sequence[str],
    *,
    mode: Mode = "whole",
    crop_size: int = 512,
    stride: int = 341,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    amp: str = "none",
    progress: bool = False,
) -> SegmentationMetrics:
    """Metrics of ``model`` over this process's ``loader`` (batches of one: images differ in size), summed
    over all processes. Predictions are made at the test scale and resized to each mask's size."""
    was_training = model.training
    model.eval()
    num_classes = len(class_names)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for image, mask in tqdm(loader, desc="evaluate", disable=not progress, unit="image", dynamic_ncols=True):
        image, mask = image.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        probs = predict_probabilities(model, image, mask.shape[-2:], num_classes=num_classes, mode=mode,
                                      crop_size=crop_size, stride=stride, flip=flip, scales=scales, amp=amp)
        confusion += confusion_matrix(probs.argmax(1), mask, num_classes)
    model.train(was_training)
    confusion = distributed.all_reduce_sum(confusion).cpu()
    if confusion.sum() == 0:
        # mIoU, mAcc and aAcc would be 0 / 0: no figure at all, rather than NaN printed as one.
        raise InputError(f"the evaluation data has no labelled pixel (every mask is empty or 'ignore'), so there is "
                         f"nothing to score; check the masks of {getattr(loader.dataset, 'root', 'the dataset')}")
    return SegmentationMetrics(confusion, list(class_names))


@dataclass(frozen=True)
class CheckpointEvaluation:
    """:func:`evaluate`'s metrics and what they were measured on."""

    metrics: SegmentationMetrics
    description: str  # the segmenter and where its weights come from
    data: Path  # the dataset root
    images: int
    is_main: bool  # the process that reports (every process of a torchrun gets the same totals)


def evaluate(
    checkpoint: str | Path, data: str | None = None, *, dataset: str | None = None, split: str = "val",
    mode: Mode | None = None, stride: int | None = None, flip: bool = False, scales: Sequence[float] | None = None,
    workers: int = min(4, os.cpu_count() or 1), device: str = "auto", amp: str = "none", progress: bool = False,
) -> CheckpointEvaluation:
    """mIoU, mAcc, aAcc and per-class IoU of a seg-train (or MMSegmentation Semantic FPN) ``checkpoint`` on
    ``split`` of ``data`` laid out as ``dataset`` (default: the checkpoint's own); test mode, stride, flip and
    scales default to the checkpoint's. Under torchrun each process evaluates its share."""
    from .predict import load_segmenter  # predict imports this module (predict_probabilities)

    env = distributed.setup(device)
    try:
        segmenter = load_segmenter(checkpoint)
        cfg = segmenter.config
        data_cfg = dataclasses.replace(cfg.data, dataset=_given(dataset, cfg.data.dataset), root=_given(data, cfg.data.root))
        if data_cfg.root is None and data_cfg.dataset != "shapes":
            raise InputError(f"{checkpoint} does not name its dataset: give --data DIR")
        root, layout, names = find_dataset(dataclasses.replace(cfg, data=data_cfg), len(segmenter.class_names))
        if names != segmenter.class_names:
            raise InputError(f"{root} has classes {names[:5]}..., but the checkpoint was trained on "
                             f"{segmenter.class_names[:5]}...")
        test = cfg.test
        scales_key = "the checkpoint's test.test_scales" if scales is None else "--scales"
        scales = parse_scales(test.test_scales) if scales is None else scales
        test_input = model_input(cfg, segmenter.backbone, scales, scales_key)
        test_input.check_scale()
        images = SegmentationDataset(root, split, layout, class_names=names,
                                     transform=EvalTransform(cfg.augment.scale), model_input=test_input)
        loader = DataLoader(distributed.shard(images, env.rank, env.world_size), 1, num_workers=workers)
        metrics = evaluate_model(segmenter.model.to(env.device), loader, env.device, names,
                           mode=_given(mode, test.test_mode), crop_size=cfg.augment.crop_size,
                           stride=_given(stride, test.slide_stride), flip=flip or test.flip_test, scales=scales,
                           amp=amp, progress=progress and env.is_main)
    finally:
        distributed.cleanup()
    return CheckpointEvaluation(metrics, segmenter.description, root, len(images), env.is_main)


def _given(option: T | None, default: T) -> T:
    """An option's value, or the checkpoint's when the option is not given (0 and "" are values, not gaps)."""
    return default if option is None else option
