"""Training a Semantic FPN segmenter, as one plain sequence:

    run set-up -> data -> model -> optimizer, poly schedule -> resume -> iterations: train, evaluate, save

Iteration-based, as MMSegmentation's runner: an endless stream of shuffled epochs feeds ``iterations``
steps, trained in stretches between the points where the run logs, evaluates or saves. Everything the
tasks share (processes, the optimizer step, the loop, checkpoints, metrics) is the engine's
(:mod:`pvtv2.engine`); what is here is the paper's ADE20K recipe (section 5.3).
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..engine.distributed import shard, wrap_model
from ..engine.loop import progress_bar, train_steps
from ..engine.metrics import CURVES, plot_curves
from ..engine.optim import OptimizerStep, adamw
from ..engine.run import start_run
from ..engine.schedules import PolySchedule
from ..engine.training_state import all_rng_states, resume, training_state
from ..models.complexity import count_params
from .config import SegmentationConfig, parse_scales
from .data import IGNORE_INDEX, IterationSampler, SegmentationDataset, find_dataset
from .evaluate import SegmentationMetrics, evaluate_model
from .model import build_segmenter
from .transforms import EvalTransform, model_input, train_transform

TASK = "segmentation"
CURVE_PANELS = [("training loss", "loss", [("train_loss", "training", 1.0)]),
                ("held-out mIoU", "mIoU (%)", [("val_mIoU", "mIoU", 100.0)])]


def build_datasets(cfg: SegmentationConfig) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The training split (augmented as the paper) and the held-out split (test scale, masks as they are)."""
    root, layout, names = find_dataset(cfg, cfg.data.num_classes)
    a = cfg.augment
    train_set = SegmentationDataset(root, "train", layout, class_names=names, transform=train_transform(
        a.crop_size, a.scale, a.ratio_range, a.cat_max_ratio, a.hflip, a.photometric))
    test_input = model_input(cfg, cfg.model.backbone)
    test_input.check_scale()
    val_set = SegmentationDataset(root, "val", layout, class_names=names, transform=EvalTransform(a.scale),
                                  model_input=test_input)
    return train_set, val_set


def train(cfg: SegmentationConfig) -> SegmentationMetrics:
    """Run (or continue) the training ``cfg`` describes; returns the final held-out metrics."""
    with start_run(cfg.run, "pvt seg-train") as run:
        env, out, optim, every = run.env, run.output_dir, cfg.optim, cfg.run

        # Data. Loaders draw their workers' seeds from their own generators, not the global RNG: an evaluation
        # or a new iterator then leaves the augmentation stream alone, so a resumed run continues it exactly.
        train_set, val_set = build_datasets(cfg)
        class_names = list(train_set.classes)
        pin = env.device.type == "cuda"
        val_loader = DataLoader(shard(val_set, env.rank, env.world_size), 1, num_workers=cfg.data.num_workers,
                                pin_memory=pin, generator=torch.Generator().manual_seed(cfg.run.seed))

        # Model.
        model = build_segmenter(cfg.model.segmenter, backbone=cfg.model.backbone, num_classes=len(class_names),
                                pretrained=cfg.model.pretrained, drop_path_rate=cfg.model.drop_path_rate,
                                norm=cfg.model.norm, dropout=cfg.model.dropout, neck_channels=cfg.model.neck_channels,
                                head_channels=cfg.model.head_channels)
        if env.world_size > 1 and env.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics over all GPUs, as SyncBN
        model.to(env.device)
        train_model = wrap_model(model, env)

        # Optimizer, schedule.
        optimizer = adamw(model, optim.lr, optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, PolySchedule(optim.iterations, optim.poly_power, optim.warmup_iters))
        step = OptimizerStep(train_model, optimizer, env.device, cfg.run.amp, clip_grad=optim.clip_grad,
                             accumulate_steps=optim.accumulate_steps)

        # Resume, then the data stream from where the checkpoint left it.
        resumed = resume(cfg.run.resume, env, out, TASK, model_name=cfg.model.backbone, class_names=class_names,
                         model=model, optimizer=optimizer, scheduler=scheduler, step=step, seed=cfg.run.seed,
                         progress_key="iteration")
        start, best_miou = (resumed[1]["iteration"], resumed[1]["best"]) if resumed else (0, -1.0)
        per_step = optim.batch_size * optim.accumulate_steps
        sampler = IterationSampler(len(train_set), env.rank, env.world_size, cfg.run.seed, start * per_step)
        train_loader = DataLoader(train_set, optim.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                                  pin_memory=pin, drop_last=True, persistent_workers=cfg.data.num_workers > 0,
                                  generator=torch.Generator().manual_seed(cfg.run.seed * 1000 + env.rank + start))
        test_kwargs = dict(mode=cfg.test.test_mode, crop_size=cfg.augment.crop_size, stride=cfg.test.slide_stride,
                           flip=cfg.test.flip_test, scales=parse_scales(cfg.test.test_scales), amp=cfg.run.amp)
        warmup = f" after {optim.warmup_iters} warm-up iterations" if optim.warmup_iters else ""
        run.banner(model=f"{cfg.model.segmenter} on {cfg.model.backbone}", params=count_params(model),
                   classes=len(class_names), data=cfg.data.root if cfg.data.dataset != "shapes" else "shapes",
                   train_size=len(train_set), val_size=len(val_set), batch=optim.batch_size,
                   accumulate_steps=optim.accumulate_steps, precision=step.precision,
                   optimizer=f"AdamW lr {optim.lr:g}", schedule=f"poly {optim.poly_power:g}{warmup}, "
                                                             f"{optim.iterations} iterations",
                   resumed=resumed and f"resumed from {resumed[0]} at iteration {start}")
        records = run.start_records(cfg, start, key="iteration")

        def losses_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            images, masks = (t.to(env.device, non_blocking=True) for t in batch)
            with step.autocast():
                logits = train_model(images)
            return pixel_cross_entropy(logits.float(), masks)

        # Iterations, in stretches up to the next iteration that logs, evaluates or saves.
        result: SegmentationMetrics | None = None
        batches = iter(train_loader)
        done = start
        with progress_bar(env, optim.iterations * optim.accumulate_steps, "seg-train",
                           initial=start * optim.accumulate_steps) as bar:
            while done < optim.iterations:
                stretch = min(optim.iterations, _next_multiple(done, every.log_interval),
                              _next_multiple(done, every.checkpoint_interval),
                              _next_multiple(done, every.eval_interval) if every.eval_interval else optim.iterations)
                stats = train_steps(train_model, islice(batches, (stretch - done) * optim.accumulate_steps), losses_of,
                                    step, env, bar, after_step=scheduler.step)
                done = stretch
                last = done == optim.iterations
                record: dict[str, Any] = dict(iteration=done, **stats)
                if last or (every.eval_interval and done % every.eval_interval == 0):
                    result = evaluate_model(model, val_loader, env.device, class_names, **test_kwargs)
                    record.update(val_mIoU=result.mIoU, val_mAcc=result.mAcc, val_aAcc=result.aAcc)
                    run.say(f"iteration {done}/{optim.iterations}: train loss {stats['train_loss']:.4f}, "
                            f"held-out {result.summary()}")
                    best_miou = max(best_miou, result.mIoU)
                save = last or done % every.checkpoint_interval == 0
                rng = all_rng_states() if save else None
                if records is None:  # not the main process
                    continue
                records.append(record)
                if save:
                    run.save(training_state(TASK, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                                            model_name=cfg.model.backbone, segmenter=cfg.model.segmenter,
                                            class_names=class_names, config=cfg.to_dict(), iteration=done,
                                            best=best_miou, metrics=record, rng=rng),
                             best="val_mIoU" in record and result.mIoU == best_miou)
                    plot_curves(records.records, out / CURVES, "iteration", CURVE_PANELS)

        if result is None:  # the checkpoint had finished every iteration already
            result = evaluate_model(model, val_loader, env.device, class_names, **test_kwargs)
        run.say(f"held-out: {result.summary()}")
        run.say(result.table())
        run.say(f"checkpoint {out / 'last.pth'}, metrics {out / 'metrics.jsonl'}, curves {out / CURVES}")
        return result


def pixel_cross_entropy(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the pixels that are not ``IGNORE_INDEX`` (MMSegmentation's ``avg_non_ignore``);
    a batch whose crops are all ignored contributes zero loss and zero gradient, not 0 / 0 = NaN."""
    total = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (masks != IGNORE_INDEX).sum().clamp(min=1)


def _next_multiple(done: int, interval: int) -> int:
    """The first multiple of ``interval`` after ``done``."""
    return (done // interval + 1) * interval
