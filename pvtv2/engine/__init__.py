"""Training and evaluating classifiers: config, the training sequence, checkpoints, evaluation, inference.

The names below are imported on first use, so that importing the package (as every ``pvt`` subcommand
does through ``pvtv2.cli``) does not import timm and the training stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfigError": "config", "TrainConfig": "config", "load_config": "config",
    "EvalResult": "evaluate", "evaluate": "evaluate",
    "LoadedClassifier": "inference", "load_classifier": "inference",
    "train": "train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
