"""Image classification with PVT models: the paper's ImageNet recipe (section 5.1), evaluation, inference.

The names below are imported on first use, so that building the ``pvt`` parser (which reads this
package's config schema) does not import timm and the training stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClassificationConfig": "config",
    "build_dataset": "datasets", "ImageFolder": "datasets", "Digits": "digits",
    "EvalResult": "evaluate", "evaluate": "evaluate", "evaluate_checkpoint": "evaluate",
    "LoadedClassifier": "inference", "load_classifier": "inference", "predict": "predict",
    "paper_tables": "complexity",
    "train": "train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
