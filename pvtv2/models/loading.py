"""Reading checkpoints safely and fitting them to a model, whatever layout they come in.

A checkpoint is read (:func:`read_checkpoint`), taken out of training wrappers (:func:`unwrap`, which also
takes the backbone out of a detector or segmenter checkpoint), matched key by key and shape by shape
against the model (:func:`fit_state_dict`), and only then copied into it (:func:`load_pretrained`).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError

from .keys import FORMATS, Format, detect_format, family_of, to_official
from .registry import build_model

logger = logging.getLogger("pvtv2")

# Wrappers that training scripts put around a state dict (DeiT/timm "model", mmcv "state_dict", ...).
_WRAPPER_KEYS = ("model", "state_dict", "model_state", "module", "model_ema")
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Where dense-prediction models keep the backbone, beside neck and head(s): torchvision's detectors
# (ours included) under ``backbone.body.`` (``backbone.fpn.`` is the neck), MMDetection / MMSegmentation
# (and our segmenters) under ``backbone.``. The longer prefix is tried first.
_BACKBONE_PREFIXES = ("backbone.body.", "backbone.")
_MAX_KEYS_SHOWN = 10
# What only a classifier has, by family: the head, and PVTv1's class token and final norm, which the official
# dense PVTv1 (a detector's or segmenter's backbone, ``features_only=True`` here) leaves out.
_CLASSIFIER_ONLY = {"v1": ("head.weight", "head.bias", "cls_token", "norm.weight", "norm.bias"),
                    "v2": ("head.weight", "head.bias")}


class CheckpointError(InputError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


@dataclass(frozen=True)
class CheckpointContents:
    """The tensors of a checkpoint and, for a detector or segmenter checkpoint, what was left out."""

    tensors: dict[str, torch.Tensor]
    # Keys outside ``backbone.`` (neck, heads) of an MMDetection / MMSegmentation checkpoint: not part of
    # the backbone that ``tensors`` holds. Empty for a classification checkpoint.
    dropped: tuple[str, ...] = ()

    @property
    def is_backbone_of_dense_model(self) -> bool:
        return bool(self.dropped)


@dataclass(frozen=True)
class FittedState:
    """A checkpoint matched against a model: what to load, in official keys."""

    state_dict: dict[str, torch.Tensor]
    fmt: Format  # the layout the checkpoint was in
    # Why the model's classification head does not get the checkpoint's, when it does not.
    head_note: str | None = None


def read_checkpoint(source: str | os.PathLike | Mapping) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint: a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file, an HF model folder,
    or a state dict. Pickles are opened with ``weights_only=True``, so a file cannot run code."""
    return open_checkpoint(source).tensors


def open_checkpoint(source: str | os.PathLike | Mapping) -> CheckpointContents:
    """Like :func:`read_checkpoint`, also telling whether the tensors are the backbone of a detector or
    segmenter checkpoint (and which keys were left out)."""
    return _unwrap(source if isinstance(source, Mapping) else read_file(source))


def read_file(source: str | os.PathLike) -> Mapping:
    """What a checkpoint file (or HF model folder) holds, as stored: a mapping, wrappers and all. Pickles
    are opened with ``weights_only=True``; a missing, damaged or foreign file is a :class:`CheckpointError`."""
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
        raise CheckpointError(f"cannot read checkpoint {path} (damaged, truncated or not a checkpoint): "
                              f"{load_failure(error)}") from error
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return loaded


def load_failure(error: BaseException) -> str:
    """Why a file could not be loaded, in a few words: the first sentence of the loader's message (torch's
    go on for a paragraph), or what a bare one means (unpickling text fails with ``KeyError: '101'``)."""
    text = str(error).strip()
    first = text.splitlines()[0].split(". ")[0].rstrip(".") if text else ""
    if isinstance(error, (KeyError, EOFError)) or len(first) < 12:
        return "neither a PyTorch zip archive nor a pickle"
    return first


def unwrap(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The state dict inside common training-checkpoint wrappers, without DDP's ``module.`` prefix; for
    a detector or segmenter checkpoint (torchvision's, MMDetection's, MMSegmentation's, ours), its backbone
    without the prefix."""
    return _unwrap(checkpoint).tensors


def _unwrap(checkpoint: Mapping) -> CheckpointContents:
    for key in _WRAPPER_KEYS:
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return _unwrap(checkpoint[key])
    state_dict = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return _extract_backbone(state_dict)


def _extract_backbone(state_dict: dict[str, torch.Tensor]) -> CheckpointContents:
    prefix = next((p for p in _BACKBONE_PREFIXES if any(k.startswith(p) for k in state_dict)), None)
    if prefix is None:
        return CheckpointContents(state_dict)
    backbone = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    dropped = tuple(k for k in state_dict if not k.startswith(prefix))
    parts = sorted({".".join(k.split(".")[:2 if k.startswith("backbone.") else 1]) for k in dropped})
    layout = "torchvision" if prefix == "backbone.body." else "MMDetection / MMSegmentation"
    logger.info(
        "this is a detector or segmenter checkpoint (%s layout): taking its backbone (%d tensors) and leaving "
        "out the %d tensors of %s", layout, len(backbone), len(dropped), ", ".join(parts),
    )
    return CheckpointContents(backbone, dropped)


def fit_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    *,
    fmt: Format | None = None,
    source: str = "the state dict",
    model_name: str = "the model",
    check_values: bool = True,
) -> FittedState:
    """Match ``state_dict`` (official, timm or HF layout; detected when ``fmt`` is None) against a model's
    ``expected`` state dict (meta tensors do: only keys and shapes are read).

    Every key of the model must be found with its shape, and every tensor of the checkpoint must find its
    key, else :class:`CheckpointError` lists what is missing, unexpected or of another shape. The only
    exception is the classification head: a checkpoint's head that the model cannot take (no head, another
    number of classes) is left out, and a model's head the checkpoint lacks keeps its initialisation;
    ``head_note`` of the result says which. With ``check_values`` the tensors' values are checked too
    (:func:`check_weights`); matching only the keys and shapes (to recognise a model) skips that.
    """
    if fmt is None:
        try:
            fmt = detect_format(state_dict)
        except ValueError as error:
            raise CheckpointError(f"{source}: {error}") from error
    elif fmt not in FORMATS:
        raise InputError(f"unknown checkpoint format {fmt!r}; expected one of {FORMATS}")

    # A classifier's parts the model lacks are looked for too, so that they are not reported as unexpected.
    classifier_only = [k for k in _CLASSIFIER_ONLY[family_of(expected)] if k not in expected]
    try:
        official, unexpected = to_official(state_dict, fmt, [*expected, *classifier_only])
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from error

    head_note = _fit_head(official, expected)
    for key in classifier_only:
        official.pop(key, None)
    head_loaded = "head.weight" in official
    missing = [k for k in expected if k not in official and (head_loaded or not k.startswith("head."))]
    mismatched = [
        f"{k}: checkpoint {tuple(official[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected if k in official and official[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{source} ({fmt} format) does not fit {model_name}:"
            + _listing("missing keys", missing) + _listing("unexpected keys", unexpected)
            + _listing("shape mismatches", mismatched)
        )
    if check_values:
        check_weights(official, expected, source)
    return FittedState(official, fmt, head_note)


def check_weights(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str | os.PathLike
) -> None:
    """Refuse a checkpoint whose tensors are not a model's weights, naming the first key that shows it: a
    tensor that is not floating point where the model's parameter or buffer is (int8 or bool values would be
    copied in as numbers, a quantized file read as weights), or a floating one holding NaN or infinity (a
    run that diverged). Integer tensors that the model keeps as integers (BatchNorm's
    ``num_batches_tracked``) pass; ``expected`` may be meta tensors (only dtypes are read)."""
    for key, tensor in state_dict.items():
        target = expected.get(key)
        if target is None or not target.is_floating_point():
            continue
        if not tensor.is_floating_point():
            raise CheckpointError(f"{source}: {key} holds {str(tensor.dtype).removeprefix('torch.')} values where the "
                                  f"model has floating-point weights: this is not a float checkpoint (quantized or "
                                  f"damaged); use the float weights")
        finite = torch.isfinite(tensor)
        if not finite.all():
            bad = int(finite.numel() - finite.sum())
            raise CheckpointError(f"{source}: {key} holds {bad} NaN or infinite value(s) of {tensor.numel()}; weights "
                                  f"must be finite numbers (was it written by a run whose loss diverged?)")


def _fit_head(official: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str | None:
    """Drop the checkpoint's head from ``official`` when the model cannot take it; say why, if it is not loaded."""
    has_head = "head.weight" in expected
    if "head.weight" in official and (not has_head or expected["head.weight"].shape[0] != official["head.weight"].shape[0]):
        reason = "the model has no classifier" if not has_head else (
            f"it has {official['head.weight'].shape[0]} classes and the model {expected['head.weight'].shape[0]}")
        official.pop("head.weight")
        official.pop("head.bias", None)
        return f"not loading the checkpoint's classification head: {reason}"
    if has_head and "head.weight" not in official:
        return "the checkpoint has no classification head; the model's head keeps its initialisation"
    return None


def load_pretrained(model: nn.Module, source: str | os.PathLike | Mapping, fmt: Format | None = None,
                    described_as: str | None = None) -> Format:
    """Load an official, timm or HF checkpoint into ``model`` strictly; returns the format it was in.
    ``described_as`` names a state dict ``source`` in messages (a file's tensors read already).

    The classification head is skipped (with a log message) when the model has none or a different
    number of classes. Every key and shape is checked before any weight is copied, so a checkpoint that
    does not fit raises :class:`CheckpointError` and leaves the model untouched.
    """
    expected = model.state_dict()
    fitted = fit_state_dict(
        read_checkpoint(source), expected, fmt=fmt, source=described_as or _describe(source),
        model_name=getattr(model, "model_name", type(model).__name__),
    )
    if fitted.head_note:
        logger.warning(fitted.head_note)
    has_head = "head.weight" in expected
    model.load_state_dict(fitted.state_dict, strict="head.weight" in fitted.state_dict or not has_head)
    return fitted.fmt


def model_shapes(name: str, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """The state dict of model ``name`` as meta tensors: its keys and shapes, without memory or
    initialisation, to check a checkpoint against. ``num_classes=0``: without classification head."""
    backbone, num_features = _backbone_shapes(name)
    if not num_classes:
        return dict(backbone)
    # The head is nn.Linear(num_features, num_classes); adding it here saves building the model per head size.
    head = {"head.weight": torch.empty(num_classes, num_features, device="meta"),
            "head.bias": torch.empty(num_classes, device="meta")}
    return {**backbone, **head}


@functools.cache
def _backbone_shapes(name: str) -> tuple[Mapping[str, torch.Tensor], int]:
    with torch.device("meta"):  # no memory, no initialisation: only shapes
        model = build_model(name, num_classes=0)
    return model.state_dict(), model.num_features


def _describe(source: str | os.PathLike | Mapping) -> str:
    return "the state dict" if isinstance(source, Mapping) else f"checkpoint {source}"


def _listing(title: str, items: list[str]) -> str:
    if not items:
        return ""
    shown = ", ".join(items[:_MAX_KEYS_SHOWN])
    more = f" and {len(items) - _MAX_KEYS_SHOWN} more" if len(items) > _MAX_KEYS_SHOWN else ""
    return f"\n  {len(items)} {title}: {shown}{more}"
