"""The dense (one-stage) detectors' frame, :class:`DenseDetector` (RetinaNet, ATSS, GFL), and ATSS and GFL (Table 4).

:class:`DenseDetector` runs a head over the FPN levels P3-P7 with anchors per level
(:class:`~pvtv2.detection.anchors.LevelAnchorGenerator`), assigns targets and computes a subclass's losses in
training, and at test post-processes exactly as MMDetection 3.3's dense heads (``_predict_by_feat_single`` and
``_bbox_post_process``): per level the (anchor, class) scores above ``score_thresh``, the best
``topk_candidates`` of them (``nms_pre``), decoded and clipped to the resized image; then, in MMDetection's
order, boxes mapped to the original image, scores times a score factor (ATSS's centerness), boxes of width or
height <= ``min_box_size`` dropped, class-wise NMS at ``nms_thresh``, the best ``detections_per_img``.

ATSS and GFL have the settings of the official MMDetection 2.x configs
(``{atss,gfl}_pvt_v2_b2_fpn_3x_mstrain_fp16.py``):

* **head** (:class:`DenseHead`, both): 4 cls + 4 reg convs of 256 with GroupNorm(32) and ReLU (convs
  without bias), a learnable scale per level, one anchor per place (ratio 1, octave base scale 8);
* **assignment**: ATSS (:func:`pvtv2.detection.assigners.atss_assign`, top 9 per level) for both;
* **ATSS**: a centerness conv on the reg tower; sigmoid focal loss (gamma 2, alpha 0.25) over the
  positives, GIoU (weight 2) of the decoded boxes (box coder stds 0.1, 0.1, 0.2, 0.2) weighted by the
  centerness target, centerness BCE; at test the class scores times the centerness;
* **GFL**: 4 x 17 distribution logits per place, their integral times the stride as the distances from
  the anchor centre; Quality Focal Loss (beta 2) against the detached IoU of predicted and true box,
  Distribution Focal Loss (weight 0.25) and GIoU (weight 2), both weighted by the detached top class score.

Losses are normalised as MMDetection's: by the positives of the batch (at least one per image) and by the
sum of the box weights, each averaged over the processes of a distributed run.

The heads predict K classes: labels 1..K of the targets map to channels 0..K-1, and back at test.
"""

from __future__ import annotations

import itertools
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation, box_iou, clip_boxes_to_image, generalized_box_iou_loss
from torchvision.ops import sigmoid_focal_loss

from ..engine.config import ConfigError
from ..engine.distributed import mean_over_processes
from ..engine.release import ReleaseFileError
from ..errors import InputError
from .anchors import FPN_STRIDES, LevelAnchorGenerator
from .assigners import atss_assign
from .boxes import DeltaXYWHCoder, batched_nms
from .key_map import KeyMap, KeyRule
from .losses import boxes_to_distances, distances_to_boxes, distribution_focal_loss, integral, quality_focal_loss
from .neck import PyramidBackboneWithFPN, p6p7_from_p5
from .spec import BuildSettings, DetectorSpec, ReleaseLayout
from .transform import DetectionTransform, to_original_pixels

GROUP_NORM_GROUPS = 32  # the head towers' GroupNorm(32), as MMDetection's
# Base size per level P3-P7: the official configs' octave base scale 8 x strides 8..128, one scale, ratio 1.
ANCHOR_SIZES = (64, 128, 256, 512, 1024)
PRIOR_PROBABILITY = 0.01  # the class convs' bias starts every score at this probability
ATSS_TOPK = 9
ATSS_BOX_STDS = (0.1, 0.1, 0.2, 0.2)  # the official DeltaXYWHBBoxCoder's target_stds
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
QFL_BETA = 2.0
GIOU_WEIGHT, CENTERNESS_WEIGHT, DFL_WEIGHT = 2.0, 1.0, 0.25
GFL_REG_MAX = 16
DFL_TARGET_MARGIN = 0.1  # distance targets stay below reg_max by this much, so the right-hand bin exists


def _tower(channels: int, depth: int) -> nn.Sequential:
    norm = partial(nn.GroupNorm, GROUP_NORM_GROUPS)
    return nn.Sequential(*(Conv2dNormActivation(channels, channels, 3, norm_layer=norm) for _ in range(depth)))


def _per_place(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H * W, C): one row per anchor, in the anchor generator's order."""
    n, c = x.shape[:2]
    return x.permute(0, 2, 3, 1).reshape(n, -1, c)


class DenseHead(nn.Module):
    """ATSS's and GFL's head (MMDetection's ``ATSSHead``/``GFLHead`` layers): a cls and a reg tower of
    ``stacked_convs`` GroupNorm convs, a class conv on the first, a box conv (``box_channels`` per place,
    times a learnable scale per level) and optionally a centerness conv on the second.

    Returns, like torchvision's ``RetinaNetHead``, tensors of one row per anchor over all levels:
    ``cls_logits`` (N, A, K), ``bbox_regression`` (N, A, box_channels) and ``centerness`` (N, A, 1) when it
    has one.
    """

    def __init__(self, in_channels: int, num_classes: int, box_channels: int, num_levels: int = len(FPN_STRIDES),
                 with_centerness: bool = False, stacked_convs: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_convs = _tower(in_channels, stacked_convs)
        self.reg_convs = _tower(in_channels, stacked_convs)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_reg = nn.Conv2d(in_channels, box_channels, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1) if with_centerness else None
        self.scales = nn.Parameter(torch.ones(num_levels))  # MMCV's Scale(1.0), one per level
        for layer in self.modules():  # MMDetection's init: normal(0, 0.01), zero bias; class prior 0.01
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs: dict[str, list[torch.Tensor]] = {"cls_logits": [], "bbox_regression": []}
        if self.centerness is not None:
            outputs["centerness"] = []
        for level, x in enumerate(features):
            cls_features, reg_features = self.cls_convs(x), self.reg_convs(x)
            outputs["cls_logits"].append(_per_place(self.cls_logits(cls_features)))
            outputs["bbox_regression"].append(_per_place(self.bbox_reg(reg_features) * self.scales[level]))
            if self.centerness is not None:
                outputs["centerness"].append(_per_place(self.centerness(reg_features)))
        return {name: torch.cat(values, dim=1) for name, values in outputs.items()}


class DenseDetector(nn.Module, ABC):
    """A one-stage detector: ``backbone`` (a PVT with its FPN), a ``head`` giving per anchor ``cls_logits``
    (N, A, K) and box outputs, and ``anchor_generator``; a subclass assigns (:meth:`assign`), computes the
    losses (:meth:`losses`) and decodes boxes (:meth:`decode`). At test, MMDetection's post-processing (see
    the module docstring) with its ``test_cfg``: ``score_thresh`` (``score_thr``), ``topk_candidates``
    (``nms_pre``), ``min_box_size`` (``min_bbox_size``; None: no filter), ``nms_thresh`` (``nms.iou_threshold``)
    and ``detections_per_img`` (``max_per_img``). Detections come back in the input images' pixels: the
    boxes are mapped before the NMS, so the transform's ``postprocess`` is not run.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, anchor_generator: LevelAnchorGenerator, *,
                 min_size: int | Sequence[int] = 800, max_size: int = 1333, score_thresh: float = 0.05,
                 nms_thresh: float = 0.6, detections_per_img: int = 100, topk_candidates: int = 1000,
                 min_box_size: float | None = 0.0) -> None:
        super().__init__()
        self.transform = DetectionTransform(min_size, max_size)
        self.backbone = backbone
        self.head = head
        self.anchor_generator = anchor_generator
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates
        self.min_box_size = min_box_size

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
                ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        if self.training and targets is None:
            raise InputError(f"{type(self).__name__} in training mode needs targets (boxes and labels per image)")
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch, targets = self.transform(images, targets)
        features = list(self.backbone(batch.tensors).values())
        outputs = self.head(features)
        anchors = self.anchor_generator(batch, features)[0]  # the same for every image of the batch
        per_place = self.anchor_generator.num_anchors_per_location()
        level_counts = [f.shape[-2] * f.shape[-1] * a for f, a in zip(features, per_place)]
        if self.training:
            assigned = [self.assign(anchors, level_counts, t["boxes"].float()) for t in targets]
            return self.losses(targets, outputs, anchors, assigned, level_counts)
        return self.postprocess(outputs, anchors, level_counts, batch.image_sizes, original_sizes)

    @abstractmethod
    def assign(self, anchors: torch.Tensor, level_counts: list[int], boxes: torch.Tensor) -> torch.Tensor:
        """The index of the box each anchor learns from (-1: background; -2: ignored) for one image."""

    @abstractmethod
    def losses(self, targets: list[dict[str, torch.Tensor]], outputs: dict[str, torch.Tensor], anchors: torch.Tensor,
               assigned: list[torch.Tensor], level_counts: list[int]) -> dict[str, torch.Tensor]:
        """Named losses from the head's outputs, the anchors (every image's), each image's assignment and the
        number of anchors on each level."""

    @abstractmethod
    def decode(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, level: int,
               image_shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Boxes of some anchors of ``level`` from their outputs (rows of one image), clipped to the resized
        image (``image_shape``), and a factor for their scores (or None)."""

    def postprocess(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, level_counts: list[int],
                    image_shapes: list[tuple[int, int]], original_sizes: list[tuple[int, int]]
                    ) -> list[dict[str, torch.Tensor]]:
        """Each image's detections in its original pixels, labels 1..K (the module docstring's steps)."""
        detections = []
        starts = [0, *itertools.accumulate(level_counts)]
        for index, (image_shape, original_size) in enumerate(zip(image_shapes, original_sizes)):
            boxes, scores, classes, factors = [], [], [], []
            for level, (start, end) in enumerate(zip(starts, starts[1:])):
                level_outputs = {name: values[index, start:end] for name, values in outputs.items()}
                probabilities = level_outputs["cls_logits"].float().sigmoid()
                # MMDetection's filter_scores_and_topk: (place, class) pairs above the threshold, best first.
                candidates = torch.nonzero(probabilities > self.score_thresh)
                top, order = probabilities[candidates[:, 0], candidates[:, 1]].sort(descending=True)
                places, level_classes = candidates[order[:self.topk_candidates]].unbind(dim=1)
                level_boxes, factor = self.decode({name: values[places] for name, values in level_outputs.items()},
                                                  anchors[start:end][places], level, image_shape)
                boxes.append(level_boxes)
                scores.append(top[:self.topk_candidates])
                classes.append(level_classes)
                factors.append(factor)
            image_boxes = to_original_pixels(torch.cat(boxes), image_shape, original_size)
            image_scores, image_classes = torch.cat(scores), torch.cat(classes)
            if factors[0] is not None:
                image_scores = image_scores * torch.cat(factors)
            if self.min_box_size is not None and self.min_box_size >= 0:
                sizes = image_boxes[:, 2:] - image_boxes[:, :2]
                valid = (sizes > self.min_box_size).all(dim=1)
                image_boxes, image_scores, image_classes = image_boxes[valid], image_scores[valid], image_classes[valid]
            keep = batched_nms(image_boxes, image_scores, image_classes, self.nms_thresh)[:self.detections_per_img]
            detections.append({"boxes": image_boxes[keep], "scores": image_scores[keep],
                               "labels": image_classes[keep] + 1})
        return detections


def dense_flops_forward(detector: nn.Module, images: torch.Tensor) -> None:
    """What MMDetection's FLOP count runs of a one-stage detector: backbone, FPN and head on the image."""
    detector.head(list(detector.backbone(images).values()))


def dense_test_options(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """Our one-stage builders' keywords for a release config's ``model`` (its ``test_cfg``); keys it leaves out
    keep our defaults (the official values), but a missing ``min_bbox_size`` is MMDetection's: no filter."""
    test_cfg = model_config.get("test_cfg") or {}
    options: dict[str, Any] = {"min_box_size": test_cfg.get("min_bbox_size")}
    for ours, theirs in (("score_thresh", "score_thr"), ("topk_candidates", "nms_pre"),
                         ("detections_per_img", "max_per_img")):
        if theirs in test_cfg:
            options[ours] = test_cfg[theirs]
    nms_cfg = test_cfg.get("nms")
    if nms_cfg is not None:
        if not isinstance(nms_cfg, Mapping) or nms_cfg.get("type", "nms") != "nms" or "iou_threshold" not in nms_cfg:
            raise ReleaseFileError(f"test_cfg.nms is {nms_cfg!r}; only dict(type='nms', iou_threshold=...) runs here")
        options["nms_thresh"] = nms_cfg["iou_threshold"]
    return options


def positive_matches(targets: list[dict[str, torch.Tensor]], assigned: list[torch.Tensor]
                     ) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Each image's positive anchors, their boxes and their classes (0..K-1), and the losses' normaliser: the
    batch's positives, at least one per image (MMDetection's ``avg_factor``), averaged over the processes."""
    matches, positives = [], 0
    for target, matched in zip(targets, assigned):
        where = torch.where(matched >= 0)[0]
        positives += max(where.numel(), 1)
        matches.append((where, target["boxes"].float()[matched[where]], target["labels"][matched[where]] - 1))
    normaliser = mean_over_processes(torch.tensor(float(positives), device=assigned[0].device)).clamp(min=1)
    return matches, normaliser


class AtssAssigned(DenseDetector):
    """ATSS and GFL: one anchor per place, ATSS assignment (the ``assign_topk`` anchors per level nearest each
    box centre)."""

    def __init__(self, backbone: nn.Module, head: DenseHead, anchor_generator: LevelAnchorGenerator, *,
                 assign_topk: int = ATSS_TOPK, **kwargs: Any) -> None:
        if anchor_generator.num_anchors_per_location() != [1] * len(anchor_generator.strides):
            raise ValueError("ATSS and GFL heads predict one anchor per place: give one size and one ratio per level")
        super().__init__(backbone, head, anchor_generator, **kwargs)
        self.assign_topk = assign_topk

    def assign(self, anchors: torch.Tensor, level_counts: list[int], boxes: torch.Tensor) -> torch.Tensor:
        return atss_assign(anchors, level_counts, boxes, self.assign_topk)


def centerness_target(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS's centerness of each anchor centre in its box: ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``."""
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    left_top, right_bottom = centres - boxes[:, :2], boxes[:, 2:] - centres
    ratios = torch.minimum(left_top, right_bottom) / torch.maximum(left_top, right_bottom)
    return ratios.prod(dim=1).sqrt()


class ATSS(AtssAssigned):
    """ATSS (Zhang et al., CVPR 2020) as the official config: see the module docstring."""

    def __init__(self, backbone: nn.Module, head: DenseHead, anchor_generator: LevelAnchorGenerator, **kwargs) -> None:
        if head.centerness is None or head.bbox_reg.out_channels != 4:
            raise ValueError("ATSS needs a DenseHead with 4 box channels and a centerness conv")
        super().__init__(backbone, head, anchor_generator, **kwargs)
        self.box_coder = DeltaXYWHCoder(ATSS_BOX_STDS)

    def losses(self, targets: list[dict[str, torch.Tensor]], outputs: dict[str, torch.Tensor], anchors: torch.Tensor,
               assigned: list[torch.Tensor], level_counts: list[int]) -> dict[str, torch.Tensor]:
        logits, deltas = outputs["cls_logits"].float(), outputs["bbox_regression"].float()
        centerness = outputs["centerness"].float()[..., 0]
        classes = torch.zeros_like(logits)
        predicted, true, centre_logits, centre_targets = [], [], [], []
        matches, normaliser = positive_matches(targets, assigned)
        for i, (where, boxes, labels) in enumerate(matches):
            classes[i, where, labels] = 1.0
            predicted.append(self.box_coder.decode_single(deltas[i, where], anchors[where]))
            true.append(boxes)
            centre_logits.append(centerness[i, where])
            centre_targets.append(centerness_target(anchors[where], boxes))
        weights = torch.cat(centre_targets)
        box_normaliser = mean_over_processes(weights.sum()).clamp(min=1)
        giou = generalized_box_iou_loss(torch.cat(predicted), torch.cat(true), reduction="none")
        return {
            "classification": sigmoid_focal_loss(logits, classes, FOCAL_ALPHA, FOCAL_GAMMA, reduction="sum") / normaliser,
            "bbox_regression": GIOU_WEIGHT * (giou * weights).sum() / box_normaliser,
            "centerness": CENTERNESS_WEIGHT * F.binary_cross_entropy_with_logits(
                torch.cat(centre_logits), weights, reduction="sum") / normaliser,
        }

    def decode(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, level: int,
               image_shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = self.box_coder.decode_single(outputs["bbox_regression"].float(), anchors)
        return clip_boxes_to_image(boxes, image_shape), outputs["centerness"].float()[:, 0].sigmoid()


class GFL(AtssAssigned):
    """GFL (Li et al., NeurIPS 2020) as the official config: see the module docstring."""

    def __init__(self, backbone: nn.Module, head: DenseHead, anchor_generator: LevelAnchorGenerator,
                 reg_max: int = GFL_REG_MAX, **kwargs) -> None:
        if head.bbox_reg.out_channels != 4 * (reg_max + 1):
            raise ValueError(f"GFL with reg_max {reg_max} needs a DenseHead with {4 * (reg_max + 1)} box channels")
        super().__init__(backbone, head, anchor_generator, **kwargs)
        self.reg_max = reg_max

    def losses(self, targets: list[dict[str, torch.Tensor]], outputs: dict[str, torch.Tensor], anchors: torch.Tensor,
               assigned: list[torch.Tensor], level_counts: list[int]) -> dict[str, torch.Tensor]:
        logits, regression = outputs["cls_logits"].float(), outputs["bbox_regression"].float()
        level_strides = torch.tensor(self.anchor_generator.strides, dtype=torch.float32, device=anchors.device)
        strides = level_strides.repeat_interleave(torch.tensor(level_counts, device=anchors.device))
        quality = torch.zeros_like(logits)  # QFL's soft targets: the IoU at each positive's class
        predicted, true, weights, side_logits, side_targets = [], [], [], [], []
        matches, normaliser = positive_matches(targets, assigned)
        for i, (where, boxes, labels) in enumerate(matches):
            stride = strides[where, None]
            # Everything in units of the level's stride, as the distribution's bins are.
            centres = (anchors[where, :2] + anchors[where, 2:]) / 2 / stride
            boxes = boxes / stride
            place_logits = regression[i, where]
            predicted_boxes = distances_to_boxes(centres, integral(place_logits, self.reg_max))
            quality[i, where, labels] = box_iou(predicted_boxes.detach(), boxes).diagonal()
            predicted.append(predicted_boxes)
            true.append(boxes)
            weights.append(logits[i, where].detach().sigmoid().max(dim=1).values)
            side_logits.append(place_logits.reshape(-1, self.reg_max + 1))
            side_targets.append(boxes_to_distances(centres, boxes, self.reg_max - DFL_TARGET_MARGIN).reshape(-1))
        weight = torch.cat(weights)
        box_normaliser = mean_over_processes(weight.sum()).clamp(min=1)
        giou = generalized_box_iou_loss(torch.cat(predicted), torch.cat(true), reduction="none")
        dfl = distribution_focal_loss(torch.cat(side_logits), torch.cat(side_targets))
        return {
            "classification": quality_focal_loss(logits, quality, QFL_BETA).sum() / normaliser,
            "bbox_regression": GIOU_WEIGHT * (giou * weight).sum() / box_normaliser,
            # MMDetection averages DFL over the 4 sides of each box (avg_factor 4).
            "distribution": DFL_WEIGHT * (dfl * weight.repeat_interleave(4)).sum() / 4 / box_normaliser,
        }

    def decode(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, level: int,
               image_shape: tuple[int, int]) -> tuple[torch.Tensor, None]:
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        distances = integral(outputs["bbox_regression"].float(), self.reg_max) * self.anchor_generator.strides[level]
        return clip_boxes_to_image(distances_to_boxes(centres, distances), image_shape), None


def check_group_norm(detector: str, fpn_channels: int, key: str = "fpn_channels") -> None:
    """The head's GroupNorm needs ``fpn_channels`` (named ``key`` in the message) divisible by its groups."""
    if fpn_channels % GROUP_NORM_GROUPS:
        raise ConfigError(f"{key} must be a multiple of {GROUP_NORM_GROUPS} for {detector} (its head's GroupNorm "
                          f"has {GROUP_NORM_GROUPS} groups), got {fpn_channels}")


def one_anchor_per_place(settings: BuildSettings) -> LevelAnchorGenerator:
    return LevelAnchorGenerator([[s] for s in settings.anchor_sizes], [[1.0]] * len(settings.anchor_sizes))


def build_atss(neck: PyramidBackboneWithFPN, settings: BuildSettings, **kwargs) -> ATSS:
    """ATSS on ``neck``; ``kwargs`` go to :class:`DenseDetector`."""
    check_group_norm("atss", settings.fpn_channels)
    head = DenseHead(settings.fpn_channels, settings.num_classes, 4, with_centerness=True)
    return ATSS(neck, head, one_anchor_per_place(settings), min_size=settings.min_size, max_size=settings.max_size,
                **kwargs)


def build_gfl(neck: PyramidBackboneWithFPN, settings: BuildSettings, **kwargs) -> GFL:
    """GFL on ``neck``; ``kwargs`` go to :class:`DenseDetector`."""
    check_group_norm("gfl", settings.fpn_channels)
    head = DenseHead(settings.fpn_channels, settings.num_classes, 4 * (GFL_REG_MAX + 1))
    return GFL(neck, head, one_anchor_per_place(settings), min_size=settings.min_size, max_size=settings.max_size,
               **kwargs)


# -- release files (MMDetection 2.x names) ------------------------------------------------------------------------
def tower_key_rules() -> list[KeyRule]:
    """Our head towers' keys (Conv2dNormActivation: conv 0, GroupNorm 1) and MMDetection's ConvModule's."""
    return [KeyRule(f"head.{tower}_convs.{{i}}.{ours}.{{p}}", f"bbox_head.{tower}_convs.{{i}}.{theirs}.{{p}}")
            for tower in ("cls", "reg") for ours, theirs in (("0", "conv"), ("1", "gn"))]


_SCALE_KEY = re.compile(r"^bbox_head\.scales\.(\d+)\.scale$")  # MMCV's Scale, one module per level
_INTEGRAL_KEY = "bbox_head.integral.project"  # GFLHead's Integral buffer, linspace(0, reg_max, reg_max + 1)


def _head_to_ours(keys: KeyMap, head: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    scales = {int(match[1]): value for key, value in head.items() if (match := _SCALE_KEY.match(key))}
    if sorted(scales) != list(range(len(FPN_STRIDES))):
        raise ReleaseFileError(f"its MMDetection {keys.title} head has scales for levels {sorted(scales)}, "
                               f"expected 0-{len(FPN_STRIDES) - 1}")
    rest = {key: value for key, value in head.items() if not _SCALE_KEY.match(key) and key != _INTEGRAL_KEY}
    return {**keys.to_ours(rest), "head.scales": torch.stack([scales[i].reshape(()) for i in range(len(scales))])}


def _head_to_release(keys: KeyMap, head: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = keys.to_release({key: value for key, value in head.items() if key != "head.scales"})
    out.update({f"bbox_head.scales.{i}.scale": scale.clone() for i, scale in enumerate(head["head.scales"])})
    return out


def channels_of(head: Mapping[str, torch.Tensor], key: str) -> int:
    """The output channels of release weight ``key``; a clear error when the file lacks it."""
    if key not in head:
        raise ReleaseFileError(f"it has no {key}, which the head's classes are read from")
    return head[key].shape[0]


def dense_test_cfg(iou_threshold: float) -> dict[str, Any]:
    """The official one-stage configs' ``test_cfg`` with NMS at ``iou_threshold``."""
    return dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=iou_threshold),
                max_per_img=100)


def _dense_layout(mmdet_type: str, prefix: str, extra: Sequence[KeyRule],
                  fixed: Mapping[str, torch.Tensor] | None = None) -> ReleaseLayout:
    keys = KeyMap(mmdet_type, [*tower_key_rules(), KeyRule("head.cls_logits.{p}", f"bbox_head.{prefix}_cls.{{p}}"),
                               KeyRule("head.bbox_reg.{p}", f"bbox_head.{prefix}_reg.{{p}}"), *extra])
    return ReleaseLayout(
        mmdet_type=mmdet_type,
        recognise=lambda names: any(name.startswith(f"bbox_head.{prefix}_cls.") for name in names),
        num_classes=lambda head: channels_of(head, f"bbox_head.{prefix}_cls.weight"),
        head_to_ours=lambda head, num_classes: _head_to_ours(keys, head),
        head_to_release=lambda head, num_classes: {**_head_to_release(keys, head),
                                                   **{key: value.clone() for key, value in (fixed or {}).items()}},
        test_options=dense_test_options,
        test_cfg=dense_test_cfg(0.6),
    )


ATSS_RELEASE = _dense_layout("ATSS", "atss", [KeyRule("head.centerness.{p}", "bbox_head.atss_centerness.{p}")])
GFL_RELEASE = _dense_layout("GFL", "gfl", [],
                            {_INTEGRAL_KEY: torch.linspace(0, GFL_REG_MAX, GFL_REG_MAX + 1)})


def _dense_spec(name: str, title: str, build, release: ReleaseLayout) -> DetectorSpec:
    return DetectorSpec(
        name=name, title=title, family="one-stage", with_masks=False, feature_levels=(1, 2, 3),
        extra_levels=p6p7_from_p5, anchor_sizes=ANCHOR_SIZES, build=build,
        config_options=lambda model: dict(detections_per_img=model.detections_per_img),
        check_config=lambda model: check_group_norm(name, model.fpn_channels, "model.fpn_channels"),
        flops_forward=dense_flops_forward, paper=(4, None), release=release,
    )


ATSS_SPEC = _dense_spec("atss", "ATSS", build_atss, ATSS_RELEASE)
GFL_SPEC = _dense_spec("gfl", "GFL", build_gfl, GFL_RELEASE)
