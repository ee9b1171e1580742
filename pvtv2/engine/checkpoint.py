"""Training checkpoints: everything a run needs to continue exactly where it stopped, written atomically.

A checkpoint holds the model (official state-dict keys, so any tool of the zoo loads it), the optimizer,
scheduler, grad scaler and EMA states, the number of finished epochs, every process's RNG states
(python, numpy, torch, CUDA), the class names and the config. It is written to a temporary file beside
its place, flushed to disk and renamed over the old one, so a run killed at any moment leaves either
the previous checkpoint or the new one, never half a file. It holds only tensors and plain values, so it
is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.weights import CheckpointError

# Marks a file as a training checkpoint of this package (official or timm weights have no such key).
FORMAT_KEY = "pvtv2_train_checkpoint"
FORMAT_VERSION = 1
LAST = "last.pth"
BEST = "best.pth"


def atomic_save(state: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)  # atomic on POSIX and Windows: readers see the old file or the new one
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    # The rename itself is only durable once the folder entry is on disk (POSIX; not possible on Windows).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`atomic_save` during training; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(
            f"cannot read checkpoint {path} (damaged, truncated or not a checkpoint): {error}"
        ) from error
    if not isinstance(state, dict) or FORMAT_KEY not in state:
        raise CheckpointError(
            f"{path} is not a training checkpoint of pvt train (no {FORMAT_KEY!r} entry); to start from its "
            f"weights, fine-tune with --pretrained {path}"
        )
    if state[FORMAT_KEY] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer pvtv2 (format {state[FORMAT_KEY]}, this one reads {FORMAT_VERSION})"
        )
    return state


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


def _preview(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")
