"""Semantic segmentation with PVT backbones: Semantic FPN, ADE20K-format data, training, evaluation, prediction."""

from .model import SEGMENTERS, SemanticFPN, SemanticFPNHead, build_segmenter
from .predict import load_segmenter

__all__ = ["SEGMENTERS", "SemanticFPN", "SemanticFPNHead", "build_segmenter", "load_segmenter"]
