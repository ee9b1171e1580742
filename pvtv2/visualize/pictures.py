"""Pictures of what a model sees, from files to a figure file (``pvt show``): the attention of query pixels,
the four pyramid levels, and a grid of detections and segmentations (the paper's Fig. 3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from ..data import read_image
from ..data.images import IMAGENET_MEAN, IMAGENET_STD, ModelInput
from ..errors import InputError
from .attention import AttentionMaps, attention_maps
from .features import feature_maps
from .figures import attention_figure, check_figure_output, features_figure, predictions_figure, save

STAGES = (1, 2, 3, 4)
FEATURE_WORDS = {"pca": "first 3 principal components as RGB", "mean": "channel mean of |activation|"}


@dataclass(frozen=True)
class Picture:
    """An image as float RGB (3, H, W) in [0, 1], resized as asked, and its size in the file (H, W)."""

    path: Path
    pixels: torch.Tensor
    original: tuple[int, int]
    size: int | None  # the shorter side it was resized to, None: as it is


def read_picture(path: str | Path, size: int | None = None) -> Picture:
    """The image in ``path``, its shorter side resized to ``size`` pixels (bicubic) when given."""
    if size is not None and size < 1:
        raise InputError(f"--size must be a positive number of pixels, got {size}")
    path = Path(path)
    image = read_image(path)  # names the file when it cannot be read
    # Refused before the model is loaded: any PVT needs at least this many pixels per side, and no picture
    # may become larger than PIL opens.
    ModelInput(smallest=1, shorter=size).check(path, image.size)
    pixels = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
    original = (pixels.shape[1], pixels.shape[2])
    if size is not None:
        pixels = TF.resize(pixels, [size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    return Picture(path, pixels, original, size)


def load_model(model: str | None = None, pretrained: str | None = None,
               checkpoint: str | Path | None = None) -> tuple[nn.Module, str]:
    """A classifier in eval mode, from ``checkpoint`` (pvt train's or a classifier's weights) or by name
    (``pretrained``: 'official' or a weights file, None: random weights), and its description."""
    from ..models import create_model

    if checkpoint is not None:
        if pretrained is not None:
            raise InputError("give either --checkpoint FILE or --model NAME --pretrained WEIGHTS, not both")
        from ..classification.inference import load_classifier

        loaded = load_classifier(checkpoint, model)
        return loaded.model.eval(), loaded.description
    if model is None:
        raise InputError("name the model: --checkpoint FILE, or --model NAME (with --pretrained official or a file)")
    return create_model(model, pretrained=pretrained).eval(), \
        f"{model} ({'random weights' if pretrained is None else pretrained})"


def _model_for(picture: Picture, model: str | None, pretrained: str | None,
               checkpoint: str | Path | None) -> tuple[nn.Module, str]:
    """:func:`load_model`'s, checked to take ``picture`` at its size."""
    loaded, description = load_model(model, pretrained, checkpoint)
    smallest = getattr(loaded, "min_input_size", 1)
    ModelInput(smallest=smallest, shorter=picture.size).check(picture.path, (picture.original[1], picture.original[0]))
    return loaded, description


def _normalised(picture: Picture) -> torch.Tensor:
    return TF.normalize(picture.pixels, IMAGENET_MEAN, IMAGENET_STD)


def _query_points(picture: Picture, points: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
    """``points`` (pixels of the file), checked against it, in the pixels of the (resized) model input."""
    if not points:
        return None
    height, width = picture.original
    scaled = []
    for x, y in points:
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(f"--point {x} {y} is outside image {picture.path} ({width}x{height} pixels): "
                             f"give x in 0..{width - 1} and y in 0..{height - 1}")
        scaled.append((int(x * picture.pixels.shape[2] / width), int(y * picture.pixels.shape[1] / height)))
    return scaled


def draw_attention(image: str | Path, out: str | Path, *, model: str | None = None, pretrained: str | None = None,
                   checkpoint: str | Path | None = None, size: int | None = None, stage: int = 4,
                   points: Sequence[tuple[int, int]] | None = None, rollout: bool = False) -> AttentionMaps:
    """Draw into ``out`` the attention of query ``points`` of ``image`` (pixels of the file; default: the
    centre) in ``stage``'s last block, one panel per head (``rollout``: the rollout over the stage's
    blocks, one panel per point); the model as :func:`load_model` finds it. Returns the maps drawn."""
    if stage not in STAGES:
        raise InputError(f"--stage {stage} does not exist: PVT models have stages 1 to 4")
    check_figure_output(out, "--out", [Path(image)])
    picture = read_picture(image, size)
    loaded, description = _model_for(picture, model, pretrained, checkpoint)
    result = attention_maps(loaded, _normalised(picture), stage=stage, points=_query_points(picture, points),
                            rollout=rollout)
    block = "rollout over its" if rollout else f"block {result.block + 1} of"
    title = (f"{description}\nstage {stage}, {block} {len(loaded.blocks(stage - 1))}: queries on "
             f"{result.token_grid[0]}x{result.token_grid[1]} tokens, keys on {result.key_grid[0]}x"
             f"{result.key_grid[1]} cells")
    save(attention_figure(picture.pixels.permute(1, 2, 0).numpy(), result, title), out)
    return result


def draw_features(image: str | Path, out: str | Path, *, model: str | None = None, pretrained: str | None = None,
                  checkpoint: str | Path | None = None, size: int | None = None, mode: str = "pca"
                  ) -> list[torch.Tensor]:
    """Draw into ``out`` the four pyramid levels of ``image`` beside it (``mode``: 'pca', the first three
    principal components as RGB, or 'mean', the channel mean of |activation|). Returns the levels drawn."""
    check_figure_output(out, "--out", [Path(image)])
    picture = read_picture(image, size)
    loaded, description = _model_for(picture, model, pretrained, checkpoint)
    levels = feature_maps(loaded, _normalised(picture), mode)
    save(features_figure(picture.pixels.permute(1, 2, 0).numpy(), levels, loaded.embed_dims,
                         f"{description}: {FEATURE_WORDS[mode]}"), out)
    return levels


def draw_predictions(images: Sequence[str | Path], out: str | Path, *, detection: Sequence[str | Path] = (),
                     segmentation: Sequence[str | Path] = (), score_threshold: float = 0.5,
                     device: str = "auto") -> tuple[list[str], int]:
    """Draw into ``out`` one row per image and one column per checkpoint (detectors, then segmenters): the
    boxes, names, scores and masks of detections with score >= ``score_threshold``, the class overlay of a
    segmentation, as the paper's Fig. 3. Returns the column titles and the number of rows."""
    from ..detection.loading import load_detector
    from ..detection.predict import check_score_threshold, drawn_detections
    from ..engine.distributed import resolve_device
    from ..segmentation.predict import drawn_segmentation, load_segmenter

    if not detection and not segmentation:
        raise InputError("give at least one checkpoint: --detection CKPT... and/or --segmentation CKPT...")
    check_score_threshold(score_threshold)
    paths = [Path(p) for p in images]
    check_figure_output(out, "--out", [*paths, *map(Path, detection), *map(Path, segmentation)])
    pictures = {path: np.asarray(read_image(path)).copy() for path in paths}  # each file read once, named if bad
    loaded: list[Any] = [*(load_detector(path, device) for path in detection),
                         *(load_segmenter(path) for path in segmentation)]
    # Every picture against every model's resize, before any model runs.
    for path, pixels in pictures.items():
        for model in loaded:
            model.model_input().check(path, (pixels.shape[1], pixels.shape[0]))
    target = resolve_device(device)
    draws: list[Callable[[np.ndarray], np.ndarray]] = [
        *(partial(drawn_detections, model, score_threshold=score_threshold) for model in loaded[:len(detection)]),
        *(partial(drawn_segmentation, model, device=target) for model in loaded[len(detection):]),
    ]
    titles = _numbered([model.title for model in loaded])
    rows = [(path.name, {title: draw(pixels) for title, draw in zip(titles, draws)})
            for path, pixels in pictures.items()]
    save(predictions_figure(rows, titles), out)
    return titles, len(rows)


def _numbered(titles: Sequence[str]) -> list[str]:
    """``titles``, each numbered when an earlier one has it already (two checkpoints of the same kind)."""
    unique: list[str] = []
    for title in titles:
        taken = set(unique)
        unique.append(title if title not in taken else
                      next(f"{title} ({n})" for n in range(2, len(unique) + 2) if f"{title} ({n})" not in taken))
    return unique
