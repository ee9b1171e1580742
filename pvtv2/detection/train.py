"""Training a detector, as one plain sequence:

    processes -> data -> model -> optimizer and schedule -> resume -> per epoch: train, evaluate, save

One process per device under torchrun (DistributedDataParallel), or a single process. Only the main
process prints, writes metrics and saves checkpoints. Checkpoints, RNG states, the metrics log and the
process setup are the classification engine's (:mod:`pvtv2.engine`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..data import DatasetError
from ..engine import distributed
from ..engine.checkpoint import (
    BEST, FORMAT_KEY, FORMAT_VERSION, LAST, atomic_save, check_compatible, read_training_checkpoint, rng_state,
)
from ..engine.distributed import DistributedEnv
from ..engine.evaluate import shard
from ..engine.recipe import autocast, precision
from ..engine.report import MetricsLog
from ..engine.train import restore_rng, restore_training_state, resume_path, seed_everything, warn_if_replacing
from ..models.complexity import count_params
from ..models.weights import CheckpointError
from .config import DetConfig, config_yaml
from .data import CocoDetection, collate, ensure_shapes, eval_transform, split_paths, train_transform
from .evaluate import evaluate, summary
from .model import build_from_config

logger = logging.getLogger("pvtv2")
TASK = "detection"


class StepWithWarmup:
    """lr factor of iteration t: a linear warm-up from ``warmup_ratio`` over ``warmup_iters``, times
    ``gamma`` for each step iteration passed (MMDetection's ``step`` policy with linear warm-up)."""

    def __init__(self, steps: list[int], gamma: float, warmup_iters: int, warmup_ratio: float) -> None:
        self.steps, self.gamma, self.warmup_iters, self.warmup_ratio = steps, gamma, warmup_iters, warmup_ratio

    def __call__(self, t: int) -> float:
        decay = self.gamma ** sum(t >= s for s in self.steps)
        if t >= self.warmup_iters:
            return decay
        return decay * (self.warmup_ratio + (1 - self.warmup_ratio) * t / self.warmup_iters)


def build_datasets(cfg: DetConfig) -> tuple[CocoDetection, CocoDetection]:
    """The training and held-out splits a config names (the shapes data set is written when missing)."""
    data, with_masks = cfg.data, cfg.model.detector == "mask_rcnn"
    if data.dataset == "shapes":
        ensure_shapes(data.root, data.shapes_train, data.shapes_val, data.shapes_size, seed=cfg.run.seed)
    train_paths, val_paths = split_paths(data.root, data.train_split), split_paths(data.root, data.val_split)
    train_set = CocoDetection(train_paths.images, train_paths.annotations,
                              train_transform(data.train_min_size, data.max_size, data.hflip),
                              with_masks=with_masks, skip_empty=True)
    val_set = CocoDetection(val_paths.images, val_paths.annotations, eval_transform(), with_masks=with_masks)
    if train_set.category_ids != val_set.category_ids:
        raise DatasetError(f"{train_paths.annotations} and {val_paths.annotations} have different categories "
                           f"({train_set.category_ids} vs {val_set.category_ids}); they must be the same")
    return train_set, val_set


def eval_loader(val_set: CocoDetection, cfg: DetConfig, env: DistributedEnv) -> DataLoader:
    """This process's share of the held-out images, in batches of lists (images keep their sizes)."""
    return DataLoader(shard(val_set, env.rank, env.world_size), cfg.optim.batch_size, collate_fn=collate,
                      num_workers=cfg.data.num_workers, pin_memory=env.device.type == "cuda")


def train(config: DetConfig) -> dict[str, float]:
    """Run (or continue) the training ``config`` describes; returns the final COCO metrics."""
    env = distributed.setup(config.run.device)
    try:
        return _train(config, env)
    finally:
        distributed.cleanup()


def _train(cfg: DetConfig, env: DistributedEnv) -> dict[str, float]:
    out = Path(cfg.run.output_dir)
    say = print if env.is_main else _silent
    seed_everything(cfg.run.seed + env.rank)
    with_masks = cfg.model.detector == "mask_rcnn"
    model_name = f"{cfg.model.detector}/{cfg.model.backbone}"

    # Data.
    train_set, val_set = build_datasets(cfg)
    class_names = list(train_set.classes)
    sampler = DistributedSampler(train_set, env.world_size, env.rank, shuffle=True, seed=cfg.run.seed, drop_last=True)
    train_loader = DataLoader(train_set, cfg.optim.batch_size, sampler=sampler, collate_fn=collate, drop_last=True,
                              num_workers=cfg.data.num_workers, pin_memory=env.device.type == "cuda")
    val_loader = eval_loader(val_set, cfg, env)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise DatasetError(f"{len(train_set)} training images do not make one batch of "
                           f"{cfg.optim.batch_size} x {env.world_size} processes")

    # Model, optimizer, schedule.
    model = build_from_config(cfg.model, cfg.data, len(class_names)).to(env.device)
    train_model: nn.Module = model
    if env.world_size > 1:
        train_model = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    schedule = StepWithWarmup([s * steps_per_epoch for s in cfg.optim.lr_steps], cfg.optim.lr_gamma,
                              cfg.optim.warmup_iters, cfg.optim.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(env.device.type, enabled=env.device.type == "cuda" and cfg.run.amp == "fp16")

    # Resume.
    start_epoch, best_ap = 0, -1.0
    resume = resume_path(cfg.run.resume, out)
    if resume is not None:
        state = read_training_checkpoint(resume)
        if state.get("task") != TASK:
            raise CheckpointError(f"{resume} is not a detection checkpoint (task {state.get('task', 'classification')})")
        check_compatible(state, resume, model_name, class_names)
        restore_training_state(state, resume, model, optimizer, scheduler, scaler)
        start_epoch, best_ap = state["epoch"], state["best_ap"]
        restore_rng(state["rng"], env, cfg.run.seed + start_epoch)
    else:
        warn_if_replacing(out, env)

    say(f"pvt det-train: {model_name} ({count_params(model) / 1e6:.2f}M params), {len(class_names)} classes; "
        f"{cfg.data.root}: {len(train_set)} training / {len(val_set)} held-out images")
    say(f"  {env.world_size} process(es) on {env.device.type}, {precision(env.device, cfg.run.amp)}; batch "
        f"{cfg.optim.batch_size} x {env.world_size}, lr {cfg.optim.lr:g}, {steps_per_epoch} steps per epoch, "
        f"{cfg.optim.epochs} epochs")
    say(f"  output {out}" + (f" (resumed from {resume} after epoch {start_epoch})" if resume else ""))
    metrics_log = MetricsLog(out, start_epoch) if env.is_main else None
    if env.is_main:
        (out / "config.yaml").write_text(config_yaml(cfg))

    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.optim.epochs):
        sampler.set_epoch(epoch)
        stats = train_one_epoch(train_model, train_loader, optimizer, scheduler, scaler, env, amp=cfg.run.amp,
                                clip_grad=cfg.optim.clip_grad, description=f"epoch {epoch + 1}/{cfg.optim.epochs}")
        last = epoch + 1 == cfg.optim.epochs
        metrics = {}
        if last or (epoch + 1) % cfg.run.eval_every == 0:
            metrics = evaluate(model, val_loader, val_set, env.device, cfg.run.amp, with_masks, env.is_main)
        rng = distributed.all_gather_objects(rng_state())
        if metrics_log is None:  # not the main process
            continue
        record: dict[str, Any] = dict(epoch=epoch + 1, **stats, **metrics)
        metrics_log.append(record)
        improved = bool(metrics) and metrics["bbox_AP"] > best_ap
        best_ap = max(best_ap, metrics.get("bbox_AP", -1.0))
        state = {
            FORMAT_KEY: FORMAT_VERSION, "task": TASK, "model_name": model_name, "class_names": class_names,
            "category_ids": train_set.category_ids, "epoch": epoch + 1, "best_ap": best_ap, "config": cfg.to_dict(),
            "metrics": record, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
        }
        atomic_save(state, out / LAST)
        if improved:
            atomic_save(state, out / BEST)
        say(f"epoch {epoch + 1}/{cfg.optim.epochs}: train loss {stats['train_loss']:.4f}"
            + (f", held-out {summary(metrics)}" if metrics else ""))

    if start_epoch >= cfg.optim.epochs:  # the checkpoint had finished every epoch already
        metrics = evaluate(model, val_loader, val_set, env.device, cfg.run.amp, with_masks, env.is_main)
    say(f"held-out: {summary(metrics)}")  # other processes have no figures: the main one scores
    say(f"checkpoint {out / LAST}, metrics {out / 'metrics.jsonl'}")
    return metrics


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    env: DistributedEnv,
    *,
    amp: str,
    clip_grad: float | None,
    description: str,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of each loss over all processes, the last lr and the
    throughput. The schedule moves every iteration."""
    model.train()
    sums: dict[str, float] = {}
    steps, images_seen, start = 0, 0, time.perf_counter()
    progress = tqdm(loader, desc=description, disable=not env.is_main, unit="batch", dynamic_ncols=True)
    for images, targets in progress:
        images = [image.to(env.device, non_blocking=True) for image in images]
        targets = [{k: v.to(env.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k, v in target.items()} for target in targets]
        with autocast(env.device, amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"the training loss is {loss_value} ({ {k: v.item() for k, v in losses.items()} }); "
                                     "lower the lr or set clip_grad")
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        for name, value in (("train_loss", loss_value), *((k, v.item()) for k, v in losses.items())):
            sums[name] = sums.get(name, 0.0) + value
        steps += 1
        images_seen += len(images) * env.world_size
        progress.set_postfix_str(f"loss {loss_value:.4f}, lr {lr:.2e}, "
                                 f"{images_seen / (time.perf_counter() - start):.1f} img/s", refresh=False)
    progress.close()
    names = sorted(sums)
    totals = distributed.all_reduce_sum(torch.tensor([sums[n] for n in names], dtype=torch.float64, device=env.device))
    seconds = time.perf_counter() - start
    means = {n: t / (steps * env.world_size) for n, t in zip(names, totals.tolist())}
    return dict(**means, lr=lr, images_per_s=images_seen / seconds, epoch_time_s=seconds)


def _silent(*args: Any, **kwargs: Any) -> None:
    pass
