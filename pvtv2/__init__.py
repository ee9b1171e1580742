"""pvtv2: the Pyramid Vision Transformer family (PVTv1, PVTv2) for classification and dense prediction."""

from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models"]
