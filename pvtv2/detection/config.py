"""Detection training configuration: dataclasses whose defaults are the paper's COCO 1x recipe, read from YAML.

Sections ``model``, ``data``, ``optim``, ``run``; loading, overrides and validation are
:class:`pvtv2.engine.config.Config`'s, as for every task. The defaults are section 5.2's recipe
(``training_recipes.coco`` in the paper reference): AdamW, lr 1e-4 for a total batch of 16, weight decay
1e-4, 12 epochs with the lr divided by 10 after epochs 8 and 11, a linear warm-up of 500 iterations,
images resized to a shorter side of 800 and a longer side of at most 1333, flipped with probability 0.5.
The lr is for a total batch of ``lr_base_batch`` (16) and scales linearly with the run's total batch
(:func:`resolved_lr`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from ..engine.config import Config, ConfigError, RunSection, checked
from .registry import DETECTOR_NAMES, detector_spec


@dataclass
class DetModelConfig:
    # retinanet, mask_rcnn: Table 3's; atss, gfl (one-stage), cascade_mask_rcnn (two-stage), sparse_rcnn
    # (query-based): Table 4's (pvtv2.detection.registry: every detector and its module).
    detector: Literal[DETECTOR_NAMES] = "mask_rcnn"
    backbone: str = "pvt_v2_b2"
    # Backbone weights to start from: a checkpoint (official, timm, HF, or a detector's) or "official".
    pretrained: str | None = None
    drop_path_rate: float = checked(0.1, min=0, below=1)
    # The paper's neck and heads; smaller values make quick models for small images (the shapes configs).
    fpn_channels: int = checked(256, min=1)
    box_head_channels: int = checked(1024, min=1)
    mask_head_channels: int = checked(256, min=1)
    # One anchor base size per FPN level; null: the paper's for 800-pixel images (RetinaNet and Mask R-CNN
    # 32-512, x 3 octave scales for RetinaNet; ATSS and GFL 64-1024, octave base scale 8 x strides 8-128).
    anchor_sizes: tuple[int, int, int, int, int] | None = checked(None, min=1, ordered=True)
    # Mask R-CNN sampling: RoIs per image for the box head; RPN proposals per level before NMS and per
    # image after it (train, test).
    box_batch_size_per_image: int = checked(512, min=1)
    rpn_pre_nms_top_n_train: int = checked(2000, min=1)
    rpn_pre_nms_top_n_test: int = checked(1000, min=1)
    rpn_post_nms_top_n_train: int = checked(2000, min=1)
    rpn_post_nms_top_n_test: int = checked(1000, min=1)
    # Detections kept per image at test (the official Sparse R-CNN config keeps all of its 300 proposals).
    detections_per_img: int = checked(100, min=1)
    # Sparse R-CNN's learned proposal boxes and features (the official 300).
    num_proposals: int = checked(300, min=1)

    @property
    def with_masks(self) -> bool:
        """Whether the detector predicts instance masks (and so its data must carry them)."""
        return detector_spec(self.detector).with_masks


@dataclass
class DetDataConfig:
    # "coco": images in root/<split>, annotations in root/annotations/instances_<split>.json;
    # "shapes": the same layout, generated at root (see `pvt data shapes`) when it is not there yet.
    dataset: Literal["coco", "shapes"] = "coco"
    root: str = "data/coco"
    train_split: str = "train2017"
    val_split: str = "val2017"
    # Training shorter side (low, high): (800, 800) for 1x, (640, 800) for 3x (multi-scale).
    train_min_size: tuple[int, int] = checked((800, 800), min=1, ordered=True)
    # Multi-scale training (low < high): "official", the official 3x configs' choice of (a) a shorter side of
    # 480-800 step 32, or (b) 400/500/600, a random 384-600 crop, then (a) (sizes x high / 800);
    # "paper", a shorter side drawn uniformly from [low, high] as section 5.2 says. Single scale: the same.
    train_augment: Literal["official", "paper"] = "official"
    min_size: int = checked(800, min=1)  # evaluation shorter side
    max_size: int = checked(1333, min=1)  # longer side, training and evaluation
    hflip: float = checked(0.5, min=0, max=1)
    num_workers: int = checked(4, min=0)
    # Size of the generated shapes data set (dataset: shapes).
    shapes_train: int = checked(400, min=1)
    shapes_val: int = checked(100, min=1)
    shapes_size: int = checked(128, min=32)


@dataclass
class DetOptimConfig:
    epochs: int = checked(12, min=1)
    batch_size: int = checked(2, min=1)  # per process: 8 GPUs x 2 = 16 images per step in the paper
    # Batches whose gradients are summed before each optimizer step (batch_size x processes x this = total).
    accumulate_steps: int = checked(1, min=1)
    lr: float = checked(1e-4, above=0)  # for a total batch of lr_base_batch
    # The total batch lr is for: the run uses lr x total batch / lr_base_batch (the linear scaling rule), so
    # 1 or 4 GPUs follow the paper's 8 x 2 schedule; null: lr as given, whatever the batch.
    lr_base_batch: int | None = checked(16, min=1)
    weight_decay: float = checked(1e-4, min=0)
    # No weight decay on the parameters whose name holds "norm" (the backbone's LayerNorms), as the official
    # 3x configs' paramwise_cfg; false: decay on every parameter, as the official 1x configs.
    no_decay_norms: bool = False
    # Epochs after which the lr is multiplied by lr_gamma.
    lr_steps: tuple[int, int] = checked((8, 11), min=0, ordered=True)
    lr_gamma: float = checked(0.1, above=0)
    warmup_iters: int = checked(500, min=0)
    warmup_ratio: float = checked(0.001, above=0, max=1)  # the warm-up starts at lr x warmup_ratio
    clip_grad: float | None = checked(None, above=0)


@dataclass
class DetRunConfig(RunSection):
    output_dir: str = "runs/detection"
    # Mixed precision on GPU. fp16 with a grad scaler (as torchvision's and MMDetection's detection recipes),
    # not bf16: torchvision decodes boxes in the regression output's dtype, and bf16's 8-bit mantissa would
    # round 1000-pixel coordinates to 4-8 pixels.
    amp: Literal["bf16", "fp16", "none"] = "fp16"
    eval_interval: int = checked(1, min=1)  # epochs between evaluations (and after the last)


class DetectionConfig(Config):
    RENAMED = MappingProxyType({"run.eval_every": "eval_interval"})  # as det-train checkpoints before it say
    model: DetModelConfig
    data: DetDataConfig
    optim: DetOptimConfig
    run: DetRunConfig

    def check(self) -> None:
        if self.data.min_size > self.data.max_size:
            raise ConfigError(f"data.min_size ({self.data.min_size}) must not exceed data.max_size "
                              f"({self.data.max_size})")
        detector_spec(self.model.detector).check_config(self.model)


def resolved_lr(optim: DetOptimConfig, world_size: int) -> tuple[float, int]:
    """The lr a run of ``world_size`` processes trains with, and its total batch (batch_size x processes x
    accumulated batches): ``lr x total / lr_base_batch``, or ``lr`` itself when ``lr_base_batch`` is null."""
    total = optim.batch_size * world_size * optim.accumulate_steps
    if optim.lr_base_batch is None:
        return optim.lr, total
    return optim.lr * total / optim.lr_base_batch, total
