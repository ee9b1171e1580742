"""The reference implementations we test against (timm, HF transformers), loaded with our weights.

They are built by the package (``pvtv2.bench.peers``), which ``pvt bench`` uses at run time too.
"""

from pvtv2.bench.peers import hf_model, hf_with_weights_of, relative_error, timm_with_weights_of

__all__ = ["hf_model", "hf_with_weights_of", "relative_error", "timm_with_weights_of"]
