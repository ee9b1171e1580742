"""Semantic FPN (Kirillov et al., the semantic branch of Panoptic FPN) on a PVT backbone, as in section 5.3.

    image -> PVT backbone (strides 4, 8, 16, 32) -> FPN neck (256 channels, 4 levels)
          -> Semantic FPN head: per level, (3x3 conv + norm + ReLU [+ 2x upsampling]) until stride 4,
             summed, dropout 0.1, 1x1 classifier (128 -> classes) -> bilinear upsampling to the input size

The layers and their sizes are MMSegmentation's ``FPN`` (no extra levels) and ``FPNHead`` (channels 128,
SyncBN) of the official PVT Semantic FPN config, so parameter and FLOP counts match the paper's Table 5.
The neck is torchvision's ``FeaturePyramidNetwork``: the same 1x1 lateral and 3x3 output convs with bias,
and nearest-neighbour top-down upsampling. The attributes are named ``backbone``, ``neck`` and
``decode_head`` as in MMSegmentation, so a checkpoint's backbone loads anywhere a PVT backbone does.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from ..errors import InputError
from ..models import create_model

Norm = Literal["batch", "group"]
SEGMENTERS = ("semantic_fpn",)
NECK_CHANNELS = 256
HEAD_CHANNELS = 128
FEATURE_STRIDES = (4, 8, 16, 32)


def _norm_layer(norm: Norm, channels: int) -> nn.Module:
    # Batch norm (SyncBN under DDP on GPU) as in the official config; group norm for tiny per-GPU batches.
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.GroupNorm(32, channels)


class Upsample2x(nn.Module):
    """Bilinear 2x upsampling through ``F.interpolate``, as MMSegmentation's ``Upsample`` (which mmcv's
    FLOP counter, unlike ``nn.Upsample``, does not count)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class ConvNormReLU(nn.Sequential):
    """3x3 conv (no bias: the norm has one) -> norm -> ReLU: MMCV's ``ConvModule`` as the head uses it."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class SemanticFPNHead(nn.Module):
    """Per FPN level, ``log2(stride / 4)`` (at least one) conv stages, each followed by 2x upsampling
    below stride 4; the levels are summed at stride 4 and classified by a 1x1 conv."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = NECK_CHANNELS,
        channels: int = HEAD_CHANNELS,
        feature_strides: Sequence[int] = FEATURE_STRIDES,
        dropout: float = 0.1,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for stride in feature_strides:
            length = max(1, int(math.log2(stride) - math.log2(feature_strides[0])))
            layers: list[nn.Module] = []
            for k in range(length):
                layers.append(ConvNormReLU(in_channels if k == 0 else channels, channels, norm))
                if stride != feature_strides[0]:
                    layers.append(Upsample2x())
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """FPN levels (B, 256, H/s, W/s) -> logits (B, classes, H/4, W/4)."""
        output = self.scale_heads[0](features[0])
        for head, feature in zip(self.scale_heads[1:], features[1:]):
            # Odd input sizes give levels that are not exact multiples: resize to the stride-4 grid.
            output = output + F.interpolate(head(feature), size=output.shape[2:], mode="bilinear", align_corners=False)
        return self.classifier(self.dropout(output))


class SemanticFPN(nn.Module):
    """PVT backbone + FPN neck + Semantic FPN head; ``forward`` gives logits (B, classes, H, W) at the input size."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        neck_channels: int = NECK_CHANNELS,
        head_channels: int = HEAD_CHANNELS,
        dropout: float = 0.1,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.in_chans = getattr(backbone, "in_chans", 3)
        strides = backbone.feature_info.reduction()
        self.neck = FeaturePyramidNetwork(backbone.feature_info.channels(), neck_channels)
        self.decode_head = SemanticFPNHead(num_classes, neck_channels, head_channels, strides, dropout, norm)
        self.init_new_layers()

    def init_new_layers(self) -> None:
        """Xavier (uniform) for the neck's and head's convs, zero biases, unit norms: the paper's init."""
        for module in (*self.neck.modules(), *self.decode_head.modules()):
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)  # 4 x (B, C_i, H/s_i, W/s_i)
        pyramid = self.neck(OrderedDict((str(i), f) for i, f in enumerate(features)))
        logits = self.decode_head(list(pyramid.values()))  # (B, classes, H/4, W/4)
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}


def build_segmenter(
    name: str = "semantic_fpn",
    *,
    backbone: str = "pvt_v2_b2",
    num_classes: int = 150,
    pretrained: bool | str | os.PathLike | Mapping | None = None,
    drop_path_rate: float = 0.1,
    norm: Norm = "batch",
    dropout: float = 0.1,
    **kwargs: Any,
) -> SemanticFPN:
    """Segmenter ``name`` on PVT ``backbone`` with ``num_classes`` outputs; ``pretrained`` loads the
    backbone's weights (``"official"``: the ImageNet-1K release; or a checkpoint path or state dict)."""
    if name not in SEGMENTERS:
        raise InputError(f"unknown segmenter {name!r}; known segmenters: {', '.join(SEGMENTERS)}")
    if num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}")
    if norm not in ("batch", "group"):
        raise InputError(f"norm must be 'batch' or 'group', got {norm!r}")
    body = create_model(backbone, features_only=True, pretrained=pretrained, drop_path_rate=drop_path_rate)
    return SemanticFPN(body, num_classes, dropout=dropout, norm=norm, **kwargs)
