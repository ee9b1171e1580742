"""Linear layers under autograd on the CPU, on oneDNN's matmul for the forward and both backward products.

PyTorch's CPU ``addmm`` / ``mm`` call MKL's sgemm, which on AMD CPUs runs far below the machine's peak:
for PVTv2's token matmuls (tens of thousands of rows, 32-640 channels) measured on an AMD EPYC Zen 5, one
thread, MKL reached 31-111 GFLOP/s where oneDNN reached 150-245 GFLOP/s on the same products
(benchmarks/RESULTS.md). PyTorch reaches oneDNN's float32 matmul only through the op Inductor emits
(``torch.ops.mkldnn._linear_pointwise``), which has no autograd formula, hence this function. oneDNN reads
transposed views in place, so the two backward products need no copies of the activations.

The model's layers stay plain ``nn.Linear`` (what quantization, peft and pruning tools match on): an
encoder block or head that :func:`.fast_path.runs_as_built` allows runs as its modules under
:func:`onednn_linears`, a function mode that sends each ``F.linear`` call to :func:`linear`. The modules
compute as written; only the matmul kernel changes. Only float32 on the CPU outside autocast, graph capture
and ``torch.func`` transforms takes this path (see :func:`applies`); everything else runs ``F.linear``.
Results agree with ``F.linear`` to float rounding (another summation order), not bitwise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from . import fast_path
from .capture import capturing_graph
from .fast_path import Switch

_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
# Off (to compare with F.linear): set_enabled(False) or `with disabled():`, as the inference fast path.
_switch = Switch()
set_enabled = _switch.set_enabled
disabled = _switch.disabled


def _matmul(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b_t.T (+ bias)`` on oneDNN for ``a`` (..., K) and 2-D ``b_t`` (N, K), either possibly a transposed view."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _matmul(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        out_features, in_features = weight.shape
        grad = grad_out.reshape(-1, out_features)
        rows = x.reshape(-1, in_features)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _matmul(grad, weight.t()).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            # grad^T @ x, as the product whose output has the fewer rows: faster than the other orientation for
            # these shapes, as oneDNN parallelises and blocks over the output rows (benchmarks/RESULTS.md).
            if out_features <= in_features:
                grad_weight = _matmul(grad.t(), rows.t())
            else:
                grad_weight = _matmul(rows.t(), grad.t()).t()
        if ctx.needs_input_grad[2]:  # False without a bias
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


def _applies_to_input(x: torch.Tensor) -> bool:
    return (
        _ONEDNN_LINEAR
        and _switch.enabled
        and not capturing_graph()  # first: under torch.fx, x is a Proxy whose device cannot be compared
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        # torch.func's transforms wrap tensors (vmap has no batching rule for oneDNN's op): F.linear there.
        and not torch._C._functorch.is_functorch_wrapped_tensor(x)
    )


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` runs on oneDNN: autograd recording float32 CPU tensors, no autocast, no graph
    capture (compile and export trace ``F.linear``), no ``torch.func`` transform."""
    return (
        _applies_to_input(x)
        and (x.requires_grad or weight.requires_grad)
        and weight.dtype == torch.float32
        and not torch._C._functorch.is_functorch_wrapped_tensor(weight)
    )


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(input, weight, bias)``, on oneDNN where :func:`applies`."""
    if applies(input, weight):
        return _OneDNNLinear.apply(input, weight, bias)
    return F.linear(input, weight, bias)


class _OneDNNLinears(TorchFunctionMode):
    """Sends every ``F.linear`` call (``nn.Linear.forward``'s) to :func:`linear`; every other call runs as is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear:
            return linear(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def runs_on_onednn(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module(x, ...)`` may run its linear layers on oneDNN: an input :func:`applies` to, and the
    module exactly as built (:func:`.fast_path.runs_as_built`)."""
    return _applies_to_input(x) and fast_path.runs_as_built(module)


def onednn_linears(module: nn.Module) -> Callable[..., torch.Tensor]:
    """``module``'s forward with its linear layers on oneDNN (the caller checked :func:`runs_on_onednn`)."""

    def forward(*args: torch.Tensor | int) -> torch.Tensor:
        with _OneDNNLinears():
            return module(*args)

    return forward
