"""The dense (one-stage) detectors: RetinaNet's anchor generator, and ATSS and GFL (Table 4) on torchvision's RetinaNet.

All three are torchvision's ``RetinaNet``: its image transform (normalise, resize at test, pad to 32), its
forward pass over the FPN levels P3-P7, anchors per level (:class:`LevelAnchorGenerator`, shared), and
its test-time shape, a top-k per level then class-wise NMS. ATSS and GFL subclass it
(:class:`DenseDetector`) with the settings of the official MMDetection 2.x configs
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

The heads predict K classes (labels 1..K of the targets map to channels 0..K-1), not RetinaNet's K + 1.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import Conv2dNormActivation, batched_nms, box_iou, clip_boxes_to_image, generalized_box_iou_loss
from torchvision.ops import sigmoid_focal_loss

from ..engine.config import ConfigError
from ..engine.distributed import mean_over_processes
from .assigners import atss_assign
from .losses import boxes_to_distances, distances_to_boxes, distribution_focal_loss, integral, quality_focal_loss

from .anchors import FPN_STRIDES, LevelAnchorGenerator
from .neck import PyramidBackboneWithFPN, p6p7_from_p5
from .retinanet import dense_flops_forward
from .spec import BuildSettings, DetectorSpec

GROUP_NORM_GROUPS = 32  # the head towers' GroupNorm(32), as MMDetection's
# Base size per level P3-P7: the official configs' octave base scale 8 x strides 8..128, one scale, ratio 1.
ANCHOR_SIZES = (64, 128, 256, 512, 1024)
PRIOR_PROBABILITY = 0.01  # the class convs' bias starts every score at this probability
ATSS_TOPK = 9
ATSS_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # torchvision's BoxCoder weights are MMDetection's 1 / target_stds
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
    ``cls_logits`` (N, A, K), ``bbox_regression`` (N, A, box_channels), ``centerness`` (N, A, 1) when it
    has one, and ``level`` (1, A), each anchor's level index: torchvision's ``RetinaNet.forward`` hands
    ``compute_loss`` the anchors without their levels, which ATSS (top-k per level) and GFL (distances in
    strides) need, and splits every output per level at test, this one too.
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
        outputs: dict[str, list[torch.Tensor]] = {"cls_logits": [], "bbox_regression": [], "level": []}
        if self.centerness is not None:
            outputs["centerness"] = []
        for level, x in enumerate(features):
            cls_features, reg_features = self.cls_convs(x), self.reg_convs(x)
            outputs["cls_logits"].append(_per_place(self.cls_logits(cls_features)))
            outputs["bbox_regression"].append(_per_place(self.bbox_reg(reg_features) * self.scales[level]))
            if self.centerness is not None:
                outputs["centerness"].append(_per_place(self.centerness(reg_features)))
            places = x.shape[-2] * x.shape[-1]
            outputs["level"].append(torch.full((1, places), level, dtype=torch.long, device=x.device))
        return {name: torch.cat(values, dim=1) for name, values in outputs.items()}


class DenseDetector(RetinaNet, ABC):
    """torchvision's RetinaNet with a :class:`DenseHead`, ATSS assignment, and a subclass's losses
    (:meth:`losses`) and box decoding (:meth:`decode`); the test-time top-k and NMS are shared here."""

    def __init__(self, backbone: nn.Module, head: DenseHead, anchor_generator: LevelAnchorGenerator, *,
                 assign_topk: int = ATSS_TOPK, score_thresh: float = 0.05, nms_thresh: float = 0.6,
                 detections_per_img: int = 100, topk_candidates: int = 1000, **kwargs) -> None:
        if anchor_generator.num_anchors_per_location() != [1] * len(anchor_generator.strides):
            raise ValueError("ATSS and GFL heads predict one anchor per place: give one size and one ratio per level")
        super().__init__(backbone, head.num_classes, anchor_generator=anchor_generator, head=head,
                         score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                         topk_candidates=topk_candidates, **kwargs)
        self.assign_topk = assign_topk

    def compute_loss(self, targets: list[dict[str, torch.Tensor]], head_outputs: dict[str, torch.Tensor],
                     anchors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """ATSS-assign every image's anchors, then the subclass's losses."""
        levels = head_outputs["level"][0]
        counts = torch.bincount(levels, minlength=len(self.anchor_generator.strides)).tolist()
        strides = torch.tensor(self.anchor_generator.strides, dtype=torch.float32, device=levels.device)[levels]
        anchors = [a.float() for a in anchors]  # fp16 autocast makes fp16 anchors: too coarse for 1000-pixel boxes
        assigned = [atss_assign(a, counts, t["boxes"].float(), self.assign_topk) for a, t in zip(anchors, targets)]
        return self.losses(targets, head_outputs, anchors, assigned, strides)

    @abstractmethod
    def losses(self, targets: list[dict[str, torch.Tensor]], outputs: dict[str, torch.Tensor],
               anchors: list[torch.Tensor], assigned: list[torch.Tensor], strides: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named losses from the head's outputs, each image's anchors and their assigned box (-1: none), and
        each anchor's stride."""

    @abstractmethod
    def decode(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Boxes of some anchors of one level and image from their outputs (rows of one image), and a factor
        for their scores (or None)."""

    def postprocess_detections(self, head_outputs: dict[str, list[torch.Tensor]], anchors: list[list[torch.Tensor]],
                               image_shapes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """Per image and level, the top ``topk_candidates`` (anchor, class) scores above ``score_thresh`` (as
        RetinaNet's and MMDetection's ``filter_scores_and_topk``), decoded and clipped; then class-wise NMS
        and the best ``detections_per_img``. Labels are 1..K."""
        detections = []
        for index, image_shape in enumerate(image_shapes):
            boxes, scores, labels = [], [], []
            for level, level_anchors in enumerate(anchors[index]):
                outputs = {name: values[level][index] for name, values in head_outputs.items() if name != "level"}
                probabilities = outputs["cls_logits"].float().sigmoid().flatten()
                candidates = torch.where(probabilities > self.score_thresh)[0]
                top, order = probabilities[candidates].topk(min(self.topk_candidates, candidates.numel()))
                candidates = candidates[order]
                num_classes = outputs["cls_logits"].shape[-1]
                places = torch.div(candidates, num_classes, rounding_mode="floor")
                chosen = {name: values[places] for name, values in outputs.items()}
                level_boxes, factor = self.decode(chosen, level_anchors[places].float(), self.anchor_generator.strides[level])
                boxes.append(clip_boxes_to_image(level_boxes, image_shape))
                scores.append(top if factor is None else top * factor)
                labels.append(candidates % num_classes + 1)
            image_boxes, image_scores, image_labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            keep = batched_nms(image_boxes, image_scores, image_labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": image_boxes[keep], "scores": image_scores[keep], "labels": image_labels[keep]})
        return detections


def centerness_target(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS's centerness of each anchor centre in its box: ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``."""
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    left_top, right_bottom = centres - boxes[:, :2], boxes[:, 2:] - centres
    ratios = torch.minimum(left_top, right_bottom) / torch.maximum(left_top, right_bottom)
    return ratios.prod(dim=1).sqrt()


class ATSS(DenseDetector):
    """ATSS (Zhang et al., CVPR 2020) as the official config: see the module docstring."""

    def __init__(self, backbone: nn.Module, head: DenseHead, anchor_generator: LevelAnchorGenerator, **kwargs) -> None:
        if head.centerness is None or head.bbox_reg.out_channels != 4:
            raise ValueError("ATSS needs a DenseHead with 4 box channels and a centerness conv")
        super().__init__(backbone, head, anchor_generator, **kwargs)
        self.box_coder = BoxCoder(weights=ATSS_BOX_WEIGHTS)

    def losses(self, targets: list[dict[str, torch.Tensor]], outputs: dict[str, torch.Tensor],
               anchors: list[torch.Tensor], assigned: list[torch.Tensor], strides: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, deltas = outputs["cls_logits"].float(), outputs["bbox_regression"].float()
        centerness = outputs["centerness"].float()[..., 0]
        classes = torch.zeros_like(logits)
        predicted, true, centre_logits, centre_targets = [], [], [], []
        positives = 0
        for i, (target, matched, image_anchors) in enumerate(zip(targets, assigned, anchors)):
            where = torch.where(matched >= 0)[0]
            positives += max(where.numel(), 1)  # at least one per image, as MMDetection counts
            boxes = target["boxes"].float()[matched[where]]
            classes[i, where, target["labels"][matched[where]] - 1] = 1.0
            predicted.append(self.box_coder.decode_single(deltas[i, where], image_anchors[where]))
            true.append(boxes)
            centre_logits.append(centerness[i, where])
            centre_targets.append(centerness_target(image_anchors[where], boxes))
        normaliser = mean_over_processes(logits.new_tensor(float(positives))).clamp(min=1)
        weights = torch.cat(centre_targets)
        box_normaliser = mean_over_processes(weights.sum()).clamp(min=1)
        giou = generalized_box_iou_loss(torch.cat(predicted), torch.cat(true), reduction="none")
        return {
            "classification": sigmoid_focal_loss(logits, classes, FOCAL_ALPHA, FOCAL_GAMMA, reduction="sum") / normaliser,
            "bbox_regression": GIOU_WEIGHT * (giou * weights).sum() / box_normaliser,
            "centerness": CENTERNESS_WEIGHT * F.binary_cross_entropy_with_logits(
                torch.cat(centre_logits), weights, reduction="sum") / normaliser,
        }

    def decode(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = self.box_coder.decode_single(outputs["bbox_regression"].float(), anchors)
        return boxes, outputs["centerness"].float()[:, 0].sigmoid()


class GFL(DenseDetector):
    """GFL (Li et al., NeurIPS 2020) as the official config: see the module docstring."""

    def __init__(self, backbone: nn.Module, head: DenseHead, anchor_generator: LevelAnchorGenerator,
                 reg_max: int = GFL_REG_MAX, **kwargs) -> None:
        if head.bbox_reg.out_channels != 4 * (reg_max + 1):
            raise ValueError(f"GFL with reg_max {reg_max} needs a DenseHead with {4 * (reg_max + 1)} box channels")
        super().__init__(backbone, head, anchor_generator, **kwargs)
        self.reg_max = reg_max

    def losses(self, targets: list[dict[str, torch.Tensor]], outputs: dict[str, torch.Tensor],
               anchors: list[torch.Tensor], assigned: list[torch.Tensor], strides: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, regression = outputs["cls_logits"].float(), outputs["bbox_regression"].float()
        quality = torch.zeros_like(logits)  # QFL's soft targets: the IoU at each positive's class
        predicted, true, weights, side_logits, side_targets = [], [], [], [], []
        positives = 0
        for i, (target, matched, image_anchors) in enumerate(zip(targets, assigned, anchors)):
            where = torch.where(matched >= 0)[0]
            positives += max(where.numel(), 1)
            stride = strides[where, None]
            # Everything in units of the level's stride, as the distribution's bins are.
            centres = (image_anchors[where, :2] + image_anchors[where, 2:]) / 2 / stride
            boxes = target["boxes"].float()[matched[where]] / stride
            place_logits = regression[i, where]
            predicted_boxes = distances_to_boxes(centres, integral(place_logits, self.reg_max))
            iou = box_iou(predicted_boxes.detach(), boxes).diagonal()
            quality[i, where, target["labels"][matched[where]] - 1] = iou
            predicted.append(predicted_boxes)
            true.append(boxes)
            weights.append(logits[i, where].detach().sigmoid().max(dim=1).values)
            side_logits.append(place_logits.reshape(-1, self.reg_max + 1))
            side_targets.append(boxes_to_distances(centres, boxes, self.reg_max - DFL_TARGET_MARGIN).reshape(-1))
        normaliser = mean_over_processes(logits.new_tensor(float(positives))).clamp(min=1)
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

    def decode(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor, stride: int) -> tuple[torch.Tensor, None]:
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        return distances_to_boxes(centres, integral(outputs["bbox_regression"].float(), self.reg_max) * stride), None


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


def _dense_spec(name: str, title: str, build) -> DetectorSpec:
    return DetectorSpec(
        name=name, title=title, family="one-stage", with_masks=False, feature_levels=(1, 2, 3),
        extra_levels=p6p7_from_p5, anchor_sizes=ANCHOR_SIZES, build=build,
        config_options=lambda model: dict(detections_per_img=model.detections_per_img),
        check_config=lambda model: check_group_norm(name, model.fpn_channels, "model.fpn_channels"),
        flops_forward=dense_flops_forward, paper=(4, None),
    )


ATSS_SPEC = _dense_spec("atss", "ATSS", build_atss)
GFL_SPEC = _dense_spec("gfl", "GFL", build_gfl)
