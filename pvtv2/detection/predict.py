"""Using a trained detector: load a det-train checkpoint, detect objects in an image and draw them (boxes,
class names, scores and masks, as the paper's Fig. 3), or score the checkpoint on a COCO-format split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms.v2.functional import to_pil_image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..data import DatasetError, read_image_tensor
from ..data.images import save_image
from ..engine.distributed import resolve_device
from ..engine.training_state import read_training_checkpoint
from ..models.loading import CheckpointError, check_weights
from .config import DetectionConfig
from .data import CocoDetection, collate, ensure_shapes, eval_transform, model_input, split_paths
from .evaluate import MASK_THRESHOLD, evaluate
from .model import build_from_config

# Distinct colours for classes, cycled (tab10).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass
class LoadedDetector:
    """A trained detector in evaluation mode, with its class names and the data set's category ids."""

    model: nn.Module
    class_names: list[str]
    category_ids: list[int]
    config: DetectionConfig
    device: torch.device


def load_detector(path: str | Path, device: str = "auto") -> LoadedDetector:
    """The detector of a det-train checkpoint, in evaluation mode on ``device``."""
    state = read_training_checkpoint(path, "detection")
    config = DetectionConfig.from_dict(state["config"], f"the config stored in {path}")
    class_names = list(state["class_names"])
    model = build_from_config(config.model, config.data, len(class_names), pretrained=False)
    check_weights(state["model"], model.state_dict(), f"checkpoint {path}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"the weights of {path} do not fit the detector its config describes: {error}") from error
    target = resolve_device(device)
    return LoadedDetector(model.eval().to(target), class_names, list(state["category_ids"]), config, target)


@torch.no_grad()
def detect(detector: LoadedDetector, image: torch.Tensor, score_threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Detections of a uint8 (3, H, W) image with score >= ``score_threshold``, in its pixels."""
    pixels = eval_transform()(image).to(detector.device)
    output = detector.model([pixels])[0]
    keep = output["scores"] >= score_threshold
    return {k: v[keep].cpu() for k, v in output.items()}


def draw(image: torch.Tensor, output: dict[str, torch.Tensor], class_names: list[str]) -> torch.Tensor:
    """``image`` (uint8, 3 x H x W) with the masks blended in and the boxes outlined and labelled."""
    colours = [PALETTE[(int(label) - 1) % len(PALETTE)] for label in output["labels"]]
    if "masks" in output and len(output["masks"]):
        image = draw_segmentation_masks(image, output["masks"][:, 0] > MASK_THRESHOLD, alpha=0.45, colors=colours)
    captions = [f"{class_names[int(label) - 1]} {score:.2f}" for label, score in zip(output["labels"], output["scores"])]
    return draw_bounding_boxes(image, output["boxes"], captions, colors=colours, width=2)


def predict_image(detector: LoadedDetector, image_path: str | Path, out: str | Path,
                  score_threshold: float = 0.5) -> list[dict[str, Any]]:
    """Detect objects in ``image_path``, write the drawing to ``out`` (its format from the extension) and
    return the detections as ``{label, score, box}`` dicts (box as x0, y0, x1, y1 pixels)."""
    image_path, out = Path(image_path), Path(out)
    image = read_image_tensor(image_path)
    model_input(detector.config).check(image_path, (image.shape[-1], image.shape[-2]))  # before the model fails on it
    output = detect(detector, image, score_threshold)
    drawing = draw(image, output, detector.class_names)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(to_pil_image(drawing), out)  # the format follows the extension (PNG, JPEG...)
    return [dict(label=detector.class_names[int(label) - 1], score=float(score), box=[float(v) for v in box])
            for label, score, box in zip(output["labels"], output["scores"], output["boxes"])]


def evaluate_checkpoint(path: str | Path, *, root: str | None = None, split: str | None = None, batch_size: int = 2,
                        num_workers: int = 2, device: str = "auto", amp: str = "none") -> dict[str, float]:
    """COCO metrics of a det-train checkpoint on ``root/split`` (default: its config's held-out split)."""
    detector = load_detector(path, device)
    data = detector.config.data
    root = root if root is not None else data.root
    if data.dataset == "shapes" and root == data.root:
        ensure_shapes(root, data.shapes_train, data.shapes_val, data.shapes_size, seed=detector.config.run.seed)
    paths = split_paths(root, split if split is not None else data.val_split)
    with_masks = detector.config.model.with_masks
    dataset = CocoDetection(paths.images, paths.annotations, eval_transform(), with_masks=with_masks)
    dataset.check_model_input(model_input(detector.config))
    if dataset.category_ids != detector.category_ids:
        raise DatasetError(f"{paths.annotations} has categories {dataset.category_ids}, but the checkpoint was "
                           f"trained on {detector.category_ids}")
    loader = DataLoader(dataset, batch_size, collate_fn=collate, num_workers=num_workers)
    return evaluate(detector.model, loader, dataset, detector.device, amp, with_masks)
