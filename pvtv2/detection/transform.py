"""Every detector's image transform: MMDetection's test pipeline on torchvision's ``GeneralizedRCNNTransform``.

At test, as the official configs' pipeline (mmcv ``imrescale``, ``Normalize``, ``Pad(size_divisor=32)``):

* each image is resized keeping its aspect ratio to fit ``max_size`` x ``min_size`` (the longer side at most
  1333, the shorter at most 800), the new size rounded half up, with OpenCV's bilinear resize on the image's
  own pixels: on uint8 pixels OpenCV's fixed-point kernel, which differs from a float resize by a grey level
  on 11-18% of the pixels; then normalised and padded to a multiple of 32 with zeros;
* boxes are mapped back to the original pixels by MMDetection's per-axis scale factors (new / old size):
  :meth:`DetectionTransform.postprocess` does it after a detector's own post-processing; the one-stage
  detectors call :func:`to_original_pixels` themselves before their NMS, as MMDetection's dense heads, and
  return boxes that are final;
* instance masks are pasted into the original image as MMDetection's ``_do_paste_mask`` does (bilinear
  ``grid_sample`` of the 28x28 mask at each pixel centre, one mask at a time within its box), giving
  probabilities that :data:`MASK_THRESHOLD` turns into masks with ``>=``.

In training the images arrive resized by the data pipeline (:mod:`pvtv2.detection.data`) and pass as they are.
uint8 images are scaled to [0, 1] here; float images in [0, 1] are taken as well (torchvision's convention),
and resized with OpenCV's float kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

# MMDetection's mean (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375) are these times 255.
from ..data.images import IMAGENET_MEAN, IMAGENET_STD, resize_image

MASK_THRESHOLD = 0.5  # a pixel belongs to the object where its pasted probability is >= this (mask_thr_binary)


def rescaled_size(height: int, width: int, short: int, long: int) -> tuple[int, int]:
    """(height, width) after mmcv's ``imrescale`` to fit ``long`` x ``short`` keeping the aspect ratio."""
    scale = min(long / max(height, width), short / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def paste_masks(masks: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """Mask probabilities (N, 1, M, M) of ``boxes`` (N, 4, image pixels) pasted into (N, 1, height, width):
    MMDetection's ``_do_paste_mask`` as it runs on the CPU (one mask at a time, within its box and a pixel)."""
    pasted = masks.new_zeros((len(masks), 1, height, width), dtype=torch.float32)
    for index, (mask, box) in enumerate(zip(masks, boxes.float())):
        x0, y0, x1, y1 = box.tolist()
        left, top = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        right, bottom = min(math.ceil(x1) + 1, width), min(math.ceil(y1) + 1, height)
        if right <= left or bottom <= top:
            continue
        ys = (torch.arange(top, bottom, device=masks.device, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        xs = (torch.arange(left, right, device=masks.device, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        # A box of zero width or height gives infinite coordinates, which MMDetection sets to 0.
        xs, ys = xs.nan_to_num(0.0, 0.0, 0.0), ys.nan_to_num(0.0, 0.0, 0.0)
        grid = torch.stack([xs[None, :].expand(len(ys), -1), ys[:, None].expand(-1, len(xs))], dim=2)
        pasted[index, 0, top:bottom, left:right] = F.grid_sample(mask[None].float(), grid[None], align_corners=False)[0, 0]
    return pasted


def to_original_pixels(boxes: Tensor, image_shape: tuple[int, int], original_size: tuple[int, int]) -> Tensor:
    """``boxes`` in the pixels of the resized image (``image_shape``, H x W) mapped to the original image's, as
    MMDetection's ``scale_boxes`` by the inverse of its per-axis scale factors (new / old size)."""
    (new_h, new_w), (height, width) = image_shape, original_size
    inverse = torch.tensor([1 / (new_w / width), 1 / (new_h / height)] * 2, dtype=torch.float32)
    return boxes * inverse.to(boxes)


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform with MMDetection's test-time resize and output mapping (see the
    module docstring); ``min_size`` and ``max_size`` as torchvision's (the last ``min_size`` at test)."""

    def __init__(self, min_size: int | tuple[int, ...], max_size: int) -> None:
        super().__init__(min_size, max_size, list(IMAGENET_MEAN), list(IMAGENET_STD), _skip_resize=True)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if not self.training:
            images = [resize_image(image, rescaled_size(*image.shape[-2:], self.min_size[-1], self.max_size))
                      for image in images]
        return super().forward(images, targets)

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            image = image.float() / 255
        return super().normalize(image)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:
        return image, target  # resized before normalising (test) or by the data pipeline (training)

    def postprocess(self, result: list[dict[str, Tensor]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        if self.training:
            return result
        for prediction, image_shape, (height, width) in zip(result, image_shapes, original_image_sizes):
            prediction["boxes"] = to_original_pixels(prediction["boxes"], image_shape, (height, width))
            if "masks" in prediction:
                prediction["masks"] = paste_masks(prediction["masks"], prediction["boxes"], height, width)
        return result
