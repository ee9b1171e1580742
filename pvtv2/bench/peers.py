"""The reference implementations we compare with (timm, HF transformers), holding our model's weights.

timm is a dependency of the package; HF transformers is optional: it is imported only when its peer is
built, and :func:`peers_of` leaves it out when it is not installed, so ``pvt bench`` measures our models and
timm's without it.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from ..errors import InputError
from ..models import PyramidVisionTransformerV2, model_settings
from ..models.keys import from_official

PEERS = ("timm", "hf")  # in the order the tables show them


def is_v2(name: str) -> bool:
    return name.startswith("pvt_v2")


def peers_of(name: str) -> list[str]:
    """The peers that implement model ``name``: timm has PVTv2 B0-B5 and B2-Li (not our other -Li sizes), HF,
    when transformers is installed, both families (its PVTv2 takes linear attention at every size)."""
    available = {"timm": _in_timm(name), "hf": importlib.util.find_spec("transformers") is not None}
    return [peer for peer in PEERS if available[peer]]


def _in_timm(name: str) -> bool:
    import timm  # imported when a peer is asked for: the rest of the package does without its import time

    return is_v2(name) and timm.is_model(name)


class LogitsOf(nn.Module):
    """An HF classifier as images -> logits, like ours and timm's (HF returns an output object)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).logits


def peer_with_weights_of(peer: str, model: nn.Module, name: str, image_size: int = 224) -> nn.Module:
    """Peer ``peer`` of our ``model`` (variant ``name``) as an images -> logits module, in eval mode.

    ``image_size`` matters for HF's PVTv1 only, which runs at its configured size alone.
    """
    if peer == "timm":
        return timm_with_weights_of(model, name)
    if peer == "hf":
        return LogitsOf(hf_with_weights_of(model, name, image_size))
    raise InputError(f"unknown peer {peer!r}; expected one of {', '.join(PEERS)}")


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Max absolute difference over max absolute value: the parity measure of the test suite."""
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def timm_with_weights_of(model: nn.Module, name: str) -> nn.Module:
    """timm's ``name`` (a ``pvt_v2_*`` model) holding ``model``'s weights."""
    import timm

    peer = timm.create_model(name, pretrained=False).eval()
    peer.load_state_dict(from_official(model.state_dict(), "timm"), strict=True)
    return peer


def hf_model(name: str, image_size: int = 224) -> nn.Module:
    """An HF transformers classifier with the architecture of our ``name``, randomly initialised."""
    from transformers import PvtConfig, PvtForImageClassification, PvtV2Config, PvtV2ForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # HF warns about every randomly initialised model
    settings = model_settings(name)
    if is_v2(name):
        defaults = PyramidVisionTransformerV2.__init__.__kwdefaults__
        config = PvtV2Config(
            hidden_sizes=list(settings.get("embed_dims", defaults["embed_dims"])),
            depths=list(settings["depths"]),
            mlp_ratios=list(settings.get("mlp_ratios", defaults["mlp_ratios"])),
            linear_attention=settings.get("linear", False),
            num_labels=1000,
        )
        return _official_eps(PvtV2ForImageClassification(config).eval())
    config = PvtConfig(depths=list(settings["depths"]), num_labels=1000, image_size=image_size)
    return _official_eps(PvtForImageClassification(config).eval())


def hf_with_weights_of(model: nn.Module, name: str, image_size: int = 224) -> nn.Module:
    """HF's ``name`` holding ``model``'s weights.

    HF's PVTv1 runs only at its configured square ``image_size``: it reshapes the stored position
    embeddings to the input's grid instead of resizing them. Its position embeddings are therefore ours
    resized to its grids by the official rule, as our model does on the fly (unchanged at our own size).
    """
    peer = hf_model(name, image_size)
    state = from_official(model.state_dict(), "hf")
    if not is_v2(name):
        encoder = peer.pvt.encoder
        for stage in range(4):
            embed = encoder.patch_embeddings[stage]
            grid = embed.image_size[0] // embed.patch_size[0]
            resized = model.position_embedding(stage, grid, grid).detach()
            if stage == 3:  # the class token's embedding comes first and is not resized
                resized = torch.cat((model.pos_embed4[:, :1].detach(), resized), dim=1)
            state[f"pvt.encoder.patch_embeddings.{stage}.position_embeddings"] = resized
    peer.load_state_dict(state, strict=True)
    return peer


def _official_eps(model: nn.Module) -> nn.Module:
    """HF uses one eps (1e-6) for every LayerNorm; the official release and timm use PyTorch's 1e-5 in
    the patch-embedding and spatial-reduction norms. Align those so comparisons are of the
    implementations rather than that constant (with HF's eps the difference is ~1e-4 in raw stage-1
    features, ~1e-5 in logits)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) and (".patch_embedding" in name or ".attention." in name):
            module.eps = 1e-5
    return model
