"""The neck every detector stands on: a features-only PVT followed by torchvision's FPN, with the extra
levels of the paper's MMDetection configs (which levels each detector reads and adds is its spec's)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from ..models import create_model


class PyramidBackboneWithFPN(nn.Module):
    """A features-only PVT (strides 4..32) followed by an FPN; returns the FPN levels as an ordered dict,
    with ``out_channels`` set, as torchvision's detectors expect of a backbone."""

    def __init__(self, body: nn.Module, fpn: FeaturePyramidNetwork, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)  # [(B, C_i, H / s_i, W / s_i)] for the body's out_indices
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


class ExtraLevelsP6P7(LastLevelP6P7):
    """P6, a stride-2 conv of C5 (RetinaNet, MMDetection's ``on_input``) or of P5 (ATSS, GFL: ``on_output``),
    and P7, a stride-2 conv of P6 with no ReLU before it (MMDetection's ``relu_before_extra_convs=False``).

    torchvision's block takes P5 instead of C5 whenever their widths agree, which would change the neck of
    backbones with 256-channel C5 (PVTv2-B0) under a 256-channel FPN, and applies ReLU to P6 before P7;
    this one takes what it is told and no ReLU. Same convs (``p6``, ``p7``), so the same weights load.
    """

    def __init__(self, in_channels: int, out_channels: int, from_p5: bool = False) -> None:
        super().__init__(in_channels, out_channels)
        self.use_P5 = from_p5

    def forward(self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]) -> tuple[list[torch.Tensor], list[str]]:
        p6 = self.p6(p[-1] if self.use_P5 else c[-1])
        p7 = self.p7(p6)
        return [*p, p6, p7], [*names, "p6", "p7"]


def p6p7_from_c5(channels: Sequence[int], fpn_channels: int) -> nn.Module:
    """MMDetection's ``add_extra_convs='on_input'`` (RetinaNet): the extra block sees C5's channels."""
    return ExtraLevelsP6P7(channels[-1], fpn_channels)


def p6p7_from_p5(channels: Sequence[int], fpn_channels: int) -> nn.Module:
    """MMDetection's ``add_extra_convs='on_output'`` (ATSS, GFL)."""
    return ExtraLevelsP6P7(fpn_channels, fpn_channels, from_p5=True)


def max_pooled_p6(channels: Sequence[int], fpn_channels: int) -> nn.Module:
    """A max-pooled P6 for the RPN (MMDetection's FPN with ``num_outs=5`` and no extra convs)."""
    return LastLevelMaxPool()


def no_extra_levels(channels: Sequence[int], fpn_channels: int) -> None:
    """The FPN's levels only (Sparse R-CNN: ``num_outs=4``)."""
    return None


def build_neck(
    backbone: str,
    feature_levels: Sequence[int],
    extra_levels: Callable[[Sequence[int], int], nn.Module | None],
    *,
    fpn_channels: int = 256,
    pretrained_backbone: str | os.PathLike | Mapping | bool | None = None,
    drop_path_rate: float = 0.0,
) -> PyramidBackboneWithFPN:
    """PVT ``backbone`` giving the stages ``feature_levels`` to an FPN of ``fpn_channels`` with the block
    ``extra_levels(stage channels, fpn_channels)`` makes (see a detector spec's fields of those names)."""
    body = create_model(backbone, features_only=True, out_indices=tuple(feature_levels), pretrained=pretrained_backbone,
                        drop_path_rate=drop_path_rate)
    channels = body.feature_info.channels()
    fpn = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=extra_levels(channels, fpn_channels))
    xavier_init(fpn)  # the paper initialises the new layers with Xavier, as MMDetection's FPN does
    return PyramidBackboneWithFPN(body, fpn, fpn_channels)


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every conv and linear layer (MMDetection's FPN and shared fcs)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and layer.weight.device.type != "meta":
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
