"""Data pieces every task shares: reading images with clear errors, and the generated shapes scenes that
detection and segmentation use as their offline default. (Each task's datasets live in its own folder.)"""

from .images import DatasetError, open_rgb

__all__ = ["DatasetError", "open_rgb"]
