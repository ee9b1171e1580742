"""RetinaNet (section 5.2, Table 3) with a PVT backbone: torchvision's ``RetinaNet`` and head on the FPN's
P3-P7, P6 computed from C5 (MMDetection's ``on_input``), 9 anchors per place (3 ratios x 3 octave scales of
4 x the level's stride), as the official ``retinanet_pvt_*_fpn_1x_coco.py`` configs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead

from .anchors import LevelAnchorGenerator
from .neck import PyramidBackboneWithFPN, p6p7_from_c5
from .spec import BuildSettings, DetectorSpec

ASPECT_RATIOS = (0.5, 1.0, 2.0)
SCALES_PER_OCTAVE = 3
# Base size per level P3-P7: MMDetection's octave base scale 4 x strides 8..128 (torchvision's defaults too).
ANCHOR_SIZES = (32, 64, 128, 256, 512)


def build_retinanet(neck: PyramidBackboneWithFPN, settings: BuildSettings, **kwargs: Any) -> RetinaNet:
    """RetinaNet on ``neck``; ``kwargs`` go to torchvision's ``RetinaNet`` (``score_thresh``, ``nms_thresh``,
    ``detections_per_img``, ...)."""
    octave = [2 ** (i / SCALES_PER_OCTAVE) for i in range(SCALES_PER_OCTAVE)]
    anchors = LevelAnchorGenerator([[s * o for o in octave] for s in settings.anchor_sizes],
                                   [ASPECT_RATIOS] * len(settings.anchor_sizes))
    # K + 1 class channels: the targets' labels are 1..K, and 0 is a class it never sees.
    head = RetinaNetHead(settings.fpn_channels, anchors.num_anchors_per_location()[0], settings.num_classes + 1)
    return RetinaNet(neck, settings.num_classes + 1, anchor_generator=anchors, head=head, min_size=settings.min_size,
                     max_size=settings.max_size, **kwargs)


def dense_flops_forward(detector: nn.Module, images: torch.Tensor) -> None:
    """What MMDetection's FLOP count runs of a one-stage detector: backbone, FPN and head on the image."""
    detector.head(list(detector.backbone(images).values()))


SPEC = DetectorSpec(
    name="retinanet", title="RetinaNet", family="one-stage", with_masks=False, feature_levels=(1, 2, 3),
    extra_levels=p6p7_from_c5, anchor_sizes=ANCHOR_SIZES, build=build_retinanet,
    config_options=lambda model: dict(detections_per_img=model.detections_per_img),
    flops_forward=dense_flops_forward, paper=(3, "retinanet_params_M"),
)
