"""Mask R-CNN (section 5.2, Table 3) with a PVT backbone: torchvision's ``MaskRCNN`` with its v1 heads (RPN
conv, two-fc box head, four-conv mask head, no GroupNorm), as MMDetection's, on an FPN over C2-C5 plus a
max-pooled P6 for the RPN, and MMDetection's RoIAlign (``aligned=True``, adaptive sampling:
:mod:`pvtv2.detection.roi_align`), as the official ``mask_rcnn_pvt_*_fpn_1x_coco.py`` configs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from .neck import PyramidBackboneWithFPN, max_pooled_p6, xavier_init
from .roi_align import ADAPTIVE_SAMPLING, FPN_LEVELS, AlignedMultiScaleRoIAlign
from .spec import DUMMY_BOX_ROIS, DUMMY_MASK_ROIS, BuildSettings, DetectorSpec

ASPECT_RATIOS = (0.5, 1.0, 2.0)
# RPN anchor base size per level P2-P6: MMDetection's scale 8 x strides 4..64 (torchvision's defaults too).
ANCHOR_SIZES = (32, 64, 128, 256, 512)


def rpn_anchors(settings: BuildSettings) -> AnchorGenerator:
    """The RPN's anchors: one base size per level, three ratios."""
    return AnchorGenerator(tuple((s,) for s in settings.anchor_sizes), (ASPECT_RATIOS,) * len(settings.anchor_sizes))


def build_mask_rcnn(neck: PyramidBackboneWithFPN, settings: BuildSettings, **kwargs: Any) -> MaskRCNN:
    """Mask R-CNN on ``neck``; ``kwargs`` go to torchvision's ``MaskRCNN`` (``box_detections_per_img``,
    ``rpn_pre_nms_top_n_test``, ...)."""
    box_head = TwoMLPHead(settings.fpn_channels * 7 * 7, settings.box_head_channels)
    xavier_init(box_head)  # MMDetection's shared fully-connected layers are Xavier-initialised
    mask_head = MaskRCNNHeads(settings.fpn_channels, (settings.mask_head_channels,) * 4, 1)
    return MaskRCNN(
        neck, rpn_anchor_generator=rpn_anchors(settings),
        box_roi_pool=AlignedMultiScaleRoIAlign(FPN_LEVELS, 7, ADAPTIVE_SAMPLING), box_head=box_head,
        box_predictor=FastRCNNPredictor(settings.box_head_channels, settings.num_classes + 1),
        mask_roi_pool=AlignedMultiScaleRoIAlign(FPN_LEVELS, 14, ADAPTIVE_SAMPLING), mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(settings.mask_head_channels, settings.mask_head_channels,
                                         settings.num_classes + 1),
        min_size=settings.min_size, max_size=settings.max_size, **kwargs,
    )


def two_stage_options(model: Any) -> dict[str, Any]:
    """The keywords a training config's model section gives a two-stage detector."""
    return dict(
        box_detections_per_img=model.detections_per_img, box_batch_size_per_image=model.box_batch_size_per_image,
        rpn_pre_nms_top_n_train=model.rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=model.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=model.rpn_post_nms_top_n_train, rpn_post_nms_top_n_test=model.rpn_post_nms_top_n_test,
    )


def dummy_rois(detector: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone, FPN and RPN head on the image, then the RoI features MMDetection's dummy forward gives the
    box head (1,000 RoIs) and the mask head (100)."""
    detector.rpn.head(list(detector.backbone(images).values()))
    channels = detector.backbone.out_channels
    return (images.new_zeros(DUMMY_BOX_ROIS, channels, 7, 7), images.new_zeros(DUMMY_MASK_ROIS, channels, 14, 14))


def mask_rcnn_flops_forward(detector: nn.Module, images: torch.Tensor) -> None:
    box_rois, mask_rois = dummy_rois(detector, images)
    heads = detector.roi_heads
    heads.box_predictor(heads.box_head(box_rois))
    heads.mask_predictor(heads.mask_head(mask_rois))


SPEC = DetectorSpec(
    name="mask_rcnn", title="Mask R-CNN", family="two-stage", with_masks=True, feature_levels=(0, 1, 2, 3),
    extra_levels=max_pooled_p6, anchor_sizes=ANCHOR_SIZES, build=build_mask_rcnn, config_options=two_stage_options,
    flops_forward=mask_rcnn_flops_forward, paper=(3, "maskrcnn_params_M"),
)
