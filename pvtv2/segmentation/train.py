"""Training a Semantic FPN segmenter, as one plain sequence:

    processes -> data -> model -> optimizer, poly schedule, loss -> resume -> iterations: train, evaluate, save

Iteration-based, as MMSegmentation's runner: an endless stream of shuffled epochs feeds ``iterations``
steps. One process per device under torchrun (DistributedDataParallel, SyncBN on GPU), or a single
process. Only the main process prints, writes metrics and saves checkpoints. A checkpoint holds the
model, optimizer, schedule, grad scaler, every process's RNG states and the iteration, so a resumed run
continues the same data order and schedule.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from ..data.folder import DatasetError
from ..engine import distributed
from ..engine.checkpoint import BEST, FORMAT_KEY, FORMAT_VERSION, LAST, atomic_save, check_compatible, rng_state
from ..engine.distributed import DistributedEnv
from ..engine.evaluate import shard
from ..engine.recipe import autocast, build_optimizer, precision
from ..engine.report import MetricsLog
from ..engine.train import restore_rng, restore_training_state, resume_path, seed_everything, warn_if_replacing
from ..models.complexity import count_params
from ..models.weights import CheckpointError
from .config import SegTrainConfig, config_yaml, parse_scales
from .data import IGNORE_INDEX, SegmentationDataset, ensure_shapes, read_class_names
from .evaluate import SegmentationMetrics, evaluate
from .model import build_segmenter
from .transforms import EvalTransform, train_transform

logger = logging.getLogger("pvtv2")
TASK = "semantic_segmentation"  # marks a checkpoint as a segmenter's
CURVES = "curves.png"
DEFAULT_SHAPES_ROOT = "data/shapes-seg"


class PolySchedule:
    """lr factor of iteration t: (1 - t / total) ** power, times a linear ramp over the first ``warmup`` iterations."""

    def __init__(self, total: int, power: float, warmup: int = 0) -> None:
        self.total, self.power, self.warmup = total, power, warmup

    def __call__(self, t: int) -> float:
        factor = (1 - min(t, self.total) / self.total) ** self.power
        return factor * min(1.0, (t + 1) / self.warmup) if self.warmup > 0 else factor


class IterationSampler(Sampler[int]):
    """This process's share of an endless stream of epochs, each shuffled from (seed, epoch), starting after
    ``start`` indices: the stream a run interrupted after ``start`` samples would have gone on with."""

    def __init__(self, size: int, rank: int, world_size: int, seed: int, start: int = 0) -> None:
        if size < world_size:
            raise DatasetError(f"{size} training images cannot be shared among {world_size} processes")
        self.size, self.rank, self.world_size, self.seed, self.start = size, rank, world_size, seed, start
        self.per_process = size // world_size  # every process gets as many, so steps stay in lockstep

    def __iter__(self) -> Iterator[int]:
        epoch, position = divmod(self.start, self.per_process)
        while True:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.size, generator=generator)[: self.per_process * self.world_size]
            yield from order[self.rank::self.world_size][position:].tolist()
            epoch, position = epoch + 1, 0


def dataset_root(cfg: SegTrainConfig) -> Path:
    """The data folder of ``cfg``; the generated shapes are written there first when they are missing."""
    data = cfg.data
    if data.dataset == "shapes":
        return ensure_shapes(data.root or DEFAULT_SHAPES_ROOT, data.shapes_train, data.shapes_val, data.shapes_size,
                             data.shapes_seed, data.shapes_max_objects, data.shapes_size_range)
    return Path(data.root)  # type: ignore[arg-type]  # validate() requires it


def build_datasets(cfg: SegTrainConfig) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The training split (augmented as the paper) and the held-out split (test scale, masks as they are)."""
    root = dataset_root(cfg)
    layout = "folder" if cfg.data.dataset == "folder" else "ade20k"
    names = read_class_names(root, layout, cfg.data.num_classes)
    a = cfg.augment
    train_set = SegmentationDataset(root, "train", layout, class_names=names, transform=train_transform(
        a.crop_size, a.scale, a.ratio_range, a.cat_max_ratio, a.hflip, a.photometric))
    val_set = SegmentationDataset(root, "val", layout, class_names=names, transform=EvalTransform(a.scale))
    return train_set, val_set


def train(config: SegTrainConfig) -> SegmentationMetrics:
    """Run (or continue) the training ``config`` describes; returns the final held-out metrics."""
    env = distributed.setup(config.run.device)
    try:
        return _train(config, env)
    finally:
        distributed.cleanup()


def _train(cfg: SegTrainConfig, env: DistributedEnv) -> SegmentationMetrics:
    out = Path(cfg.run.output_dir)
    say = print if env.is_main else _silent
    seed_everything(cfg.run.seed + env.rank)  # each process draws its own augmentation

    # Data.
    train_set, val_set = build_datasets(cfg)
    class_names = list(train_set.classes)
    pin = env.device.type == "cuda"
    # Loaders draw their workers' seeds from their own generators, not the global RNG: an evaluation or a new
    # iterator then leaves the augmentation stream alone, so a resumed run continues it exactly.
    val_loader = DataLoader(shard(val_set, env.rank, env.world_size), 1, num_workers=cfg.data.num_workers,
                            pin_memory=pin, generator=torch.Generator().manual_seed(cfg.run.seed))

    # Model.
    pretrained = True if cfg.model.pretrained == "official" else cfg.model.pretrained
    model = build_segmenter(cfg.model.segmenter, backbone=cfg.model.backbone, num_classes=len(class_names),
                            pretrained=pretrained, drop_path_rate=cfg.model.drop_path_rate, norm=cfg.model.norm,
                            dropout=cfg.model.dropout, neck_channels=cfg.model.neck_channels,
                            head_channels=cfg.model.head_channels)
    if env.world_size > 1 and env.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics over all GPUs, as SyncBN
    model.to(env.device)
    train_model: nn.Module = model
    if env.world_size > 1:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=device_ids)

    # Optimizer, schedule, loss.
    optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, PolySchedule(cfg.optim.iterations, cfg.optim.poly_power, cfg.optim.warmup_iters))
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    scaler = torch.amp.GradScaler(env.device.type, enabled=env.device.type == "cuda" and cfg.run.amp == "fp16")

    # Resume.
    start, best_miou = 0, -1.0
    resume = resume_path(cfg.run.resume, out)
    if resume is not None:
        state = read_segmentation_checkpoint(resume)
        check_compatible(state, resume, cfg.model.backbone, class_names)
        restore_training_state(state, resume, model, optimizer, scheduler, scaler)
        start, best_miou = state["iteration"], state["best_mIoU"]
        restore_rng(state["rng"], env, cfg.run.seed + start)
    else:
        warn_if_replacing(out, env)

    batch = cfg.optim.batch_size
    sampler = IterationSampler(len(train_set), env.rank, env.world_size, cfg.run.seed, start * batch)
    train_loader = DataLoader(train_set, batch, sampler=sampler, num_workers=cfg.data.num_workers, pin_memory=pin,
                              drop_last=True, persistent_workers=cfg.data.num_workers > 0,
                              generator=torch.Generator().manual_seed(cfg.run.seed * 1000 + env.rank + start))
    test_kwargs = dict(mode=cfg.test.test_mode, crop_size=cfg.augment.crop_size, stride=cfg.test.slide_stride,
                       flip=cfg.test.flip_test, scales=parse_scales(cfg.test.test_scales), amp=cfg.run.amp)

    source = cfg.data.dataset if cfg.data.dataset == "shapes" else cfg.data.root
    say(f"pvt seg-train: {cfg.model.segmenter} on {cfg.model.backbone} ({count_params(model) / 1e6:.2f}M params), "
        f"{len(class_names)} classes; {source}: {len(train_set)} training / {len(val_set)} held-out images")
    say(f"  {env.world_size} process(es) on {env.device.type}, {precision(env.device, cfg.run.amp)}; batch {batch} x "
        f"{env.world_size} = {batch * env.world_size}, AdamW lr {cfg.optim.lr:g}, poly {cfg.optim.poly_power:g}"
        f"{f' after {cfg.optim.warmup_iters} warm-up iterations' if cfg.optim.warmup_iters else ''}, "
        f"{cfg.optim.iterations} iterations")
    say(f"  output {out}" + (f" (resumed from {resume} at iteration {start})" if resume else ""))
    metrics = MetricsLog(out, start, key="iteration") if env.is_main else None
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_yaml(cfg))

    # Iterations: train; every so often log, evaluate and save.
    result: SegmentationMetrics | None = None
    train_model.train()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=env.device)  # loss x steps, steps since the last record
    batches = iter(train_loader)
    interval_start = time.perf_counter()
    progress = tqdm(range(start, cfg.optim.iterations), desc="seg-train", disable=not env.is_main, unit="it",
                    initial=start, total=cfg.optim.iterations, dynamic_ncols=True)
    for iteration in progress:
        images, masks = next(batches)
        images, masks = images.to(env.device, non_blocking=True), masks.to(env.device, non_blocking=True)
        with autocast(env.device, cfg.run.amp):
            logits = train_model(images)
        loss = criterion(logits.float(), masks)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"the training loss is {loss_value} at iteration {iteration}; lower the lr "
                                     f"or set clip_grad")
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.optim.clip_grad is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += torch.tensor([loss_value, 1.0], dtype=torch.float64, device=env.device)
        progress.set_postfix_str(f"loss {loss_value:.4f}, lr {lr:.2e}", refresh=False)

        done = iteration + 1
        last = done == cfg.optim.iterations
        log_now = done % cfg.run.log_interval == 0 or last
        eval_now = last or (cfg.run.eval_interval > 0 and done % cfg.run.eval_interval == 0)
        save_now = last or done % cfg.run.checkpoint_interval == 0
        if not (log_now or eval_now or save_now):
            continue
        record: dict[str, Any] = dict(iteration=done, lr=lr)
        total_loss, steps = distributed.all_reduce_sum(loss_sum.clone()).tolist()
        loss_sum.zero_()
        seconds = time.perf_counter() - interval_start
        # `steps` counts every process's steps, each of `batch` images.
        record.update(train_loss=total_loss / max(steps, 1), images_per_s=steps * batch / max(seconds, 1e-9))
        if eval_now:
            result = evaluate(model, val_loader, env.device, class_names, **test_kwargs)
            train_model.train()
            record.update(val_mIoU=result.mIoU, val_mAcc=result.mAcc, val_aAcc=result.aAcc)
            best_miou = max(best_miou, result.mIoU)
        rng = distributed.all_gather_objects(rng_state()) if save_now else None
        interval_start = time.perf_counter()
        if metrics is None:  # not the main process
            continue
        metrics.append(record)
        if eval_now:
            progress.write(f"iteration {done}/{cfg.optim.iterations}: train loss {record['train_loss']:.4f}, "
                           f"held-out {result.summary()}")
        if save_now:
            state = {
                FORMAT_KEY: FORMAT_VERSION, "task": TASK, "segmenter": cfg.model.segmenter,
                "model_name": cfg.model.backbone, "class_names": class_names, "iteration": done,
                "best_mIoU": best_miou, "config": cfg.to_dict(), "metrics": record, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng,
            }
            atomic_save(state, out / LAST)
            if eval_now and result is not None and result.mIoU == best_miou:
                atomic_save(state, out / BEST)
            plot_curves(metrics.records, out / CURVES)
    progress.close()

    if result is None:  # the checkpoint had finished every iteration already
        result = evaluate(model, val_loader, env.device, class_names, **test_kwargs)
    say(f"held-out: {result.summary()}")
    say(result.table())
    say(f"checkpoint {out / LAST}, metrics {out / 'metrics.jsonl'}, curves {out / CURVES}")
    return result


def read_segmentation_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint of ``pvt seg-train``; a clear error for a classifier's or any other file."""
    from ..engine.checkpoint import read_training_checkpoint

    state = read_training_checkpoint(path)
    if state.get("task") != TASK:
        raise CheckpointError(f"{path} is a checkpoint of pvt train (a classifier), not of pvt seg-train")
    return state


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> None:
    """Training loss and held-out mIoU per iteration, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, miou_axes) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axes.plot([r["iteration"] for r in records], [r["train_loss"] for r in records], marker=".")
    loss_axes.set(xlabel="iteration", ylabel="loss", title="training loss")
    evaluated = [r for r in records if "val_mIoU" in r]
    miou_axes.plot([r["iteration"] for r in evaluated], [100 * r["val_mIoU"] for r in evaluated], marker=".")
    miou_axes.set(xlabel="iteration", ylabel="mIoU (%)", title="held-out mIoU")
    for axes in (loss_axes, miou_axes):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _silent(*args: Any, **kwargs: Any) -> None:
    pass
