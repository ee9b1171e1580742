"""Spatial-reduction attention of a stage, captured from the model's own modules and mapped onto the image.

Forward hooks on a block's attention module, its ``q`` and its ``kv`` layers record what the forward pass
computes (a hooked block runs as its plain modules, never on the fused CPU kernels, so the hooks see the
real computation). The attention weights are then read out of the module's own ``attend``: called with
the captured queries and keys and one-hot values, softmax(q k^T / sqrt(d)) v returns the weights
themselves, so no second copy of the attention arithmetic exists here.

Keys live on a reduced grid: SRA's ``sr_ratio`` x ``sr_ratio`` strided conv gives one key per cell of that
size, linear SRA's adaptive pooling one per cell of a 7x7 partition (cells overlap by a token where the
grid is not a multiple of 7). A key's weight is spread evenly over the tokens of its cell and each token's
share evenly over the pixels of its stride cell, so a map holds attention per pixel and sums to 1 over
the pixels the keys cover.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..models.layers import SpatialReductionAttention
from ..models.pyramid import NUM_STAGES, PyramidVisionTransformerBase


@dataclass
class Captured:
    """What one block's attention computed: queries (B, N, C), keys and values (B, M, 2C), token grid."""

    q: torch.Tensor
    kv: torch.Tensor
    height: int
    width: int


@dataclass
class AttentionMaps:
    """Attention of query pixels in one stage, per head (or, for rollout, over the stage's blocks)."""

    maps: torch.Tensor  # (points, heads, H, W): attention per image pixel; rollout: heads = 1
    weights: torch.Tensor  # (points, heads, M): over the keys (rollout: over the stage's tokens), rows sum to 1
    points: list[tuple[int, int]]  # the query pixels (x, y)
    stage: int  # 1-based, as printed
    block: int  # 0-based index of the block in the stage (the last one, or for rollout the number of blocks)
    token_grid: tuple[int, int]  # (rows, cols) of the stage's tokens
    key_grid: tuple[int, int]  # (rows, cols) of the keys
    stride: int  # pixels per token side
    rollout: bool = False
    query_tokens: list[tuple[int, int]] = field(default_factory=list)  # (row, col) of each query's token


def _stage_index(model: nn.Module, stage: int) -> int:
    if not isinstance(model, PyramidVisionTransformerBase):
        raise InputError(f"attention maps need a PVT model of this package, got {type(model).__name__}")
    if isinstance(stage, bool) or not isinstance(stage, int) or not 1 <= stage <= NUM_STAGES:
        raise InputError(f"stage {stage!r} does not exist: PVT models have stages 1 to {NUM_STAGES}")
    return stage - 1


@contextmanager
def capture_attention(model: PyramidVisionTransformerBase, stage: int,
                      blocks: Sequence[int] | None = None) -> Iterator[dict[int, Captured]]:
    """Record the queries, keys and values of ``blocks`` (default: all) of ``stage`` (1-based) while inside.

    Yields ``{block index: Captured}``, filled by the forward passes run inside the ``with``. The hooks
    return nothing, so the model's outputs are those it computes without them (on the plain modules).
    """
    index = _stage_index(model, stage)
    stage_blocks = model.blocks(index)
    chosen = range(len(stage_blocks)) if blocks is None else blocks
    records: dict[int, Captured] = {}
    handles = []

    def grid_hook(i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            inputs = dict(zip(("x", "height", "width"), args), **kwargs)  # forward(x, height, width)
            records[i] = Captured(torch.empty(0), torch.empty(0), int(inputs["height"]), int(inputs["width"]))
        return hook

    def output_hook(i: int, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            setattr(records[i], name, output.detach())
        return hook

    try:
        for i in chosen:
            attn = stage_blocks[i].attn
            handles.append(attn.register_forward_pre_hook(grid_hook(i), with_kwargs=True))
            handles.append(attn.q.register_forward_hook(output_hook(i, "q")))
            handles.append(attn.kv.register_forward_hook(output_hook(i, "kv")))
        yield records
    finally:
        for handle in handles:
            handle.remove()


def key_weights(attn: SpatialReductionAttention, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head, (B, heads, n, M), for queries ``q`` (B, n, C) and ``kv`` (B, M, 2C),
    computed by the module's own ``attend`` with one-hot values: chunks of ``head_dim`` keys at a time."""
    batch, num_keys, _ = kv.shape
    dim, heads = attn.dim, attn.num_heads
    head_dim = dim // heads
    keys = kv[..., :dim]
    chunks = []
    for start in range(0, num_keys, head_dim):
        width = min(head_dim, num_keys - start)
        # Value of key start + j = the j-th unit vector in every head: the output is then the weights.
        values = torch.zeros(batch, num_keys, heads, head_dim, dtype=kv.dtype, device=kv.device)
        values[:, torch.arange(start, start + width), :, torch.arange(width)] = 1
        out = attn.attend(q, torch.cat((keys, values.flatten(2)), dim=-1))  # (B, n, C)
        chunks.append(out.unflatten(-1, (heads, head_dim))[..., :width])
    return torch.cat(chunks, dim=-1).transpose(1, 2)  # (B, n, heads, M) -> (B, heads, n, M)


def key_cells(attn: SpatialReductionAttention, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column spreading matrices (height, kh), (width, kw): token row y's share of key row i.

    Columns sum to 1: a key's weight spreads evenly over the tokens of its cell (the sr x sr window of
    SRA's strided conv, the adaptive-pooling window of linear SRA), through the pooling the model uses.
    """
    def spread(size: int) -> torch.Tensor:
        eye = torch.eye(size)[:, None, :]  # one-hot rows (size, 1, size)
        if attn.linear:
            pooled = F.adaptive_avg_pool1d(eye, attn.pool.output_size)
        elif attn.sr_ratio > 1:
            pooled = F.avg_pool1d(eye, attn.sr_ratio)
        else:
            pooled = eye
        return pooled[:, 0, :]  # (size, keys): token t's weight in key k's average

    return spread(height), spread(width)


def pixel_map(token_mass: torch.Tensor, stride: int, image_size: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) mass per token -> (..., H, W) per pixel: each token's mass over its stride cell's pixels
    inside the image (PVTv1's grid leaves the last pixels of a side without a token: they get 0)."""
    height, width = token_mass.shape[-2:]
    rows = torch.arange(image_size[0]) // stride
    cols = torch.arange(image_size[1]) // stride
    row_ok, col_ok = rows < height, cols < width
    row_count = torch.bincount(rows[row_ok], minlength=height).to(token_mass.dtype)
    col_count = torch.bincount(cols[col_ok], minlength=width).to(token_mass.dtype)
    density = token_mass / (row_count[:, None] * col_count[None, :]).clamp(min=1)
    out = density[..., rows.clamp(max=height - 1), :][..., cols.clamp(max=width - 1)]
    return out * (row_ok[:, None] & col_ok[None, :]).to(out.dtype)


def _query_tokens(points: Sequence[tuple[int, int]], image_size: tuple[int, int], stride: int,
                  grid: tuple[int, int]) -> list[tuple[int, int]]:
    tokens = []
    for point in points:
        if len(point) != 2:
            raise InputError(f"a query point is (x, y) in pixels, got {tuple(point)!r}")
        x, y = point
        if not (0 <= x < image_size[1] and 0 <= y < image_size[0]):
            raise InputError(
                f"query point ({x}, {y}) is outside the {image_size[1]}x{image_size[0]} image (width x height); "
                f"give x in 0..{image_size[1] - 1} and y in 0..{image_size[0] - 1}"
            )
        tokens.append((min(int(y) // stride, grid[0] - 1), min(int(x) // stride, grid[1] - 1)))
    return tokens


def rollout_problem(model: PyramidVisionTransformerBase, stage: int) -> str | None:
    """Why attention rollout has no meaning in ``stage`` (1-based) of ``model``, or None where it has one.

    Rollout multiplies the blocks' (token x token) attention matrices. It needs keys that are the
    queries' own tokens: where SRA or linear SRA reduces the keys, a key stands for a window of tokens
    and the product is not defined without a guess of how its weight spreads over them.
    """
    attn = model.blocks(_stage_index(model, stage))[0].attn
    if attn.linear:
        return f"stage {stage} pools its keys to {attn.pool.output_size}x{attn.pool.output_size} (linear SRA)"
    if attn.sr_ratio > 1:
        return f"stage {stage} reduces its keys {attn.sr_ratio}x{attn.sr_ratio} (sr_ratio {attn.sr_ratio})"
    return None


def rollout_stages(model: PyramidVisionTransformerBase) -> list[int]:
    """The stages (1-based) whose keys are their own tokens, where rollout is defined."""
    return [s for s in range(1, NUM_STAGES + 1) if rollout_problem(model, s) is None]


@torch.no_grad()
def attention_maps(
    model: nn.Module,
    image: torch.Tensor,
    stage: int = 4,
    points: Sequence[tuple[int, int]] | None = None,
    rollout: bool = False,
) -> AttentionMaps:
    """Attention of each query pixel ``points`` ((x, y), default: the centre) of a normalised ``image``
    (3, H, W) or (1, 3, H, W) in ``stage`` (1-4), per head of the stage's last block, mapped onto the
    image's pixels.

    ``rollout=True``: attention rollout over the stage's blocks instead (the product of 0.5 A + 0.5 I,
    A the head-mean attention of each block), only where the keys are the stage's tokens; see
    :func:`rollout_problem`.
    """
    index = _stage_index(model, stage)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1:
        raise InputError(f"attention_maps takes one image (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    image_size = (int(image.shape[-2]), int(image.shape[-1]))
    if points is None:
        points = [(image_size[1] // 2, image_size[0] // 2)]
    points = [tuple(int(v) for v in p) for p in points]
    if rollout and (problem := rollout_problem(model, stage)) is not None:
        where = ", ".join(map(str, rollout_stages(model))) or "none"
        raise InputError(f"rollout has no meaning here: {problem}, so its keys are not its tokens; "
                         f"stages of {getattr(model, 'model_name', type(model).__name__)} where it has one: {where}")
    blocks = model.blocks(index)
    last = len(blocks) - 1
    stride = 4 * 2**index
    training = [(m, m.training) for m in model.modules()]
    model.eval()  # no attention dropout
    try:
        with capture_attention(model, stage, None if rollout else [last]) as records:
            model.forward_intermediates(image, indices=(index,), intermediates_only=True)  # stops after the stage
        record = records[last]
        grid = (record.height, record.width)
        spatial = grid[0] * grid[1]
        extra = record.q.shape[1] - spatial  # PVTv1's class token leads the last stage's tokens
        tokens = _query_tokens(points, image_size, stride, grid)
        rows = [extra + r * grid[1] + c for r, c in tokens]
        if rollout:
            weights = _rollout(blocks, records)[rows][:, None]  # (points, 1, N)
            cells = (torch.eye(grid[0]), torch.eye(grid[1]))
            key_grid = grid
        else:
            weights = key_weights(blocks[last].attn, record.q[:, rows], record.kv)[0].transpose(0, 1)
            cells = key_cells(blocks[last].attn, *grid)
            key_grid = (cells[0].shape[1], cells[1].shape[1])
    finally:
        for module, mode in training:
            module.training = mode
    key_extra = weights.shape[-1] - key_grid[0] * key_grid[1]  # the class token as a key (not on the image)
    on_grid = weights[..., key_extra:].unflatten(-1, key_grid)  # (points, heads, kh, kw)
    token_mass = cells[0] @ on_grid @ cells[1].T  # (points, heads, h, w)
    return AttentionMaps(
        maps=pixel_map(token_mass, stride, image_size), weights=weights, points=list(points), stage=stage,
        block=len(blocks) if rollout else last, token_grid=grid, key_grid=key_grid, stride=stride,
        rollout=rollout, query_tokens=tokens,
    )


def _rollout(blocks: nn.ModuleList, records: dict[int, Captured]) -> torch.Tensor:
    """Rollout (N, N) over the blocks: R = prod_b (0.5 A_b + 0.5 I), the residual connection as the identity."""
    result = None
    for i in range(len(blocks)):
        record = records[i]
        attention = key_weights(blocks[i].attn, record.q, record.kv)[0].mean(0)  # (N, N), mean over heads
        step = 0.5 * attention + 0.5 * torch.eye(attention.shape[0], dtype=attention.dtype)
        result = step if result is None else step @ result
    return result / result.sum(-1, keepdim=True)
