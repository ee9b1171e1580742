"""A classifier from any checkpoint, for evaluation and prediction.

Our training checkpoints carry their model name, class names and image size. Other weights (the official
release, timm, HF folders, safetensors) carry only tensors: the model is named by the caller or
recognised from the keys and shapes, the number of classes read off the head, and the preprocessing is
the paper's (224, crop ratio 0.875, bicubic). A 1000-class head is given timm's ImageNet-1K class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..engine.training_state import is_training_checkpoint, read_training_checkpoint
from ..models import create_model
from ..models.conversion import head_classes, identify_model
from ..models.keys import detect_format
from ..models.loading import CheckpointError, check_weights, load_pretrained, open_checkpoint

IMAGENET_CLASSES = 1000


@dataclass
class LoadedClassifier:
    model: nn.Module
    model_name: str
    class_names: list[str]
    img_size: int  # the size it was trained at
    crop_pct: float
    interpolation: str
    description: str  # where the weights come from, in words
    # True for a pvt train checkpoint, whose class names are its training folders' names (which an
    # evaluation dataset must have too); other weights only know how many classes they have.
    from_training: bool = False


def load_classifier(path: str | Path, model_name: str | None = None, use_ema: bool = False) -> LoadedClassifier:
    """The classifier in ``path``, in eval mode on the CPU."""
    path = Path(path)
    if is_training_checkpoint(path):
        return _from_training_checkpoint(path, model_name, use_ema)
    if use_ema:
        raise CheckpointError(f"{path} is not a training checkpoint of pvt train, so it has no EMA weights")
    tensors = open_checkpoint(path).tensors
    try:
        fmt = detect_format(tensors)
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path}: {error}") from error
    num_classes = head_classes(tensors, fmt)
    if num_classes == 0:
        raise CheckpointError(f"checkpoint {path} has no classification head (a backbone only): it cannot classify")
    name = model_name or identify_model(tensors, fmt, source=f"checkpoint {path}")
    model = create_model(name, num_classes=num_classes)
    load_pretrained(model, tensors, fmt, described_as=f"checkpoint {path}")
    return LoadedClassifier(model.eval(), name, _default_class_names(num_classes), 224, 0.875, "bicubic",
                            f"{name} ({fmt} weights from {path})")


def _from_training_checkpoint(path: Path, model_name: str | None, use_ema: bool) -> LoadedClassifier:
    state = read_training_checkpoint(path, "classification")
    name = state["model_name"]
    if model_name is not None and model_name != name:
        raise CheckpointError(f"checkpoint {path} holds a {name}, not a {model_name}")
    if use_ema and state["ema"] is None:
        raise CheckpointError(f"checkpoint {path} has no EMA weights (trained with optim.ema: false)")
    weights = state["model"] if not use_ema else {k.removeprefix("module."): v for k, v in state["ema"].items()}
    class_names = list(state["class_names"])
    model = create_model(name, num_classes=len(class_names))
    check_weights(weights, model.state_dict(), f"checkpoint {path}")
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path} does not fit {name}: {error}") from error
    data, augment = state["config"]["data"], state["config"]["augment"]
    which = "EMA weights" if use_ema else "weights"
    return LoadedClassifier(model.eval(), name, class_names, data["img_size"], augment["eval_crop_pct"],
                            augment["interpolation"], f"{name} ({which} of {path}, epoch {state['epoch']})",
                            from_training=True)


def _default_class_names(num_classes: int) -> list[str]:
    if num_classes == IMAGENET_CLASSES:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(num_classes)]
    return [str(i) for i in range(num_classes)]
