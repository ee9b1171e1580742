"""Cascade Mask R-CNN (Table 4): stage targets, refinement, the aligned RoIAlign, losses per stage, parameter and
FLOP counts, on tiny models and 64-pixel scenes (what every detector goes through: test_detectors.py)."""

from __future__ import annotations

import pytest
import torch

from pvtv2.detection import build_detector
from pvtv2.detection.complexity import COCO_CLASSES, table4_rows
from pvtv2.detection.roi_align import AlignedMultiScaleRoIAlign
from pvtv2.detection.two_stage.cascade import STAGE_LOSS_WEIGHTS, CascadeRoIHeads
from pvtv2.errors import InputError
from pvtv2.models import reference
from pvtv2.models.complexity import count_params

from .detectors import SCENE_SIZE as SIZE
from .detectors import tiny_detector

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny runs: see conftest.py


def _tiny(**kwargs: object) -> torch.nn.Module:
    return tiny_detector("cascade_mask_rcnn", **kwargs)


def _targets() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
    masks[0, 5:30, 5:30] = 1
    masks[1, 30:60, 20:50] = 1
    target = dict(boxes=torch.tensor([[5.0, 5, 30, 30], [20, 30, 50, 60]]), labels=torch.tensor([1, 2]), masks=masks)
    return [torch.rand(3, SIZE, SIZE) for _ in range(2)], [target, {k: v.clone() for k, v in target.items()}]


def test_stage_targets_follow_each_stage_iou() -> None:
    """A proposal at IoU 0.55 is positive at stage 1 only, one at 0.65 at stages 1-2, the added ground
    truth at every stage; a far one never. Matched boxes are the ground truth's."""
    heads = CascadeRoIHeads(8, 3, box_head_channels=16, mask_head_channels=8)
    gt = torch.tensor([[0.0, 0, 10, 10]])
    proposals = [torch.tensor([[0.0, 0, 10, 5.5], [0, 0, 10, 6.5], [50, 50, 60, 60]])]  # IoU 0.55, 0.65, 0
    targets = [dict(boxes=gt, labels=torch.tensor([2]))]
    expected = {0: [2, 2, 0, 2], 1: [0, 2, 0, 2], 2: [0, 0, 0, 2]}  # per stage: the 3 proposals, then the gt
    for stage, labels_expected in expected.items():
        rois, labels, matched_boxes, _, is_gt = heads.stage_targets(stage, proposals, targets)
        # Every RoI is sampled here (4 of 512), in the input order with the ground truth last.
        assert torch.equal(rois[0], torch.cat([proposals[0], gt]))
        assert labels[0].tolist() == labels_expected, stage
        assert is_gt[0].tolist() == [False, False, False, True]
        positive = labels[0] > 0
        assert torch.equal(matched_boxes[0][positive], gt.expand(int(positive.sum()), 4))


def test_refine_uses_the_true_class_for_positives_and_the_best_for_others() -> None:
    """Between stages a positive RoI moves by its ground-truth class's deltas, a negative by its best
    foreground class's; the boxes are clipped to the image and carry no gradient."""
    heads = CascadeRoIHeads(8, 3, box_head_channels=16, mask_head_channels=8)
    rois = [torch.tensor([[10.0, 10, 20, 20], [30, 30, 40, 40]])]
    logits = torch.tensor([[0.0, 0, 5, 0], [0, 0, 0, 5]], requires_grad=True)  # best: class 2, class 3
    deltas = torch.zeros(2, 4, 4, requires_grad=True)
    shifts = torch.zeros(2, 4, 4)
    shifts[:, 1, 0], shifts[:, 2, 0], shifts[:, 3, 0] = 0.1, 0.2, 0.3  # dx per class, in stds of 0.1 (stage 1)
    refined = heads.refine(0, rois, logits, (deltas + shifts).reshape(2, 16), torch.tensor([1, 0]), [(SIZE, SIZE)])
    # dx x std x width: class 1 (the positive's label) 0.1 x 0.1 x 10, class 3 (the negative's best) 0.3 x 0.1 x 10.
    torch.testing.assert_close(refined[0][:, 0], torch.tensor([10.1, 30.3]))
    assert not refined[0].requires_grad
    far = heads.refine(0, [torch.tensor([[50.0, 50, 70, 70]])], logits[:1], torch.zeros(1, 16), None, [(SIZE, SIZE)])
    assert far[0].max() <= SIZE


def test_aligned_roi_align_differs_from_torchvision_by_half_a_pixel() -> None:
    """The cascade's pooler is torchvision's with aligned=True: on a ramp, the same box samples half a
    feature pixel to the left of torchvision's."""
    ramp = torch.arange(32.0).repeat(32, 1)[None, None]  # value = x
    features = {name: ramp for name in "0123"}
    box = [torch.tensor([[8.0, 8, 24, 24]])]
    aligned = AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], 1, 0)(features, box, [(32, 32)])
    plain = torch.ops.torchvision.roi_align(ramp, torch.tensor([[0.0, 8, 8, 24, 24]]), 1.0, 1, 1, 0, False)
    torch.testing.assert_close(aligned.flatten(), plain.flatten() - 0.5)


def test_training_step_gives_finite_losses_per_stage() -> None:
    """Every stage has its classification, GIoU and mask loss, all finite, and every stage's heads learn."""
    model = _tiny().train()
    images, targets = _targets()
    losses = model(images, targets)
    stages = [f"s{i}" for i in range(1, len(STAGE_LOSS_WEIGHTS) + 1)]
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"} | {
        f"loss_{kind}_{s}" for kind in ("classifier", "box_giou", "mask") for s in stages}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    heads = model.roi_heads
    for stage in range(len(stages)):
        for module in (heads.box_head[stage], heads.box_predictor[stage], heads.mask_head[stage]):
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), stage


@pytest.mark.parametrize("backbone", ["pvt_v2_b2", "pvt_v2_b2_li"])
def test_params_and_flops_within_1_percent_of_table4(backbone: str) -> None:
    """Table 4's 83 M / 788 GFLOPs (B2) and 80 M / 725 GFLOPs (B2-Li) at 1280x800, within 1%."""
    paper = reference.published(reference.COCO_DETECTORS)[f"cascade_mask_rcnn/{backbone}"]
    with torch.device("meta"):
        detector = build_detector("cascade_mask_rcnn", backbone, num_classes=COCO_CLASSES)
    assert count_params(detector) / 1e6 == pytest.approx(paper["params_M"], rel=0.01)
    (row,) = [r for r in table4_rows([backbone]) if r.model == f"cascade_mask_rcnn/{backbone}"]
    assert row.params_ok and row.GFLOPs_ok, row
    assert row.GFLOPs == pytest.approx(paper["GFLOPs"], rel=0.01)


def test_training_without_masks_is_an_error() -> None:
    model = _tiny().train()
    images, targets = _targets()
    for target in targets:
        del target["masks"]
    with pytest.raises(InputError, match="without masks"):
        model(images, targets)
