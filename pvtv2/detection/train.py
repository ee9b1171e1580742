"""Training a detector, as one plain sequence:

    run set-up -> data -> model -> optimizer and schedule -> resume -> per epoch: train, evaluate, save

Everything the tasks share (processes, the optimizer step, the loop, checkpoints, metrics) is the
engine's (:mod:`pvtv2.engine`); what is here is the paper's COCO recipe (section 5.2).
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..data import DatasetError
from ..engine.distributed import shard, wrap_model
from ..engine.loop import progress_bar, train_steps
from ..engine.metrics import CURVES, plot_curves
from ..engine.optim import OptimizerStep, adamw_by_name
from ..engine.run import start_run
from ..engine.schedules import StepWithWarmup
from ..engine.training_state import all_rng_states, resume, training_state
from ..models.complexity import count_params
from .coco_metric import evaluate_model, summary
from .config import DetectionConfig, DetOptimConfig, resolved_lr
from .data import build_datasets, collate
from .model import build_from_config

TASK = "detection"
CURVE_PANELS = [("training loss", "loss", [("train_loss", "training", 1.0)]),
                ("held-out box AP", "AP (%)", [("bbox_AP", "box AP", 100.0), ("segm_AP", "mask AP", 100.0)])]


def train(cfg: DetectionConfig) -> dict[str, float]:
    """Run (or continue) the training ``cfg`` describes; returns the final COCO metrics."""
    with start_run(cfg.run, "pvt det-train") as run:
        env, out, optim = run.env, run.output_dir, cfg.optim
        with_masks = cfg.model.with_masks
        model_name = f"{cfg.model.detector}/{cfg.model.backbone}"

        # Data.
        train_set, val_set = build_datasets(cfg)
        class_names = list(train_set.classes)
        pin = env.device.type == "cuda"
        sampler = DistributedSampler(train_set, env.world_size, env.rank, shuffle=True, seed=cfg.run.seed,
                                     drop_last=True)
        train_loader = DataLoader(train_set, optim.batch_size, sampler=sampler, collate_fn=collate, drop_last=True,
                                  num_workers=cfg.data.num_workers, pin_memory=pin)
        val_loader = DataLoader(shard(val_set, env.rank, env.world_size), optim.batch_size, collate_fn=collate,
                                num_workers=cfg.data.num_workers, pin_memory=pin)
        steps_per_epoch = len(train_loader) // optim.accumulate_steps  # optimizer steps
        if steps_per_epoch == 0:
            raise DatasetError(f"{len(train_set)} training images do not make one batch of {optim.batch_size} x "
                               f"{env.world_size} processes x {optim.accumulate_steps} accumulated")

        # Model, optimizer, schedule.
        model = build_from_config(cfg.model, cfg.data, len(class_names))
        if env.world_size > 1 and env.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # Cascade's BN box heads: SyncBN, as the official
        model.to(env.device)
        train_model = wrap_model(model, env)
        lr, total_batch = resolved_lr(optim, env.world_size)
        optimizer = adamw_by_name(model, lr, optim.weight_decay, ("norm",) if optim.no_decay_norms else ())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, StepWithWarmup(
            [s * steps_per_epoch for s in optim.lr_steps], optim.lr_gamma, optim.warmup_iters, optim.warmup_ratio))
        step = OptimizerStep(train_model, optimizer, env.device, cfg.run.amp, clip_grad=optim.clip_grad,
                             accumulate_steps=optim.accumulate_steps)

        # Resume.
        resumed = resume(cfg.run.resume, env, out, TASK, model_name=model_name, class_names=class_names, model=model,
                         optimizer=optimizer, scheduler=scheduler, step=step, seed=cfg.run.seed, progress_key="epoch")
        start_epoch, best_ap = (resumed[1]["epoch"], resumed[1]["best"]) if resumed else (0, -1.0)
        run.banner(model=model_name, params=count_params(model), classes=len(class_names), data=cfg.data.root,
                   train_size=len(train_set), val_size=len(val_set), batch=optim.batch_size,
                   accumulate_steps=optim.accumulate_steps, precision=step.precision, optimizer=_lr_words(lr, optim, total_batch),
                   schedule=f"{steps_per_epoch} steps per epoch, {optim.epochs} epochs",
                   resumed=resumed and f"resumed from {resumed[0]} after epoch {start_epoch}")
        records = run.start_records(cfg, start_epoch)

        def losses_of(batch: tuple[list[torch.Tensor], list[dict[str, Any]]]) -> dict[str, torch.Tensor]:
            images, targets = batch
            images = [image.to(env.device, non_blocking=True) for image in images]
            targets = [{k: v.to(env.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                        for k, v in target.items()} for target in targets]
            with step.autocast():
                return train_model(images, targets)

        # Train, evaluate and save, epoch by epoch.
        metrics: dict[str, float] = {}
        for epoch in range(start_epoch, optim.epochs):
            sampler.set_epoch(epoch)
            with progress_bar(env, steps_per_epoch * optim.accumulate_steps, f"epoch {epoch + 1}/{optim.epochs}") as bar:
                batches = islice(train_loader, steps_per_epoch * optim.accumulate_steps)
                stats = train_steps(train_model, batches, losses_of, step, env, bar, after_step=scheduler.step)
            metrics = {}
            if epoch + 1 == optim.epochs or (epoch + 1) % cfg.run.eval_interval == 0:
                metrics = evaluate_model(model, val_loader, val_set, env.device, cfg.run.amp, with_masks, env.is_main)
            rng = all_rng_states()
            if records is None:  # not the main process: the main one scores
                continue
            record: dict[str, Any] = dict(epoch=epoch + 1, **stats, **metrics)
            records.append(record)
            plot_curves(records.records, out / CURVES, "epoch", CURVE_PANELS)
            improved = bool(metrics) and metrics["bbox_AP"] > best_ap
            best_ap = max(best_ap, metrics.get("bbox_AP", -1.0))
            run.save(training_state(TASK, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                                    model_name=model_name, class_names=class_names,
                                    category_ids=train_set.category_ids, config=cfg.to_dict(), epoch=epoch + 1,
                                    best=best_ap, metrics=record, rng=rng), best=improved)
            run.say(f"epoch {epoch + 1}/{optim.epochs}: train loss {stats['train_loss']:.4f}"
                    + (f", held-out {summary(metrics)}" if metrics else ""))

        if start_epoch >= optim.epochs:  # the checkpoint had finished every epoch already
            metrics = evaluate_model(model, val_loader, val_set, env.device, cfg.run.amp, with_masks, env.is_main)
        run.say(f"held-out: {summary(metrics)}")
        run.say(f"checkpoint {out / 'last.pth'}, metrics {out / 'metrics.jsonl'}, curves {out / CURVES}")
        return metrics


def _lr_words(lr: float, optim: DetOptimConfig, total_batch: int) -> str:
    """The resolved lr as the banner shows it, with how it follows from the config."""
    decay = f", weight decay {optim.weight_decay:g}" + (" (none on norms)" if optim.no_decay_norms else "")
    if optim.lr_base_batch is None:
        return f"AdamW lr {lr:g} (not scaled with the batch){decay}"
    return f"AdamW lr {lr:g} (= {optim.lr:g} x total batch {total_batch} / {optim.lr_base_batch}){decay}"
