"""ATSS's and GFL's head, :class:`DenseHead` (MMDetection's ``ATSSHead``/``GFLHead`` layers): a cls and a reg
tower of GroupNorm convs, a class conv, a box conv scaled per level, and optionally a centerness conv."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

from ..anchors import FPN_STRIDES
from ..key_map import KeyRule
from ..spec import check_multiple

GROUP_NORM_GROUPS = 32  # the head towers' GroupNorm(32), as MMDetection's
PRIOR_PROBABILITY = 0.01  # the class convs' bias starts every score at this probability


def _tower(channels: int, depth: int) -> nn.Sequential:
    norm = partial(nn.GroupNorm, GROUP_NORM_GROUPS)
    return nn.Sequential(*(Conv2dNormActivation(channels, channels, 3, norm_layer=norm) for _ in range(depth)))


def _per_place(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H * W, C): one row per anchor, in the anchor generator's order."""
    n, c = x.shape[:2]
    return x.permute(0, 2, 3, 1).reshape(n, -1, c)


class DenseHead(nn.Module):
    """ATSS's and GFL's head (MMDetection's ``ATSSHead``/``GFLHead`` layers): a cls and a reg tower of
    ``stacked_convs`` GroupNorm convs, a class conv on the first, a box conv (``box_channels`` per place,
    times a learnable scale per level) and optionally a centerness conv on the second.

    Returns, like torchvision's ``RetinaNetHead``, tensors of one row per anchor over all levels:
    ``cls_logits`` (N, A, K), ``bbox_regression`` (N, A, box_channels) and ``centerness`` (N, A, 1) when it
    has one.
    """

    def __init__(self, in_channels: int, num_classes: int, box_channels: int, num_levels: int = len(FPN_STRIDES),
                 with_centerness: bool = False, stacked_convs: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_convs = _tower(in_channels, stacked_convs)
        self.reg_convs = _tower(in_channels, stacked_convs)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_reg = nn.Conv2d(in_channels, box_channels, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1) if with_centerness else None
        self.scales = nn.Parameter(torch.ones(num_levels))  # MMCV's Scale(1.0), one per level
        for layer in self.modules():  # MMDetection's init: normal(0, 0.01), zero bias; class prior 0.01
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs: dict[str, list[torch.Tensor]] = {"cls_logits": [], "bbox_regression": []}
        if self.centerness is not None:
            outputs["centerness"] = []
        for level, x in enumerate(features):
            cls_features, reg_features = self.cls_convs(x), self.reg_convs(x)
            outputs["cls_logits"].append(_per_place(self.cls_logits(cls_features)))
            outputs["bbox_regression"].append(_per_place(self.bbox_reg(reg_features) * self.scales[level]))
            if self.centerness is not None:
                outputs["centerness"].append(_per_place(self.centerness(reg_features)))
        return {name: torch.cat(values, dim=1) for name, values in outputs.items()}


def check_group_norm(detector: str, fpn_channels: int, key: str = "fpn_channels") -> None:
    """The head's GroupNorm needs ``fpn_channels`` (named ``key`` in the message) divisible by its groups."""
    check_multiple(key, fpn_channels, GROUP_NORM_GROUPS, detector,
                   f"its head's GroupNorm has {GROUP_NORM_GROUPS} groups")


def tower_key_rules() -> list[KeyRule]:
    """Our head towers' keys (Conv2dNormActivation: conv 0, GroupNorm 1) and MMDetection's ConvModule's."""
    return [KeyRule(f"head.{tower}_convs.{{i}}.{ours}.{{p}}", f"bbox_head.{tower}_convs.{{i}}.{theirs}.{{p}}")
            for tower in ("cls", "reg") for ours, theirs in (("0", "conv"), ("1", "gn"))]
