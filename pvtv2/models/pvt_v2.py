"""PVTv2 (Wang et al., "PVTv2: Improved Baselines with Pyramid Vision Transformer"): B0-B5 and their -Li twins.

Overlapping patch embedding, convolutional FFN and (for -Li) linear spatial-reduction attention,
with a LayerNorm closing every stage and a mean-pooled classification head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import BLOCK_NORM_EPS, OverlapPatchEmbed
from .pyramid import NUM_STAGES, PyramidVisionTransformerBase
from .registry import register_family


class PyramidVisionTransformerV2(PyramidVisionTransformerBase):
    global_pool = "avg"

    def __init__(
        self,
        *,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        linear: bool = False,
        in_chans: int = 3,
        **kwargs,
    ) -> None:
        # Stage 1 embeds with stride 4 (kernel 7), the others with stride 2 (kernel 3).
        patch_embeds = [
            OverlapPatchEmbed(in_chans if i == 0 else embed_dims[i - 1], embed_dims[i], stride=4 if i == 0 else 2)
            for i in range(NUM_STAGES)
        ]
        super().__init__(
            patch_embeds=patch_embeds, embed_dims=embed_dims, depths=depths, num_heads=num_heads,
            mlp_ratios=mlp_ratios, sr_ratios=sr_ratios, conv_ffn=True, linear=linear, in_chans=in_chans, **kwargs,
        )
        for i in range(NUM_STAGES):
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=BLOCK_NORM_EPS))
        self._init_weights()

    def stage_norm(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"norm{stage + 1}")(x)


# Settings from the paper and the official release (reference.json); shared values in the defaults above.
PVT_V2_VARIANTS = {
    "pvt_v2_b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "pvt_v2_b1": dict(depths=(2, 2, 2, 2)),
    "pvt_v2_b2": dict(depths=(3, 4, 6, 3)),
    "pvt_v2_b2_li": dict(depths=(3, 4, 6, 3), linear=True),
    "pvt_v2_b3": dict(depths=(3, 4, 18, 3)),
    "pvt_v2_b4": dict(depths=(3, 8, 27, 3)),
    "pvt_v2_b5": dict(depths=(3, 6, 40, 3), mlp_ratios=(4, 4, 4, 4)),
}

# Linear SRA (Sec. 3.4) for every size, as the official code builds B2-Li: the SRA sibling's settings with
# linear=True. The paper and the release have B2-Li only, so these have no published figures or weights.
UNRELEASED_LINEAR = ("pvt_v2_b0_li", "pvt_v2_b1_li", "pvt_v2_b3_li", "pvt_v2_b4_li", "pvt_v2_b5_li")
PVT_V2_VARIANTS.update(
    {name: dict(PVT_V2_VARIANTS[name.removesuffix("_li")], linear=True) for name in UNRELEASED_LINEAR}
)

register_family(PyramidVisionTransformerV2, PVT_V2_VARIANTS)
