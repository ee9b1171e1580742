"""Sparse R-CNN (Table 4): the Hungarian matching against brute force, the dynamic convolution, the stages,
the learned proposals, the losses, the test output, parameter and FLOP counts, on tiny models and 64-pixel
scenes (what every detector goes through: test_detectors.py)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.ops import generalized_box_iou

from pvtv2.detection import build_detector
from pvtv2.detection.complexity import COCO_CLASSES, table4_rows
from pvtv2.detection.config import DetectionConfig
from pvtv2.detection.query.sparse_rcnn import (
    FOCAL_ALPHA, FOCAL_WEIGHT, GIOU_WEIGHT, L1_WEIGHT, NUM_PROPOSALS, NUM_STAGES, DynamicConv, SparseStage,
    hungarian_match, matching_cost,
)
from pvtv2.engine.config import ConfigError
from pvtv2.errors import InputError
from pvtv2.models import reference
from pvtv2.models.complexity import count_params

from .detectors import SCENE_SIZE as SIZE
from .detectors import TINY as TINY_DETECTORS
from .detectors import tiny_detector

TINY = TINY_DETECTORS["sparse_rcnn"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny runs: see conftest.py


def _tiny(**kwargs: object) -> torch.nn.Module:
    return tiny_detector("sparse_rcnn", **kwargs)


def _targets() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    first = dict(boxes=torch.tensor([[5.0, 5, 30, 30], [20, 30, 50, 60]]), labels=torch.tensor([1, 2]))
    empty = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64))
    return [torch.rand(3, SIZE, SIZE), torch.rand(3, SIZE, 48)], [first, empty]


@pytest.mark.parametrize("shape", [(3, 3), (5, 3), (2, 4), (6, 6)])
def test_hungarian_match_is_the_cheapest_one_to_one_assignment(shape: tuple[int, int]) -> None:
    """Against brute force over every injective assignment of the smaller side: same least total cost,
    each proposal and each box used at most once."""
    generator = torch.Generator().manual_seed(sum(shape))
    for _ in range(5):
        cost = torch.rand(shape, generator=generator) * 10 - 3
        rows, columns = hungarian_match(cost)
        assert len(rows) == min(shape) and len(set(rows.tolist())) == len(rows) == len(set(columns.tolist()))
        proposals, boxes = shape
        if proposals >= boxes:
            best = min(sum(cost[p, g] for g, p in enumerate(pick)) for pick in itertools.permutations(range(proposals), boxes))
        else:
            best = min(sum(cost[p, g] for p, g in enumerate(pick)) for pick in itertools.permutations(range(boxes), proposals))
        assert float(cost[rows, columns].sum()) == pytest.approx(float(best), abs=1e-5)


def test_matching_cost_terms() -> None:
    """The cost is 2 x focal cost + 5 x L1 of the image-normalised boxes - 2 x GIoU, checked term by term
    against the formulas; a proposal on the box with a confident right class is the cheapest."""
    boxes = torch.tensor([[10.0, 10, 30, 30], [0, 0, 60, 40], [12, 8, 28, 34]])
    logits = torch.tensor([[4.0, -4], [0, 0], [-4, 4]])
    gt_boxes, gt_labels = torch.tensor([[10.0, 10, 30, 30]]), torch.tensor([0])
    size = torch.tensor([64.0, 48, 64, 48])
    cost = matching_cost(logits, boxes, gt_labels, gt_boxes, size)
    p = logits.sigmoid()[:, :1]
    focal = FOCAL_ALPHA * (1 - p) ** 2 * -p.log() - (1 - FOCAL_ALPHA) * p ** 2 * -(1 - p).log()
    l1 = (boxes / size - gt_boxes / size).abs().sum(1, keepdim=True)
    expected = FOCAL_WEIGHT * focal + L1_WEIGHT * l1 - GIOU_WEIGHT * generalized_box_iou(boxes, gt_boxes)
    torch.testing.assert_close(cost, expected, rtol=1e-5, atol=1e-5)
    assert cost.argmin() == 0
    rows, columns = hungarian_match(cost)
    assert rows.tolist() == [0] and columns.tolist() == [0]


def test_dynamic_conv_shapes_and_kernels_from_each_proposal() -> None:
    """(N, C) proposal features and (N, C, 7, 7) RoI features give (N, C); the layer generating the kernels
    has 2 x C x D outputs, and two proposals on the same RoI feature get different results (their own kernels)."""
    conv = DynamicConv(32, 8)
    assert conv.dynamic_layer.out_features == 2 * 32 * 8
    roi = torch.rand(1, 32, 7, 7).expand(3, -1, -1, -1)
    out = conv(torch.randn(3, 32), roi)
    assert out.shape == (3, 32)
    assert not torch.allclose(out[0], out[1])
    assert conv(torch.randn(5, 32), torch.rand(5, 32, 7, 7)).shape == (5, 32)


def test_stage_shapes_and_attention_stays_within_an_image() -> None:
    """A stage maps (B * P, C, 7, 7) and (B, P, C) to logits (B, P, K), deltas (B, P, 4) and features
    (B, P, C); changing one image's proposals changes none of the other image's outputs."""
    stage = SparseStage(32, 5, num_heads=8, dynamic_channels=8, ffn_channels=64).eval()
    rois, features = torch.rand(2 * 6, 32, 7, 7), torch.randn(2, 6, 32)
    logits, deltas, updated = stage(rois, features)
    assert (logits.shape, deltas.shape, updated.shape) == ((2, 6, 5), (2, 6, 4), (2, 6, 32))
    other = features.clone()
    other[1] = torch.randn(6, 32)
    logits2, _, _ = stage(rois, other)
    torch.testing.assert_close(logits2[0], logits[0])
    assert not torch.allclose(logits2[1], logits[1])


def test_proposals_start_as_the_whole_image() -> None:
    """Every learned proposal box starts as the whole (unpadded) image, per image size."""
    model = _tiny()
    boxes, features = model.initial_proposals([(64, 48), (32, 64)])
    assert boxes.shape == (2, TINY["num_proposals"], 4) and features.shape == (2, TINY["num_proposals"], 16)
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0, 48, 64]).expand(TINY["num_proposals"], 4))
    torch.testing.assert_close(boxes[1], torch.tensor([0.0, 0, 64, 32]).expand(TINY["num_proposals"], 4))


def test_training_step_gives_finite_losses_per_stage_and_gradients_everywhere() -> None:
    """Focal, L1 and GIoU losses per stage, finite with an image without objects in the batch; the learned
    proposal boxes and features and every stage receive gradients."""
    model = _tiny(num_stages=3).train()
    images, targets = _targets()
    losses = model(images, targets)
    assert set(losses) == {f"loss_{kind}_s{s}" for kind in ("focal", "l1", "giou") for s in (1, 2, 3)}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    assert model.proposal_boxes.weight.grad.abs().sum() > 0
    assert model.proposal_features.weight.grad.abs().sum() > 0
    for stage in model.stages:
        assert stage.bbox_pred.weight.grad.abs().sum() > 0 and stage.cls_score.weight.grad.abs().sum() > 0


def test_boxes_pass_between_stages_without_gradient() -> None:
    """A stage's box losses reach its own box regressor, not the previous stage's: the boxes it refines are
    detached (its proposal features are not, so the earlier stages' other layers still learn from it)."""
    model = _tiny(num_stages=2).train()
    images, targets = _targets()
    losses = model(images, targets)
    (losses["loss_l1_s2"] + losses["loss_giou_s2"]).backward()
    first, second = model.stages
    assert second.bbox_pred.weight.grad.abs().sum() > 0
    assert first.bbox_pred.weight.grad is None or first.bbox_pred.weight.grad.abs().sum() == 0
    assert first.interaction.dynamic_layer.weight.grad.abs().sum() > 0  # through the proposal features
    assert model.proposal_boxes.weight.grad is None or model.proposal_boxes.weight.grad.abs().sum() == 0


def test_batch_without_objects_gives_zero_box_losses() -> None:
    model = _tiny().train()
    images, targets = _targets()
    losses = model(images[1:], targets[1:])
    assert losses["loss_l1_s1"] == 0 and losses["loss_giou_s1"] == 0 and losses["loss_focal_s1"] > 0
    sum(losses.values()).backward()


def test_training_without_targets_is_an_error() -> None:
    with pytest.raises(InputError, match="needs targets"):
        _tiny().train()([torch.rand(3, SIZE, SIZE)])


def test_eval_output_is_the_top_scoring_pairs_in_input_pixels() -> None:
    """detections_per_img (box, class) pairs of the proposals, labels 1..K, scores sorted, boxes in the input
    image's pixels when the model resizes it (min_size 64 here, the image 96 x 160), within the image."""
    model = _tiny().eval()
    with torch.no_grad():
        (output,) = model([torch.rand(3, 96, 160)])
    assert set(output) == {"boxes", "labels", "scores"}
    assert output["boxes"].shape == (TINY["detections_per_img"], 4)
    assert output["labels"].min() >= 1 and output["labels"].max() <= 3
    assert torch.all(output["scores"][:-1] >= output["scores"][1:])
    # Before training the boxes are near the initial whole-image proposals: near 160 x 96, not 107 x 64.
    assert output["boxes"][:, 2].max() > 120 and output["boxes"][:, 3].max() > 72
    # Clipped to the image, as every detector's (MMDetection's Sparse R-CNN leaves them unclipped).
    assert output["boxes"].min() >= 0 and output["boxes"][:, 0::2].max() <= 160 and output["boxes"][:, 1::2].max() <= 96


def test_bad_settings_are_errors() -> None:
    with pytest.raises(InputError, match="multiple of 8"):
        _tiny(fpn_channels=12)
    with pytest.raises(InputError, match="anchor_sizes does not apply"):
        _tiny(anchor_sizes=(8, 16, 32, 64, 128))
    with pytest.raises(InputError, match="num_proposals must be at least 1"):
        _tiny(num_proposals=0)
    # A config says so when it is loaded, before any data is read.
    with pytest.raises(ConfigError, match="fpn_channels must be a multiple of 8 for sparse_rcnn"):
        DetectionConfig.from_dict(dict(model=dict(detector="sparse_rcnn", fpn_channels=60)))


@pytest.mark.parametrize("backbone", ["pvt_v2_b2", "pvt_v2_b2_li"])
def test_params_and_flops_within_1_percent_of_table4(backbone: str) -> None:
    """Table 4's 107 M / 215 GFLOPs (B2) and 104 M / 151 GFLOPs (B2-Li) at 1280x800, within 1%; the official
    structure: 6 stages, 300 proposals, a dynamic conv of 64 and an FFN of 2048."""
    paper = reference.published(reference.COCO_DETECTORS)[f"sparse_rcnn/{backbone}"]
    with torch.device("meta"):
        detector = build_detector("sparse_rcnn", backbone, num_classes=COCO_CLASSES)
    assert len(detector.stages) == NUM_STAGES and detector.proposal_boxes.num_embeddings == NUM_PROPOSALS
    assert detector.stages[0].interaction.dynamic_channels == 64 and detector.stages[0].ffn[0].out_features == 2048
    assert count_params(detector) / 1e6 == pytest.approx(paper["params_M"], rel=0.01)
    (row,) = [r for r in table4_rows([backbone]) if r.model == f"sparse_rcnn/{backbone}"]
    assert row.params_ok and row.GFLOPs_ok, row
    assert row.GFLOPs == pytest.approx(paper["GFLOPs"], rel=0.01)
