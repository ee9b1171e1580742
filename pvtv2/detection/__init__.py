"""Object detection and instance segmentation with PVT backbones on COCO-format data, built from torchvision's
detection models: RetinaNet and Mask R-CNN (section 5.2 of the paper, Table 3), ATSS, GFL, Cascade Mask R-CNN and
Sparse R-CNN (Table 4).

The names below are imported on first use, so that building the ``pvt`` parser (which reads this
package's config schema) does not import torchvision's detection stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DETECTORS": "model", "PyramidBackboneWithFPN": "model", "build_backbone": "model", "build_detector": "model",
    "DetectionConfig": "config",
    "CocoDetection": "data",
    "train": "train",
    "LoadedDetector": "predict", "load_detector": "predict", "predict_image": "predict",
    "evaluate_checkpoint": "predict",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
