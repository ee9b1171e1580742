"""Segmentation training configuration: dataclasses whose defaults are the paper's ADE20K recipe, read from YAML.

Sections ``model``, ``data``, ``augment``, ``optim``, ``test`` and ``run``; as for classification, an
unknown key or a value of the wrong type is an error at load time, and ``--key value`` overrides any field.
The defaults are section 5.3's recipe (``training_recipes.ade20k`` in the paper reference): Semantic FPN,
AdamW lr 1e-4, 40k iterations of batch 16 (4 GPUs x 4), poly decay with power 0.9, random rescale
0.5-2.0 and 512x512 crops, flip and photometric distortion; testing at shorter side 512.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..engine.config import ConfigError, load_sections, sections_from_dict, sections_to_dict


@dataclass
class SegModelConfig:
    segmenter: Literal["semantic_fpn"] = "semantic_fpn"
    backbone: str = "pvt_v2_b2"
    # Backbone weights: "official" (the ImageNet-1K release of `backbone`) or a checkpoint path.
    pretrained: str | None = None
    drop_path_rate: float = 0.1  # as the official segmentation backbones
    norm: Literal["batch", "group"] = "batch"  # the head's norm; batch norm is SyncBN under DDP on GPU
    dropout: float = 0.1  # before the classifier
    neck_channels: int = 256  # FPN width (the paper's)
    head_channels: int = 128  # Semantic FPN head width (the paper's)


@dataclass
class SegDataConfig:
    # "ade20k": images/{training,validation} + annotations/..., 0 = ignore, labels shifted down by one;
    # "folder": images/{train,val} + masks/{train,val}, labels as stored, 255 = ignore;
    # "shapes": generated scenes in the ADE20K layout, written to `root` if it is missing.
    dataset: Literal["ade20k", "folder", "shapes"] = "ade20k"
    root: str | None = None
    num_classes: int | None = None  # default: classes.json of the root, else 150 for ade20k
    num_workers: int = 4  # data-loading processes per training process
    # The generated scenes (dataset: shapes): counts, side in pixels, seed, most shapes per scene.
    shapes_train: int = 400
    shapes_val: int = 100
    shapes_size: int = 128
    shapes_seed: int = 0
    shapes_max_objects: int = 4
    shapes_size_range: tuple[float, float] = (0.15, 0.5)  # shape sizes, fractions of the scene side


@dataclass
class SegAugmentConfig:
    scale: tuple[int, int] = (2048, 512)  # keep-ratio scale (longer, shorter side) for training and testing
    ratio_range: tuple[float, float] = (0.5, 2.0)  # random rescale of `scale` for training
    crop_size: int = 512
    cat_max_ratio: float = 0.75  # redraw crops where one class covers this much of the labelled pixels
    hflip: float = 0.5
    photometric: bool = True


@dataclass
class SegOptimConfig:
    iterations: int = 40000
    batch_size: int = 4  # per process: 4 GPUs x 4 = 16 images per step, as in the paper
    lr: float = 1e-4
    weight_decay: float = 1e-4  # the official config's; not on norms, biases and position embeddings
    poly_power: float = 0.9
    warmup_iters: int = 0  # linear warm-up from ~0 (MMSegmentation's warmup="linear"); the paper has none
    clip_grad: float | None = None


@dataclass
class SegTestConfig:
    test_mode: Literal["whole", "slide"] = "whole"  # the paper's; slide: crop_size windows every slide_stride
    slide_stride: int = 341
    flip_test: bool = False
    # Ratios of the test scale, comma-separated, whose predictions are averaged: "0.5,0.75,1.0,1.25,1.5,1.75".
    test_scales: str = "1.0"


@dataclass
class SegRunConfig:
    output_dir: str = "runs/seg"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["bf16", "fp16", "none"] = "bf16"  # autocast on GPU; CPU runs in float32
    seed: int = 0
    resume: str | None = None  # "auto": output_dir/last.pth if it exists; or a checkpoint path
    log_interval: int = 50  # iterations between metrics records
    eval_interval: int = 4000  # iterations between held-out evaluations (and at the end); 0: only at the end
    checkpoint_interval: int = 4000  # iterations between checkpoints (and at the end)


@dataclass
class SegTrainConfig:
    model: SegModelConfig = field(default_factory=SegModelConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    augment: SegAugmentConfig = field(default_factory=SegAugmentConfig)
    optim: SegOptimConfig = field(default_factory=SegOptimConfig)
    test: SegTestConfig = field(default_factory=SegTestConfig)
    run: SegRunConfig = field(default_factory=SegRunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return sections_to_dict(self)


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0.5,1.0"`` -> (0.5, 1.0), each positive."""
    try:
        scales = tuple(float(s) for s in str(text).strip("[]() ").split(",") if s.strip())
    except ValueError as error:
        raise ConfigError(f"test.test_scales must be comma-separated numbers, got {text!r}") from error
    if not scales or any(s <= 0 for s in scales):
        raise ConfigError(f"test.test_scales must be positive numbers, got {text!r}")
    return scales


def validate(config: SegTrainConfig, source: str = "the config") -> SegTrainConfig:
    """Checks across fields that the types alone do not make."""
    positive = dict(iterations=config.optim.iterations, batch_size=config.optim.batch_size,
                    crop_size=config.augment.crop_size, slide_stride=config.test.slide_stride)
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{source}: {key} must be at least 1, got {value}")
    if config.data.dataset != "shapes" and config.data.root is None:
        raise ConfigError(f"{source}: data.root is needed for dataset {config.data.dataset!r} (--root DIR)")
    low, high = config.augment.ratio_range
    if not 0 < low <= high:
        raise ConfigError(f"{source}: ratio_range must be two positive numbers, low first, got {low}, {high}")
    parse_scales(config.test.test_scales)
    return config


def config_from_dict(data: dict[str, Any] | None, source: str = "the config") -> SegTrainConfig:
    """A validated :class:`SegTrainConfig` from ``{section: {key: value}}``."""
    return validate(sections_from_dict(SegTrainConfig, data, source), source)


def load_config(path: str | Path, overrides: list[tuple[str, str]] | tuple = ()) -> SegTrainConfig:
    """Read a YAML config and apply ``(key, value)`` overrides (``section.key`` or ``key``)."""
    return validate(load_sections(SegTrainConfig, path, overrides), f"config file {path}")


def config_yaml(config: SegTrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)
