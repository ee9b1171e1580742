"""``pvt bench`` on a tiny configuration: what it reports and writes, never how fast (timings belong to
the machine, not to the code under test)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pvtv2.bench import isolated
from pvtv2.bench.peers import peers_of
from pvtv2.bench.suite import BenchConfig, growth_exponent
from pvtv2.cli.main import main
from pvtv2.models import cpu_inference

TINY = [
    "bench", "--models", "pvt_v2_b0", "pvt_tiny", "--image-size", "64", "--batch", "1", "--train-batch", "1",
    "--sweep-models", "pvt_v2_b0", "pvt_tiny", "--sizes", "64", "96",
    "--warmup", "0", "--rounds", "1", "--sweep-rounds", "1",
    # One thread: nothing here is timed, and on a busy machine two threads can wait ~10 ms on each other
    # at every op (the run then takes minutes instead of seconds).
    "--threads", "1",
    "--no-onnxruntime", "--no-bf16",  # their rows: test_bench_adds_bf16_and_onnxruntime_rows
]
IMPL_FIGURES = {"median_s", "times_s", "images_per_s", "gflops_per_s", "peak_fraction", "peak_memory_mb",
                "page_faults_per_call"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    out_dir = tmp_path_factory.mktemp("bench")
    printed = io.StringIO()  # capsys is per test; the run is shared by the module's tests
    with contextlib.redirect_stdout(printed):
        code = main([*TINY, "--out", str(out_dir)])
    return code, printed.getvalue(), out_dir


def test_bench_writes_json_and_plot(tiny_run: tuple[int, str, Path]) -> None:
    code, _, out_dir = tiny_run
    assert code == 0
    assert (out_dir / "resolution.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out_dir / "bench.json").read_text())
    assert set(results) >= {"meta", "config", "machine", "throughput", "sweep", "sweep_fits"}
    assert results["machine"]["attainable_peak"]["gflops"] > 0


def test_bench_compares_every_installed_peer(tiny_run: tuple[int, str, Path]) -> None:
    results = json.loads((tiny_run[2] / "bench.json").read_text())
    rows = results["throughput"]
    assert [(r["model"], r["task"], r["batch"]) for r in rows] == [
        ("pvt_v2_b0", "inference", 1), ("pvt_v2_b0", "training", 1),
        ("pvt_tiny", "inference", 1), ("pvt_tiny", "training", 1),
    ]
    for row in rows:
        peers = ["timm", "hf"] if row["model"].startswith("pvt_v2") else ["hf"]  # timm has no PVTv1
        assert list(row["impls"]) == ["ours", *peers]
        assert list(row["ratios"]) == [f"ours/{peer}" for peer in peers]
        for figures in row["impls"].values():
            assert set(figures) == IMPL_FIGURES and len(figures["times_s"]) == 1
            assert figures["images_per_s"] > 0 and figures["peak_memory_mb"] >= 0
            assert figures["page_faults_per_call"] is None or figures["page_faults_per_call"] >= 0
        if row["task"] == "inference":
            # The speeds compared are of the same numbers: every peer's logits equal ours.
            assert list(row["max_rel_diff"]) == peers
            assert max(row["max_rel_diff"].values()) < 1e-4


def test_bench_sweeps_resolution_and_fits_exponents(tiny_run: tuple[int, str, Path]) -> None:
    results = json.loads((tiny_run[2] / "bench.json").read_text())
    assert [(r["model"], r["image_size"]) for r in results["sweep"]] == [
        ("pvt_v2_b0", 64), ("pvt_v2_b0", 96), ("pvt_tiny", 64), ("pvt_tiny", 96),
    ]
    fits = {(f["model"], f["impl"]): f for f in results["sweep_fits"]}
    assert set(fits) == {("pvt_v2_b0", "ours"), ("pvt_v2_b0", "timm"), ("pvt_v2_b0", "hf"),
                         ("pvt_tiny", "ours"), ("pvt_tiny", "hf")}
    for fit in fits.values():
        # No size lies in the default 448..1024 fit range, so the fit falls back to every size measured.
        assert fit["fit_sizes"] == [64, 96] and isinstance(fit["time_exponent"], float)


def test_bench_prints_the_tables(tiny_run: tuple[int, str, Path]) -> None:
    _, printed, _ = tiny_run
    for title in ("throughput (images/s)", "peak memory (MB)", "cost against resolution", "growth exponent"):
        assert title in printed
    assert "ours/timm" in printed and "ours/HF" in printed


def test_bench_adds_bf16_and_onnxruntime_rows(tmp_path: Path) -> None:
    """A plain CPU run also times inference under bf16 autocast (every implementation, where the CPU has
    bf16 kernels) and ours exported to ONNX in onnxruntime beside our eager model, on the same numbers."""
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["bench", "--models", "pvt_v2_b0", "--image-size", "64", "--batch", "1", "--train-batch", "0",
                     "--sweep-models", "--warmup", "0", "--rounds", "1", "--threads", "1",
                     "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    rows = {row["task"]: row for row in results["throughput"]}
    expected = ["inference", *(["inference bf16"] if cpu_inference.ONEDNN_BF16 else []), "inference onnxruntime"]
    assert list(rows) == expected
    assert list(rows["inference onnxruntime"]["impls"]) == ["ours", "onnxruntime"]
    assert rows["inference onnxruntime"]["max_rel_diff"]["onnxruntime"] < 1e-4
    assert "infer ORT b1" in printed.getvalue() and "ours/onnxruntime" in printed.getvalue()
    if cpu_inference.ONEDNN_BF16:
        assert list(rows["inference bf16"]["impls"]) == ["ours", *peers_of("pvt_v2_b0")]
        assert max(rows["inference bf16"]["max_rel_diff"].values()) < 0.05  # bf16 rounding, same weights
        assert results["machine"]["attainable_peak_bf16"]["gflops"] > 0


def test_growth_exponent_recovers_a_power_law() -> None:
    pixels = [s * s for s in (448, 640, 800, 1024)]
    assert growth_exponent(pixels, [3.0 * p**1.5 for p in pixels]) == pytest.approx(1.5)
    assert growth_exponent(pixels[:1], [1.0]) is None


def test_bench_rejects_an_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--models", "pvt_v9"]) == 2
    assert "pvt_v9" in capsys.readouterr().err


# A fresh process: how glibc's heap looks after the rest of the test session (threads, arenas, libraries
# mapped into the middle of it) is not something a test can rely on.
KEEP_FREED_MEMORY_CHECK = """
import torch
from pvtv2.engine.allocator import keep_freed_memory, minor_page_faults

def faults_of_reallocation():
    torch.ones(16 * 2**20)  # 64 MiB, every page written, then freed
    before = minor_page_faults()
    torch.ones(16 * 2**20)
    return minor_page_faults() - before

with keep_freed_memory() as kept:
    faults_of_reallocation()  # the heap grows once
    print(kept, faults_of_reallocation())
"""


@pytest.mark.slow
def test_keep_freed_memory_stops_page_faults_on_reallocation() -> None:
    if sys.platform != "linux":
        pytest.skip("glibc and getrusage: Linux")
    result = subprocess.run([sys.executable, "-c", KEEP_FREED_MEMORY_CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    kept, faults = result.stdout.split()
    # 64 MiB fresh from the OS would be 16,384 faults of 4 KiB pages.
    assert kept == "True" and int(faults) < 1000, result.stdout


def test_bench_config_rejects_an_unknown_allocator() -> None:
    with pytest.raises(ValueError, match="allocator must be one of system, keep"):
        BenchConfig(allocator="jemalloc")


ISOLATED = ["bench", "--isolate", "--models", "pvt_v2_b0", "--batch", "1", "--image-size", "64", "--runs", "1",
            "--warmup", "0", "--rounds", "2", "--threads", "1"]


def test_bench_isolate_times_each_implementation_in_its_own_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*ISOLATED, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "each implementation alone in 1 fresh process," in printed and "ours/timm" in printed
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["throughput"] == [] and results["sweep"] == []  # --isolate runs nothing in-process
    section = results["isolated"]
    assert (section["runs"], section["calls_per_process"]) == (1, 2)
    [row] = section["rows"]
    assert (row["model"], row["batch"], row["image_size"]) == ("pvt_v2_b0", 1, 64)
    peers = peers_of("pvt_v2_b0")
    assert list(row["impls"]) == ["ours", *peers]
    for figures in row["impls"].values():
        [process] = figures["processes"]
        assert len(process["times_s"]) == 2 and min(process["times_s"]) > 0
        assert figures["median_s"] == process["median_s"] > 0  # one process: its median is the row's
        assert process["torch_threads"] == 1
        assert figures["page_faults_per_call"] is None or figures["page_faults_per_call"] >= 0
    ours = row["impls"]["ours"]["median_s"]
    assert row["ratios"] == pytest.approx({f"ours/{peer}": row["impls"][peer]["median_s"] / ours for peer in peers})


def test_bench_isolate_shows_a_failing_child_s_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A peer the child cannot build: its process dies with a traceback, which the error must carry.
    monkeypatch.setattr(isolated, "peers_of", lambda name: ["no_such_peer"])
    assert main([*ISOLATED, "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "no_such_peer on pvt_v2_b0 at batch 1 failed" in error
    assert "Traceback" in error and "InputError: unknown peer 'no_such_peer'" in error
    assert not (tmp_path / "bench.json").exists()


def test_bench_isolate_rejects_in_process_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--isolate", "--sizes", "224", "448"]) == 2
    assert "--sizes do not apply" in capsys.readouterr().err
    assert main(["bench", "--runs", "2"]) == 2
    assert "--isolate" in capsys.readouterr().err
