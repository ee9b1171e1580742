"""Top-1, top-5 and loss of a classifier over a dataset, summed exactly over all processes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import InputError
from ..engine import distributed
from ..engine.optim import autocast


@dataclass(frozen=True)
class EvalResult:
    top1: float  # percent
    top5: float  # percent; top-k for k = min(5, classes)
    loss: float  # mean cross-entropy
    images: int

    def summary(self) -> str:
        return f"top-1 {self.top1:.2f}%  top-5 {self.top5:.2f}%  loss {self.loss:.4f}  ({self.images} images)"


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: str = "none") -> EvalResult:
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
