"""Every registered model through the same checks: builds, forward, backward, pyramid, odd sizes."""

import math

import pytest
import torch

import pvtv2
from pvtv2.models import PyramidVisionTransformer, PyramidVisionTransformerV2, cpu_inference, download

ALL = pvtv2.list_models()
V2 = pvtv2.list_models("pvt_v2_*")
V1 = ["pvt_tiny", "pvt_small", "pvt_medium", "pvt_large"]
LINEAR_TWINS = ["pvt_v2_b0_li", "pvt_v2_b1_li", "pvt_v2_b3_li", "pvt_v2_b4_li", "pvt_v2_b5_li"]  # no paper figures


def test_registry_lists_the_paper_models():
    # The paper's models, and linear SRA for every other size (tests/test_visualize.py), each after its sibling.
    assert [n for n in ALL if n not in LINEAR_TWINS] == [
        "pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b2_li", "pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5", *V1]
    assert ALL == ["pvt_v2_b0", "pvt_v2_b0_li", "pvt_v2_b1", "pvt_v2_b1_li", "pvt_v2_b2", "pvt_v2_b2_li", "pvt_v2_b3",
                   "pvt_v2_b3_li", "pvt_v2_b4", "pvt_v2_b4_li", "pvt_v2_b5", "pvt_v2_b5_li", *V1]


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'pvt_v2_b9'.*pvt_v2_b0"):
        pvtv2.create_model("pvt_v2_b9")


@pytest.mark.parametrize("name", ALL)
def test_every_model_builds_and_classifies(name):
    model = pvtv2.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    expected_class = PyramidVisionTransformerV2 if name.startswith("pvt_v2") else PyramidVisionTransformer
    assert isinstance(model, expected_class)


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_tiny"])
def test_backward_reaches_every_parameter(name):
    model = pvtv2.create_model(name, num_classes=5)
    loss = model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean()
    loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without_grad == []


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_tiny"])
@pytest.mark.parametrize("size", [(224, 224), (250, 333), (97, 61)])
def test_pyramid_has_strides_4_to_32_for_any_size(name, size):
    model = pvtv2.create_model(name, features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *size))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    for feat, stride in zip(feats, model.feature_info.reduction()):
        # Overlapping embeddings pad (ceil), non-overlapping ones drop the remainder (floor).
        rounding = math.ceil if name.startswith("pvt_v2") else math.floor
        height, width = size
        if name.startswith("pvt_v2"):
            expected = (rounding(height / stride), rounding(width / stride))
        else:
            expected = (height // stride, width // stride)
        assert tuple(feat.shape[-2:]) == expected


def test_out_indices_select_levels_and_feature_info_follows():
    model = pvtv2.create_model("pvt_v2_b0", features_only=True, out_indices=(1, 3)).eval()
    feats = model(torch.randn(1, 3, 128, 128))
    assert [f.shape[1:] for f in feats] == [(64, 16, 16), (256, 4, 4)]
    assert model.feature_info.channels() == [64, 256]
    assert not hasattr(model, "head")
    with pytest.raises(ValueError, match="out_indices"):
        pvtv2.create_model("pvt_v2_b0", features_only=True, out_indices=(4,))


def test_pyramid_levels_equal_the_classifier_path():
    model = pvtv2.create_model("pvt_v2_b0").eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)  # timm's convention: (forward_features, the stage maps)
        tokens = model.forward_features(x)
    torch.testing.assert_close(final, tokens)
    torch.testing.assert_close(maps[-1].flatten(2).transpose(1, 2), tokens)
    torch.testing.assert_close(model.forward_head(tokens), model(x))


def test_too_small_or_wrong_channel_input_is_a_clear_error():
    model = pvtv2.create_model("pvt_v2_b0")
    with pytest.raises(ValueError, match=r"16x40 is too small.*at least 29"):
        model(torch.randn(1, 3, 16, 40))
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 3, height, width\), got \(1, 1, 64, 64\)"):
        model(torch.randn(1, 1, 64, 64))
    # Linear SRA pools to 7x7 whatever the size, so B2-Li accepts tiny inputs.
    assert pvtv2.create_model("pvt_v2_b2_li").min_input_size == 1


def test_in_chans_and_headless_model():
    model = pvtv2.create_model("pvt_v2_b0", in_chans=1, num_classes=0).eval()
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 256)


def test_reset_classifier():
    model = pvtv2.create_model("pvt_tiny")
    model.reset_classifier(10)
    assert model.get_classifier().out_features == 10
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_stochastic_depth_only_in_training():
    model = pvtv2.create_model("pvt_v2_b0", drop_path_rate=0.5)
    rates = [b.drop_path.p for i in range(4) for b in model.blocks(i) if hasattr(b.drop_path, "p")]
    assert rates == pytest.approx([0.5 * i / 7 for i in range(1, 8)])  # linear decay, first block has none
    x = torch.randn(4, 3, 64, 64)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_gradient_checkpointing_gives_the_same_gradients():
    model = pvtv2.create_model("pvt_v2_b0", num_classes=3)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, reference[name], msg=name)


def test_v1_position_embedding_is_resized_for_other_sizes():
    model = pvtv2.create_model("pvt_tiny").eval()
    assert model.position_embedding(0, 56, 56) is model.pos_embed1
    resized = model.position_embedding(0, 30, 41)
    assert resized.shape == (1, 30 * 41, 64)
    # The stage-4 class token keeps its own embedding; only the grid part is resized.
    assert model.pos_embed4.shape == (1, 50, 512)
    assert model.no_weight_decay() == {"pos_embed1", "pos_embed2", "pos_embed3", "pos_embed4", "cls_token"}


def test_official_layout_and_layer_norm_eps():
    model = pvtv2.create_model("pvt_v2_b2_li")
    keys = set(model.state_dict())
    for key in ["patch_embed1.proj.weight", "block1.0.attn.q.weight", "block1.0.attn.kv.weight",
                "block1.0.attn.sr.weight", "block1.0.attn.norm.weight", "block1.0.mlp.dwconv.dwconv.weight",
                "norm1.weight", "head.weight"]:
        assert key in keys
    assert model.patch_embed1.proj.kernel_size == (7, 7) and model.patch_embed1.proj.padding == (3, 3)
    assert model.patch_embed2.proj.kernel_size == (3, 3) and model.patch_embed2.proj.stride == (2, 2)
    assert model.patch_embed1.norm.eps == 1e-5 and model.block1[0].attn.norm.eps == 1e-5
    assert model.block1[0].norm1.eps == 1e-6 and model.norm1.eps == 1e-6
    assert model.block1[0].attn.pool.output_size == 7 and model.block1[0].attn.sr.kernel_size == (1, 1)
    v1 = pvtv2.create_model("pvt_small")
    assert {"pos_embed1", "cls_token", "norm.weight"} <= set(v1.state_dict())
    assert v1.patch_embed1.proj.kernel_size == (4, 4) and v1.patch_embed1.proj.stride == (4, 4)


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_tiny"])
def test_fused_cpu_inference_equals_the_plain_modules(name):
    model = pvtv2.create_model(name).eval()
    x = torch.randn(2, 3, 96, 112)
    with torch.inference_mode():
        assert cpu_inference.can_fuse(model.block1[0], model.patch_embed1(x)[0])
        fused = model(x)
        with cpu_inference.disabled():
            plain = model(x)
    assert not torch.equal(fused, plain)  # the fused kernels did run
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)
    # With autograd on, the plain modules run and gradients flow.
    assert model(x).requires_grad


needs_bf16 = pytest.mark.skipif(not cpu_inference.ONEDNN_BF16, reason="this CPU's oneDNN has no bfloat16 kernels")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@needs_bf16
@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_tiny"])
def test_bf16_fused_cpu_inference_equals_the_plain_modules(name):
    """bfloat16 runs fused, under autocast over float32 weights and as a bfloat16 model, and is as close to
    the plain modules in bfloat16 (and to float32) as bfloat16 rounding allows; the output is bfloat16."""
    model = pvtv2.create_model(name).eval()
    x = torch.randn(2, 3, 96, 112)
    with torch.inference_mode():
        full = model(x)
        with torch.autocast("cpu", torch.bfloat16):
            assert cpu_inference.can_fuse(model.block1[0], model.patch_embed1(x)[0])
            fused = model(x)
            with cpu_inference.disabled():
                plain = model(x)
        model_bf16 = model.to(torch.bfloat16)
        assert cpu_inference.can_fuse(model_bf16.block1[0], model_bf16.patch_embed1(x.bfloat16())[0])
        fused_bf16 = model_bf16(x.bfloat16())
        with cpu_inference.disabled():
            plain_bf16 = model_bf16(x.bfloat16())
    assert fused.dtype == plain.dtype == fused_bf16.dtype == torch.bfloat16
    assert not torch.equal(fused, plain)  # the fused kernels did run
    # bfloat16 keeps 8 bits: ~0.4% per rounding, a few % over a network of random weights.
    assert _relative(fused, plain) < 0.03 and _relative(fused_bf16, plain_bf16) < 0.03
    assert _relative(fused, full) < 1.5 * _relative(plain, full) + 0.01


@needs_bf16
@pytest.mark.parametrize("heads", [1, 5])
def test_bf16_attention_equals_the_flash_kernel(heads, monkeypatch):
    """The fused path's bfloat16 attention (matmuls in bfloat16, softmax in float32) against PyTorch's flash
    kernel, and the flash kernel itself above ATTENTION_SCORES_BYTES; float32 is the module's own."""
    from pvtv2.models.layers import SpatialReductionAttention

    torch.manual_seed(0)
    attn = SpatialReductionAttention(40, heads, sr_ratio=2).eval()
    q, kv = torch.randn(2, 300, 40), torch.randn(2, 75, 80)
    with torch.inference_mode():
        exact = attn.attend(q, kv)
        assert torch.equal(cpu_inference._attend(attn, q, kv), exact)
        q16, kv16 = q.bfloat16(), kv.bfloat16()
        flash = attn.attend(q16, kv16)
        fused = cpu_inference._attend(attn, q16, kv16)
        monkeypatch.setattr(cpu_inference, "ATTENTION_SCORES_BYTES", 2 * heads * 300 * 75 * 4 - 1)
        assert torch.equal(cpu_inference._attend(attn, q16, kv16), flash)
    assert fused.dtype == torch.bfloat16 and fused.shape == exact.shape
    assert not torch.equal(fused, flash)
    assert _relative(fused, exact) < 0.01 and _relative(fused, exact) < 2 * _relative(flash, exact) + 0.002


@needs_bf16
def test_bf16_copies_follow_the_weights():
    """Under autocast the fused kernels keep bfloat16 copies of float32 weights; new weights are recast."""
    model = pvtv2.create_model("pvt_v2_b0").eval()
    other = pvtv2.create_model("pvt_v2_b0").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        first = model(x)
        expected = other(x)
        model.load_state_dict(other.state_dict())  # copies in place: same tensors, new versions
        assert torch.equal(model(x), expected) and not torch.equal(first, expected)


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_tiny"])
def test_feed_forward_in_bands_equals_the_whole_tensor(name, monkeypatch):
    model = pvtv2.create_model(name, num_classes=0).eval()
    x = torch.randn(3, 3, 100, 76)  # odd grids (25x19, 13x10, ...): uneven last bands, halos at borders
    with torch.inference_mode():
        whole = model(x)
        # Bands of 2 rows of 1 image, in every stage: the halo rows and the batch split are exercised.
        monkeypatch.setattr(cpu_inference, "MIN_BAND_ROWS", 2)
        # PVTv1's token chunks: 100 first-stage tokens (hidden 512 floats), an uneven last chunk.
        monkeypatch.setattr(cpu_inference, "FFN_BAND_BYTES", 1 if name.startswith("pvt_v2") else 100 * 512 * 4)
        if name.startswith("pvt_v2"):
            assert cpu_inference.band_shape(model.block1[0].mlp, 3, 25, 19) == (1, 2)
        banded = model(x)
    torch.testing.assert_close(banded, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("no_autograd", [torch.no_grad, torch.inference_mode])
def test_forward_hooks_are_called_on_cpu_inference(no_autograd):
    model = pvtv2.create_model("pvt_v2_b0").eval()
    x = torch.randn(2, 3, 96, 112)
    with no_autograd():
        fused = model(x)
    calls = []
    handles = [
        model.block1[0].mlp.register_forward_hook(lambda module, args, output: calls.append("ffn")),
        model.block2[0].attn.q.register_forward_pre_hook(lambda module, args: calls.append("q")),
    ]
    try:
        with no_autograd():
            assert not cpu_inference.can_fuse(model.block1[0], model.patch_embed1(x)[0])
            hooked = model(x)
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(calls) == ["ffn", "q"]
    # The hooked blocks ran as their modules; the others (and, once the hooks are gone, all) fused.
    torch.testing.assert_close(hooked, fused, rtol=1e-4, atol=1e-5)
    with no_autograd():
        assert torch.equal(model(x), fused)


def test_global_forward_hooks_force_the_plain_modules():
    model = pvtv2.create_model("pvt_tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        fused = model(x)
        with cpu_inference.disabled():
            plain = model(x)
    linears = []

    def count_linears(module, args, output):
        if isinstance(module, torch.nn.Linear):
            linears.append(module)

    handle = torch.nn.modules.module.register_module_forward_hook(count_linears)
    try:
        with torch.inference_mode():
            hooked = model(x)
    finally:
        handle.remove()
    # q, kv, proj, fc1, fc2 in each of the 8 blocks, and the head: every linear layer ran as its module.
    assert len(linears) == 5 * sum(model.depths) + 1
    assert torch.equal(hooked, plain)
    with torch.inference_mode():
        assert torch.equal(model(x), fused)


@pytest.mark.parametrize("pretrained", ["official", True])
def test_pretrained_official_fetches_the_release_file(pretrained, tmp_path, monkeypatch):
    torch.manual_seed(3)
    state = pvtv2.create_model("pvt_v2_b0").state_dict()
    torch.save(state, tmp_path / "pvt_v2_b0.pth")
    fetched = []

    def fetch(name):
        fetched.append(name)
        return tmp_path / f"{name}.pth"

    monkeypatch.setattr(download, "fetch", fetch)
    model = pvtv2.create_model("pvt_v2_b0", pretrained=pretrained)
    assert fetched == ["pvt_v2_b0"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("num_classes", [-5, 2.5, None, True])
def test_num_classes_must_be_a_count(num_classes):
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
        pvtv2.create_model("pvt_v2_b0", num_classes=num_classes)
    with pytest.raises(ValueError, match="num_classes"):
        pvtv2.create_model("pvt_v2_b0").reset_classifier(-1)
