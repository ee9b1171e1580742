"""When a fast path may stand in for the modules: only on exactly the modules it was written for.

The fast paths (fused CPU inference in float32 and bfloat16, :mod:`.cpu_inference`; oneDNN linears in CPU
training, :mod:`.cpu_training`) compute what the encoder block's modules compute, reading their weights.
A module they were not written for would be skipped, not run: peft's LoRA layers forward the base layer's
``weight`` but add their adapter in ``forward``, a parametrized layer is a generated subclass whose
``weight`` is computed, a dynamically quantized layer holds packed weights, a user's subclass has its own
``forward``, a hook expects its module to be called. So every fast path asks :func:`runs_as_built` first,
and anything else runs as its modules, which is always right.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules import module as nn_module
from torchvision.ops import StochasticDepth

from .capture import ExportableAdaptiveAvgPool2d
from .layers import Block, ConvFFN, DepthwiseConv, Mlp, SpatialReductionAttention

class Switch:
    """Whether a fast path may run (on by default), switched the same way for every fast path: as a setter,
    ``set_enabled(False)`` (returns the previous setting), or for a block of code, ``with disabled():``."""

    def __init__(self) -> None:
        self.enabled = True

    def set_enabled(self, enabled: bool) -> bool:
        previous, self.enabled = self.enabled, enabled
        return previous

    @contextmanager
    def disabled(self) -> Iterator[None]:
        previous = self.set_enabled(False)
        try:
            yield
        finally:
            self.set_enabled(previous)


# Each submodule of a Block as its constructor builds it, by name: the exact classes the fast paths read
# (attention with or without its spatial reduction, linear or not; conv FFN or plain FFN; stochastic depth
# on or off). Compared with `type(...) is`, so a subclass or a wrapper in any place is not the block.
BLOCK_LAYOUT: dict[str, tuple[type[nn.Module], ...]] = {
    "": (Block,),
    "norm1": (nn.LayerNorm,),
    "attn": (SpatialReductionAttention,),
    "attn.q": (nn.Linear,),
    "attn.kv": (nn.Linear,),
    "attn.proj": (nn.Linear,),
    "attn.proj_drop": (nn.Dropout,),
    "attn.pool": (ExportableAdaptiveAvgPool2d,),
    "attn.sr": (nn.Conv2d,),
    "attn.norm": (nn.LayerNorm,),
    "attn.act": (nn.GELU,),
    "norm2": (nn.LayerNorm,),
    "mlp": (ConvFFN, Mlp),
    "mlp.fc1": (nn.Linear,),
    "mlp.relu": (nn.ReLU,),
    "mlp.dwconv": (DepthwiseConv,),
    "mlp.dwconv.dwconv": (nn.Conv2d,),
    "mlp.act": (nn.GELU,),
    "mlp.fc2": (nn.Linear,),
    "mlp.drop": (nn.Dropout,),
    "drop_path": (StochasticDepth, nn.Identity),
}


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks
                or module._backward_hooks or module._backward_pre_hooks)


def global_hooks() -> bool:
    """Whether hooks for every module are registered (``register_module_forward_hook`` and the like)."""
    return bool(nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
                or nn_module._global_backward_hooks or nn_module._global_backward_pre_hooks)


def _as_built(module: nn.Module, expected: tuple[type[nn.Module], ...]) -> bool:
    if type(module) not in expected or _hooked(module):
        return False
    # The fast paths compute exact (erf) GELU and zero-padded convolutions, as the constructor builds them.
    if type(module) is nn.GELU:
        return module.approximate == "none"
    if type(module) is nn.Conv2d:
        return module.padding_mode == "zeros"
    return True


# The modules a fast path runs, by their class: an encoder block, or the classification head.
LAYOUTS: dict[type[nn.Module], dict[str, tuple[type[nn.Module], ...]]] = {
    Block: BLOCK_LAYOUT,
    nn.Linear: {"": (nn.Linear,)},
}


def runs_as_built(module: nn.Module) -> bool:
    """Whether ``module`` is exactly an encoder :class:`Block` (or ``nn.Linear``) as its constructor builds
    it: each submodule of exactly its class in its place (see ``LAYOUTS``), no hooks on any of them or on
    every module."""
    return modules_as_built(module) is not None


def modules_as_built(module: nn.Module) -> list[nn.Module] | None:
    """``module`` and all its submodules where it :func:`runs_as_built`, else None."""
    layout = LAYOUTS.get(type(module))
    if layout is None or global_hooks():
        return None
    # named_modules() without its generator and memo set: this runs before every block of every forward.
    found = []
    pending = [("", module)]
    while pending:
        name, submodule = pending.pop()
        expected = layout.get(name)
        if expected is None or not _as_built(submodule, expected):
            return None
        found.append(submodule)
        prefix = name + "." if name else ""
        for child_name, child in submodule._modules.items():
            if child is not None:
                pending.append((prefix + child_name, child))
    return found
