"""Semantic FPN segmentation: model sizes against the paper, metrics, data checks, training, resume, CLI.

Training runs are PVTv2-B0 on a few generated 64x64 shapes scenes, a few iterations long.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pvtv2.models import reference
from pvtv2.cli.main import main
from pvtv2.data import DatasetError
from pvtv2.data.shapes import write_segmentation_shapes
from pvtv2.engine.config import ConfigError
from pvtv2.engine.training_state import read_training_checkpoint
from pvtv2.segmentation import build_segmenter
from pvtv2.segmentation.complexity import paper_rows
from pvtv2.segmentation.config import SegmentationConfig
from pvtv2.segmentation.data import IGNORE_INDEX, SegmentationDataset
from pvtv2.segmentation.evaluate import SegmentationMetrics, confusion_matrix, predict_probabilities
from pvtv2.segmentation.transforms import EvalTransform, train_transform

# The paper's models (the zoo also has -Li variants of every size, which the paper has no figures for).
PAPER_MODELS = list(reference.published(reference.IMAGENET))

REPO = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = REPO / "configs/segmentation/shapes_semantic_fpn_pvt_v2_b0.yaml"
PAPER = reference.published(reference.ADE20K)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny runs: see conftest.py


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_segmentation_shapes(tmp_path_factory.mktemp("shapes") / "seg", 6, 2, 64, seed=3, max_objects=3)


def _tiny_run(shapes: Path, out: Path, iterations: int, *extra: str) -> list[str]:
    """pvt seg-train arguments for a few iterations of B0 on the tiny scenes."""
    return ["seg-train", "--config", str(SHAPES_CONFIG), "--root", str(shapes), "--output_dir", str(out),
            "--iterations", str(iterations), "--batch_size", "2", "--scale", "256,64", "--crop_size", "64",
            "--log_interval", "1", "--eval_interval", "0", "--checkpoint_interval", "2", "--device", "cpu", *extra]


# Model: sizes against the paper, shapes, initialisation.

# Each of Table 5's figures checked once: B0 in the quick suite, the bigger models (seconds each) in the slow one.
@pytest.mark.parametrize("backbone", [
    pytest.param(name, marks=() if name == "pvt_v2_b0" else pytest.mark.slow) for name in PAPER_MODELS])
def test_params_and_gflops_match_table_5(backbone: str) -> None:
    (row,) = paper_rows([backbone])
    assert (row.paper_params_M, row.paper_GFLOPs) == (PAPER[backbone]["params_M"], PAPER[backbone]["GFLOPs"])
    assert row.params_ok and row.GFLOPs_ok, row


def test_segmentation_table_prints_table_5(capsys: pytest.CaptureFixture[str]) -> None:
    """The command prints the library's rows (their figures are checked above), leaving out models without any."""
    assert main(["table", "--task", "segmentation", "--models", "pvt_v2_b0*", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["model"], row["table"], row["tolerance"], row["mIoU_paper"]) == ("pvt_v2_b0", 5, 0.03, 37.2)


def test_logits_come_at_the_input_size_for_odd_sizes() -> None:
    model = build_segmenter(backbone="pvt_v2_b0", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 65, 97)).shape == (2, 5, 65, 97)


def test_new_layers_are_xavier_initialised() -> None:
    model = build_segmenter(backbone="pvt_v2_b0", num_classes=5)
    weight = model.decode_head.classifier.weight
    bound = (6 / (weight.shape[0] + weight.shape[1])) ** 0.5  # xavier_uniform: U(-bound, bound), fan = 128 + 5
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(model.neck.layer_blocks[0][0].bias) == 0


def test_unknown_segmenter_is_named() -> None:
    with pytest.raises(ValueError, match="unknown segmenter 'upernet'"):
        build_segmenter("upernet", backbone="pvt_v2_b0")


# Metrics.

def test_metrics_of_a_known_confusion_matrix() -> None:
    # 3 classes; ground truth rows, predictions columns; ignored pixels (255) do not count.
    target = torch.tensor([[0, 0, 0, 1], [1, 1, 2, 255]])
    pred = torch.tensor([[0, 0, 1, 1], [1, 2, 2, 0]])
    confusion = confusion_matrix(pred, target, 3)
    assert confusion.tolist() == [[2, 1, 0], [0, 2, 1], [0, 0, 1]]
    metrics = SegmentationMetrics(confusion, ["a", "b", "c"])
    # IoU = TP / (TP + FP + FN): a 2/3, b 2/(2+1+1) = 1/2, c 1/(1+1) = 1/2
    assert metrics.iou.tolist() == pytest.approx([2 / 3, 1 / 2, 1 / 2])
    assert metrics.accuracy.tolist() == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert metrics.mIoU == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)
    assert metrics.aAcc == pytest.approx(5 / 7)


def test_a_class_absent_everywhere_is_left_out_of_the_means() -> None:
    metrics = SegmentationMetrics(confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 3), ["a", "b", "c"])
    assert metrics.mIoU == 1.0 and metrics.mAcc == 1.0 and metrics.iou[2].isnan()
    assert "nan" in metrics.table()


# Inference.

def test_sliding_window_matches_whole_image_when_the_window_covers_it() -> None:
    model = build_segmenter(backbone="pvt_v2_b0", num_classes=4).eval()
    image = torch.randn(1, 3, 64, 96)
    whole = predict_probabilities(model, image, (64, 96), num_classes=4)
    slide = predict_probabilities(model, image, (64, 96), num_classes=4, mode="slide", crop_size=96, stride=64)
    torch.testing.assert_close(whole, slide)
    windows = predict_probabilities(model, image, (32, 48), num_classes=4, mode="slide", crop_size=64, stride=32,
                                    flip=True, scales=(0.75, 1.0))
    assert windows.shape == (1, 4, 32, 48)
    torch.testing.assert_close(windows.sum(1), torch.ones(1, 32, 48))


# Data.

def test_ade20k_labels_are_shifted_and_zero_ignored(shapes: Path) -> None:
    dataset = SegmentationDataset(shapes, "train", "ade20k")
    assert dataset.classes == ["background", "circle", "square", "triangle"] and len(dataset) == 6
    image, mask = dataset.load(0)
    stored = np.asarray(Image.open(dataset.samples[0][1])).astype(np.int64)
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert mask.tolist() == (stored - 1).tolist()


def test_transforms_give_crops_and_test_scale(shapes: Path) -> None:
    dataset = SegmentationDataset(shapes, "train", "ade20k", transform=train_transform(48, (256, 64)))
    for index in range(len(dataset)):
        image, mask = dataset[index]
        assert image.shape == (3, 48, 48) and image.dtype == torch.float32 and mask.shape == (48, 48)
        assert set(mask.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    # A crop larger than the rescaled image is padded: the padding is ignored in the mask.
    image, mask = SegmentationDataset(shapes, "train", "ade20k", transform=train_transform(
        96, (64, 32), ratio_range=(1.0, 1.0)))[0]
    assert image.shape == (3, 96, 96) and (mask[32:] == IGNORE_INDEX).all() and (image[:, 32:] == 0).all()
    image, mask = SegmentationDataset(shapes, "val", "ade20k", transform=EvalTransform((64, 32)))[0]
    assert image.shape == (3, 32, 32) and mask.shape == (64, 64)


def _folder(root: Path, image_size: tuple[int, int], mask: np.ndarray) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", image_size, "gray").save(root / "images" / split / "a.jpg")
        Image.fromarray(mask).save(root / "masks" / split / "a.png")
    (root / "classes.json").write_text(json.dumps(["sky", "sea"]))
    return root


def test_folder_layout_keeps_labels_and_ignores_255(tmp_path: Path) -> None:
    mask = np.array([[0, 1], [255, 1]], dtype=np.uint8)
    dataset = SegmentationDataset(_folder(tmp_path, (2, 2), mask), "train", "folder")
    assert dataset.load(0)[1].tolist() == [[0, 1], [255, 1]]


def test_mask_of_another_size_is_named(tmp_path: Path) -> None:
    dataset = SegmentationDataset(_folder(tmp_path, (3, 2), np.zeros((2, 2), np.uint8)), "train", "folder")
    with pytest.raises(DatasetError, match=r"mask .*a\.png is 2x2 but its image .*a\.jpg is 3x2"):
        dataset.load(0)


def test_label_outside_the_classes_is_named(tmp_path: Path) -> None:
    dataset = SegmentationDataset(_folder(tmp_path, (2, 2), np.array([[0, 7], [1, 1]], np.uint8)), "val", "folder")
    with pytest.raises(DatasetError, match=r"mask .*val/a\.png has values \[7\] outside the 2 classes"):
        dataset.load(0)


def test_missing_mask_is_named(tmp_path: Path) -> None:
    root = _folder(tmp_path, (2, 2), np.zeros((2, 2), np.uint8))
    Image.new("RGB", (2, 2)).save(root / "images" / "train" / "b.png")
    with pytest.raises(DatasetError, match=r"image .*train/b\.png has no mask: expected .*masks/train/b\.png"):
        SegmentationDataset(root, "train", "folder")


def test_missing_split_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "images" / "training").mkdir(parents=True)
    with pytest.raises(DatasetError, match="has no annotations/training/ folder"):
        SegmentationDataset(tmp_path, "train", "ade20k", class_names=["a"])


# Config.

def test_unknown_config_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown config key '--epochs'"):
        SegmentationConfig.load(SHAPES_CONFIG, [("epochs", "3")])


# Training, resuming, evaluating and predicting.

class _Killed(Exception):
    pass


def test_train_resume_eval_predict(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import pvtv2.engine.run as engine_run

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(_tiny_run(shapes, straight, 4)) == 0
    # The same run, killed right after its checkpoint at iteration 2.
    save = engine_run.atomic_save

    def save_then_die(state: dict, path: Path) -> None:
        save(state, path)
        raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(engine_run, "atomic_save", save_then_die)
        with pytest.raises(_Killed):
            main(_tiny_run(shapes, split, 4))
    assert read_training_checkpoint(split / "last.pth")["iteration"] == 2
    # Continuing from iteration 2 ends with exactly the weights of the uninterrupted run.
    assert main(_tiny_run(shapes, split, 4, "--resume", "auto")) == 0
    a = read_training_checkpoint(straight / "last.pth")
    b = read_training_checkpoint(split / "last.pth")
    assert a["iteration"] == b["iteration"] == 4
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    records = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4] and "val_mIoU" in records[-1]
    assert (straight / "curves.png").is_file() and (straight / "config.yaml").is_file()
    capsys.readouterr()

    assert main(["seg-eval", "--checkpoint", str(straight / "last.pth"), "--json", "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 2 and 0 <= result["mIoU"] <= 1 and set(result["IoU"]) == {
        "background", "circle", "square", "triangle"}

    image = next((shapes / "images" / "validation").iterdir())
    out, labels = tmp_path / "overlay.png", tmp_path / "labels.png"
    assert main(["seg-predict", str(image), "--checkpoint", str(straight / "last.pth"), "--out", str(out),
                 "--labels", str(labels)]) == 0
    with Image.open(out) as overlay, Image.open(labels) as label_map:
        assert overlay.width > 64 and overlay.height >= 64  # the legend is on the right
        assert label_map.size == (64, 64) and np.asarray(label_map).max() <= 3


def test_resuming_a_classifier_checkpoint_is_refused(shapes: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from pvtv2.engine.training_state import FORMAT_KEY, atomic_save

    atomic_save({FORMAT_KEY: 2, "task": "classification", "model": {}}, tmp_path / "cls.pth")
    assert main(_tiny_run(shapes, tmp_path / "run", 2, "--resume", str(tmp_path / "cls.pth"))) == 2
    assert "cls.pth is a checkpoint of pvt train (classification), not of pvt seg-train" in capsys.readouterr().err


def test_bad_data_stops_seg_train_with_the_file_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_segmentation_shapes(tmp_path / "bad", 2, 1, 32, seed=0)
    (root / "annotations" / "training" / "000001.png").unlink()
    assert main(_tiny_run(root, tmp_path / "run", 1, "--dataset", "ade20k")) == 2
    assert "000001.jpg has no mask: expected" in capsys.readouterr().err


def test_generated_shapes_are_written_when_missing(tmp_path: Path) -> None:
    root = tmp_path / "generated"
    assert main(["seg-train", "--config", str(SHAPES_CONFIG), "--root", str(root), "--print-config"]) == 0
    from pvtv2.segmentation.data import dataset_root

    cfg = SegmentationConfig.load(SHAPES_CONFIG, [("root", str(root)), ("shapes_train", "2"), ("shapes_val", "1"),
                                      ("shapes_size", "32")])
    assert dataset_root(cfg) == root and len(list((root / "images" / "training").iterdir())) == 2


def test_mmsegmentation_checkpoint_loads_with_the_same_outputs(tmp_path: Path) -> None:
    from pvtv2.segmentation.predict import load_segmenter

    model = build_segmenter(backbone="pvt_v2_b0", num_classes=150).eval()
    with torch.no_grad():  # non-trivial norm statistics, so that a mis-mapped BN would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    # Our names -> MMSegmentation's (ConvModule .conv / .bn, conv_seg), as the official PVT checkpoints have.
    renames = ((r"neck\.inner_blocks\.(\d+)\.0\.", r"neck.lateral_convs.\1.conv."),
               (r"neck\.layer_blocks\.(\d+)\.0\.", r"neck.fpn_convs.\1.conv."),
               (r"scale_heads\.(\d+)\.(\d+)\.0\.", r"scale_heads.\1.\2.conv."),
               (r"scale_heads\.(\d+)\.(\d+)\.1\.", r"scale_heads.\1.\2.bn."),
               (r"decode_head\.classifier\.", r"decode_head.conv_seg."))
    import re

    mmseg = {}
    for key, value in model.state_dict().items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        mmseg[key] = value
    torch.save({"meta": {}, "state_dict": mmseg}, tmp_path / "fpn_pvt_v2_b0_ade20k_40k.pth")
    loaded = load_segmenter(tmp_path / "fpn_pvt_v2_b0_ade20k_40k.pth")
    assert loaded.backbone == "pvt_v2_b0" and loaded.class_names[:3] == ["wall", "building", "sky"]
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(image), model(image))
