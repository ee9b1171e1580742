"""Object detection and instance segmentation with PVT backbones on COCO-format data, built from torchvision's
detection models: RetinaNet and Mask R-CNN (section 5.2 of the paper, Table 3), ATSS, GFL, Cascade Mask R-CNN and
Sparse R-CNN (Table 4). Each detector's spec (:mod:`pvtv2.detection.registry`) says how it is built and what
it is.

The folders follow what a detector is: ``one_stage/`` (RetinaNet, ATSS, GFL: dense heads over anchors),
``two_stage/`` (the RPN, RoI heads, Mask R-CNN, Cascade Mask R-CNN), ``query/`` (Sparse R-CNN) and ``data/``
(COCO-format data); the pieces they share (anchors, boxes, neck, RoIAlign, the model transform) sit beside them.
The library verbs are :func:`train` (a config), :func:`evaluate` (a checkpoint on a split -> COCO figures) and
:func:`predict` (a checkpoint on an image -> detections).
"""

from .config import DetectionConfig
from .data import CocoDetection
from .evaluate import evaluate
from .loading import LoadedDetector, load_detector
from .model import build_backbone, build_detector
from .neck import PyramidBackboneWithFPN
from .one_stage.atss import ATSS
from .one_stage.gfl import GFL
from .predict import predict
from .query.sparse_rcnn import SparseRCNN
from .registry import DETECTORS, detector_spec
from .train import train

__all__ = [
    "ATSS", "DETECTORS", "GFL", "CocoDetection", "DetectionConfig", "LoadedDetector", "PyramidBackboneWithFPN",
    "SparseRCNN", "build_backbone", "build_detector", "detector_spec", "evaluate", "load_detector", "predict", "train",
]
