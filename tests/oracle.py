"""Test oracle: MMDetection 3.3 and MMSegmentation 1.2.2 running models on the official PVT release layout.

The official PVT repository (whai362/PVT) released its detectors as MMDetection 2.13 checkpoints and its
Semantic FPN models as MMSegmentation 0.13 checkpoints: ``{"meta": {..., "config": <resolved config text>},
"state_dict": {...}}`` with the backbone in the official repository's own key layout (``patch_embed1.proj``,
``block1.0.attn.q``, ``norm1`` ...) and necks and heads under MMDetection 2.x / MMSegmentation 0.x names.
This module is the other side of our tests for loaders of such files: it builds the same detector in
MMDetection 3.3 (the segmentor in MMSegmentation 1.2.2) with random but calibrated weights, writes them as a
release-layout file, and runs the upstream test pipeline and post-processing on a real photo, so that a test can
load the file into our own model and compare the detections (``compare_detections``) or label maps.

What is translated, and how faithful it is:

* The configs are the official ones (``official_config_text``) with their ``_base_`` files resolved the way
  mmcv 1.x's ``Config`` merges them; the MMDetection 3.3 model (``build_mmdet_model``) is derived from the same
  resolved dict: ``pretrained`` and ``train_cfg`` dropped (inference only), the 2.x-only RPN test keys
  ``nms_post``/``nms_across_levels`` dropped, a ``DetDataPreprocessor`` added, and the backbone replaced by
  MMDetection 3.3's own ``PyramidVisionTransformer``/``PyramidVisionTransformerV2``.
* MMDetection 3.3's PVT uses LayerNorm eps 1e-6 everywhere, the official backbones (and the release files'
  training) use PyTorch's default 1e-5 in the patch-embedding norms and the spatial-reduction norms; with
  ``official_eps=True`` (the default) those norms are set to 1e-5 so that the oracle computes what the official
  code computes.
* mmcv-lite has no compiled ops: ``install_mmcv_ops_shim`` provides ``nms`` and ``roi_align_forward`` through
  torchvision with mmcv's semantics (score order of mmcv's CPU kernel; RoIAlign average pooling with mmcv's
  ``aligned``/``sampling_ratio`` meaning). Every other op raises if inference ever reaches it.
* Random weights: every parameter and BatchNorm statistic random (a wrong key mapping changes the outputs), the
  prediction layers scaled (class logits channel by channel), and the foreground class biases shifted so that
  50-100 detections score above 0.05 on both test photos (``test_photo()`` and ``test_photo((800, 1216))``).
* The resolved RetinaNet, Mask R-CNN and Semantic FPN configs carry the R-50 base's backbone keys (depth=50,
  norm_cfg, ...) merged into ``backbone=dict(type='pvt_v2_b0', ...)``, as mmcv 1.x merges them: a loader has to
  ignore them.

MMDetection 3.3 against 2.13 at inference (from both versions' sources):

* RetinaNet / ATSS / GFL ``nms_pre``: 2.13 keeps a level's 1000 anchors with the highest class score (ATSS:
  score x centerness) with all their classes, then filters the (anchor, class) pairs at ``score_thr``; 3.3
  filters the pairs at ``score_thr`` first and keeps the 1000 best pairs (ATSS: by class score alone). Same
  candidates whenever fewer than 1000 anchors of a level pass ``score_thr`` (the calibrated models here have
  at most about 300).
* 3.3's dense heads drop boxes of zero width or height (``min_bbox_size=0`` after rescaling); 2.13's
  RetinaNet/ATSS/GFL heads keep them (2.13 applies ``min_bbox_size`` in the RPN only).
* ATSS (both): ``score_thr`` applies to the class score before the centerness product, so final scores can be
  below 0.05.
* Sparse R-CNN (both): boxes not clipped (``clip_border=False``), no NMS and no score threshold: the 300 best
  (proposal, class) pairs, in ``topk(sorted=False)`` order.
* RPN, RoI box heads, mask pasting, Cascade's averaging of the stages' logits and masks: the same in both.

Importing this module is cheap; MMDetection/MMSegmentation are imported on first use.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------------------------
# mmcv ops through torchvision
# ----------------------------------------------------------------------------------------------------------------

_SHIM_MARK = "_pvtv2_oracle_shim"


def _shim_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """mmcv's ``nms`` (CPU kernel semantics): indices kept, in the kernel's visiting order.

    mmcv orders the boxes with ``scores.sort(0, descending=True)`` and suppresses a later box when its IoU
    with a kept one is ``> iou_threshold``. torchvision's NMS has the same rule but breaks score ties its own
    way, so it is handed mmcv's order as strictly decreasing ranks."""
    import torchvision

    if offset != 0:
        raise NotImplementedError("mmcv nms with offset=1 (legacy pixel convention) is not shimmed")
    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    order = torch.sort(scores, 0, descending=True)[1]
    ranks = torch.arange(order.numel(), 0, -1, dtype=torch.float32, device=boxes.device)
    keep = torchvision.ops.nms(boxes[order].float(), ranks, float(iou_threshold))
    return order[keep]


def _shim_roi_align_forward(input: torch.Tensor, rois: torch.Tensor, output: torch.Tensor,
                            argmax_y: torch.Tensor, argmax_x: torch.Tensor, aligned_height: int,
                            aligned_width: int, spatial_scale: float, sampling_ratio: int, pool_mode: int,
                            aligned: bool) -> None:
    """mmcv's ``roi_align_forward``: average pooling only (``pool_mode == 1``), written into ``output``."""
    import torchvision

    if pool_mode != 1:
        raise NotImplementedError("mmcv RoIAlign max pooling is not shimmed")
    output.copy_(torchvision.ops.roi_align(input, rois, (int(aligned_height), int(aligned_width)),
                                           float(spatial_scale), int(sampling_ratio), bool(aligned)))


def install_mmcv_ops_shim() -> None:
    """Make ``import mmcv.ops`` (and so ``mmdet.models``) work under mmcv-lite. Idempotent.

    Installs a module ``mmcv._ext`` whose ``nms`` and ``roi_align_forward`` run torchvision's kernels with
    mmcv's semantics; any other compiled op raises ``NotImplementedError`` when called. Does nothing when a real
    compiled ``mmcv._ext`` (mmcv-full) can be imported."""
    existing = sys.modules.get("mmcv._ext")
    if existing is not None:
        return
    try:  # a real mmcv-full build: keep its ops
        import importlib

        importlib.import_module("mmcv._ext")
        return
    except ImportError:
        pass

    ext = types.ModuleType("mmcv._ext")

    def _missing(name: str) -> Callable[..., Any]:
        def op(*args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError(f"mmcv op {name!r} is not available under mmcv-lite (tests/oracle.py shim)")
        return op

    def _getattr(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing(name)

    ext.nms = _shim_nms  # type: ignore[attr-defined]
    ext.roi_align_forward = _shim_roi_align_forward  # type: ignore[attr-defined]
    ext.__getattr__ = _getattr  # type: ignore[attr-defined]
    ext.__file__ = __file__
    setattr(ext, _SHIM_MARK, True)
    sys.modules["mmcv._ext"] = ext


_REGISTERED = {"mmdet": False, "mmseg": False}


def _import_mmdet() -> None:
    install_mmcv_ops_shim()
    if not _REGISTERED["mmdet"]:
        import mmdet.models  # noqa: F401  registers the modules
        from mmdet.utils import register_all_modules

        register_all_modules(init_default_scope=False)
        _REGISTERED["mmdet"] = True


def _import_mmseg() -> None:
    _import_mmdet()  # the segmentor's backbone is mmdet's PVT
    if not _REGISTERED["mmseg"]:
        import mmseg.models  # noqa: F401
        from mmseg.utils import register_all_modules

        register_all_modules(init_default_scope=False)
        _REGISTERED["mmseg"] = True


# ----------------------------------------------------------------------------------------------------------------
# Backbones, release kinds
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Backbone:
    name: str  # the official registry name (pvt_v2_b0, pvt_tiny, ...)
    version: int  # 1 or 2
    embed_dims: int  # first stage width; stage widths are embed_dims * [1, 2, 5, 8]
    depths: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int]
    short: str  # the token in the official config file names (pvt_v2_b0, pvt_t, ...)

    @property
    def channels(self) -> list[int]:
        return [self.embed_dims * h for h in (1, 2, 5, 8)]


BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("pvt_v2_b0", 2, 32, (2, 2, 2, 2), (8, 8, 4, 4), "pvt_v2_b0"),
    Backbone("pvt_v2_b1", 2, 64, (2, 2, 2, 2), (8, 8, 4, 4), "pvt_v2_b1"),
    Backbone("pvt_v2_b2", 2, 64, (3, 4, 6, 3), (8, 8, 4, 4), "pvt_v2_b2"),
    Backbone("pvt_v2_b3", 2, 64, (3, 4, 18, 3), (8, 8, 4, 4), "pvt_v2_b3"),
    Backbone("pvt_v2_b4", 2, 64, (3, 8, 27, 3), (8, 8, 4, 4), "pvt_v2_b4"),
    Backbone("pvt_v2_b5", 2, 64, (3, 6, 40, 3), (4, 4, 4, 4), "pvt_v2_b5"),
    Backbone("pvt_tiny", 1, 64, (2, 2, 2, 2), (8, 8, 4, 4), "pvt_t"),
    Backbone("pvt_small", 1, 64, (3, 4, 6, 3), (8, 8, 4, 4), "pvt_s"),
    Backbone("pvt_medium", 1, 64, (3, 4, 18, 3), (8, 8, 4, 4), "pvt_m"),
    Backbone("pvt_large", 1, 64, (3, 8, 27, 3), (8, 8, 4, 4), "pvt_l"),
)}
# pvt_v2_b2_li (linear spatial reduction) has no MMDetection 3.3 counterpart, so it is not offered here.

KINDS: tuple[str, ...] = ("retinanet", "mask_rcnn", "atss", "gfl", "cascade_mask_rcnn", "sparse_rcnn")
MASK_KINDS: frozenset[str] = frozenset({"mask_rcnn", "cascade_mask_rcnn"})
DEFAULT_BACKBONE: dict[str, str] = {"retinanet": "pvt_v2_b0", "mask_rcnn": "pvt_v2_b0", "atss": "pvt_v2_b2",
                                    "gfl": "pvt_v2_b2", "cascade_mask_rcnn": "pvt_v2_b2",
                                    "sparse_rcnn": "pvt_v2_b2"}
# The official config file of each kind, with the backbone token written as {bb}.
_CONFIG_STEMS: dict[str, str] = {
    "retinanet": "retinanet_{bb}_fpn_1x_coco",
    "mask_rcnn": "mask_rcnn_{bb}_fpn_1x_coco",
    "atss": "atss_{bb}_fpn_3x_mstrain_fp16",
    "gfl": "gfl_{bb}_fpn_3x_mstrain_fp16",
    "cascade_mask_rcnn": "cascade_mask_rcnn_{bb}_fpn_3x_mstrain_fp16",
    "sparse_rcnn": "sparse_rcnn_{bb}_fpn_300_proposals_crop_mstrain_480-800_3x_coco",
}


@dataclass(frozen=True)
class Release:
    """One detector the official repository released (a config file of detection/configs/)."""
    kind: str
    backbone: str

    @property
    def config_name(self) -> str:
        return config_name(self.kind, self.backbone)


# The seven released detectors the tests need. The last four were released with PVTv2-B2 (and B2-Li);
# ``build_mmdet_model(kind, "pvt_v2_b0")`` gives a faster B0 variant of them with the same heads.
DETECTORS: dict[str, Release] = {
    "retinanet_pvt_v2_b0": Release("retinanet", "pvt_v2_b0"),
    "retinanet_pvt_t": Release("retinanet", "pvt_tiny"),
    "mask_rcnn_pvt_v2_b0": Release("mask_rcnn", "pvt_v2_b0"),
    "atss_pvt_v2_b2": Release("atss", "pvt_v2_b2"),
    "gfl_pvt_v2_b2": Release("gfl", "pvt_v2_b2"),
    "cascade_mask_rcnn_pvt_v2_b2": Release("cascade_mask_rcnn", "pvt_v2_b2"),
    "sparse_rcnn_pvt_v2_b2": Release("sparse_rcnn", "pvt_v2_b2"),
}


def _backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown detector kind {kind!r}; one of {KINDS}")
    return kind


def config_name(kind: str, backbone: str) -> str:
    """The official config file stem, e.g. ``atss_pvt_v2_b2_fpn_3x_mstrain_fp16``."""
    return _CONFIG_STEMS[_kind(kind)].format(bb=_backbone(backbone).short)


# ----------------------------------------------------------------------------------------------------------------
# Official configs (MMDetection 2.13 / MMSegmentation 0.13), resolved like mmcv 1.x's Config
# ----------------------------------------------------------------------------------------------------------------

COCO_MEAN = [123.675, 116.28, 103.53]
COCO_STD = [58.395, 57.12, 57.375]
_DELETE = "_delete_"


def _merge(child: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """mmcv 1.x ``Config._merge_a_into_b``: dicts merge key by key (base order first, new keys appended),
    anything else, or a dict carrying ``_delete_=True``, replaces."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and key in out and isinstance(out[key], dict) and not value.get(_DELETE):
            out[key] = _merge(value, out[key])
        else:
            out[key] = _without_delete(value)
    return out


def _without_delete(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_delete(v) for k, v in value.items() if k != _DELETE}
    if isinstance(value, list):
        return [_without_delete(v) for v in value]
    return value


def _resolve(bases: list[dict[str, Any]], child: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for base in bases:
        clash = set(merged) & set(base)
        assert not clash, clash
        merged.update(copy.deepcopy(base))
    return _merge(copy.deepcopy(child), merged)


def _norm_cfg() -> dict[str, Any]:
    return dict(mean=list(COCO_MEAN), std=list(COCO_STD), to_rgb=True)


def _resnet50() -> dict[str, Any]:
    return dict(type="ResNet", depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
                norm_cfg=dict(type="BN", requires_grad=True), norm_eval=True, style="pytorch")


def _delta_coder(stds: list[float], **extra: Any) -> dict[str, Any]:
    return dict(type="DeltaXYWHBBoxCoder", **extra, target_means=[0.0, 0.0, 0.0, 0.0], target_stds=stds)


def _rpn_head(loss_bbox: dict[str, Any]) -> dict[str, Any]:
    return dict(type="RPNHead", in_channels=256, feat_channels=256,
                anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                                      strides=[4, 8, 16, 32, 64]),
                bbox_coder=_delta_coder([1.0, 1.0, 1.0, 1.0]),
                loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0), loss_bbox=loss_bbox)


def _roi_extractor(size: int, sampling_ratio: int = 0) -> dict[str, Any]:
    return dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=size,
                                                          sampling_ratio=sampling_ratio),
                out_channels=256, featmap_strides=[4, 8, 16, 32])


def _fcn_mask_head() -> dict[str, Any]:
    return dict(type="FCNMaskHead", num_convs=4, in_channels=256, conv_out_channels=256, num_classes=80,
                loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))


def _max_iou_assigner(pos: float, neg: float, min_pos: float, low_quality: bool | None = None) -> dict[str, Any]:
    a: dict[str, Any] = dict(type="MaxIoUAssigner", pos_iou_thr=pos, neg_iou_thr=neg, min_pos_iou=min_pos)
    if low_quality is not None:
        a["match_low_quality"] = low_quality
    a["ignore_iof_thr"] = -1
    return a


def _random_sampler(num: int, pos_fraction: float, add_gt: bool) -> dict[str, Any]:
    return dict(type="RandomSampler", num=num, pos_fraction=pos_fraction, neg_pos_ub=-1, add_gt_as_proposals=add_gt)


def _base_retinanet_r50_fpn() -> dict[str, Any]:  # _base_/models/retinanet_r50_fpn.py
    return dict(model=dict(
        type="RetinaNet", pretrained="torchvision://resnet50", backbone=_resnet50(),
        neck=dict(type="FPN", in_channels=[256, 512, 1024, 2048], out_channels=256, start_level=1,
                  add_extra_convs="on_input", num_outs=5),
        bbox_head=dict(
            type="RetinaHead", num_classes=80, in_channels=256, stacked_convs=4, feat_channels=256,
            anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3,
                                  ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
            bbox_coder=_delta_coder([1.0, 1.0, 1.0, 1.0]),
            loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
        train_cfg=dict(assigner=_max_iou_assigner(0.5, 0.4, 0), allowed_border=-1, pos_weight=-1, debug=False),
        test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5),
                      max_per_img=100)))


def _base_mask_rcnn_r50_fpn() -> dict[str, Any]:  # _base_/models/mask_rcnn_r50_fpn.py
    return dict(model=dict(
        type="MaskRCNN", pretrained="torchvision://resnet50", backbone=_resnet50(),
        neck=dict(type="FPN", in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5),
        rpn_head=_rpn_head(dict(type="L1Loss", loss_weight=1.0)),
        roi_head=dict(
            type="StandardRoIHead", bbox_roi_extractor=_roi_extractor(7),
            bbox_head=dict(type="Shared2FCBBoxHead", in_channels=256, fc_out_channels=1024, roi_feat_size=7,
                           num_classes=80, bbox_coder=_delta_coder([0.1, 0.1, 0.2, 0.2]), reg_class_agnostic=False,
                           loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                           loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
            mask_roi_extractor=_roi_extractor(14), mask_head=_fcn_mask_head()),
        train_cfg=dict(
            rpn=dict(assigner=_max_iou_assigner(0.7, 0.3, 0.3, True), sampler=_random_sampler(256, 0.5, False),
                     allowed_border=-1, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7),
                              min_bbox_size=0),
            rcnn=dict(assigner=_max_iou_assigner(0.5, 0.5, 0.5, True), sampler=_random_sampler(512, 0.25, True),
                      mask_size=28, pos_weight=-1, debug=False)),
        test_cfg=dict(
            rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100,
                      mask_thr_binary=0.5))))


_CASCADE_STDS = ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])


def _base_cascade_mask_rcnn_pvtv2_b2_fpn() -> dict[str, Any]:  # _base_/models/cascade_mask_rcnn_pvtv2_b2_fpn.py
    def bbox_head(stds: list[float]) -> dict[str, Any]:
        return dict(type="Shared2FCBBoxHead", in_channels=256, fc_out_channels=1024, roi_feat_size=7,
                    num_classes=80, bbox_coder=_delta_coder(stds), reg_class_agnostic=True,
                    loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                    loss_bbox=dict(type="SmoothL1Loss", beta=1.0, loss_weight=1.0))

    def rcnn_train(iou: float) -> dict[str, Any]:
        return dict(assigner=_max_iou_assigner(iou, iou, iou, False), sampler=_random_sampler(512, 0.25, True),
                    mask_size=28, pos_weight=-1, debug=False)

    return dict(model=dict(
        type="CascadeRCNN", backbone=dict(type="pvt_v2_b2", style="pytorch"),
        neck=dict(type="FPN", in_channels=[64, 128, 320, 512], out_channels=256, num_outs=5),
        rpn_head=_rpn_head(dict(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=1.0)),
        roi_head=dict(type="CascadeRoIHead", num_stages=3, stage_loss_weights=[1, 0.5, 0.25],
                      bbox_roi_extractor=_roi_extractor(7), bbox_head=[bbox_head(s) for s in _CASCADE_STDS],
                      mask_roi_extractor=_roi_extractor(14), mask_head=_fcn_mask_head()),
        train_cfg=dict(
            rpn=dict(assigner=_max_iou_assigner(0.7, 0.3, 0.3, True), sampler=_random_sampler(256, 0.5, False),
                     allowed_border=0, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_across_levels=False, nms_pre=2000, nms_post=2000, max_per_img=2000,
                              nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=[rcnn_train(0.5), rcnn_train(0.6), rcnn_train(0.7)]),
        test_cfg=dict(
            rpn=dict(nms_across_levels=False, nms_pre=1000, nms_post=1000, max_per_img=1000,
                     nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100,
                      mask_thr_binary=0.5))))


def _coco_test_pipeline() -> list[dict[str, Any]]:
    return [dict(type="LoadImageFromFile"),
            dict(type="MultiScaleFlipAug", img_scale=(1333, 800), flip=False, transforms=[
                dict(type="Resize", keep_ratio=True), dict(type="RandomFlip"),
                dict(type="Normalize", **_norm_cfg()), dict(type="Pad", size_divisor=32),
                dict(type="ImageToTensor", keys=["img"]), dict(type="Collect", keys=["img"])])]


def _base_coco(instance: bool) -> dict[str, Any]:  # _base_/datasets/coco_detection.py, coco_instance.py
    root = "data/coco/"
    keys = ["img", "gt_bboxes", "gt_labels"] + (["gt_masks"] if instance else [])
    load = dict(type="LoadAnnotations", with_bbox=True, **(dict(with_mask=True) if instance else {}))
    train = [dict(type="LoadImageFromFile"), load, dict(type="Resize", img_scale=(1333, 800), keep_ratio=True),
             dict(type="RandomFlip", flip_ratio=0.5), dict(type="Normalize", **_norm_cfg()),
             dict(type="Pad", size_divisor=32), dict(type="DefaultFormatBundle"), dict(type="Collect", keys=keys)]

    def split(name: str, pipeline: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(type="CocoDataset", ann_file=root + f"annotations/instances_{name}2017.json",
                    img_prefix=root + f"{name}2017/", pipeline=pipeline)

    return dict(
        dataset_type="CocoDataset", data_root=root, img_norm_cfg=_norm_cfg(), train_pipeline=train,
        test_pipeline=_coco_test_pipeline(),
        data=dict(samples_per_gpu=2, workers_per_gpu=2, train=split("train", train),
                  val=split("val", _coco_test_pipeline()), test=split("val", _coco_test_pipeline())),
        evaluation=dict(metric=["bbox", "segm"]) if instance else dict(interval=1, metric="bbox"))


def _base_schedule_1x() -> dict[str, Any]:  # _base_/schedules/schedule_1x.py
    return dict(optimizer=dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=0.0001),
                optimizer_config=dict(grad_clip=None),
                lr_config=dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001, step=[8, 11]),
                runner=dict(type="EpochBasedRunner", max_epochs=12))


def _base_det_runtime() -> dict[str, Any]:  # _base_/default_runtime.py
    return dict(checkpoint_config=dict(interval=1), log_config=dict(interval=50, hooks=[dict(type="TextLoggerHook")]),
                custom_hooks=[dict(type="NumClassCheckHook")], dist_params=dict(backend="nccl"), log_level="INFO",
                load_from=None, resume_from=None, workflow=[("train", 1)])


def _mstrain_pipeline(instance: bool) -> list[dict[str, Any]]:
    """The DETR / Sparse R-CNN style multi-scale + crop training pipeline of the 3x configs."""
    long_scales = [(s, 1333) for s in range(480, 801, 32)]
    keys = ["img", "gt_bboxes", "gt_labels"] + (["gt_masks"] if instance else [])
    load = dict(type="LoadAnnotations", with_bbox=True, **(dict(with_mask=True) if instance else {}))
    return [dict(type="LoadImageFromFile"), load, dict(type="RandomFlip", flip_ratio=0.5),
            dict(type="AutoAugment", policies=[
                [dict(type="Resize", img_scale=long_scales, multiscale_mode="value", keep_ratio=True)],
                [dict(type="Resize", img_scale=[(400, 1333), (500, 1333), (600, 1333)], multiscale_mode="value",
                      keep_ratio=True),
                 dict(type="RandomCrop", crop_type="absolute_range", crop_size=(384, 600), allow_negative_crop=True),
                 dict(type="Resize", img_scale=long_scales, multiscale_mode="value", override=True,
                      keep_ratio=True)]]),
            dict(type="Normalize", **_norm_cfg()), dict(type="Pad", size_divisor=32),
            dict(type="DefaultFormatBundle"), dict(type="Collect", keys=keys)]


def _adamw_3x() -> dict[str, Any]:
    """The optimizer / schedule / apex-fp16 runner block shared by the ATSS, GFL and Cascade 3x configs."""
    return dict(
        optimizer=dict(_delete_=True, type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05,
                       paramwise_cfg=dict(custom_keys={"absolute_pos_embed": dict(decay_mult=0.0),
                                                       "relative_position_bias_table": dict(decay_mult=0.0),
                                                       "norm": dict(decay_mult=0.0)})),
        lr_config=dict(step=[27, 33]), runner=dict(type="EpochBasedRunnerAmp", max_epochs=36), fp16=None,
        optimizer_config=dict(type="DistOptimizerHook", update_interval=1, grad_clip=None, coalesce=True,
                              bucket_size_mb=-1, use_fp16=True),
        find_unused_parameters=True)


def _pvt_model(bb: Backbone, **neck: Any) -> dict[str, Any]:
    return dict(pretrained=f"https://github.com/whai362/PVT/releases/download/v2/{bb.name}.pth",
                backbone=dict(type=bb.name, style="pytorch"),
                neck=dict(type="FPN", in_channels=bb.channels, out_channels=256, **neck))


def _dense_head(kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    anchors = dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=8, scales_per_octave=1,
                   strides=[8, 16, 32, 64, 128])
    common = dict(num_classes=80, in_channels=256, stacked_convs=4, feat_channels=256, anchor_generator=anchors)
    if kind == "atss":
        head = dict(type="ATSSHead", **common, bbox_coder=_delta_coder([0.1, 0.1, 0.2, 0.2]),
                    loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
                    loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
                    loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0))
    else:
        head = dict(type="GFLHead", **common,
                    loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
                    loss_dfl=dict(type="DistributionFocalLoss", loss_weight=0.25), reg_max=16,
                    loss_bbox=dict(type="GIoULoss", loss_weight=2.0))
    model = dict(train_cfg=dict(assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1,
                                debug=False),
                 test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                               nms=dict(type="nms", iou_threshold=0.6), max_per_img=100))
    return head, model


def _official_child(kind: str, bb: Backbone) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The bases and the body of the official config file of ``kind`` (backbone ``bb`` in place of the released
    one)."""
    if kind == "retinanet":  # retinanet_pvt_v2_b0_fpn_1x_coco.py / retinanet_pvt_t_fpn_1x_coco.py
        bases = [_base_retinanet_r50_fpn(), _base_coco(False), _base_schedule_1x(), _base_det_runtime()]
        child = dict(model=_pvt_model(bb, start_level=1, add_extra_convs="on_input", num_outs=5),
                     optimizer=dict(_delete_=True, type="AdamW", lr=0.0001, weight_decay=0.0001),
                     optimizer_config=dict(grad_clip=None))
    elif kind == "mask_rcnn":  # mask_rcnn_pvt_v2_b0_fpn_1x_coco.py
        bases = [_base_mask_rcnn_r50_fpn(), _base_coco(True), _base_schedule_1x(), _base_det_runtime()]
        child = dict(model=_pvt_model(bb, num_outs=5),
                     optimizer=dict(_delete_=True, type="AdamW", lr=0.0002, weight_decay=0.0001),
                     optimizer_config=dict(grad_clip=None))
    elif kind in ("atss", "gfl"):  # atss_pvt_v2_b2_fpn_3x_mstrain_fp16.py, gfl_pvt_v2_b2_fpn_3x_mstrain_fp16.py
        bases = [_base_coco(False), _base_schedule_1x(), _base_det_runtime()]
        head, settings = _dense_head(kind)
        model = dict(type="ATSS" if kind == "atss" else "GFL",
                     **_pvt_model(bb, start_level=1, add_extra_convs="on_output", num_outs=5),
                     bbox_head=head, **settings)
        child = dict(model=model, img_norm_cfg=_norm_cfg(), train_pipeline=_mstrain_pipeline(False),
                     data=dict(train=dict(pipeline=_mstrain_pipeline(False))), **_adamw_3x())
    elif kind == "cascade_mask_rcnn":  # cascade_mask_rcnn_pvt_v2_b2_fpn_3x_mstrain_fp16.py
        bases = [_base_cascade_mask_rcnn_pvtv2_b2_fpn(), _base_coco(True), _base_schedule_1x(),
                 _base_det_runtime()]

        def conv_head(stds: list[float]) -> dict[str, Any]:
            return dict(type="ConvFCBBoxHead", num_shared_convs=4, num_shared_fcs=1, in_channels=256,
                        conv_out_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=80,
                        bbox_coder=_delta_coder(stds), reg_class_agnostic=False, reg_decoded_bbox=True,
                        norm_cfg=dict(type="SyncBN", requires_grad=True),
                        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                        loss_bbox=dict(type="GIoULoss", loss_weight=10.0))

        model = dict(**_pvt_model(bb, num_outs=5), roi_head=dict(bbox_head=[conv_head(s) for s in _CASCADE_STDS]))
        child = dict(model=model, img_norm_cfg=_norm_cfg(), train_pipeline=_mstrain_pipeline(True),
                     data=dict(train=dict(pipeline=_mstrain_pipeline(True))), **_adamw_3x())
    elif kind == "sparse_rcnn":  # sparse_rcnn_pvt_v2_b2_fpn_300_proposals_crop_mstrain_480-800_3x_coco.py
        bases = [_base_coco(False), _base_schedule_1x(), _base_det_runtime()]
        num_stages, num_proposals = 6, 300
        dii = dict(
            type="DIIHead", num_classes=80, num_ffn_fcs=2, num_heads=8, num_cls_fcs=1, num_reg_fcs=3,
            feedforward_channels=2048, in_channels=256, dropout=0.0, ffn_act_cfg=dict(type="ReLU", inplace=True),
            dynamic_conv_cfg=dict(type="DynamicConv", in_channels=256, feat_channels=64, out_channels=256,
                                  input_feat_shape=7, act_cfg=dict(type="ReLU", inplace=True),
                                  norm_cfg=dict(type="LN")),
            loss_bbox=dict(type="L1Loss", loss_weight=5.0), loss_iou=dict(type="GIoULoss", loss_weight=2.0),
            loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
            bbox_coder=_delta_coder([0.5, 0.5, 1.0, 1.0], clip_border=False))
        hungarian = dict(assigner=dict(type="HungarianAssigner", cls_cost=dict(type="FocalLossCost", weight=2.0),
                                       reg_cost=dict(type="BBoxL1Cost", weight=5.0),
                                       iou_cost=dict(type="IoUCost", iou_mode="giou", weight=2.0)),
                         sampler=dict(type="PseudoSampler"), pos_weight=1)
        model = dict(
            type="SparseRCNN", **_pvt_model(bb, start_level=0, add_extra_convs="on_input", num_outs=4),
            rpn_head=dict(type="EmbeddingRPNHead", num_proposals=num_proposals, proposal_feature_channel=256),
            roi_head=dict(type="SparseRoIHead", num_stages=num_stages, stage_loss_weights=[1] * num_stages,
                          proposal_feature_channel=256, bbox_roi_extractor=_roi_extractor(7, sampling_ratio=2),
                          bbox_head=[copy.deepcopy(dii) for _ in range(num_stages)]),
            train_cfg=dict(rpn=None, rcnn=[copy.deepcopy(hungarian) for _ in range(num_stages)]),
            test_cfg=dict(rpn=None, rcnn=dict(max_per_img=num_proposals)))
        child = dict(num_stages=num_stages, num_proposals=num_proposals, model=model,
                     optimizer=dict(_delete_=True, type="AdamW", lr=0.000025 / 1.4, weight_decay=0.0001),
                     optimizer_config=dict(_delete_=True, grad_clip=dict(max_norm=1, norm_type=2)),
                     img_norm_cfg=_norm_cfg(), train_pipeline=_mstrain_pipeline(False),
                     data=dict(samples_per_gpu=1, workers_per_gpu=1, train=dict(pipeline=_mstrain_pipeline(False))),
                     lr_config=dict(policy="step", step=[27, 33]), runner=dict(type="EpochBasedRunner", max_epochs=36))
    else:
        raise ValueError(kind)
    return bases, child


def _set_num_classes(node: Any, num_classes: int) -> None:
    if isinstance(node, dict):
        if "num_classes" in node:
            node["num_classes"] = num_classes
        for value in node.values():
            _set_num_classes(value, num_classes)
    elif isinstance(node, list):
        for value in node:
            _set_num_classes(value, num_classes)


def official_config(kind: str, backbone: str | None = None, num_classes: int = 80) -> dict[str, Any]:
    """The resolved MMDetection 2.13 config of a released detector as a dict (what ``official_config_text``
    writes): ``_base_`` files merged, then ``work_dir`` and ``gpu_ids`` as the official ``detection/train.py``
    sets them before it stores ``cfg.pretty_text`` in the checkpoint's meta."""
    bb = _backbone(backbone or DEFAULT_BACKBONE[_kind(kind)])
    bases, child = _official_child(kind, bb)
    cfg = _resolve(bases, child)
    if num_classes != 80:
        _set_num_classes(cfg["model"], num_classes)
    cfg["work_dir"] = f"./work_dirs/{config_name(kind, bb.name)}"
    cfg["gpu_ids"] = range(0, 8)
    return cfg


def _fmt(value: Any, indent: int, column: int, width: int = 79) -> str:
    """Python source for a config value starting at ``column`` of a line indented by ``indent``, in the style of
    mmcv's ``Config.pretty_text``: ``dict(...)`` calls, one item a line (indented 4 more) where the value does
    not fit on the line."""
    inner = indent + 4
    if isinstance(value, dict):
        named = all(isinstance(k, str) and k.isidentifier() for k in value)
        heads = [f"{k}=" if named else f"{k!r}: " for k in value]
        items = [h + _fmt(v, inner, inner + len(h), width) for h, v in zip(heads, value.values())]
        flat = [h + _fmt(v, 0, 0, 10**9) for h, v in zip(heads, value.values())]
        opening, closing = ("dict(", ")") if named else ("{", "}")
    elif isinstance(value, (list, tuple)):
        items = [_fmt(v, inner, inner, width) for v in value]
        flat = [_fmt(v, 0, 0, 10**9) for v in value]
        opening, closing = ("[", "]") if isinstance(value, list) else ("(", ")")
        if isinstance(value, tuple) and len(value) == 1:
            items[0] += ","
            flat[0] += ","
    elif isinstance(value, range) and value.step == 1:
        return f"range({value.start}, {value.stop})"
    else:
        return repr(value)
    one_line = opening + ", ".join(flat) + closing
    if column + len(one_line) + 1 <= width:
        return one_line
    return opening + "\n" + ",\n".join(" " * inner + item for item in items) + closing


def format_config(cfg: Mapping[str, Any]) -> str:
    """``name = value`` lines for a resolved config dict (mmcv 1.x ``pretty_text`` style)."""
    return "".join(f"{key} = {_fmt(value, 0, len(key) + 3)}\n" for key, value in cfg.items())


def official_config_text(kind: str, backbone: str | None = None, num_classes: int = 80) -> str:
    """The MMDetection 2.x resolved config text a release file carries in ``meta["config"]``."""
    return format_config(official_config(kind, backbone, num_classes))


# ----------------------------------------------------------------------------------------------------------------
# MMDetection 3.3 models
# ----------------------------------------------------------------------------------------------------------------

def _mmdet3_backbone(bb: Backbone) -> dict[str, Any]:
    return dict(type="PyramidVisionTransformerV2" if bb.version == 2 else "PyramidVisionTransformer",
                embed_dims=bb.embed_dims, num_layers=list(bb.depths), num_heads=[1, 2, 5, 8],
                mlp_ratios=list(bb.mlp_ratios), sr_ratios=[8, 4, 2, 1], qkv_bias=True, drop_path_rate=0.1,
                out_indices=(0, 1, 2, 3), norm_cfg=dict(type="LN", eps=1e-6), init_cfg=None)


def mmdet3_model_config(kind: str, backbone: str | None = None, num_classes: int = 80) -> dict[str, Any]:
    """The MMDetection 3.3 model config equivalent (for inference) to the official 2.x one."""
    bb = _backbone(backbone or DEFAULT_BACKBONE[_kind(kind)])
    model = copy.deepcopy(official_config(kind, bb.name, num_classes)["model"])
    model.pop("pretrained", None)
    model["train_cfg"] = None  # 2.x training settings (assigners, samplers): inference only here
    model["backbone"] = _mmdet3_backbone(bb)
    model["data_preprocessor"] = dict(type="DetDataPreprocessor", mean=list(COCO_MEAN), std=list(COCO_STD),
                                      bgr_to_rgb=True, pad_size_divisor=32)
    rpn_test = model.get("test_cfg", {}).get("rpn")
    if isinstance(rpn_test, dict):  # 2.x-only keys; 3.x RPN uses nms_pre / max_per_img / nms / min_bbox_size
        rpn_test.pop("nms_across_levels", None)
        rpn_test.pop("nms_post", None)
    return model


def _set_official_eps(backbone: torch.nn.Module) -> None:
    """The official PVT code builds its patch-embedding norms and spatial-reduction norms with PyTorch's default
    LayerNorm eps (1e-5); MMDetection 3.3 uses its norm_cfg eps (1e-6) for them."""
    for stage in backbone.layers:
        stage[0].norm.eps = 1e-5
        for layer in stage[1]:
            norm = getattr(getattr(layer, "attn", None), "norm", None)
            if isinstance(norm, torch.nn.LayerNorm):
                norm.eps = 1e-5


# Random weights: every parameter random (so a wrong key mapping shows in the outputs), then the layers that make
# the predictions scaled so their outputs have these standard deviations on the calibration photo.
CLS_STD = 3.0
_OUTPUT_STD: dict[str, dict[str, float]] = {
    "retinanet": {r"bbox_head.retina_cls": CLS_STD, r"bbox_head.retina_reg": 0.2},
    "atss": {r"bbox_head.atss_cls": CLS_STD, r"bbox_head.atss_reg": 1.0, r"bbox_head.atss_centerness": 1.0},
    "gfl": {r"bbox_head.gfl_cls": CLS_STD, r"bbox_head.gfl_reg": 1.0},
    "mask_rcnn": {r"rpn_head.rpn_cls": 1.0, r"rpn_head.rpn_reg": 0.2, r"roi_head.bbox_head.fc_cls": CLS_STD,
                  r"roi_head.bbox_head.fc_reg": 1.0, r"roi_head.mask_head.conv_logits": 2.0},
    "cascade_mask_rcnn": {r"rpn_head.rpn_cls": 1.0, r"rpn_head.rpn_reg": 0.2,
                          r"roi_head.bbox_head.\d.fc_cls": CLS_STD, r"roi_head.bbox_head.\d.fc_reg": 1.0,
                          r"roi_head.mask_head.\d.conv_logits": 2.0},
    "sparse_rcnn": {r"roi_head.bbox_head.\d.fc_cls": CLS_STD, r"roi_head.bbox_head.\d.fc_reg": 0.3},
}


def _scale_output(layer: torch.nn.Module, out: torch.Tensor, std: float, per_channel: bool) -> None:
    """Rescale a conv/linear layer whose recorded output is ``out`` (-1, C): each output channel c becomes
    ``factor_c * (out_c - mean_c)``, with std ``std`` for every channel (``per_channel``: each class equally
    likely to win) or for the output as a whole."""
    with torch.no_grad():
        if per_channel:
            factor = std / out.std(0).clamp_min(1e-12)
        else:
            factor = torch.full((out.shape[1],), std / max(float(out.std()), 1e-12))
        layer.weight.mul_(factor.reshape(-1, *[1] * (layer.weight.dim() - 1)))
        layer.bias.copy_(factor * (layer.bias - out.mean(0)))


def _is_cls_layer(name: str) -> bool:
    return name.endswith(("_cls", "fc_cls", "conv_seg"))


# The calibration aims at this geometric mean over the calibration photos of the number of detections above
# SCORE_THR: sqrt(50 * 100), the middle of the 50-100 the tests accept on each photo (the detectors stop at 100).
TARGET_DETECTIONS = 71
CALIBRATION_TOLERANCE = 3
SCORE_THR = 0.05


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter (and BatchNorm statistic) random, deterministic for ``seed``: weights N(0, 1/fan_in),
    biases N(0, 0.02^2), norm weights 1 + N(0, 0.1^2) and biases N(0, 0.1^2), position embeddings N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm)

    def normal(t: torch.Tensor, mean: float, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    with torch.no_grad():
        for mod_name, module in model.named_modules():
            for p_name, p in module.named_parameters(recurse=False):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if isinstance(module, norm_types):
                    normal(p, 1.0 if p_name == "weight" else 0.0, 0.1)
                elif p_name == "pos_embed":
                    normal(p, 0.0, 0.1)
                elif p_name == "scale":  # mmcv Scale (ATSS, GFL)
                    normal(p, 1.0, 0.1)
                elif full.endswith("init_proposal_bboxes.weight"):  # cx, cy, w, h normalised to the image
                    p.copy_(torch.cat([torch.rand(p.shape[0], 2, generator=g) * 0.6 + 0.2,
                                       torch.rand(p.shape[0], 2, generator=g) * 0.5 + 0.1], 1))
                elif full.endswith("init_proposal_features.weight"):
                    normal(p, 0.0, 1.0)
                elif p.dim() >= 2:
                    fan_in = p[0].numel()
                    normal(p, 0.0, 1.0 / math.sqrt(fan_in))
                else:
                    normal(p, 0.0, 0.02)
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                normal(module.running_mean, 0.0, 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)


def _named_outputs(model: torch.nn.Module, patterns: Mapping[str, float]) -> dict[str, float]:
    import re

    found = {}
    for name, _ in model.named_modules():
        for pattern, std in patterns.items():
            if re.fullmatch(pattern, name):
                found[name] = std
    missing = [p for p in patterns if not any(re.fullmatch(p, n) for n in found)]
    assert not missing, f"no module matches {missing}"
    return found


def _channels_last(module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
    """A layer's output as (-1, output channels)."""
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        return output.detach().movedim(1, -1).reshape(-1, output.shape[1])
    return output.detach().reshape(-1, output.shape[-1])


def _record_outputs(model: torch.nn.Module, names: list[str], run: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """The outputs of the named layers during ``run()``, each as (-1, output channels)."""
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: outputs[n].append(_channels_last(m, o)))
             for n in names]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in outputs.items() if v}


@dataclass
class Prepared:
    """A photo through MMDetection's (or MMSegmentation's) test pipeline and data preprocessor."""
    batch: dict[str, Any]  # what model.test_step takes
    inputs: torch.Tensor  # normalised, padded (1, 3, H, W)
    data_samples: list[Any]

    @property
    def metas(self) -> list[dict[str, Any]]:
        return [s.metainfo for s in self.data_samples]


def _prepare_det(model: torch.nn.Module, image_rgb: np.ndarray) -> Prepared:
    from mmcv.transforms import Compose

    _check_image(image_rgb)
    pipeline = Compose([
        dict(type="mmdet.LoadImageFromNDArray"),
        dict(type="mmdet.Resize", scale=(1333, 800), keep_ratio=True),
        dict(type="mmdet.PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape",
                                                    "scale_factor")),
    ])
    data = pipeline(dict(img=np.ascontiguousarray(image_rgb[..., ::-1]), img_id=0, img_path=None))
    batch = dict(inputs=[data["inputs"]], data_samples=[data["data_samples"]])
    with torch.no_grad():
        pre = model.data_preprocessor(copy.copy(batch), False)
    return Prepared(batch, pre["inputs"], pre["data_samples"])


def _calibration_counter(kind: str, model: torch.nn.Module, prepared: Prepared) -> tuple[
        Callable[[float], int], Callable[[float], None]]:
    """For a detector with its output layers scaled: a function counting the detections above SCORE_THR when the
    foreground classification logits are shifted by ``b``, computed from cached features (only post-processing
    reruns), and a function that applies the shift to the weights."""
    from mmdet.structures.bbox import bbox2roi

    with torch.no_grad():
        x = model.extract_feat(prepared.inputs)
        metas = prepared.metas
        if kind in ("retinanet", "atss", "gfl"):
            head = model.bbox_head
            outs = head(x)

            def count(b: float) -> int:
                cls = [c + b for c in outs[0]]
                res = head.predict_by_feat(cls, *outs[1:], batch_img_metas=metas, cfg=head.test_cfg, rescale=True)
                return int((res[0].scores > SCORE_THR).sum())

            conv = {"retinanet": "retina_cls", "atss": "atss_cls", "gfl": "gfl_cls"}[kind]
            layers = [(getattr(head, conv), slice(None))]
        elif kind in ("mask_rcnn", "cascade_mask_rcnn"):
            rpn = model.rpn_head.predict(x, prepared.data_samples, rescale=False)
            proposals = [r.bboxes for r in rpn]
            rois = bbox2roi(proposals)
            roi_head = model.roi_head
            test_cfg = roi_head.test_cfg
            if kind == "mask_rcnn":
                res = roi_head._bbox_forward(x, rois)
                rois_t, cls_t, reg_t = (rois,), (res["cls_score"],), (res["bbox_pred"],)
                last = roi_head.bbox_head
                layers = [(roi_head.bbox_head.fc_cls, slice(0, -1))]
            else:
                # The refinement between stages uses the arg-max over the foreground classes, which a common
                # shift of the foreground logits does not change: the stages' rois can be cached too.
                rois_t, cls_t, reg_t = roi_head._refine_roi(x, rois, metas, tuple(len(p) for p in proposals))
                last = roi_head.bbox_head[-1]
                layers = [(h.fc_cls, slice(0, -1)) for h in roi_head.bbox_head]

            def count(b: float) -> int:
                cls = tuple(torch.cat([c[:, :-1] + b, c[:, -1:]], 1) for c in cls_t)
                res = last.predict_by_feat(rois=rois_t, cls_scores=cls, bbox_preds=reg_t, batch_img_metas=metas,
                                           rcnn_test_cfg=test_cfg, rescale=True)
                return int((res[0].scores > SCORE_THR).sum())
        elif kind == "sparse_rcnn":
            last_cls = model.roi_head.bbox_head[-1].fc_cls
            logits = _record_outputs(model, [_module_name(model, last_cls)],
                                     lambda: model.test_step(prepared.batch))
            logits = next(iter(logits.values()))
            max_per_img = model.roi_head.test_cfg.max_per_img

            def count(b: float) -> int:
                return min(max_per_img, int((torch.sigmoid(logits + b) > SCORE_THR).sum()))

            layers = [(h.fc_cls, slice(None)) for h in model.roi_head.bbox_head]
        else:
            raise ValueError(kind)

    def apply(b: float) -> None:
        with torch.no_grad():
            for layer, sl in layers:
                layer.bias[sl] += b

    return count, apply


def _module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _geometric_mean(counts: Sequence[int]) -> float:
    return float(np.exp(np.mean(np.log(np.maximum(counts, 1e-3)))))


def _bisect_shift(count: Callable[[float], float], target: float, tolerance: float, low: float = -30.0,
                  high: float = 30.0, steps: int = 30) -> float:
    """The logit shift whose detection count is within ``tolerance`` of ``target`` (counts grow with the shift)."""
    best, best_err = 0.0, None
    for _ in range(steps):
        mid = (low + high) / 2
        n = count(mid)
        err = abs(n - target)
        if best_err is None or err < best_err:
            best, best_err = mid, err
        if err <= tolerance:
            return mid
        if n < target:
            low = mid
        else:
            high = mid
    return best


def _calibrate(kind: str, model: torch.nn.Module, images: Sequence[np.ndarray]) -> None:
    """Scale the output layers (``_OUTPUT_STD``, measured on ``images[0]``), then shift the foreground class
    biases so that the geometric mean over ``images`` of the number of detections above SCORE_THR is
    TARGET_DETECTIONS (+- CALIBRATION_TOLERANCE). Each photo's backbone and neck features are computed once: they
    do not depend on the layers calibrated here."""
    prepared = [_prepare_det(model, image) for image in images]
    with torch.no_grad():
        cache = [(p.inputs, model.extract_feat(p.inputs)) for p in prepared]
    extract_feat = model.extract_feat

    def cached(inputs: torch.Tensor) -> Any:
        for x, features in cache:
            if x.shape == inputs.shape and torch.equal(x, inputs):
                return features
        return extract_feat(inputs)

    model.extract_feat = cached  # type: ignore[method-assign]
    try:
        targets = _named_outputs(model, _OUTPUT_STD[kind])
        with torch.no_grad():
            recorded = _record_outputs(model, list(targets), lambda: model.test_step(prepared[0].batch))
            modules = dict(model.named_modules())
            for name, std in targets.items():
                if name in recorded:  # (a mask head with no detections to run on records nothing)
                    _scale_output(modules[name], recorded[name], std, per_channel=_is_cls_layer(name))
        counters = [_calibration_counter(kind, model, p) for p in prepared]
        shift = _bisect_shift(lambda b: _geometric_mean([count(b) for count, _ in counters]), TARGET_DETECTIONS,
                              CALIBRATION_TOLERANCE)
        counters[0][1](shift)
    finally:
        del model.extract_feat


def build_mmdet_model(kind: str, backbone: str | None = None, num_classes: int = 80, seed: int = 0,
                      official_eps: bool = True, calibration_images: Sequence[np.ndarray] | None = None
                      ) -> torch.nn.Module:
    """An MMDetection 3.3 detector (eval mode, CPU) equivalent to the official 2.x release config of ``kind``,
    with random weights deterministic for ``seed``, scaled so that 50-100 detections score above 0.05 on each of
    ``calibration_images`` (default: ``test_photo((800, 1216))`` and ``test_photo()``; their geometric mean is
    TARGET_DETECTIONS +- CALIBRATION_TOLERANCE)."""
    _import_mmdet()
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope

    kind = _kind(kind)
    bb = _backbone(backbone or DEFAULT_BACKBONE[kind])
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(ConfigDict(mmdet3_model_config(kind, bb.name, num_classes)))
    model.eval()
    if official_eps:
        _set_official_eps(model.backbone)
    _randomize(model, seed)
    images = [test_photo((800, 1216)), test_photo()] if calibration_images is None else list(calibration_images)
    _calibrate(kind, model, images)
    model.oracle_kind = kind  # type: ignore[assignment]
    model.oracle_backbone = bb.name  # type: ignore[assignment]
    return model


# ----------------------------------------------------------------------------------------------------------------
# Release-layout files
# ----------------------------------------------------------------------------------------------------------------

def backbone_to_official(state: Mapping[str, torch.Tensor], version: int,
                         cls_slot: torch.Tensor | None = None) -> "OrderedDict[str, torch.Tensor]":
    """MMDetection 3.3's PVT backbone state dict (keys without ``backbone.``) in the official repository's
    detection/segmentation layout: the inverse of ``mmdet.models.backbones.pvt.pvt_convert``.

    PVTv1: the official detection and segmentation backbones have no cls_token and no final norm, but stage 4's
    ``pos_embed4`` keeps its class-token slot in front (1 + 7*7 rows); ``cls_slot`` (shape (1, 1, C)) fills it,
    zeros if not given. The official forward ignores that row."""
    import re

    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    stages = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.")})
    if version == 1:  # the official PVTv1 registers its pos_embed parameters before its submodules
        for s in stages:
            pos = state[f"layers.{s}.1.0.pos_embed"]
            if s == stages[-1]:
                slot = torch.zeros_like(pos[:, :1]) if cls_slot is None else cls_slot.to(pos)
                pos = torch.cat([slot, pos], 1)
            out[f"pos_embed{s + 1}"] = pos
    offset = 1 if version == 1 else 0  # v1's layers.{s}.1.0 is the position embedding
    fc2 = "4" if version == 2 else "3"
    ffn = {"0": "fc1", "1": "dwconv.dwconv", fc2: "fc2"}
    for s in stages:
        for k, v in state.items():
            m = re.fullmatch(rf"layers\.{s}\.0\.(projection|norm)\.(weight|bias)", k)
            if m:
                out[f"patch_embed{s + 1}.{'proj' if m[1] == 'projection' else 'norm'}.{m[2]}"] = v
        blocks = sorted({int(k.split(".")[3]) for k in state if re.match(rf"layers\.{s}\.1\.\d+\.", k)} - (
            {0} if version == 1 else set()))
        for j in blocks:
            src, dst = f"layers.{s}.1.{j}.", f"block{s + 1}.{j - offset}."
            sub = {k[len(src):]: v for k, v in state.items() if k.startswith(src)}
            c = sub["norm1.weight"].shape[0]
            out[dst + "norm1.weight"], out[dst + "norm1.bias"] = sub["norm1.weight"], sub["norm1.bias"]
            w, b = sub["attn.attn.in_proj_weight"], sub["attn.attn.in_proj_bias"]
            out[dst + "attn.q.weight"], out[dst + "attn.q.bias"] = w[:c], b[:c]
            out[dst + "attn.kv.weight"], out[dst + "attn.kv.bias"] = w[c:], b[c:]
            out[dst + "attn.proj.weight"] = sub["attn.attn.out_proj.weight"]
            out[dst + "attn.proj.bias"] = sub["attn.attn.out_proj.bias"]
            for name in ("attn.sr.weight", "attn.sr.bias", "attn.norm.weight", "attn.norm.bias",
                         "norm2.weight", "norm2.bias"):
                if name in sub:
                    out[dst + name] = sub[name]
            for idx in ("0", "1", fc2):
                for p in ("weight", "bias"):
                    key = f"ffn.layers.{idx}.{p}"
                    if key not in sub:
                        continue
                    v = sub[key]
                    if idx != "1" and p == "weight":  # 1x1 convs back to linear weights
                        v = v.reshape(v.shape[0], v.shape[1])
                    out[dst + f"mlp.{ffn[idx]}.{p}"] = v
            used = {"norm1.weight", "norm1.bias", "attn.attn.in_proj_weight", "attn.attn.in_proj_bias",
                    "attn.attn.out_proj.weight", "attn.attn.out_proj.bias", "attn.sr.weight", "attn.sr.bias",
                    "attn.norm.weight", "attn.norm.bias", "norm2.weight", "norm2.bias"} | {
                f"ffn.layers.{i}.{p}" for i in ("0", "1", fc2) for p in ("weight", "bias")}
            left = set(sub) - used
            assert not left, f"unconverted backbone keys {sorted(left)}"
        for p in ("weight", "bias"):
            k = f"layers.{s}.2.{p}"
            if k in state:
                out[f"norm{s + 1}.{p}"] = state[k]
    return out


# MMDetection 2.13 names of the neck and head parameters, where they differ from 3.3's (3.3 name -> 2.13 name).
# Checked against the 2.13.0 sources (mmdet/models/{necks,dense_heads,roi_heads}/*.py, mmcv 1.3 FFN and
# MultiheadAttention): no differences for FPN, RetinaHead, ATSSHead (incl. scales.*), GFLHead (incl. the
# integral.project buffer), RPNHead (rpn_conv is a plain conv for num_convs=1), Shared2FCBBoxHead,
# ConvFCBBoxHead (shared_convs.*.conv/bn), FCNMaskHead, CascadeRoIHead (bbox_head.{i}, mask_head.{i}),
# EmbeddingRPNHead, SparseRoIHead/DIIHead/DynamicConv (attention.attn.*, ffn.layers.0.0 / ffn.layers.1, ...).
# MMSegmentation 0.13 vs 1.2.2 (FPN neck, FPNHead scale_heads.*, conv_seg): no differences either.
MMDET2_RENAMES: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}


def _split_backbone(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    rest = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    return backbone, rest


def _cls_slot(seed: int, channels: int) -> torch.Tensor:
    return torch.randn(1, 1, channels, generator=torch.Generator().manual_seed(seed + 12345)) * 0.1


def release_state_dict(model: torch.nn.Module, backbone: str, renames: Mapping[str, str] | None = None,
                       seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """The model's weights in the release layout: backbone.* official, the rest under 2.x / 0.x names."""
    bb = _backbone(backbone)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    back, rest = _split_backbone(state)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for k, v in backbone_to_official(back, bb.version, _cls_slot(seed, bb.channels[-1])).items():
        out["backbone." + k] = v
    renames = renames or {}
    for k, v in rest.items():
        out[renames.get(k, k)] = v
    return out


def _meta_common(config_text: str, exp_name: str) -> dict[str, Any]:
    """The meta entries the official train.py and mmcv 1.x's checkpoint saving write besides the versions and
    classes. ``env_info``, ``mmcv_version`` and ``time`` are stand-ins (a loader has no use for them)."""
    return dict(env_info="(synthetic release file written by tests/oracle.py)", config=config_text, seed=0,
                exp_name=exp_name + ".py", mmcv_version="1.3.8", time="Thu Jan  1 00:00:00 2021")


def release_checkpoint(model: torch.nn.Module, kind: str, backbone: str, path: str | Path,
                       num_classes: int = 80, seed: int = 0) -> Path:
    """Write ``model`` (from ``build_mmdet_model``) as an official MMDetection 2.13 release file: ``meta``
    (mmdet_version '2.13.0', the 80 COCO CLASSES, the resolved config text, ...) and ``state_dict`` with the
    backbone in the official layout and the neck/head under 2.13 names. Loadable with weights_only=True."""
    kind = _kind(kind)
    classes = coco_classes() if num_classes == 80 else tuple(f"class{i}" for i in range(num_classes))
    meta = _meta_common(official_config_text(kind, backbone, num_classes), config_name(kind, backbone))
    meta.update(mmdet_version="2.13.0", CLASSES=classes, epoch=36 if "3x" in config_name(kind, backbone) else 12,
                iter=0)
    state = release_state_dict(model, backbone, MMDET2_RENAMES[kind], seed)
    path = Path(path)
    torch.save({"meta": meta, "state_dict": state}, path)
    return path


def coco_classes() -> tuple[str, ...]:
    """COCO's 80 class names in MMDetection's order (identical in 2.13 and 3.3)."""
    _import_mmdet()
    from mmdet.datasets import CocoDataset

    return tuple(CocoDataset.METAINFO["classes"])


# ----------------------------------------------------------------------------------------------------------------
# Running MMDetection
# ----------------------------------------------------------------------------------------------------------------

def _check_image(image: np.ndarray) -> None:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise TypeError("expected an (H, W, 3) uint8 RGB array")


def mmdet_detect(model: torch.nn.Module, image_rgb_uint8: np.ndarray) -> dict[str, Any]:
    """Detections of an MMDetection 3.3 model on an RGB uint8 photo through MMDetection's own test pipeline
    (keep-ratio resize to (1333, 800) with mmcv's cv2 bilinear on the uint8 image, then the data preprocessor's
    normalisation and padding to 32) and ``model.test_step``.

    Returns numpy arrays: ``boxes`` (N, 4) xyxy in original image pixels as MMDetection gives them, ``scores``
    (N,), ``labels`` (N,) in 0..K-1, ``masks`` (N, H, W) bool for mask models; ``boxes_clipped``: the boxes
    clipped to the image; ``clips``: whether the model clips its boxes itself (Sparse R-CNN's coder has
    clip_border=False, so its ``boxes`` can leave the image)."""
    prepared = _prepare_det(model, image_rgb_uint8)
    with torch.no_grad():
        result = model.test_step(prepared.batch)[0]
    inst = result.pred_instances
    h, w = image_rgb_uint8.shape[:2]
    boxes = inst.bboxes.numpy().astype(np.float32)
    out: dict[str, Any] = dict(boxes=boxes, scores=inst.scores.numpy().astype(np.float32),
                               labels=inst.labels.numpy().astype(np.int64))
    if "masks" in inst:
        out["masks"] = inst.masks.numpy().astype(bool)
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, w)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, h)
    out["boxes_clipped"] = clipped
    out["clips"] = type(model).__name__ != "SparseRCNN"
    return out


def test_photo(size: tuple[int, int] | None = None) -> np.ndarray:
    """A real photo, offline: scikit-learn's ``china.jpg`` (427x640 RGB uint8) as is, or resized (cv2 bilinear,
    the shorter side just covering) and centre-cropped to ``size`` = (H, W). (800, 1216) passes MMDetection's
    test Resize unchanged (shorter side 800, longer side <= 1333, already a multiple of 32)."""
    from sklearn.datasets import load_sample_image

    img = np.ascontiguousarray(load_sample_image("china.jpg"))
    if size is None:
        return img
    import cv2

    th, tw = size
    h, w = img.shape[:2]
    scale = max(th / h, tw / w)
    nh, nw = max(th, int(math.ceil(h * scale))), max(tw, int(math.ceil(w * scale)))
    resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    y0, x0 = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(resized[y0:y0 + th, x0:x0 + tw])


test_photo.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


# ----------------------------------------------------------------------------------------------------------------
# Comparing detections
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class DetectionComparison:
    """``matched``: fraction of ``theirs``' top detections matched one-to-one by one of ``ours`` (same class,
    box IoU >= iou_thr, |score difference| <= score_tol, mask IoU >= mask_iou_thr where both have masks).
    ``count_ours`` / ``count_theirs``: detections scoring above SCORE_THR on each side; ``count_close``: they are
    within 5% of each other."""
    matched: float
    n_top: int
    n_matched: int
    count_ours: int
    count_theirs: int
    count_close: bool
    unmatched: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        within = "within" if self.count_close else "NOT within"
        return (f"matched {self.n_matched}/{self.n_top} = {self.matched:.1%}; above {SCORE_THR}: "
                f"ours {self.count_ours}, theirs {self.count_theirs} ({within} 5%)")


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)[:, None]
    b = b.astype(np.float64)[None]
    lt = np.maximum(a[..., :2], b[..., :2])
    rb = np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area_a = np.prod(np.clip(a[..., 2:] - a[..., :2], 0, None), -1)
    area_b = np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), -1)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(inter / union)


def compare_detections(ours: Mapping[str, Any], theirs: Mapping[str, Any], top: int = 100, iou_thr: float = 0.98,
                       score_tol: float = 0.01, mask_iou_thr: float = 0.9,
                       box_key: str = "boxes") -> DetectionComparison:
    """The acceptance criteria of a detector against the oracle (dicts with numpy ``boxes``, ``scores``,
    ``labels`` and optionally ``masks``). Of ``theirs``' ``top`` highest-scoring detections, visited by
    decreasing score, each is matched greedily to the not yet matched one of ``ours`` with the same label
    that passes the score and mask tests and has the highest box IoU (at least ``iou_thr``).
    ``box_key`` picks the boxes to compare (``"boxes_clipped"`` for Sparse R-CNN against a clipping model)."""
    def arrays(d: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        boxes = np.asarray(d[box_key] if box_key in d else d["boxes"], dtype=np.float64).reshape(-1, 4)
        return (boxes, np.asarray(d["scores"], dtype=np.float64).reshape(-1),
                np.asarray(d["labels"]).reshape(-1).astype(np.int64),
                None if d.get("masks") is None else np.asarray(d["masks"]).astype(bool))

    ob, os_, ol, om = arrays(ours)
    tb, ts, tl, tm = arrays(theirs)
    order = np.argsort(-ts, kind="stable")[:top]
    iou = _box_iou(tb[order], ob) if len(order) and len(ob) else np.zeros((len(order), len(ob)))
    used = np.zeros(len(ob), dtype=bool)
    unmatched = []
    for row, t in enumerate(order):
        ok = (~used) & (ol == tl[t]) & (np.abs(os_ - ts[t]) <= score_tol) & (iou[row] >= iou_thr)
        candidates = np.flatnonzero(ok)
        candidates = candidates[np.argsort(-iou[row, candidates], kind="stable")]
        hit = None
        for c in candidates:
            if tm is not None and om is not None and _mask_iou(tm[t], om[c]) < mask_iou_thr:
                continue
            hit = c
            break
        if hit is None:
            best = int(np.argmax(np.where(ol == tl[t], iou[row], -1))) if len(ob) else -1
            unmatched.append(dict(index=int(t), label=int(tl[t]), score=float(ts[t]), box=tb[t].tolist(),
                                  best_iou=float(iou[row, best]) if best >= 0 else 0.0,
                                  best_score=float(os_[best]) if best >= 0 else float("nan")))
        else:
            used[hit] = True
    n_top = len(order)
    n_matched = n_top - len(unmatched)
    count_ours, count_theirs = int((os_ > SCORE_THR).sum()), int((ts > SCORE_THR).sum())
    close = abs(count_ours - count_theirs) <= 0.05 * max(count_theirs, 1)
    return DetectionComparison(matched=n_matched / n_top if n_top else 1.0, n_top=n_top, n_matched=n_matched,
                               count_ours=count_ours, count_theirs=count_theirs, count_close=close,
                               unmatched=unmatched)


# ----------------------------------------------------------------------------------------------------------------
# Semantic FPN (MMSegmentation 1.2.2 against the official MMSegmentation 0.13 release)
# ----------------------------------------------------------------------------------------------------------------

SEG_SCALE = (2048, 512)
SEG_LOGIT_STD = 3.0


def _base_fpn_r50() -> dict[str, Any]:  # segmentation/configs/_base_/models/fpn_r50.py
    norm_cfg = dict(type="SyncBN", requires_grad=True)
    return dict(norm_cfg=norm_cfg, model=dict(
        type="EncoderDecoder", pretrained="open-mmlab://resnet50_v1c",
        backbone=dict(type="ResNetV1c", depth=50, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 1, 1),
                      strides=(1, 2, 2, 2), norm_cfg=dict(norm_cfg), norm_eval=False, style="pytorch",
                      contract_dilation=True),
        neck=dict(type="FPN", in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=4),
        decode_head=dict(type="FPNHead", in_channels=[256, 256, 256, 256], in_index=[0, 1, 2, 3],
                         feature_strides=[4, 8, 16, 32], channels=128, dropout_ratio=0.1, num_classes=19,
                         norm_cfg=dict(norm_cfg), align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode="whole")))


def _base_ade20k() -> dict[str, Any]:  # segmentation/configs/_base_/datasets/ade20k.py
    root = "data/ade/ADEChallengeData2016"
    crop = (512, 512)
    train = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=True),
             dict(type="Resize", img_scale=SEG_SCALE, ratio_range=(0.5, 2.0)),
             dict(type="RandomCrop", crop_size=crop, cat_max_ratio=0.75), dict(type="RandomFlip", prob=0.5),
             dict(type="PhotoMetricDistortion"), dict(type="Normalize", **_norm_cfg()),
             dict(type="Pad", size=crop, pad_val=0, seg_pad_val=255), dict(type="DefaultFormatBundle"),
             dict(type="Collect", keys=["img", "gt_semantic_seg"])]

    def test() -> list[dict[str, Any]]:
        return [dict(type="LoadImageFromFile"),
                dict(type="MultiScaleFlipAug", img_scale=SEG_SCALE, flip=False, transforms=[
                    dict(type="AlignResize", keep_ratio=True, size_divisor=32), dict(type="RandomFlip"),
                    dict(type="Normalize", **_norm_cfg()), dict(type="ImageToTensor", keys=["img"]),
                    dict(type="Collect", keys=["img"])])]

    def split(name: str, pipeline: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(type="ADE20KDataset", data_root=root, img_dir=f"images/{name}", ann_dir=f"annotations/{name}",
                    pipeline=pipeline)

    return dict(dataset_type="ADE20KDataset", data_root=root, img_norm_cfg=_norm_cfg(), crop_size=crop,
                train_pipeline=train, test_pipeline=test(),
                data=dict(samples_per_gpu=4, workers_per_gpu=4,
                          train=dict(type="RepeatDataset", times=50, dataset=split("training", train)),
                          val=split("validation", test()), test=split("validation", test())))


def _base_seg_runtime() -> dict[str, Any]:  # segmentation/configs/_base_/default_runtime.py
    return dict(log_config=dict(interval=50, hooks=[dict(type="TextLoggerHook", by_epoch=False)]),
                dist_params=dict(backend="nccl"), log_level="INFO", load_from=None, resume_from=None,
                workflow=[("train", 1)], cudnn_benchmark=True)


def seg_config_name(backbone: str = "pvt_tiny") -> str:
    return f"fpn_{_backbone(backbone).short}_ade20k_40k"


def official_seg_config(backbone: str = "pvt_tiny", num_classes: int = 150) -> dict[str, Any]:
    """The resolved MMSegmentation 0.13 config of segmentation/configs/sem_fpn/PVT/fpn_pvt_t_ade20k_40k.py
    (another PVT backbone in its place), with ``work_dir``/``gpu_ids`` as the official train.py sets them."""
    bb = _backbone(backbone)
    gpu_multiples = 2
    child = dict(
        model=dict(type="EncoderDecoder",
                   pretrained=f"https://github.com/whai362/PVT/releases/download/v2/{bb.name}.pth",
                   backbone=dict(type=bb.name, style="pytorch"), neck=dict(in_channels=bb.channels),
                   decode_head=dict(num_classes=num_classes)),
        gpu_multiples=gpu_multiples,
        optimizer=dict(type="AdamW", lr=0.0001 * gpu_multiples, weight_decay=0.0001), optimizer_config=dict(),
        lr_config=dict(policy="poly", power=0.9, min_lr=0.0, by_epoch=False),
        runner=dict(type="IterBasedRunner", max_iters=80000 // gpu_multiples),
        checkpoint_config=dict(by_epoch=False, interval=8000 // gpu_multiples),
        evaluation=dict(interval=8000 // gpu_multiples, metric="mIoU"))
    cfg = _resolve([_base_fpn_r50(), _base_ade20k(), _base_seg_runtime()], child)
    cfg["work_dir"] = f"./work_dirs/{seg_config_name(bb.name)}"
    cfg["gpu_ids"] = range(0, 8)
    return cfg


def official_seg_config_text(backbone: str = "pvt_tiny", num_classes: int = 150) -> str:
    """The MMSegmentation 0.13 resolved config text a Semantic FPN release file carries in ``meta["config"]``."""
    return format_config(official_seg_config(backbone, num_classes))


def mmseg1_model_config(backbone: str = "pvt_tiny", num_classes: int = 150) -> dict[str, Any]:
    """The MMSegmentation 1.2.2 model config equivalent (for inference) to the official 0.13 one; the backbone is
    MMDetection 3.3's PVT (MMSegmentation 1.x has none)."""
    bb = _backbone(backbone)
    model = copy.deepcopy(official_seg_config(bb.name, num_classes)["model"])
    model.pop("pretrained", None)
    model["train_cfg"] = None
    backbone_cfg = _mmdet3_backbone(bb)
    backbone_cfg["type"] = "mmdet." + backbone_cfg["type"]
    model["backbone"] = backbone_cfg
    model["data_preprocessor"] = dict(type="SegDataPreProcessor", mean=list(COCO_MEAN), std=list(COCO_STD),
                                      bgr_to_rgb=True, pad_val=0, seg_pad_val=255)
    return model


def _prepare_seg(model: torch.nn.Module, image_rgb: np.ndarray) -> Prepared:
    """The official test pipeline: AlignResize (keep-ratio rescale to (2048, 512), then each side resized to a
    multiple of 32, both mmcv cv2 bilinear on the uint8 image), then normalisation."""
    import mmcv
    from mmseg.structures import SegDataSample

    _check_image(image_rgb)
    bgr = np.ascontiguousarray(image_rgb[..., ::-1])
    img = mmcv.imrescale(bgr, SEG_SCALE, interpolation="bilinear", backend="cv2")
    ah, aw = (int(math.ceil(s / 32)) * 32 for s in img.shape[:2])
    img = mmcv.imresize(img, (aw, ah), interpolation="bilinear", backend="cv2")
    h, w = image_rgb.shape[:2]
    sample = SegDataSample(metainfo=dict(ori_shape=(h, w), img_shape=(ah, aw), pad_shape=(ah, aw),
                                         scale_factor=(aw / w, ah / h)))
    inputs = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    batch = dict(inputs=[inputs], data_samples=[sample])
    with torch.no_grad():
        pre = model.data_preprocessor(copy.copy(batch), False)
    return Prepared(batch, pre["inputs"], pre["data_samples"])


def mmseg_segment(model: torch.nn.Module, image_rgb_uint8: np.ndarray, return_logits: bool = False) -> Any:
    """The (H, W) int64 label map of MMSegmentation 1.2.2's whole-image inference with the official test
    pipeline (AlignResize): logits resized bilinearly (align_corners=False) to the network input size and then
    to the original size, arg-max over classes. ``return_logits``: also the (C, H, W) logits at the original
    size."""
    prepared = _prepare_seg(model, image_rgb_uint8)
    with torch.no_grad():
        result = model.test_step(prepared.batch)[0]
    labels = result.pred_sem_seg.data[0].numpy().astype(np.int64)
    if return_logits:
        return labels, result.seg_logits.data.numpy()
    return labels


def build_mmseg_semantic_fpn(backbone: str = "pvt_tiny", num_classes: int = 150, seed: int = 0,
                             official_eps: bool = True, calibration_image: np.ndarray | None = None
                             ) -> torch.nn.Module:
    """MMSegmentation 1.2.2 Semantic FPN (eval mode) equivalent to the official fpn_pvt_t_ade20k_40k release,
    random weights deterministic for ``seed``, the class logits scaled and centred class by class (std
    SEG_LOGIT_STD on ``calibration_image``, default ``test_photo()``) so that the label map shows many classes."""
    _import_mmseg()
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    bb = _backbone(backbone)
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(ConfigDict(mmseg1_model_config(bb.name, num_classes)))
    model.eval()
    if official_eps:
        _set_official_eps(model.backbone)
    _randomize(model, seed)
    image = test_photo() if calibration_image is None else calibration_image
    prepared = _prepare_seg(model, image)
    conv_seg = model.decode_head.conv_seg
    with torch.no_grad():
        out = _record_outputs(model, [_module_name(model, conv_seg)], lambda: model.test_step(prepared.batch))
    _scale_output(conv_seg, next(iter(out.values())), SEG_LOGIT_STD, per_channel=True)
    model.oracle_backbone = bb.name  # type: ignore[assignment]
    return model


def ade20k_classes_and_palette() -> tuple[tuple[str, ...], list[list[int]]]:
    """ADE20K's 150 class names and palette (identical in MMSegmentation 0.13 and 1.2.2)."""
    _import_mmseg()
    from mmseg.datasets import ADE20KDataset

    return tuple(ADE20KDataset.METAINFO["classes"]), [list(c) for c in ADE20KDataset.METAINFO["palette"]]


def release_segmentation_checkpoint(model: torch.nn.Module, backbone: str, path: str | Path,
                                    num_classes: int = 150, seed: int = 0) -> Path:
    """Write a Semantic FPN from ``build_mmseg_semantic_fpn`` as an official MMSegmentation 0.13 release file:
    ``meta`` (mmseg_version '0.13.0', ADE20K's CLASSES and PALETTE, the resolved config text, ...) and
    ``state_dict`` with the official PVT backbone layout and 0.13 neck/head names."""
    classes, palette = ade20k_classes_and_palette()
    if num_classes != 150:
        classes, palette = tuple(f"class{i}" for i in range(num_classes)), [[i % 256, 0, 0] for i in range(num_classes)]
    meta = _meta_common(official_seg_config_text(backbone, num_classes), seg_config_name(backbone))
    meta.update(mmseg_version="0.13.0", CLASSES=classes, PALETTE=palette, iter=40000, epoch=0)
    state = release_state_dict(model, backbone, {}, seed)
    path = Path(path)
    torch.save({"meta": meta, "state_dict": state}, path)
    return path


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and the seconds it took."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------------
# One model per (kind, backbone) for the whole test session
# ----------------------------------------------------------------------------------------------------------------

# The tests' photos by name: kept as it is by the test pipeline, and resized by it.
PHOTO_SIZES: dict[str, tuple[int, int] | None] = {"800x1216": (800, 1216), "427x640": None}


class Released:
    """An MMDetection 3.3 model of an official config (``build_mmdet_model``), its release-layout file, and its
    detections on each test photo, each made once: building and calibrating takes 15-50 s on one core and a
    detection 5-20 s, and the oracle's self-tests and the release tests of every detector share them."""

    def __init__(self, kind: str, backbone: str, folder: Path) -> None:
        self.kind, self.backbone = kind, backbone
        self.model = build_mmdet_model(kind, backbone)
        self.path = release_checkpoint(self.model, kind, backbone, folder / f"{config_name(kind, backbone)}.pth")
        self._detections: dict[str, dict[str, Any]] = {}

    def photo(self, name: str) -> np.ndarray:
        return test_photo(PHOTO_SIZES[name])

    def detections(self, name: str) -> dict[str, Any]:
        """MMDetection's detections on test photo ``name`` (:data:`PHOTO_SIZES`)."""
        if name not in self._detections:
            self._detections[name] = mmdet_detect(self.model, self.photo(name))
        return self._detections[name]
