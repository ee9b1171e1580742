"""The benchmark suite: what is measured, in which settings, with the results as plain data.

Every measurement runs our model and its peers (timm, HF transformers: see ``peers.py``) holding the same
weights, in one process, interleaved round by round (``timing.py``); figures are medians. Three kinds:

- inference: images/s of a forward pass under ``torch.inference_mode`` at each batch size; on a CPU also
  (``inference bf16``) under ``torch.autocast("cpu", torch.bfloat16)`` for every implementation, where
  oneDNN has bfloat16 kernels, and (``inference onnxruntime``) ours exported by ``pvt export`` and run by
  onnxruntime beside our eager model, when onnxruntime is installed;
- training: images/s of one step (forward, cross-entropy, backward, AdamW step), each implementation
  with its own copy of the weights and its own optimizer;
- resolution sweep: batch-1 inference time and memory from 224 px up, with the growth exponent of each
  in pixel count (least squares of log cost against log pixels over ``fit_range``). SRA's attention
  costs 2h²w²c/R² (Eq. 1 of the PVTv2 paper): quadratic in pixels; linear SRA pools keys and values to
  a fixed P x P grid, 2hwP²c (Eq. 2), so B2-Li's cost should grow linearly (exponent ~1).

FLOPs are ``2 x`` the multiply-adds that ``pvtv2.count_flops`` counts (so GFLOP/s compare with the matmul
peak of ``machine.py``, also 2 FLOPs per multiply-add); a training step counts ``3 x`` a forward pass (the
backward pass computes gradients of both inputs and weights: about twice the forward's work).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import importlib.util
import os
import platform
import tempfile
import time
from pathlib import Path
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..engine.allocator import ALLOCATORS, keep_freed_memory
from ..models import create_model, list_models, min_input_size
from ..models import cpu_inference
from ..models.complexity import count_flops, create_for_counting
from ..models.export import MAX_EXPORT_SIDE, MIN_EXPORT_SIDE, export_onnx
from .machine import attainable_peak_gflops, describe_machine
from .memory import describe_method, measure_peak_memory
from .peers import is_v2, peer_with_weights_of, peers_of, relative_error
from .timing import frozen_heap, interleaved_times, median, synchronizer, warm_up

DEFAULT_MODELS = ("pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b2_li", "pvt_tiny", "pvt_small")
SWEEP_MODELS = ("pvt_v2_b2", "pvt_v2_b2_li", "pvt_small")  # SRA, linear SRA, PVTv1's SRA
SWEEP_SIZES = (224, 320, 448, 640, 800, 1024)
FLOP_CONVENTION = (
    "FLOPs = 2 x multiply-adds counted by pvtv2.count_flops (convs, linears, norms, attention matmuls; "
    "GELU, softmax and additions not counted); a training step = 3 x the forward pass"
)
OURS = "ours"
Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one run. :meth:`preset` gives the standard ones for a device, full or quick."""

    device: str = "cpu"
    models: tuple[str, ...] = DEFAULT_MODELS
    image_size: int = 224
    infer_batches: tuple[int, ...] = (1, 8)
    train_batch: int | None = 8  # None: no training step
    sweep_models: tuple[str, ...] = SWEEP_MODELS
    sweep_sizes: tuple[int, ...] = SWEEP_SIZES
    fit_range: tuple[int, int] = (448, 1024)  # sizes (px) the growth exponent is fitted over
    warmup: int = 1  # untimed rounds; the memory call after them is one more before the timed rounds
    rounds: int = 10
    sweep_rounds: int = 5
    compile: bool = False  # torch.compile every implementation: compiled against compiled
    channels_last: bool = False
    amp: str | None = None  # "bf16": autocast to bfloat16
    threads: int | None = None  # torch's CPU threads for the run (default: torch's own choice, all cores)
    allocator: str = "system"  # "keep": glibc keeps freed memory, no page faults (see allocator.py)
    # Extra inference rows of plain float32 CPU runs (no --amp, --compile, --channels-last): bf16 autocast for
    # every implementation where the CPU has bf16 kernels; ours in onnxruntime where it is installed.
    bf16: bool = True
    onnxruntime: bool = True

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise InputError("device 'cuda' asked for, but torch sees no CUDA device here")
        if self.allocator not in ALLOCATORS:
            raise InputError(f"allocator must be one of {', '.join(ALLOCATORS)}, got {self.allocator!r}")
        if self.amp not in (None, "bf16"):
            raise InputError(f"amp must be None or 'bf16', got {self.amp!r}")
        unknown = sorted(set(self.models + self.sweep_models) - set(list_models()))
        if unknown:
            raise InputError(f"unknown model(s) {', '.join(unknown)}; known models: {', '.join(list_models())}")
        counts = dict(image_size=self.image_size, rounds=self.rounds, sweep_rounds=self.sweep_rounds,
                      train_batch=self.train_batch, threads=self.threads)  # None: not set, no training
        for what, value in counts.items():
            if value is not None and value < 1:
                raise InputError(f"{what} must be at least 1, got {value}")
        for what, values in dict(infer_batches=self.infer_batches, sweep_sizes=self.sweep_sizes).items():
            if any(value < 1 for value in values):
                raise InputError(f"{what} must all be at least 1, got {values}")
        if self.warmup < 0:
            raise InputError(f"warmup must be 0 or more rounds, got {self.warmup}")
        if self.fit_range[0] > self.fit_range[1]:
            raise InputError(f"fit_range must be (smallest, largest) size, got {self.fit_range}")
        # Sizes every model takes, checked before minutes of timing rather than failing in a model midway.
        for what, sizes, models in (("image_size (--image-size)", (self.image_size,), self.models),
                                    ("sweep_sizes (--sizes)", self.sweep_sizes, self.sweep_models)):
            for name in models:
                if min(sizes) < min_input_size(name):
                    raise InputError(f"{what} {min(sizes)} is too small for {name}: it needs at least "
                                     f"{min_input_size(name)} pixels per side")
        if self.runs_onnxruntime and not MIN_EXPORT_SIDE <= self.image_size <= MAX_EXPORT_SIDE:
            raise InputError(f"image_size (--image-size) {self.image_size} is outside the {MIN_EXPORT_SIDE}..{MAX_EXPORT_SIDE} pixels "
                             f"that the ONNX export of the onnxruntime rows takes: choose a size in that range, or "
                             f"leave out those rows (--no-onnxruntime)")

    @classmethod
    def preset(cls, device: str = "cpu", quick: bool = False, **overrides: Any) -> BenchConfig:
        """The standard run on ``device``; ``quick`` is a small one (B0 and B2, training at batch 2, B2-Li's
        scaling up to 640 px, 2 rounds) that takes under 3 minutes on a 2-core CPU. ``overrides`` replace
        settings."""
        settings: dict[str, Any] = {}
        if device == "cuda":
            settings.update(infer_batches=(64, 256), train_batch=128, warmup=3, rounds=20)
        if quick:
            # No warm-up round: the memory call before the timed rounds is the first call. Training at
            # batch 2 and no onnxruntime rows (exporting each model): a batch-8 step and an export take seconds
            # per model on a laptop's CPU (benchmarks/RESULTS.md).
            settings.update(models=("pvt_v2_b0", "pvt_v2_b2"), train_batch=2, sweep_models=("pvt_v2_b2_li",),
                            sweep_sizes=(224, 448, 640), warmup=0, rounds=2, sweep_rounds=2, onnxruntime=False)
        return cls(device=device, **{**settings, **overrides})

    @property
    def plain_cpu(self) -> bool:
        return self.device == "cpu" and self.amp is None and not self.compile and not self.channels_last

    @property
    def runs_bf16(self) -> bool:
        """Whether inference is also timed under bf16 autocast (a CPU with oneDNN bf16 kernels)."""
        return self.bf16 and self.plain_cpu and cpu_inference.ONEDNN_BF16

    @property
    def runs_onnxruntime(self) -> bool:
        """Whether our model is also timed in onnxruntime (installed, with the exporter's onnxscript)."""
        installed = all(importlib.util.find_spec(p) is not None for p in ("onnxruntime", "onnxscript"))
        return self.onnxruntime and self.plain_cpu and installed

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the matmuls run in: float32, or bfloat16 under autocast."""
        return torch.bfloat16 if self.amp == "bf16" else torch.float32


def run_suite(config: BenchConfig, log: Log = lambda line: None) -> dict[str, Any]:
    """Run every measurement ``config`` asks for; returns the results as JSON-ready data.

    ``log`` receives a line of progress after each measurement (a full CPU run takes a while).
    """
    started, load_before = time.perf_counter(), load_average()
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        wants_keep = config.allocator == "keep"
        with keep_freed_memory(wants_keep) as kept, frozen_heap():
            if wants_keep and not kept:
                log("allocator 'keep' asked for, but this C library is not glibc: the system allocator runs")
            results = _run(config, log)
    finally:
        torch.set_num_threads(threads_before)
    return {"meta": run_meta(started, load_before) | {"freed_memory_kept": kept}} | results


def _run(config: BenchConfig, log: Log) -> dict[str, Any]:
    torch.manual_seed(0)
    machine = describe_machine(config.device, config.dtype)
    log(f"machine: {machine['name']}, attainable peak {machine['attainable_peak']['gflops']:.1f} GFLOP/s")
    peak = machine["attainable_peak"]["gflops"]
    bf16_config = dataclasses.replace(config, amp="bf16")
    if config.runs_bf16:
        machine["attainable_peak_bf16"] = attainable_peak_gflops(config.device, torch.bfloat16)
    throughput = []
    for name in config.models:
        models = _eager_models(name, config.device, config.image_size)
        with tempfile.TemporaryDirectory() as folder:
            session = _onnxruntime_session(models[OURS], Path(folder), config) if config.runs_onnxruntime else None
            for batch in config.infer_batches:
                throughput.append(_measure_inference(name, models, batch, config, peak))
                log(_progress(throughput[-1]))
                if config.runs_bf16:
                    throughput.append(_measure_inference(name, models, batch, bf16_config,
                                                         machine["attainable_peak_bf16"]["gflops"], "inference bf16"))
                    log(_progress(throughput[-1]))
                if session is not None:
                    throughput.append(_measure_onnxruntime(name, models[OURS], session, batch, config, peak))
                    log(_progress(throughput[-1]))
        if config.train_batch:
            throughput.append(_measure_training(name, models, config.train_batch, config, peak))
            log(_progress(throughput[-1]))
        del models
    sweep, fits = [], []
    for name in config.sweep_models:
        rows = _measure_sweep(name, config, peak, log)
        sweep += rows
        fits += _growth_fits(name, rows, config.fit_range)
    return dict(
        config=dataclasses.asdict(config),
        machine=machine,
        flop_convention=FLOP_CONVENTION,
        memory_method=describe_method(config.device),
        throughput=throughput,
        sweep=sweep,
        sweep_fits=fits,
    )


# -- building and preparing the implementations -----------------------------------------------------------
def _eager_models(name: str, device: str, image_size: int) -> dict[str, nn.Module]:
    """Our model (randomly initialised, seeded) and its installed peers holding its weights, eval mode."""
    ours = create_model(name).eval()
    models = {OURS: ours} | {peer: peer_with_weights_of(peer, ours, name, image_size) for peer in peers_of(name)}
    return {impl: model.to(device) for impl, model in models.items()}


def prepared_models(models: Mapping[str, nn.Module], config: BenchConfig) -> dict[str, nn.Module]:
    """The models as benchmarked: channels-last and/or compiled as ``config`` says."""
    if config.compile:
        # Start each measurement from an empty cache, so every implementation is compiled for this one
        # input shape, static, as a user's program with one shape would have it.
        torch._dynamo.reset()
    prepared = {}
    for impl, model in models.items():
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        prepared[impl] = torch.compile(model) if config.compile else model
    return prepared


def bench_images(batch: int, size: int, config: BenchConfig) -> torch.Tensor:
    images = torch.randn(batch, 3, size, size, device=config.device)
    return images.contiguous(memory_format=torch.channels_last) if config.channels_last else images


def _autocast(config: BenchConfig) -> torch.autocast:
    return torch.autocast(config.device, dtype=torch.bfloat16, enabled=config.amp == "bf16")


def inference_call(model: nn.Module, images: torch.Tensor, config: BenchConfig) -> Callable[[], torch.Tensor]:
    def call() -> torch.Tensor:
        with torch.inference_mode(), _autocast(config):
            return model(images)

    return call


def _training_call(model: nn.Module, images: torch.Tensor, config: BenchConfig) -> Callable[[], None]:
    labels = torch.randint(0, 1000, (images.shape[0],), device=images.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)  # the same (default) kernels for every peer

    def call() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(config):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return call


# -- the measurements -------------------------------------------------------------------------------------
def _measure_inference(
    name: str, models: Mapping[str, nn.Module], batch: int, config: BenchConfig, peak: float, task: str = "inference"
) -> dict[str, Any]:
    images = bench_images(batch, config.image_size, config)
    calls = {impl: inference_call(model, images, config) for impl, model in prepared_models(models, config).items()}
    return _timed_row(name, task, batch, config.image_size, calls, config, peak, flops_factor=2)


def _onnxruntime_session(model: nn.Module, folder: Path, config: BenchConfig) -> Any:
    """Our model exported as ``pvt export`` writes it (any batch and size), in an onnxruntime CPU session
    with the run's threads, as a user would deploy it."""
    import onnxruntime

    path = export_onnx(model, folder / "model.onnx", example_size=(config.image_size, config.image_size))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _measure_onnxruntime(name: str, ours: nn.Module, session: Any, batch: int, config: BenchConfig,
                         peak: float) -> dict[str, Any]:
    """Our eager model against itself in onnxruntime, on the same images."""
    images = bench_images(batch, config.image_size, config)
    feed = {session.get_inputs()[0].name: images.numpy()}
    calls = {OURS: inference_call(ours, images, config),
             "onnxruntime": lambda: torch.from_numpy(session.run(None, feed)[0])}
    return _timed_row(name, "inference onnxruntime", batch, config.image_size, calls, config, peak, flops_factor=2)


def _measure_training(
    name: str, models: Mapping[str, nn.Module], batch: int, config: BenchConfig, peak: float
) -> dict[str, Any]:
    # Copies, so that training steps leave the inference models' weights alone.
    copies = {impl: copy.deepcopy(model).train() for impl, model in models.items()}
    images = bench_images(batch, config.image_size, config)
    calls = {impl: _training_call(model, images, config) for impl, model in prepared_models(copies, config).items()}
    return _timed_row(name, "training", batch, config.image_size, calls, config, peak, flops_factor=6)


def _timed_row(
    name: str, task: str, batch: int, size: int, calls: Mapping[str, Callable[[], object]],
    config: BenchConfig, peak: float, flops_factor: int, rounds: int | None = None,
) -> dict[str, Any]:
    """One row of results: after the warm-up rounds, each call once alone for its peak memory (and its
    output), then the timed rounds, interleaved.

    Without warm-up rounds (``--quick``) the memory call is each implementation's first, so it also
    warms up; its memory then includes one-time allocations, such as the optimizer's state.
    ``flops_factor`` turns counted multiply-adds into FLOPs: 2 for a forward pass, 6 for a training step.
    Where the calls return logits (inference), the row also gives each peer's largest relative difference
    from ours, as benchmarked (compiled, autocast...): the speeds compared are of the same numbers.
    """
    synchronize = synchronizer(config.device)
    warm_up(calls, config.warmup, synchronize)
    memory_mb, outputs = {}, {}
    for impl, call in calls.items():
        memory_mb[impl], outputs[impl] = measure_peak_memory(call, config.device)
    page_faults: dict[str, list[int]] = {}
    times = interleaved_times(calls, rounds or config.rounds, synchronize, page_faults)
    flops_per_image = flops_factor * count_flops(create_for_counting(name), (size, size))
    impls = {}
    for impl in calls:
        seconds = median(times[impl])
        gflops = flops_per_image * batch / seconds / 1e9
        impls[impl] = dict(
            median_s=seconds, times_s=times[impl], images_per_s=batch / seconds,
            gflops_per_s=gflops, peak_fraction=gflops / peak, peak_memory_mb=memory_mb[impl],
            page_faults_per_call=median(page_faults[impl]) if impl in page_faults else None,
        )
    ours = impls[OURS]["images_per_s"]
    row = dict(
        model=name, task=task, batch=batch, image_size=size, flops_per_image=flops_per_image,
        impls=impls, ratios={f"{OURS}/{impl}": ours / impls[impl]["images_per_s"] for impl in impls if impl != OURS},
    )
    if isinstance(outputs[OURS], torch.Tensor):
        row["max_rel_diff"] = {
            impl: relative_error(outputs[OURS].float(), out.float()) for impl, out in outputs.items() if impl != OURS
        }
    return row


def _measure_sweep(name: str, config: BenchConfig, peak: float, log: Log) -> list[dict[str, Any]]:
    """Batch-1 inference of ``name`` at each sweep size: one row per size."""
    ours = create_model(name).eval().to(config.device)
    # HF's PVTv1 runs at its configured size only (see peers.py), so it is rebuilt for each size.
    rebuilt = {"hf"} if not is_v2(name) else set()
    fixed = {peer: peer_with_weights_of(peer, ours, name).to(config.device)
             for peer in peers_of(name) if peer not in rebuilt}
    rows = []
    for size in config.sweep_sizes:
        models = {OURS: ours} | fixed | {
            peer: peer_with_weights_of(peer, ours, name, size).to(config.device)
            for peer in peers_of(name) if peer in rebuilt
        }
        images = bench_images(1, size, config)
        calls = {impl: inference_call(model, images, config) for impl, model in prepared_models(models, config).items()}
        rows.append(_timed_row(name, "inference", 1, size, calls, config, peak, flops_factor=2,
                               rounds=config.sweep_rounds))
        log(_progress(rows[-1]))
    return rows


def _growth_fits(name: str, rows: list[dict[str, Any]], fit_range: tuple[int, int]) -> list[dict[str, Any]]:
    """Each implementation's exponent of time and memory in pixel count over the sizes in ``fit_range``
    (over every size measured when fewer than two lie in it)."""
    inside = [row for row in rows if fit_range[0] <= row["image_size"] <= fit_range[1]]
    used = inside if len(inside) >= 2 else rows
    fits = []
    for impl in used[0]["impls"] if used else []:
        pixels = [row["image_size"] ** 2 for row in used]
        fits.append(dict(
            model=name, impl=impl, fit_sizes=[row["image_size"] for row in used],
            time_exponent=growth_exponent(pixels, [row["impls"][impl]["median_s"] for row in used]),
            memory_exponent=growth_exponent(pixels, [row["impls"][impl]["peak_memory_mb"] for row in used]),
        ))
    return fits


def growth_exponent(pixels: list[int], costs: list[float]) -> float | None:
    """The slope of log(cost) against log(pixels), least squares: cost ~ pixels ** slope.

    ``None`` for fewer than two sizes or a cost of zero (a memory rise too small to register)."""
    if len(set(pixels)) < 2 or min(costs) <= 0:
        return None
    slope, _ = np.polyfit(np.log(pixels), np.log(costs), 1)
    return float(slope)


# -- bookkeeping -----------------------------------------------------------------------------------------
def _progress(row: dict[str, Any]) -> str:
    rates = ", ".join(f"{impl} {r['median_s'] * 1e3:.1f} ms" for impl, r in row["impls"].items())
    return f"{row['model']} {row['task']} batch {row['batch']} at {row['image_size']} px: {rates}"


def load_average() -> float | None:
    """The 1-minute load average: other processes competing for the cores make figures noisy."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on Windows
        return None


def run_meta(started: float, load_before: float | None) -> dict[str, Any]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("pvtv2", "timm", "transformers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=versions,
        platform=platform.platform(),
        elapsed_s=time.perf_counter() - started,
        load_average=dict(before=load_before, after=load_average()),
    )
