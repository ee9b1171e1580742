"""A segmenter from a checkpoint, per-pixel prediction of an image, and a colour overlay with a legend.

Checkpoints of ``pvt seg-train`` carry their backbone, classes and test settings. MMSegmentation
checkpoints of the official PVT Semantic FPN (``backbone.*``, ``neck.lateral_convs.*``,
``decode_head.conv_seg.*``) are converted on load; their backbone is recognised from its keys and shapes.
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torchvision import tv_tensors

from ..engine.training_state import is_training_checkpoint, read_training_checkpoint
from ..models.conversion import identify_model
from ..models.loading import CheckpointError, check_weights, open_checkpoint, read_file
from .config import SegmentationConfig, parse_scales
from .data import ADE20K_CLASSES
from .evaluate import predict_probabilities
from .model import build_segmenter
from .transforms import EvalTransform


@dataclass
class LoadedSegmenter:
    model: nn.Module
    backbone: str
    class_names: list[str]
    config: SegmentationConfig  # the training config (or the defaults, for weights that are not ours)
    description: str


def load_segmenter(path: str | Path) -> LoadedSegmenter:
    """The segmenter in ``path`` (a pvt seg-train checkpoint or an MMSegmentation one), in eval mode on the CPU."""
    path = Path(path)
    if not is_training_checkpoint(path):
        return _from_mmseg(path)
    state = read_training_checkpoint(path, "segmentation")
    config = SegmentationConfig.from_dict(state["config"], f"the config in {path}")
    class_names = list(state["class_names"])
    model = build_segmenter(state["segmenter"], backbone=state["model_name"], num_classes=len(class_names),
                            norm=config.model.norm, dropout=config.model.dropout,
                            neck_channels=config.model.neck_channels, head_channels=config.model.head_channels)
    check_weights(state["model"], model.state_dict(), f"checkpoint {path}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path} does not fit {state['model_name']} Semantic FPN: {error}") from error
    return LoadedSegmenter(model.eval(), state["model_name"], class_names, config,
                           f"Semantic FPN {state['model_name']} ({path}, iteration {state['iteration']})")


# MMSegmentation names -> ours: FPN convs are ConvModules (.conv), head stages ConvModule(.conv, .bn).
_MMSEG_RENAMES = (
    (r"^neck\.lateral_convs\.(\d+)\.conv\.", r"neck.inner_blocks.\1.0."),
    (r"^neck\.fpn_convs\.(\d+)\.conv\.", r"neck.layer_blocks.\1.0."),
    (r"^decode_head\.scale_heads\.(\d+)\.(\d+)\.conv\.", r"decode_head.scale_heads.\1.\2.0."),
    (r"^decode_head\.scale_heads\.(\d+)\.(\d+)\.(?:bn|gn)\.", r"decode_head.scale_heads.\1.\2.1."),
    (r"^decode_head\.conv_seg\.", r"decode_head.classifier."),
)


def _from_mmseg(path: Path) -> LoadedSegmenter:
    raw = read_file(path)  # a clear error for a missing, damaged or unsafe file
    tensors = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(tensors, dict) or "decode_head.conv_seg.weight" not in tensors:
        raise CheckpointError(f"{path} is neither a pvt seg-train checkpoint nor an MMSegmentation Semantic FPN "
                              f"checkpoint (no decode_head.conv_seg.weight)")
    renamed = {}
    for key, value in tensors.items():
        if key.startswith("backbone.") or not isinstance(value, torch.Tensor):
            continue
        for pattern, replacement in _MMSEG_RENAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    backbone_tensors = open_checkpoint(path).tensors
    backbone = identify_model(backbone_tensors, source=f"the backbone of {path}")
    num_classes = tensors["decode_head.conv_seg.weight"].shape[0]
    norm = "group" if any(".gn." in k for k in tensors) else "batch"
    model = build_segmenter("semantic_fpn", backbone=backbone, num_classes=num_classes, norm=norm)
    check_weights({**renamed, **{f"backbone.{k}": v for k, v in backbone_tensors.items()}}, model.state_dict(), path)
    model.backbone.load_state_dict(backbone_tensors)
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise CheckpointError(f"MMSegmentation checkpoint {path} does not fit Semantic FPN {backbone}: missing "
                              f"{missing[:10]}, unexpected {unexpected[:10]}")
    names = list(ADE20K_CLASSES) if num_classes == len(ADE20K_CLASSES) else [f"class_{i}" for i in range(num_classes)]
    return LoadedSegmenter(model.eval(), backbone, names, SegmentationConfig(),
                           f"Semantic FPN {backbone} (MMSegmentation checkpoint {path})")


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


def palette(num_classes: int) -> np.ndarray:
    """(classes, 3) uint8 colours, evenly spread in hue and varied in brightness, the same on every run."""
    colours = [colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65 + 0.35 * (i % 2), 0.95 - 0.25 * ((i // 2) % 2))
               for i in range(num_classes)]
    return (np.array(colours) * 255).round().astype(np.uint8)


def overlay(pixels: np.ndarray, labels: np.ndarray, class_names: list[str], alpha: float = 0.5) -> Image.Image:
    """The image with each class's pixels tinted in its colour, and a legend of the classes present on the right."""
    colours = palette(len(class_names))
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
