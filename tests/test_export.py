"""Deployment paths: torch.compile without graph breaks, autocast, torch.export and ONNX (onnxruntime)."""

import pytest
import torch

import pvtv2
from pvtv2.errors import RunFailure
from pvtv2.models.export import check_onnx, export_checked, export_onnx, export_program

from .peers import relative_error
from .twins import one_block_per_stage

COMPILE_MODELS = ["pvt_v2_b0", "pvt_v2_b2_li"]


@pytest.mark.parametrize("name", COMPILE_MODELS)
def test_whole_model_compiles_as_one_graph_for_inference_and_training(name):
    torch._dynamo.reset()
    model = pvtv2.create_model(name, num_classes=10, drop_path_rate=0.1)
    # fullgraph=True raises at the first graph break; the "eager" backend keeps the check fast.
    compiled = torch.compile(model, fullgraph=True, backend="eager", dynamic=False)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    model.train()
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_inductor_compiled_model_matches_eager():
    torch._dynamo.reset()
    model = pvtv2.create_model("pvt_v2_b0").eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        assert relative_error(compiled(x), model(x)) < 1e-4


# Small inputs: without AVX-512 this CPU runs bf16 convolutions on a slow reference path.
@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_tiny"])
def test_bf16_autocast_stays_finite_and_close(name):
    model = pvtv2.create_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert relative_error(low.float(), reference) < 0.05


def test_bf16_autocast_training_step_has_finite_gradients():
    model = pvtv2.create_model("pvt_v2_b0", num_classes=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 3]))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_torch_export_program_serves_other_sizes_and_batches():
    model = pvtv2.create_model("pvt_tiny").eval()
    program = export_program(model)
    assert not [n for n in program.graph.nodes if "mkldnn" in str(n.target)]  # no eager-only fused kernels
    for shape in [(1, 3, 224, 224), (3, 3, 250, 333)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            assert relative_error(program.module()(x), model(x)) < 1e-5


# B0 as users export it; B2-Li's linear SRA as its one-block twin (same layers, a quarter of the export time).
@pytest.mark.parametrize("name,build", [
    ("pvt_v2_b0", lambda: pvtv2.create_model("pvt_v2_b0").eval()),
    ("pvt_v2_b2_li", lambda: one_block_per_stage("pvt_v2_b2_li", features_only=True)),
], ids=["pvt_v2_b0", "pvt_v2_b2_li-twin-features"])
def test_onnx_export_runs_in_onnxruntime_at_any_size(name, build, tmp_path):
    model = build()
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    # Sizes other than the 224x224 example: linear SRA's adaptive pooling used to be frozen to 224's window.
    errors = check_onnx(model, path, [(1, 224, 224), (2, 250, 333), (1, 97, 160)])
    assert max(errors) < 1e-4, errors


def test_export_checked_writes_a_checked_program_or_nothing(tmp_path, monkeypatch):
    model = one_block_per_stage("pvt_v2_b0", num_classes=10)
    out = tmp_path / "b0.pt2"
    ((size, error),) = export_checked(model, out, "torch-export")
    assert size == (2, 250, 333) and error < 1e-5 and out.is_file()
    import pvtv2.models.export as export_module

    monkeypatch.setattr(export_module, "check_program", lambda model, path, sizes: [float("nan") for _ in sizes])
    with pytest.raises(RunFailure, match="differs from PyTorch"):
        export_checked(model, tmp_path / "bad.pt2", "torch-export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b0.pt2"]  # NaN fails, and leaves no file behind
