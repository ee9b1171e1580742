"""What the models do differently while a graph of them is recorded (torch.compile, torch.export and ONNX
export, torch.fx tracing, the JIT tracer): :func:`capturing_graph`, and the size-agnostic adaptive pooling of
linear SRA. The layers, the fast paths and the exporters all import it; it imports none of them."""

from __future__ import annotations

import torch
from torch import nn


def capturing_graph() -> bool:
    """True while torch.compile, torch.export (also ONNX export), torch.fx or the JIT tracer records the model."""
    return (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
            or torch.fx._symbolic_trace.is_fx_symbolic_tracing())


def _averaging_matrix(out_size: int, in_size: int | torch.SymInt, like: torch.Tensor) -> torch.Tensor:
    """(out_size, in_size) matrix whose rows average adaptive pooling's windows: [i*n//o, ceil((i+1)*n/o))."""
    rows = torch.arange(out_size, device=like.device)
    start = rows * in_size // out_size
    end = ((rows + 1) * in_size + out_size - 1) // out_size
    cols = torch.arange(in_size, device=like.device)
    inside = (cols[None, :] >= start[:, None]) & (cols[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


class ExportableAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d``, written as two small matmuls while a graph is recorded for export.

    Exporters turn adaptive pooling into a fixed window computed for the example input's size, so the
    exported model silently pools wrongly at any other size; the matmul form holds for every size.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.compiler.is_exporting() or torch.jit.is_tracing()):
            return super().forward(x)
        size = self.output_size
        out_h, out_w = (size, size) if isinstance(size, int) else size
        rows = _averaging_matrix(out_h, x.shape[-2], x)
        cols = _averaging_matrix(out_w, x.shape[-1], x)
        return rows @ x @ cols.T  # (o, H) @ (B, C, H, W) @ (W, o) -> (B, C, o, o)
