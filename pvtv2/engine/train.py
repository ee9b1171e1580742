"""Training a PVT classifier, as one plain sequence:

    processes -> data -> model -> optimizer, schedule, loss -> resume -> per epoch: train, evaluate, save

One process per device under torchrun (DistributedDataParallel), or a single process. Only the main
process prints, writes metrics and saves checkpoints; every process draws its own augmentation.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import DatasetError, build_dataset, eval_transform, train_transform
from ..models import create_model
from ..models.complexity import count_params
from ..models.weights import CheckpointError
from . import distributed
from .checkpoint import (
    BEST,
    FORMAT_KEY,
    FORMAT_VERSION,
    LAST,
    atomic_save,
    check_compatible,
    read_training_checkpoint,
    rng_state,
    set_rng_state,
)
from .config import TrainConfig, save_config
from .distributed import DistributedEnv
from .evaluate import EvalResult, evaluate, shard
from .recipe import (
    autocast,
    build_criterion,
    build_mixup,
    build_optimizer,
    build_scheduler,
    build_train_sampler,
    precision,
    scaled_lr,
)
from .report import CURVES, MetricsLog, plot_curves

logger = logging.getLogger("pvtv2")


def train(config: TrainConfig) -> EvalResult:
    """Run (or continue) the training ``config`` describes; returns the final held-out evaluation."""
    env = distributed.setup(config.run.device)
    try:
        return _train(config, env)
    finally:
        distributed.cleanup()


def _train(cfg: TrainConfig, env: DistributedEnv) -> EvalResult:
    out = Path(cfg.run.output_dir)
    say = print if env.is_main else _silent
    # Each process draws its own augmentation; DDP then gives every process rank 0's initial weights.
    seed_everything(cfg.run.seed + env.rank)

    # Data.
    augment = cfg.augment
    train_set = build_dataset(
        cfg.data.dataset, "train", root=cfg.data.root, img_size=cfg.data.img_size, bad_images=cfg.data.bad_images,
        transform=train_transform(
            cfg.data.img_size, scale=augment.scale, ratio=augment.ratio, hflip=augment.hflip,
            auto_augment=augment.auto_augment, color_jitter=augment.color_jitter, interpolation=augment.interpolation,
            re_prob=augment.re_prob, re_mode=augment.re_mode, re_count=augment.re_count,
        ),
    )
    val_set = build_dataset(
        cfg.data.dataset, "val", root=cfg.data.root, img_size=cfg.data.img_size, bad_images=cfg.data.bad_images,
        transform=eval_transform(cfg.data.img_size, augment.eval_crop_pct, augment.interpolation),
    )
    if list(train_set.classes) != list(val_set.classes):
        raise DatasetError(
            f"the train and val splits of {cfg.data.root} have different class folders "
            f"({len(train_set.classes)} vs {len(val_set.classes)} classes); they must be the same"
        )
    class_names = list(train_set.classes)
    pin = env.device.type == "cuda"
    sampler = build_train_sampler(train_set, augment.repeated_aug, env.rank, env.world_size, cfg.run.seed)
    # No persistent workers: a fresh iterator per epoch draws its workers' seeds from the restored RNG, so
    # that a resumed run sees the same augmentation as an uninterrupted one.
    train_loader = DataLoader(train_set, cfg.optim.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                              pin_memory=pin, drop_last=True)
    val_loader = DataLoader(shard(val_set, env.rank, env.world_size), cfg.optim.batch_size,
                            num_workers=cfg.data.num_workers, pin_memory=pin)
    steps_per_epoch = len(train_loader)
    total_batch = cfg.optim.batch_size * env.world_size
    if steps_per_epoch == 0:
        raise DatasetError(f"{len(train_set)} training images do not make one batch of {total_batch} "
                           f"(batch_size {cfg.optim.batch_size} x {env.world_size} processes)")

    # Model.
    pretrained = True if cfg.model.pretrained == "official" else cfg.model.pretrained
    model = create_model(cfg.model.name, num_classes=len(class_names), drop_path_rate=cfg.model.drop_path_rate,
                         pretrained=pretrained)
    model.set_grad_checkpointing(cfg.model.grad_checkpointing)
    model.to(env.device)
    train_model: nn.Module = model
    if env.world_size > 1:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=device_ids)
    ema = ModelEmaV3(model, decay=cfg.optim.ema_decay) if cfg.optim.ema else None  # after DDP's weight broadcast

    # Optimizer, schedule, loss.
    lr = scaled_lr(cfg.optim.base_lr, total_batch)
    optimizer = build_optimizer(model, lr, cfg.optim.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch)
    mixup = build_mixup(augment, len(class_names))
    criterion = build_criterion(augment, mixup)
    scaler = torch.amp.GradScaler(env.device.type, enabled=env.device.type == "cuda" and cfg.run.amp == "fp16")

    # Resume.
    start_epoch, best_top1 = 0, -1.0
    resume = resume_path(cfg.run.resume, out)
    if resume is not None:
        state = read_training_checkpoint(resume)
        check_compatible(state, resume, cfg.model.name, class_names)
        restore_training_state(state, resume, model, optimizer, scheduler, scaler, ema)
        start_epoch, best_top1 = state["epoch"], state["best_top1"]
        restore_rng(state["rng"], env, cfg.run.seed + start_epoch)
    else:
        warn_if_replacing(out, env)

    source = cfg.data.root if cfg.data.dataset == "folder" else cfg.data.dataset
    say(f"pvt train: {cfg.model.name} ({count_params(model) / 1e6:.2f}M params), {len(class_names)} classes; "
        f"{source}: {len(train_set)} training / {len(val_set)} held-out images")
    say(f"  {env.world_size} process(es) on {env.device.type}, {precision(env.device, cfg.run.amp)}; batch "
        f"{cfg.optim.batch_size} x {env.world_size} = {total_batch}, lr {lr:.3g} (base {cfg.optim.base_lr:g} x "
        f"{total_batch}/512), {steps_per_epoch} steps per epoch, {cfg.optim.epochs} epochs")
    say(f"  output {out}" + (f" (resumed from {resume} after epoch {start_epoch})" if resume else ""))
    metrics = MetricsLog(out, start_epoch) if env.is_main else None
    if env.is_main:
        save_config(cfg, out / "config.yaml")

    # Train, evaluate and save, epoch by epoch.
    result = None
    for epoch in range(start_epoch, cfg.optim.epochs):
        sampler.set_epoch(epoch)
        stats = train_one_epoch(
            train_model, train_loader, optimizer, scheduler, criterion, mixup, scaler, ema, env,
            amp=cfg.run.amp, clip_grad=cfg.optim.clip_grad, first_step=epoch * steps_per_epoch,
            description=f"epoch {epoch + 1}/{cfg.optim.epochs}",
        )
        result = evaluate(model, val_loader, env.device, cfg.run.amp)
        ema_result = evaluate(ema.module, val_loader, env.device, cfg.run.amp) if ema is not None else None
        # Every process's RNG state, captured after the epoch's last random draw (evaluation included).
        rng = distributed.all_gather_objects(rng_state())
        if metrics is None:  # not the main process
            continue
        record: dict[str, Any] = dict(epoch=epoch + 1, **stats, val_loss=result.loss, val_top1=result.top1,
                                      val_top5=result.top5)
        if ema_result is not None:
            record.update(ema_top1=ema_result.top1, ema_top5=ema_result.top5)
        metrics.append(record)
        plot_curves(metrics.records, out / CURVES)
        best_top1 = max(best_top1, result.top1)
        state = {
            FORMAT_KEY: FORMAT_VERSION, "model_name": cfg.model.name, "class_names": class_names,
            "epoch": epoch + 1, "best_top1": best_top1, "config": cfg.to_dict(), "metrics": record,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None, "rng": rng,
        }
        atomic_save(state, out / LAST)
        if result.top1 == best_top1:
            atomic_save(state, out / BEST)
        say(f"epoch {epoch + 1}/{cfg.optim.epochs}: train loss {stats['train_loss']:.4f}, held-out {result.summary()}"
            + (f", EMA top-1 {ema_result.top1:.2f}%" if ema_result is not None else ""))

    if result is None:  # the checkpoint had finished every epoch already
        result = evaluate(model, val_loader, env.device, cfg.run.amp)
    say(f"held-out accuracy: {result.summary()}")
    say(f"checkpoint {out / LAST}, metrics {out / 'metrics.jsonl'}, curves {out / CURVES}")
    return result


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: CosineLRScheduler,
    criterion: nn.Module,
    mixup: Mixup | None,
    scaler: torch.amp.GradScaler,
    ema: ModelEmaV3 | None,
    env: DistributedEnv,
    *,
    amp: str,
    clip_grad: float | None,
    first_step: int,
    description: str,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean training loss over all processes, the last lr and the
    throughput. The lr of step t is set by ``scheduler.step_update(t)`` after step t - 1."""
    model.train()
    unwrapped = model.module if isinstance(model, DistributedDataParallel) else model
    loss_sum = torch.zeros(2, dtype=torch.float64, device=env.device)  # loss x images, images
    step, images_seen, start = first_step, 0, time.perf_counter()
    progress = tqdm(loader, desc=description, disable=not env.is_main, unit="batch", dynamic_ncols=True)
    for images, targets in progress:
        images, targets = images.to(env.device, non_blocking=True), targets.to(env.device, non_blocking=True)
        if mixup is not None:
            images, targets = mixup(images, targets)
        with autocast(env.device, amp):
            loss = criterion(model(images), targets)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"the training loss is {loss_value} at step {step}; lower the lr or set clip_grad")
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        scheduler.step_update(step)
        if ema is not None:
            ema.update(unwrapped, step=step)

        loss_sum += torch.tensor([loss_value * len(images), len(images)], dtype=torch.float64, device=env.device)
        images_seen += len(images) * env.world_size
        images_per_s = images_seen / (time.perf_counter() - start)
        progress.set_postfix_str(f"loss {loss_value:.4f}, lr {lr:.2e}, {images_per_s:.0f} img/s", refresh=False)
    progress.close()
    total_loss, total_images = distributed.all_reduce_sum(loss_sum).tolist()
    seconds = time.perf_counter() - start
    return dict(train_loss=total_loss / total_images, lr=lr, images_per_s=images_seen / seconds, epoch_time_s=seconds)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resume_path(resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``None``, ``"auto"`` (``output_dir/last.pth`` when it exists) or a path."""
    if resume is None:
        return None
    if resume == "auto":
        last = output_dir / LAST
        if not last.exists():
            logger.warning("--resume auto: %s has no checkpoint yet, starting a new run", output_dir)
            return None
        return last
    return Path(resume)


def restore_training_state(
    state: Mapping[str, Any], path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    scaler: torch.amp.GradScaler, ema: nn.Module | None = None,
) -> None:
    """Load a training checkpoint's model, optimizer (and EMA), schedule and grad-scaler states."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state["ema"] is not None:
            ema.load_state_dict(state["ema"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path} does not fit this run's model or optimizer: {error}") from error
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])


def warn_if_replacing(output_dir: Path, env: DistributedEnv) -> None:
    """Warn (once) that a new run in ``output_dir`` replaces the checkpoint already there."""
    if env.is_main and (output_dir / LAST).exists():
        logger.warning("%s already has a checkpoint: this new run replaces it (continue it with --resume auto)",
                       output_dir)


def restore_rng(states: list[dict[str, Any]], env: DistributedEnv, fallback_seed: int) -> None:
    """Give this process the random streams it had when the checkpoint was written (one state per rank)."""
    if len(states) == env.world_size:
        set_rng_state(states[env.rank])
        return
    # Another number of processes: the saved streams do not map onto this run's, so draw fresh ones.
    if env.is_main:
        logger.warning("the checkpoint was written by %d processes and this run has %d: augmentation continues "
                       "with new random streams", len(states), env.world_size)
    seed_everything(fallback_seed * 1000 + env.rank)


def _silent(*args: Any, **kwargs: Any) -> None:
    pass
