"""PVTv1 (Wang et al., "Pyramid Vision Transformer"): Tiny, Small, Medium, Large.

Non-overlapping patch embedding, learned position embeddings per stage (resized bilinearly for other
input sizes), plain FFN, SRA, a class token in the last stage and one LayerNorm at the end. As a dense
backbone (``features_only=True``) it is the official detection and segmentation one: no class token and
no final LayerNorm (the stage-4 position embedding keeps the class token's slot, so the same weights load).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .capture import capturing_graph
from .layers import BLOCK_NORM_EPS, FeatureMap, PatchEmbed
from .pyramid import NUM_STAGES, PyramidVisionTransformerBase, stage_grid_sizes
from .registry import register_family


class PyramidVisionTransformer(PyramidVisionTransformerBase):
    global_pool = "token"

    def __init__(
        self,
        *,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        img_size: int = 224,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        **kwargs,
    ) -> None:
        patch_embeds = [
            PatchEmbed(in_chans if i == 0 else embed_dims[i - 1], embed_dims[i], kernel_size=p, stride=p)
            for i, p in enumerate((4, 2, 2, 2))
        ]
        super().__init__(
            patch_embeds=patch_embeds, embed_dims=embed_dims, depths=depths, num_heads=num_heads,
            mlp_ratios=mlp_ratios, sr_ratios=sr_ratios, conv_ffn=False, in_chans=in_chans, drop_rate=drop_rate,
            **kwargs,
        )
        # Position embeddings are learned for img_size x img_size inputs; the class token joins in stage 4.
        self.pos_grids = tuple(stage_grid_sizes(patch_embeds, img_size))
        for i, grid in enumerate(self.pos_grids):
            num_tokens = grid * grid + (1 if i == NUM_STAGES - 1 else 0)
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, num_tokens, embed_dims[i])))
            setattr(self, f"pos_drop{i + 1}", nn.Dropout(drop_rate))
        if not self.features_only:
            self.norm = nn.LayerNorm(embed_dims[-1], eps=BLOCK_NORM_EPS)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[-1]))
            self.feature_map4 = FeatureMap(num_prefix_tokens=1)  # the last stage's map leaves the class token out
        self._init_weights()
        for i in range(NUM_STAGES):
            nn.init.trunc_normal_(getattr(self, f"pos_embed{i + 1}"), std=0.02)
        if not self.features_only:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def position_embedding(self, stage: int, height: int, width: int) -> torch.Tensor:
        """Stage ``stage``'s position embedding for a ``height`` x ``width`` grid, (1, H*W, C)."""
        pos = getattr(self, f"pos_embed{stage + 1}")
        grid = self.pos_grids[stage]
        if stage == NUM_STAGES - 1:
            pos = pos[:, 1:]
        # An exported graph must resize for every size, not only for the example input's.
        if capturing_graph() or (height, width) != (grid, grid):
            pos = pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)  # (1, N, C) -> (1, C, g, g)
            pos = F.interpolate(pos, size=(height, width), mode="bilinear", align_corners=False)
            pos = pos.flatten(2).transpose(1, 2)
        return pos

    def embed(self, stage: int, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x, height, width = super().embed(stage, x)
        pos = self.position_embedding(stage, height, width)
        if stage == NUM_STAGES - 1 and not self.features_only:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            pos = torch.cat((self.pos_embed4[:, :1], pos), dim=1)
        return getattr(self, f"pos_drop{stage + 1}")(x + pos), height, width

    def stage_norm(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) if stage == NUM_STAGES - 1 and not self.features_only else x

    def no_weight_decay(self) -> set[str]:
        return {f"pos_embed{i + 1}" for i in range(NUM_STAGES)} | ({"cls_token"} if not self.features_only else set())


# Settings from the PVTv1 paper's Table 1 and the official release (reference.json).
PVT_V1_VARIANTS = {
    "pvt_tiny": dict(depths=(2, 2, 2, 2)),
    "pvt_small": dict(depths=(3, 4, 6, 3)),
    "pvt_medium": dict(depths=(3, 4, 18, 3)),
    "pvt_large": dict(depths=(3, 8, 27, 3)),
}

register_family(PyramidVisionTransformer, PVT_V1_VARIANTS)
