"""Building blocks of the PVT family, named as in the paper.

Attribute names (``proj``, ``q``, ``kv``, ``sr``, ``norm``, ``dwconv.dwconv``, ``fc1``...) are those of
the official release, so its checkpoints load without renaming. These modules are the model: what
autograd, other devices and graph capture run. The fast paths compute the same on faster kernels, and
only on blocks exactly as built here (:mod:`pvtv2.models.fast_path`): CPU inference runs the blocks on
oneDNN's fused kernels (:mod:`pvtv2.models.cpu_inference`), and CPU training runs their linear layers on
oneDNN's matmul (:mod:`pvtv2.models.cpu_training`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from ..errors import InputError
from .capture import ExportableAdaptiveAvgPool2d

# The official release and timm use PyTorch's default eps in the patch-embedding and
# spatial-reduction norms, and 1e-6 in the block and stage norms.
PATCH_NORM_EPS = 1e-5
BLOCK_NORM_EPS = 1e-6

AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# Tokens (B, N, C) and a channels-last image (B, C, H, W) share one memory layout, so converting
# between them is a view, not a copy; convolutions keep channels-last inputs channels-last.
def tokens_to_image(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W), a channels-last view."""
    return x.unflatten(1, (height, width)).permute(0, 3, 1, 2)


def image_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C); a view when ``x`` is channels-last."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


class FeatureMap(nn.Module):
    """A stage's output tokens as its feature map: (B, P + H*W, C) -> (B, C, H, W), a view, without the
    ``num_prefix_tokens`` leading tokens (PVTv1's class token in its last stage).

    No weights: a module of its own so that each stage's map is a named graph node (``feature_map1``..
    ``feature_map4``) for torch.fx feature extraction and a point for hooks.
    """

    def __init__(self, num_prefix_tokens: int = 0) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.num_prefix_tokens:
            x = x[:, self.num_prefix_tokens:]
        return tokens_to_image(x, height, width)

    def extra_repr(self) -> str:
        return f"num_prefix_tokens={self.num_prefix_tokens}" if self.num_prefix_tokens else ""


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
            raise InputError(f"dim {dim} is not divisible by num_heads {num_heads}")
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
            # Size-agnostic while exporting: see ExportableAdaptiveAvgPool2d.
            self.pool = ExportableAdaptiveAvgPool2d(pool_size)
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

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Attention output for tokens ``x`` (B, N, C) on a ``height`` x ``width`` grid."""
        q = self.q(x)
        kv = self.kv(self.reduce(x, height, width))
        return self.proj_drop(self.proj(self.attend(q, kv)))

    def reduce(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The tokens keys and values are computed from: ``x`` itself, or its spatial reduction (B, M, C)."""
        if not self.reduces:
            return x
        x = tokens_to_image(x, height, width)
        if self.linear:
            x = self.pool(x)
        x = self.norm(image_to_tokens(self.sr(x)))
        return self.act(x) if self.linear else x

    def attend(self, q: torch.Tensor, kv: torch.Tensor, kernel: AttentionKernel | None = None) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v over heads, for queries ``q`` (B, N, C) and keys and values ``kv`` (B, M, 2C).

        ``kernel(q, k, v)`` on (B, heads, tokens, head_dim) computes it in place of PyTorch's
        ``scaled_dot_product_attention`` (fused CPU inference passes one for bfloat16).
        """
        # Heads split by unflatten, not by sizes read from .shape: a traced graph (torch.fx, export, ONNX) then
        # holds no shape arithmetic, 7 nodes fewer per block (torchvision's feature extraction is quadratic in them).
        q = q.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        # (B, M, 2C) -> 2 x (B, heads, M, head_dim)
        k, v = kv.unflatten(-1, (2, self.num_heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        if kernel is None:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        else:
            x = kernel(q, k, v)
        return x.transpose(1, 2).flatten(2)


class DepthwiseConv(nn.Module):
    """3x3 depth-wise conv on a token sequence laid out on a ``height`` x ``width`` grid (tokens in and out)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return image_to_tokens(self.dwconv(tokens_to_image(x, height, width)))


class ConvFFN(nn.Module):
    """PVTv2's convolutional feed-forward network (Sec. 3.3): fc1, 3x3 depth-wise conv, GELU, fc2.

    With ``linear=True`` (PVTv2-Li) a ReLU follows fc1, as in the official release.
    """

    def __init__(self, dim: int, hidden_dim: int, linear: bool = False, drop: float = 0.0) -> None:
        super().__init__()
        self.linear = linear
        self.fc1 = nn.Linear(dim, hidden_dim)
        if linear:
            self.relu = nn.ReLU()
        self.dwconv = DepthwiseConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(x)
        if self.linear:
            x = self.relu(x)
        # GELU on the (B, N, C) view rather than on the 4-D channels-last tensor, which is the same memory:
        # PyTorch's element-wise kernels run its forward and backward faster on the 3-D view (benchmarks/RESULTS.md).
        x = self.act(self.dwconv(x, height, width))
        return self.drop(self.fc2(self.drop(x)))


class Mlp(nn.Module):
    """PVTv1's plain feed-forward network: fc1, GELU, fc2."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """FFN of tokens ``x`` (B, N, C); ``height`` and ``width`` are unused (the signature of :class:`ConvFFN`)."""
        x = self.act(self.fc1(x))
        return self.drop(self.fc2(self.drop(x)))


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
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


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
