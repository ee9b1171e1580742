"""mmcv's compiled ops for MMDetection / MMSegmentation in the test process, from torchvision's.

mmcv-lite (pure Python) has no ``mmcv._ext``, which ``mmcv.ops`` loads when MMDetection is imported. A stand-in
module gives the two ops the tests' models run at inference, NMS and RoIAlign, with mmcv's semantics, on
torchvision's kernels; any other op raises if it is called.
"""

from __future__ import annotations

import sys
import types

import torch
import torchvision

ROI_ALIGN_AVERAGE = 1  # mmcv's pool_mode: 0 max, 1 average


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    if offset != 0:
        raise NotImplementedError("mmcv's legacy nms with offset 1 is not used by these models")
    return torchvision.ops.nms(boxes, scores, float(iou_threshold))


def _roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width, spatial_scale,
                       sampling_ratio, pool_mode, aligned) -> None:
    if pool_mode != ROI_ALIGN_AVERAGE:
        raise NotImplementedError("mmcv's max-pooling RoIAlign is not used by these models")
    output.copy_(torchvision.ops.roi_align(input, rois, (aligned_height, aligned_width), spatial_scale,
                                           sampling_ratio, bool(aligned)))


def _missing(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(f"mmcv's compiled op {name} is not available in the tests (mmcv-lite)")
    return op


def install() -> None:
    """Put the stand-in ``mmcv._ext`` in place (before MMDetection or MMSegmentation is imported); idempotent."""
    if "mmcv._ext" in sys.modules:
        return
    ext = types.ModuleType("mmcv._ext")
    ext.__file__ = __file__
    ext.nms = _nms
    ext.roi_align_forward = _roi_align_forward

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing(name)

    ext.__getattr__ = __getattr__
    sys.modules["mmcv._ext"] = ext
