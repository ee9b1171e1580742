"""The whole state of a training run, saved atomically and restored exactly: what ``--resume`` reads.

A training checkpoint holds the model (official state-dict keys, so any tool of the zoo loads it), the
optimizer, schedule, grad scaler and EMA states, the progress (epochs or iterations done), the best
held-out figure so far, every process's RNG states (python, numpy, torch, CUDA), the class names, the
config, and the ``task`` it belongs to (classification, detection, segmentation). It is written to a
temporary file beside its place, flushed to disk and renamed over the old one, so a run killed at any
moment leaves either the previous checkpoint or the new one, never half a file. It holds only tensors and
plain values, so it is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..files import written_atomically
from ..models.loading import CheckpointError, check_weights, read_file
from . import distributed
from .distributed import DistributedEnv
from .optim import OptimizerStep

logger = logging.getLogger("pvtv2")

# Marks a file as a training checkpoint of this package (official or timm weights have no such key).
FORMAT_KEY = "pvtv2_train_checkpoint"
FORMAT_VERSION = 2  # 2: a "task" and a "best" entry in every checkpoint
LAST = "last.pth"
BEST = "best.pth"
TASKS = {"classification": "pvt train", "detection": "pvt det-train", "segmentation": "pvt seg-train"}


def training_state(
    task: str,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: OptimizerStep,
    ema: nn.Module | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A checkpoint's contents: the task, the training objects' states and ``fields`` (``model_name``,
    ``class_names``, ``config``, the progress, ``best``, ``metrics``, ``rng`` and any the task adds)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return {
        FORMAT_KEY: FORMAT_VERSION, "task": task, **fields, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": step.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
    }


def atomic_save(state: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    with written_atomically(path) as temporary:
        torch.save(dict(state), temporary)


def is_training_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a readable training checkpoint of this package (of any task)."""
    path = Path(path)
    if not path.is_file() or path.suffix == ".safetensors":
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not ours, or not readable: the caller's loader reports it with its message
        return False
    return isinstance(state, dict) and FORMAT_KEY in state


def read_training_checkpoint(path: str | Path, task: str | None = None) -> dict[str, Any]:
    """A checkpoint written by :func:`atomic_save` during training (of ``task``, when given); a clear error
    for a damaged file, a file of another kind, or another task's checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; a training checkpoint is a file (last.pth, best.pth)")
    return training_checkpoint(read_file(path), path, task)  # read_file: a clear error for a damaged file


def training_checkpoint(loaded: Mapping[str, Any], path: str | Path, task: str | None = None) -> dict[str, Any]:
    """:func:`read_training_checkpoint` of a file already read (``loaded``, from ``path``)."""
    state = dict(loaded)
    if FORMAT_KEY not in state:
        command = TASKS.get(task or "classification")
        raise CheckpointError(
            f"{path} is not a training checkpoint of {command} (no {FORMAT_KEY!r} entry); to start from its "
            f"weights, use --pretrained {path}"
        )
    if state[FORMAT_KEY] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer pvtv2 (format {state[FORMAT_KEY]}, this one reads {FORMAT_VERSION})"
        )
    state = _upgrade(state)
    if task is not None and state["task"] != task:
        raise CheckpointError(f"{path} is a checkpoint of {TASKS[state['task']]} ({state['task']}), "
                              f"not of {TASKS[task]} ({task})")
    return state


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """Format 1 (before every checkpoint named its task and best figure) read as format 2."""
    if state[FORMAT_KEY] >= 2:
        return state
    task = {"semantic_segmentation": "segmentation"}.get(state.get("task"), state.get("task", "classification"))
    best = next(state[k] for k in ("best_top1", "best_ap", "best_mIoU") if k in state)
    return {**state, "task": task, "best": best, FORMAT_KEY: 2}


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


def resume(
    resume_from: str | None,
    env: DistributedEnv,
    output_dir: Path,
    task: str,
    *,
    model_name: str,
    class_names: list[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: OptimizerStep,
    ema: nn.Module | None = None,
    seed: int,
    progress_key: str,
) -> tuple[Path, dict[str, Any]] | None:
    """Continue the run ``resume_from`` names (see :func:`resume_path`): restore the model, optimizer,
    schedule, scaler, EMA and this process's random streams; returns the checkpoint's path and contents.
    None for a new run (after warning that it replaces a checkpoint already in ``output_dir``)."""
    path = resume_path(resume_from, output_dir)
    if path is None:
        if env.is_main and (output_dir / LAST).exists():
            logger.warning("%s already has a checkpoint: this new run replaces it (continue it with --resume auto)",
                           output_dir)
        return None
    state = read_training_checkpoint(path, task)
    check_compatible(state, path, model_name, class_names)
    check_weights(state["model"], model.state_dict(), f"checkpoint {path}")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state["ema"] is not None:
            ema.load_state_dict(state["ema"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path} does not fit this run's model or optimizer: {error}") from error
    check_optimizer_state(model, optimizer, path)
    scheduler.load_state_dict(state["scheduler"])
    step.load_state_dict(state["scaler"])
    restore_rng(state["rng"], env, seed + state[progress_key])
    return path, state


def check_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    """Refuse optimizer moments of another shape than their parameter (a model whose layout changed since the
    checkpoint; its weights may still load converted), which torch loads without a word and fails on later."""
    names = {id(p): name for name, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise CheckpointError(
                        f"checkpoint {path} holds optimizer state {key!r} of shape {tuple(value.shape)} for "
                        f"{names.get(id(param), 'a parameter')} of shape {tuple(param.shape)}: it was written for an "
                        f"older layout of the model and cannot be resumed (its weights may still load for evaluation "
                        f"and prediction)")


def check_compatible(state: Mapping[str, Any], path: str | Path, model_name: str, class_names: list[str]) -> None:
    """Refuse to resume a run of another model or another set of classes."""
    if state["model_name"] != model_name:
        raise CheckpointError(
            f"checkpoint {path} is of model {state['model_name']}, but the config trains {model_name}"
        )
    if list(state["class_names"]) != list(class_names):
        saved, now = list(state["class_names"]), list(class_names)
        raise CheckpointError(
            f"checkpoint {path} was trained on {len(saved)} classes ({_preview(saved)}), but the dataset has "
            f"{len(now)} ({_preview(now)}); resume on the same dataset, or fine-tune with --pretrained {path}"
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch and CUDA random states, as tensors and plain values."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                                           "pos": int(numpy_state["state"]["pos"])}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def all_rng_states() -> list[dict[str, Any]]:
    """Every process's :func:`rng_state`, in rank order (every process must call it)."""
    return distributed.all_gather_objects(rng_state())


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {"key": state["numpy"]["state"]["key"].numpy().astype(np.uint32),
                            "pos": state["numpy"]["state"]["pos"]}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def _preview(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")
