"""The training loop every task runs: batches in, losses out, one optimizer step at a time.

A task gives a function from a batch to its named losses; the loop sums them, refuses a non-finite
total, takes the optimizer step (:class:`OptimizerStep`), calls the task back after each step (schedule,
EMA), shows progress, and returns each loss's mean over all processes with the lr and the throughput.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..errors import RunFailure
from . import distributed
from .distributed import DistributedEnv
from .optim import OptimizerStep

TOTAL = "train_loss"


def progress_bar(env: DistributedEnv, total: int, description: str, initial: int = 0, unit: str = "batch") -> tqdm:
    """A progress bar on the main process (a silent one elsewhere)."""
    return tqdm(total=total, initial=initial, desc=description, disable=not env.is_main, unit=unit,
                dynamic_ncols=True)


def train_steps(
    model: nn.Module,
    batches: Iterable[Any],
    losses_of: Callable[[Any], Mapping[str, torch.Tensor] | torch.Tensor],
    step: OptimizerStep,
    env: DistributedEnv,
    progress: tqdm,
    *,
    after_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` on ``batches`` (each an ``(inputs, targets)`` pair whose inputs count its images).

    ``losses_of(batch)`` returns the loss, or a mapping of named losses whose sum is trained; ``after_step``
    runs after each optimizer step. Returns ``train_loss`` (and each named loss) averaged over the
    batches of every process, the lr of the last batch, ``images_per_s`` and ``train_time_s``.
    """
    model.train()
    sums: dict[str, float] = {}
    batch_count, images_seen, start, lr = 0, 0, time.perf_counter(), step.lr
    for batch in batches:
        with step.accumulating():
            losses = losses_of(batch)
            named = dict(losses) if isinstance(losses, Mapping) else {}
            loss = sum(named.values()) if named else losses
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(_not_finite(loss_value, named, progress.n))
            lr = step.lr
            if step.step(loss) and after_step is not None:
                after_step()
        for name, value in ((TOTAL, loss_value), *((k, v.item()) for k, v in named.items())):
            sums[name] = sums.get(name, 0.0) + value
        batch_count += 1
        images_seen += len(batch[0]) * env.world_size
        progress.update(1)
        progress.set_postfix_str(f"loss {loss_value:.4f}, lr {lr:.2e}, "
                                 f"{images_seen / (time.perf_counter() - start):.1f} img/s", refresh=False)
    names = sorted(sums)
    totals = distributed.all_reduce_sum(torch.tensor([sums[n] for n in names], dtype=torch.float64,
                                                     device=env.device))
    seconds = time.perf_counter() - start
    means = {n: t / (batch_count * env.world_size) for n, t in zip(names, totals.tolist())}
    return dict(**means, lr=lr, images_per_s=images_seen / seconds, train_time_s=seconds)


class NonFiniteLossError(RunFailure, FloatingPointError):
    """The training loss became NaN or infinite: the run stops rather than train on it."""


def _not_finite(value: float, named: Mapping[str, torch.Tensor], batch: int) -> str:
    """Which loss is not finite, at which batch, and what usually helps."""
    bad = [f"{k} is {v.item()}" for k, v in named.items() if not math.isfinite(v.item())]
    which = ", ".join(bad) if bad else f"the training loss is {value}"
    return (f"{which} at batch {batch}; lower the lr, set clip_grad, "
            f"or check the batch's targets")
