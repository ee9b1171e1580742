"""The fast paths run only on blocks exactly as built: anything wrapped, replaced or hooked runs as its modules.

Each wrapper below changes what a block computes. The property: the wrapped model gives the same answer
under ``no_grad`` (where fused CPU inference would run), in grad mode (the modules, or oneDNN linears in
training) and with every fast path off; the wrapped blocks take no fast path and the others still do.
"""

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import pvtv2
from pvtv2.models import cpu_inference, cpu_training, fast_path


ONEDNN_LINEAR = cpu_training.applies(torch.ones(1, requires_grad=True), torch.ones(1, 1))


class _Doubled(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight


class _ScaledLinear(nn.Linear):
    """A user's subclass with its own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def _pre_hook(model: nn.Module) -> nn.Module:
    model.block1[0].attn.kv.register_forward_pre_hook(lambda module, args: (args[0] * 3,))
    return model


def _backward_hook(model: nn.Module) -> nn.Module:
    model.block1[0].mlp.fc1.register_full_backward_hook(lambda module, grad_in, grad_out: None)
    return model


def _parametrized(model: nn.Module) -> nn.Module:
    parametrize.register_parametrization(model.block1[0].mlp.fc1, "weight", _Doubled())
    return model


def _subclass(model: nn.Module) -> nn.Module:
    old = model.block1[0].attn.proj
    new = _ScaledLinear(old.in_features, old.out_features)
    new.load_state_dict(old.state_dict())
    model.block1[0].attn.proj = new
    return model


def _quantized(model: nn.Module) -> nn.Module:
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def _reflect_padding(model: nn.Module) -> nn.Module:
    model.block1[0].mlp.dwconv.dwconv.padding_mode = "reflect"
    return model


def _replaced_activation(model: nn.Module) -> nn.Module:
    model.block1[0].mlp.act = nn.ReLU()  # a class the layout allows elsewhere (the -Li FFN's ReLU)
    return model


WRAPPERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "forward pre-hook": _pre_hook,
    "parametrization": _parametrized,
    "nn.Linear subclass": _subclass,
    "quantize_dynamic": _quantized,
    "reflect padding": _reflect_padding,
    "activation swapped": _replaced_activation,
}


def _tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.patch_embed1(x)[0]


@pytest.mark.parametrize("kind", WRAPPERS)
def test_a_wrapped_block_runs_as_its_modules(kind):
    base = pvtv2.create_model("pvt_v2_b0", num_classes=10).eval()
    model = WRAPPERS[kind](copy.deepcopy(base))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not cpu_inference.can_fuse(model.block1[0], _tokens(model, x))
        if kind != "quantize_dynamic":  # quantize_dynamic swaps every linear layer, in every block
            assert cpu_inference.can_fuse(model.block2[0], torch.randn(2, 64, 64))
        no_grad = model(x)
        with cpu_inference.disabled():
            plain = model(x)
        unwrapped = base(x)
    grad_mode = model(x)
    assert not torch.allclose(no_grad, unwrapped, atol=1e-3)  # the wrapper does change the answer
    torch.testing.assert_close(no_grad, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(no_grad, grad_mode.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", [*WRAPPERS, "full backward hook"])
def test_a_wrapped_block_trains_as_its_modules(kind):
    wrap = WRAPPERS.get(kind, _backward_hook)
    model = wrap(pvtv2.create_model("pvt_v2_b0", num_classes=10).train())
    x = torch.randn(2, 3, 64, 64)
    tokens = _tokens(model, x)
    assert not cpu_training.runs_on_onednn(model.block1[0], tokens)
    if kind != "quantize_dynamic" and ONEDNN_LINEAR:
        assert cpu_training.runs_on_onednn(model.block2[0], torch.randn(2, 64, 64))


def _lora(name: str) -> nn.Module:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = pvtv2.create_model(name, num_classes=10)
    config = peft.LoraConfig(r=8, target_modules=["q", "kv", "fc1", "fc2"], init_lora_weights=False)
    return peft.get_peft_model(model, config)


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_tiny"])
def test_peft_lora_gives_the_same_logits_with_and_without_autograd(name):
    """The reported bug: fused inference read the base weights of peft's LoRA layers and skipped the adapters."""
    model = _lora(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        no_grad = model(x)
        with model.disable_adapter():
            base = model(x)
    grad_mode = model(x).detach()
    merged = model.merge_and_unload().eval()
    with torch.no_grad():
        merged_logits = merged(x)
        assert cpu_inference.can_fuse(merged.block1[0], _tokens(merged, x))  # merged: plain again, fused
    assert (no_grad - base).abs().max() > 1e-2
    torch.testing.assert_close(no_grad, grad_mode, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged_logits, grad_mode, rtol=1e-5, atol=1e-5)


def test_peft_lora_trains_only_the_adapters():
    model = _lora("pvt_v2_b0").train()
    x, labels = torch.randn(2, 3, 64, 64), torch.tensor([1, 2])
    F.cross_entropy(model(x), labels).backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in n for n in trained)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trained


def test_the_layout_names_every_module_the_constructor_builds():
    """The fast paths' layout covers every kind of block the zoo builds, so an unwrapped model is all fast."""
    for name in ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_tiny"]:
        model = pvtv2.create_model(name, drop_path_rate=0.1)
        blocks = [b for i in range(4) for b in model.blocks(i)]
        assert all(fast_path.runs_as_built(b) for b in blocks)
        assert fast_path.runs_as_built(model.head)
        assert not fast_path.runs_as_built(model.block1)  # a ModuleList is no fast path's module


def test_a_gelu_approximated_is_not_the_block_as_built():
    # tanh GELU moves random-weight logits by ~1e-5 only, too little to tell from rounding: asked directly.
    block = pvtv2.create_model("pvt_v2_b0").block1[0]
    assert fast_path.runs_as_built(block)
    block.mlp.act = nn.GELU(approximate="tanh")
    assert not fast_path.runs_as_built(block)


def test_global_hooks_stop_every_fast_path():
    model = pvtv2.create_model("pvt_v2_b0")
    handle = torch.nn.modules.module.register_module_full_backward_hook(lambda module, gi, go: None)
    try:
        assert not fast_path.runs_as_built(model.block1[0]) and not fast_path.runs_as_built(model.head)
    finally:
        handle.remove()
    assert fast_path.runs_as_built(model.block1[0])


def test_quantize_dynamic_quantizes_every_linear_layer():
    model = pvtv2.create_model("pvt_v2_b0")
    linears = sum(type(m) is nn.Linear for m in model.modules())
    quantized = _quantized(model)
    assert linears == 41
    assert sum(type(m) is torch.ao.nn.quantized.dynamic.Linear for m in quantized.modules()) == linears


def test_torch_func_grad_runs_through_the_onednn_linear():
    """``setup_context``: torch.func transforms can differentiate the autograd function itself."""
    x, weight, bias = torch.randn(5, 7), torch.randn(3, 7), torch.randn(3)
    got = torch.func.grad(lambda w: cpu_training._OneDNNLinear.apply(x, w, bias).square().sum())(weight)
    want = torch.func.grad(lambda w: F.linear(x, w, bias).square().sum())(weight)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_torch_func_on_the_model_equals_autograd():
    torch.manual_seed(0)
    model = pvtv2.create_model("pvt_v2_b0", num_classes=3).eval()
    params = dict(model.named_parameters())
    x = torch.randn(2, 3, 64, 64)
    grads = torch.func.grad(lambda p: torch.func.functional_call(model, p, (x,)).sum())(params)
    model(x).sum().backward()
    for n, p in params.items():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)
    batched = torch.func.vmap(lambda image: model(image[None])[0])(x)
    torch.testing.assert_close(batched, model(x).detach(), rtol=1e-4, atol=1e-5)
