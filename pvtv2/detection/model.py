"""PVT backbones under torchvision's RetinaNet and Mask R-CNN (section 5.2) and under ATSS and GFL (Table 4),
with an FPN neck.

The detectors are composed from torchvision's pieces (FeaturePyramidNetwork, anchor generators, heads,
losses, NMS, RoIAlign); ours are the backbone adapter and, for ATSS and GFL, what torchvision lacks
(:mod:`pvtv2.detection.dense_heads`). The necks follow the paper's MMDetection configs:

* RetinaNet: FPN on strides 8, 16, 32 (C3-C5, ``start_level=1``) and two extra levels P6, P7 computed
  from C5 (``add_extra_convs='on_input'``): 5 levels of 256 channels, 9 anchors per place.
* ATSS, GFL: the same FPN, with P6 computed from P5's output (``add_extra_convs='on_output'``); one
  anchor per place.
* All three: P7 is a stride-2 conv of P6 itself, with no ReLU between (MMDetection's
  ``relu_before_extra_convs=False``; torchvision's ``LastLevelP6P7`` puts one there).
* Mask R-CNN: FPN on all four levels (C2-C5) plus a max-pooled P6 for the RPN; torchvision's v1 heads
  (RPN conv, two-fc box head, four-conv mask head, no GroupNorm), as MMDetection's, and MMDetection's
  RoIAlign (``aligned=True``, adaptive sampling: :mod:`pvtv2.detection.roi_align`).
* Cascade Mask R-CNN (Table 4): Mask R-CNN's neck and RPN, with three box stages and three mask heads
  (:mod:`pvtv2.detection.cascade`).
* Sparse R-CNN (Table 4): FPN on C2-C5 with no extra level, 300 learned proposals, six dynamic stages
  (:mod:`pvtv2.detection.sparse_rcnn`).

Targets use labels 1..K for K classes; 0 is Mask R-CNN's background and a class RetinaNet never sees,
so both detectors read the same targets (both heads get K + 1 outputs; ATSS's and GFL's get K).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from ..errors import InputError
from ..models import create_model
from .config import DetDataConfig, DetModelConfig
from .cascade import CascadeRoIHeads
from .sparse_rcnn import SparseRCNN
from .roi_align import ADAPTIVE_SAMPLING, FPN_LEVELS, AlignedMultiScaleRoIAlign
from .dense_heads import ATSS, GFL, GFL_REG_MAX, GROUP_NORM_GROUPS, DenseHead, LevelAnchorGenerator


DETECTORS = ("retinanet", "mask_rcnn", "atss", "gfl", "cascade_mask_rcnn", "sparse_rcnn")
Detector = Literal["retinanet", "mask_rcnn", "atss", "gfl", "cascade_mask_rcnn", "sparse_rcnn"]
DENSE = ("retinanet", "atss", "gfl")  # one-stage: FPN on C3-C5 plus P6, P7

# Anchor base sizes per FPN level at the paper's scale (shorter side 800): torchvision's defaults, which are
# MMDetection's (RetinaNet: octave base 4 x strides 8..128; Mask R-CNN: scale 8 x strides 4..64), and the
# official ATSS and GFL configs' (octave base scale 8 x strides 8..128, one scale, ratio 1).
DEFAULT_ANCHOR_SIZES = {"retinanet": (32, 64, 128, 256, 512), "mask_rcnn": (32, 64, 128, 256, 512),
                        "atss": (64, 128, 256, 512, 1024), "gfl": (64, 128, 256, 512, 1024),
                        "cascade_mask_rcnn": (32, 64, 128, 256, 512)}
ASPECT_RATIOS = (0.5, 1.0, 2.0)
RETINANET_SCALES_PER_OCTAVE = 3


class PyramidBackboneWithFPN(nn.Module):
    """A features-only PVT (strides 4..32) followed by an FPN; returns the FPN levels as an ordered dict,
    with ``out_channels`` set, as torchvision's detectors expect of a backbone."""

    def __init__(self, body: nn.Module, fpn: FeaturePyramidNetwork, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)  # [(B, C_i, H / s_i, W / s_i)] for the body's out_indices
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


class ExtraLevelsP6P7(LastLevelP6P7):
    """P6, a stride-2 conv of C5 (RetinaNet, MMDetection's ``on_input``) or of P5 (ATSS, GFL: ``on_output``),
    and P7, a stride-2 conv of P6 with no ReLU before it (MMDetection's ``relu_before_extra_convs=False``).

    torchvision's block takes P5 instead of C5 whenever their widths agree, which would change the neck of
    backbones with 256-channel C5 (PVTv2-B0) under a 256-channel FPN, and applies ReLU to P6 before P7;
    this one takes what it is told and no ReLU. Same convs (``p6``, ``p7``), so the same weights load.
    """

    def __init__(self, in_channels: int, out_channels: int, from_p5: bool = False) -> None:
        super().__init__(in_channels, out_channels)
        self.use_P5 = from_p5

    def forward(self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]) -> tuple[list[torch.Tensor], list[str]]:
        p6 = self.p6(p[-1] if self.use_P5 else c[-1])
        p7 = self.p7(p6)
        return [*p, p6, p7], [*names, "p6", "p7"]


def build_backbone(
    kind: Detector,
    backbone: str,
    *,
    fpn_channels: int = 256,
    pretrained_backbone: str | os.PathLike | Mapping | bool | None = None,
    drop_path_rate: float = 0.0,
) -> PyramidBackboneWithFPN:
    """PVT ``backbone`` with the FPN neck of detector ``kind`` (see the module docstring)."""
    _check_kind(kind)
    out_indices = (1, 2, 3) if kind in DENSE else (0, 1, 2, 3)
    body = create_model(backbone, features_only=True, out_indices=out_indices, pretrained=pretrained_backbone,
                        drop_path_rate=drop_path_rate)
    channels = body.feature_info.channels()
    if kind == "retinanet":
        # P6 from C5 ("on_input"): the extra block sees C5's channels, not P5's.
        extra: nn.Module = ExtraLevelsP6P7(channels[-1], fpn_channels)
    elif kind in DENSE:
        extra = ExtraLevelsP6P7(fpn_channels, fpn_channels, from_p5=True)  # "on_output"
    elif kind == "sparse_rcnn":
        extra = None  # num_outs=4: P2-P5 only
    else:
        extra = LastLevelMaxPool()
    fpn = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=extra)
    _xavier_init(fpn)  # the paper initialises the new layers with Xavier, as MMDetection's FPN does
    return PyramidBackboneWithFPN(body, fpn, fpn_channels)


def build_detector(
    kind: Detector,
    backbone: str = "pvt_v2_b2",
    *,
    num_classes: int = 80,
    pretrained_backbone: str | os.PathLike | Mapping | bool | None = None,
    drop_path_rate: float = 0.0,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[int] | None = None,
    box_head_channels: int = 1024,
    mask_head_channels: int = 256,
    **detector_kwargs: Any,
) -> nn.Module:
    """RetinaNet, Mask R-CNN, ATSS, GFL, Cascade Mask R-CNN or Sparse R-CNN with PVT ``backbone`` and an FPN,
    for ``num_classes`` object classes.

    ``min_size``/``max_size``: evaluation images are resized to a shorter side of ``min_size`` (the last
    one when several) and a longer side of at most ``max_size``; training images are resized by the data
    pipeline (:mod:`pvtv2.detection.data`) and enter the model as they are. ``anchor_sizes``: one base
    size per FPN level (default: the paper's, for 800-pixel images). ``fpn_channels``,
    ``box_head_channels`` and ``mask_head_channels`` default to the paper's (256, 1024, 256); smaller
    values make quick models for small images (``box_head_channels`` and ``mask_head_channels`` are the
    two-stage detectors' only; Cascade's box head convs are ``fpn_channels`` wide, as the official 256). Other keywords go to torchvision's detector (``score_thresh``, ``nms_thresh``,
    ``detections_per_img``, ``box_batch_size_per_image``...; ATSS and GFL: :class:`DenseDetector`'s; Sparse
    R-CNN: :class:`SparseRCNN`'s, ``num_proposals``, ``num_stages``, ``detections_per_img``...).
    """
    _check_kind(kind)
    if num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}")
    body_and_neck = build_backbone(kind, backbone, fpn_channels=fpn_channels,
                                   pretrained_backbone=pretrained_backbone, drop_path_rate=drop_path_rate)
    min_sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    if kind == "sparse_rcnn":
        if anchor_sizes is not None:
            raise InputError("anchor_sizes does not apply to sparse_rcnn, which has learned proposals, not anchors")
        return SparseRCNN(body_and_neck, num_classes, min_size=min_sizes, max_size=max_size, _skip_resize=True,
                          **detector_kwargs)
    sizes = tuple(anchor_sizes) if anchor_sizes is not None else DEFAULT_ANCHOR_SIZES[kind]
    if len(sizes) != 5:
        raise InputError(f"anchor_sizes needs one base size per FPN level (5), got {list(sizes)}")
    common = dict(min_size=min_sizes, max_size=max_size, _skip_resize=True, **detector_kwargs)
    if kind == "retinanet":
        octave = [2 ** (i / RETINANET_SCALES_PER_OCTAVE) for i in range(RETINANET_SCALES_PER_OCTAVE)]
        anchors: AnchorGenerator = LevelAnchorGenerator([[s * o for o in octave] for s in sizes],
                                                        [ASPECT_RATIOS] * len(sizes))
        head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes + 1)
        return RetinaNet(body_and_neck, num_classes + 1, anchor_generator=anchors, head=head, **common)
    if kind in ("atss", "gfl"):
        if fpn_channels % GROUP_NORM_GROUPS:
            raise InputError(f"{kind}'s head has GroupNorm({GROUP_NORM_GROUPS}): fpn_channels must be a multiple of "
                             f"{GROUP_NORM_GROUPS}, got {fpn_channels}")
        anchors = LevelAnchorGenerator([[s] for s in sizes], [[1.0]] * len(sizes))  # one per place
        if kind == "atss":
            dense_head = DenseHead(fpn_channels, num_classes, 4, with_centerness=True)
            return ATSS(body_and_neck, dense_head, anchors, **common)
        return GFL(body_and_neck, DenseHead(fpn_channels, num_classes, 4 * (GFL_REG_MAX + 1)), anchors, **common)

    anchors = AnchorGenerator(tuple((s,) for s in sizes), (ASPECT_RATIOS,) * len(sizes))
    if kind == "cascade_mask_rcnn":
        return _cascade_mask_rcnn(body_and_neck, anchors, num_classes, fpn_channels, box_head_channels,
                                  mask_head_channels, common)
    box_head = TwoMLPHead(fpn_channels * 7 * 7, box_head_channels)
    _xavier_init(box_head)  # MMDetection's shared fully-connected layers are Xavier-initialised
    mask_head = MaskRCNNHeads(fpn_channels, (mask_head_channels,) * 4, 1)
    return MaskRCNN(
        body_and_neck, rpn_anchor_generator=anchors,
        box_roi_pool=AlignedMultiScaleRoIAlign(FPN_LEVELS, 7, ADAPTIVE_SAMPLING), box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head_channels, num_classes + 1),
        mask_roi_pool=AlignedMultiScaleRoIAlign(FPN_LEVELS, 14, ADAPTIVE_SAMPLING), mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes + 1),
        **common,
    )


# MaskRCNN's keywords for its RoIHeads, which the cascade's heads take instead (torchvision name: ours).
CASCADE_ROI_KWARGS = {"box_score_thresh": "score_thresh", "box_nms_thresh": "nms_thresh",
                      "box_detections_per_img": "detections_per_img",
                      "box_batch_size_per_image": "batch_size_per_image", "box_positive_fraction": "positive_fraction"}


def _cascade_mask_rcnn(body_and_neck: PyramidBackboneWithFPN, anchors: AnchorGenerator, num_classes: int,
                       fpn_channels: int, box_head_channels: int, mask_head_channels: int,
                       common: dict[str, Any]) -> MaskRCNN:
    """torchvision's MaskRCNN (transform, RPN) with its RoI heads replaced by the cascade's."""
    kwargs = dict(common)
    heads_kwargs = {ours: kwargs.pop(theirs) for theirs, ours in CASCADE_ROI_KWARGS.items() if theirs in kwargs}
    for name in ("box_fg_iou_thresh", "box_bg_iou_thresh", "bbox_reg_weights"):
        if name in kwargs:  # per stage in the cascade: the module constants of pvtv2.detection.cascade
            raise InputError(f"{name} does not apply to cascade_mask_rcnn, whose stages have their own")
    heads = CascadeRoIHeads(fpn_channels, num_classes, box_head_channels=box_head_channels,
                            mask_head_channels=mask_head_channels, **heads_kwargs)
    # MaskRCNN is given the first stage's modules so that it builds no default heads; they are then
    # replaced by the whole cascade, which holds them.
    detector = MaskRCNN(body_and_neck, rpn_anchor_generator=anchors, box_roi_pool=heads.box_roi_pool,
                        box_head=heads.box_head[0], box_predictor=heads.box_predictor[0],
                        mask_roi_pool=heads.mask_roi_pool, mask_head=heads.mask_head[0],
                        mask_predictor=heads.mask_predictor[0], **kwargs)
    detector.roi_heads = heads
    return detector


def _check_kind(kind: str) -> None:
    if kind not in DETECTORS:
        raise InputError(f"unknown detector {kind!r}; expected one of {', '.join(DETECTORS)}")


def _xavier_init(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and layer.weight.device.type != "meta":
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def build_from_config(model: DetModelConfig, data: DetDataConfig, num_classes: int, pretrained: bool = True) -> nn.Module:
    """The detector a training config describes; ``pretrained=False`` leaves out the backbone weights
    (when a detector checkpoint is loaded over it anyway)."""
    weights = model.pretrained if pretrained else None  # "official", a checkpoint path, or None
    kwargs: dict[str, Any] = dict(detections_per_img=model.detections_per_img)
    if model.detector == "sparse_rcnn":
        kwargs["num_proposals"] = model.num_proposals
    elif model.detector not in DENSE:
        kwargs = dict(
            box_detections_per_img=model.detections_per_img, box_batch_size_per_image=model.box_batch_size_per_image,
            rpn_pre_nms_top_n_train=model.rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=model.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_train=model.rpn_post_nms_top_n_train,
            rpn_post_nms_top_n_test=model.rpn_post_nms_top_n_test,
        )
    return build_detector(
        model.detector, model.backbone, num_classes=num_classes, pretrained_backbone=weights,
        drop_path_rate=model.drop_path_rate, min_size=data.min_size, max_size=data.max_size,
        fpn_channels=model.fpn_channels, anchor_sizes=model.anchor_sizes, box_head_channels=model.box_head_channels,
        mask_head_channels=model.mask_head_channels, **kwargs,
    )
