"""Data pieces every task shares: reading (and writing) images with clear errors, and the generated shapes
scenes that detection and segmentation use as their offline default. (Each task's datasets live in its own
folder.)"""

from .images import DatasetError, read_image

__all__ = ["DatasetError", "read_image"]
