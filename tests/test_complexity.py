"""Params and FLOPs follow the official PVT convention and reproduce the published figures."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import nn

from pvtv2 import count_flops, count_params, create_model, list_models
from pvtv2.classification.complexity import paper_rows
from pvtv2.models import reference
from pvtv2.models.complexity import create_for_counting, flop_breakdown
from pvtv2.models.pyramid import stage_grid_sizes

ALL_MODELS = list_models()
# Linear SRA at sizes the papers did not build: no published figures (their counts: tests/test_visualize.py).
LINEAR_TWINS = {"pvt_v2_b0_li", "pvt_v2_b1_li", "pvt_v2_b3_li", "pvt_v2_b4_li", "pvt_v2_b5_li"}
PUBLISHED_MODELS = [name for name in ALL_MODELS if name not in LINEAR_TWINS]


@cache
def counting_model(name: str, **kwargs) -> nn.Module:
    """One build per model and settings for the whole module (building the big ones takes seconds)."""
    return create_for_counting(name, **kwargs)


def test_reference_lists_every_model() -> None:
    assert set(reference.published(reference.IMAGENET)) == set(PUBLISHED_MODELS)
    assert len(PUBLISHED_MODELS) == 11 and LINEAR_TWINS < set(ALL_MODELS)


@pytest.mark.parametrize("name", PUBLISHED_MODELS)
def test_params_and_flops_match_table_2(name: str) -> None:
    """Each of Table 2's figures, checked once (the command prints these rows: tests/test_cli.py)."""
    (row,) = paper_rows([name])
    assert row.paper_params_M == reference.published(reference.IMAGENET)[name]["params_M"]
    assert row.params_ok and row.GFLOPs_ok, row


def test_pvt_v2_b2_matches_the_official_tool() -> None:
    # The official get_flops.py prints "4.04 GFLOPs" and "25.36 M" for pvt_v2_b2.
    model = counting_model("pvt_v2_b2")
    assert round(count_flops(model) / 1e9, 2) == 4.04
    assert round(count_params(model) / 1e6, 2) == 25.36


def test_tolerance_allows_the_published_rounding_only() -> None:
    assert reference.matches(0.571, 0.6)  # B0: 5% off, but prints as 0.6
    assert not reference.matches(0.54, 0.6)
    assert reference.matches(4.07, 4.0)  # within 2%
    assert not reference.matches(4.1, 4.0)
    assert reference.rounding(725) == 0.5 and reference.rounding(25.36) == pytest.approx(0.005)


def test_convention_on_a_toy_network() -> None:
    # Hand-counted under mmcv's rules for a 1x3x10x10 input.
    toy = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 800 outputs x 27 + 800 bias = 22400
        nn.BatchNorm2d(8),  # 800 x 2 (affine) = 1600
        nn.ReLU(),  # 800
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # depth-wise: 800 x 9 = 7200
        nn.GELU(),  # not counted
        nn.AdaptiveAvgPool2d(1),  # 800 inputs
        nn.Flatten(),
        nn.Dropout(0.5),  # not counted
        nn.Linear(8, 4),  # 8 x 4 = 32 (bias not counted)
        nn.LayerNorm(4, elementwise_affine=False),  # 4
    )
    assert flop_breakdown(toy, (10, 10)) == dict(conv=29600, norm=1604, activation=800, pool=800, linear=32)
    assert count_flops(toy, (10, 10)) == 29600 + 1604 + 800 + 800 + 32
    assert count_params(toy) == (3 * 9 * 8 + 8) + 16 + 8 * 9 + (8 * 4 + 4)


def _official_attention_flops(model: nn.Module, height: int, width: int) -> int:
    """The official tool's sum of 2*N*M*C over blocks, with the token grids of this model."""
    patch_embeds = [getattr(model, f"patch_embed{i + 1}") for i in range(4)]
    total = 0
    for stage, (h, w) in enumerate(zip(stage_grid_sizes(patch_embeds, height), stage_grid_sizes(patch_embeds, width))):
        attn = model.blocks(stage)[0].attn
        kv_tokens = 49 if attn.linear else (h // attn.sr_ratio) * (w // attn.sr_ratio)
        total += len(model.blocks(stage)) * 2 * h * w * kv_tokens * attn.dim
    return total


@pytest.mark.parametrize("name", ["pvt_v2_b2", "pvt_v2_b2_li"])
@pytest.mark.parametrize("size", [(224, 224), (227, 301)])
def test_attention_flops_follow_the_official_formula(name: str, size: tuple[int, int]) -> None:
    model = counting_model(name)
    assert flop_breakdown(model, size)["attention"] == _official_attention_flops(model, *size)


def test_linear_sra_cost_is_linear_in_pixels() -> None:
    sides = (224, 448, 896)  # 1x, 4x, 16x the pixels

    def growth(name: str) -> tuple[float, float]:
        """Attention growth from 1x to 4x pixels, and total growth of the second step over the first."""
        model = counting_model(name)
        counts = [flop_breakdown(model, (side, side)) for side in sides]
        totals = [sum(c.values()) for c in counts]
        return counts[1]["attention"] / counts[0]["attention"], (totals[2] - totals[1]) / (totals[1] - totals[0])

    li_attention, li_total = growth("pvt_v2_b2_li")
    sra_attention, sra_total = growth("pvt_v2_b2")
    assert li_attention == 4  # M is a fixed 7x7: linear in N
    assert sra_attention == 16  # M shrinks by sr_ratio^2 but still grows with N: quadratic
    # Affine in pixels (the 7x7 reduction and the head are constant): 12P / 3P; SRA adds a P^2 term.
    assert li_total == 4
    assert sra_total > 4.5


def test_features_only_model_at_detection_size() -> None:
    size = (1280, 800)
    backbone = counting_model("pvt_v2_b0", features_only=True)
    classifier = counting_model("pvt_v2_b0")
    # Same stages; the classifier adds its 256 -> 1000 head (the mean pooling is not a module).
    assert count_flops(classifier, size) - count_flops(backbone, size) == 256 * 1000
    assert count_params(classifier) - count_params(backbone) == 256 * 1000 + 1000


def test_odd_size_and_partial_pyramid() -> None:
    full = counting_model("pvt_tiny", features_only=True)
    first_two = counting_model("pvt_tiny", features_only=True, out_indices=(0, 1))
    size = (227, 301)  # not a multiple of any stride
    assert 0 < count_flops(first_two, size) < count_flops(full, size)
    # The dense PVTv1 has no class token (the official detection and segmentation backbone): its attention is
    # the official tool's count. The classifier's class token joins stage 4's queries and keys (N = M = 7*9 + 1,
    # 2 blocks, 512 channels), which the official tool leaves out.
    assert flop_breakdown(full, size)["attention"] == _official_attention_flops(full, *size)
    classifier = counting_model("pvt_tiny")
    class_token = 2 * 2 * (64**2 - 63**2) * 512
    assert flop_breakdown(classifier, size)["attention"] == _official_attention_flops(full, *size) + class_token


def test_counting_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = create_model("pvt_v2_b0")
    model.train()
    model.head.eval()  # a mixed state must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}

    count_flops(model, (64, 96))
    with pytest.raises(ValueError, match="too small"):
        count_flops(model, (16, 16))  # hooks must go even when the forward pass fails

    assert all(not m._forward_hooks and not m._forward_hooks_with_kwargs for m in model.modules())
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(p, weights[name]) and p.device.type == "cpu" for name, p in model.named_parameters())


def test_meta_pass_counts_as_a_real_pass() -> None:
    model = create_model("pvt_v2_b0")
    assert count_flops(model, (64, 96)) == count_flops(model, (64, 96), device=None)


def test_bad_input_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="height, width"):
        count_flops(counting_model("pvt_v2_b0"), (224,))
