"""Loading the three checkpoint layouts (official, timm, HF), safely, strictly, and rejecting bad files."""

import logging
import os

import pytest
import timm
import torch
from safetensors.torch import save_file

import pvtv2
from pvtv2.models.keys import detect_format, from_official, to_official
from pvtv2.models.loading import CheckpointError, load_pretrained

from .peers import hf_model, relative_error


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(3)
    return pvtv2.create_model("pvt_v2_b0").eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_official_pth_round_trip(tmp_path, b0):
    path = tmp_path / "pvt_v2_b0.pth"
    torch.save(b0.state_dict(), path)
    loaded = pvtv2.create_model("pvt_v2_b0", pretrained=path)
    assert _same_weights(loaded, b0)


@pytest.mark.parametrize("wrap", ["model", "state_dict", "ddp"])
def test_training_checkpoint_wrappers_are_unwrapped(tmp_path, b0, wrap):
    state = b0.state_dict()
    checkpoint = {f"module.{k}": v for k, v in state.items()} if wrap == "ddp" else {wrap: state, "epoch": 3}
    torch.save(checkpoint, tmp_path / "ckpt.pth")
    assert _same_weights(pvtv2.create_model("pvt_v2_b0", pretrained=tmp_path / "ckpt.pth"), b0)


def test_safetensors_file(tmp_path, b0):
    save_file(b0.state_dict(), tmp_path / "b0.safetensors")
    assert _same_weights(pvtv2.create_model("pvt_v2_b0", pretrained=tmp_path / "b0.safetensors"), b0)


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li"])
def test_timm_state_dict_loads_and_gives_timm_outputs(tmp_path, name, x):
    peer = timm.create_model(name).eval()
    torch.save(peer.state_dict(), tmp_path / "timm.pth")
    ours = pvtv2.create_model(name, pretrained=tmp_path / "timm.pth").eval()
    with torch.no_grad():
        assert relative_error(ours(x), peer(x)) < 1e-4
    # and back: official -> timm gives timm's own tensors
    back = from_official(ours.state_dict(), "timm")
    assert back.keys() == peer.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in peer.state_dict().items())


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_tiny"])
def test_hf_checkpoint_folder_loads_and_gives_hf_outputs(tmp_path, name):
    peer = hf_model(name)
    peer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = pvtv2.create_model(name, pretrained=tmp_path).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert relative_error(ours(x), peer(x).logits) < 1e-4
    back = from_official(ours.state_dict(), "hf")
    assert all(torch.equal(back[k], v) for k, v in peer.state_dict().items())


def test_hf_base_model_without_prefix_loads(b0):
    hf_state = {k.removeprefix("pvt_v2."): v for k, v in from_official(b0.state_dict(), "hf").items()
                if not k.startswith("classifier.")}
    backbone = pvtv2.create_model("pvt_v2_b0", features_only=True, pretrained=hf_state)
    assert all(torch.equal(backbone.state_dict()[k], b0.state_dict()[k]) for k in backbone.state_dict())


def test_format_detection():
    assert detect_format(pvtv2.create_model("pvt_v2_b0").state_dict()) == "official"
    assert detect_format(timm.create_model("pvt_v2_b0").state_dict()) == "timm"
    assert detect_format(hf_model("pvt_tiny").state_dict()) == "hf"
    with pytest.raises(ValueError, match="first keys are: conv1.weight"):
        detect_format({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)})


def test_conversions_round_trip_for_every_family():
    for name in ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_tiny"]:
        state = pvtv2.create_model(name).state_dict()
        formats = ["timm", "hf"] if name.startswith("pvt_v2") else ["hf"]
        for fmt in formats:
            back, leftover = to_official(from_official(state, fmt), fmt, state.keys())
            assert leftover == []
            assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state), (name, fmt)
    with pytest.raises(ValueError, match="timm has no PVTv1"):
        from_official(pvtv2.create_model("pvt_tiny").state_dict(), "timm")


def test_head_with_other_classes_is_dropped_with_a_message(b0, caplog):
    with caplog.at_level(logging.WARNING, logger="pvtv2"):
        model = pvtv2.create_model("pvt_v2_b0", num_classes=10, pretrained=b0.state_dict())
    assert "not loading the checkpoint's classification head" in caplog.text and "1000 classes" in caplog.text
    assert model.head.out_features == 10
    assert torch.equal(model.block4[1].mlp.fc2.weight, b0.block4[1].mlp.fc2.weight)


def test_features_only_backbone_takes_a_classification_checkpoint(b0):
    backbone = pvtv2.create_model("pvt_v2_b0", features_only=True, pretrained=b0.state_dict())
    assert torch.equal(backbone.norm4.weight, b0.norm4.weight)


def test_backbone_of_our_detector_checkpoint_loads(b0, caplog):
    # torchvision's layout, which our detectors use: backbone.body.* (PVT), backbone.fpn.* and heads.
    features = pvtv2.create_model("pvt_v2_b0", features_only=True, pretrained=b0.state_dict()).state_dict()
    state = {f"backbone.body.{k}": v for k, v in features.items()}
    state |= {"backbone.fpn.inner_blocks.0.0.weight": torch.zeros(64, 32, 1, 1), "roi_heads.box_head.fc6.weight": torch.zeros(8, 8)}
    with caplog.at_level(logging.INFO, logger="pvtv2"):
        model = pvtv2.create_model("pvt_v2_b0", features_only=True, pretrained={"model": state})
    assert torch.equal(model.block3[0].attn.kv.weight, b0.block3[0].attn.kv.weight)
    assert "torchvision layout" in caplog.text and "backbone.fpn, roi_heads" in caplog.text


def _unchanged_after_error(model, state, match):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=match):
        load_pretrained(model, state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_keys_are_named_and_nothing_is_loaded(b0):
    state = {k: v for k, v in b0.state_dict().items() if not k.startswith("block2.1.")}
    _unchanged_after_error(pvtv2.create_model("pvt_v2_b0"), state, r"missing keys: block2\.1\.norm1\.weight")


def test_unexpected_keys_are_named(b0):
    state = dict(b0.state_dict(), **{"block1.5.attn.q.weight": torch.zeros(32, 32)})
    _unchanged_after_error(pvtv2.create_model("pvt_v2_b0"), state, r"1 unexpected keys: block1\.5\.attn\.q\.weight")


def test_checkpoint_of_another_variant_reports_shapes():
    b1_state = pvtv2.create_model("pvt_v2_b1").state_dict()
    _unchanged_after_error(pvtv2.create_model("pvt_v2_b0"), b1_state,
                           r"(?s)does not fit pvt_v2_b0.*shape mismatches: patch_embed1\.proj\.weight: checkpoint \(64, 3, 7, 7\) vs model \(32, 3, 7, 7\)")
    v1_state = pvtv2.create_model("pvt_tiny").state_dict()
    _unchanged_after_error(pvtv2.create_model("pvt_v2_b1"), v1_state, r"unexpected keys: .*pos_embed1")


def test_unreadable_files_get_clear_errors(tmp_path):
    model = pvtv2.create_model("pvt_v2_b0")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(model, tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(os.urandom(300))
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*corrupt\.pth"):
        load_pretrained(model, corrupt)
    with pytest.raises(CheckpointError, match="folder without model.safetensors or pytorch_model.bin"):
        load_pretrained(model, tmp_path)
    torch.save({"conv1.weight": torch.zeros(2)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="first keys are: conv1.weight"):
        load_pretrained(model, tmp_path / "resnet.pth")


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_pickles_that_run_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"patch_embed1.proj.weight": _Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_pretrained(pvtv2.create_model("pvt_v2_b0"), path)
