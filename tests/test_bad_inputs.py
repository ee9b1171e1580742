"""Bad input tried as a new user would, one parametrized family per class: pictures, numbers, outputs,
weights, concurrent runs. Each asserts the exit status, that the file, key or value is named, and that no
traceback is shown; where the input used to give a silently wrong result, the right result is checked too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import pvtv2
from pvtv2.cli.main import main
from pvtv2.data import DatasetError, read_image
from pvtv2.data.images import save_class_map, save_image
from pvtv2.data.shapes import SEMANTIC_CLASSES
from pvtv2.detection.config import DetectionConfig
from pvtv2.detection.data import CocoDetection
from pvtv2.detection.model import build_from_config
from pvtv2.engine.config import RunSection
from pvtv2.engine.files import LOCK_NAME, output_folder_lock
from pvtv2.engine.run import start_run
from pvtv2.engine.training_state import FORMAT_KEY, atomic_save
from pvtv2.errors import InputError, RunFailure
from pvtv2.models.loading import CheckpointError
from pvtv2.segmentation.config import SegmentationConfig
from pvtv2.segmentation.evaluate import predict_probabilities
from pvtv2.segmentation.model import build_segmenter
from pvtv2.segmentation.predict import load_segmenter, segment

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "configs/digits/pvt_v2_b0.yaml"
SIZE = 64  # the tiny models' test scale
EXIF_ORIENTATION = 0x0112

pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny model runs: see conftest.py


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``pvt ARGV`` in this process: its exit status, stdout and stderr."""
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_refused(status: int, err: str, command: str, *parts: str, code: int = 2) -> None:
    """Exit ``code``, the last line ``pvt COMMAND: error: ...`` naming every one of ``parts``, no traceback."""
    assert "Traceback" not in err, err
    assert status == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"pvt {command}: error: "), last
    for part in parts:
        assert str(part) in last, (part, last)


def resolve(argv: list[str], tmp_path: Path, **places: Path) -> list[object]:
    """``argv`` with the names of ``places`` replaced by their paths, and ``@name`` by ``tmp_path / name``."""
    return [places.get(a, tmp_path / a[1:] if a.startswith("@") else a) for a in argv]


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# -- tiny models of each task, saved as their commands write them ---------------------------------------------

@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Official-layout weights of a 10-class PVTv2-B0 (a fine-tuned classifier, as a user has one)."""
    path = tmp_path_factory.mktemp("classifier") / "b0_10.pth"
    torch.save(pvtv2.create_model("pvt_v2_b0", num_classes=10).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A det-train checkpoint of a small RetinaNet PVTv2-B0 testing at 64 pixels."""
    config = DetectionConfig.from_dict(dict(
        model=dict(detector="retinanet", backbone="pvt_v2_b0", fpn_channels=32),
        data=dict(dataset="coco", root="nowhere", min_size=SIZE, max_size=SIZE, train_min_size=[SIZE, SIZE])))
    model = build_from_config(config.model, config.data, 2, pretrained=False)
    path = tmp_path_factory.mktemp("detector") / "det.pth"
    atomic_save({FORMAT_KEY: 2, "task": "detection", "model_name": "retinanet/pvt_v2_b0", "class_names": ["a", "b"],
                 "category_ids": [1, 2], "config": config.to_dict(), "epoch": 1, "best": 0.0,
                 "model": model.state_dict()}, path)
    return path


def segmenter_state(root: Path) -> dict:
    """A seg-train checkpoint's contents: a small Semantic FPN PVTv2-B0 for the generated shapes at ``root``."""
    config = SegmentationConfig.from_dict({
        "model": {"neck_channels": 16, "head_channels": 16},
        "data": {"dataset": "shapes", "root": str(root), "shapes_train": 2, "shapes_val": 2, "shapes_size": SIZE},
        "augment": {"scale": [2 * SIZE, SIZE], "crop_size": 48}, "test": {"slide_stride": 32}})
    model = build_segmenter("semantic_fpn", backbone="pvt_v2_b0", num_classes=len(SEMANTIC_CLASSES),
                            neck_channels=16, head_channels=16)
    return {FORMAT_KEY: 2, "task": "segmentation", "model_name": "pvt_v2_b0", "segmenter": "semantic_fpn",
            "class_names": list(SEMANTIC_CLASSES), "config": config.to_dict(), "iteration": 1, "best": 0.0,
            "model": model.state_dict()}


@pytest.fixture(scope="module")
def segmenter_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("segmenter")
    path = folder / "seg.pth"
    atomic_save(segmenter_state(folder / "shapes"), path)
    return path


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    path = tmp_path / "scene.png"
    Image.fromarray(noise(SIZE, SIZE)).save(path)
    return path


# == 1. pictures ==================================================================================================

def _sixteen_bit(path: Path) -> np.ndarray:
    values = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    return np.rint(values / 257).astype(np.uint8)[..., None].repeat(3, 2)


def _float(path: Path) -> np.ndarray:
    values = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    Image.fromarray(values).save(path)
    return np.rint(values.astype(np.float64) * 255).astype(np.uint8)[..., None].repeat(3, 2)


def _exif_turned(path: Path) -> np.ndarray:
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, 40:] = 255  # left half black, right half white, as stored
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(path, exif=exif)
    return np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270))  # 40 wide, 80 high


def _transparent(path: Path) -> np.ndarray:
    rgba = np.zeros((8, 8, 4), np.uint8)  # black under full transparency...
    rgba[:, 4:] = (255, 0, 0, 255)  # ...beside opaque red
    Image.fromarray(rgba).save(path)
    expected = np.full((8, 8, 3), 255, np.uint8)
    expected[:, 4:] = (255, 0, 0)
    return expected


def _grey_alpha(path: Path) -> np.ndarray:
    Image.new("LA", (8, 8), (0, 128)).save(path)  # black at half opacity: mid grey over white
    return np.full((8, 8, 3), 127, np.uint8)


def _palette_transparent(path: Path) -> np.ndarray:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (4, 0, 8, 8))
    image.save(path, transparency=0)
    expected = np.full((8, 8, 3), 255, np.uint8)
    expected[:, 4:] = (0, 255, 0)
    return expected


def _cmyk(path: Path) -> np.ndarray:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)
    return np.full((8, 8, 3), (255, 0, 0), np.uint8)


PICTURES = {  # file name, what writes it and returns the picture a viewer shows, allowed difference
    "16-bit grey PNG": ("grey16.png", _sixteen_bit, 0),
    "float TIFF in 0..1": ("float.tif", _float, 0),
    "JPEG with EXIF orientation": ("turned.jpg", _exif_turned, 40),  # JPEG blurs the edge a little
    "transparent RGBA PNG": ("rgba.png", _transparent, 0),
    "grey + alpha PNG": ("la.png", _grey_alpha, 1),
    "palette with a transparent colour": ("palette.png", _palette_transparent, 0),
    "CMYK JPEG": ("cmyk.jpg", _cmyk, 2),
}


@pytest.mark.parametrize("kind", PICTURES)
def test_every_picture_is_read_as_a_viewer_shows_it(kind: str, tmp_path: Path) -> None:
    name, write, tolerance = PICTURES[kind]
    expected = write(tmp_path / name)
    got = np.asarray(read_image(tmp_path / name))
    assert got.shape == expected.shape and got.dtype == np.uint8
    difference = np.abs(got.astype(int) - expected).mean() if kind.startswith("JPEG") else \
        np.abs(got.astype(int) - expected).max()
    assert difference <= tolerance, (kind, difference)


@pytest.mark.parametrize("values, words", [
    (np.full((4, 4), 2.5, np.float32), "float pixels from 2.5 to 2.5"),
    (np.array([[0.5, np.nan]], np.float32), "not finite"),
    (np.full((4, 4), 70000, np.int32), "outside the 16-bit range"),
])
def test_pixels_without_an_agreed_meaning_are_refused_naming_the_file(values: np.ndarray, words: str,
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "odd.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(DatasetError, match=rf"image {path} has .*{words}"):
        read_image(path)


def test_a_16_bit_picture_is_classified_as_its_8_bit_twin(classifier_file: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """PIL's convert("RGB") clipped 16-bit pixels to 255: the model saw a white picture."""
    grey = noise(96, 96)[..., 0]
    Image.fromarray(grey).save(tmp_path / "eight.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    results = []
    for name in ("eight.png", "sixteen.png"):
        status, out, err = run(["predict", tmp_path / name, "--checkpoint", classifier_file, "--json"], capsys)
        assert status == 0, err
        results.append([(t["index"], round(t["probability"], 5)) for t in json.loads(out)["top"]])
    assert results[0] == results[1]


def test_det_predict_draws_in_the_frame_the_user_sees(detector_file: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _exif_turned(tmp_path / "phone.jpg")
    status, _, err = run(["det-predict", tmp_path / "phone.jpg", "--checkpoint", detector_file,
                          "--out", tmp_path / "drawn.png", "--device", "cpu", "--score-threshold", "0"], capsys)
    assert status == 0, err
    assert Image.open(tmp_path / "drawn.png").size == (40, 80)  # as displayed, not as stored (80 x 40)


UNFIT_PICTURES = {  # command line (IMAGE: the picture), picture size (width, height), words of the limit
    "predict, a 60000:1 strip": (["predict", "IMAGE", "--checkpoint", "CLASSIFIER"], (60000, 1),
                                 ["60000x1", "89478485 pixels", "aspect ratio of at most"]),
    "det-predict, 150:1": (["det-predict", "IMAGE", "--checkpoint", "DETECTOR", "--out", "@out.png", "--device", "cpu"],
                           (3000, 20), ["3000x20", "64x1", "at least 29 pixels", "aspect ratio of at most 2.2:1"]),
    "show predictions, 150:1": (["show", "predictions", "IMAGE", "--detection", "DETECTOR", "--out", "@out.png",
                                 "--device", "cpu"], (3000, 20), ["3000x20", "at least 29 pixels"]),
    "seg-predict, 150:1": (["seg-predict", "IMAGE", "--checkpoint", "SEGMENTER", "--out", "@out.png", "--device", "cpu"],
                           (3000, 20), ["3000x20", "128x1", "at least 29 pixels", "aspect ratio of at most 4.4:1"]),
    "show predictions, segmenter": (["show", "predictions", "IMAGE", "--segmentation", "SEGMENTER", "--out",
                                     "@out.png", "--device", "cpu"], (3000, 20), ["3000x20", "at least 29 pixels"]),
    "show features, 8x8": (["show", "features", "IMAGE", "--model", "pvt_v2_b0", "--out", "@out.png"], (8, 8),
                           ["8x8 pixels", "at least 29 pixels", "give --size"]),
    "show attention, --size too large": (["show", "attention", "IMAGE", "--model", "pvt_v2_b0", "--out", "@out.png",
                                          "--size", "100000"], (8, 8), ["100000x100000", "--size is too large"]),
}


@pytest.mark.parametrize("case", UNFIT_PICTURES)
def test_a_picture_the_model_cannot_take_is_refused_with_its_name_size_and_limit(
    case: str, classifier_file: Path, detector_file: Path, segmenter_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv, (width, height), words = UNFIT_PICTURES[case]
    picture = tmp_path / "odd.png"
    Image.new("RGB", (width, height), "gray").save(picture)
    argv = resolve(argv, tmp_path, IMAGE=picture, CLASSIFIER=classifier_file, DETECTOR=detector_file,
                   SEGMENTER=segmenter_file)
    status, _, err = run(argv, capsys)
    assert_refused(status, err, argv[0], picture, *words)
    assert not (tmp_path / "out.png").exists()


def test_eval_names_a_picture_its_resize_would_blow_up_and_can_skip_it(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A 60000x1 strip resized to a shorter side of 256 is 15 G pixels: a MemoryError in a worker process."""
    checkpoint = tmp_path / "b0_2.pth"
    torch.save(pvtv2.create_model("pvt_v2_b0", num_classes=2).state_dict(), checkpoint)
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        Image.fromarray(noise(40, 40)).save(tmp_path / "data" / label / "fine.png")
    strip = tmp_path / "data" / "a" / "strip.png"
    Image.new("RGB", (60000, 1)).save(strip)
    argv = ["eval", "--checkpoint", checkpoint, "--data", tmp_path / "data", "--workers", "0", "--device", "cpu"]
    status, _, err = run(argv, capsys)
    assert_refused(status, err, "eval", strip, "60000x1", "more than the 89478485 pixels", "bad_images: skip")
    status, out, err = run([*argv, "--bad-images", "skip", "--json"], capsys)
    assert status == 0, err
    assert json.loads(out)["images"] == 3 and f"skipping an image that cannot be used: image {strip}" in caplog.text


# == 2. numbers ===================================================================================================

NUMBERS = [  # argv (CKPT: a checkpoint that is never read; IMAGE: a picture), words of the sentence
    (["seg-eval", "--checkpoint", "CKPT", "--mode", "slide", "--stride", "-5"], "--stride must be at least 1, got -5"),
    (["seg-eval", "--checkpoint", "CKPT", "--stride", "0"], "--stride must be at least 1, got 0"),
    (["seg-eval", "--checkpoint", "CKPT", "--scales", "nan"], "--scales must be positive numbers"),
    (["seg-eval", "--checkpoint", "CKPT", "--scales", "1,-1"], "--scales must be positive numbers"),
    (["seg-eval", "--checkpoint", "CKPT", "--workers", "-1"], "--workers must be at least 0"),
    (["det-eval", "--checkpoint", "CKPT", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["det-eval", "--checkpoint", "CKPT", "--workers", "-2"], "--workers must be at least 0"),
    (["eval", "--checkpoint", "CKPT", "--data", "digits", "--img-size", "0"], "--img-size must be at least 1, got 0"),
    (["eval", "--checkpoint", "CKPT", "--data", "digits", "--crop-pct", "0"], "--crop-pct must be greater than 0"),
    (["eval", "--checkpoint", "CKPT", "--data", "digits", "--crop-pct", "1.5"], "--crop-pct must be at most 1"),
    (["eval", "--checkpoint", "CKPT", "--data", "digits", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["predict", "IMAGE", "--checkpoint", "CKPT", "--topk", "0"], "--topk must be at least 1"),
    (["det-predict", "IMAGE", "--checkpoint", "CKPT", "--out", "@o.png", "--score-threshold", "nan"],
     "--score-threshold must be in [0, 1], got nan"),
    (["show", "predictions", "IMAGE", "--detection", "CKPT", "--out", "@o.png", "--score-threshold", "1.5"],
     "--score-threshold must be in [0, 1]"),
    (["show", "features", "IMAGE", "--model", "pvt_v2_b0", "--out", "@o.png", "--size", "0"], "--size must be a positive"),
    (["seg-predict", "IMAGE", "--checkpoint", "CKPT", "--alpha", "nan"], "--alpha must be between 0 and 1, got nan"),
    (["export", "pvt_v2_b0", "--out", "@b0.onnx", "--num-classes", "-1"], "--num-classes -1: num_classes must be an integer >= 0"),
    (["bench", "--image-size", "48", "--out", "@bench"], "(--image-size) 48 is outside the 64..4096 pixels"),
    (["bench", "--image-size", "16", "--no-onnxruntime", "--out", "@bench"], "(--image-size) 16 is too small for pvt_v2_b0"),
    (["train", "--config", str(DIGITS), "--base_lr", "inf"], "optim.base_lr must be a finite number, got 'inf'"),
    (["train", "--config", str(DIGITS), "--epochs", "nan"], "optim.epochs must be a finite number"),
]


@pytest.mark.parametrize("argv, words", NUMBERS, ids=[" ".join(a[:1] + a[-2:]).replace("@", "") for a, _ in NUMBERS])
def test_a_number_outside_its_limits_is_refused_where_it_enters(argv: list[str], words: str, scene: Path,
                                                                tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = resolve(argv, tmp_path, CKPT=tmp_path / "never_read.pth", IMAGE=scene)
    status, _, err = run(argv, capsys)
    assert_refused(status, err, argv[0], words)


@pytest.mark.parametrize("failure", [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 60211200000 bytes. Error code 12 (Cannot allocate memory)"),
])
def test_an_allocation_that_cannot_succeed_is_one_sentence(failure: BaseException, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """pvt bench --batch 100000 asked torch's CPU allocator for 60 GB: a RuntimeError, shown as a traceback."""
    def allocate(*args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr("pvtv2.cli.bench.run_suite", allocate)
    status, _, err = run(["bench", "--batch", "100000", "--out", tmp_path / "bench"], capsys)
    assert_refused(status, err, "bench", "out of memory", "lower the batch size", code=1)


def test_sliding_windows_with_a_stride_below_1_are_refused_not_averaged_over_nothing() -> None:
    """--stride -5 ran no window and scored every pixel 0 / 0 logits: mIoU 28.85 where valid strides give 17-18."""
    model = build_segmenter("semantic_fpn", backbone="pvt_v2_b0", num_classes=3, neck_channels=16, head_channels=16).eval()
    image = torch.randn(1, 3, SIZE, 2 * SIZE)
    for stride in (0, -5):
        with pytest.raises(InputError, match=f"stride of at least 1 pixel, got 48 and {stride}"):
            predict_probabilities(model, image, (SIZE, 2 * SIZE), num_classes=3, mode="slide", crop_size=48,
                                  stride=stride)
    probs = predict_probabilities(model, image, (SIZE, 2 * SIZE), num_classes=3, mode="slide", crop_size=48, stride=32)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, SIZE, 2 * SIZE))  # every pixel covered by a window


def test_seg_eval_takes_the_stride_it_is_given_and_refuses_scales_no_picture_fits(
    segmenter_file: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    scores = {}
    for stride in ("16", "32"):
        status, out, err = run(["seg-eval", "--checkpoint", segmenter_file, "--mode", "slide", "--stride", stride,
                                "--workers", "0", "--device", "cpu", "--json"], capsys)
        assert status == 0, err
        scores[stride] = json.loads(out)["mIoU"]
    assert all(0 <= s <= 1 for s in scores.values())
    status, _, err = run(["seg-eval", "--checkpoint", segmenter_file, "--scales", "0.01,1", "--workers", "0",
                          "--device", "cpu"], capsys)
    assert_refused(status, err, "seg-eval", "--scales", "times 0.01", "at least 29", "use a scale of at least 0.46")


def test_metrics_of_nothing_are_an_error_not_a_number(segmenter_file: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "unlabelled"
    for folder in ("images/val", "masks/val"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(noise(SIZE, SIZE)).save(root / "images/val/a.png")
    Image.new("L", (SIZE, SIZE), 255).save(root / "masks/val/a.png")  # every pixel "ignore"
    (root / "classes.json").write_text(json.dumps(list(SEMANTIC_CLASSES)))
    status, out, err = run(["seg-eval", "--checkpoint", segmenter_file, "--data", root, "--dataset", "folder",
                            "--workers", "0", "--device", "cpu"], capsys)
    assert_refused(status, err, "seg-eval", "no labelled pixel", root)
    assert "mIoU" not in out


def test_a_segmenter_that_outputs_nan_fails_instead_of_scoring() -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 3, *x.shape[-2:]), float("nan"))

    with pytest.raises(RunFailure, match="not finite"):
        predict_probabilities(Broken(), torch.randn(1, 3, 8, 8), (8, 8), num_classes=3)


# == 3. outputs ===================================================================================================

OUTPUTS = [  # argv (CKPT: a checkpoint that does not exist: an output checked first is named instead), words
    (["det-predict", "IMAGE", "--checkpoint", "CKPT", "--out", "@result.xyz"], "--out {tmp}/result.xyz: its extension"),
    (["seg-predict", "IMAGE", "--checkpoint", "CKPT", "--out", "@overlay.txt"], "--out {tmp}/overlay.txt"),
    (["seg-predict", "IMAGE", "--checkpoint", "CKPT", "--labels", "@labels.jpg"], "lossless format"),
    (["show", "predictions", "IMAGE", "--detection", "CKPT", "--out", "@figure"], "it has no extension"),
    (["show", "features", "IMAGE", "--checkpoint", "CKPT", "--out", "@figure.bmp"], "names no format for a figure"),
    (["export", "pvt_v2_b0", "--pretrained", "CKPT", "--out", "@model.onxx"], "end the name with one of .onnx"),
    (["export", "pvt_v2_b0", "--pretrained", "CKPT", "--format", "torch-export", "--out", "@model.onnx"], ".pt2"),
    (["det-eval", "--checkpoint", "CKPT", "--json", "@figures.txt"], "end the name with one of .json"),
    (["convert", "CKPT", "@b0.safetensors", "--to", "official"], "must end with .pth or .pt or .bin"),
    (["convert", "CKPT", "@b0.pth", "--to", "safetensors"], "must end with .safetensors"),
    (["det-predict", "IMAGE", "--checkpoint", "CKPT", "--out", "IMAGE"], "would overwrite {tmp}/scene.png"),
    (["seg-predict", "IMAGE", "--checkpoint", "CKPT", "--out", "@o.png", "--labels", "@o.png"],
     "--labels {tmp}/o.png would overwrite"),
    (["show", "features", "IMAGE", "--model", "pvt_v2_b0", "--out", "IMAGE"], "would overwrite {tmp}/scene.png"),
]


@pytest.mark.parametrize("argv, words", OUTPUTS, ids=[" ".join(a[:1] + a[-2:]).replace("@", "") for a, _ in OUTPUTS])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(argv: list[str], words: str, scene: Path,
                                                                     tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    argv = resolve(argv, tmp_path, CKPT=tmp_path / "missing.pth", IMAGE=scene)
    status, _, err = run(argv, capsys)
    assert_refused(status, err, argv[0], words.format(tmp=tmp_path))
    assert "missing.pth" not in err.strip().splitlines()[-1]  # the output is named, not the checkpoint


def test_the_class_map_is_written_losslessly_with_the_predicted_classes(segmenter_file: Path, scene: Path,
                                                                        tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(["seg-predict", scene, "--checkpoint", segmenter_file, "--out", tmp_path / "o.jpg",
                          "--labels", tmp_path / "labels.png", "--device", "cpu"], capsys)
    assert status == 0, err
    expected = segment(load_segmenter(segmenter_file), np.asarray(read_image(scene)))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "labels.png")), expected)
    many = np.arange(300 * 4).reshape(30, 40) % 300  # more classes than 8 bits hold
    save_class_map(many, tmp_path / "many.png", num_classes=300)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "many.png")), many)


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    def half_then_fail(self: Image.Image, fp: Path, *args: object, **kwargs: object) -> None:
        Path(fp).write_bytes(b"\x89PNG half a picture")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(OSError):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "picture.png")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    import pvtv2.models.export as export_command

    monkeypatch.setattr(export_command, "export_onnx", lambda model, path: Path(path).write_bytes(b"onnx"))
    monkeypatch.setattr(export_command, "check_onnx", lambda model, path, sizes: [0.5 for _ in sizes])
    status, _, err = run(["export", "pvt_v2_b0", "--out", tmp_path / "b0.onnx"], capsys)
    assert_refused(status, err, "export", "differs from PyTorch", "nothing was written", code=1)
    assert list(tmp_path.iterdir()) == []


# == 4. weights ===================================================================================================

def _broken(state: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """``state`` with one float tensor (or all, for "int8") made into what a weights file must not hold."""
    state = {k: v.clone() for k, v in state.items()}
    key = "block1.0.attn.q.weight"
    if kind == "int8":
        return {k: (v * 100).to(torch.int8) for k, v in state.items()}
    if kind == "bool":
        state[key] = state[key] > 0
    else:
        state[key][0, 0] = float(kind)
    return state


WEIGHT_KINDS = {"int8": "patch_embed1.proj.weight holds int8 values", "bool": "attn.q.weight holds bool values",
                "nan": "attn.q.weight holds 1 NaN or infinite", "inf": "attn.q.weight holds 1 NaN or infinite"}


@pytest.fixture(scope="module")
def b0_weights() -> dict[str, torch.Tensor]:
    return pvtv2.create_model("pvt_v2_b0").state_dict()


@pytest.mark.parametrize("kind", WEIGHT_KINDS)
@pytest.mark.parametrize("entry", ["weights import", "convert", "predict", "create_model"])
def test_weights_that_are_not_float_weights_are_refused_naming_the_key(
    kind: str, entry: str, b0_weights: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "b0.safetensors"
    save_file(_broken(b0_weights, kind), str(source))
    monkeypatch.setenv("PVT_HOME", str(tmp_path / "cache"))
    if entry == "create_model":
        with pytest.raises(CheckpointError, match=WEIGHT_KINDS[kind]):
            pvtv2.create_model("pvt_v2_b0", pretrained=source)
        return
    picture = tmp_path / "a.png"
    Image.fromarray(noise(SIZE, SIZE)).save(picture)
    argv = {"weights import": ["weights", "import", "pvt_v2_b0", source],
            "convert": ["convert", source, tmp_path / "out.pth", "--to", "official"],
            "predict": ["predict", picture, "--checkpoint", source]}[entry]
    status, _, err = run(argv, capsys)
    assert_refused(status, err, argv[0], source, WEIGHT_KINDS[kind])
    assert not (tmp_path / "cache" / "pvt_v2_b0.pth").exists() and not (tmp_path / "out.pth").exists()


def test_training_checkpoints_are_checked_too_and_integer_buffers_still_load(tmp_path: Path) -> None:
    state = segmenter_state(tmp_path / "shapes")
    atomic_save(state, tmp_path / "good.pth")
    loaded = load_segmenter(tmp_path / "good.pth")  # BatchNorm's int64 num_batches_tracked are integers: fine
    assert any(not v.is_floating_point() for v in loaded.model.state_dict().values())
    key = "decode_head.classifier.weight"
    state["model"] = {**state["model"], key: state["model"][key].to(torch.int8)}
    atomic_save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'bad.pth'}: {key} holds int8 values"):
        load_segmenter(tmp_path / "bad.pth")


def test_export_keeps_the_checkpoint_classes_or_refuses(classifier_file: Path, b0_weights: dict[str, torch.Tensor],
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """It wrote a 1000-class ONNX whose head was random, with one note line, and ended "wrote ..."."""
    import pvtv2.models.export as export_command

    exported = []
    monkeypatch.setattr(export_command, "export_onnx", lambda model, path: (exported.append(model),
                                                                            Path(path).write_bytes(b"onnx")))
    monkeypatch.setattr(export_command, "check_onnx", lambda model, path, sizes: [0.0 for _ in sizes])
    out = tmp_path / "b0.onnx"
    status, _, err = run(["export", "pvt_v2_b0", "--pretrained", classifier_file, "--out", out], capsys)
    assert status == 0, err
    trained = torch.load(classifier_file, weights_only=True)
    torch.testing.assert_close(exported[-1].head.weight, trained["head.weight"])  # the checkpoint's 10 classes
    status, _, err = run(["export", "pvt_v2_b0", "--pretrained", classifier_file, "--out", out, "--num-classes", "1000"],
                         capsys)
    assert_refused(status, err, "export", classifier_file, "10-class head", "random weights",
                   "leave out --num-classes")
    backbone = tmp_path / "backbone.pth"
    torch.save({k: v for k, v in b0_weights.items() if not k.startswith("head.")}, backbone)
    status, _, err = run(["export", "pvt_v2_b0", "--pretrained", backbone, "--out", out, "--num-classes", "5"], capsys)
    assert_refused(status, err, "export", backbone, "no classification head", "--features-only")


# == 5. concurrent runs ===========================================================================================

HOLD = ("import sys, time; from pathlib import Path; from pvtv2.engine.files import output_folder_lock\n"
        "with output_folder_lock(Path(sys.argv[1]), 'pvt train'):\n    print('held', flush=True); time.sleep(60)")


def test_a_second_run_into_a_busy_folder_is_refused_naming_the_first(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout.readline().strip() == "held"
        status, _, err = run(["train", "--config", DIGITS, "--output_dir", out, "--epochs", "1"], capsys)
        assert_refused(status, err, "train", out, "a run still going on", f"pid {first.pid}", "--output_dir")
        assert not (out / "metrics.jsonl").exists()
    finally:
        first.kill()
        first.wait()


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    out.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_NAME).write_text(json.dumps(dict(command="pvt train", pid=int(gone.stdout), host="here",
                                                 started="yesterday")))  # what a SIGKILLed run leaves
    with start_run(RunSection(output_dir=str(out), device="cpu"), "pvt train"):
        assert f"pid {int(gone.stdout)}" in caplog.text and "no longer running" in caplog.text
        with pytest.raises(InputError, match="a run still going on"):  # and it is held now
            with output_folder_lock(out, "pvt train"):
                pass
    assert not (out / LOCK_NAME).exists()


# == 6. messages that misled ======================================================================================

def test_an_image_entry_of_the_wrong_size_is_blamed_not_its_right_rle(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    (tmp_path / "images").mkdir()
    Image.fromarray(noise(48, 64)).save(tmp_path / "images/a.png")  # 64 wide, 48 high
    rle = mask_utils.encode(np.asfortranarray(np.ones((48, 64), np.uint8)))
    rle["counts"] = rle["counts"].decode()
    (tmp_path / "instances.json").write_text(json.dumps(dict(
        images=[dict(id=1, file_name="a.png", width=50, height=50)],  # the entry is wrong
        annotations=[dict(id=1, image_id=1, category_id=1, bbox=[0, 0, 10, 10], iscrowd=0, segmentation=rle)],
        categories=[dict(id=1, name="thing")])))
    with pytest.raises(DatasetError, match="image 1 \\(a.png\\) has width 50 and height 50, but the file is 64x48"):
        CocoDetection(tmp_path / "images", tmp_path / "instances.json")


def test_a_dataset_picture_is_oriented_as_its_mask_was_drawn(tmp_path: Path) -> None:
    """One reader everywhere: a phone picture in a data set is turned as a viewer (and the annotator) saw it,
    so its mask, drawn on the picture as shown, fits it."""
    from pvtv2.segmentation.data import SegmentationDataset

    for folder in ("images/val", "masks/val"):
        (tmp_path / folder).mkdir(parents=True)
    shown = _exif_turned(tmp_path / "images/val/phone.jpg")  # stored 80x40, shown 40 wide and 80 high
    Image.new("L", (40, 80), 1).save(tmp_path / "masks/val/phone.png")
    image, mask = SegmentationDataset(tmp_path, "val", "folder", class_names=["a", "b"]).load(0)
    assert tuple(image.shape) == (3, 80, 40) and tuple(mask.shape) == (80, 40)
    assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - shown).mean() < 40
