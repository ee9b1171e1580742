"""Object detection and instance segmentation with PVT backbones on COCO-format data, built from torchvision's
detection models: RetinaNet and Mask R-CNN (section 5.2 of the paper, Table 3), ATSS, GFL, Cascade Mask R-CNN and
Sparse R-CNN (Table 4). Each detector's spec (:mod:`pvtv2.detection.registry`) says how it is built and what
it is."""

from .config import DetectionConfig
from .data import CocoDetection
from .dense_heads import ATSS, GFL
from .model import DETECTORS, build_backbone, build_detector
from .neck import PyramidBackboneWithFPN
from .predict import LoadedDetector, evaluate_checkpoint, load_detector, predict_image
from .registry import detector_spec
from .sparse_rcnn import SparseRCNN
from .train import train

__all__ = [
    "ATSS", "DETECTORS", "GFL", "CocoDetection", "DetectionConfig", "LoadedDetector", "PyramidBackboneWithFPN",
    "SparseRCNN", "build_backbone", "build_detector", "detector_spec", "evaluate_checkpoint", "load_detector",
    "predict_image", "train",
]
