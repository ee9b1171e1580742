"""Every detector of the registry (:data:`pvtv2.detection.registry.DETECTORS`) goes through the same checks on a
tiny model and the generated 64-pixel scenes: a training step, the evaluation output, COCO results, a strict
save/load round trip, and every shipped config loads and builds. Then, once, for one detector: det-train ->
det-eval -> det-predict through the command line, an exact resume, and DDP on two processes == one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from pvtv2.cli.main import main
from pvtv2.data import DatasetError
from pvtv2.detection import DETECTORS, evaluate, load_detector, predict, train
from pvtv2.detection.coco_metric import STAT_NAMES, coco_metrics, predict_dataset
from pvtv2.detection.config import DetectionConfig
from pvtv2.detection.data import CocoDetection, collate, eval_transform, split_paths, train_transform
from pvtv2.detection.model import build_from_config
from pvtv2.detection.registry import detector_spec
from pvtv2.engine.training_state import read_training_checkpoint

from .detectors import SCENE_SIZE, assert_loads_strictly, tiny_config, tiny_detector
from .distributed import det_train_alone_and_in_two_processes

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "detection").glob("*.yaml"))
CLASSES = ["circle", "square", "triangle"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny runs: see conftest.py


def _scenes(root: Path, split: str, train: bool, with_masks: bool) -> CocoDetection:
    paths = split_paths(root, split)
    transform = train_transform((SCENE_SIZE - 8, SCENE_SIZE), SCENE_SIZE) if train else eval_transform()
    return CocoDetection(paths.images, paths.annotations, transform, with_masks=with_masks, skip_empty=train)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_training_step_changes_the_weights(shapes: Path, name: str) -> None:
    """Two AdamW steps on a batch with an image without objects: finite, non-negative named losses, and most
    weights move."""
    model = tiny_detector(name).train()
    images, targets = collate([_scenes(shapes, "train", True, DETECTORS[name].with_masks)[i] for i in range(4)])
    targets[0] = {key: value[:0] if key in ("boxes", "labels", "masks") else value for key, value in targets[0].items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        losses = model(images, targets)
        assert losses and all(torch.isfinite(v) and v >= 0 for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert sum(not torch.equal(a, b) for a, b in zip(before, model.parameters())) > len(before) // 2


@pytest.mark.parametrize("name", list(DETECTORS))
def test_eval_output_and_coco_results(shapes: Path, name: str) -> None:
    """torchvision-style detections in each input image's pixels (boxes, labels 1..K, sorted scores, masks for
    the mask detectors), and pycocotools' figures of them on the held-out scenes."""
    spec = detector_spec(name)
    model = tiny_detector(name, keep_all=True).eval()
    with torch.no_grad():
        # Two images: at 64 pixels P7 is 1 x 1, and the one-stage heads' GroupNorm needs more than one value.
        output, _ = model([torch.rand(3, 48, 80), torch.rand(3, SCENE_SIZE, SCENE_SIZE)])
    assert set(output) == {"boxes", "labels", "scores"} | ({"masks"} if spec.with_masks else set())
    count = len(output["boxes"])
    assert 0 < count <= 20 and output["boxes"].shape == (count, 4)
    assert (output["boxes"] >= 0).all() and output["boxes"][:, 2].max() <= 80 and output["boxes"][:, 3].max() <= 48
    assert set(output["labels"].tolist()) <= {1, 2, 3}
    assert torch.equal(output["scores"], output["scores"].sort(descending=True).values)
    if spec.with_masks:
        assert output["masks"].shape == (count, 1, 48, 80)
        assert ((0 <= output["masks"]) & (output["masks"] <= 1)).all()

    scenes = _scenes(shapes, "val", False, spec.with_masks)
    loader = torch.utils.data.DataLoader(scenes, 2, collate_fn=collate)
    results = predict_dataset(model, loader, torch.device("cpu"), show_progress=False)
    assert all(r["category_id"] in (1, 2, 3) and len(r["bbox"]) == 4 for r in results)
    assert all(("segmentation" in r) == spec.with_masks for r in results)
    iou_types = ("bbox", "segm") if spec.with_masks else ("bbox",)
    metrics = coco_metrics(scenes, results, iou_types)
    assert set(metrics) == {f"{t}_{s}" for t in iou_types for s in STAT_NAMES}
    assert all(-1.0 <= v <= 1.0 for v in metrics.values())


@pytest.mark.parametrize("name", list(DETECTORS))
def test_saved_detector_loads_strictly(tmp_path: Path, name: str) -> None:
    images = [torch.rand(3, SCENE_SIZE, SCENE_SIZE) for _ in range(2)]
    assert_loads_strictly(lambda: tiny_detector(name, keep_all=True), images, tmp_path / f"{name}.pth")


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_shipped_config_loads_and_builds(path: Path) -> None:
    """Each shipped config validates and describes a detector that builds (on the meta device: no weights)."""
    config = DetectionConfig.load(path)
    assert config.model.detector in DETECTORS and path.stem.startswith(("shapes_", config.model.detector))
    with torch.device("meta"):
        model = build_from_config(config.model, config.data, num_classes=3, pretrained=False)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_cli_trains_evaluates_and_predicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped shapes config of RetinaNet, scaled to a few scenes and one epoch: det-train writes the data
    set on first use and a checkpoint; det-eval gives the figures training gave; det-predict draws and lists
    the detections. A folder of another shapes data set is refused."""
    config = REPO / "configs" / "detection" / "shapes_retinanet_pvt_v2_b0.yaml"
    root, run = tmp_path / "shapes", tmp_path / "run"
    assert main(["det-train", "--config", str(config), "--root", str(root), "--shapes_train", "4", "--shapes_val",
                 "2", "--epochs", "1", "--output_dir", str(run), "--device", "cpu", "--warmup_iters", "1"]) == 0
    checkpoint = run / "last.pth"
    state = read_training_checkpoint(checkpoint)
    assert state["config"]["model"]["detector"] == "retinanet" and "bbox_AP" in state["metrics"]

    figures = tmp_path / "figures.json"
    assert main(["det-eval", "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0",
                 "--json", str(figures)]) == 0
    evaluated = json.loads(figures.read_text())
    assert sorted(evaluated) == sorted(f"bbox_{s}" for s in STAT_NAMES)
    assert evaluated["bbox_AP"] == pytest.approx(state["metrics"]["bbox_AP"])

    scene = next((root / "val").glob("*.png"))
    drawing = tmp_path / "drawing.png"
    capsys.readouterr()
    assert main(["det-predict", str(scene), "--checkpoint", str(checkpoint), "--out", str(drawing),
                 "--score-threshold", "0", "--device", "cpu", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert Image.open(drawing).size == Image.open(scene).size and printed["out"] == str(drawing)
    assert all(d["label"] in CLASSES and len(d["box"]) == 4 for d in printed["detections"])

    with pytest.raises(DatasetError, match="holds a shapes data set with 4 train scenes"):
        train(DetectionConfig.load(config, [("root", str(root)), ("shapes_train", "5"), ("device", "cpu"),
                                            ("output_dir", str(tmp_path / "refused"))]))


def test_training_resumes_exactly_and_the_verbs_agree(shapes: Path, tmp_path: Path) -> None:
    """train writes a checkpoint that evaluate scores as training did; a resumed run continues it; predict
    finds the classes by name; load_detector gives the detector in eval mode."""
    out = tmp_path / "run"
    metrics = train(tiny_config("mask_rcnn", shapes, out))
    state = read_training_checkpoint(out / "last.pth")
    assert state["task"] == "detection" and state["epoch"] == 1 and state["class_names"] == CLASSES
    assert evaluate(out / "last.pth", device="cpu", workers=0) == pytest.approx(metrics)

    resumed = tiny_config("mask_rcnn", shapes, out)
    resumed.optim.epochs, resumed.run.resume = 2, "auto"
    train(resumed)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert read_training_checkpoint(out / "last.pth")["epoch"] == 2

    detector = load_detector(out / "last.pth", "cpu")
    assert detector.class_names == CLASSES and not detector.model.training
    scene = next((shapes / "val").glob("*.png"))
    detections = predict(detector, scene, score_threshold=0.0)
    assert all(d["label"] in CLASSES and "mask" in d for d in detections)


@pytest.mark.slow
def test_two_processes_train_the_same_retinanet_as_one(shapes: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes with gloo and batch 2 each == 1 process with batch 4: RetinaNet's loss is a
    mean over images and DDP averages gradients over processes, so the steps are the same."""
    def config(out: str, batch: int) -> Path:
        cfg = tiny_config("retinanet", shapes, tmp_path / out, batch_size=batch)
        cfg.data.hflip = 0.0  # no random draw: each process would draw its own
        path = tmp_path / f"{out}.yaml"
        path.write_text(yaml.safe_dump(cfg.to_dict()))
        return path

    single, pair, printed = det_train_alone_and_in_two_processes(config, tmp_path)
    assert "2 process(es) on cpu" in printed
    for key, value in single["model"].items():
        torch.testing.assert_close(pair["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # Every held-out image is scored once, whichever process predicted it.
    assert pair["metrics"]["bbox_AP"] == pytest.approx(single["metrics"]["bbox_AP"], abs=1e-3)
