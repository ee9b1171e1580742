"""Cascade Mask R-CNN's RoI heads (Table 4), as the official ``cascade_mask_rcnn_pvt_v2_b2_fpn_3x_mstrain_fp16.py``.

Three stages, each with its own box head (4 shared 3x3 convs of 256 with BatchNorm and one fc of 1024,
MMDetection's ``ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1, norm_cfg=BN)``), class-specific box
regression trained with GIoU (weight 10) on the decoded boxes, softmax cross-entropy, and its own mask head
(4 convs, 28x28 masks: the official base config gives one mask head dict, which MMDetection's
``CascadeRoIHead`` repeats for every stage). Stage ``s`` matches its proposals at IoU 0.5 / 0.6 / 0.7, samples
512 RoIs at 25% positives with the ground truth added, and its losses are weighted 1 / 0.5 / 0.25; the boxes it
refines (detached, ground-truth proposals removed) are the next stage's proposals.

At test, as MMDetection's ``CascadeRoIHead.predict``: the proposals are refined by stages 1 and 2, each RoI by
the deltas of its best foreground class (``regress_by_class`` of the arg-max of that stage's logits) and
clipped to the image; the final scores are the softmax of the three stages' logits on the last stage's RoIs
summed and divided by 3, the boxes come from the last stage's regression and are post-processed as Mask
R-CNN's (:class:`~pvtv2.detection.two_stage.roi_heads.StandardRoIHeads`), and the masks are the mean of the three mask
heads' sigmoid masks (MMDetection's ``merge_aug_masks`` over stages).

Everything else is Mask R-CNN's (:mod:`pvtv2.detection.two_stage.rpn`, :mod:`pvtv2.detection.two_stage.roi_heads`: the class
layout, assignment and post-processing) and torchvision's (RoIHeads' sampling and ground-truth proposals, the
Mask R-CNN mask loss and inference, ``generalized_box_iou_loss``, ``roi_align`` through the aligned pooler of
:mod:`pvtv2.detection.roi_align`) except the stage loop, which torchvision lacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.roi_heads import maskrcnn_inference, maskrcnn_loss
from torchvision.ops import box_iou, clip_boxes_to_image, generalized_box_iou_loss

from ...errors import InputError
from ..boxes import DeltaXYWHCoder
from ..key_map import KeyMap, KeyRule
from ..max_iou_assigner import MaxIoUMatcher
from ..neck import PyramidBackboneWithFPN, max_pooled_p6
from ..roi_align import ADAPTIVE_SAMPLING, FPN_LEVELS, AlignedMultiScaleRoIAlign
from ..spec import BuildSettings, DetectorSpec
from ..transform import DetectionTransform
from .mask_rcnn import (RPN_RULES, TEST_CFG, dummy_rois, predictor_rules, release_layout, split_options,
                        two_stage_options)
from .roi_heads import BoxPredictor, MaskPredictor, StandardRoIHeads
from .rpn import ANCHOR_SIZES, build_rpn

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
STAGE_BOX_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
GIOU_LOSS_WEIGHT = 10.0
BOX_HEAD_CONVS = 4
MASK_HEAD_CONVS = 4


class CascadeRoIHeads(StandardRoIHeads):
    """Cascade R-CNN's box stages and one mask head per stage, on Mask R-CNN's RoI heads (torchvision's
    sampler and ground-truth proposals, MMDetection's post-processing); ``box_head``, ``box_predictor``,
    ``mask_head`` and ``mask_predictor`` are ModuleLists with one entry per stage."""

    def __init__(
        self,
        fpn_channels: int,
        num_classes: int,
        *,
        box_head_channels: int = 1024,
        mask_head_channels: int = 256,
        stage_ious: Sequence[float] = STAGE_IOUS,
        stage_loss_weights: Sequence[float] = STAGE_LOSS_WEIGHTS,
        stage_box_stds: Sequence[Sequence[float]] = STAGE_BOX_STDS,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        if not len(stage_ious) == len(stage_loss_weights) == len(stage_box_stds) >= 1:
            raise InputError(f"the cascade needs one IoU, loss weight and box std per stage, got {len(stage_ious)}, "
                             f"{len(stage_loss_weights)} and {len(stage_box_stds)}")
        stages = range(len(stage_ious))
        box_heads = nn.ModuleList(
            FastRCNNConvFCHead((fpn_channels, 7, 7), [fpn_channels] * BOX_HEAD_CONVS, [box_head_channels],
                               norm_layer=nn.BatchNorm2d) for _ in stages)
        box_predictors = nn.ModuleList(BoxPredictor(box_head_channels, num_classes) for _ in stages)
        mask_heads = nn.ModuleList(MaskRCNNHeads(fpn_channels, (mask_head_channels,) * MASK_HEAD_CONVS, 1)
                                   for _ in stages)
        mask_predictors = nn.ModuleList(MaskPredictor(mask_head_channels, mask_head_channels, num_classes)
                                        for _ in stages)
        # The post-processing decodes with the last stage's stds: the final boxes are its.
        super().__init__(
            AlignedMultiScaleRoIAlign(FPN_LEVELS, 7, ADAPTIVE_SAMPLING), box_heads, box_predictors,
            AlignedMultiScaleRoIAlign(FPN_LEVELS, 14, ADAPTIVE_SAMPLING), mask_heads, mask_predictors,
            score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
            batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction,
            box_stds=stage_box_stds[-1])
        # One IoU threshold per stage, no low-quality matches (MMDetection's MaxIoUAssigner with
        # pos_iou_thr = neg_iou_thr = min_pos_iou, match_low_quality=False).
        self.stage_matchers = [MaxIoUMatcher(t, t, allow_low_quality_matches=False) for t in stage_ious]
        self.stage_coders = [DeltaXYWHCoder(stds) for stds in stage_box_stds]
        self.stage_loss_weights = tuple(stage_loss_weights)
        self.num_stages = len(stage_ious)
        for head in self.box_head:  # MMDetection's ConvFCBBoxHead: Xavier shared fc (the predictors init themselves)
            for layer in head.modules():
                if isinstance(layer, nn.Linear) and layer.weight.device.type != "meta":
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)

    def stage_targets(self, stage: int, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[
            list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Stage ``stage``'s sampled RoIs per image with their labels (0: background), matched ground-truth
        boxes and indices, and whether each RoI is a ground-truth box added as a proposal."""
        gt_boxes = [t["boxes"].to(p.dtype) for t, p in zip(targets, proposals)]
        with_gt = self.add_gt_proposals(proposals, gt_boxes)
        labels, matched = [], []
        for rois, boxes, target in zip(with_gt, gt_boxes, targets):
            if len(boxes) == 0:  # no objects: every RoI is background
                matched.append(torch.zeros(len(rois), dtype=torch.int64, device=rois.device))
                labels.append(torch.zeros(len(rois), dtype=torch.int64, device=rois.device))
                continue
            index = self.stage_matchers[stage](box_iou(boxes, rois))
            image_labels = target["labels"][index.clamp(min=0)].to(torch.int64)
            image_labels[index == MaxIoUMatcher.BELOW_LOW_THRESHOLD] = 0
            image_labels[index == MaxIoUMatcher.BETWEEN_THRESHOLDS] = -1  # none when the two thresholds are equal
            matched.append(index.clamp(min=0))
            labels.append(image_labels)
        keep = self.subsample(labels)
        sampled = [rois[k] for rois, k in zip(with_gt, keep)]
        is_gt = [k >= len(p) for p, k in zip(proposals, keep)]  # add_gt_proposals appends the ground truth
        matched = [m[k] for m, k in zip(matched, keep)]
        labels = [lab[k] for lab, k in zip(labels, keep)]
        matched_boxes = [b[m] if len(b) else torch.zeros_like(r) for b, m, r in zip(gt_boxes, matched, sampled)]
        return sampled, labels, matched_boxes, matched, is_gt

    def stage_boxes(self, stage: int, deltas: Tensor, rois: Tensor, labels: Tensor) -> Tensor:
        """Stage ``stage``'s boxes decoded from its deltas for class ``labels`` of each RoI (N, 4), in float
        (fp16 would round 1000-pixel coordinates)."""
        per_class = deltas.unflatten(1, (-1, 4))
        picked = per_class[torch.arange(len(rois), device=rois.device), labels]
        return self.stage_coders[stage].decode_single(picked.float(), rois.float())

    def refine(self, stage: int, rois: list[Tensor], class_logits: Tensor, deltas: Tensor,
               labels: Tensor | None, image_shapes: list[tuple[int, int]]) -> list[Tensor]:
        """The next stage's proposals: each RoI regressed for its ground-truth class (positives in training)
        or its best foreground class, clipped to the image and detached (MMDetection's ``refine_bboxes``)."""
        best = class_logits[:, 1:].argmax(dim=1) + 1
        chosen = best if labels is None else torch.where(labels > 0, labels, best)
        boxes = self.stage_boxes(stage, deltas, torch.cat(rois), chosen).detach()
        return [clip_boxes_to_image(b, shape) for b, shape in zip(boxes.split([len(r) for r in rois]), image_shapes)]

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training: the stages' named losses (``loss_classifier_s1``, ``loss_box_giou_s1``, ``loss_mask_s1``,
        ...) and no detections; eval: torchvision-style detections with ``masks`` and no losses."""
        if self.training:
            if targets is None or any("masks" not in t for t in targets):
                raise InputError("cascade_mask_rcnn trains on targets with boxes, labels and masks; got targets "
                                 "without masks")
            return [], self._train_forward(features, [p.detach() for p in proposals], image_shapes, targets)
        return self._test_forward(features, proposals, image_shapes), {}

    def _train_forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                       image_shapes: list[tuple[int, int]], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Each stage's losses, weighted, on its own sampled RoIs; its refined boxes feed the next stage."""
        losses: dict[str, Tensor] = {}
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        for stage in range(self.num_stages):
            rois, labels, matched_boxes, matched, is_gt = self.stage_targets(stage, proposals, targets)
            pooled = self.box_roi_pool(features, rois, image_shapes)
            class_logits, deltas = self.box_predictor[stage](self.box_head[stage](pooled))
            all_labels = torch.cat(labels)
            weight = self.stage_loss_weights[stage]
            name = f"s{stage + 1}"
            losses[f"loss_classifier_{name}"] = weight * F.cross_entropy(class_logits.float(), all_labels)
            positive = torch.where(all_labels > 0)[0]
            decoded = self.stage_boxes(stage, deltas[positive], torch.cat(rois)[positive], all_labels[positive])
            # Summed over positives and divided by all sampled RoIs, as MMDetection's avg_factor (and
            # torchvision's box loss) do.
            giou = generalized_box_iou_loss(decoded, torch.cat(matched_boxes)[positive].float(), reduction="sum")
            losses[f"loss_box_giou_{name}"] = weight * GIOU_LOSS_WEIGHT * giou / max(all_labels.numel(), 1)

            positives = [torch.where(lab > 0)[0] for lab in labels]
            mask_rois = [r[p] for r, p in zip(rois, positives)]
            mask_logits = self.mask_predictor[stage](self.mask_head[stage](
                self.mask_roi_pool(features, mask_rois, image_shapes)))
            losses[f"loss_mask_{name}"] = weight * maskrcnn_loss(
                mask_logits, mask_rois, gt_masks, gt_labels, [m[p] for m, p in zip(matched, positives)])

            if stage + 1 < self.num_stages:
                refined = self.refine(stage, rois, class_logits, deltas, all_labels, image_shapes)
                proposals = [r[~g] for r, g in zip(refined, is_gt)]  # the next stage adds the ground truth again
        return losses

    def _test_forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                      image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Proposals refined by every stage but the last; averaged logits, last-stage boxes, averaged masks."""
        rois = proposals
        stage_logits = []
        for stage in range(self.num_stages):
            pooled = self.box_roi_pool(features, rois, image_shapes)
            class_logits, deltas = self.box_predictor[stage](self.box_head[stage](pooled))
            stage_logits.append(class_logits.float())
            if stage + 1 < self.num_stages:
                rois = self.refine(stage, rois, class_logits, deltas, None, image_shapes)
        # self.box_coder is the last stage's: the boxes come from its regression, the scores from all stages
        # (their logits summed, then divided: MMDetection's order of operations).
        boxes, scores, labels = self.postprocess_detections(sum(stage_logits) / len(stage_logits), deltas.float(),
                                                            [r.float() for r in rois], image_shapes)
        detections = [dict(boxes=b, labels=lab, scores=s) for b, s, lab in zip(boxes, scores, labels)]
        pooled = self.mask_roi_pool(features, boxes, image_shapes)
        stage_probs = [maskrcnn_inference(self.mask_predictor[s](self.mask_head[s](pooled)), labels)
                       for s in range(self.num_stages)]
        for index, detection in enumerate(detections):
            detection["masks"] = torch.stack([probs[index] for probs in stage_probs]).mean(0)
        return detections


def build_cascade_mask_rcnn(neck: PyramidBackboneWithFPN, settings: BuildSettings,
                            **options: Any) -> GeneralizedRCNN:
    """Cascade Mask R-CNN on ``neck``: Mask R-CNN's RPN and the cascade's RoI heads; ``options`` as Mask
    R-CNN's (:data:`~pvtv2.detection.two_stage.mask_rcnn.RPN_OPTIONS`, :data:`~pvtv2.detection.two_stage.mask_rcnn.ROI_OPTIONS`)."""
    rpn_options, roi_options = split_options(options, "cascade_mask_rcnn")
    heads = CascadeRoIHeads(settings.fpn_channels, settings.num_classes, box_head_channels=settings.box_head_channels,
                            mask_head_channels=settings.mask_head_channels, **roi_options)
    return GeneralizedRCNN(neck, build_rpn(settings.fpn_channels, settings.anchor_sizes, **rpn_options), heads,
                           DetectionTransform(settings.min_size, settings.max_size))


def cascade_flops_forward(detector: nn.Module, images: Tensor) -> None:
    """MMDetection's dummy forward runs every stage's box and mask heads on the same RoIs."""
    box_rois, mask_rois = dummy_rois(detector, images)
    heads = detector.roi_heads
    for stage in range(heads.num_stages):
        heads.box_predictor[stage](heads.box_head[stage](box_rois))
        heads.mask_predictor[stage](heads.mask_head[stage](mask_rois))


# ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1, norm_cfg=SyncBN): ConvModules of a conv (no bias) and
# "bn", then one fc; our FastRCNNConvFCHead holds them as 0-3 (conv, norm, ReLU), 4 Flatten, 5 the fc.
KEY_MAP = KeyMap("Cascade Mask R-CNN", (
    *RPN_RULES,
    KeyRule("roi_heads.box_head.{s}.{i}.0.{p}", "roi_head.bbox_head.{s}.shared_convs.{i}.conv.{p}"),
    KeyRule("roi_heads.box_head.{s}.{i}.1.{p}", "roi_head.bbox_head.{s}.shared_convs.{i}.bn.{p}"),
    KeyRule(f"roi_heads.box_head.{{s}}.{BOX_HEAD_CONVS + 1}.{{p}}", "roi_head.bbox_head.{s}.shared_fcs.0.{p}"),
    *predictor_rules("{s}."),
))
# The official test_cfg (configs/_base_/models/cascade_mask_rcnn_pvtv2_b2_fpn.py): Mask R-CNN's, with the 2.x
# RPN keys nms_across_levels and nms_post (max_per_img is what MMDetection 2.13 and 3.x keep).
CASCADE_TEST_CFG = dict(rpn=dict(nms_across_levels=False, nms_pre=1000, nms_post=1000, max_per_img=1000,
                                 nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
                        rcnn=dict(TEST_CFG["rcnn"]))

SPEC = DetectorSpec(
    name="cascade_mask_rcnn", title="Cascade Mask R-CNN", family="two-stage", with_masks=True,
    feature_levels=(0, 1, 2, 3), extra_levels=max_pooled_p6, anchor_sizes=ANCHOR_SIZES, build=build_cascade_mask_rcnn,
    config_options=two_stage_options, flops_forward=cascade_flops_forward, paper=(4, None),
    release=release_layout("CascadeRCNN", KEY_MAP, "roi_head.bbox_head.0.fc_cls.weight", CASCADE_TEST_CFG),
)
