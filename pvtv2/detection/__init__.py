"""Object detection and instance segmentation with PVT backbones: RetinaNet and Mask R-CNN on COCO-format
data (section 5.2 of the paper), built from torchvision's detection models."""

from __future__ import annotations

from .model import DETECTORS, PyramidBackboneWithFPN, build_backbone, build_detector

__all__ = ["DETECTORS", "PyramidBackboneWithFPN", "build_backbone", "build_detector"]
