"""State-dict key conversion between the official release, timm and HuggingFace transformers.

Our models use the official release's keys. Each other format is described by one function that
renames an official key (``official_to_timm_key``, ``official_to_hf_keys``); the reverse direction is
derived from it over the keys of the model being loaded, so the two directions cannot drift apart.
HF stores ``attn.kv`` as separate ``key`` and ``value`` layers: the official tensor is split in two.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Literal

import torch

from ..errors import InputError

Format = Literal["official", "timm", "hf"]
FORMATS: tuple[Format, ...] = ("official", "timm", "hf")
HF_PREFIXES = {"v1": "pvt.", "v2": "pvt_v2."}


def family_of(official_keys: Iterable[str]) -> Literal["v1", "v2"]:
    """PVTv1 checkpoints carry position embeddings, PVTv2 ones do not."""
    return "v1" if any(k.startswith("pos_embed") for k in official_keys) else "v2"


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> Format:
    """Which of the three layouts ``state_dict`` is in; raises ``ValueError`` when it is none of them."""
    keys = list(state_dict)
    if any(k.startswith(("patch_embed1.", "block1.")) for k in keys):
        return "official"
    if any(k.startswith(("patch_embed.proj.", "stages.")) for k in keys):
        return "timm"
    if any(".encoder.layers." in k or k.startswith("encoder.") or ".encoder.patch_embeddings." in k for k in keys):
        return "hf"
    shown = ", ".join(keys[:8]) or "(no keys)"
    raise InputError(f"not a PVT checkpoint in official, timm or HF format; its first keys are: {shown}")


# -- official -> timm (PVTv2 only: timm has no PVTv1) -----------------------------------------------------
def official_to_timm_key(key: str) -> str:
    key = re.sub(r"^patch_embed1\.", "patch_embed.", key)
    key = re.sub(r"^patch_embed(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.downsample.", key)
    key = re.sub(r"^block(\d)\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.", key)
    key = re.sub(r"^norm(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.norm.", key)
    return key.replace("mlp.dwconv.dwconv.", "mlp.dwconv.")


# -- official -> HF transformers -------------------------------------------------------------------------
_HF_V2_RULES = [
    (r"^patch_embed(\d)\.proj\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.patch_embedding.proj."),
    (r"^patch_embed(\d)\.norm\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.patch_embedding.layer_norm."),
    (r"^block(\d)\.(\d+)\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.blocks.{m[2]}."),
    (r"^norm(\d)\.", lambda m: f"encoder.layers.{int(m[1]) - 1}.layer_norm."),
    (r"\.norm1\.", ".layer_norm_1."), (r"\.norm2\.", ".layer_norm_2."),
    (r"\.attn\.q\.", ".attention.query."), (r"\.attn\.kv\.", ".attention.key_value."),
    (r"\.attn\.proj\.", ".attention.proj."), (r"\.attn\.sr\.", ".attention.spatial_reduction."),
    (r"\.attn\.norm\.", ".attention.layer_norm."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."), (r"\.mlp\.fc2\.", ".mlp.dense2."),
]
_HF_V1_RULES = [
    (r"^patch_embed(\d)\.proj\.", lambda m: f"encoder.patch_embeddings.{int(m[1]) - 1}.projection."),
    (r"^patch_embed(\d)\.norm\.", lambda m: f"encoder.patch_embeddings.{int(m[1]) - 1}.layer_norm."),
    (r"^pos_embed(\d)$", lambda m: f"encoder.patch_embeddings.{int(m[1]) - 1}.position_embeddings"),
    (r"^cls_token$", "encoder.patch_embeddings.3.cls_token"),
    (r"^block(\d)\.(\d+)\.", lambda m: f"encoder.block.{int(m[1]) - 1}.{m[2]}."),
    (r"^norm\.", "encoder.layer_norm."),
    (r"\.norm1\.", ".layer_norm_1."), (r"\.norm2\.", ".layer_norm_2."),
    (r"\.attn\.q\.", ".attention.self.query."), (r"\.attn\.kv\.", ".attention.self.key_value."),
    (r"\.attn\.sr\.", ".attention.self.sequence_reduction."), (r"\.attn\.norm\.", ".attention.self.layer_norm."),
    (r"\.attn\.proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."), (r"\.mlp\.fc2\.", ".mlp.dense2."),
]


def official_to_hf_keys(key: str, family: Literal["v1", "v2"]) -> list[str]:
    """The HF key(s) holding official ``key``: two for ``attn.kv`` (key and value), one otherwise."""
    if key.startswith("head."):
        return [key.replace("head.", "classifier.", 1)]
    for pattern, replacement in _HF_V1_RULES if family == "v1" else _HF_V2_RULES:
        key = re.sub(pattern, replacement, key)
    key = HF_PREFIXES[family] + key
    if ".key_value." in key:
        return [key.replace(".key_value.", ".key."), key.replace(".key_value.", ".value.")]
    return [key]


def _names_in(fmt: Format, key: str, family: Literal["v1", "v2"]) -> list[str]:
    if fmt == "official":
        return [key]
    if fmt == "timm":
        if family == "v1":
            raise InputError("timm has no PVTv1 models, so there is no timm format for them")
        return [official_to_timm_key(key)]
    return official_to_hf_keys(key, family)


def from_official(state_dict: Mapping[str, torch.Tensor], fmt: Format) -> dict[str, torch.Tensor]:
    """Rename an official-format state dict into ``fmt``."""
    family = family_of(state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        names = _names_in(fmt, key, family)
        for name, part in zip(names, tensor.chunk(len(names), dim=0)):
            out[name] = part.clone() if len(names) > 1 else tensor
    return out


def to_official(
    state_dict: Mapping[str, torch.Tensor], fmt: Format, official_keys: Iterable[str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a ``fmt`` state dict into official keys, looking for each of ``official_keys``.

    Returns the official state dict (keys that were not found are absent) and the source keys that
    no official key claimed. HF keys are accepted with or without the ``pvt.``/``pvt_v2.`` prefix.
    """
    official_keys = list(official_keys)
    family = family_of(official_keys)
    prefix = HF_PREFIXES[family]
    if fmt == "hf" and not any(k.startswith(prefix) for k in state_dict):
        state_dict = {prefix + k if not k.startswith("classifier.") else k: v for k, v in state_dict.items()}
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key in official_keys:
        names = _names_in(fmt, key, family)
        if all(n in state_dict for n in names):
            parts = [state_dict[n] for n in names]
            out[key] = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
            used.update(names)
    leftover = [k for k in state_dict if k not in used]
    return out, leftover
