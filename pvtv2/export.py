"""Exporting models without TorchScript: ``torch.export`` programs and ONNX, with dynamic batch and size.

Both go through ``torch.export``; the models switch to export-safe forms while it records them (PVTv1
always resizes its position embeddings, linear SRA pools with matmuls), so one exported graph serves
every input size in the declared range.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

# Smallest side the exported graphs accept: PVTv1's bilinear position-embedding resize needs a grid
# of at least 2x2 tokens at stride 32; one bound for all models keeps the contract simple.
MIN_EXPORT_SIDE = 64
MAX_EXPORT_SIDE = 4096


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
    opset: int = 18,
) -> Path:
    """Write ``model`` as an ONNX file with dynamic batch, height and width (input ``images``)."""
    try:
        import onnxscript  # noqa: F401  (the exporter's dependency; fail early with a clear message)
    except ImportError as error:
        raise RuntimeError("ONNX export needs the onnx and onnxscript packages: pip install 'pvtv2[export]'") from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example, dynamic_shapes = _example_and_shapes(model, example_size, max_batch)
    features_only = getattr(model, "features_only", False)
    outputs = [f"features_{i}" for i in model.out_indices] if features_only else ["logits"]
    with torch.no_grad():
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, dynamic_shapes=dynamic_shapes, opset_version=opset,
            input_names=["images"], output_names=outputs, verbose=False,
        )
    return path


def check_onnx(model: nn.Module, path: str | os.PathLike, sizes: list[tuple[int, int, int]]) -> list[float]:
    """Run the ONNX file with onnxruntime on random (batch, height, width) inputs; returns, per input,
    the max absolute difference to PyTorch over the max absolute PyTorch output."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    errors = []
    generator = torch.Generator().manual_seed(0)
    for batch, height, width in sizes:
        x = torch.randn(batch, getattr(model, "in_chans", 3), height, width, generator=generator)
        with torch.no_grad():
            expected = model.eval()(x)
        expected = expected if isinstance(expected, (list, tuple)) else [expected]
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        errors.append(max(
            float((torch.from_numpy(g) - e).abs().max() / e.abs().max()) for g, e in zip(got, expected)
        ))
    return errors
