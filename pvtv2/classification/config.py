"""Classification training config: sections whose defaults are the paper's ImageNet-1K recipe.

A config file has up to five sections (``model``, ``data``, ``augment``, ``optim``, ``run``), each a
mapping of the fields below; loading, overrides and validation are :class:`pvtv2.engine.config.Config`'s.

The defaults reproduce the recipe of section 5.1 (``training_recipes.imagenet`` in the paper reference):
DeiT's, with 300 epochs, AdamW, lr 5e-4 per 512 images, weight decay 0.05, cosine schedule with 5 warm-up
epochs, RandAugment, mixup/cutmix, label smoothing, random erasing and repeated augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..engine.config import Config, ConfigError, RunSection, checked
from ..models import min_input_size


@dataclass
class ModelConfig:
    name: str = "pvt_v2_b0"
    # Stochastic depth, rising linearly over the blocks to this rate: 0.1 for B0-B2, 0.3 for B3-B5.
    drop_path_rate: float = checked(0.1, min=0, below=1)
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
    img_size: int = checked(224, min=1)
    num_workers: int = checked(8, min=0)  # data-loading processes per training process
    # An image that cannot be read: "error" stops with its path; "skip" warns with its path and uses the
    # next image in its place, so that batches keep their size.
    bad_images: Literal["error", "skip"] = "error"


@dataclass
class AugmentConfig:
    # Training transform, timm's create_transform: random resized crop, flip, RandAugment, random erasing.
    scale: tuple[float, float] = checked((0.08, 1.0), above=0, max=1, ordered=True)
    ratio: tuple[float, float] = checked((3 / 4, 4 / 3), above=0, ordered=True)
    hflip: float = checked(0.5, min=0, max=1)
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = checked(0.4, min=0)  # timm turns it off while RandAugment is on, as DeiT did
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    re_prob: float = checked(0.25, min=0, max=1)
    re_mode: Literal["pixel", "rand", "const"] = "pixel"
    re_count: int = checked(1, min=1)
    # timm's Mixup: mixup and cutmix on the whole batch, switching between them with this probability.
    mixup: float = checked(0.8, min=0)
    cutmix: float = checked(1.0, min=0)
    mixup_prob: float = checked(1.0, min=0, max=1)
    mixup_switch_prob: float = checked(0.5, min=0, max=1)
    label_smoothing: float = checked(0.1, min=0, below=1)
    # Repeated augmentation (timm's RepeatAugSampler): each image 3 times per epoch, on different processes.
    repeated_aug: bool = True
    # Evaluation transform: resize to img_size / eval_crop_pct (256 for 224), then center crop img_size.
    eval_crop_pct: float = checked(0.875, above=0, max=1)


@dataclass
class OptimConfig:
    epochs: int = checked(300, min=1)
    batch_size: int = checked(128, min=1)  # per process: 8 GPUs x 128 = 1024 images per step in the paper
    # Batches whose gradients are summed before each optimizer step: the total batch (which scales the lr)
    # is batch_size x processes x accumulate_steps.
    accumulate_steps: int = checked(1, min=1)
    # The lr is scaled linearly with the total batch: lr = base_lr * total batch / 512.
    base_lr: float = checked(5e-4, above=0)
    weight_decay: float = checked(0.05, min=0)  # not on norms, biases and position embeddings
    warmup_epochs: int = checked(5, min=0)
    warmup_lr: float = checked(1e-6, min=0)
    min_lr: float = checked(1e-5, min=0)
    clip_grad: float | None = checked(None, above=0)  # max grad norm; 1.0 for B3-B5
    ema: bool = False  # also keep (and evaluate) an exponential moving average of the weights
    ema_decay: float = checked(0.99996, min=0, max=1)


class ClassificationConfig(Config):
    model: ModelConfig
    data: DataConfig
    augment: AugmentConfig
    optim: OptimConfig
    run: RunSection

    def check(self) -> None:
        smallest = min_input_size(self.model.name)  # the model sees img_size x img_size crops
        if self.data.img_size < smallest:
            raise ConfigError(f"data.img_size {self.data.img_size} is below the {smallest} pixels per side that "
                              f"{self.model.name} needs")
        if self.data.dataset == "folder" and self.data.root is None:
            raise ConfigError("data.root is needed for dataset 'folder': an ImageFolder root with train/ and val/ "
                              "(--root DIR)")
