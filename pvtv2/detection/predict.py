"""Detecting with a trained detector: :func:`predict` finds the objects in an image and draws them (boxes,
class names, scores and masks, as the paper's Fig. 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..data import read_image
from ..data.images import save_image
from ..errors import InputError
from .coco_metric import mask_rles
from .data import eval_transform
from .loading import LoadedDetector, load_detector
from .transform import MASK_THRESHOLD

# Distinct colours for classes, cycled (tab10).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


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
        image = draw_segmentation_masks(image, output["masks"][:, 0] >= MASK_THRESHOLD, alpha=0.45, colors=colours)
    captions = [f"{class_names[int(label) - 1]} {score:.2f}" for label, score in zip(output["labels"], output["scores"])]
    return draw_bounding_boxes(image, output["boxes"], captions, colors=colours, width=2)


def check_score_threshold(value: float, option: str = "--score-threshold") -> None:
    """A detection score threshold is a probability (NaN is refused too: no score compares with it)."""
    if not 0 <= value <= 1:
        raise InputError(f"{option} must be in [0, 1], got {value}")


def drawn_detections(detector: LoadedDetector, pixels: np.ndarray, score_threshold: float = 0.5) -> np.ndarray:
    """An RGB picture (H, W, 3) uint8 with its detections of score >= ``score_threshold`` drawn on it."""
    image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    return draw(image, detect(detector, image, score_threshold), detector.class_names).permute(1, 2, 0).numpy()


def predict(checkpoint: str | Path | LoadedDetector, image: str | Path, *, out: str | Path | None = None,
            score_threshold: float = 0.5, device: str = "auto", config: str | Path | None = None
            ) -> list[dict[str, Any]]:
    """The detections of the detector ``checkpoint`` (a det-train checkpoint, a release file or a
    :class:`LoadedDetector`; ``device`` and ``config`` as :func:`load_detector`'s) in ``image`` with score
    >= ``score_threshold``, as ``{label, score, box}`` dicts (box as x0, y0, x1, y1 pixels; ``mask`` as COCO
    RLE for the mask detectors); ``out``: also draw them there (its format from the extension)."""
    detector = checkpoint if isinstance(checkpoint, LoadedDetector) else load_detector(checkpoint, device, config)
    path = Path(image)
    pixels = pil_to_tensor(read_image(path))  # uint8 (3, H, W)
    detector.model_input().check(path, (pixels.shape[-1], pixels.shape[-2]))  # before the model fails on it
    output = detect(detector, pixels, score_threshold)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        save_image(to_pil_image(draw(pixels, output, detector.class_names)), out)  # format from the extension
    detections = [dict(label=detector.class_names[int(label) - 1], score=float(score), box=[float(v) for v in box])
                  for label, score, box in zip(output["labels"], output["scores"], output["boxes"])]
    if "masks" in output:
        for detection, rle in zip(detections, mask_rles(output["masks"])):
            detection["mask"] = rle
    return detections
