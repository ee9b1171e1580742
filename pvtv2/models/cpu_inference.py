"""Eager CPU inference on oneDNN's fused kernels: one encoder block at a time, same results as its modules.

oneDNN applies an activation inside the convolution or matmul that feeds it, which saves a pass over
the FFN's widest tensor (on CPU, exact GELU alone costs more than the depth-wise conv before it).
PyTorch exposes these kernels only as the ops that Inductor emits, so eager CPU inference calls them
directly. Autograd, other devices and graph capture (compile, export, tracing) take the plain modules:
they either need gradients or do their own fusion. So do blocks with forward hooks, which the fused
kernels would bypass.

Two dtypes run fused: float32, and bfloat16 on CPUs whose oneDNN has bf16 kernels (AVX512-BF16, AMX),
either a model converted to bfloat16 or a float32 one under ``torch.autocast("cpu", torch.bfloat16)``.
Under autocast the kernels take bfloat16 copies of the weights, made once and kept while the weights
are unchanged (autocast itself recasts them in every autocast region), and give bfloat16 tokens, as the
autocast modules would.

:meth:`PyramidVisionTransformerBase.iter_stages` runs each block through :func:`block_forward` when
:func:`can_fuse` allows it, else calls the block.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from . import fast_path
from .capture import capturing_graph
from .fast_path import Switch
from .layers import Block, ConvFFN, Mlp, SpatialReductionAttention, image_to_tokens, tokens_to_image

_ONEDNN_FUSION = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
ONEDNN_BF16 = _ONEDNN_FUSION and torch.ops.mkldnn._is_mkldnn_bf16_supported()
# Off (to run every block as its modules, e.g. to compare the two paths): set_enabled(False) or `with disabled():`.
_switch = Switch()
set_enabled = _switch.set_enabled
disabled = _switch.disabled
# id of a float32 parameter -> (a weak reference to it, its version when cast, its bfloat16 copy), for
# autocast (see the module docstring). Keyed by id: tensors compare by value, so they cannot be dict keys.
_bf16_copies: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}

# Fused CPU inference runs the conv FFN a band of rows at a time. Its hidden tensor is mlp_ratio times
# wider than the tokens (51 MB for B2's first stage at batch 8): made whole, it is a fresh block on every
# call, which glibc maps from the OS and faults in page by page (~10 us per 4 KiB on a VM), and it makes
# three trips through memory. In bands of a few MB it stays in cache and in reused heap blocks. Each band
# recomputes fc1 on the conv's halo (one row above and below), hence the minimum band height; for inputs
# up to 1333 px wide (detection) bands stay under 32 MB, the largest block glibc keeps for reuse.
# The band size and what it gains in time and peak memory, with glibc's default allocator and with one that
# keeps freed memory (`pvt bench --allocator keep`), are measured in benchmarks/RESULTS.md.
FFN_BAND_BYTES = 4 * 1024 * 1024
MIN_BAND_ROWS = 32  # at most 1/16 of fc1 recomputed


def compute_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype the fused kernels would compute ``x``'s block in (float32 or bfloat16), or None where they
    do not apply to this dtype or autocast setting."""
    if torch.is_autocast_enabled("cpu"):
        autocast_bf16 = torch.get_autocast_dtype("cpu") == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16)
        return torch.bfloat16 if autocast_bf16 and ONEDNN_BF16 else None
    if x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and ONEDNN_BF16):
        return x.dtype
    return None


def can_fuse(block: Block, x: torch.Tensor) -> bool:
    """Whether :func:`block_forward` may stand in for ``block(x, ...)``: CPU inference without autograd or
    graph capture in a dtype of :func:`compute_dtype`, the block exactly as built
    (:func:`.fast_path.runs_as_built`: no wrappers, subclasses or hooks) and in evaluation mode, its
    parameters in that dtype (or float32 under autocast)."""
    # capturing_graph first: under torch.fx, x is a Proxy whose device cannot be compared.
    if not (_ONEDNN_FUSION and _switch.enabled and not capturing_graph() and x.device.type == "cpu"
            and not block.training):
        return False
    dtype = compute_dtype(x)
    if dtype is None:
        return False
    grad = torch.is_grad_enabled()
    modules = None if grad and x.requires_grad else fast_path.modules_as_built(block)
    if modules is None:
        return False
    param_dtypes = (torch.float32, dtype) if torch.is_autocast_enabled("cpu") else (dtype,)
    # Dropout and stochastic depth must be off (the fused path skips them), and autograd must have nothing
    # to record.
    for module in modules:
        if module.training:
            return False
        for param in module._parameters.values():
            if param is not None and (param.dtype not in param_dtypes or (grad and param.requires_grad)):
                return False
    return True


def block_forward(block: Block, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``block(x, height, width)`` in evaluation mode on fused kernels (the caller checked :func:`can_fuse`).

    Dropout and stochastic depth are off, so each branch adds the residual in its last linear layer.
    """
    if torch.is_autocast_enabled("cpu"):  # can_fuse allowed bf16 autocast only: float32 tokens become bfloat16
        x = x.to(torch.bfloat16)
    x = _attention(block.attn, block.norm1(x), height, width, residual=x)
    ffn = block.mlp
    if isinstance(ffn, ConvFFN):
        return _conv_ffn(ffn, block.norm2(x), height, width, residual=x)
    return _mlp(ffn, block.norm2(x), residual=x)


def band_shape(ffn: ConvFFN, batch: int, height: int, width: int,
               dtype: torch.dtype = torch.float32) -> tuple[int, int]:
    """(images, rows) of each band whose hidden tensor (of ``dtype``), halo included, is about ``FFN_BAND_BYTES``."""
    halo = ffn.dwconv.dwconv.padding[0]
    row_bytes = width * ffn.fc1.out_features * dtype.itemsize
    rows = min(height, max(MIN_BAND_ROWS, FFN_BAND_BYTES // row_bytes - 2 * halo))
    images = max(1, min(batch, FFN_BAND_BYTES // (row_bytes * (rows + 2 * halo))))  # at least 1 (also for batch 0)
    return images, rows


# -- the fused kernels ------------------------------------------------------------------------------------
def _in_dtype(param: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``param`` in the kernels' ``dtype``: itself, or its kept bfloat16 copy under autocast."""
    if param is None or param.dtype == dtype:
        return param
    key = id(param)
    kept = _bf16_copies.get(key)
    if kept is None or kept[0]() is not param or kept[1] != param._version:
        forget = weakref.ref(param, lambda _, key=key: _bf16_copies.pop(key, None))
        kept = (forget, param._version, param.detach().to(dtype))
        _bf16_copies[key] = kept
    return kept[2]


def _linear(module: nn.Linear, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
    """``activation(module(x))`` for ``activation`` in {"none", "gelu", "relu"}: one oneDNN matmul with bias
    and activation in its epilogue, which also spares the pass that ``addmm`` makes to broadcast the bias
    into its output (together ~10-20% of a linear layer here)."""
    algorithm = "none" if activation == "gelu" else ""  # "none" selects exact (erf) GELU, not tanh
    return torch.ops.mkldnn._linear_pointwise(x, _in_dtype(module.weight, x.dtype), _in_dtype(module.bias, x.dtype),
                                              activation, [], algorithm)


def _linear_add(module: nn.Linear, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + module(x)``, the sum in the matmul's epilogue."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, _in_dtype(module.weight, x.dtype),
                                                     _in_dtype(module.bias, x.dtype), "add")


def _conv_gelu_tokens(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``GELU(conv(x))`` for a channels-last image ``x``, as tokens (B, H*W, C), GELU in the conv's epilogue."""
    return image_to_tokens(torch.ops.mkldnn._convolution_pointwise(
        x, _in_dtype(conv.weight, x.dtype), _in_dtype(conv.bias, x.dtype), conv.padding, conv.stride, conv.dilation, conv.groups, "gelu", [], "none"
    ))


# -- the block's parts ------------------------------------------------------------------------------------
def _attention(
    attn: SpatialReductionAttention, x: torch.Tensor, height: int, width: int, residual: torch.Tensor
) -> torch.Tensor:
    q = _linear(attn.q, x)
    reduced = _pooled_reduction(attn, x, height, width) if attn.linear else attn.reduce(x, height, width)
    kv = _linear(attn.kv, reduced)
    return _linear_add(attn.proj, _attend(attn, q, kv), residual)


# Above this many bytes of float32 scores (all heads and images) bfloat16 attention goes back to PyTorch's
# flash kernel, which never holds them whole (PVTv1's first stage at 1024 px would need ~270 MB per image).
ATTENTION_SCORES_BYTES = 32 * 1024 * 1024


def _attend(attn: SpatialReductionAttention, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """``attn.attend(q, kv)``, bfloat16 on :func:`_bf16_attention` up to ``ATTENTION_SCORES_BYTES``."""
    batch, num_tokens, _ = q.shape
    scores_bytes = batch * attn.num_heads * num_tokens * kv.shape[1] * 4
    small_bf16 = q.dtype == torch.bfloat16 and scores_bytes <= ATTENTION_SCORES_BYTES
    return attn.attend(q, kv, _bf16_attention if small_bf16 else None)


def _bf16_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention as autocast runs a plain one: both matmuls on oneDNN's bfloat16 kernels, the softmax in
    float32. PyTorch's bfloat16 flash kernel for the CPU is slower than that at PVT's shapes (few keys: 49 for
    every PVTv2 stage at 224 px) on a CPU without AMX (benchmarks/RESULTS.md)."""
    weights = torch.softmax((q @ k.transpose(-2, -1)).float().mul_(q.shape[-1] ** -0.5), dim=-1).to(q.dtype)
    return weights @ v


def _pooled_reduction(attn: SpatialReductionAttention, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Linear SRA's ``reduce``: pool to P x P, then its 1x1 conv as one matmul on the P*P tokens. On a 7x7
    map PyTorch runs the conv on its slow im2col path (a third of the attention's time for B2-Li at batch 1)."""
    pooled = image_to_tokens(attn.pool(tokens_to_image(x, height, width)))
    weight = _in_dtype(attn.sr.weight, x.dtype).flatten(1)  # (C, C, 1, 1) -> (C, C), a view
    tokens = torch.ops.mkldnn._linear_pointwise(pooled, weight, _in_dtype(attn.sr.bias, x.dtype), "none", [], "")
    return attn.act(attn.norm(tokens))


def _conv_ffn(ffn: ConvFFN, x: torch.Tensor, height: int, width: int, residual: torch.Tensor) -> torch.Tensor:
    """``residual + ffn(x)`` a band of ``band_shape`` images x rows at a time (one band when it fits)."""
    batch, _, dim = x.shape
    images, rows = band_shape(ffn, batch, height, width, x.dtype)
    x, residual = x.view(batch, height, width, dim), residual.view(batch, height, width, dim)
    if images >= batch and rows >= height:
        return _conv_ffn_band(ffn, x, residual, 0, 0).flatten(1, 2)
    halo = ffn.dwconv.dwconv.padding[0]
    out = torch.empty_like(residual)
    for first in range(0, batch, images):
        last = first + images
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            # fc1 on the band and its halo rows; the conv's zero padding of the halo's outer rows only
            # reaches output rows outside the band, which are dropped.
            low, high = max(0, top - halo), min(height, bottom + halo)
            out[first:last, top:bottom] = _conv_ffn_band(ffn, x[first:last, low:high], residual[first:last, top:bottom],
                                                         top - low, high - bottom)
    return out.flatten(1, 2)


def _conv_ffn_band(ffn: ConvFFN, x: torch.Tensor, residual: torch.Tensor, above: int, below: int) -> torch.Tensor:
    """``residual + ffn(x)`` on a band of rows (B, rows, W, C) with ``above`` and ``below`` halo rows of ``x``
    that ``residual`` and the result (B, rows - halo, W, C) leave out."""
    hidden = _linear(ffn.fc1, x, "relu" if ffn.linear else "none").permute(0, 3, 1, 2)
    hidden = _conv_gelu_tokens(ffn.dwconv.dwconv, hidden).unflatten(1, x.shape[1:3])
    return _linear_add(ffn.fc2, hidden[:, above:hidden.shape[1] - below], residual)


def _mlp(mlp: Mlp, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + mlp(x)``, ``FFN_BAND_BYTES`` of hidden activations at a time (no halo: each token is on its
    own here)."""
    chunk = max(1, FFN_BAND_BYTES // (mlp.fc1.out_features * x.dtype.itemsize))
    tokens, residual_tokens = x.flatten(0, 1), residual.flatten(0, 1)
    if chunk >= tokens.shape[0]:
        return _linear_add(mlp.fc2, _linear(mlp.fc1, x, "gelu"), residual)
    out = torch.empty_like(residual_tokens)
    for start in range(0, tokens.shape[0], chunk):
        end = start + chunk
        out[start:end] = _linear_add(mlp.fc2, _linear(mlp.fc1, tokens[start:end], "gelu"), residual_tokens[start:end])
    return out.view_as(residual)
