"""Semantic segmentation with PVT backbones: Semantic FPN, ADE20K-format data, training, evaluation, prediction.

The library verbs are :func:`train` (a config), :func:`evaluate` (a checkpoint on a data set -> mIoU, mAcc,
aAcc, per-class IoU) and :func:`predict` (a checkpoint on an image -> the class per pixel).
"""

from .config import SegmentationConfig
from .evaluate import CheckpointEvaluation, SegmentationMetrics, evaluate, evaluate_model
from .model import SEGMENTERS, SemanticFPN, SemanticFPNHead, build_segmenter
from .predict import LoadedSegmenter, SegmentationPrediction, load_segmenter, predict
from .train import train

__all__ = [
    "SEGMENTERS", "CheckpointEvaluation", "LoadedSegmenter", "SegmentationConfig", "SegmentationMetrics",
    "SegmentationPrediction", "SemanticFPN", "SemanticFPNHead", "build_segmenter", "evaluate", "evaluate_model",
    "load_segmenter", "predict", "train",
]
