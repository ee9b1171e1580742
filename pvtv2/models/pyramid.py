"""What PVTv1 and PVTv2 share: four stages of (patch embedding, encoder blocks), a classification head,
and a feature-pyramid mode for dense prediction.

The stage modules are registered under the official release's names (``patch_embed1``, ``block1``,
``norm1``...), so official checkpoints load with ``strict=True``. Subclasses say how a stage embeds its
input (:meth:`embed`), how a stage's output is normalised (:meth:`stage_norm`), and how the head pools.
Each stage's output is also a feature map (``feature_map1``..``feature_map4``, weightless views): the next
stage's input, the pyramid's levels, and the nodes that torch.fx feature extraction returns.
"""

# No `from __future__ import annotations` here: torch.fx writes forward's annotations into the code it
# generates, where TorchScript (scripting a traced model) needs them as types, not strings.
import numbers
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from . import cpu_inference, cpu_training
from .layers import Block, FeatureMap, PatchEmbed, init_weights

NUM_STAGES = 4


class FeatureInfo(list):
    """Per-output-level ``{"num_chs", "reduction", "module"}`` dicts, as timm's ``feature_info``."""

    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        return [info["reduction"] for info in self]


def stage_grid_sizes(patch_embeds: Sequence[PatchEmbed], side: int) -> list[int]:
    """Token-grid side of each stage for an input side of ``side`` pixels."""
    sizes = []
    for embed in patch_embeds:
        conv = embed.proj
        side = (side + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        sizes.append(side)
    return sizes


def _min_input_size(patch_embeds: Sequence[PatchEmbed], sr_ratios: Sequence[int], linear: bool) -> int:
    needed = [1 if linear else max(1, r) for r in sr_ratios]
    side = 1
    while min(g - n for g, n in zip(stage_grid_sizes(patch_embeds, side), needed)) < 0:
        side += 1
    return side


def _stage_indices(indices: int | Sequence[int] | None) -> list[int]:
    """timm's ``indices``: None for every stage, an int n for the last n, or stage indices (negative from the end)."""
    if indices is None:
        return list(range(NUM_STAGES))
    if isinstance(indices, int):
        if not 0 < indices <= NUM_STAGES:
            raise InputError(f"indices as a number takes the last n of {NUM_STAGES} stages: 1..{NUM_STAGES}, got {indices}")
        return list(range(NUM_STAGES - indices, NUM_STAGES))
    chosen = [i + NUM_STAGES if i < 0 else i for i in indices]
    if not chosen or any(i not in range(NUM_STAGES) for i in chosen):
        raise InputError(f"indices must be stage indices in {-NUM_STAGES}..{NUM_STAGES - 1}, got {list(indices)}")
    return chosen


def _check_num_classes(num_classes: int) -> None:
    # bool is an int in Python, but True classes is a mistake, not a head of one class.
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 0:
        raise InputError(f"num_classes must be an integer >= 0 (0: no classification head), got {num_classes!r}")


class PyramidVisionTransformerBase(nn.Module):
    """Four-stage pyramid transformer; see :class:`PyramidVisionTransformerV2` and
    :class:`PyramidVisionTransformer` for the two families."""

    global_pool: Literal["avg", "token"]

    def __init__(
        self,
        *,
        patch_embeds: Sequence[PatchEmbed],
        embed_dims: Sequence[int],
        depths: Sequence[int],
        num_heads: Sequence[int],
        mlp_ratios: Sequence[float],
        sr_ratios: Sequence[int],
        conv_ffn: bool,
        linear: bool = False,
        in_chans: int = 3,
        num_classes: int = 1000,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        for name, values in dict(embed_dims=embed_dims, depths=depths, num_heads=num_heads,
                                 mlp_ratios=mlp_ratios, sr_ratios=sr_ratios, patch_embeds=patch_embeds).items():
            if len(values) != NUM_STAGES:
                raise InputError(f"{name} needs {NUM_STAGES} values (one per stage), got {list(values)}")
        self.in_chans = in_chans
        self.embed_dims = tuple(embed_dims)
        self.depths = tuple(depths)
        self.sr_ratios = tuple(sr_ratios)
        self.linear = linear
        self.num_classes = num_classes
        self.features_only = features_only
        self.grad_checkpointing = False
        self.min_input_size = _min_input_size(patch_embeds, sr_ratios, linear)

        # Stochastic depth rises linearly from 0 to drop_path_rate over all blocks. The rates are plain
        # numbers computed on the CPU, so that a build under `with torch.device("meta")` works too.
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        for i in range(NUM_STAGES):
            blocks = nn.ModuleList(
                Block(embed_dims[i], num_heads[i], mlp_ratios[i], sr_ratios[i], conv_ffn=conv_ffn, linear=linear,
                      qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                      drop_path=rates[sum(depths[:i]) + j])
                for j in range(depths[i])
            )
            setattr(self, f"patch_embed{i + 1}", patch_embeds[i])
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"feature_map{i + 1}", FeatureMap())

        if features_only:
            out_indices = tuple(out_indices)
            if not out_indices or any(i not in range(NUM_STAGES) for i in out_indices):
                raise InputError(f"out_indices must be stage indices in 0..{NUM_STAGES - 1}, got {out_indices}")
            self.out_indices = out_indices
            self.feature_info = FeatureInfo(
                dict(num_chs=embed_dims[i], reduction=4 * 2**i, module=f"feature_map{i + 1}") for i in out_indices
            )
        else:
            self.out_indices = ()
            self.feature_info = FeatureInfo(
                dict(num_chs=embed_dims[i], reduction=4 * 2**i, module=f"feature_map{i + 1}") for i in range(NUM_STAGES)
            )
            self.num_features = self.head_hidden_size = embed_dims[-1]
            self.head_drop = nn.Dropout(drop_rate)
            self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()

    # -- what a family defines -------------------------------------------------------------------------
    def embed(self, stage: int, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Stage ``stage``'s patch embedding: (B, C, H, W) -> (B, N, C'), H', W'."""
        return getattr(self, f"patch_embed{stage + 1}")(x)

    def stage_norm(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- shared machinery -----------------------------------------------------------------------------
    def _init_weights(self) -> None:
        self.apply(init_weights)

    def blocks(self, stage: int) -> nn.ModuleList:
        return getattr(self, f"block{stage + 1}")

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.fx._symbolic_trace.is_fx_symbolic_tracing():
            return  # a torch.fx Proxy has no sizes to check
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise InputError(
                f"expected images of shape (batch, {self.in_chans}, height, width), got {tuple(x.shape)}"
            )
        smallest = self.min_input_size
        if x.shape[-2] < smallest or x.shape[-1] < smallest:
            raise InputError(
                f"input {x.shape[-2]}x{x.shape[-1]} is too small for this model: every side must be at least "
                f"{smallest} pixels so that each stage's spatial reduction has a full window"
            )

    def iter_stages(self, x: torch.Tensor, last_stage: int = NUM_STAGES - 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield each stage's output: its normalised tokens (B, N, C) and the same as a feature map (B, C, H, W),
        a view without PVTv1's class token (:class:`~.layers.FeatureMap`), which is the next stage's input."""
        self._check_input(x)
        for i in range(last_stage + 1):
            tokens, height, width = self.embed(i, x)
            for block in self.blocks(i):
                tokens = self._run_block(block, tokens, height, width)
            tokens = self.stage_norm(i, tokens)
            x = getattr(self, f"feature_map{i + 1}")(tokens, height, width)
            yield tokens, x

    def _run_block(self, block: nn.Module, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``block(x, height, width)``: the one place that chooses between the fast paths and the modules."""
        if cpu_inference.can_fuse(block, x):
            return cpu_inference.block_forward(block, x, height, width)
        run = cpu_training.onednn_linears(block) if cpu_training.runs_on_onednn(block, x) else block
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(run, x, height, width, use_reentrant=False)
        return run(x, height, width)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]:
        """timm's feature API: the feature maps of the stages ``indices`` (all by default; an int n: the last n;
        negative indices count from the end), (B, C_i, H/2^(i+2), W/2^(i+2)) for any input size, or
        (B, H, W, C) with ``output_fmt="NHWC"``.

        Returns ``(forward_features(x), maps)``, or the maps alone with ``intermediates_only=True``, which (as
        ``stop_early=True`` does) stops after the last stage asked for. ``norm`` (timm: give the intermediates
        the final norm) changes nothing here: each PVTv2 stage ends in its own norm (``norm1``..``norm4``), and
        PVTv1's last map already is its final norm's output.
        """
        take = _stage_indices(indices)
        if output_fmt not in ("NCHW", "NHWC"):
            raise InputError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        last = max(take) if intermediates_only or stop_early else NUM_STAGES - 1
        maps = []
        for i, (tokens, feature_map) in enumerate(self.iter_stages(x, last)):
            if i in take:
                maps.append(feature_map if output_fmt == "NCHW" else feature_map.permute(0, 2, 3, 1))
        return maps if intermediates_only else (tokens, maps)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's normalised tokens, (B, N, C)."""
        for tokens, _ in self.iter_stages(x):
            pass
        return tokens

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(x)
        if pre_logits:
            return x
        return cpu_training.onednn_linears(self.head)(x) if cpu_training.runs_on_onednn(self.head, x) else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices, intermediates_only=True)
        return self.forward_head(self.forward_features(x))

    # -- the surface timm users expect ----------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier")
        _check_num_classes(num_classes)
        self.num_classes = num_classes
        like = next(self.parameters())  # the new head on the model's device, in its dtype and mode
        self.head = (nn.Linear(self.num_features, num_classes, device=like.device, dtype=like.dtype)
                     if num_classes > 0 else nn.Identity())
        if num_classes > 0:
            init_weights(self.head)
        self.head.train(self.training)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return set()

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script(model)`` compiles: the model's torch.fx graph, plain tensor ops that hold for
        any input size. TorchScript cannot compile the model's own Python: the stages are the official
        top-level modules (``block1``..``block4``), reached by name in one loop that every forward mode shares,
        and the fast paths decide in Python. The scripted module has ``forward`` only, without the input checks,
        in the mode (train or eval) the model was in."""
        return torch.fx.symbolic_trace(self)
