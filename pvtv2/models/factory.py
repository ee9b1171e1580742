"""``create_model``, the one way to get a model of the zoo: built by the registry, then given its weights."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from torch import nn

from . import download
from .loading import load_pretrained
from .registry import build_model

OFFICIAL = "official"

Pretrained = Literal["official"] | bool | str | os.PathLike | Mapping | None


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    pretrained: Pretrained = None,
    drop_path_rate: float = 0.0,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    in_chans: int = 3,
    **kwargs: Any,
) -> nn.Module:
    """Build model ``name``. ``pretrained="official"`` (or ``True``) loads the official ImageNet-1K release
    (downloaded once into the cache, see :mod:`pvtv2.models.download`); a path or state dict loads that
    checkpoint (official, timm or HF layout).

    ``num_classes`` is the size of the classification head (0: none). ``features_only=True`` returns a
    model whose forward gives the feature maps of ``out_indices`` (strides 4, 8, 16, 32) instead of logits.
    """
    model = build_model(
        name, num_classes=num_classes, drop_path_rate=drop_path_rate, features_only=features_only,
        out_indices=out_indices, in_chans=in_chans, **kwargs,
    )
    if pretrained is True or (isinstance(pretrained, str) and pretrained == OFFICIAL):
        pretrained = download.fetch(name)  # the official release file of `name`, downloaded once into the cache
    if pretrained is not None and pretrained is not False:
        load_pretrained(model, pretrained)
    return model
