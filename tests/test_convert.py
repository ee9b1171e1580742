"""Converting checkpoint files between official, timm, HF and safetensors, and taking detector backbones."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file
from transformers import PvtForImageClassification, PvtV2ForImageClassification, PvtV2Model

import pvtv2
from pvtv2.models.conversion import convert_checkpoint, identify_model
from pvtv2.models.keys import from_official
from pvtv2.models.loading import CheckpointError, load_pretrained, read_checkpoint

NAME = "pvt_v2_b0"


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory):
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("timm") / "pvt_v2_b0_timm.pth"
    torch.save(timm.create_model(NAME).state_dict(), path)
    return path


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_timm_to_official_and_back_gives_the_same_tensors(tmp_path, timm_file):
    timm_state = torch.load(timm_file, weights_only=True)
    done = convert_checkpoint(timm_file, tmp_path / "official.pth", "official")
    assert (done.model, done.source_format, done.num_classes, done.backbone_only) == (NAME, "timm", 1000, False)
    official = torch.load(tmp_path / "official.pth", weights_only=True)
    assert official.keys() == pvtv2.create_model(NAME).state_dict().keys()
    convert_checkpoint(tmp_path / "official.pth", tmp_path / "timm.pth", "timm")
    assert _same(torch.load(tmp_path / "timm.pth", weights_only=True), timm_state)


def test_timm_to_hf_and_back_gives_the_same_tensors_and_transformers_loads_it(tmp_path, timm_file):
    timm_state = torch.load(timm_file, weights_only=True)
    convert_checkpoint(timm_file, tmp_path / "hf", "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    done = convert_checkpoint(tmp_path / "hf", tmp_path / "timm.pth", "timm")
    assert done.source_format == "hf"
    assert _same(torch.load(tmp_path / "timm.pth", weights_only=True), timm_state)

    peer, info = PvtV2ForImageClassification.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    assert peer.config.num_labels == 1000 and peer.config.id2label[0] == "tench"
    ours = pvtv2.create_model(NAME, pretrained=timm_file).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # HF has one LayerNorm eps (see peers.py), hence the tolerance
        assert torch.allclose(peer.eval()(x).logits, ours(x), atol=1e-4)


def test_pvt_v1_to_hf_loads_in_transformers(tmp_path):
    torch.manual_seed(6)
    model = pvtv2.create_model("pvt_tiny")
    torch.save(model.state_dict(), tmp_path / "tiny.pth")
    convert_checkpoint(tmp_path / "tiny.pth", tmp_path / "hf", "hf")
    peer, info = PvtForImageClassification.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info
    assert _same(peer.state_dict(), from_official(model.state_dict(), "hf"))
    with pytest.raises(ValueError, match="timm has no PVTv1"):
        convert_checkpoint(tmp_path / "tiny.pth", tmp_path / "timm.pth", "timm")


def test_safetensors_target_holds_official_keys(tmp_path, timm_file):
    convert_checkpoint(timm_file, tmp_path / "b0.safetensors", "safetensors")
    reference = pvtv2.create_model(NAME, pretrained=timm_file).state_dict()
    assert _same(load_file(tmp_path / "b0.safetensors"), reference)


@pytest.mark.parametrize("family", ["detector", "segmenter"])
def test_detector_checkpoint_gives_a_backbone_that_loads_strictly(tmp_path, caplog, family):
    torch.manual_seed(7)
    backbone = pvtv2.create_model(NAME, features_only=True).state_dict()
    heads = {  # MMDetection RetinaNet / MMSegmentation Semantic FPN keys beside the backbone
        "detector": {"neck.fpn_convs.0.conv.weight": torch.randn(256, 256, 3, 3),
                     "bbox_head.retina_cls.bias": torch.randn(720)},
        "segmenter": {"neck.lateral_convs.0.conv.weight": torch.randn(256, 32, 1, 1),
                      "decode_head.conv_seg.weight": torch.randn(150, 128, 1, 1)},
    }[family]
    state = {f"backbone.{k}": v for k, v in backbone.items()} | heads
    torch.save({"meta": {"mmdet_version": "2.28.0", "epoch": 12}, "state_dict": state, "optimizer": {"state": {}}},
               tmp_path / "det.pth")
    with caplog.at_level("INFO", logger="pvtv2"):
        done = convert_checkpoint(tmp_path / "det.pth", tmp_path / "backbone.pth", "official")
    assert done.backbone_only and set(done.dropped) == set(heads) and done.num_classes == 0
    assert "taking its backbone" in caplog.text
    written = torch.load(tmp_path / "backbone.pth", weights_only=True)
    assert _same(written, backbone)
    target = pvtv2.create_model(NAME, features_only=True)
    target.load_state_dict(written, strict=True)
    # the detector checkpoint also loads directly, as a backbone
    load_pretrained(pvtv2.create_model(NAME, features_only=True), tmp_path / "det.pth")


def test_backbone_only_hf_folder_loads_as_the_base_model(tmp_path):
    torch.manual_seed(9)
    backbone = pvtv2.create_model(NAME, features_only=True).state_dict()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in backbone.items()}}, tmp_path / "det.pth")
    convert_checkpoint(tmp_path / "det.pth", tmp_path / "hf", "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["PvtV2Model"]
    _, info = PvtV2Model.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info


def test_the_model_is_identified_from_keys_and_shapes():
    with torch.device("meta"):  # only keys and shapes matter
        states = {name: pvtv2.create_model(name).state_dict() for name in pvtv2.list_models()}
        finetuned = pvtv2.create_model("pvt_v2_b2", num_classes=10).state_dict()
    for name, state in states.items():
        assert identify_model(state) == name
        assert identify_model(from_official(state, "hf")) == name
    assert identify_model(from_official(finetuned, "timm")) == "pvt_v2_b2"


def test_a_file_that_fits_no_model_is_refused_and_nothing_written(tmp_path):
    torch.save({"conv1.weight": torch.zeros(2), "fc.bias": torch.zeros(2)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="first keys are: conv1.weight, fc.bias"):
        convert_checkpoint(tmp_path / "resnet.pth", tmp_path / "out.pth", "official")
    state = pvtv2.create_model(NAME).state_dict()
    state.pop("block2.1.attn.q.weight")
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="matches none of the models"):
        convert_checkpoint(tmp_path / "broken.pth", tmp_path / "out.pth", "official")
    with pytest.raises(CheckpointError, match=r"missing keys: block2\.1\.attn\.q\.weight"):
        convert_checkpoint(tmp_path / "broken.pth", tmp_path / "out.pth", "official", model=NAME)
    assert not (tmp_path / "out.pth").exists()


def test_converted_file_keeps_the_values_and_dtype(tmp_path):
    state = {k: v.half() for k, v in pvtv2.create_model(NAME).state_dict().items()}
    torch.save({"model": state, "epoch": 300}, tmp_path / "half.pth")
    convert_checkpoint(tmp_path / "half.pth", tmp_path / "half.safetensors", "safetensors")
    assert _same(read_checkpoint(tmp_path / "half.safetensors"), state)
