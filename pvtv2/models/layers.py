"""Building blocks of the PVT family, named as in the paper.

Attribute names (``proj``, ``q``, ``kv``, ``sr``, ``norm``, ``dwconv.dwconv``, ``fc1``...) are those of
the official release, so its checkpoints load without renaming.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

# The official release and timm use PyTorch's default eps in the patch-embedding and
# spatial-reduction norms, and 1e-6 in the block and stage norms.
PATCH_NORM_EPS = 1e-5
BLOCK_NORM_EPS = 1e-6


# Tokens (B, N, C) and a channels-last image (B, C, H, W) share one memory layout, so converting
# between them is a view, not a copy; convolutions keep channels-last inputs channels-last.
def tokens_to_image(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W), a channels-last view."""
    return x.unflatten(1, (height, width)).permute(0, 3, 1, 2)


def image_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C); a view when ``x`` is channels-last."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


# oneDNN applies an activation inside the convolution or matmul that feeds it, which saves a pass over
# the FFN's widest tensor (on CPU, exact GELU alone costs more than the depth-wise conv before it).
# PyTorch exposes these kernels only as the ops that Inductor emits, so eager CPU inference calls them
# directly. Autograd, autocast, other devices and graph capture (compile, export, tracing) take the
# plain modules: they either need gradients or do their own fusion.
_ONEDNN_FUSION = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
_fusion_enabled = True


@contextmanager
def unfused() -> Iterator[None]:
    """Call every layer as its module (no fused kernels), e.g. so that forward hooks see each of them."""
    global _fusion_enabled
    previous, _fusion_enabled = _fusion_enabled, False
    try:
        yield
    finally:
        _fusion_enabled = previous


def capturing_graph() -> bool:
    """True while torch.compile, torch.export (also ONNX export) or the JIT tracer records the model."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def _fusable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _ONEDNN_FUSION
        and _fusion_enabled
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.is_autocast_enabled("cpu")
        and not capturing_graph()
    )


def _fused_conv_gelu_tokens(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return image_to_tokens(torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups, "gelu", [], "none"
    ))


def conv_gelu_tokens(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``GELU(conv(x))`` for a channels-last image ``x``, as tokens (B, H*W, C); fused on CPU inference."""
    if _fusable(x, conv.weight):
        return _fused_conv_gelu_tokens(conv, x)
    # GELU on the (B, N, C) view rather than on the 4-D channels-last tensor, which is the same memory:
    # PyTorch's element-wise kernels run its forward and backward ~1.6x faster on the 3-D view here.
    return F.gelu(image_to_tokens(conv(x)))


def linear(
    module: nn.Linear, x: torch.Tensor, activation: str = "none", residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``activation(module(x))`` for ``activation`` in {"none", "gelu", "relu"}, plus ``residual`` if given.

    On CPU inference this is one oneDNN matmul with bias, activation or residual sum in its epilogue,
    which also spares the pass that ``addmm`` makes to broadcast the bias into its output (together
    ~10-20% of a linear layer here).
    """
    if _fusable(x, module.weight):
        return _fused_linear(module, x, activation, residual)
    x = module(x)
    x = F.gelu(x) if activation == "gelu" else F.relu(x) if activation == "relu" else x
    return x if residual is None else residual + x


def _fused_linear(
    module: nn.Linear, x: torch.Tensor, activation: str = "none", residual: torch.Tensor | None = None
) -> torch.Tensor:
    if residual is not None:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, module.weight, module.bias, "add")
    algorithm = "none" if activation == "gelu" else ""  # "none" selects exact (erf) GELU, not tanh
    return torch.ops.mkldnn._linear_pointwise(x, module.weight, module.bias, activation, [], algorithm)


def _averaging_matrix(out_size: int, in_size: int | torch.SymInt, like: torch.Tensor) -> torch.Tensor:
    """(out_size, in_size) matrix whose rows average adaptive pooling's windows: [i*n//o, ceil((i+1)*n/o))."""
    rows = torch.arange(out_size, device=like.device)
    start = rows * in_size // out_size
    end = ((rows + 1) * in_size + out_size - 1) // out_size
    cols = torch.arange(in_size, device=like.device)
    inside = (cols[None, :] >= start[:, None]) & (cols[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def adaptive_avg_pool(pool: nn.AdaptiveAvgPool2d, x: torch.Tensor) -> torch.Tensor:
    """``pool(x)``, written as two small matmuls while a graph is recorded for export.

    Exporters turn adaptive pooling into a fixed window computed for the example input's size, so the
    exported model silently pools wrongly at any other size; the matmul form holds for every size.
    """
    if not (torch.compiler.is_exporting() or torch.jit.is_tracing()):
        return pool(x)
    size = pool.output_size
    out_h, out_w = (size, size) if isinstance(size, int) else size
    rows = _averaging_matrix(out_h, x.shape[-2], x)
    cols = _averaging_matrix(out_w, x.shape[-1], x)
    return rows @ x @ cols.T  # (o, H) @ (B, C, H, W) @ (W, o) -> (B, C, o, o)


class PatchEmbed(nn.Module):
    """Strided convolution that turns an image (or feature map) into a sequence of normalised tokens."""

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int, stride: int, padding: int = 0) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim, eps=PATCH_NORM_EPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(image_to_tokens(x)), height, width


class OverlapPatchEmbed(PatchEmbed):
    """PVTv2's overlapping patch embedding (Sec. 3.2): kernel 2S-1, stride S, zero padding S-1."""

    def __init__(self, in_chans: int, embed_dim: int, stride: int) -> None:
        super().__init__(in_chans, embed_dim, kernel_size=2 * stride - 1, stride=stride, padding=stride - 1)


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys and values come from a spatially reduced copy of the input.

    SRA (PVTv1): a ``sr_ratio`` x ``sr_ratio`` strided conv shrinks the key/value map by ``sr_ratio**2``.
    Linear SRA (PVTv2-Li, Sec. 3.4): adaptive average pooling to ``pool_size`` x ``pool_size`` and a
    1x1 conv, so the cost is linear in the number of pixels.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 1,
        linear: bool = False,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pool_size: int = 7,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.linear = linear
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reduces = linear or sr_ratio > 1
        if linear:
            self.pool = nn.AdaptiveAvgPool2d(pool_size)
            self.sr = nn.Conv2d(dim, dim, kernel_size=1)
            self.norm = nn.LayerNorm(dim, eps=PATCH_NORM_EPS)
            self.act = nn.GELU()
        elif sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=PATCH_NORM_EPS)

    def reduced_tokens(self, num_tokens: int, height: int, width: int) -> int:
        """Number of key/value tokens for an input of ``num_tokens`` tokens on a ``height`` x ``width`` grid."""
        if self.linear:
            return self.pool.output_size**2
        if self.sr_ratio > 1:
            return (height // self.sr_ratio) * (width // self.sr_ratio)
        return num_tokens

    def forward(
        self, x: torch.Tensor, height: int, width: int, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention output for tokens ``x`` (B, N, C), plus ``residual`` when given (evaluation only)."""
        batch, num_tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = linear(self.q, x).reshape(batch, num_tokens, self.num_heads, head_dim).transpose(1, 2)
        if self.reduces:
            kv_in = tokens_to_image(x, height, width)
            if self.linear:
                kv_in = adaptive_avg_pool(self.pool, kv_in)
            kv_in = self.norm(image_to_tokens(self.sr(kv_in)))
            if self.linear:
                kv_in = self.act(kv_in)
        else:
            kv_in = x
        # (B, M, 2C) -> 2 x (B, heads, M, head_dim)
        k, v = linear(self.kv, kv_in).reshape(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(batch, num_tokens, dim)
        if residual is not None:
            return linear(self.proj, x, residual=residual)
        return self.proj_drop(linear(self.proj, x))


class DepthwiseConv(nn.Module):
    """3x3 depth-wise conv and GELU on a token sequence laid out on a ``height`` x ``width`` grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return conv_gelu_tokens(self.dwconv, tokens_to_image(x, height, width))


# Fused CPU inference runs the conv FFN a band of rows at a time. Its hidden tensor is mlp_ratio times
# wider than the tokens (51 MB for B2's first stage at batch 8): made whole, it is a fresh block on every
# call, which glibc maps from the OS and faults in page by page (~10 us per 4 KiB on a VM), and it makes
# three trips through memory. In bands of a few MB it stays in cache and in reused heap blocks. Each band
# recomputes fc1 on the conv's halo (one row above and below), hence the minimum band height; for inputs
# up to 1333 px wide (detection) bands stay under 32 MB, the largest block glibc keeps for reuse.
# Measured (benchmarks/RESULTS.md, 2 threads): faster and 2-3x less peak memory with glibc's default
# allocator; with one that keeps freed memory (jemalloc, `pvt bench --allocator keep`) within a few % of
# the whole tensor. 4 MiB was the best of 2-16 MiB here with either allocator.
FFN_BAND_BYTES = 4 * 1024 * 1024
MIN_BAND_ROWS = 32  # at most 1/16 of fc1 recomputed


class ConvFFN(nn.Module):
    """PVTv2's convolutional feed-forward network (Sec. 3.3): fc1, 3x3 depth-wise conv, GELU, fc2.

    With ``linear=True`` (PVTv2-Li) a ReLU follows fc1, as in the official release.
    """

    def __init__(self, dim: int, hidden_dim: int, linear: bool = False, drop: float = 0.0) -> None:
        super().__init__()
        self.linear = linear
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DepthwiseConv(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(
        self, x: torch.Tensor, height: int, width: int, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        if residual is not None and _fusable(x, self.fc1.weight):
            images, rows = self.band_shape(x.shape[0], height, width)
            if images < x.shape[0] or rows < height:
                return self._forward_in_bands(x, height, width, residual, images, rows)
        x = linear(self.fc1, x, "relu" if self.linear else "none")
        x = self.dwconv(x, height, width)
        if residual is not None:
            return linear(self.fc2, x, residual=residual)
        return self.drop(linear(self.fc2, self.drop(x)))

    def band_shape(self, batch: int, height: int, width: int) -> tuple[int, int]:
        """(images, rows) of each band whose hidden tensor, halo included, is about ``FFN_BAND_BYTES``."""
        halo = self.dwconv.dwconv.padding[0]
        row_bytes = width * self.fc1.out_features * self.fc1.weight.element_size()
        rows = min(height, max(MIN_BAND_ROWS, FFN_BAND_BYTES // row_bytes - 2 * halo))
        images = min(batch, max(1, FFN_BAND_BYTES // (row_bytes * (rows + 2 * halo))))
        return images, rows

    def _forward_in_bands(
        self, x: torch.Tensor, height: int, width: int, residual: torch.Tensor, images: int, rows: int
    ) -> torch.Tensor:
        """Fused CPU inference (the caller checked ``_fusable``) in bands of ``images`` x ``rows``."""
        activation = "relu" if self.linear else "none"
        batch, _, dim = x.shape
        conv = self.dwconv.dwconv
        halo = conv.padding[0]
        x, residual = x.view(batch, height, width, dim), residual.view(batch, height, width, dim)
        out = torch.empty_like(residual)
        for first in range(0, batch, images):
            last = first + images
            for top in range(0, height, rows):
                bottom = min(height, top + rows)
                # fc1 on the band and its halo rows; the conv's zero padding of the halo's outer rows
                # only reaches output rows outside the band, which are dropped.
                low, high = max(0, top - halo), min(height, bottom + halo)
                hidden = _fused_linear(self.fc1, x[first:last, low:high], activation).permute(0, 3, 1, 2)
                hidden = _fused_conv_gelu_tokens(conv, hidden).unflatten(1, (high - low, width))
                out[first:last, top:bottom] = _fused_linear(
                    self.fc2, hidden[:, top - low:bottom - low], residual=residual[first:last, top:bottom]
                )
        return out.flatten(1, 2)


class Mlp(nn.Module):
    """PVTv1's plain feed-forward network: fc1, GELU, fc2."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(
        self, x: torch.Tensor, height: int, width: int, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        if residual is not None and _fusable(x, self.fc1.weight):
            chunk = max(1, FFN_BAND_BYTES // (self.fc1.out_features * self.fc1.weight.element_size()))
            if chunk < x.shape[0] * x.shape[1]:
                return self._forward_in_chunks(x, residual, chunk)
        x = linear(self.fc1, x, "gelu")
        if residual is not None:
            return linear(self.fc2, x, residual=residual)
        return self.drop(linear(self.fc2, self.drop(x)))

    def _forward_in_chunks(self, x: torch.Tensor, residual: torch.Tensor, chunk: int) -> torch.Tensor:
        """Fused CPU inference (the caller checked ``_fusable``) ``chunk`` tokens at a time, for the reasons
        of ``FFN_BAND_BYTES`` (no halo: each token is on its own here)."""
        tokens, residual_tokens = x.flatten(0, 1), residual.flatten(0, 1)
        out = torch.empty_like(residual_tokens)
        for start in range(0, tokens.shape[0], chunk):
            end = start + chunk
            hidden = _fused_linear(self.fc1, tokens[start:end], "gelu")
            out[start:end] = _fused_linear(self.fc2, hidden, residual=residual_tokens[start:end])
        return out.view_as(residual)


class Block(nn.Module):
    """Pre-norm transformer encoder layer: x + SRA(LN(x)), then x + FFN(LN(x)), with stochastic depth."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        conv_ffn: bool,
        linear: bool = False,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_dim = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = SpatialReductionAttention(
            dim, num_heads, sr_ratio, linear=linear, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop
        )
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = ConvFFN(dim, hidden_dim, linear=linear, drop=drop) if conv_ffn else Mlp(dim, hidden_dim, drop)
        # "row" drops the whole residual branch per sample, as DropPath does in DeiT and timm.
        self.drop_path = StochasticDepth(drop_path, mode="row") if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.training:
            x = x + self.drop_path(self.attn(self.norm1(x), height, width))
            return x + self.drop_path(self.mlp(self.norm2(x), height, width))
        # Dropout and stochastic depth are off, so each branch adds the residual in its last linear layer.
        x = self.attn(self.norm1(x), height, width, residual=x)
        return self.mlp(self.norm2(x), height, width, residual=x)


def init_weights(module: nn.Module) -> None:
    """The official release's initialisation: truncated normal linears, fan-out normal convs."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=(2.0 / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
