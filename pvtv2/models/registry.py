"""Model names -> builders, and ``create_model``, the one way to build a model of the zoo."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

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


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    pretrained: bool | str | os.PathLike | Mapping | None = None,
    drop_path_rate: float = 0.0,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    in_chans: int = 3,
    **kwargs: Any,
) -> nn.Module:
    """Build model ``name``. ``pretrained=True`` loads the official ImageNet-1K release (downloaded once
    into the cache, see :mod:`pvtv2.models.hub`); a path or state dict loads that checkpoint (official,
    timm or HF layout).

    ``features_only=True`` returns a model whose forward gives the feature maps of ``out_indices``
    (strides 4, 8, 16, 32) instead of logits.
    """
    model_class, settings = _lookup(name)
    model = model_class(
        **settings, num_classes=num_classes, drop_path_rate=drop_path_rate, features_only=features_only,
        out_indices=out_indices, in_chans=in_chans, **kwargs,
    )
    model.model_name = name
    if pretrained is True:
        from .hub import fetch  # the official release file of `name`, downloaded once into the cache

        pretrained = fetch(name)
    if pretrained is not None and pretrained is not False:
        from .weights import load_pretrained

        load_pretrained(model, pretrained)
    return model


def _lookup(name: str) -> tuple[type[nn.Module], dict[str, Any]]:
    if name not in _VARIANTS:
        close = [n for n in list_models() if n.startswith(name.rstrip("0123456789_li"))] or list_models()
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(close)}")
    return _VARIANTS[name]


def _natural_order(name: str) -> tuple:
    # PVTv2 first (b0..b5 with b2_li after b2), then PVTv1 by size.
    v1_sizes = ["pvt_tiny", "pvt_small", "pvt_medium", "pvt_large"]
    return (1, v1_sizes.index(name) if name in v1_sizes else 99, name) if name.startswith("pvt_") and not name.startswith("pvt_v2") else (0, 0, name)
