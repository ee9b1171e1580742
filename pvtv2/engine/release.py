"""The official PVT release files of the dense tasks: MMDetection 2.x and MMSegmentation 0.x checkpoints.

Such a file is a torch pickle ``{"state_dict": ..., "meta": {"CLASSES": (...), "config": "<text>", ...}}``
(``optimizer`` too, unless it was published with ``publish_model``). ``config`` is mmcv's ``pretty_text`` of
the resolved config: Python assignments of literals and ``dict(...)`` calls. It is read here without running
it (:func:`parse_config_text`), so a file cannot run code, as ``torch.load(weights_only=True)`` reads the rest.
"""

from __future__ import annotations

import ast
import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..models import build_model, list_models


class ReleaseFileError(InputError):
    """A release file that cannot be read or understood; the message names the file and what was expected."""


@dataclass(frozen=True)
class ReleaseFile:
    """A release checkpoint as read: its tensors (release layout), class names and config (parsed), if any."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    classes: tuple[str, ...] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # "mmdet_version" or "mmseg_version" and the like, when the file has them.
    versions: dict[str, str] = field(default_factory=dict)
    # A segmenter's class colours (meta["PALETTE"]: one (R, G, B) a class), if the file has them.
    palette: tuple[tuple[int, int, int], ...] | None = None


def is_release_layout(checkpoint: Mapping) -> bool:
    """Whether a loaded checkpoint is an MMDetection / MMSegmentation one: a ``state_dict`` whose keys start
    with ``backbone.`` beside heads of their names, and no ``pvtv2_train_checkpoint`` entry of ours."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or "pvtv2_train_checkpoint" in checkpoint:
        return False
    keys = [k for k in state if isinstance(k, str)]
    return any(k.startswith("backbone.patch_embed1.") for k in keys) and any(
        k.startswith(("neck.", "bbox_head.", "rpn_head.", "roi_head.", "decode_head.")) for k in keys)


def read_release(path: str | os.PathLike, checkpoint: Mapping | None = None) -> ReleaseFile:
    """The release file at ``path`` (or its already loaded ``checkpoint``)."""
    path = Path(path)
    if checkpoint is None:
        from ..models.loading import read_file  # reads any checkpoint with weights_only=True, errors named

        checkpoint = read_file(path)
    state = checkpoint.get("state_dict", checkpoint)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ReleaseFileError(f"{path} holds no tensors under 'state_dict'")
    meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), Mapping) else {}
    classes = meta.get("CLASSES")
    if classes is not None and not (isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)):
        raise ReleaseFileError(f"{path}: meta['CLASSES'] must be a list of class names, got {type(classes).__name__}")
    text = meta.get("config")
    config = parse_config_text(text, f"{path}'s meta['config']") if isinstance(text, str) else {}
    versions = {k: str(v) for k, v in meta.items() if k.endswith("_version") and isinstance(v, str)}
    palette = meta.get("PALETTE")
    if palette is not None:
        if not (isinstance(palette, (list, tuple)) and all(
                isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                for c in palette)):
            raise ReleaseFileError(f"{path}: meta['PALETTE'] must be one [R, G, B] of 0-255 integers a class")
        palette = tuple(tuple(c) for c in palette)
    return ReleaseFile(path, tensors, tuple(classes) if classes is not None else None, config, versions, palette)


def parse_config_text(text: str, source: str = "the config") -> dict[str, Any]:
    """The variables of an mmcv config text (``model = dict(type='RetinaNet', ...)``), evaluated without
    running it: literals, lists, tuples, dicts, ``dict(...)`` with keywords and names assigned before."""
    try:
        tree = ast.parse(text)
    except SyntaxError as error:
        raise ReleaseFileError(f"{source} is not a config text: {error.msg} at line {error.lineno}") from error
    variables: dict[str, Any] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(statement.targets[0], ast.Name):
            variables[statement.targets[0].id] = _literal(statement.value, variables, source)
        elif not isinstance(statement, (ast.Import, ast.ImportFrom, ast.Expr)):
            raise ReleaseFileError(f"{source}: line {statement.lineno} is not an assignment of a value")
    return variables


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """An MMDetection / MMSegmentation config file (Python), its ``_base_`` files merged in as mmcv does (a
    file's dicts update its bases' recursively; ``_delete_=True`` replaces instead), without running any."""
    path = Path(path)
    if not path.is_file():
        raise ReleaseFileError(f"config file {path} does not exist")
    variables = parse_config_text(path.read_text(), f"config file {path}")
    bases = variables.pop("_base_", [])
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _merge(merged, read_config_file(path.parent / base))
    return _merge(merged, variables)


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and not value.get("_delete_", False) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = {k: v for k, v in value.items() if k != "_delete_"} if isinstance(value, Mapping) else value
    return merged


def _literal(node: ast.AST, variables: Mapping[str, Any], source: str) -> Any:
    def value(n: ast.AST) -> Any:
        return _literal(n, variables, source)

    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [value(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        return {value(k): value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        built: dict[str, Any] = {}
        for keyword in node.keywords:  # dict(a=1, **other)
            if keyword.arg is None:
                built.update(value(keyword.value))
            else:
                built[keyword.arg] = value(keyword.value)
        return built
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" and not node.keywords
            and 1 <= len(node.args) <= 3):
        # gpu_ids = range(0, 8), as the official train.py leaves it in every release file's config
        bounds = [value(a) for a in node.args]
        if all(isinstance(b, int) for b in bounds):
            return range(*bounds)
    operations = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
                  ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b}
    if isinstance(node, ast.BinOp) and type(node.op) in operations:
        left, right = value(node.left), value(node.right)
        try:
            return operations[type(node.op)](left, right)
        except TypeError:
            pass
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = value(node.operand)
        if isinstance(operand, (int, float)):
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.Name) and node.id in variables:
        return variables[node.id]
    if (isinstance(node, ast.ListComp) and len(node.generators) == 1 and not node.generators[0].ifs
            and isinstance(node.generators[0].target, ast.Name) and isinstance(node.generators[0].iter, ast.Call)
            and isinstance(node.generators[0].iter.func, ast.Name) and node.generators[0].iter.func.id == "range"):
        # [dict(...) for _ in range(num_stages)], as the Sparse R-CNN configs write their stages
        loop = node.generators[0]
        bounds = [value(a) for a in loop.iter.args]
        return [_literal(node.elt, {**variables, loop.target.id: i}, source) for i in range(*bounds)]
    raise ReleaseFileError(f"{source}: line {getattr(node, 'lineno', '?')} holds an expression that is not a plain "
                           f"value ({ast.dump(node)[:60]}...)")


def write_release(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], classes: tuple[str, ...],
                  config_text: str, versions: Mapping[str, str],
                  palette: tuple[tuple[int, int, int], ...] | None = None) -> None:
    """A release-layout file: ``state_dict`` and ``meta`` (``CLASSES``, ``config``, ``versions``, and a
    segmenter's ``PALETTE``), atomically."""
    from .training_state import atomic_save

    meta = {"CLASSES": tuple(classes), "config": config_text, **versions}
    if palette is not None:
        meta["PALETTE"] = [list(colour) for colour in palette]
    atomic_save({"meta": meta, "state_dict": dict(state_dict)}, Path(path))


def config_value(config: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """``config[k1][k2]...``, or ``default`` where a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(config, Mapping) or key not in config:
            return default
        config = config[key]
    return config



# -- what a release file holds, shared by the dense tasks -----------------------------------------------------
def release_backbone(state: Mapping[str, torch.Tensor], named: str | None, source: str, hint: str) -> str:
    """The model whose dense backbone (``features_only=True``: the official detection and segmentation one)
    ``state`` (keys without ``backbone.``) is: the one the config names (``named``), checked, or the only one
    that fits; ``hint`` ends the error where none or several fit."""
    if named is not None and named in list_models() and _fits(state, named):
        return named  # the common case, checked without building every other model's shapes
    fitting = [name for name in list_models() if _fits(state, name)]
    if named is not None:
        raise ReleaseFileError(f"{source}: its backbone weights are not those of {named}, which its config names"
                               + (f"; they fit {', '.join(fitting)}" if fitting else ""))
    if len(fitting) != 1:
        raise ReleaseFileError(f"{source}: its backbone weights fit {' and '.join(fitting) or 'none'} of the models; "
                               f"{hint}")
    return fitting[0]


def _fits(state: Mapping[str, torch.Tensor], name: str) -> bool:
    shapes = _dense_backbone_shapes(name)
    return shapes.keys() == state.keys() and all(tuple(state[k].shape) == shape for k, shape in shapes.items())


@functools.cache
def _dense_backbone_shapes(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_model(name, num_classes=0, features_only=True)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def pipeline_scale(config: Mapping[str, Any], default: tuple[int, int]) -> tuple[int, int]:
    """(longer side, shorter side) of the ``img_scale`` of a release config's test pipeline, or ``default``."""
    for step in config_value(config, "data", "test", "pipeline", default=[]) or []:
        scale = step.get("img_scale") if isinstance(step, Mapping) else None
        if isinstance(scale, (list, tuple)) and len(scale) == 2 and all(isinstance(s, int) for s in scale):
            return max(scale), min(scale)
        if isinstance(scale, list) and len(scale) == 1 and isinstance(scale[0], (list, tuple)):
            return max(scale[0]), min(scale[0])
    return default


@dataclass(frozen=True)
class LayoutConverter:
    """How ``pvt convert`` turns a task's whole models between a framework's release layout and our checkpoints."""

    framework: str  # whose release files ("MMDetection")
    command: str  # the command whose checkpoints ours are ("det-train")
    uses: str  # the commands that read those checkpoints
    # A release file (and its path) -> our checkpoint of it and what it holds, in words.
    to_checkpoint: Callable[[ReleaseFile, str], tuple[dict[str, Any], str]]
    # Our checkpoint at the first path written in the release layout at the second -> what it holds, in words.
    to_release: Callable[[str | os.PathLike, str | os.PathLike], str]

    def convert(self, source: str | os.PathLike, destination: str | os.PathLike, to: str) -> str:
        """A release file to one of our checkpoints (``to="pvtv2"``), or one of ours to the release layout
        (any other ``to``: a file the framework loads with strict keys); returns what was written, in a sentence."""
        from ..models.loading import read_file
        from .training_state import atomic_save

        loaded = read_file(source)
        released = is_release_layout(loaded)
        if to == "pvtv2":
            if not released:
                raise ReleaseFileError(f"{source} is not an {self.framework} release file; --to pvtv2 converts those")
            checkpoint, holds = self.to_checkpoint(read_release(source, loaded), str(source))
            atomic_save(checkpoint, destination)
            return f"{destination}: {holds}, as a {self.command} checkpoint (for {self.uses})"
        if released:
            raise ReleaseFileError(f"{source} is in the release layout already; --to {to} converts {self.command} "
                                   f"checkpoints")
        holds = self.to_release(source, destination)
        return (f"{destination}: {holds}, in {self.framework}'s layout (load it with strict keys into the official "
                f"config's model)")


# -- the released files ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleasedModel:
    """One released detector or segmenter (engine/released_dense.json): its name is its official config's."""

    name: str
    task: str  # "detection" or "segmentation"
    model: str  # the detector's name (pvtv2.detection.registry), or "semantic_fpn"
    backbone: str
    page: str | None  # where the official README links the file (Google Drive), None where it links a wrong one
    box_AP: float | None = None
    mask_AP: float | None = None
    mIoU: float | None = None  # the official code's
    mIoU_paper: float | None = None
    note: str | None = None

    @property
    def published(self) -> str:
        """The published figures, as the README prints them."""
        if self.task == "segmentation":
            return f"mIoU {self.mIoU} (paper {self.mIoU_paper})"
        return f"box AP {self.box_AP}" + (f", mask AP {self.mask_AP}" if self.mask_AP is not None else "")


@functools.cache
def released_models() -> dict[str, ReleasedModel]:
    """Every released detector and segmenter by name, in the official READMEs' order."""
    rows = json.loads((Path(__file__).with_name("released_dense.json")).read_text())["files"]
    return {row["name"]: ReleasedModel(**row) for row in rows}


def released_cache_path(name: str) -> Path:
    """Where ``pvt weights import NAME FILE`` keeps a released file (beside the cached ImageNet weights)."""
    from ..models.download import cache_dir

    return cache_dir() / "released" / f"{name}.pth"


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """``checkpoint`` as a path: a file as it is, or the cached file of a released model's name; a clear error
    for a released name that was not imported yet."""
    path = Path(checkpoint)
    if path.exists() or str(checkpoint) not in released_models():
        return path
    cached = released_cache_path(str(checkpoint))
    if cached.is_file():
        return cached
    release = released_models()[str(checkpoint)]
    where = f"download it from {release.page}" if release.page else "download it (see the official README)"
    raise ReleaseFileError(f"{checkpoint} is a released {release.task} model that is not in the cache yet: {where} "
                           f"and run `pvt weights import {checkpoint} FILE`")
