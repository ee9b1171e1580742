"""Parameter and FLOP counts under the official PVT convention.

The official ``get_flops.py`` runs mmcv's ``get_model_complexity_info`` and adds the two attention matmuls
by hand, since mmcv only sees modules. One "FLOP" is one multiply-add. Per module type:

==================================  =================================================================
Conv (1d/2d/3d)                     output elements x (in_channels / groups x kernel volume), + output
                                    elements for the bias
ConvTranspose                       input elements x (out_channels / groups x kernel volume), + output
                                    elements for the bias
Linear                              input elements x out_features (bias not counted)
BatchNorm, GroupNorm, InstanceNorm, input elements, x2 when affine
LayerNorm
ReLU, ReLU6, LeakyReLU, PReLU, ELU  elements (GELU is not counted)
Pooling (incl. adaptive)            input elements
Upsample                            output elements
SpatialReductionAttention           2 x N x M x C per call (QK^T and attn @ V): N query tokens, M key/value
                                    tokens, C channels
==================================  =================================================================

Dropout, stochastic depth, GELU, residual additions and functional ops are free, as in mmcv. Unlike the
official tool, N and M come from the actual forward pass (PVTv1's class token included, any input size).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..errors import InputError
from .layers import SpatialReductionAttention
from .registry import build_model

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
         nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm)
_ACTIVATION = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _conv(module: nn.Module, args: tuple, output: torch.Tensor) -> int:
    per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
    return output.numel() * per_output + (output.numel() if module.bias is not None else 0)


def _conv_transpose(module: nn.Module, args: tuple, output: torch.Tensor) -> int:
    # Each input element is scattered through out_channels / groups kernels.
    per_input = module.out_channels // module.groups * math.prod(module.kernel_size)
    return args[0].numel() * per_input + (output.numel() if module.bias is not None else 0)


def _linear(module: nn.Module, args: tuple, output: torch.Tensor) -> int:
    return args[0].numel() * module.out_features


def _norm(module: nn.Module, args: tuple, output: torch.Tensor) -> int:
    affine = getattr(module, "affine", False) or getattr(module, "elementwise_affine", False)
    return args[0].numel() * (2 if affine else 1)


def _elements_in(module: nn.Module, args: tuple, output: torch.Tensor) -> int:
    return args[0].numel()


def _elements_out(module: nn.Module, args: tuple, output: torch.Tensor) -> int:
    return output.numel()


def _attention(module: SpatialReductionAttention, args: tuple, kwargs: dict) -> int:
    inputs = dict(zip(("x", "height", "width"), args), **kwargs)  # forward(x, height, width)
    batch, num_tokens, dim = inputs["x"].shape
    return 2 * batch * num_tokens * module.reduced_tokens(num_tokens, inputs["height"], inputs["width"]) * dim


# (category, module types, counter(module, args, output)); the first matching row counts a module.
_MODULE_RULES: tuple[tuple[str, tuple[type[nn.Module], ...], Callable[..., int]], ...] = (
    ("conv", _CONV, _conv),
    ("conv", _CONV_TRANSPOSE, _conv_transpose),
    ("linear", (nn.Linear,), _linear),
    ("norm", _NORM, _norm),
    ("activation", _ACTIVATION, _elements_out),
    ("pool", _POOL, _elements_in),
    ("upsample", (nn.Upsample,), _elements_out),
)


def create_for_counting(name: str, **kwargs: Any) -> nn.Module:
    """Model ``name`` (``build_model`` arguments) on the meta device: shapes without weights, built in a
    blink, for :func:`count_params` and :func:`count_flops`."""
    with torch.device("meta"):
        return build_model(name, **kwargs)


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model`` (shared ones once), trainable or not. Works on the meta device."""
    return sum(p.numel() for p in model.parameters())


def count_flops(
    model: nn.Module,
    input_size: Sequence[int] = (224, 224),
    *,
    in_chans: int | None = None,
    device: str | torch.device | None = "meta",
) -> int:
    """Multiply-adds of one forward pass of a single ``in_chans`` x H x W image, ``input_size = (H, W)``.

    See the module docstring for what is counted. Counts depend on shapes only, so by default the pass
    runs on the meta device: no arithmetic and no memory whatever the size, and the model's weights are
    untouched. Pass ``device=None`` to run on the model's own device instead, for models whose shapes
    depend on values (e.g. detectors with non-maximum suppression).
    """
    return sum(flop_breakdown(model, input_size, in_chans=in_chans, device=device).values())


def flop_breakdown(
    model: nn.Module,
    input_size: Sequence[int] = (224, 224),
    *,
    in_chans: int | None = None,
    device: str | torch.device | None = "meta",
) -> dict[str, int]:
    """:func:`count_flops` split by kind: ``conv``, ``linear``, ``norm``, ``activation``, ``pool``,
    ``upsample`` and ``attention`` (kinds the model lacks are absent)."""
    height, width = _check_size(input_size)
    channels = in_chans if in_chans is not None else getattr(model, "in_chans", 3)
    tensors = dict((*model.named_parameters(), *model.named_buffers()))
    like = next(iter(tensors.values()), torch.empty(0))  # the image takes the model's dtype (and device)
    counts: Counter[str] = Counter()
    # Blocks with forward hooks run as their modules (never on fused kernels), so every module is counted.
    with _counting_hooks(model, counts), _eval_mode(model), torch.no_grad():
        if device is None:
            model(torch.zeros(1, channels, height, width, device=like.device, dtype=like.dtype))
        else:
            # Shape-only stand-ins for every parameter and buffer, for the duration of this call only.
            stand_ins = {name: torch.empty_like(t, device=device) for name, t in tensors.items()}
            image = torch.zeros(1, channels, height, width, device=device, dtype=like.dtype)
            functional_call(model, stand_ins, (image,))
    return dict(counts)


def _check_size(input_size: Sequence[int]) -> tuple[int, int]:
    size = tuple(input_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise InputError(f"input_size must be (height, width) in pixels, got {input_size!r}")
    return size  # type: ignore[return-value]


@contextmanager
def _counting_hooks(model: nn.Module, counts: Counter[str]) -> Iterator[None]:
    """Forward hooks adding each counted module's multiply-adds to ``counts``; removed on exit."""
    handles = []

    def rule_hook(category: str, counter: Callable[..., int]) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            counts[category] += counter(module, args, output)

        return hook

    def attention_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        counts["attention"] += _attention(module, args, kwargs)

    try:
        for module in model.modules():
            if isinstance(module, SpatialReductionAttention):
                handles.append(module.register_forward_hook(attention_hook, with_kwargs=True))
                continue  # its q/kv/proj/sr/norm children are counted by their own rules
            for category, types, counter in _MODULE_RULES:
                if isinstance(module, types):
                    handles.append(module.register_forward_hook(rule_hook(category, counter)))
                    break
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluation mode for the duration, then each module's own mode back (they may differ)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training
