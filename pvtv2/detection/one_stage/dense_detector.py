"""The one-stage detectors' frame, :class:`DenseDetector` (RetinaNet, ATSS, GFL).

:class:`DenseDetector` runs a head over the FPN levels P3-P7 with anchors per level
(:class:`~pvtv2.detection.anchors.LevelAnchorGenerator`), assigns targets and computes a subclass's losses in
training, and at test post-processes exactly as MMDetection 3.3's dense heads (``_predict_by_feat_single`` and
``_bbox_post_process``): per level the (anchor, class) scores above ``score_thresh``, the best
``topk_candidates`` of them (``nms_pre``), decoded and clipped to the resized image; then, in MMDetection's
order, boxes mapped to the original image, scores times a score factor (ATSS's centerness), boxes of width or
height <= ``min_box_size`` dropped, class-wise NMS at ``nms_thresh``, the best ``detections_per_img``.

Losses are normalised as MMDetection's: by the positives of the batch (at least one per image,
:func:`positive_matches`), averaged over the processes of a distributed run.

The heads predict K classes: labels 1..K of the targets map to channels 0..K-1, and back at test.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ...engine.distributed import mean_over_processes
from ...engine.release import ReleaseFileError
from ...errors import InputError
from ..anchors import LevelAnchorGenerator
from ..boxes import batched_nms
from ..transform import DetectionTransform, to_original_pixels

FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0  # the official configs' sigmoid focal loss (RetinaNet, ATSS)


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


def channels_of(head: Mapping[str, torch.Tensor], key: str) -> int:
    """The output channels of release weight ``key``; a clear error when the file lacks it."""
    if key not in head:
        raise ReleaseFileError(f"it has no {key}, which the head's classes are read from")
    return head[key].shape[0]


def dense_test_cfg(iou_threshold: float) -> dict[str, Any]:
    """The official one-stage configs' ``test_cfg`` with NMS at ``iou_threshold``."""
    return dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=iou_threshold),
                max_per_img=100)
