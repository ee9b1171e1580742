"""Checks every detector of Table 4 goes through: a strict save/load round trip, and det-train, det-eval and
det-predict from the command line on a tiny config."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image

from pvtv2.cli.main import main
from pvtv2.detection.config import DetectionConfig
from pvtv2.detection.evaluate import STAT_NAMES
from pvtv2.engine.training_state import read_training_checkpoint


def assert_loads_strictly(build: Callable[[], torch.nn.Module], image: torch.Tensor, path: Path) -> None:
    """A detector saved by ``build()`` loads into a fresh one (other weights) with strict=True and predicts
    the same on ``image``."""
    model = build().eval()
    torch.save(model.state_dict(), path)
    torch.manual_seed(1)  # the fresh one starts from other weights
    fresh = build().eval()
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    with torch.no_grad():
        a, b = model([image])[0], fresh([image])[0]
    assert len(a["boxes"]) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def assert_cli_trains_evaluates_predicts(model: dict[str, Any], shapes: Path, tmp_path: Path, size: int,
                                         iou_types: tuple[str, ...]) -> None:
    """det-train one epoch of the ``model`` config section on ``shapes``, det-eval's figures (one per COCO
    statistic of each of ``iou_types``) and det-predict's drawing."""
    cfg = dict(
        model=model,
        data=dict(dataset="coco", root=str(shapes), train_split="train", val_split="val", train_min_size=[size, size],
                  min_size=size, max_size=size, num_workers=0),
        optim=dict(epochs=1, batch_size=4, lr=1e-3, warmup_iters=2, lr_steps=[1, 2]),
        run=dict(output_dir=str(tmp_path / "out"), device="cpu", seed=0),
    )
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(DetectionConfig.from_dict(cfg).to_dict()))
    assert main(["det-train", "--config", str(config)]) == 0
    checkpoint = tmp_path / "out" / "last.pth"
    assert read_training_checkpoint(checkpoint)["config"]["model"]["detector"] == model["detector"]
    figures = tmp_path / "figures.json"
    assert main(["det-eval", "--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0",
                 "--json", str(figures)]) == 0
    assert sorted(json.loads(figures.read_text())) == sorted(f"{t}_{s}" for t in iou_types for s in STAT_NAMES)
    scene = next((shapes / "val").glob("*.png"))
    drawing = tmp_path / "drawing.png"
    assert main(["det-predict", str(scene), "--checkpoint", str(checkpoint), "--out", str(drawing),
                 "--score-threshold", "0", "--device", "cpu"]) == 0
    assert Image.open(drawing).size == Image.open(scene).size
