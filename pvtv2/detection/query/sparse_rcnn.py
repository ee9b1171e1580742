"""Sparse R-CNN (Sun et al., CVPR 2021), Table 4's query-based detector, as the official
``sparse_rcnn_pvt_v2_b2_fpn_300_proposals_crop_mstrain_480-800_3x_coco.py`` (MMDetection 2.x).

No anchors, no RPN and no NMS: 300 learned proposal boxes (initialised to the whole image) and 300 learned
proposal features of 256 pass through 6 stages (MMDetection's ``DIIHead``). Each stage pools a 7x7 RoIAlign
feature for every box from the FPN's P2-P5, lets the proposal features attend to each other (8-head
self-attention), mixes each one with its own RoI feature through a dynamic convolution whose two 1x1 kernels
(256 -> 64 -> 256) are generated from the proposal feature (:class:`DynamicConv`), applies an FFN of 2048,
and predicts K sigmoid class scores (one fc of 256) and box deltas (three fcs of 256) that refine the box
(narrower features, as the shapes check's 64, scale the 64 and 2048 with them). The
refined boxes are the next stage's proposals (detached); the proposal features go on with their gradient.

Training matches every stage's predictions one-to-one to the ground truth (Hungarian matching,
:func:`hungarian_match`: cost 2 x focal + 5 x L1 of the normalised boxes + 2 x (-GIoU)) and every stage has
the same losses: sigmoid focal loss (alpha 0.25, gamma 2, weight 2) over all proposals, L1 of the boxes
normalised by the image size (weight 5) and GIoU (weight 2) over the matched ones, each divided by the
number of ground-truth boxes (averaged over the processes). At test the last stage's scores give the top
300 (box, class) pairs of each image, with no NMS, their boxes clipped to the image (MMDetection's are not).

The official release files (MMDetection 2.13: ``EmbeddingRPNHead``'s ``init_proposal_bboxes`` and
``init_proposal_features``, ``SparseRoIHead``'s ``bbox_head.<stage>`` DIIHeads) load by the key map at the end
of this module (:data:`RELEASE_STAGE_NAMES`), and predict as MMDetection 3.3 does to float tolerance.

torchvision supplies the FPN, RoIAlign (MMDetection's ``aligned=True``, sampling 2,
:mod:`pvtv2.detection.roi_align`), ``nn.MultiheadAttention``, the box coder (with MMDetection's clamp,
:mod:`pvtv2.detection.boxes`), ``sigmoid_focal_loss``,
``generalized_box_iou(_loss)``; scipy the assignment. Written here is what no library has: the dynamic
convolution, the stage head and the matching costs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, clip_boxes_to_image, generalized_box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from ...engine.distributed import mean_over_processes
from ...engine.release import ReleaseFileError, config_value
from ...errors import InputError
from ..boxes import DeltaXYWHCoder
from ..neck import PyramidBackboneWithFPN, no_extra_levels
from ..roi_align import FPN_LEVELS, AlignedMultiScaleRoIAlign
from ..spec import BuildSettings, DetectorSpec, ReleaseLayout, check_multiple
from ..transform import DetectionTransform

NUM_STAGES = 6
NUM_PROPOSALS = 300
NUM_HEADS = 8  # the self-attention's heads, as the official DIIHead's
FEATURE_CHANNELS = 256
DYNAMIC_CHANNELS = 64
FFN_CHANNELS = 2048
POOL_SIZE = 7
SAMPLING_RATIO = 2  # the official config's RoIAlign(output_size=7, sampling_ratio=2)
CLS_FCS, REG_FCS = 1, 3
BOX_STDS = (0.5, 0.5, 1.0, 1.0)  # DeltaXYWHBBoxCoder target_stds
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
FOCAL_WEIGHT, L1_WEIGHT, GIOU_WEIGHT = 2.0, 5.0, 2.0  # the same for the matching costs and the losses
PRIOR_PROBABILITY = 0.01  # the class fc's bias starts every score at this probability
COST_EPS = 1e-12  # MMDetection's FocalLossCost eps


class DynamicConv(nn.Module):
    """The instance interaction of Sparse R-CNN: each proposal's feature generates two 1x1 kernels (C -> D and
    D -> C) that are applied to its own S x S RoI feature, each followed by LayerNorm and ReLU; the result is
    flattened and projected back to C (fc, LayerNorm, ReLU). MMDetection's ``DynamicConv``."""

    def __init__(self, channels: int = 256, dynamic_channels: int = DYNAMIC_CHANNELS, pool_size: int = POOL_SIZE) -> None:
        super().__init__()
        self.channels, self.dynamic_channels = channels, dynamic_channels
        self.dynamic_layer = nn.Linear(channels, 2 * channels * dynamic_channels)
        self.norm_in = nn.LayerNorm(dynamic_channels)
        self.norm_out = nn.LayerNorm(channels)
        self.activation = nn.ReLU(inplace=True)
        self.fc_layer = nn.Linear(channels * pool_size ** 2, channels)
        self.fc_norm = nn.LayerNorm(channels)

    def forward(self, proposal_features: Tensor, roi_features: Tensor) -> Tensor:
        """(N, C) proposal features and their (N, C, S, S) RoI features -> (N, C)."""
        # split, not slicing: its backward concatenates instead of filling two zero tensors of the full size.
        kernel_in, kernel_out = self.dynamic_layer(proposal_features).split(self.channels * self.dynamic_channels, 1)
        kernel_in = kernel_in.view(-1, self.channels, self.dynamic_channels)
        kernel_out = kernel_out.view(-1, self.dynamic_channels, self.channels)
        x = roi_features.flatten(2).transpose(1, 2)  # (N, S * S, C)
        x = self.activation(self.norm_in(torch.bmm(x, kernel_in)))
        x = self.activation(self.norm_out(torch.bmm(x, kernel_out)))
        return self.activation(self.fc_norm(self.fc_layer(x.flatten(1))))


def _fc_stack(channels: int, depth: int) -> nn.Sequential:
    """``depth`` x (fc without bias, LayerNorm, ReLU): DIIHead's ``cls_fcs`` / ``reg_fcs``."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(channels, channels, bias=False), nn.LayerNorm(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SparseStage(nn.Module):
    """One stage of Sparse R-CNN (MMDetection's ``DIIHead``): self-attention among an image's proposals,
    dynamic convolution with their RoI features, FFN, then class scores and box deltas."""

    def __init__(self, channels: int, num_classes: int, *, num_heads: int = NUM_HEADS,
                 dynamic_channels: int = DYNAMIC_CHANNELS, ffn_channels: int = FFN_CHANNELS) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(channels, num_heads, batch_first=True)
        self.attention_norm = nn.LayerNorm(channels)
        self.interaction = DynamicConv(channels, dynamic_channels)
        self.interaction_norm = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, ffn_channels), nn.ReLU(inplace=True),
                                 nn.Linear(ffn_channels, channels))
        self.ffn_norm = nn.LayerNorm(channels)
        self.cls_fcs = _fc_stack(channels, CLS_FCS)
        self.cls_score = nn.Linear(channels, num_classes)
        self.reg_fcs = _fc_stack(channels, REG_FCS)
        self.bbox_pred = nn.Linear(channels, 4)
        self._init_weights()

    def _init_weights(self) -> None:
        """DIIHead's: Xavier-uniform for every matrix, the class bias at the prior probability."""
        for parameter in self.parameters():
            if parameter.dim() > 1 and parameter.device.type != "meta":
                nn.init.xavier_uniform_(parameter)
        if self.cls_score.bias.device.type != "meta":
            nn.init.constant_(self.cls_score.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(self, roi_features: Tensor, proposal_features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B * P, C, S, S) RoI features and (B, P, C) proposal features -> class logits (B, P, K), box
        deltas (B, P, 4) and the updated proposal features (B, P, C)."""
        batch, proposals, channels = proposal_features.shape
        x = self.attention_norm(proposal_features + self.attention(proposal_features, proposal_features,
                                                                   proposal_features, need_weights=False)[0])
        x = x.reshape(batch * proposals, channels)
        x = self.interaction_norm(x + self.interaction(x, roi_features))
        x = self.ffn_norm(x + self.ffn(x))
        logits = self.cls_score(self.cls_fcs(x)).view(batch, proposals, -1)
        deltas = self.bbox_pred(self.reg_fcs(x)).view(batch, proposals, 4)
        return logits, deltas, x.view(batch, proposals, channels)


def matching_cost(logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor, image_size: Tensor) -> Tensor:
    """The (P, G) cost of giving ground-truth box ``g`` to proposal ``p`` (MMDetection's HungarianAssigner):
    ``2 x focal cost of the true class + 5 x L1 of the boxes / image size - 2 x GIoU``.

    ``logits`` (P, K); ``boxes`` (P, 4) and ``gt_boxes`` (G, 4) x0, y0, x1, y1 pixels; ``gt_labels`` (G,) in
    0..K-1; ``image_size`` (w, h, w, h)."""
    probabilities = logits.sigmoid()[:, gt_labels]
    positive = -(probabilities + COST_EPS).log() * FOCAL_ALPHA * (1 - probabilities).pow(FOCAL_GAMMA)
    negative = -(1 - probabilities + COST_EPS).log() * (1 - FOCAL_ALPHA) * probabilities.pow(FOCAL_GAMMA)
    l1 = torch.cdist(boxes / image_size, gt_boxes / image_size, p=1)
    return FOCAL_WEIGHT * (positive - negative) + L1_WEIGHT * l1 - GIOU_WEIGHT * generalized_box_iou(boxes, gt_boxes)


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """The proposal and ground-truth indices of the one-to-one assignment of least total ``cost`` (P, G):
    min(P, G) pairs, by scipy's ``linear_sum_assignment``."""
    from scipy.optimize import linear_sum_assignment  # scipy only where a Sparse R-CNN trains

    rows, columns = linear_sum_assignment(cost.detach().float().cpu().numpy())
    return (torch.as_tensor(rows, dtype=torch.long, device=cost.device),
            torch.as_tensor(columns, dtype=torch.long, device=cost.device))


class SparseRCNN(nn.Module):
    """Sparse R-CNN on a backbone with an FPN (P2-P5 as "0".."3", ``out_channels`` set), with torchvision's
    detector interface: ``model(images, targets)`` gives the losses in training, ``model(images)`` a list of
    ``{boxes, labels, scores}`` at test (labels 1..K, as the other detectors' targets)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        num_proposals: int = NUM_PROPOSALS,
        num_stages: int = NUM_STAGES,
        num_heads: int = NUM_HEADS,
        dynamic_channels: int | None = None,
        ffn_channels: int | None = None,
        detections_per_img: int = NUM_PROPOSALS,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
    ) -> None:
        super().__init__()
        channels = backbone.out_channels
        # By default the official widths relative to the features': 64 and 2048 for 256 channels.
        if dynamic_channels is None:
            dynamic_channels = max(channels * DYNAMIC_CHANNELS // FEATURE_CHANNELS, 1)
        if ffn_channels is None:
            ffn_channels = channels * FFN_CHANNELS // FEATURE_CHANNELS
        check_heads(channels, num_heads)
        for name, value in dict(num_proposals=num_proposals, num_stages=num_stages, detections_per_img=detections_per_img,
                                dynamic_channels=dynamic_channels, ffn_channels=ffn_channels).items():
            if value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        min_sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        self.transform = DetectionTransform(min_sizes, max_size)
        self.backbone = backbone
        self.num_classes = num_classes
        self.detections_per_img = detections_per_img
        # Learned proposals: boxes as (cx, cy, w, h) fractions of the image, all starting as the whole image
        # (EmbeddingRPNHead), and features, N(0, 1) as nn.Embedding's default.
        self.proposal_boxes = nn.Embedding(num_proposals, 4)
        self.proposal_features = nn.Embedding(num_proposals, channels)
        if self.proposal_boxes.weight.device.type != "meta":
            with torch.no_grad():
                self.proposal_boxes.weight[:, :2].fill_(0.5)
                self.proposal_boxes.weight[:, 2:].fill_(1.0)
        self.roi_pool = AlignedMultiScaleRoIAlign(FPN_LEVELS, POOL_SIZE, SAMPLING_RATIO)
        self.stages = nn.ModuleList(
            SparseStage(channels, num_classes, num_heads=num_heads, dynamic_channels=dynamic_channels,
                        ffn_channels=ffn_channels) for _ in range(num_stages))
        self.box_coder = DeltaXYWHCoder(BOX_STDS)

    def image_whwh(self, image_sizes: list[tuple[int, int]]) -> Tensor:
        """(B, 4) each image's (width, height, width, height): the scale of its normalised boxes."""
        return torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=torch.float32,
                            device=self.proposal_boxes.weight.device)

    def initial_proposals(self, image_sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """Each image's proposal boxes in its pixels (B, P, 4) and the proposal features (B, P, C)."""
        whwh = self.image_whwh(image_sizes)
        boxes = box_convert(self.proposal_boxes.weight.float(), "cxcywh", "xyxy")[None] * whwh[:, None]
        features = self.proposal_features.weight[None].expand(len(image_sizes), -1, -1)
        return boxes, features

    def run_stages(self, features: dict[str, Tensor], image_sizes: list[tuple[int, int]]) -> list[tuple[Tensor, Tensor]]:
        """Every stage's class logits (B, P, K) and refined boxes (B, P, 4), in order."""
        boxes, proposal_features = self.initial_proposals(image_sizes)
        outputs = []
        for index, stage in enumerate(self.stages):
            pooled = self.roi_pool(features, list(boxes.detach()), image_sizes)
            logits, deltas, proposal_features = stage(pooled, proposal_features)
            # Decoded in float, unclipped (the official coder's clip_border=False), from the stage's input boxes:
            # the learned proposals at the first stage (so they learn), the previous stage's boxes detached
            # after it (MMDetection's detach_proposal_list), so that a stage's box losses reach its own deltas
            # only.
            reference = boxes if index == 0 else boxes.detach()
            boxes = self.box_coder.decode_single(deltas.reshape(-1, 4).float(),
                                                 reference.reshape(-1, 4)).view_as(boxes)
            outputs.append((logits, boxes))
        return outputs

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise InputError("sparse_rcnn in training mode needs targets (boxes and labels per image)")
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        outputs = self.run_stages(features, image_list.image_sizes)
        if self.training:
            return self.losses(outputs, targets, image_list.image_sizes)
        detections = self.postprocess(*outputs[-1], image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def losses(self, outputs: list[tuple[Tensor, Tensor]], targets: list[dict[str, Tensor]],
               image_sizes: list[tuple[int, int]]) -> dict[str, Tensor]:
        """Every stage's focal, L1 and GIoU losses on its own Hungarian matching (``loss_focal_s1``, ...)."""
        whwh = self.image_whwh(image_sizes)
        gt_boxes = [t["boxes"].float() for t in targets]
        gt_labels = [t["labels"].long() - 1 for t in targets]  # 1..K -> 0..K-1
        # MMDetection's avg_factor: the matched proposals (here every ground-truth box) averaged over the
        # processes; at least 1, so that a batch without objects gives zero box losses instead of 0 / 0.
        normaliser = mean_over_processes(torch.tensor(float(sum(len(b) for b in gt_boxes)),
                                                      device=whwh.device)).clamp(min=1)
        losses: dict[str, Tensor] = {}
        for index, (logits, boxes) in enumerate(outputs):
            class_targets = torch.zeros_like(logits, dtype=torch.float32)
            matched_boxes, matched_gt, matched_scale = [], [], []
            for image, (image_logits, image_boxes) in enumerate(zip(logits, boxes)):
                if len(gt_boxes[image]) == 0:
                    continue
                with torch.no_grad():
                    cost = matching_cost(image_logits.float(), image_boxes, gt_labels[image], gt_boxes[image],
                                         whwh[image])
                rows, columns = hungarian_match(cost)
                class_targets[image, rows, gt_labels[image][columns]] = 1.0
                matched_boxes.append(image_boxes[rows])
                matched_gt.append(gt_boxes[image][columns])
                matched_scale.append(whwh[image].expand(len(rows), 4))
            name = f"s{index + 1}"
            losses[f"loss_focal_{name}"] = FOCAL_WEIGHT * sigmoid_focal_loss(
                logits.float(), class_targets, FOCAL_ALPHA, FOCAL_GAMMA, reduction="sum") / normaliser
            if matched_boxes:
                predicted, true, scale = torch.cat(matched_boxes), torch.cat(matched_gt), torch.cat(matched_scale)
                l1 = F.l1_loss(predicted / scale, true / scale, reduction="sum")
                giou = generalized_box_iou_loss(predicted, true, reduction="sum")
            else:  # no objects in the batch: zero, but still part of the graph (DDP needs every parameter used)
                l1 = giou = boxes.sum() * 0
            losses[f"loss_l1_{name}"] = L1_WEIGHT * l1 / normaliser
            losses[f"loss_giou_{name}"] = GIOU_WEIGHT * giou / normaliser
        return losses

    def postprocess(self, logits: Tensor, boxes: Tensor, image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Each image's ``detections_per_img`` best (box, class) pairs by sigmoid score, with no NMS (as
        MMDetection's SparseRoIHead), the boxes clipped to the image (which MMDetection's are not)."""
        detections = []
        for image_logits, image_boxes, size in zip(logits.float(), boxes, image_sizes):
            scores = image_logits.sigmoid().flatten()
            top = scores.topk(min(self.detections_per_img, scores.numel()))
            # Clipped as every torchvision detector's output: boxes within the image they describe.
            detections.append(dict(boxes=clip_boxes_to_image(image_boxes[top.indices // self.num_classes], size),
                                   labels=top.indices % self.num_classes + 1, scores=top.values))
        return detections


def check_heads(fpn_channels: int, num_heads: int = NUM_HEADS, key: str = "fpn_channels") -> None:
    """The self-attention needs ``fpn_channels`` (named ``key`` in the message) divisible by its heads."""
    check_multiple(key, fpn_channels, num_heads, "sparse_rcnn", f"its self-attention has {num_heads} heads")


def build_sparse_rcnn(neck: PyramidBackboneWithFPN, settings: BuildSettings, **kwargs: Any) -> SparseRCNN:
    """Sparse R-CNN on ``neck``; ``kwargs`` go to :class:`SparseRCNN` (``num_proposals``, ...)."""
    return SparseRCNN(neck, settings.num_classes, min_size=settings.min_size, max_size=settings.max_size, **kwargs)


def sparse_flops_forward(detector: nn.Module, images: Tensor) -> None:
    """MMDetection's dummy forward: backbone and FPN on the image, the stages on the learned proposals."""
    detector.backbone(images)
    proposal_features = detector.proposal_features.weight[None]
    rois = images.new_zeros(proposal_features.shape[1], proposal_features.shape[2], POOL_SIZE, POOL_SIZE)
    for stage in detector.stages:
        proposal_features = stage(rois, proposal_features)[2]


# -- the official release files (MMDetection 2.13: EmbeddingRPNHead, SparseRoIHead of DIIHeads) ----------------
RELEASE_PROPOSALS = {"proposal_boxes": "rpn_head.init_proposal_bboxes",
                     "proposal_features": "rpn_head.init_proposal_features"}
RELEASE_STAGES = "roi_head.bbox_head"
# A stage's modules: ours -> DIIHead's (mmcv's MultiheadAttention holds torch's as .attn; its FFN is
# layers.0 = (fc, ReLU, dropout) and layers.1 = fc).
RELEASE_STAGE_NAMES = {
    "attention": "attention.attn", "attention_norm": "attention_norm", "interaction": "instance_interactive_conv",
    "interaction_norm": "instance_interactive_conv_norm", "ffn.0": "ffn.layers.0.0", "ffn.2": "ffn.layers.1",
    "ffn_norm": "ffn_norm", "cls_fcs": "cls_fcs", "cls_score": "fc_cls", "reg_fcs": "reg_fcs", "bbox_pred": "fc_reg",
}
RELEASE_TEST_CFG = {"rpn": None, "rcnn": {"max_per_img": NUM_PROPOSALS}}  # the official config's test_cfg


def _rename(key: str, names: Mapping[str, str]) -> str | None:
    """``key`` with its leading module path renamed by ``names`` (the longest that fits), or None."""
    for prefix in sorted(names, key=len, reverse=True):
        if key.startswith(prefix + "."):
            return names[prefix] + key[len(prefix):]
    return None


def _renamed(head: Mapping[str, Tensor], proposals: Mapping[str, str], stages: tuple[str, str],
             stage_names: Mapping[str, str]) -> dict[str, Tensor]:
    """``head`` with the proposal embeddings renamed by ``proposals`` and each stage ``<stages[0]>.<i>.<layer>``
    written ``<stages[1]>.<i>.<layer renamed by stage_names>``; a KeyError names a key that fits neither."""
    out = {}
    for key, value in head.items():
        renamed = _rename(key, proposals)
        stage, _, rest = key.removeprefix(stages[0] + ".").partition(".")
        if renamed is None and key.startswith(stages[0] + ".") and stage.isdigit():
            inner = _rename(rest, stage_names)
            renamed = None if inner is None else f"{stages[1]}.{stage}.{inner}"
        if renamed is None:
            raise KeyError(key)
        out[renamed] = value
    return out


def head_to_ours(head: Mapping[str, Tensor], num_classes: int) -> dict[str, Tensor]:
    """A release file's Sparse R-CNN head (``rpn_head.`` and ``roi_head.`` keys) in our names."""
    try:
        return _renamed(head, {v: k for k, v in RELEASE_PROPOSALS.items()}, (RELEASE_STAGES, "stages"),
                        {v: k for k, v in RELEASE_STAGE_NAMES.items()})
    except KeyError as error:
        raise ReleaseFileError(f"{error.args[0]} is not a weight of MMDetection's Sparse R-CNN head (expected "
                               f"rpn_head.init_proposal_* and {RELEASE_STAGES}.<stage>.<DIIHead layer>)") from None


def head_to_release(head: Mapping[str, Tensor], num_classes: int) -> dict[str, Tensor]:
    """Our Sparse R-CNN's weights outside the backbone in the release layout's names."""
    try:
        return _renamed(head, RELEASE_PROPOSALS, ("stages", RELEASE_STAGES), RELEASE_STAGE_NAMES)
    except KeyError as error:
        raise ValueError(f"{error.args[0]} is not a weight of Sparse R-CNN's head") from None


def _release_classes(head: Mapping[str, Tensor]) -> int:
    key = f"{RELEASE_STAGES}.0.fc_cls.weight"
    if key not in head:
        raise ReleaseFileError(f"the file has no {key}, which a Sparse R-CNN release file has")
    return head[key].shape[0]


def _test_options(model: Mapping[str, Any]) -> dict[str, Any]:
    """Our builder's keywords for a release config's model: its proposals, stages and their widths, and its
    test_cfg's detections per image (the official ones where the config is silent)."""
    stage = config_value(model, "roi_head", "bbox_head")
    stage = stage[0] if isinstance(stage, list) and stage else stage
    places = dict(num_proposals=config_value(model, "rpn_head", "num_proposals"),
                  num_stages=config_value(model, "roi_head", "num_stages"),
                  detections_per_img=config_value(model, "test_cfg", "rcnn", "max_per_img"),
                  num_heads=config_value(stage, "num_heads"), ffn_channels=config_value(stage, "feedforward_channels"),
                  dynamic_channels=config_value(stage, "dynamic_conv_cfg", "feat_channels"))
    options = {}
    for name, value in places.items():
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ReleaseFileError(f"the release config's Sparse R-CNN {name} must be a positive integer, got {value!r}")
        options[name] = value
    return options


SPEC = DetectorSpec(
    name="sparse_rcnn", title="Sparse R-CNN", family="query", with_masks=False, feature_levels=(0, 1, 2, 3),
    extra_levels=no_extra_levels, anchor_sizes=None, build=build_sparse_rcnn,
    config_options=lambda model: dict(detections_per_img=model.detections_per_img, num_proposals=model.num_proposals),
    check_config=lambda model: check_heads(model.fpn_channels, key="model.fpn_channels"),
    flops_forward=sparse_flops_forward, paper=(4, None),
    release=ReleaseLayout(
        mmdet_type="SparseRCNN",
        recognise=lambda keys: f"{RELEASE_PROPOSALS['proposal_boxes']}.weight" in keys,
        num_classes=_release_classes, head_to_ours=head_to_ours, head_to_release=head_to_release,
        test_options=_test_options, test_cfg=RELEASE_TEST_CFG,
    ),
)
