"""Importing an official detector or segmenter release file into the weights cache, checked first.

It stands above the tasks (it asks each task's loader what a file holds), so it lives beside them rather than
in ``engine/``, which knows no task.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .engine.release import released_cache_path, released_models
from .files import written_atomically
from .models.loading import CheckpointError


def import_released(name: str, file: str | Path) -> Path:
    """Check that ``file`` is the released model ``name`` (its detector or segmenter, its backbone, every
    weight fitting) and copy it into the cache, whole or not at all; returns the cached path."""
    release = released_models()[name]
    if release.task == "detection":
        from .detection.loading import load_detector

        loaded = load_detector(file, "cpu")
        found = (loaded.spec.name, loaded.backbone)
    else:
        from .segmentation.predict import load_segmenter

        found = ("semantic_fpn", load_segmenter(file).backbone)
    if found != (release.model, release.backbone):
        raise CheckpointError(f"{file} holds a {found[0]} with {found[1]}, not {name}'s {release.model} with "
                              f"{release.backbone}")
    target = released_cache_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(target) as temporary:
        shutil.copyfile(file, temporary)
    return target
