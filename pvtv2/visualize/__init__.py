"""Seeing inside the model: attention maps of spatial-reduction attention and the pyramid's feature maps, and
the pictures ``pvt show`` draws of them and of task predictions."""

from .attention import AttentionMaps, attention_maps, capture_attention
from .features import feature_maps
from .pictures import Picture, draw_attention, draw_features, draw_predictions, load_model, read_picture

__all__ = [
    "AttentionMaps", "Picture", "attention_maps", "capture_attention", "draw_attention", "draw_features",
    "draw_predictions", "feature_maps", "load_model", "read_picture",
]
