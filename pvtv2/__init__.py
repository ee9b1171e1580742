"""pvtv2: the Pyramid Vision Transformer family (PVTv1, PVTv2) for classification and dense prediction."""

from .models import create_model, list_models
from .models.complexity import count_flops, count_params

__version__ = "0.1.0"
__all__ = ["count_flops", "count_params", "create_model", "list_models"]
