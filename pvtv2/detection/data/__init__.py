"""COCO-format detection data: the annotation reader (:mod:`.coco_format`), the data set and its transforms
(:mod:`.dataset`) and the official multi-scale augmentation (:mod:`.augment`)."""

from .dataset import (
                      CocoDetection,
                      SplitPaths,
                      build_datasets,
                      collate,
                      ensure_shapes,
                      eval_transform,
                      model_input,
                      split_paths,
                      train_transform,
)

__all__ = ["CocoDetection", "SplitPaths", "build_datasets", "collate", "ensure_shapes", "eval_transform",
           "model_input", "split_paths", "train_transform"]
