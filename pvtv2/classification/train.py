"""Training a PVT classifier, as one plain sequence:

    run set-up -> data -> model -> optimizer, schedule, loss -> resume -> per epoch: train, evaluate, save

Everything the tasks share (processes, the optimizer step, the loop, checkpoints, metrics) is the
engine's (:mod:`pvtv2.engine`); what is here is the paper's ImageNet recipe (section 5.1).
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader

from ..data import DatasetError
from ..data.images import ModelInput
from ..engine.distributed import shard, wrap_model
from ..engine.loop import progress_bar, train_steps
from ..engine.metrics import CURVES, plot_curves
from ..engine.optim import OptimizerStep, adamw
from ..engine.run import start_run
from ..engine.training_state import all_rng_states, resume, training_state
from ..models import create_model
from ..models.complexity import count_params
from .config import ClassificationConfig
from .datasets import build_dataset
from .evaluate import EvalResult, evaluate_model
from .recipe import build_criterion, build_mixup, build_scheduler, build_train_sampler, scaled_lr
from .transforms import eval_resize, eval_transform, train_transform

TASK = "classification"
CURVE_PANELS = [("loss", "loss", [("train_loss", "training", 1.0), ("val_loss", "held-out", 1.0)]),
                ("held-out accuracy", "accuracy (%)", [("val_top1", "top-1", 1.0), ("val_top5", "top-5", 1.0),
                                                       ("ema_top1", "EMA top-1", 1.0)])]


def train(cfg: ClassificationConfig) -> EvalResult:
    """Run (or continue) the training ``cfg`` describes; returns the final held-out evaluation."""
    with start_run(cfg.run, "pvt train") as run:
        env, out, optim = run.env, run.output_dir, cfg.optim

        # Data.
        a = cfg.augment
        train_set = build_dataset(
            cfg.data.dataset, "train", root=cfg.data.root, img_size=cfg.data.img_size, bad_images=cfg.data.bad_images,
            transform=train_transform(
                cfg.data.img_size, scale=a.scale, ratio=a.ratio, hflip=a.hflip, auto_augment=a.auto_augment,
                color_jitter=a.color_jitter, interpolation=a.interpolation, re_prob=a.re_prob, re_mode=a.re_mode,
                re_count=a.re_count,
            ),
        )
        val_set = build_dataset(
            cfg.data.dataset, "val", root=cfg.data.root, img_size=cfg.data.img_size, bad_images=cfg.data.bad_images,
            transform=eval_transform(cfg.data.img_size, a.eval_crop_pct, a.interpolation),
            model_input=ModelInput(smallest=1, shorter=eval_resize(cfg.data.img_size, a.eval_crop_pct)),
        )
        if list(train_set.classes) != list(val_set.classes):
            raise DatasetError(f"the train and val splits of {cfg.data.root} have different class folders "
                               f"({len(train_set.classes)} vs {len(val_set.classes)} classes); they must be the same")
        class_names = list(train_set.classes)
        pin = env.device.type == "cuda"
        sampler = build_train_sampler(train_set, a.repeated_aug, env.rank, env.world_size, cfg.run.seed)
        # No persistent workers: a fresh iterator per epoch draws its workers' seeds from the restored RNG, so
        # that a resumed run sees the same augmentation as an uninterrupted one.
        train_loader = DataLoader(train_set, optim.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                                  pin_memory=pin, drop_last=True)
        val_loader = DataLoader(shard(val_set, env.rank, env.world_size), optim.batch_size,
                                num_workers=cfg.data.num_workers, pin_memory=pin)
        steps_per_epoch = len(train_loader) // optim.accumulate_steps  # optimizer steps
        total_batch = optim.batch_size * env.world_size * optim.accumulate_steps
        if steps_per_epoch == 0:
            raise DatasetError(f"{len(train_set)} training images do not make one batch of {total_batch} "
                               f"(batch_size {optim.batch_size} x {env.world_size} processes x "
                               f"{optim.accumulate_steps} accumulated)")

        # Model.
        model = create_model(cfg.model.name, num_classes=len(class_names), drop_path_rate=cfg.model.drop_path_rate,
                             pretrained=cfg.model.pretrained)
        model.set_grad_checkpointing(cfg.model.grad_checkpointing)
        model.to(env.device)
        train_model = wrap_model(model, env)
        ema = ModelEmaV3(model, decay=optim.ema_decay) if optim.ema else None  # after DDP's weight broadcast

        # Optimizer, schedule, loss.
        lr = scaled_lr(optim.base_lr, total_batch)
        optimizer = adamw(model, lr, optim.weight_decay)
        scheduler = build_scheduler(optimizer, optim, steps_per_epoch)
        mixup = build_mixup(a, len(class_names))
        criterion = build_criterion(a, mixup)
        step = OptimizerStep(train_model, optimizer, env.device, cfg.run.amp, clip_grad=optim.clip_grad,
                             accumulate_steps=optim.accumulate_steps)

        # Resume.
        resumed = resume(cfg.run.resume, env, out, TASK, model_name=cfg.model.name, class_names=class_names,
                         model=model, optimizer=optimizer, scheduler=scheduler, step=step, ema=ema,
                         seed=cfg.run.seed, progress_key="epoch")
        start_epoch, best_top1 = (resumed[1]["epoch"], resumed[1]["best"]) if resumed else (0, -1.0)
        run.banner(model=cfg.model.name, params=count_params(model), classes=len(class_names),
                   data=cfg.data.root if cfg.data.dataset == "folder" else cfg.data.dataset,
                   train_size=len(train_set), val_size=len(val_set), batch=optim.batch_size,
                   accumulate_steps=optim.accumulate_steps, precision=step.precision,
                   optimizer=f"lr {lr:.3g} (base {optim.base_lr:g} x {total_batch}/512)",
                   schedule=f"{steps_per_epoch} steps per epoch, {optim.epochs} epochs",
                   resumed=resumed and f"resumed from {resumed[0]} after epoch {start_epoch}")
        records = run.start_records(cfg, start_epoch)

        def losses_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            images, targets = (t.to(env.device, non_blocking=True) for t in batch)
            if mixup is not None:
                images, targets = mixup(images, targets)
            with step.autocast():
                return criterion(train_model(images), targets)

        # Train, evaluate and save, epoch by epoch.
        result = None
        for epoch in range(start_epoch, optim.epochs):
            sampler.set_epoch(epoch)
            optimizer_steps = iter(range(epoch * steps_per_epoch + 1, (epoch + 1) * steps_per_epoch + 1))

            def after_step() -> None:
                # The lr of step t is set by step_update(t) after step t - 1.
                done = next(optimizer_steps)
                scheduler.step_update(done)
                if ema is not None:
                    ema.update(model, step=done)

            with progress_bar(env, steps_per_epoch * optim.accumulate_steps, f"epoch {epoch + 1}/{optim.epochs}") as bar:
                batches = islice(train_loader, steps_per_epoch * optim.accumulate_steps)
                stats = train_steps(train_model, batches, losses_of, step, env, bar, after_step=after_step)
            result = evaluate_model(model, val_loader, env.device, cfg.run.amp)
            ema_result = evaluate_model(ema.module, val_loader, env.device, cfg.run.amp) if ema is not None else None
            # Every process's RNG state, captured after the epoch's last random draw (evaluation included).
            rng = all_rng_states()
            best_top1 = max(best_top1, result.top1)
            if records is None:  # not the main process
                continue
            record: dict[str, Any] = dict(epoch=epoch + 1, **stats, val_loss=result.loss, val_top1=result.top1,
                                          val_top5=result.top5)
            if ema_result is not None:
                record.update(ema_top1=ema_result.top1, ema_top5=ema_result.top5)
            records.append(record)
            plot_curves(records.records, out / CURVES, "epoch", CURVE_PANELS)
            run.save(training_state(TASK, model=model, optimizer=optimizer, scheduler=scheduler, step=step, ema=ema,
                                    model_name=cfg.model.name, class_names=class_names, config=cfg.to_dict(),
                                    epoch=epoch + 1, best=best_top1, metrics=record, rng=rng),
                     best=result.top1 == best_top1)
            run.say(f"epoch {epoch + 1}/{optim.epochs}: train loss {stats['train_loss']:.4f}, held-out "
                    f"{result.summary()}" + (f", EMA top-1 {ema_result.top1:.2f}%" if ema_result is not None else ""))

        if result is None:  # the checkpoint had finished every epoch already
            result = evaluate_model(model, val_loader, env.device, cfg.run.amp)
        run.say(f"held-out accuracy: {result.summary()}")
        run.say(f"checkpoint {out / 'last.pth'}, metrics {out / 'metrics.jsonl'}, curves {out / CURVES}")
        return result
