"""Mask R-CNN (section 5.2, Table 3) with a PVT backbone, as the official ``mask_rcnn_pvt_*_fpn_1x_coco.py``
configs (MMDetection 2.13): an FPN over C2-C5 plus a max-pooled P6 for the RPN (:mod:`pvtv2.detection.two_stage.rpn`),
then MMDetection's ``StandardRoIHead`` (:mod:`pvtv2.detection.two_stage.roi_heads`): RoIAlign ``aligned=True`` with
adaptive sampling (:mod:`pvtv2.detection.roi_align`), two shared fcs of 1024, class scores and class-specific
deltas, four 3x3 convs and a 2x deconv for 28x28 masks, no GroupNorm; torchvision's ``GeneralizedRCNN``
around them. Also here: what both two-stage detectors share of the release files (RPN key names, the RoI
predictors' names, ``test_cfg``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

from ...engine.release import ReleaseFileError, config_value
from ...errors import InputError
from ..key_map import KeyMap, KeyRule
from ..neck import PyramidBackboneWithFPN, max_pooled_p6, xavier_init
from ..roi_align import ADAPTIVE_SAMPLING, FPN_LEVELS, AlignedMultiScaleRoIAlign
from ..spec import DUMMY_BOX_ROIS, DUMMY_MASK_ROIS, BuildSettings, DetectorSpec, ReleaseLayout
from ..transform import MASK_THRESHOLD, DetectionTransform
from .roi_heads import BoxPredictor, MaskPredictor, StandardRoIHeads
from .rpn import ANCHOR_SIZES, build_rpn

MASK_HEAD_CONVS = 4
# The builders' keywords (torchvision's names) and where they go: the RPN's or the RoI heads' own keyword.
RPN_OPTIONS = {"rpn_pre_nms_top_n_train": "pre_nms_top_n_train", "rpn_pre_nms_top_n_test": "pre_nms_top_n_test",
               "rpn_post_nms_top_n_train": "post_nms_top_n_train", "rpn_post_nms_top_n_test": "post_nms_top_n_test",
               "rpn_nms_thresh": "nms_thresh", "rpn_min_box_size": "min_box_size"}
ROI_OPTIONS = {"box_score_thresh": "score_thresh", "box_nms_thresh": "nms_thresh",
               "box_detections_per_img": "detections_per_img", "box_batch_size_per_image": "batch_size_per_image",
               "box_positive_fraction": "positive_fraction"}


def split_options(options: Mapping[str, Any], detector: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A two-stage builder's keywords as the RPN's and the RoI heads'; an unknown one is an error."""
    unknown = sorted(set(options) - set(RPN_OPTIONS) - set(ROI_OPTIONS))
    if unknown:
        raise InputError(f"{', '.join(unknown)} is not an option of {detector}; expected "
                         f"{', '.join([*RPN_OPTIONS, *ROI_OPTIONS])}")
    return ({ours: options[name] for name, ours in RPN_OPTIONS.items() if name in options},
            {ours: options[name] for name, ours in ROI_OPTIONS.items() if name in options})


def build_mask_rcnn(neck: PyramidBackboneWithFPN, settings: BuildSettings, **options: Any) -> GeneralizedRCNN:
    """Mask R-CNN on ``neck``; ``options``: :data:`RPN_OPTIONS` and :data:`ROI_OPTIONS` (torchvision's names)."""
    rpn_options, roi_options = split_options(options, "mask_rcnn")
    box_head = TwoMLPHead(settings.fpn_channels * 7 * 7, settings.box_head_channels)
    xavier_init(box_head)  # MMDetection's shared fully-connected layers are Xavier-initialised
    heads = StandardRoIHeads(
        AlignedMultiScaleRoIAlign(FPN_LEVELS, 7, ADAPTIVE_SAMPLING), box_head,
        BoxPredictor(settings.box_head_channels, settings.num_classes),
        AlignedMultiScaleRoIAlign(FPN_LEVELS, 14, ADAPTIVE_SAMPLING),
        MaskRCNNHeads(settings.fpn_channels, (settings.mask_head_channels,) * MASK_HEAD_CONVS, 1),
        MaskPredictor(settings.mask_head_channels, settings.mask_head_channels, settings.num_classes), **roi_options)
    return GeneralizedRCNN(neck, build_rpn(settings.fpn_channels, settings.anchor_sizes, **rpn_options), heads,
                           DetectionTransform(settings.min_size, settings.max_size))


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


# -- release files (MMDetection 2.13 names; 3.3's are the same) --------------------------------------------------
def _background_last(scores: torch.Tensor) -> torch.Tensor:
    return torch.cat([scores[1:], scores[:1]])


def _background_first(scores: torch.Tensor) -> torch.Tensor:
    return torch.cat([scores[-1:], scores[:-1]])


# RPNHead (num_convs=1): a plain 3x3 conv, then the objectness and delta convs.
RPN_RULES = (KeyRule("rpn.head.conv.0.0.{p}", "rpn_head.rpn_conv.{p}"),
             KeyRule("rpn.head.cls_logits.{p}", "rpn_head.rpn_cls.{p}"),
             KeyRule("rpn.head.bbox_pred.{p}", "rpn_head.rpn_reg.{p}"))


def predictor_rules(stage: str = "") -> tuple[KeyRule, ...]:
    """BBoxHead's ``fc_cls`` (background last there) and ``fc_reg``, FCNMaskHead's convs, ``upsample`` and
    ``conv_logits``, of one stage (``stage``: "" for Mask R-CNN, "{s}." for the cascade's)."""
    return (KeyRule(f"roi_heads.box_predictor.{stage}cls_score.{{p}}", f"roi_head.bbox_head.{stage}fc_cls.{{p}}",
                    _background_last, _background_first),
            KeyRule(f"roi_heads.box_predictor.{stage}bbox_pred.{{p}}", f"roi_head.bbox_head.{stage}fc_reg.{{p}}"),
            KeyRule(f"roi_heads.mask_head.{stage}{{i}}.0.{{p}}", f"roi_head.mask_head.{stage}convs.{{i}}.conv.{{p}}"),
            KeyRule(f"roi_heads.mask_predictor.{stage}conv5_mask.{{p}}", f"roi_head.mask_head.{stage}upsample.{{p}}"),
            KeyRule(f"roi_heads.mask_predictor.{stage}mask_fcn_logits.{{p}}",
                    f"roi_head.mask_head.{stage}conv_logits.{{p}}"))


# The official test_cfg (configs/_base_/models/mask_rcnn_r50_fpn.py of MMDetection 2.13).
TEST_CFG = dict(rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
                rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100,
                          mask_thr_binary=MASK_THRESHOLD))
# test_cfg entries (section, keys) and the builder keyword each sets.
TEST_CFG_OPTIONS = ((("rpn", "nms_pre"), "rpn_pre_nms_top_n_test"), (("rpn", "max_per_img"), "rpn_post_nms_top_n_test"),
                    (("rpn", "nms", "iou_threshold"), "rpn_nms_thresh"), (("rpn", "min_bbox_size"), "rpn_min_box_size"),
                    (("rcnn", "score_thr"), "box_score_thresh"), (("rcnn", "nms", "iou_threshold"), "box_nms_thresh"),
                    (("rcnn", "max_per_img"), "box_detections_per_img"))


def two_stage_test_options(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """Builder keywords for a release config's ``model.test_cfg`` (the official values where it has none);
    settings this package does not run are errors."""
    test_cfg = config_value(model_config, "test_cfg", default={})
    for section in ("rpn", "rcnn"):
        kind = config_value(test_cfg, section, "nms", "type", default="nms")
        if kind != "nms":
            raise ReleaseFileError(f"the release config's test_cfg.{section}.nms is {kind!r}; only plain 'nms' runs here")
    if config_value(test_cfg, "rpn", "nms_across_levels", default=False):
        raise ReleaseFileError("the release config's test_cfg.rpn.nms_across_levels=True is not supported; the "
                               "proposals are suppressed per level, as the official configs do")
    threshold = config_value(test_cfg, "rcnn", "mask_thr_binary", default=MASK_THRESHOLD)
    if threshold != MASK_THRESHOLD:
        raise ReleaseFileError(f"the release config's test_cfg.rcnn.mask_thr_binary is {threshold}; masks are "
                               f"thresholded at {MASK_THRESHOLD} here")
    found = {option: config_value(test_cfg, *keys) for keys, option in TEST_CFG_OPTIONS}
    return {option: value for option, value in found.items() if value is not None}


def class_count(head: Mapping[str, torch.Tensor], scores_key: str, title: str) -> int:
    """K from a release head's class scores (K + 1 rows, the background's among them)."""
    if scores_key not in head:
        raise ReleaseFileError(f"the file has no {scores_key}, the class scores of MMDetection's {title}")
    return head[scores_key].shape[0] - 1


def release_layout(mmdet_type: str, key_map: KeyMap, scores_key: str, test_cfg: Mapping[str, Any]) -> ReleaseLayout:
    """A two-stage detector's release layout: its key map (no class-count dependent renaming), class scores
    key, the shared ``test_cfg`` reading and its official ``test_cfg``."""
    return ReleaseLayout(
        mmdet_type=mmdet_type, recognise=lambda keys: scores_key in keys and key_map.covers(keys),
        num_classes=lambda head: class_count(head, scores_key, key_map.title),
        head_to_ours=lambda head, num_classes: key_map.to_ours(head),
        head_to_release=lambda head, num_classes: key_map.to_release(head),
        test_options=two_stage_test_options, test_cfg=test_cfg)


KEY_MAP = KeyMap("Mask R-CNN", (*RPN_RULES,
                                KeyRule("roi_heads.box_head.fc6.{p}", "roi_head.bbox_head.shared_fcs.0.{p}"),
                                KeyRule("roi_heads.box_head.fc7.{p}", "roi_head.bbox_head.shared_fcs.1.{p}"),
                                *predictor_rules()))

SPEC = DetectorSpec(
    name="mask_rcnn", title="Mask R-CNN", family="two-stage", with_masks=True, feature_levels=(0, 1, 2, 3),
    extra_levels=max_pooled_p6, anchor_sizes=ANCHOR_SIZES, build=build_mask_rcnn, config_options=two_stage_options,
    flops_forward=mask_rcnn_flops_forward, paper=(3, "maskrcnn_params_M"),
    release=release_layout("MaskRCNN", KEY_MAP, "roi_head.bbox_head.fc_cls.weight", TEST_CFG),
)
