"""This package's models in timm's model registry, beside timm's own ``pvt_v2_*``.

    import timm
    import pvtv2.timm_compat  # registers "pvtv2_" + every name of pvtv2.list_models()

    model = timm.create_model("pvtv2_pvt_v2_b2", pretrained=True, num_classes=10)
    backbone = timm.create_model("pvtv2_pvt_tiny", features_only=True, out_indices=(1, 2, 3))

Each name is this package's with the prefix ``pvtv2_`` (timm has a ``pvt_v2_b0`` of its own, another
implementation with other checkpoint keys). ``timm.create_model`` builds the same model as
:func:`pvtv2.create_model`, through timm's ``build_model_with_cfg``: it carries a ``pretrained_cfg`` (input
size, ImageNet mean and std, crop, first conv, classifier), takes timm's ``device=`` and ``dtype=``, and
``pretrained=True`` loads the official release (downloaded once, :mod:`pvtv2.models.download`).
``features_only=True`` gives this package's dense backbone (for PVTv1: no class token, no final norm, as
the official detection and segmentation code) wrapped in timm's feature class: ``feature_cls="getter"``
(the default; it calls ``forward_intermediates``) or ``"fx"`` (torch.fx, at the ``feature_map1``..
``feature_map4`` nodes).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from .models import create_model, list_models

PREFIX = "pvtv2_"


def timm_name(name: str) -> str:
    """The timm registry name of this package's model ``name``: ``"pvt_v2_b0"`` -> ``"pvtv2_pvt_v2_b0"``."""
    return PREFIX + name


# What timm's data pipeline reads (timm.data.resolve_model_data_config): the official release's ImageNet
# evaluation, the classification task's defaults (resize 256, center crop 224, bicubic).
default_cfgs = generate_default_cfgs({
    timm_name(name): dict(
        url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
        interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, fixed_input_size=False,
        first_conv="patch_embed1.proj", classifier="head", license="apache-2.0",
    )
    for name in list_models()
})


def _builder(name: str, pretrained: bool, features_only: bool):
    def build(*, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
              **kwargs: Any) -> nn.Module:
        # timm passes device and dtype to the constructor; ours builds wherever torch's default device is.
        with torch.device(device) if device is not None else nullcontext():
            model = create_model(name, pretrained="official" if pretrained else None, features_only=features_only,
                                 **kwargs)
        return model.to(dtype) if dtype is not None else model

    return build


def _entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        # timm pops features_only and wraps the model in its feature class (FeatureGetterNet by default: our
        # forward_intermediates) after building it; ours then builds the dense backbone, as
        # pvtv2.create_model(name, features_only=True) does, with all four stages for timm to pick from.
        features_only = bool(kwargs.get("features_only", False))
        return build_model_with_cfg(
            _builder(name, pretrained, features_only), timm_name(name), pretrained=False,
            feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)), **kwargs,
        )

    entrypoint.__name__ = entrypoint.__qualname__ = timm_name(name)
    entrypoint.__doc__ = f"This package's {name} (pvtv2.create_model({name!r})), for timm.create_model."
    return entrypoint


def _register_all() -> None:
    module = sys.modules[__name__]
    for name in list_models():
        entrypoint = _entrypoint(name)
        setattr(module, entrypoint.__name__, entrypoint)
        register_model(entrypoint)  # reads default_cfgs of this module for the pretrained cfg


_register_all()
