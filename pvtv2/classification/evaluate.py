"""Top-1, top-5 and loss of a classifier over a dataset, summed exactly over all processes; of a checkpoint
on an image folder or the digits (``pvt eval``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.images import ModelInput
from ..engine import distributed
from ..engine.optim import autocast
from ..errors import InputError
from ..models import min_input_size
from .datasets import ImageFolder, eval_folder
from .digits import Digits
from .inference import load_classifier
from .transforms import eval_resize, eval_transform


@dataclass(frozen=True)
class EvalResult:
    top1: float  # percent
    top5: float  # percent; top-k for k = min(5, classes)
    loss: float  # mean cross-entropy
    images: int

    def summary(self) -> str:
        return f"top-1 {self.top1:.2f}%  top-5 {self.top5:.2f}%  loss {self.loss:.4f}  ({self.images} images)"


@torch.inference_mode()
def evaluate_model(model: nn.Module, loader: DataLoader, device: torch.device, amp: str = "none") -> EvalResult:
    """Evaluate ``model`` on this process's ``loader``; every process gets the totals over all of them."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, images
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices.eq(targets[:, None])  # (B, k)
        totals[0] += nn.functional.cross_entropy(logits, targets, reduction="sum").double()
        totals[1] += hits[:, 0].sum()
        totals[2] += hits.any(dim=1).sum()
        totals[3] += len(targets)
    model.train(was_training)
    loss_sum, top1, top5, images = distributed.all_reduce_sum(totals).tolist()
    if images == 0:
        raise InputError("the evaluation dataset is empty")
    return EvalResult(100 * top1 / images, 100 * top5 / images, loss_sum / images, int(images))


@dataclass(frozen=True)
class CheckpointEvaluation:
    """:func:`evaluate`'s figures and what they were measured on."""

    result: EvalResult
    model_name: str
    description: str  # the classifier and where its weights come from
    data: str  # the folder of images, or the digits' held-out split
    img_size: int  # center crop
    resize: int  # shorter side before the crop
    is_main: bool  # the process that reports (every process of a torchrun gets the same totals)


def evaluate(
    checkpoint: str | Path, data: str, *, model: str | None = None, img_size: int | None = None,
    crop_pct: float | None = None, batch_size: int = 100, workers: int = min(4, os.cpu_count() or 1),
    device: str = "auto", amp: str = "none", use_ema: bool = False, bad_images: str = "error",
) -> CheckpointEvaluation:
    """Top-1, top-5 and loss of ``checkpoint`` (a pvt train checkpoint, or weights the zoo loads: give ``model``
    or let the keys tell) on ``data``: a folder of class folders, a root with ``val/``, or ``"digits"``.

    Images are resized to ``img_size / crop_pct`` and center cropped to ``img_size`` (default: the training
    config's, else 224 and 0.875 as in the paper). Under torchrun each process evaluates its share."""
    env = distributed.setup(device)
    try:
        classifier = load_classifier(checkpoint, model, use_ema=use_ema)
        img_size = classifier.img_size if img_size is None else img_size
        crop_pct = classifier.crop_pct if crop_pct is None else crop_pct
        smallest = min_input_size(classifier.model_name)
        if img_size < smallest:
            raise InputError(f"--img-size {img_size} is too small for {classifier.model_name}: it needs at least "
                             f"{smallest} pixels per side")
        transform = eval_transform(img_size, crop_pct, classifier.interpolation)
        if data == "digits":
            dataset, where = Digits("val", img_size, transform), "digits (held-out split)"
        else:
            folder = eval_folder(data)
            resized = ModelInput(smallest=1, shorter=eval_resize(img_size, crop_pct))  # refuses a sliver by name
            dataset, where = ImageFolder(folder, transform, bad_images, resized), str(folder)
        if len(dataset.classes) != len(classifier.class_names) or (
            classifier.from_training and list(dataset.classes) != classifier.class_names
        ):
            raise InputError(
                f"{where} has {len(dataset.classes)} classes ({', '.join(dataset.classes[:5])}...), but the "
                f"classifier has {len(classifier.class_names)} ({', '.join(classifier.class_names[:5])}...)"
            )
        loader = DataLoader(distributed.shard(dataset, env.rank, env.world_size), batch_size,
                            num_workers=0 if data == "digits" else workers,  # the digits are in memory already
                            pin_memory=env.device.type == "cuda")
        result = evaluate_model(classifier.model.to(env.device), loader, env.device, amp)
    finally:
        distributed.cleanup()
    return CheckpointEvaluation(result, classifier.model_name, classifier.description, where, img_size,
                                eval_resize(img_size, crop_pct), env.is_main)
