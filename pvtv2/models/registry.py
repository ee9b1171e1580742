"""Model names -> builders: what the zoo holds and how each variant is built (without weights)."""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import InputError

_VARIANTS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {}


def register_family(model_class: type[nn.Module], variants: Mapping[str, dict[str, Any]]) -> None:
    """Register every ``name -> settings`` of ``variants`` as built by ``model_class(**settings)``."""
    for name, settings in variants.items():
        if name in _VARIANTS:
            raise ValueError(f"model {name!r} is registered twice")
        _VARIANTS[name] = (model_class, dict(settings))


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a shell-style ``pattern`` such as ``"pvt_v2_*"``."""
    names = sorted(_VARIANTS, key=_natural_order)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def model_settings(name: str) -> dict[str, Any]:
    """The architecture settings a variant is built with (its table row, without the class defaults)."""
    return dict(_lookup(name)[1])


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Model ``name`` with freshly initialised weights; ``kwargs`` go to its class (``num_classes``,
    ``drop_path_rate``, ``features_only``, ``out_indices``, ``in_chans``...). :func:`~pvtv2.models.create_model`
    also loads weights."""
    model_class, settings = _lookup(name)
    model = model_class(**settings, **kwargs)
    model.model_name = name
    return model


@functools.cache
def min_input_size(name: str) -> int:
    """The smallest height and width (pixels) model ``name`` takes: below it a stage's spatial reduction
    has no whole window. Read off the model built on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return build_model(name, num_classes=0).min_input_size


def _lookup(name: str) -> tuple[type[nn.Module], dict[str, Any]]:
    if name not in _VARIANTS:
        close = [n for n in list_models() if n.startswith(name.rstrip("0123456789_li"))] or list_models()
        raise InputError(f"unknown model {name!r}; known models: {', '.join(close)}")
    return _VARIANTS[name]


def _natural_order(name: str) -> tuple:
    # PVTv2 first (b0..b5 with b2_li after b2), then PVTv1 by size.
    v1_sizes = ["pvt_tiny", "pvt_small", "pvt_medium", "pvt_large"]
    return (1, v1_sizes.index(name) if name in v1_sizes else 99, name) if name.startswith("pvt_") and not name.startswith("pvt_v2") else (0, 0, name)
