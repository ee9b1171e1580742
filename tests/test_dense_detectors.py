"""ATSS and GFL (Table 4) and what they share with RetinaNet: the assigner, the losses and the integral against
hand-computed values, the neck without ReLU before P7, anchors at the levels' strides, the official
multi-scale augmentation, parameter counts against Table 4, the config keys, DDP and fitting the scenes
(what every detector goes through: test_detectors.py).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from pvtv2.cli.main import main
from pvtv2.detection import build_backbone
from pvtv2.detection.anchors import LevelAnchorGenerator
from pvtv2.detection.complexity import OFFICIAL_PARAMS_M, table4_rows
from pvtv2.detection.config import DetectionConfig, resolved_lr
from pvtv2.detection.data import CocoDetection, collate, split_paths, train_transform
from pvtv2.detection.data.augment import RandomSizeCrop, official_multiscale
from pvtv2.detection.one_stage.atss import centerness_target
from pvtv2.detection.one_stage.atss_assigner import atss_assign
from pvtv2.detection.one_stage.gfl_losses import distribution_focal_loss, integral, quality_focal_loss
from pvtv2.engine.config import ConfigError
from pvtv2.models import reference

from .detectors import SCENE_SIZE as SIZE
from .detectors import tiny_config, tiny_detector
from .distributed import det_train_alone_and_in_two_processes

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny runs: see conftest.py


# Level 0: four 10x10 anchors, centres (5, 5), (15, 5), (5, 15), (15, 15); level 1: one 20x20 anchor, centre (10, 10).
ANCHORS = torch.tensor([[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [10, 10, 20, 20], [0, 0, 20, 20]],
                       dtype=torch.float32)
LEVELS = [4, 1]


def test_atss_assigner_two_boxes_two_levels() -> None:
    """topk 2 per level. Box A = (0, 0, 11, 10), centre (5.5, 5): nearest on level 0 are anchors 0 and 1 (0.5
    and 9.5 px), on level 1 anchor 4. IoUs 100/110 = 0.9091, 10/200 = 0.05, 110/400 = 0.275: mean 0.4114, std
    (n - 1) 0.4455, threshold 0.8568, so anchor 0 only.
    Box B = (8, 9, 20, 20), centre (14, 14.5): nearest are anchors 3 and 2 (1.12 and 9.01 px) and 4. IoUs
    100/132 = 0.7576, 20/212 = 0.0943, 132/400 = 0.33: mean 0.3940, std 0.3362, threshold 0.7302: anchor 3,
    whose centre (15, 15) is inside B."""
    boxes = torch.tensor([[0, 0, 11, 10], [8, 9, 20, 20]], dtype=torch.float32)
    assert atss_assign(ANCHORS, LEVELS, boxes, topk=2).tolist() == [0, -1, -1, 1, -1]


def test_atss_assigner_anchor_of_two_boxes_goes_to_the_higher_iou() -> None:
    """Box A' = (0, 0, 10, 10): candidates' IoUs 1, 0, 0.25, threshold 0.4167 + 0.5204 = 0.937: anchor 0.
    Box A'' = (0, 0, 10, 11): IoUs 0.9091, 0.05, 0.275 as box A above: anchor 0 too. Anchor 0 goes to A'
    (IoU 1 > 0.9091); no box is left with a positive but the one anchor. No box: all background."""
    boxes = torch.tensor([[0, 0, 10, 11], [0, 0, 10, 10]], dtype=torch.float32)
    assert atss_assign(ANCHORS, LEVELS, boxes, topk=2).tolist() == [1, -1, -1, -1, -1]
    assert atss_assign(ANCHORS, LEVELS, torch.zeros(0, 4), topk=2).tolist() == [-1] * 5


def test_atss_centre_must_lie_inside_the_box() -> None:
    """Level 0 alone, topk 4 (all four anchors). Box (4, 0, 10, 10) overlaps anchor 0 only: IoUs 0.6, 0, 0,
    0, mean 0.15 + std 0.3 = 0.45, and anchor 0's centre (5, 5) is inside: positive. Box (6, 0, 10, 10):
    IoU 0.4 against a threshold of 0.1 + 0.2 = 0.3 passes, but the centre (5, 5) lies outside: none."""
    anchors = ANCHORS[:4]
    assert atss_assign(anchors, [4], torch.tensor([[4.0, 0, 10, 10]]), topk=4).tolist() == [0, -1, -1, -1]
    assert atss_assign(anchors, [4], torch.tensor([[6.0, 0, 10, 10]]), topk=4).tolist() == [-1, -1, -1, -1]


def test_quality_focal_loss_against_its_formula() -> None:
    """QFL = |y - s|^2 * BCE(s, y): logit 0 (s = 0.5) with y = 0.8 gives 0.09 * ln 2 = 0.062383; logit ln 3
    (s = 0.75) with y = 0 gives 0.5625 * ln 4 = 0.779791; s == y gives 0."""
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    quality = torch.tensor([[0.8, 0.0], [0.5, 0.5]])
    expected = torch.tensor([[0.09 * math.log(2), 0.5625 * math.log(4)], [0.0, 0.0]])
    torch.testing.assert_close(quality_focal_loss(logits, quality, beta=2.0), expected)
    # beta = 0 leaves the plain soft-target BCE.
    torch.testing.assert_close(quality_focal_loss(logits, quality, beta=0.0),
                               F.binary_cross_entropy_with_logits(logits, quality, reduction="none"))


def test_distribution_focal_loss_against_its_formula() -> None:
    """Bins' probabilities 1/6, 2/6, 3/6 (logits 0, ln 2, ln 3). Target 0.25: 0.75 * ln 6 + 0.25 * ln 3 =
    1.618473; target 1.5: 0.5 * ln 3 + 0.5 * ln 2 = 0.879880; a whole target 1.0 is one cross-entropy, ln 3."""
    logits = torch.tensor([[0.0, math.log(2), math.log(3)]] * 3)
    target = torch.tensor([0.25, 1.5, 1.0])
    expected = torch.tensor([0.75 * math.log(6) + 0.25 * math.log(3), 0.5 * math.log(3) + 0.5 * math.log(2),
                             math.log(3)])
    torch.testing.assert_close(distribution_focal_loss(logits, target), expected)


def test_integral_is_the_mean_of_each_side_distribution() -> None:
    """reg_max 2 (bins 0, 1, 2): probabilities (1/6, 1/3, 1/2) -> 4/3; uniform -> 1; (1/2, 1/3, 1/6) -> 2/3;
    all the mass on bin 0 -> 0."""
    sides = [[0.0, math.log(2), math.log(3)], [0.0, 0.0, 0.0], [math.log(3), math.log(2), 0.0], [50.0, 0.0, 0.0]]
    logits = torch.tensor(sides).reshape(1, 12)
    torch.testing.assert_close(integral(logits, reg_max=2), torch.tensor([[4 / 3, 1.0, 2 / 3, 0.0]]))


def test_centerness_target() -> None:
    """Anchor centre (5, 5) in box (0, 0, 20, 10): left 5, right 15, top 5, bottom 5: sqrt(5/15 * 5/5)."""
    target = centerness_target(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[0.0, 0.0, 20.0, 10.0]]))
    torch.testing.assert_close(target, torch.tensor([math.sqrt(1 / 3)]))


@pytest.mark.parametrize("kind", ["retinanet", "atss", "gfl"])
def test_neck_has_no_relu_before_p7(kind: str) -> None:
    """P7 = conv(P6), not conv(ReLU(P6)) as torchvision's LastLevelP6P7 has it; P6 comes from C5 for RetinaNet
    ('on_input') and from P5's output for ATSS and GFL ('on_output')."""
    torch.manual_seed(0)
    neck = build_backbone(kind, "pvt_v2_b0", fpn_channels=32)
    extra = neck.fpn.extra_blocks
    seen = {}
    extra.p6.register_forward_hook(lambda module, args, output: seen.update(p6_in=args[0], p6=output))
    extra.p7.register_forward_hook(lambda module, args, output: seen.update(p7_in=args[0]))
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        c5 = neck.body(image)[-1]
        levels = neck(image)
    assert list(levels) == ["0", "1", "2", "p6", "p7"]
    assert (seen["p6"] < 0).any()  # a ReLU would change this P6
    torch.testing.assert_close(seen["p7_in"], seen["p6"])
    torch.testing.assert_close(levels["p7"], extra.p7(levels["p6"]))
    torch.testing.assert_close(seen["p6_in"], c5 if kind == "retinanet" else levels["2"])


def test_retinanet_state_dict_and_params_unchanged_by_the_p7_fix() -> None:
    """The no-ReLU block has torchvision's convs: a RetinaNet with torchvision's stock block loads into ours
    strictly, with the same parameter count, and only P7 differs between the two."""
    torch.manual_seed(0)
    ours = tiny_detector("retinanet")
    stock = copy.deepcopy(ours)
    block = LastLevelP6P7(256, 32)
    block.use_P5 = False
    stock.backbone.fpn.extra_blocks = block
    stock.load_state_dict(ours.state_dict())
    assert sorted(stock.state_dict()) == sorted(ours.state_dict())
    assert sum(p.numel() for p in stock.parameters()) == sum(p.numel() for p in ours.parameters())
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = ours.backbone(image), stock.backbone(image)
    torch.testing.assert_close(a["p6"], b["p6"])
    assert not torch.allclose(a["p7"], b["p7"])


def test_anchors_sit_at_each_levels_stride() -> None:
    """A batch padded to 800 x 1344 has a 7 x 11 P7: its anchors are 128 apart (torchvision's generator would
    use 800 // 7 = 114 and 1344 // 11 = 122)."""
    generator = LevelAnchorGenerator([[64]] * 5, [[1.0]] * 5)
    sizes = [(100, 168), (50, 84), (25, 42), (13, 21), (7, 11)]
    features = [torch.zeros(1, 1, h, w) for h, w in sizes]
    (anchors,) = generator(ImageList(torch.zeros(1, 3, 800, 1344), [(800, 1344)]), features)
    p7 = anchors[-7 * 11:]
    centres = (p7[:, :2] + p7[:, 2:]) / 2
    assert centres[-1].tolist() == [10 * 128, 6 * 128]
    assert anchors.shape[0] == sum(h * w for h, w in sizes)


def test_official_augmentation_sizes_and_boxes(shapes: Path) -> None:
    """The official policy's shorter sides are 480..800 step 32 scaled by high / 800 (here 64/800: 38..64);
    the random-size crop stays within its range and keeps boxes inside; 'paper' is the plain range."""
    torch.manual_seed(0)
    paths = split_paths(shapes, "train")
    dataset = CocoDetection(paths.images, paths.annotations, with_masks=False)
    image, target = dataset[0]
    allowed = {round(s * SIZE / 800) for s in range(480, 801, 32)}
    transform = train_transform((48, SIZE), SIZE, hflip=0.5, augment="official")
    shapes_seen = set()
    for _ in range(20):
        resized, moved = transform(image, target)
        short, long = sorted(resized.shape[-2:])
        assert long <= SIZE and (short in allowed or long == SIZE)  # the longer side's limit may win after a crop
        assert len(moved["boxes"]) == len(moved["labels"])
        shapes_seen.add(short == long)
    assert shapes_seen == {True, False}  # the square scene resized whole (a), and cropped first (b)
    crop = RandomSizeCrop(20, 30)
    for _ in range(20):
        cropped, cut = crop(image, target)
        height, width = cropped.shape[-2:]
        assert 20 <= height <= 30 and 20 <= width <= 30
        boxes = cut["boxes"]
        assert isinstance(boxes, tv_tensors.BoundingBoxes) and tuple(boxes.canvas_size) == (height, width)
        assert (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all() and (boxes >= 0).all()
    policy = official_multiscale()
    assert [s for s in policy.transforms[0].min_size] == list(range(480, 801, 32))
    assert train_transform((40, 56), 60, augment="paper").transforms[0].min_size == list(range(40, 57))


def test_param_counts_within_1_percent_of_table_4() -> None:
    """Table 4's detectors with B2 and B2-Li for 80 classes: GFL-B2 counts the official tool's 33.11 M, the
    others Table 4's whole millions (ATSS: 33, 30) within 1% or that rounding."""
    rows = {tuple(r.model.split("/")): r.as_dict() for r in table4_rows(["pvt_v2_b2", "pvt_v2_b2_li"], with_flops=False)}
    assert set(rows) == {(d, b) for d in ("atss", "gfl", "cascade_mask_rcnn", "sparse_rcnn") for b in ("pvt_v2_b2", "pvt_v2_b2_li")}
    assert rows["gfl", "pvt_v2_b2"]["params_M"] == pytest.approx(OFFICIAL_PARAMS_M["gfl/pvt_v2_b2"], rel=0.001)
    assert rows["atss", "pvt_v2_b2"]["params_M"] == pytest.approx(33, rel=0.01)
    assert rows["atss", "pvt_v2_b2_li"]["params_M"] == pytest.approx(30, rel=0.01)
    paper = reference.published(reference.COCO_DETECTORS)
    for (detector, backbone), row in rows.items():
        assert row["params_ok"], row
        assert reference.matches(row["params_M"], paper[f"{detector}/{backbone}"]["params_M"], 0.01), row
    # The two heads differ by GFL's 68-channel distribution conv against ATSS's 4 + 1 box and centerness convs.
    head_difference = (256 * 68 * 9 + 68) - (256 * 4 * 9 + 4) - (256 * 9 + 1)
    assert rows["gfl", "pvt_v2_b2"]["params"] - rows["atss", "pvt_v2_b2"]["params"] == head_difference


def test_table_cli_shows_table_4(capsys: pytest.CaptureFixture[str]) -> None:
    """pvt table --task detection: ATSS, GFL, Cascade and Sparse R-CNN rows beside Table 4's params and GFLOPs,
    all within 1%."""
    assert main(["table", "--task", "detection", "--models", "pvt_v2_b2", "--json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["table"] == 4]
    assert [r["model"].split("/")[0] for r in rows] == ["atss", "gfl", "cascade_mask_rcnn", "sparse_rcnn"]
    assert [r["GFLOPs_paper"] for r in rows] == [258, 261, 788, 215] and all(r["GFLOPs_ok"] and r["params_ok"] for r in rows)


def test_config_keys_and_limits() -> None:
    """detector atss/gfl, train_augment official|paper (default official), lr_base_batch >= 1; bad values name
    the key. The lr scales with the total batch: 1e-4 for 16 is 2.5e-5 for 1 GPU x 2 x 2 accumulated."""
    config = DetectionConfig.from_dict({"model": {"detector": "gfl"}})
    assert (config.model.detector, config.data.train_augment, config.optim.lr_base_batch) == ("gfl", "official", 16)
    with pytest.raises(ConfigError, match="train_augment must be one of 'official', 'paper'"):
        DetectionConfig.from_dict({"data": {"train_augment": "swin"}})
    with pytest.raises(ConfigError, match="optim.lr_base_batch must be at least 1"):
        DetectionConfig.from_dict({"optim": {"lr_base_batch": 0}})
    with pytest.raises(ConfigError, match="model.fpn_channels must be a multiple of 32 for atss"):
        DetectionConfig.from_dict({"model": {"detector": "atss", "fpn_channels": 48}})
    optim = DetectionConfig.from_dict({"optim": {"batch_size": 2, "accumulate_steps": 2}}).optim
    assert resolved_lr(optim, world_size=1) == (pytest.approx(2.5e-5), 4)
    assert resolved_lr(optim, world_size=4) == (pytest.approx(1e-4), 16)
    optim.lr_base_batch = None
    assert resolved_lr(optim, world_size=1) == (1e-4, 4)


@pytest.mark.slow
def test_two_processes_train_the_same_atss_as_one(shapes: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes with batch 2 each == 1 process with batch 4: the loss normalisers (positives,
    the sum of centerness targets) are averaged over the processes as MMDetection's reduce_mean, so DDP's mean
    gradient is the one batch's. (As in MMDetection, this holds while the averaged normalisers are at least 1,
    where they are clamped: GFL's box weights, the initial class scores of ~0.01, are clamped at first.)"""
    def config(out: str, batch: int) -> Path:
        cfg = tiny_config("atss", shapes, tmp_path / out, batch_size=batch, lr_base_batch=None)
        cfg.data.hflip = 0.0  # no random draw: each process would draw its own
        path = tmp_path / f"{out}.yaml"
        path.write_text(cfg.to_yaml())
        return path

    single, pair, _ = det_train_alone_and_in_two_processes(config, tmp_path)
    for key, value in single["model"].items():
        torch.testing.assert_close(pair["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["atss", "gfl"])
def test_fits_its_training_scenes(shapes: Path, kind: str) -> None:
    """100 AdamW steps on 8 scenes from random weights: the boxes it then predicts on those scenes score box
    AP >= 0.8 (0.94 measured for both; 0.98-1.0 after 200 steps), so losses, decoding and post-processing agree
    with each other."""
    from pvtv2.detection.coco_metric import coco_metrics, predict_dataset
    from pvtv2.detection.data import eval_transform

    torch.manual_seed(0)
    paths = split_paths(shapes, "train")
    train_set = CocoDetection(paths.images, paths.annotations, train_transform((SIZE, SIZE), SIZE, hflip=0.0),
                              with_masks=False, skip_empty=True)
    batches = [collate([train_set[i] for i in range(start, start + 4)]) for start in (0, 4)]
    model = tiny_detector(kind)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    model.train()
    for step in range(100):
        images, targets = batches[step % 2]
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scenes = CocoDetection(paths.images, paths.annotations, eval_transform(), with_masks=False)
    loader = torch.utils.data.DataLoader(scenes, 4, collate_fn=collate)
    results = predict_dataset(model, loader, torch.device("cpu"), show_progress=False)
    assert coco_metrics(scenes, results, ("bbox",))["bbox_AP"] >= 0.8


@pytest.mark.parametrize(("pos", "neg", "min_pos", "low_quality"), [
    (0.5, 0.4, 0.0, True),   # RetinaNet's
    (0.7, 0.3, 0.3, True),   # the RPN's
    (0.5, 0.5, 0.5, True),   # Mask R-CNN's RoI head
    (0.6, 0.6, 0.6, False),  # a cascade stage's
])
def test_max_iou_matcher_assigns_as_mmdetection(pos, neg, min_pos, low_quality) -> None:
    """MaxIoUMatcher against MMDetection's own MaxIoUAssigner on random overlaps with ties and empty columns."""
    from pvtv2.detection.max_iou_assigner import MaxIoUMatcher

    from . import oracle

    oracle.install_mmcv_ops_shim()
    from mmdet.models.task_modules.assigners import max_iou_assigner as assigners

    torch.manual_seed(0)
    for trial in range(20):
        overlaps = (torch.rand(5, 60) * 1.2 - 0.2).clamp(min=0).round(decimals=1)  # many ties and zeros
        if trial % 4 == 0:
            overlaps[2] = 0.0  # a ground truth that overlaps nothing
        theirs = assigners.MaxIoUAssigner(pos, neg, min_pos_iou=min_pos, match_low_quality=low_quality)
        assigned = theirs.assign_wrt_overlaps(overlaps, torch.arange(5)).gt_inds  # 0 negative, -1 ignored, i + 1
        ours = MaxIoUMatcher(pos, neg, allow_low_quality_matches=low_quality, min_pos_iou=min_pos)(overlaps)
        expected = torch.where(assigned > 0, assigned - 1, torch.where(assigned == 0, -1, -2))
        assert torch.equal(ours, expected), trial
