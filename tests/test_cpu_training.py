"""The oneDNN linear that CPU training runs (pvtv2.models.cpu_training) against F.linear."""

import pytest
import torch
import torch.nn.functional as F

import pvtv2
from pvtv2.models import cpu_training

needs_onednn = pytest.mark.skipif(not cpu_training.applies(torch.ones(1, requires_grad=True), torch.ones(1, 1)),
                                  reason="this PyTorch has no oneDNN linear")


def _grads(fn, x, weight, bias, grad_out):
    out = fn(x, weight, bias)
    inputs = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
    return out, torch.autograd.grad(out, inputs, grad_out)


@needs_onednn
@pytest.mark.parametrize(("shape", "in_features", "out_features"), [
    ((2, 50, 3), 32, 256),   # fewer inputs than outputs: the weight gradient's other orientation
    ((2, 50, 3), 256, 32),
    ((7,), 5, 5),
])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_every_gradient_equal_f_linear(shape, in_features, out_features, bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, in_features, requires_grad=True)
    weight = torch.randn(out_features, in_features, requires_grad=True)
    b = torch.randn(out_features, requires_grad=True) if bias else None
    grad_out = torch.randn(*shape, out_features)
    out, grads = _grads(cpu_training.linear, x, weight, b, grad_out)
    expected_out, expected = _grads(F.linear, x, weight, b, grad_out)
    assert out.grad_fn.name() == "_OneDNNLinearBackward"  # the oneDNN path did run
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_transposed_input_and_frozen_weight():
    """A non-contiguous input (a token view of an image) and a weight without gradient: only x's gradient."""
    torch.manual_seed(0)
    image = torch.randn(2, 16, 5, 6, requires_grad=True)
    x = image.flatten(2).transpose(1, 2)  # (2, 30, 16), not contiguous
    weight, bias = torch.randn(8, 16), torch.randn(8)
    grad_out = torch.randn(2, 30, 8)
    (got,) = torch.autograd.grad(cpu_training.linear(x, weight, bias), image, grad_out)
    (want,) = torch.autograd.grad(F.linear(x, weight, bias), image, grad_out)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_other_cases_run_f_linear():
    x = torch.randn(3, 4, requires_grad=True)
    weight = torch.randn(2, 4, requires_grad=True)
    with torch.no_grad():
        assert not cpu_training.applies(x, weight)
    assert not cpu_training.applies(x.double(), weight.double())
    assert not cpu_training.applies(x.detach(), weight.detach())  # nothing to differentiate
    with torch.autocast("cpu", torch.bfloat16):
        assert not cpu_training.applies(x, weight)  # autocast chooses the dtype: F.linear under it
    previous = cpu_training.set_enabled(False)
    try:
        assert not cpu_training.applies(x, weight)
    finally:
        cpu_training.set_enabled(previous)
    assert cpu_training.linear(x.double(), weight.double(), None).grad_fn.name() != "_OneDNNLinearBackward"


@needs_onednn
@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_tiny"])
def test_training_step_gradients_equal_the_plain_linears(name):
    """Every parameter's gradient of a whole model, oneDNN linears against F.linear, same weights and input."""
    torch.manual_seed(0)
    model = pvtv2.create_model(name, num_classes=10).train()
    x, labels = torch.randn(2, 3, 64, 64), torch.tensor([3, 7])

    def gradients():
        torch.manual_seed(1)  # the same stochastic-depth draws
        model.zero_grad(set_to_none=True)
        logits = model(x)
        assert (logits.grad_fn.name() == "_OneDNNLinearBackward") == cpu_training.applies(x, model.head.weight)
        F.cross_entropy(logits, labels).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    got = gradients()
    previous = cpu_training.set_enabled(False)
    try:
        want = gradients()
    finally:
        cpu_training.set_enabled(previous)
    assert got.keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-5, msg=n)
