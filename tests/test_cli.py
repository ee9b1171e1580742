"""The ``pvt`` command, run in-process."""

from __future__ import annotations

import json
import runpy
import sys

import pytest

from pvtv2 import list_models
from pvtv2.cli.main import main

# One model per kind of architecture: PVTv2, PVTv2-Li, PVTv1 (building all is test_complexity's job).
SAMPLE = ["pvt_v2_b0", "pvt_v2_b2_li", "pvt_tiny"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_lists_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert out.split() == list_models()
    # The papers' 11 models and linear SRA for the 5 other PVTv2 sizes.
    assert len(out.splitlines()) == 11 + 5 and sum(name.endswith("_li") for name in out.split()) == 6


def test_models_filters_by_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "pvt_v2_*")
    assert code == 0 and out.split() == [n for n in list_models() if n.startswith("pvt_v2_")]


def test_models_long_shows_params(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "--long", "pvt_v2_b0")
    assert code == 0
    row = out.splitlines()[1].split()
    assert row[:3] == ["pvt_v2_b0", "PyramidVisionTransformerV2", "2-2-2-2"] and row[3] == "3.67"


def test_table_json_has_one_row_per_model(capsys: pytest.CaptureFixture[str]) -> None:
    """The rows of the library (their figures are checked in tests/test_complexity.py), one schema for all tasks."""
    code, out, _ = run(capsys, "table", "--json", "--models", *SAMPLE)
    rows = json.loads(out)
    assert code == 0
    assert [row["model"] for row in rows] == SAMPLE
    for row in rows:
        assert row["params_M"] == row["params"] / 1e6 and row["GFLOPs"] == row["flops"] / 1e9
        assert (row["table"], row["tolerance"]) == (2, 0.02)
    b0, tiny = rows[0], rows[2]
    assert (b0["params_M_paper"], b0["params_M_official"], b0["GFLOPs_paper"]) == (3.4, 3.67, 0.6)
    assert tiny["params_M_official"] is None and tiny["params_diff_pct"] == round(100 * (tiny["params_M"] / 13.2 - 1), 3)


def test_table_text_has_a_row_per_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "table", "--models", "pvt_v2_b0")
    header, row = out.splitlines()[:2]
    assert code == 0
    assert "paper" in header and "3.4" in row.split()  # the paper's B0 params, shown beside the code's
    assert "GFLOPs" in header and "in tolerance" in header
    assert row.split()[0] == "pvt_v2_b0" and "0.57" in row.split() and row.split()[-1] == "yes"


def test_info_shows_stages_and_features(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "info", "pvt_v2_b2")
    assert code == 0
    assert "feature strides:  4, 8, 16, 32" in out
    assert "feature channels: 64, 128, 320, 512" in out
    assert "FLOPs at 224x224: 4.04 G" in out and "25.36 M" in out
    # Stage 3 of B2: depth 6, dim 320, 5 heads, sr ratio 2, mlp ratio 4, not linear, 3x3 stride-2 embedding.
    assert "3 6 320 5 2 4 no 3x3/2".split() in [line.split() for line in out.splitlines()]


def test_info_json_for_a_backbone_at_detection_size(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "info", "pvt_tiny", "--features-only", "--size", "1280", "800", "--json")
    info = json.loads(out)
    assert code == 0
    assert info["feature_strides"] == [4, 8, 16, 32] and info["feature_channels"] == [64, 128, 320, 512]
    assert info["input_size"] == [1280, 800] and info["min_input_size"] == 32
    assert [stage["depth"] for stage in info["stages"]] == [2, 2, 2, 2]
    assert info["attention_flops"] < info["flops"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["info", "pvt_v3_huge"], "pvt_v3_huge"),
        (["table", "--models", "resnet*"], "resnet*"),
        (["models", "swin*"], "swin*"),
        (["info", "pvt_v2_b0", "--size", "16", "16"], "16x16"),
    ],
)
def test_bad_input_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str], argv: list[str], named: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and named in err and "Traceback" not in err


def test_bad_usage_is_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "invalid choice" in err


def test_python_dash_m_runs_the_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["python -m pvtv2", "models", "pvt_v2_b2*"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("pvtv2", run_name="__main__")
    assert stop.value.code == 0
    assert capsys.readouterr().out.split() == ["pvt_v2_b2", "pvt_v2_b2_li"]


def test_demo_runs_a_model_on_the_sample_photo_and_prints_the_table(capsys):
    assert main(["demo", "--models", "pvt_v2_b0"]) == 0
    out = capsys.readouterr().out
    assert "china.jpg, 427x640" in out
    # The pyramid of the full 427x640 photo: ceil(427/4) x ceil(640/4) ... ceil(427/32) x ceil(640/32).
    assert "pvt_v2_b0     logits (1, 1000)  pyramid 32x107x160 64x54x80 160x27x40 256x14x20" in out
    assert "GFLOPs" in out
