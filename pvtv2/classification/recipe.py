"""The paper's ImageNet training recipe, assembled from timm and torch pieces rather than rewritten.

Each function turns a part of the config into the object that implements it: the lr scaled with the
total batch, timm's cosine schedule with warm-up, timm's Mixup with its soft-target loss and the
repeated-augmentation sampler. (AdamW with timm's weight-decay groups is :func:`pvtv2.engine.optim.adamw`.)
"""

from __future__ import annotations

import logging

import torch
from timm.data import Mixup
from timm.data.distributed_sampler import RepeatAugSampler
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Sampler

from .config import AugmentConfig, OptimConfig

logger = logging.getLogger("pvtv2")

LR_REFERENCE_BATCH = 512  # base_lr is the lr for 512 images per step (DeiT's rule)
REPEATS = 3  # repeated augmentation: every image three times per epoch, on different processes


def scaled_lr(base_lr: float, total_batch: int) -> float:
    """Linear scaling: 5e-4 at 512 images per step gives 1e-3 at 8 GPUs x 128."""
    return base_lr * total_batch / LR_REFERENCE_BATCH


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, steps_per_epoch: int) -> CosineLRScheduler:
    """Cosine decay to ``min_lr`` after a linear warm-up from ``warmup_lr``, updated every step (the lr of
    step t is set by ``scheduler.step_update(t)``).

    At a small total batch the linearly scaled lr can fall below ``min_lr`` (or ``warmup_lr``), and the
    "decay" would then rise: both are clamped to the lr, with a warning.
    """
    lr = optimizer.param_groups[0]["lr"]
    min_lr, warmup_lr = _at_most_lr(optim.min_lr, "min_lr", lr), _at_most_lr(optim.warmup_lr, "warmup_lr", lr)
    return CosineLRScheduler(
        optimizer,
        t_initial=optim.epochs * steps_per_epoch,
        lr_min=min_lr,
        warmup_t=optim.warmup_epochs * steps_per_epoch,
        warmup_lr_init=warmup_lr,
        t_in_epochs=False,
    )


def _at_most_lr(value: float, key: str, lr: float) -> float:
    if value <= lr:
        return value
    logger.warning("optim.%s %.3g is above the scaled lr %.3g (base_lr x total batch / %d): using %.3g, so that "
                   "the schedule never rises above the lr", key, value, lr, LR_REFERENCE_BATCH, lr)
    return lr


def build_mixup(augment: AugmentConfig, num_classes: int) -> Mixup | None:
    """timm's batch-wise mixup / cutmix with label smoothing; None when both are off."""
    if augment.mixup <= 0 and augment.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=augment.mixup, cutmix_alpha=augment.cutmix, prob=augment.mixup_prob,
        switch_prob=augment.mixup_switch_prob, mode="batch", label_smoothing=augment.label_smoothing,
        num_classes=num_classes,
    )


def build_criterion(augment: AugmentConfig, mixup: Mixup | None) -> nn.Module:
    """The training loss: soft targets under mixup (which smooths the labels itself), else (smoothed) CE."""
    if mixup is not None:
        return SoftTargetCrossEntropy()
    if augment.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(augment.label_smoothing)
    return nn.CrossEntropyLoss()


def build_train_sampler(dataset: Dataset, repeated_aug: bool, rank: int, world_size: int, seed: int) -> Sampler:
    """This process's share of each epoch, reshuffled by ``set_epoch``.

    Both samplers deal one shuffled order out round-robin, so N processes with batch b see the same images
    per step as one process with batch N x b.
    """
    if repeated_aug:
        return RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, num_repeats=REPEATS)
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
