"""Detection training configuration: dataclasses whose defaults are the paper's COCO 1x recipe, read from YAML.

Sections ``model``, ``data``, ``optim``, ``run``; an unknown key or a value of the wrong type is an error
at load time, and ``--key value`` overrides work as for ``pvt train`` (values are coerced by the same
rules, :func:`pvtv2.engine.config.coerce`). The defaults are section 5.2's recipe
(``training_recipes.coco`` in the paper reference): AdamW, lr 1e-4 for a total batch of 16, weight decay
1e-4, 12 epochs with the lr divided by 10 after epochs 8 and 11, a linear warm-up of 500 iterations,
images resized to a shorter side of 800 and a longer side of at most 1333, flipped with probability 0.5.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..engine.config import (
    ConfigError,  # re-exported: the error of every config loader
    load_sections, section_field_names, section_types, sections_from_dict, sections_to_dict,
)


@dataclass
class DetModelConfig:
    detector: Literal["retinanet", "mask_rcnn"] = "mask_rcnn"
    backbone: str = "pvt_v2_b2"
    # Backbone weights to start from: a checkpoint (official, timm, HF, or a detector's) or "official".
    pretrained: str | None = None
    drop_path_rate: float = 0.1
    # The paper's neck and heads; smaller values make quick models for small images (the shapes configs).
    fpn_channels: int = 256
    box_head_channels: int = 1024
    mask_head_channels: int = 256
    # One anchor base size per FPN level; null: torchvision's defaults for 800-pixel images.
    anchor_sizes: tuple[int, int, int, int, int] | None = None
    # Mask R-CNN sampling: RoIs per image for the box head; RPN proposals per level before NMS and per
    # image after it (train, test).
    box_batch_size_per_image: int = 512
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    detections_per_img: int = 100


@dataclass
class DetDataConfig:
    # "coco": images in root/<split>, annotations in root/annotations/instances_<split>.json;
    # "shapes": the same layout, generated at root (see `pvt data shapes`) when it is not there yet.
    dataset: Literal["coco", "shapes"] = "coco"
    root: str = "data/coco"
    train_split: str = "train2017"
    val_split: str = "val2017"
    # Training shorter side, drawn uniformly from [low, high]: (800, 800) for 1x, (640, 800) for 3x.
    train_min_size: tuple[int, int] = (800, 800)
    min_size: int = 800  # evaluation shorter side
    max_size: int = 1333  # longer side, training and evaluation
    hflip: float = 0.5
    num_workers: int = 4
    # Size of the generated shapes data set (dataset: shapes).
    shapes_train: int = 400
    shapes_val: int = 100
    shapes_size: int = 128


@dataclass
class DetOptimConfig:
    epochs: int = 12
    batch_size: int = 2  # per process: 8 GPUs x 2 = 16 images per step in the paper
    lr: float = 1e-4  # for the whole batch, not scaled with the number of processes (as MMDetection)
    weight_decay: float = 1e-4
    lr_steps: tuple[int, int] = (8, 11)  # epochs after which the lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.001  # the warm-up starts at lr x warmup_ratio
    clip_grad: float | None = None


@dataclass
class DetRunConfig:
    output_dir: str = "runs/detection"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision on GPU. fp16 with a grad scaler (as torchvision's and MMDetection's detection recipes),
    # not bf16: torchvision decodes boxes in the regression output's dtype, and bf16's 8-bit mantissa would
    # round 1000-pixel coordinates to 4-8 pixels.
    amp: Literal["bf16", "fp16", "none"] = "fp16"
    seed: int = 0
    resume: str | None = None  # "auto": output_dir/last.pth when it exists; or a checkpoint path
    eval_every: int = 1  # evaluate every this many epochs (and after the last)


@dataclass
class DetConfig:
    model: DetModelConfig = field(default_factory=DetModelConfig)
    data: DetDataConfig = field(default_factory=DetDataConfig)
    optim: DetOptimConfig = field(default_factory=DetOptimConfig)
    run: DetRunConfig = field(default_factory=DetRunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain sections of plain values (tuples as lists), as written to YAML and to checkpoints."""
        return sections_to_dict(self)


SECTIONS: dict[str, type] = section_types(DetConfig)


def field_names() -> dict[str, str]:
    """Every field as ``key -> section`` (field names are unique across sections)."""
    return section_field_names(DetConfig)


def config_from_dict(data: Mapping[str, Any] | None, source: str = "the config") -> DetConfig:
    """Build and validate a :class:`DetConfig` from ``{section: {key: value}}``."""
    return sections_from_dict(DetConfig, data, source)


def load_config(path: str | Path, overrides: Iterable[tuple[str, str]] = ()) -> DetConfig:
    """Read a YAML config and apply ``(key, value)`` overrides (``section.key`` or ``key``, value as text)."""
    return load_sections(DetConfig, path, overrides)


def config_yaml(config: DetConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)
