"""The four pyramid levels as pictures: the first three principal components as RGB, or a channel-mean heat map."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..errors import InputError

MODES = ("pca", "mean")


@torch.no_grad()
def feature_maps(model: nn.Module, image: torch.Tensor, mode: Literal["pca", "mean"] = "pca") -> list[torch.Tensor]:
    """One picture per pyramid level (strides 4, 8, 16, 32) of a normalised ``image`` (3, H, W) or (1, 3, H, W).

    ``pca``: (3, h, w) in [0, 1], the level's tokens projected on their first three principal components
    (each scaled to [0, 1]); ``mean``: (h, w), the mean over channels of the absolute activations, scaled
    to [0, 1] (each level ends in a LayerNorm, whose plain channel mean is its bias's, near 0 everywhere).
    """
    if mode not in MODES:
        raise InputError(f"feature map mode {mode!r} is not one of {', '.join(MODES)}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1:
        raise InputError(f"feature_maps takes one image (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    training = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        levels = model.forward_intermediates(image, intermediates_only=True)
    finally:
        for module, mode_was in training:
            module.training = mode_was
    return [_principal_rgb(level[0]) if mode == "pca" else _unit(level[0].abs().mean(0)) for level in levels]


def _unit(x: torch.Tensor) -> torch.Tensor:
    """``x`` scaled to [0, 1] (a constant map becomes 0)."""
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else torch.zeros_like(x)


def _principal_rgb(level: torch.Tensor) -> torch.Tensor:
    """(C, h, w) -> (3, h, w): the projections on the first three principal components of the h*w tokens."""
    channels, height, width = level.shape
    tokens = level.flatten(1).T.float()  # (h*w, C)
    centred = tokens - tokens.mean(0)
    # Right singular vectors of the centred tokens are the principal axes (fewer tokens than 3: zeros).
    _, _, axes = torch.linalg.svd(centred, full_matrices=False)
    axes = axes[:3]
    # An axis's sign is arbitrary; fix it so that the largest loading is positive (same colours every run).
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    projected = centred @ (axes * signs).T  # (h*w, k)
    if projected.shape[1] < 3:
        projected = torch.cat([projected, projected.new_zeros(projected.shape[0], 3 - projected.shape[1])], dim=1)
    rgb = torch.stack([_unit(c) for c in projected.T])  # (3, h*w)
    return rgb.unflatten(1, (height, width))
