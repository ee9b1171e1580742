"""Seeing inside the model: attention maps of spatial-reduction attention and the pyramid's feature maps."""

from .attention import AttentionMaps, attention_maps, capture_attention
from .features import feature_maps

__all__ = ["AttentionMaps", "attention_maps", "capture_attention", "feature_maps"]
