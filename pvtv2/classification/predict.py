"""The top-k classes of images by a classifier checkpoint, with their probabilities (``pvt predict``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import read_image
from ..data.images import ModelInput
from ..engine.distributed import resolve_device
from .inference import load_classifier
from .transforms import eval_resize, eval_transform


@dataclass(frozen=True)
class Prediction:
    image: Path
    top: list[tuple[int, str, float]]  # (class index, class name, probability), most likely first


def predict(checkpoint: str | Path, images: Sequence[str | Path], *, model: str | None = None, topk: int = 5,
            device: str = "auto", dtype: torch.dtype = torch.float32, use_ema: bool = False) -> list[Prediction]:
    """The ``topk`` classes of each of ``images`` by ``checkpoint`` (a pvt train checkpoint, or weights the zoo
    loads), at the classifier's evaluation resize and center crop; weights and images in ``dtype``,
    probabilities in float32. Every file is read and checked before the model runs."""
    target = resolve_device(device)
    classifier = load_classifier(checkpoint, model, use_ema=use_ema)
    transform = eval_transform(classifier.img_size, classifier.crop_pct, classifier.interpolation)
    paths = [Path(path) for path in images]
    pictures = [read_image(path) for path in paths]
    # The picture is resized to a shorter side of S / crop_pct, then center-cropped to S.
    model_input = ModelInput(smallest=1, shorter=eval_resize(classifier.img_size, classifier.crop_pct))
    for path, picture in zip(paths, pictures):
        model_input.check(path, picture.size)
    batch = torch.stack([transform(picture) for picture in pictures]).to(target, dtype)  # (N, 3, S, S)
    with torch.inference_mode():
        probabilities = classifier.model.to(target, dtype)(batch).float().softmax(dim=1)
    top = probabilities.topk(min(topk, probabilities.shape[1]), dim=1)
    return [Prediction(path, [(i, classifier.class_names[i], p) for i, p in zip(indices, values)])
            for path, values, indices in zip(paths, top.values.tolist(), top.indices.tolist())]
