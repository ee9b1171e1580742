"""The PVT model zoo: PVTv2 B0-B5 and B2-Li, PVTv1 Tiny/Small/Medium/Large."""

from . import pvt_v1, pvt_v2  # noqa: F401  (registers the variants)
from .factory import create_model
from .pvt_v1 import PyramidVisionTransformer
from .pvt_v2 import PyramidVisionTransformerV2
from .registry import build_model, list_models, min_input_size, model_settings

__all__ = [
    "PyramidVisionTransformer", "PyramidVisionTransformerV2", "build_model", "create_model", "list_models",
    "min_input_size", "model_settings",
]
