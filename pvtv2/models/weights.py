"""Reading checkpoints safely and loading them into a model, whatever layout they come in."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .convert import FORMATS, Format, detect_format, to_official

logger = logging.getLogger("pvtv2")

# Wrappers that training scripts put around a state dict (DeiT/timm "model", mmcv "state_dict", ...).
_WRAPPER_KEYS = ("model", "state_dict", "model_state", "module", "model_ema")
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_MAX_KEYS_SHOWN = 10


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


def read_checkpoint(source: str | os.PathLike | Mapping) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint: a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file, an HF model folder,
    or a state dict. Pickles are opened with ``weights_only=True``, so a file cannot run code."""
    if isinstance(source, Mapping):
        return unwrap(source)
    path = Path(source)
    if path.is_dir():
        found = [path / name for name in _HF_WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise CheckpointError(f"{path} is a folder without {' or '.join(_HF_WEIGHT_FILES)}")
        path = found[0]
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types for a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return unwrap(loaded)


def unwrap(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The state dict inside common training-checkpoint wrappers, without DDP's ``module.`` prefix."""
    for key in _WRAPPER_KEYS:
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return unwrap(checkpoint[key])
    state_dict = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


def load_pretrained(model: nn.Module, source: str | os.PathLike | Mapping, fmt: Format | None = None) -> Format:
    """Load an official, timm or HF checkpoint into ``model`` strictly; returns the format it was in.

    The classification head is skipped (with a log message) when the model has none or a different
    number of classes. Every key and shape is checked before any weight is copied, so a checkpoint that
    does not fit raises :class:`CheckpointError` and leaves the model untouched.
    """
    state_dict = read_checkpoint(source)
    if fmt is None:
        try:
            fmt = detect_format(state_dict)
        except ValueError as error:
            raise CheckpointError(f"{_describe(source)}: {error}") from error
    elif fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {FORMATS}")

    expected = model.state_dict()
    wanted_keys = list(expected)
    if "head.weight" not in expected:
        wanted_keys += ["head.weight", "head.bias"]  # so that a head in the file is not reported as unexpected
    try:
        official, unexpected = to_official(state_dict, fmt, wanted_keys)
    except ValueError as error:
        raise CheckpointError(f"{_describe(source)}: {error}") from error

    has_head = "head.weight" in expected
    if "head.weight" in official and (not has_head or expected["head.weight"].shape[0] != official["head.weight"].shape[0]):
        reason = "the model has no classifier" if not has_head else (
            f"it has {official['head.weight'].shape[0]} classes and the model {expected['head.weight'].shape[0]}")
        logger.warning("not loading the checkpoint's classification head: %s", reason)
        official.pop("head.weight")
        official.pop("head.bias", None)
    elif has_head and "head.weight" not in official:
        logger.warning("the checkpoint has no classification head; the model's head keeps its initialisation")

    head_loaded = "head.weight" in official
    missing = [k for k in expected if k not in official and (head_loaded or not k.startswith("head."))]
    mismatched = [
        f"{k}: checkpoint {tuple(official[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected if k in official and official[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(
            f"{_describe(source)} ({fmt} format) does not fit {name}:"
            + _listing("missing keys", missing) + _listing("unexpected keys", unexpected)
            + _listing("shape mismatches", mismatched)
        )
    model.load_state_dict(official, strict=head_loaded or not has_head)
    return fmt


def _describe(source: str | os.PathLike | Mapping) -> str:
    return "the state dict" if isinstance(source, Mapping) else f"checkpoint {source}"


def _listing(title: str, items: list[str]) -> str:
    if not items:
        return ""
    shown = ", ".join(items[:_MAX_KEYS_SHOWN])
    more = f" and {len(items) - _MAX_KEYS_SHOWN} more" if len(items) > _MAX_KEYS_SHOWN else ""
    return f"\n  {len(items)} {title}: {shown}{more}"
