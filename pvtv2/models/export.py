"""Exporting models without TorchScript: ``torch.export`` programs and ONNX, with dynamic batch and size.

Both go through ``torch.export``; the models switch to export-safe forms while it records them (PVTv1
always resizes its position embeddings, linear SRA pools with
:class:`~pvtv2.models.capture.ExportableAdaptiveAvgPool2d`), so one exported graph serves every input size
in the declared range (:mod:`pvtv2.models.capture`).
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EnvironmentProblem, RunFailure
from ..files import written_atomically

# Smallest side the exported graphs accept: PVTv1's bilinear position-embedding resize needs a grid
# of at least 2x2 tokens at stride 32; one bound for all models keeps the contract simple.
MIN_EXPORT_SIDE = 64
MAX_EXPORT_SIDE = 4096
# Opset 20 has a Gelu operator: onnxruntime runs it as one kernel, where opset 18's Erf/Mul/Add/Div
# decomposition is not recognised by its Gelu fusion in this exporter's form (measured: benchmarks/RESULTS.md).
ONNX_OPSET = 20
# (batch, height, width) at which an exported file is compared with PyTorch: none of them the example's 224x224
# alone, so that a graph frozen to the example's size fails.
CHECK_SIZES = [(1, 224, 224), (2, 250, 333), (1, 512, 384)]
CHECK_TOLERANCE = 1e-4  # relative error


def _example_and_shapes(
    model: nn.Module, example_size: tuple[int, int], max_batch: int
) -> tuple[torch.Tensor, tuple[dict[int, torch.export.Dim]]]:
    """An example input and the dynamic dimensions (batch, height, width) of the model's one argument."""
    in_chans = getattr(model, "in_chans", 3)
    example = torch.randn(2, in_chans, *example_size)
    low = max(MIN_EXPORT_SIDE, getattr(model, "min_input_size", 1))
    dims = {
        0: torch.export.Dim("batch", min=1, max=max_batch),
        2: torch.export.Dim("height", min=low, max=MAX_EXPORT_SIDE),
        3: torch.export.Dim("width", min=low, max=MAX_EXPORT_SIDE),
    }
    return example, (dims,)


def export_program(
    model: nn.Module, example_size: tuple[int, int] = (224, 224), max_batch: int = 1024
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (in eval mode) with dynamic batch, height and width."""
    model = model.eval()
    example, dynamic_shapes = _example_and_shapes(model, example_size, max_batch)
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_size: tuple[int, int] = (224, 224),
    max_batch: int = 1024,
    opset: int = ONNX_OPSET,
) -> Path:
    """Write ``model`` as an ONNX file with dynamic batch, height and width (input ``images``)."""
    try:
        import onnxscript  # noqa: F401  (the exporter's dependency; fail early with a clear message)
    except ImportError as error:
        raise EnvironmentProblem("ONNX export needs the onnx and onnxscript packages: pip install 'pvtv2[export]'") from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example, dynamic_shapes = _example_and_shapes(model, example_size, max_batch)
    features_only = getattr(model, "features_only", False)
    outputs = [f"features_{i}" for i in model.out_indices] if features_only else ["logits"]
    with torch.no_grad(), linears_as_gemm(model):
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, dynamic_shapes=dynamic_shapes, opset_version=opset,
            input_names=["images"], output_names=outputs, verbose=False,
        )
    return path


def _linear_on_rows(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``nn.Linear.forward`` on (rows, features): (B, N, C) in, (B, N, out) back."""
    if x.dim() <= 2:
        return F.linear(x, self.weight, self.bias)
    return F.linear(x.reshape(-1, x.shape[-1]), self.weight, self.bias).reshape(*x.shape[:-1], self.out_features)


@contextmanager
def linears_as_gemm(model: nn.Module) -> Iterator[None]:
    """While ``model`` is exported, its linear layers flatten the tokens to rows and back.

    The exporter writes a linear layer on (B, N, C) tokens as MatMul + Add, which onnxruntime runs as two
    passes over the output; on 2-D rows it writes one Gemm with the bias (and onnxruntime fuses a following
    ReLU into it). Same numbers; B2-Li at 512 px runs 7% faster in onnxruntime.
    """
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    for module in linears:
        module.forward = types.MethodType(_linear_on_rows, module)  # an instance attribute, removed below
    try:
        yield
    finally:
        for module in linears:
            del module.forward


def check_onnx(model: nn.Module, path: str | os.PathLike, sizes: list[tuple[int, int, int]]) -> list[float]:
    """Run the ONNX file with onnxruntime on random (batch, height, width) inputs; returns, per input,
    the max absolute difference to PyTorch over the max absolute PyTorch output."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return _relative_errors(model, lambda x: [torch.from_numpy(y) for y in session.run(None, {name: x.numpy()})],
                            sizes)


def check_program(model: nn.Module, path: str | os.PathLike, sizes: list[tuple[int, int, int]]) -> list[float]:
    """:func:`check_onnx` for a saved torch.export program: its relative error to ``model`` at each size."""
    module = torch.export.load(str(path)).module()
    return _relative_errors(model, lambda x: _as_list(module(x)), sizes)


def _relative_errors(model: nn.Module, exported, sizes: list[tuple[int, int, int]]) -> list[float]:
    """Per (batch, height, width): max |exported(x) - model(x)| / max |model(x)| over the outputs, on seeded inputs."""
    errors = []
    generator = torch.Generator().manual_seed(0)
    for batch, height, width in sizes:
        x = torch.randn(batch, getattr(model, "in_chans", 3), height, width, generator=generator)
        with torch.no_grad():
            expected, got = _as_list(model.eval()(x)), exported(x)
        errors.append(max(float((g - e).abs().max() / e.abs().max()) for g, e in zip(got, expected)))
    return errors


def _as_list(outputs: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def export_checked(model: nn.Module, out: str | os.PathLike, fmt: str = "onnx",
                   check: bool = True) -> list[tuple[tuple[int, int, int], float]]:
    """Write ``model`` to ``out`` as ONNX (``fmt="onnx"``) or a torch.export program (``"torch-export"``), with
    dynamic batch, height and width; unless ``check`` is False, compare it with PyTorch (onnxruntime at
    :data:`CHECK_SIZES`, the program at 2x250x333) and return each size's relative error. A file that differs
    by more than :data:`CHECK_TOLERANCE` is not written (RunFailure)."""
    sizes = CHECK_SIZES if fmt == "onnx" else CHECK_SIZES[1:2]
    # Written beside its place and renamed there once checked: an export that fails its check leaves nothing.
    with written_atomically(out) as temporary:
        if fmt == "onnx":
            export_onnx(model, temporary)
        else:
            torch.export.save(export_program(model), temporary)
        if not check:
            return []
        errors = (check_onnx if fmt == "onnx" else check_program)(model, temporary, sizes)
        if not max(errors) <= CHECK_TOLERANCE:  # NaN fails too
            measured = ", ".join(f"{b}x{h}x{w}: {e:.1e}" for (b, h, w), e in zip(sizes, errors))
            what = "model" if fmt == "onnx" else "program"
            raise RunFailure(f"the exported {what} differs from PyTorch by {max(errors):.1e} (> {CHECK_TOLERANCE}; "
                             f"{measured}); nothing was written")
    return list(zip(sizes, errors))
