"""A segmenter from a checkpoint, per-pixel prediction of an image (:func:`predict`), and a colour overlay
with a legend.

Checkpoints of ``pvt seg-train`` carry their backbone, classes and test settings. The official PVT Semantic
FPN release files (MMSegmentation 0.13) are read as they are (:mod:`pvtv2.segmentation.release`): their
backbone, classes, palette and test settings from their meta and shapes, and predict as MMSegmentation does
with the official test pipeline.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torchvision import tv_tensors

from ..data import read_image
from ..data.images import ModelInput, check_class_map_output, save_class_map, save_image
from ..engine.distributed import resolve_device
from ..engine.release import read_release, resolve_checkpoint
from ..engine.training_state import FORMAT_KEY, training_checkpoint
from ..models.loading import CheckpointError, check_weights, read_file
from .config import SegmentationConfig, parse_scales
from .evaluate import predict_probabilities
from .model import build_segmenter
from .release import from_release, is_segmenter_release
from .transforms import EvalTransform, model_input


@dataclass
class LoadedSegmenter:
    """A segmenter in evaluation mode, with its class names, settings and where it came from."""

    task: ClassVar[str] = "segmentation"
    model: nn.Module
    backbone: str
    class_names: list[str]
    config: SegmentationConfig  # the training config (or, for a release file, its settings as ours)
    description: str
    palette: np.ndarray | None = None  # (classes, 3) uint8 colours the checkpoint names (a release file's PALETTE)

    @property
    def title(self) -> str:
        return f"Semantic FPN {self.backbone}"

    def model_input(self) -> ModelInput:
        """How testing resizes a picture and the smallest side the backbone takes (see :func:`model_input`)."""
        return model_input(self.config, self.backbone)

    @property
    def colours(self) -> np.ndarray:
        """(classes, 3) uint8 colours of the classes: the checkpoint's palette, else :func:`palette`'s."""
        return self.palette if self.palette is not None else palette(len(self.class_names))


def load_segmenter(path: str | Path) -> LoadedSegmenter:
    """The segmenter in ``path`` (a pvt seg-train checkpoint, an official MMSegmentation release file, or a
    released model's name once imported), in eval mode on the CPU."""
    path = resolve_checkpoint(path)
    loaded = read_file(path)  # a clear error for a missing, damaged or unsafe file
    if FORMAT_KEY not in loaded:
        if not is_segmenter_release(loaded):
            raise CheckpointError(
                f"{path} is neither a pvt seg-train checkpoint (no {FORMAT_KEY!r} entry) nor an MMSegmentation "
                f"release file (a state_dict of backbone.patch_embed1.*, neck.* and decode_head.* weights)")
        release = from_release(read_release(path, loaded))
        model = _build(release.config, release.backbone, len(release.class_names), release.state_dict, path)
        return LoadedSegmenter(model, release.backbone, list(release.class_names), release.config,
                               f"Semantic FPN {release.backbone} (MMSegmentation release file {path})",
                               None if release.palette is None else np.array(release.palette, dtype=np.uint8))
    state = training_checkpoint(loaded, path, "segmentation")
    config = SegmentationConfig.from_dict(state["config"], f"the config in {path}")
    class_names = list(state["class_names"])
    model = _build(config, state["model_name"], len(class_names), state["model"], path)
    colours = state.get("palette")  # a release file's, once converted to a seg-train checkpoint
    return LoadedSegmenter(model, state["model_name"], class_names, config,
                           f"Semantic FPN {state['model_name']} ({path}, iteration {state['iteration']})",
                           None if colours is None else np.array(colours, dtype=np.uint8))


def _build(config: SegmentationConfig, backbone: str, num_classes: int, state_dict: dict[str, torch.Tensor],
           path: Path) -> nn.Module:
    """The Semantic FPN ``config`` describes on ``backbone``, with ``state_dict`` loaded strictly, in eval mode."""
    m = config.model
    model = build_segmenter(m.segmenter, backbone=backbone, num_classes=num_classes, norm=m.norm, dropout=m.dropout,
                            neck_channels=m.neck_channels, head_channels=m.head_channels)
    check_weights(state_dict, model.state_dict(), f"checkpoint {path}")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path} does not fit {backbone} Semantic FPN: {error}") from error
    return model.eval()


@torch.no_grad()
def segment(segmenter: LoadedSegmenter, pixels: np.ndarray, device: torch.device | str = "cpu", *,
            mode: str | None = None, flip: bool | None = None, scales: str | None = None) -> np.ndarray:
    """Class index per pixel (H, W) of an RGB image, predicted at the test scale and resized back.
    ``mode``, ``flip`` and ``scales`` default to the checkpoint's test settings."""
    cfg = segmenter.config
    image = tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1))
    transform = EvalTransform(cfg.augment.scale)
    batch = transform.normalise(transform.resize(image))[None].to(device)
    model = segmenter.model.to(device)
    probs = predict_probabilities(
        model, batch, pixels.shape[:2], num_classes=len(segmenter.class_names),
        mode=cfg.test.test_mode if mode is None else mode, crop_size=cfg.augment.crop_size,
        stride=cfg.test.slide_stride, flip=cfg.test.flip_test if flip is None else flip,
        scales=parse_scales(cfg.test.test_scales if scales is None else scales),
    )
    return probs.argmax(1)[0].cpu().numpy()


def drawn_segmentation(segmenter: LoadedSegmenter, pixels: np.ndarray, device: torch.device | str = "cpu"
                       ) -> np.ndarray:
    """An RGB picture (H, W, 3) uint8 with its classes tinted in their colours and a legend on the right."""
    labels = segment(segmenter, pixels, device)
    return np.asarray(overlay(pixels, labels, segmenter.class_names, colours=segmenter.colours))


@dataclass(frozen=True)
class SegmentationPrediction:
    """:func:`predict`'s class per pixel of an image, and the segmenter's class names."""

    labels: np.ndarray  # (H, W) class indices
    class_names: list[str]

    @property
    def found(self) -> list[str]:
        """The names of the classes present, in class order."""
        return [self.class_names[c] for c in sorted(set(self.labels.ravel().tolist()))]


def predict(checkpoint: str | Path, image: str | Path, *, out: str | Path | None = None,
            labels: str | Path | None = None, alpha: float = 0.5, mode: str | None = None, flip: bool = False,
            device: str = "auto") -> SegmentationPrediction:
    """The class per pixel of ``image`` by a seg-train (or MMSegmentation Semantic FPN) ``checkpoint``, at its
    test scale (``mode`` default and flip as the checkpoint's test settings, ``flip`` adds mirrored images).
    ``out``: also write the image with each class tinted (opacity ``alpha``) and a legend; ``labels``: also
    write the class indices as a lossless picture (.png, .tif)."""
    image = Path(image)
    picture = read_image(image)
    segmenter = load_segmenter(checkpoint)
    num_classes = len(segmenter.class_names)
    if labels is not None:  # now that the number of classes is known
        check_class_map_output(labels, "--labels", num_classes, [Path(p) for p in (image, out) if p is not None])
    segmenter.model_input().check(image, picture.size)
    pixels = np.asarray(picture).copy()
    class_map = segment(segmenter, pixels, resolve_device(device), mode=mode, flip=flip or None)
    if out is not None:
        save_image(overlay(pixels, class_map, segmenter.class_names, alpha, segmenter.colours), out)
    if labels is not None:
        save_class_map(class_map, labels, num_classes)
    return SegmentationPrediction(class_map, segmenter.class_names)


def palette(num_classes: int) -> np.ndarray:
    """(classes, 3) uint8 colours, evenly spread in hue and varied in brightness, the same on every run."""
    colours = [colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65 + 0.35 * (i % 2), 0.95 - 0.25 * ((i // 2) % 2))
               for i in range(num_classes)]
    return (np.array(colours) * 255).round().astype(np.uint8)


def overlay(pixels: np.ndarray, labels: np.ndarray, class_names: list[str], alpha: float = 0.5,
            colours: np.ndarray | None = None) -> Image.Image:
    """The image with each class's pixels tinted in its colour (``colours``, (classes, 3) uint8, default
    :func:`palette`'s), and a legend of the classes present on the right."""
    colours = palette(len(class_names)) if colours is None else colours
    blended = (pixels * (1 - alpha) + colours[labels] * alpha).round().astype(np.uint8)
    present = [int(c) for c, n in zip(*np.unique(labels, return_counts=True))]
    font = ImageFont.load_default()
    row = 16
    width = 24 + max((int(font.getlength(class_names[c])) for c in present), default=0) + 8
    height = max(blended.shape[0], row * len(present) + 8)
    canvas = Image.new("RGB", (blended.shape[1] + width, height), "white")
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = blended.shape[1] + 4
    for i, c in enumerate(present):
        y = 4 + i * row
        draw.rectangle([x, y, x + 12, y + 12], fill=tuple(int(v) for v in colours[c]), outline="black")
        draw.text((x + 18, y), class_names[c], fill="black", font=font)
    return canvas
