"""Segmentation training configuration: dataclasses whose defaults are the paper's ADE20K recipe, read from YAML.

Sections ``model``, ``data``, ``augment``, ``optim``, ``test`` and ``run``; loading, overrides and
validation are :class:`pvtv2.engine.config.Config`'s, as for every task.
The defaults are section 5.3's recipe (``training_recipes.ade20k`` in the paper reference): Semantic FPN,
AdamW lr 1e-4, 40k iterations of batch 16 (4 GPUs x 4), poly decay with power 0.9, random rescale
0.5-2.0 and 512x512 crops, flip and photometric distortion; testing at shorter side 512.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..engine.config import Config, ConfigError, RunSection, checked
from ..models import min_input_size


@dataclass
class SegModelConfig:
    segmenter: Literal["semantic_fpn"] = "semantic_fpn"
    backbone: str = "pvt_v2_b2"
    # Backbone weights: "official" (the ImageNet-1K release of `backbone`) or a checkpoint path.
    pretrained: str | None = None
    drop_path_rate: float = checked(0.1, min=0, below=1)  # as the official segmentation backbones
    norm: Literal["batch", "group"] = "batch"  # the head's norm; batch norm is SyncBN under DDP on GPU
    dropout: float = checked(0.1, min=0, below=1)  # before the classifier
    neck_channels: int = checked(256, min=1)  # FPN width (the paper's)
    head_channels: int = checked(128, min=1)  # Semantic FPN head width (the paper's)


@dataclass
class SegDataConfig:
    # "ade20k": images/{training,validation} + annotations/..., 0 = ignore, labels shifted down by one;
    # "folder": images/{train,val} + masks/{train,val}, labels as stored, 255 = ignore;
    # "shapes": generated scenes in the ADE20K layout, written to `root` if it is missing.
    dataset: Literal["ade20k", "folder", "shapes"] = "ade20k"
    root: str | None = None
    num_classes: int | None = checked(None, min=1)  # default: classes.json of the root, else 150 for ade20k
    num_workers: int = checked(4, min=0)  # data-loading processes per training process
    # The generated scenes (dataset: shapes): counts, side in pixels, seed, most shapes per scene.
    shapes_train: int = checked(400, min=1)
    shapes_val: int = checked(100, min=1)
    shapes_size: int = checked(128, min=32)
    shapes_seed: int = 0
    shapes_max_objects: int = checked(4, min=1)
    shapes_size_range: tuple[float, float] = checked((0.15, 0.5), above=0, max=1, ordered=True)  # shape sizes, fractions of the scene side


@dataclass
class SegAugmentConfig:
    scale: tuple[int, int] = checked((2048, 512), min=1)  # keep-ratio scale (longer, shorter side) for training and testing
    ratio_range: tuple[float, float] = checked((0.5, 2.0), above=0, ordered=True)  # random rescale of `scale` for training
    crop_size: int = checked(512, min=1)
    cat_max_ratio: float = checked(0.75, above=0, max=1)  # redraw crops where one class covers this much of the labelled pixels
    hflip: float = checked(0.5, min=0, max=1)
    photometric: bool = True


@dataclass
class SegOptimConfig:
    iterations: int = checked(40000, min=1)
    batch_size: int = checked(4, min=1)  # per process: 4 GPUs x 4 = 16 images per step, as in the paper
    # Batches whose gradients are summed before each optimizer step (batch_size x processes x this = total).
    accumulate_steps: int = checked(1, min=1)
    lr: float = checked(1e-4, above=0)
    # The official config's; not on norms, biases and position embeddings.
    weight_decay: float = checked(1e-4, min=0)
    poly_power: float = checked(0.9, min=0)
    # Linear warm-up from ~0 (MMSegmentation's warmup="linear"); the paper has none.
    warmup_iters: int = checked(0, min=0)
    clip_grad: float | None = checked(None, above=0)


@dataclass
class SegTestConfig:
    test_mode: Literal["whole", "slide"] = "whole"  # the paper's; slide: crop_size windows every slide_stride
    slide_stride: int = checked(341, min=1)
    flip_test: bool = False
    # Ratios of the test scale, comma-separated, whose predictions are averaged: "0.5,0.75,1.0,1.25,1.5,1.75".
    test_scales: str = "1.0"


@dataclass
class SegRunConfig(RunSection):
    output_dir: str = "runs/seg"
    log_interval: int = checked(50, min=1)  # iterations between metrics records
    # Iterations between held-out evaluations (and at the end); 0: only at the end.
    eval_interval: int = checked(4000, min=0)
    checkpoint_interval: int = checked(4000, min=1)  # iterations between checkpoints (and at the end)


class SegmentationConfig(Config):
    model: SegModelConfig
    data: SegDataConfig
    augment: SegAugmentConfig
    optim: SegOptimConfig
    test: SegTestConfig
    run: SegRunConfig

    def check(self) -> None:
        if self.data.dataset != "shapes" and self.data.root is None:
            raise ConfigError(f"data.root is needed for dataset {self.data.dataset!r} (--root DIR)")
        parse_scales(self.test.test_scales)
        smallest = min_input_size(self.model.backbone)  # training crops (and sliding windows) are this size
        if self.augment.crop_size < smallest:
            raise ConfigError(f"augment.crop_size {self.augment.crop_size} is below the {smallest} pixels per side "
                              f"that {self.model.backbone} needs")


def parse_scales(text: str, key: str = "test.test_scales") -> tuple[float, ...]:
    """``"0.5,1.0"`` -> (0.5, 1.0), each a positive finite number; errors name ``key`` (or the option)."""
    try:
        scales = tuple(float(s) for s in str(text).strip("[]() ").split(",") if s.strip())
    except ValueError as error:
        raise ConfigError(f"{key} must be comma-separated numbers, got {text!r}") from error
    if not scales or not all(0 < s < math.inf for s in scales):  # NaN fails the comparison too
        raise ConfigError(f"{key} must be positive numbers, got {text!r}")
    return scales
