"""Checkpoint files: which model a file holds, and converting it between the layouts the zoo loads.

Targets: ``official`` (the release's ``.pth``), ``timm`` (``.pth`` with timm's keys), ``hf`` (a folder with
``config.json`` and ``model.safetensors``, as HF ``save_pretrained`` writes it, which
``PvtV2ForImageClassification`` / ``PvtForImageClassification`` ``.from_pretrained`` load) and
``safetensors`` (official keys in a ``.safetensors`` file). Any of these, wrapped training checkpoints and
MMDetection / MMSegmentation checkpoints (whose backbone is taken) are accepted as input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from ..errors import InputError
from ..files import written_atomically
from .keys import Format, detect_format, from_official
from .layers import BLOCK_NORM_EPS
from .loading import CheckpointError, fit_state_dict, model_shapes, open_checkpoint
from .pvt_v2 import PyramidVisionTransformerV2
from .registry import build_model, list_models

Target = Literal["official", "timm", "hf", "safetensors"]
TARGETS: tuple[Target, ...] = ("official", "timm", "hf", "safetensors")
# File names each file format is written under: read_file opens a file by its extension, so a pickle named
# .safetensors (or the reverse) would be written fine and never read back.
TARGET_SUFFIXES: dict[Target, tuple[str, ...]] = {"official": (".pth", ".pt", ".bin"), "timm": (".pth", ".pt", ".bin"),
                                                  "safetensors": (".safetensors",)}
_HF_WEIGHTS = "model.safetensors"
_HF_CONFIG = "config.json"


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert_checkpoint` read and wrote."""

    model: str
    source_format: Format
    target: Target
    num_classes: int  # rows of the classification head; 0 for a backbone without one
    # Neck and head keys left out of a detector or segmenter checkpoint whose backbone was taken.
    dropped: tuple[str, ...] = ()

    @property
    def backbone_only(self) -> bool:
        return bool(self.dropped)


def convert_checkpoint(
    source: str | os.PathLike, destination: str | os.PathLike, to: Target, model: str | None = None
) -> Conversion:
    """Convert the checkpoint at ``source`` into format ``to`` at ``destination`` (a folder for ``hf``).

    The model is ``model``, or the one registered model whose keys and shapes the file matches. Every
    tensor is checked against that model first, so a file that does not fit it raises
    :class:`CheckpointError` and nothing is written. Tensors are written unchanged (same values and dtype).
    """
    check_destination(destination, to)
    contents = open_checkpoint(source)
    fmt = detect_checkpoint_format(contents.tensors, source)
    num_classes = head_classes(contents.tensors, fmt)
    name = model or identify_model(contents.tensors, fmt, source=f"checkpoint {source}")
    fitted = fit_state_dict(contents.tensors, model_shapes(name, num_classes), fmt=fmt,
                            source=f"checkpoint {source}", model_name=name)
    save_checkpoint(fitted.state_dict, destination, to, name)
    return Conversion(name, fmt, to, num_classes, contents.dropped)


def identify_model(state_dict: Mapping[str, torch.Tensor], fmt: Format | None = None, source: str = "the state dict") -> str:
    """The registered model whose keys and shapes ``state_dict`` matches exactly (head of any size or none)."""
    fmt = fmt or detect_checkpoint_format(state_dict, source)
    num_classes = head_classes(state_dict, fmt)
    matches = [name for name in list_models() if _fits(state_dict, fmt, name, num_classes)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CheckpointError(
            f"{source} ({fmt} format, {len(state_dict)} tensors) matches none of the models "
            f"{', '.join(list_models())}; name the model to see which keys or shapes differ"
        )
    raise CheckpointError(f"{source} matches several models ({', '.join(matches)}); name the one it is")


def head_classes(state_dict: Mapping[str, torch.Tensor], fmt: Format) -> int:
    """Number of classes of the checkpoint's classification head; 0 when it has none."""
    head = state_dict.get("classifier.weight" if fmt == "hf" else "head.weight")
    return 0 if head is None else head.shape[0]


def check_destination(destination: str | os.PathLike, to: Target) -> None:
    """Refuse, before anything is read, a destination that format ``to`` cannot be written to or read back from."""
    if to not in TARGETS:
        raise InputError(f"unknown target format {to!r}; expected one of {', '.join(TARGETS)}")
    destination = Path(destination)
    if to == "hf":
        if destination.exists() and not destination.is_dir():
            raise InputError(f"{destination} is a file; the hf format is a folder ({_HF_CONFIG} and {_HF_WEIGHTS})")
        return
    if destination.is_dir():
        raise InputError(f"{destination} is a folder; the {to} format is a single file")
    if destination.suffix.lower() not in TARGET_SUFFIXES[to]:
        raise InputError(f"{destination}: a checkpoint in the {to} format is read back by its extension, so its name "
                         f"must end with {' or '.join(TARGET_SUFFIXES[to])}")


def save_checkpoint(official: Mapping[str, torch.Tensor], destination: str | os.PathLike, to: Target, model: str) -> None:
    """Write an official-key state dict of ``model`` to ``destination`` in format ``to``, each file whole or
    not at all."""
    check_destination(destination, to)
    destination = Path(destination)
    if to == "hf":
        _save_hf(official, destination, model)
        return
    with written_atomically(destination) as temporary:
        if to == "safetensors":
            _save_safetensors(dict(official), temporary)
        else:
            torch.save(from_official(official, "timm") if to == "timm" else dict(official), temporary)


def hf_config(model: str, num_classes: int) -> dict[str, Any]:
    """The ``config.json`` of HF transformers' PvtV2 / Pvt models for our ``model``, read off the built model."""
    with torch.device("meta"):
        built = build_model(model, num_classes=num_classes)
    blocks = [built.blocks(i)[0] for i in range(len(built.depths))]
    embeds = [getattr(built, f"patch_embed{i + 1}").proj for i in range(len(built.depths))]
    config: dict[str, Any] = dict(
        num_channels=built.in_chans,
        num_encoder_blocks=len(built.depths),
        depths=list(built.depths),
        hidden_sizes=list(built.embed_dims),
        num_attention_heads=[block.attn.num_heads for block in blocks],
        mlp_ratios=[_number(block.mlp.fc1.out_features / dim) for block, dim in zip(blocks, built.embed_dims)],
        patch_sizes=[embed.kernel_size[0] for embed in embeds],
        strides=[embed.stride[0] for embed in embeds],
        qkv_bias=blocks[0].attn.q.bias is not None,
        hidden_act="gelu",
        # HF has one eps for every LayerNorm: the blocks' 1e-6. The official patch-embedding and
        # spatial-reduction norms use 1e-5; HF outputs differ from ours by ~1e-5 in the logits because of it.
        layer_norm_eps=BLOCK_NORM_EPS,
        **(_labels(num_classes) if num_classes else {}),
    )
    if isinstance(built, PyramidVisionTransformerV2):
        config.update(model_type="pvt_v2", sr_ratios=list(built.sr_ratios), linear_attention=built.linear,
                      architectures=["PvtV2ForImageClassification" if num_classes else "PvtV2Model"])
    else:
        # PVTv1's position embeddings are learned for one input size, which HF needs to size them.
        config.update(model_type="pvt", sequence_reduction_ratios=list(built.sr_ratios),
                      image_size=built.pos_grids[0] * embeds[0].stride[0],
                      architectures=["PvtForImageClassification" if num_classes else "PvtModel"])
    return config


def detect_checkpoint_format(state_dict: Mapping[str, torch.Tensor], source: object) -> Format:
    """The layout (official, timm, hf) of ``state_dict``; :class:`CheckpointError` naming ``source`` if none."""
    try:
        return detect_format(state_dict)
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from error


def _fits(state_dict: Mapping[str, torch.Tensor], fmt: Format, name: str, num_classes: int) -> bool:
    try:
        fit_state_dict(state_dict, model_shapes(name, num_classes), fmt=fmt, check_values=False)
    except CheckpointError:
        return False
    return True


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    # safetensors stores dense, unshared tensors; "format": "pt" is the metadata HF from_pretrained expects.
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def _save_hf(official: Mapping[str, torch.Tensor], folder: Path, model: str) -> None:
    num_classes = official["head.weight"].shape[0] if "head.weight" in official else 0
    with written_atomically(folder / _HF_WEIGHTS) as temporary:
        _save_safetensors(from_official(official, "hf"), temporary)
    with written_atomically(folder / _HF_CONFIG) as temporary:
        temporary.write_text(json.dumps(hf_config(model, num_classes), indent=2) + "\n", encoding="utf-8")


def _labels(num_classes: int) -> dict[str, dict]:
    """HF's ``id2label`` / ``label2id`` (HF takes the number of classes from them): ImageNet-1K's class
    names for a 1000-class head, in the sorted-synset order the official training used, else ``LABEL_i``."""
    if num_classes == 1000:
        from torchvision.models import ResNet50_Weights  # ships the ImageNet-1K names, in that order

        names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    else:
        names = [f"LABEL_{i}" for i in range(num_classes)]
    # ImageNet names are not unique ("crane" twice, ...): label2id keeps the first index of each name.
    label2id: dict[str, int] = {}
    for i, label in enumerate(names):
        label2id.setdefault(label, i)
    return dict(id2label={str(i): label for i, label in enumerate(names)}, label2id=label2id)


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
