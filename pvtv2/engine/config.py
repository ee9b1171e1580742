"""Training configuration: dataclasses whose defaults are the paper's ImageNet-1K recipe, read from YAML.

A config file has up to five sections (``model``, ``data``, ``augment``, ``optim``, ``run``), each a
mapping of the fields below. A key that does not exist, or a value of the wrong type, is an error at load
time. ``--key value`` overrides on the command line name a field as ``section.key`` or, since every field
name is unique, as ``key`` alone (``--optim.epochs 10`` or ``--epochs 10``).

The defaults reproduce the recipe of section 5.1 (``training_recipes.imagenet`` in the paper reference):
DeiT's, with 300 epochs, AdamW, lr 5e-4 per 512 images, weight decay 0.05, cosine schedule with 5 warm-up
epochs, RandAugment, mixup/cutmix, label smoothing, random erasing and repeated augmentation.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config file or override that does not fit the schema: names the key and what was expected."""


@dataclass
class ModelConfig:
    name: str = "pvt_v2_b0"
    # Stochastic depth, rising linearly over the blocks to this rate: 0.1 for B0-B2, 0.3 for B3-B5.
    drop_path_rate: float = 0.1
    # Weights to start from: a checkpoint path (official, timm, HF or ours) or "official" for the release
    # weights of `name`. A head with another number of classes is left out and trained anew.
    pretrained: str | None = None
    grad_checkpointing: bool = False


@dataclass
class DataConfig:
    # "folder": an ImageFolder root with train/ and val/ (one sub-folder per class);
    # "digits": scikit-learn's 1,797 hand-written digits, split 80/20 with a fixed seed, upscaled.
    dataset: Literal["folder", "digits"] = "folder"
    root: str | None = None
    img_size: int = 224
    num_workers: int = 8  # data-loading processes per training process
    # An image that cannot be read: "error" stops with its path; "skip" warns with its path and uses the
    # next image in its place, so that batches keep their size.
    bad_images: Literal["error", "skip"] = "error"


@dataclass
class AugmentConfig:
    # Training transform, timm's create_transform: random resized crop, flip, RandAugment, random erasing.
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4  # timm turns it off while RandAugment is on, as DeiT did
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    re_prob: float = 0.25
    re_mode: Literal["pixel", "rand", "const"] = "pixel"
    re_count: int = 1
    # timm's Mixup: mixup and cutmix on the whole batch, switching between them with this probability.
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    # Repeated augmentation (timm's RepeatAugSampler): each image 3 times per epoch, on different processes.
    repeated_aug: bool = True
    # Evaluation transform: resize to img_size / eval_crop_pct (256 for 224), then center crop img_size.
    eval_crop_pct: float = 0.875


@dataclass
class OptimConfig:
    epochs: int = 300
    batch_size: int = 128  # per process: 8 GPUs x 128 = 1024 images per step in the paper
    # The lr is scaled linearly with the total batch: lr = base_lr * batch_size * processes / 512.
    base_lr: float = 5e-4
    weight_decay: float = 0.05  # not on norms, biases and position embeddings
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    clip_grad: float | None = None  # max grad norm; 1.0 for B3-B5
    ema: bool = False  # also keep (and evaluate) an exponential moving average of the weights
    ema_decay: float = 0.99996


@dataclass
class RunConfig:
    output_dir: str = "runs/train"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision on GPU: bf16 autocast, or fp16 autocast with a grad scaler. CPU runs in float32.
    amp: Literal["bf16", "fp16", "none"] = "bf16"
    seed: int = 0
    # Continue a run: "auto" takes output_dir/last.pth when it exists; or the path of a checkpoint.
    resume: str | None = None


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain sections of plain values (tuples as lists), as written to YAML and to checkpoints."""
        return sections_to_dict(self)


SECTIONS: dict[str, type] = typing.get_type_hints(TrainConfig)  # section name -> its dataclass


def field_names() -> dict[str, str]:
    """Every field as ``key -> section`` (field names are unique across sections)."""
    return section_field_names(TrainConfig)


def config_from_dict(data: Mapping[str, Any] | None, source: str = "the config") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from ``{section: {key: value}}``."""
    return sections_from_dict(TrainConfig, data, source)


def load_config(path: str | Path, overrides: Iterable[tuple[str, str]] = ()) -> TrainConfig:
    """Read a YAML config and apply ``(key, value)`` overrides (``section.key`` or ``key``, value as text)."""
    return load_sections(TrainConfig, path, overrides)


def config_yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(config_yaml(config))


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` (from YAML, or text from the command line) as the type ``annotation`` of field ``key``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
            raise ConfigError(f"{key} cannot be empty")
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):  # "0.08,1.0" or "[0.08, 1.0]" from the command line
            value = value.strip("[]() ").split(",")
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args))
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if annotation in (int, float):
        # YAML reads 5e-4 (no dot) as text, so numbers are also parsed from strings.
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            number = None
        if annotation is int and isinstance(number, float) and number.is_integer() and isinstance(value, str):
            number = int(number)
        if not isinstance(number, (int, float)) or (annotation is int and not isinstance(number, int)):
            raise ConfigError(f"{key} must be {'an integer' if annotation is int else 'a number'}, got {value!r}")
        return annotation(number)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be text, got {value!r}")
        return value
    raise TypeError(f"config field {key} has a type the loader does not handle: {annotation}")


def _check_known(given: Mapping[str, Any], known: Iterable[str], what: str, source: str) -> None:
    for key in given:
        if key not in known:
            raise ConfigError(f"{source}: " + _unknown(str(key), known, what, key))


def _unknown(key: str, known: Iterable[str], what: str, shown: str) -> str:
    known = list(known)
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(known)}"
    return f"unknown {what} {shown!r}{hint}"


# The loaders of every task's config (classification above, detection, segmentation): any dataclass whose
# fields are section dataclasses, with validation, coercion and overrides.


def section_types(root: type) -> dict[str, type]:
    """Section name -> its dataclass, for a config dataclass ``root`` made of section dataclasses."""
    return typing.get_type_hints(root)


def section_field_names(root: type) -> dict[str, str]:
    """Every field of ``root``'s sections as ``key -> section`` (field names must be unique across sections)."""
    names: dict[str, str] = {}
    for section, cls in section_types(root).items():
        for f in dataclasses.fields(cls):
            assert f.name not in names, f"config field {f.name!r} is in two sections"
            names[f.name] = section
    return names


def sections_from_dict(root: type, data: Mapping[str, Any] | None, source: str = "the config") -> Any:
    """Build and validate a ``root`` config from ``{section: {key: value}}``; unknown keys are errors."""
    data = data or {}
    sections_of = section_types(root)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source} must be a mapping of sections ({', '.join(sections_of)}), got {type(data).__name__}")
    _check_known(data, sections_of, "section", source)
    sections = {}
    for name, cls in sections_of.items():
        values = data.get(name) or {}
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: section {name!r} must be a mapping of keys to values, got {values!r}")
        hints = typing.get_type_hints(cls)
        _check_known(values, hints, f"key of section {name!r}", source)
        sections[name] = cls(**{k: coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()})
    return root(**sections)


def load_sections(root: type, path: str | Path, overrides: Iterable[tuple[str, str]] = ()) -> Any:
    """Read a YAML config of ``root``'s sections and apply ``(key, value)`` overrides (``section.key`` or
    ``key``, value as text)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    import yaml  # imported here so that building the `pvt` parser does not need it

    with path.open() as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must be a mapping of sections, got {type(data).__name__}")
    data = {section: dict(values) if isinstance(values, Mapping) else values for section, values in data.items()}
    sections_of, owner = section_types(root), section_field_names(root)
    for key, value in overrides:
        section, _, name = key.rpartition(".")
        if not section:
            if name not in owner:
                raise ConfigError(_unknown(name, owner, "config key", "--" + name))
            section = owner[name]
        elif section not in sections_of or name not in owner or owner[name] != section:
            raise ConfigError(_unknown(key, [f"{s}.{k}" for k, s in owner.items()], "config key", "--" + key))
        if data.get(section) is None:  # absent, or an empty `section:` line
            data[section] = {}
        values = data[section]
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: section {section!r} must be a mapping, got {values!r}")
        values[name] = value
    return sections_from_dict(root, data, f"config file {path}")


def sections_to_dict(config: Any) -> dict[str, dict[str, Any]]:
    """Plain sections of plain values (tuples as lists) of any sectioned config, for YAML and checkpoints."""
    sections = {f.name: dataclasses.asdict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    return {name: {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
            for name, values in sections.items()}
