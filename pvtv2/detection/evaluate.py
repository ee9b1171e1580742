"""Scoring a trained detector: :func:`evaluate` gives the COCO figures (:mod:`pvtv2.detection.coco_metric`) of
a det-train checkpoint or an official release file on a COCO-format split."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from ..data import DatasetError
from ..errors import InputError
from .coco_metric import evaluate_model
from .data import CocoDetection, collate, ensure_shapes, eval_transform, split_paths
from .loading import load_detector

RELEASE_SPLIT = "val2017"  # what a release file is evaluated on unless told: COCO's held-out split


def evaluate(checkpoint: str | Path, data: str | None = None, *, split: str | None = None, batch_size: int = 2,
             workers: int = 2, device: str = "auto", amp: str = "none",
             config: str | Path | None = None) -> dict[str, float]:
    """COCO metrics of a det-train ``checkpoint`` on ``data/split`` (default: its config's data root and
    held-out split), or of a release file (``data``, the COCO root, needed; default split ``val2017``; its
    classes found in the data set by name). ``config``: the MMDetection config of a release file without one."""
    detector = load_detector(checkpoint, device, config)
    config = detector.config
    if config is None and data is None:
        raise InputError(f"{checkpoint} is a release file, which names no data set: give the COCO root with --root")
    root = data if data is not None else config.data.root
    if config is not None and config.data.dataset == "shapes" and root == config.data.root:
        ensure_shapes(root, config.data.shapes_train, config.data.shapes_val, config.data.shapes_size,
                      seed=config.run.seed)
    split = split if split is not None else (config.data.val_split if config is not None else RELEASE_SPLIT)
    paths = split_paths(root, split)
    with_masks = detector.spec.with_masks
    dataset = CocoDetection(paths.images, paths.annotations, eval_transform(), with_masks=with_masks)
    dataset.check_model_input(detector.model_input())
    category_ids = detector.category_ids
    if category_ids is None:  # a release file: its classes by name, as MMDetection's CocoMetric
        by_name = dict(zip(dataset.classes, dataset.category_ids))
        missing = [name for name in detector.class_names if name not in by_name]
        if missing:
            raise DatasetError(f"{paths.annotations} has no categories named {', '.join(map(repr, missing[:5]))} of "
                               f"{checkpoint}'s {len(detector.class_names)} classes")
        category_ids = [by_name[name] for name in detector.class_names]
    elif dataset.category_ids != category_ids:
        raise DatasetError(f"{paths.annotations} has categories {dataset.category_ids}, but the checkpoint was "
                           f"trained on {category_ids}")
    loader = DataLoader(dataset, batch_size, collate_fn=collate, num_workers=workers)
    return evaluate_model(detector.model, loader, dataset, detector.device, amp, with_masks, category_ids=category_ids)
