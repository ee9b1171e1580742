"""Cascade Mask R-CNN's RoI heads (Table 4), as the official ``cascade_mask_rcnn_pvt_v2_b2_fpn_3x_mstrain_fp16.py``.

Three stages, each with its own box head (4 shared 3x3 convs of 256 with BatchNorm and one fc of 1024,
MMDetection's ``ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1, norm_cfg=BN)``), class-specific box
regression trained with GIoU (weight 10) on the decoded boxes, softmax cross-entropy, and its own mask head
(4 convs, 28x28 masks: the official base config gives one mask head dict, which MMDetection's
``CascadeRoIHead`` repeats for every stage). Stage ``s`` matches its proposals at IoU 0.5 / 0.6 / 0.7, samples
512 RoIs at 25% positives with the ground truth added, and its losses are weighted 1 / 0.5 / 0.25; the boxes it
refines (detached, ground-truth proposals removed) are the next stage's proposals.

At test the proposals are refined by stages 1 and 2 with their best foreground class, the three stages' class
logits on the last stage's RoIs are averaged (MMDetection averages ``cls_score`` before the softmax), the boxes
come from the last stage's regression, and the mask probabilities of the three mask heads are averaged
(MMDetection's ``merge_aug_masks`` over stages).

Everything is torchvision's (RoIHeads' sampling and post-processing, Matcher, BoxCoder, the Mask R-CNN mask
loss and inference, ``generalized_box_iou_loss``, ``roi_align``, through the aligned pooler of
:mod:`pvtv2.detection.roi_align`) except the stage loop, which torchvision lacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import box_iou, clip_boxes_to_image, generalized_box_iou_loss

from ..errors import InputError
from .mask_rcnn import ANCHOR_SIZES, dummy_rois, rpn_anchors, two_stage_options
from .neck import PyramidBackboneWithFPN, max_pooled_p6
from .roi_align import ADAPTIVE_SAMPLING, FPN_LEVELS, AlignedMultiScaleRoIAlign
from .spec import BuildSettings, DetectorSpec

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
STAGE_BOX_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
GIOU_LOSS_WEIGHT = 10.0
BOX_HEAD_CONVS = 4
MASK_HEAD_CONVS = 4


class CascadeRoIHeads(RoIHeads):
    """Cascade R-CNN's box stages and one mask head per stage, on torchvision's RoIHeads (its sampler, gt
    proposals and post-processing); ``box_head``, ``box_predictor``, ``mask_head`` and ``mask_predictor``
    are ModuleLists with one entry per stage."""

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
        box_predictors = nn.ModuleList(FastRCNNPredictor(box_head_channels, num_classes + 1) for _ in stages)
        mask_heads = nn.ModuleList(MaskRCNNHeads(fpn_channels, (mask_head_channels,) * MASK_HEAD_CONVS, 1)
                                   for _ in stages)
        mask_predictors = nn.ModuleList(MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes + 1)
                                        for _ in stages)
        last_coder_weights = tuple(1 / s for s in stage_box_stds[-1])
        super().__init__(
            AlignedMultiScaleRoIAlign(FPN_LEVELS, 7, ADAPTIVE_SAMPLING), box_heads, box_predictors,
            stage_ious[0], stage_ious[0], batch_size_per_image, positive_fraction, last_coder_weights,
            score_thresh, nms_thresh, detections_per_img,
            mask_roi_pool=AlignedMultiScaleRoIAlign(FPN_LEVELS, 14, ADAPTIVE_SAMPLING), mask_head=mask_heads,
            mask_predictor=mask_predictors,
        )
        # One IoU threshold per stage, no low-quality matches (MMDetection's MaxIoUAssigner with
        # pos_iou_thr = neg_iou_thr = min_pos_iou, match_low_quality=False).
        self.stage_matchers = [Matcher(t, t, allow_low_quality_matches=False) for t in stage_ious]
        # MMDetection's DeltaXYWHBBoxCoder divides the deltas by the stds; torchvision's multiplies by weights.
        self.stage_coders = [BoxCoder(tuple(1 / s for s in stds)) for stds in stage_box_stds]
        self.stage_loss_weights = tuple(stage_loss_weights)
        self.num_stages = len(stage_ious)
        self._init_weights()

    def _init_weights(self) -> None:
        """MMDetection's init of ConvFCBBoxHead: Xavier shared fc, N(0, 0.01) classifier, N(0, 0.001) regressor."""
        for head, predictor in zip(self.box_head, self.box_predictor):
            for layer in head.modules():
                if isinstance(layer, nn.Linear) and layer.weight.device.type != "meta":
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)
            if predictor.cls_score.weight.device.type != "meta":
                nn.init.normal_(predictor.cls_score.weight, std=0.01)
                nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
                nn.init.zeros_(predictor.cls_score.bias)
                nn.init.zeros_(predictor.bbox_pred.bias)

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
            image_labels[index == Matcher.BELOW_LOW_THRESHOLD] = 0
            image_labels[index == Matcher.BETWEEN_THRESHOLDS] = -1  # none when the two thresholds are equal
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
        per_class = deltas.reshape(len(rois), -1, 4)
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
        """Proposals refined by every stage but the last; averaged scores, last-stage boxes, averaged masks."""
        rois = proposals
        stage_logits = []
        for stage in range(self.num_stages):
            pooled = self.box_roi_pool(features, rois, image_shapes)
            class_logits, deltas = self.box_predictor[stage](self.box_head[stage](pooled))
            stage_logits.append(class_logits.float())
            if stage + 1 < self.num_stages:
                rois = self.refine(stage, rois, class_logits, deltas, None, image_shapes)
        # self.box_coder is the last stage's: the boxes come from its regression, the scores from all stages.
        boxes, scores, labels = self.postprocess_detections(torch.stack(stage_logits).mean(0), deltas.float(),
                                                            [r.float() for r in rois], image_shapes)
        detections = [dict(boxes=b, labels=lab, scores=s) for b, s, lab in zip(boxes, scores, labels)]
        pooled = self.mask_roi_pool(features, boxes, image_shapes)
        stage_probs = [maskrcnn_inference(self.mask_predictor[s](self.mask_head[s](pooled)), labels)
                       for s in range(self.num_stages)]
        for index, detection in enumerate(detections):
            detection["masks"] = torch.stack([probs[index] for probs in stage_probs]).mean(0)
        return detections


# MaskRCNN's keywords for its RoIHeads, which the cascade's heads take instead (torchvision name: ours).
CASCADE_ROI_KWARGS = {"box_score_thresh": "score_thresh", "box_nms_thresh": "nms_thresh",
                      "box_detections_per_img": "detections_per_img",
                      "box_batch_size_per_image": "batch_size_per_image", "box_positive_fraction": "positive_fraction"}


def build_cascade_mask_rcnn(neck: PyramidBackboneWithFPN, settings: BuildSettings, **kwargs: Any) -> MaskRCNN:
    """torchvision's MaskRCNN (transform, RPN) on ``neck`` with its RoI heads replaced by the cascade's;
    ``kwargs`` as Mask R-CNN's (its RoI heads' go to :class:`CascadeRoIHeads`)."""
    heads_kwargs = {ours: kwargs.pop(theirs) for theirs, ours in CASCADE_ROI_KWARGS.items() if theirs in kwargs}
    for name in ("box_fg_iou_thresh", "box_bg_iou_thresh", "bbox_reg_weights"):
        if name in kwargs:  # per stage in the cascade: the module constants above
            raise InputError(f"{name} does not apply to cascade_mask_rcnn, whose stages have their own")
    heads = CascadeRoIHeads(settings.fpn_channels, settings.num_classes, box_head_channels=settings.box_head_channels,
                            mask_head_channels=settings.mask_head_channels, **heads_kwargs)
    # MaskRCNN is given the first stage's modules so that it builds no default heads; they are then
    # replaced by the whole cascade, which holds them.
    detector = MaskRCNN(neck, rpn_anchor_generator=rpn_anchors(settings), box_roi_pool=heads.box_roi_pool,
                        box_head=heads.box_head[0], box_predictor=heads.box_predictor[0],
                        mask_roi_pool=heads.mask_roi_pool, mask_head=heads.mask_head[0],
                        mask_predictor=heads.mask_predictor[0], min_size=settings.min_size,
                        max_size=settings.max_size, **kwargs)
    detector.roi_heads = heads
    return detector


def cascade_flops_forward(detector: nn.Module, images: Tensor) -> None:
    """MMDetection's dummy forward runs every stage's box and mask heads on the same RoIs."""
    box_rois, mask_rois = dummy_rois(detector, images)
    heads = detector.roi_heads
    for stage in range(heads.num_stages):
        heads.box_predictor[stage](heads.box_head[stage](box_rois))
        heads.mask_predictor[stage](heads.mask_head[stage](mask_rois))


SPEC = DetectorSpec(
    name="cascade_mask_rcnn", title="Cascade Mask R-CNN", family="two-stage", with_masks=True,
    feature_levels=(0, 1, 2, 3), extra_levels=max_pooled_p6, anchor_sizes=ANCHOR_SIZES, build=build_cascade_mask_rcnn,
    config_options=two_stage_options, flops_forward=cascade_flops_forward, paper=(4, None),
)
