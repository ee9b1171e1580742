"""Attention and feature maps (pvtv2.visualize, pvt show) and linear SRA at every size (the -Li twins)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import pvtv2
from pvtv2.cli.main import main
from pvtv2.errors import InputError
from pvtv2.models import cpu_inference
from pvtv2.models.pvt_v2 import UNRELEASED_LINEAR
from pvtv2.visualize import attention_maps, capture_attention, feature_maps

LINEAR_TWINS = ["pvt_v2_b0_li", "pvt_v2_b1_li", "pvt_v2_b3_li", "pvt_v2_b4_li", "pvt_v2_b5_li"]
ODD = (97, 131)


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: pvtv2.create_model(name).eval() for name in ("pvt_v2_b0", "pvt_v2_b0_li", "pvt_tiny")}


# -- attention maps ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b0_li", "pvt_tiny"])
@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_attention_sums_to_one_over_the_keys_and_maps_have_the_image_size(models, name, stage):
    image = torch.randn(3, *ODD)
    points = [(0, 0), (ODD[1] - 1, ODD[0] - 1), (60, 50)]
    result = attention_maps(models[name], image, stage=stage, points=points)
    heads = models[name].blocks(stage - 1)[-1].attn.num_heads
    assert result.maps.shape == (len(points), heads, *ODD)
    torch.testing.assert_close(result.weights.sum(-1), torch.ones(len(points), heads))
    assert (result.weights >= 0).all() and (result.maps >= 0).all()
    if not (name == "pvt_tiny" and stage == 4):
        # Every key's weight lands on the pixels of its cell: the map holds all of it.
        torch.testing.assert_close(result.maps.sum((-2, -1)), torch.ones(len(points), heads))
    else:
        # PVTv1's class token is a key of stage 4 without a place in the image: its share is what is missing.
        torch.testing.assert_close(result.maps.sum((-2, -1)), 1 - result.weights[..., 0])


def _unit(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min())


def _manual_attention(q: torch.Tensor, kv: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head, written out: (B, heads, N, M)."""
    batch, num_queries, dim = q.shape
    head_dim = dim // heads
    q = q.reshape(batch, num_queries, heads, head_dim).permute(0, 2, 1, 3)
    k = kv[..., :dim].reshape(batch, kv.shape[1], heads, head_dim).permute(0, 2, 1, 3)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b0_li", "pvt_tiny"])
@pytest.mark.parametrize("stage", [1, 3, 4])
def test_attention_equals_softmax_of_the_captured_queries_and_keys(models, name, stage):
    model = models[name]
    image = torch.randn(1, 3, 96, 128)
    points = [(5, 7), (100, 80)]
    result = attention_maps(model, image, stage=stage, points=points)
    last = len(model.blocks(stage - 1)) - 1
    with torch.no_grad(), capture_attention(model, stage, [last]) as records:
        model.forward_intermediates(image, indices=(stage - 1,), intermediates_only=True)
    record = records[last]
    manual = _manual_attention(record.q, record.kv, model.blocks(stage - 1)[last].attn.num_heads)[0]
    extra = record.q.shape[1] - record.height * record.width  # PVTv1's class token comes first in stage 4
    rows = [extra + (y // result.stride) * record.width + x // result.stride for x, y in points]
    torch.testing.assert_close(result.weights, manual[:, rows].transpose(0, 1), rtol=1e-5, atol=1e-6)


def test_a_key_spreads_over_the_pixels_of_its_cell(models):
    """SRA's 8x8 cells of stage 1 at 64x64: 2x2 keys, each over a 32x32-pixel square, evenly."""
    result = attention_maps(models["pvt_v2_b0"], torch.randn(3, 64, 64), stage=1, points=[(10, 50)])
    assert result.key_grid == (2, 2) and result.token_grid == (16, 16)
    weights = result.weights[0, 0].reshape(2, 2)
    expected = weights.repeat_interleave(32, 0).repeat_interleave(32, 1) / (32 * 32)
    torch.testing.assert_close(result.maps[0, 0], expected)
    # Linear SRA at a 14x14 token grid (56 px): 7x7 keys of 2x2 tokens, 8x8 pixels each.
    result = attention_maps(models["pvt_v2_b0_li"], torch.randn(3, 56, 56), stage=1, points=[(20, 30)])
    assert result.key_grid == (7, 7)
    weights = result.weights[0, 0].reshape(7, 7)
    torch.testing.assert_close(result.maps[0, 0], weights.repeat_interleave(8, 0).repeat_interleave(8, 1) / 64)


def test_hooks_leave_the_output_unchanged(models):
    model = models["pvt_v2_b0"]
    image = torch.randn(2, 3, *ODD)
    with torch.inference_mode():
        with cpu_inference.disabled():  # the hooked blocks run as their modules; compare with the same path
            plain = model(image)
            with capture_attention(model, 2) as records, capture_attention(model, 4):
                hooked = model(image)
        assert torch.equal(plain, hooked) and set(records) == {0, 1}
        fused = model(image)
        attention_maps(model, image[:1], stage=3)
        assert torch.equal(model(image), fused)  # nothing stays behind: the fused path runs again
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_rollout_only_where_keys_are_the_tokens(models):
    model = models["pvt_v2_b0"]
    result = attention_maps(model, torch.randn(3, 128, 96), stage=4, points=[(40, 40), (90, 120)], rollout=True)
    assert result.maps.shape == (2, 1, 128, 96) and result.weights.shape == (2, 1, 4 * 3)
    torch.testing.assert_close(result.weights.sum(-1), torch.ones(2, 1))
    torch.testing.assert_close(result.maps.sum((-2, -1)), torch.ones(2, 1))
    # Each block's step keeps half of a token's mass on itself, so the query keeps at least 1/4 after 2 blocks.
    own = [r * 3 + c for r, c in result.query_tokens]
    assert (result.weights[[0, 1], 0, own] >= 0.25).all()
    with pytest.raises(InputError, match=r"stage 1 reduces its keys 8x8.*where it has one: 4"):
        attention_maps(model, torch.randn(3, 64, 64), stage=1, rollout=True)
    with pytest.raises(InputError, match=r"pools its keys to 7x7.*where it has one: none"):
        attention_maps(models["pvt_v2_b0_li"], torch.randn(3, 64, 64), stage=4, rollout=True)


def test_bad_stage_and_point_are_input_errors(models):
    with pytest.raises(InputError, match="stage 5 does not exist"):
        attention_maps(models["pvt_v2_b0"], torch.randn(3, 64, 64), stage=5)
    with pytest.raises(InputError, match=r"query point \(64, 3\) is outside the 64x64 image"):
        attention_maps(models["pvt_v2_b0"], torch.randn(3, 64, 64), points=[(64, 3)])


# -- feature maps -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_tiny"])
def test_feature_maps_are_the_four_levels(models, name):
    image = torch.randn(3, *ODD)
    pca = feature_maps(models[name], image)
    mean = feature_maps(models[name], image, "mean")
    with torch.no_grad():  # the path feature_maps takes
        levels = models[name].forward_intermediates(image[None], intermediates_only=True)
    assert [p.shape for p in pca] == [(3, *level.shape[-2:]) for level in levels]
    assert [m.shape for m in mean] == [level.shape[-2:] for level in levels]
    for p, m, level in zip(pca, mean, levels):
        assert p.min() == 0 and p.max() == 1 and m.min() == 0 and m.max() == 1
        # Red is the projection on the first principal axis (up to its sign), scaled to [0, 1].
        tokens = level[0].flatten(1).T
        centred = tokens - tokens.mean(0)
        projection = centred @ torch.linalg.svd(centred, full_matrices=False)[2][0]
        scaled = [(v - v.min()) / (v.max() - v.min()) for v in (projection, -projection)]
        red = p[0].flatten()
        assert min((red - v).abs().max() for v in scaled) < 1e-4
        torch.testing.assert_close(m, _unit(level[0].abs().mean(0)))
    with pytest.raises(InputError, match="mode 'max' is not one of pca, mean"):
        feature_maps(models["pvt_v2_b0"], image, "max")


# -- linear SRA at every size -----------------------------------------------------------------------------
def test_linear_twins_are_registered_without_released_weights():
    assert list(UNRELEASED_LINEAR) == LINEAR_TWINS
    names = pvtv2.list_models()
    for name in LINEAR_TWINS:
        sibling = name.removesuffix("_li")
        assert names.index(name) == names.index(sibling) + 1  # each beside its SRA sibling
        settings = pvtv2.models.model_settings(name)
        assert settings == {**pvtv2.models.model_settings(sibling), "linear": True}
        with pytest.raises(InputError, match=f"no official weights were released for {name}"):
            pvtv2.create_model(name, pretrained="official")
        with pytest.raises(InputError, match=f"no official weights were released for {name}"):
            pvtv2.create_model(name, pretrained=True)


@pytest.mark.parametrize("name", LINEAR_TWINS)
def test_every_linear_twin_builds_and_runs_at_an_odd_size(name):
    """Each -Li twin as registered; their ONNX export at odd sizes is test_export's (B2-Li) and their
    torch.export test_ecosystem's (every twin)."""
    model = pvtv2.create_model(name, num_classes=10).eval()
    assert model.linear and model.min_input_size == 1
    assert all(block.attn.linear and block.attn.pool.output_size == 7 for s in range(4) for block in model.blocks(s))
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *ODD))
        pyramid = model.forward_intermediates(torch.randn(1, 3, *ODD), intermediates_only=True)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert [tuple(f.shape[-2:]) for f in pyramid] == [(math.ceil(97 / s), math.ceil(131 / s)) for s in (4, 8, 16, 32)]


# -- the command ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    generator = torch.Generator().manual_seed(3)
    pixels = (torch.rand(80, 112, 3, generator=generator) * 255).to(torch.uint8).numpy()
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def test_show_attention_and_features_write_pictures(photo, tmp_path, capsys):
    attention = tmp_path / "attention.png"
    assert main(["show", "attention", str(photo), "--model", "pvt_v2_b0", "--stage", "2", "--point", "10", "20",
                 "--point", "100", "70", "--size", "96", "--out", str(attention)]) == 0
    out = capsys.readouterr().out
    assert "stage 2, 2 point(s) x 2 head(s), keys on a 3x4 grid" in out
    assert Image.open(attention).format == "PNG"
    features = tmp_path / "features.png"
    assert main(["show", "features", str(photo), "--model", "pvt_v2_b0_li", "--mode", "mean",
                 "--out", str(features)]) == 0
    assert "pyramid levels 20x28, 10x14, 5x7, 3x4 (channel mean of |activation|)" in capsys.readouterr().out
    assert Image.open(features).format == "PNG"
    rollout = tmp_path / "rollout.png"
    assert main(["show", "attention", str(photo), "--model", "pvt_v2_b0", "--rollout", "--out", str(rollout)]) == 0
    assert Image.open(rollout).format == "PNG"


def test_show_reads_the_model_from_a_checkpoint(photo, tmp_path, capsys):
    model = pvtv2.create_model("pvt_v2_b0_li", num_classes=10)
    checkpoint = tmp_path / "weights.pth"
    torch.save(model.state_dict(), checkpoint)  # official layout: the model is recognised from its keys
    out = tmp_path / "attention.png"
    assert main(["show", "attention", str(photo), "--checkpoint", str(checkpoint), "--stage", "3",
                 "--out", str(out)]) == 0
    assert "keys on a 7x7 grid" in capsys.readouterr().out and Image.open(out).format == "PNG"


@pytest.mark.parametrize("argv,named", [
    (["--stage", "5"], "--stage 5 does not exist: PVT models have stages 1 to 4"),
    (["--point", "112", "10"], "--point 112 10 is outside image"),
    (["--point", "3", "-1"], "--point 3 -1 is outside image"),
    (["--stage", "1", "--rollout"], "rollout has no meaning here: stage 1 reduces its keys 8x8"),
    (["--size", "0"], "--size must be a positive number of pixels"),
    ([], "name the model"),
])
def test_show_bad_input_is_one_line_and_status_2(photo, tmp_path, capsys, argv, named):
    model = ["--model", "pvt_v2_b0"] if argv else []
    assert main(["show", "attention", str(photo), *model, *argv, "--out", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pvt show: error: ") and named in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "a.png").exists()


def test_show_unreadable_image_is_named(tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    for what in ("attention", "features"):
        assert main(["show", what, str(broken), "--model", "pvt_v2_b0", "--out", str(tmp_path / "a.png")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"pvt show: error: cannot read image {broken}") and "\n" not in err
    assert main(["show", "features", str(tmp_path / "missing.jpg"), "--model", "pvt_v2_b0",
                 "--out", str(tmp_path / "a.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_show_help_explains_every_option(capsys):
    for what in ("attention", "features", "predictions"):
        assert main(["show", what, "--help"]) == 0
        text = capsys.readouterr().out
        assert "--out" in text
    assert main(["show", "attention", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Only in stages whose keys are their own tokens" in text and "--point X Y" in text


# -- the zoo's listings -----------------------------------------------------------------------------------
def test_models_and_table_list_the_linear_twins(capsys):
    assert main(["models", "-l", "pvt_v2_b0*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["pvt_v2_b0_li", "PyramidVisionTransformerV2", "2-2-2-2", "3.39", "-"]
    assert main(["table", "--json", "--models", "pvt_v2_b0", "pvt_v2_b0_li", "pvt_v2_b2_li", "--size", "1024"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    twin, sibling, b2_li = rows["pvt_v2_b0_li"], rows["pvt_v2_b0"], rows["pvt_v2_b2_li"]
    assert twin["GFLOPs_paper"] is None and twin["ok"] is None and twin["params_M"] < sibling["params_M"]
    assert b2_li["ok"] and b2_li["GFLOPs_paper"] == 3.9
    # Linear SRA's cost grows linearly with the pixels: at 1024 the twin needs well under half its sibling's.
    assert twin["GFLOPs_1024"] < 0.5 * sibling["GFLOPs_1024"]
    assert main(["table", "--models", "pvt_v2_b0_li", "--size", "1024"]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert "GFLOPs 1024" in header and row.split() == ["pvt_v2_b0_li", "3.39", "-", "-", "-", "0.56", "-", "-",
                                                       "11.16", "2%", "-"]


def test_table_size_is_for_classification_only(capsys):
    assert main(["table", "--task", "segmentation", "--size", "1024"]) == 2
    assert "--size counts the classification models only" in capsys.readouterr().err


# -- predictions: the paper's Fig. 3 ----------------------------------------------------------------------
@pytest.mark.slow
def test_show_predictions_grid_from_detection_and_segmentation_checkpoints(tmp_path, capsys):
    from pvtv2.data.shapes import write_coco_shapes, write_segmentation_shapes

    coco = write_coco_shapes(tmp_path / "coco", num_train=4, num_val=2, size=64, seed=1, max_objects=2)
    detection = dict(
        model=dict(detector="mask_rcnn", backbone="pvt_v2_b0", drop_path_rate=0.0, fpn_channels=32,
                   box_head_channels=64, mask_head_channels=32, anchor_sizes=[8, 16, 32, 64, 128],
                   box_batch_size_per_image=32, rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=50,
                   detections_per_img=20),
        data=dict(dataset="coco", root=str(coco), train_split="train", val_split="val", train_min_size=[64, 64],
                  min_size=64, max_size=64, num_workers=0),
        optim=dict(epochs=1, batch_size=4, lr=1e-3, warmup_iters=1, lr_steps=[1, 2]),
        run=dict(output_dir=str(tmp_path / "det"), device="cpu", seed=0),
    )
    config = tmp_path / "det.yaml"
    config.write_text(yaml.safe_dump(detection))
    assert main(["det-train", "--config", str(config)]) == 0
    seg = write_segmentation_shapes(tmp_path / "seg", 4, 2, 64, seed=3, max_objects=2)
    segmentation_config = Path(__file__).resolve().parents[1] / "configs/segmentation/shapes_semantic_fpn_pvt_v2_b0.yaml"
    assert main(["seg-train", "--config", str(segmentation_config), "--root", str(seg), "--output_dir",
                 str(tmp_path / "fpn"), "--iterations", "1", "--batch_size", "2", "--scale", "256,64",
                 "--crop_size", "64", "--log_interval", "1", "--eval_interval", "0", "--device", "cpu"]) == 0
    capsys.readouterr()
    scenes = sorted((coco / "val").glob("*.png"))[:2]
    grid = tmp_path / "fig3.png"
    assert main(["show", "predictions", *map(str, scenes), "--detection", str(tmp_path / "det" / "last.pth"),
                 "--segmentation", str(tmp_path / "fpn" / "last.pth"), "--score-threshold", "0", "--device", "cpu",
                 "--out", str(grid)]) == 0
    assert "2 image(s) x 2 model(s): Mask R-CNN pvt_v2_b0, Semantic FPN pvt_v2_b0" in capsys.readouterr().out
    assert Image.open(grid).format == "PNG"
    assert main(["show", "predictions", str(scenes[0]), "--out", str(grid)]) == 2
    assert "give at least one checkpoint" in capsys.readouterr().err
