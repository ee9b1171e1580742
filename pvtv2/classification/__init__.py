"""Image classification with PVT models: the paper's ImageNet recipe (section 5.1), evaluation, inference.

The library verbs are :func:`train` (a config), :func:`evaluate` (a checkpoint on a data set -> top-1, top-5,
loss) and :func:`predict` (a checkpoint on images -> their top-k classes).
"""

from .complexity import paper_tables
from .config import ClassificationConfig
from .datasets import ImageFolder, build_dataset
from .digits import Digits
from .evaluate import CheckpointEvaluation, EvalResult, evaluate, evaluate_model
from .inference import LoadedClassifier, load_classifier
from .predict import Prediction, predict
from .train import train

__all__ = [
    "CheckpointEvaluation", "ClassificationConfig", "Digits", "EvalResult", "ImageFolder", "LoadedClassifier",
    "Prediction", "build_dataset", "evaluate", "evaluate_model", "load_classifier", "paper_tables", "predict",
    "train",
]
