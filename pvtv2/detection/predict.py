"""Using a trained detector: load a det-train checkpoint or an official release file (MMDetection 2.x),
detect objects in an image and draw them (boxes, class names, scores and masks, as the paper's Fig. 3), or
score the detector on a COCO-format split."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms.v2.functional import to_pil_image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..data import DatasetError, read_image_tensor
from ..data.images import ModelInput, save_image
from ..engine.distributed import resolve_device
from ..engine.release import is_release_layout, read_config_file, read_release, resolve_checkpoint
from ..engine.training_state import FORMAT_KEY, training_checkpoint
from ..errors import InputError
from ..models import min_input_size
from ..models.loading import CheckpointError, check_weights, read_file
from .config import DetectionConfig
from .data import CocoDetection, collate, ensure_shapes, eval_transform, split_paths
from .evaluate import evaluate, mask_rles
from .model import build_detector, build_from_config
from .registry import detector_spec
from .release import from_release
from .spec import DetectorSpec
from .transform import MASK_THRESHOLD

# Distinct colours for classes, cycled (tab10).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
RELEASE_SPLIT = "val2017"  # what a release file is evaluated on unless told: COCO's held-out split


@dataclass
class LoadedDetector:
    """A detector in evaluation mode, with its class names and where it came from."""

    task: ClassVar[str] = "detection"
    model: nn.Module
    spec: DetectorSpec
    backbone: str
    class_names: list[str]
    # The category id of each class in the data set it was trained on; None for a release file, whose classes
    # are found in a data set by name (as MMDetection's CocoMetric does).
    category_ids: list[int] | None
    # The det-train config it was trained with; None for a release file.
    config: DetectionConfig | None
    device: torch.device

    @property
    def title(self) -> str:
        return f"{self.spec.title} {self.backbone}"

    def model_input(self) -> ModelInput:
        """How the detector resizes a picture at test (mmcv's keep-ratio rescale, rounded to the nearest pixel)
        and the smallest side its backbone takes: to refuse, naming the file, a picture it cannot take."""
        transform = self.model.transform
        return ModelInput(smallest=min_input_size(self.backbone), shorter=transform.min_size[-1],
                          longest=transform.max_size, rounding="nearest", option="the detector's test scale")


def load_detector(path: str | Path, device: str = "auto", config: str | Path | None = None) -> LoadedDetector:
    """The detector of a det-train checkpoint or of an official release file, in evaluation mode on
    ``device``; ``config``: an MMDetection config file (``_base_`` files beside it) for a release file, in
    place of the one its meta holds (or lacks)."""
    path = resolve_checkpoint(path)  # a released model's name: its cached file
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give a checkpoint file (last.pth, best.pth or a release .pth)")
    loaded = read_file(path)  # a clear error for a missing, damaged or foreign file
    target = resolve_device(device)
    if FORMAT_KEY not in loaded and is_release_layout(loaded):
        return _load_release(path, loaded, config, target)
    if FORMAT_KEY not in loaded:
        raise CheckpointError(
            f"{path} is neither a det-train checkpoint (no {FORMAT_KEY!r} entry) nor an official release file (an "
            f"MMDetection checkpoint whose state_dict has backbone.patch_embed1.* beside neck. and head keys)")
    if config is not None:
        raise CheckpointError(f"{path} is a det-train checkpoint, which holds its config; leave out --config")
    state = training_checkpoint(loaded, path, "detection")
    config = DetectionConfig.from_dict(state["config"], f"the config stored in {path}")
    class_names = list(state["class_names"])
    # build_options: the test settings of a release file converted by pvt convert --to pvtv2
    model = build_from_config(config.model, config.data, len(class_names), pretrained=False,
                              **state.get("build_options", {}))
    _load_weights(model, state["model"], path)
    return LoadedDetector(model.eval().to(target), detector_spec(config.model.detector), config.model.backbone,
                          class_names, list(state["category_ids"]), config, target)


def _load_release(path: Path, loaded: dict[str, Any], config: str | Path | None, device: torch.device) -> LoadedDetector:
    release = read_release(path, loaded)
    if config is not None:
        release = dataclasses.replace(release, config=read_config_file(config))
    release = from_release(release)
    model = build_detector(release.spec.name, release.backbone, num_classes=len(release.class_names),
                           min_size=release.min_size, max_size=release.max_size, **release.test_options)
    _load_weights(model, release.state_dict, path)
    return LoadedDetector(model.eval().to(device), release.spec, release.backbone, list(release.class_names), None,
                          None, device)


def _load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    check_weights(state_dict, model.state_dict(), f"checkpoint {path}")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CheckpointError(f"the weights of {path} do not fit the detector they describe: {error}") from error


@torch.no_grad()
def detect(detector: LoadedDetector, image: torch.Tensor, score_threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Detections of a uint8 (3, H, W) image with score >= ``score_threshold``, in its pixels."""
    pixels = eval_transform()(image).to(detector.device)
    output = detector.model([pixels])[0]
    keep = output["scores"] >= score_threshold
    return {k: v[keep].cpu() for k, v in output.items()}


def draw(image: torch.Tensor, output: dict[str, torch.Tensor], class_names: list[str]) -> torch.Tensor:
    """``image`` (uint8, 3 x H x W) with the masks blended in and the boxes outlined and labelled."""
    colours = [PALETTE[(int(label) - 1) % len(PALETTE)] for label in output["labels"]]
    if "masks" in output and len(output["masks"]):
        image = draw_segmentation_masks(image, output["masks"][:, 0] >= MASK_THRESHOLD, alpha=0.45, colors=colours)
    captions = [f"{class_names[int(label) - 1]} {score:.2f}" for label, score in zip(output["labels"], output["scores"])]
    return draw_bounding_boxes(image, output["boxes"], captions, colors=colours, width=2)


def predict_image(detector: LoadedDetector, image_path: str | Path, out: str | Path,
                  score_threshold: float = 0.5) -> list[dict[str, Any]]:
    """Detect objects in ``image_path``, write the drawing to ``out`` (its format from the extension) and
    return the detections as ``{label, score, box}`` dicts (box as x0, y0, x1, y1 pixels; ``mask`` as COCO
    RLE for the mask detectors)."""
    image_path, out = Path(image_path), Path(out)
    image = read_image_tensor(image_path)
    detector.model_input().check(image_path, (image.shape[-1], image.shape[-2]))  # before the model fails on it
    output = detect(detector, image, score_threshold)
    drawing = draw(image, output, detector.class_names)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(to_pil_image(drawing), out)  # the format follows the extension (PNG, JPEG...)
    detections = [dict(label=detector.class_names[int(label) - 1], score=float(score), box=[float(v) for v in box])
                  for label, score, box in zip(output["labels"], output["scores"], output["boxes"])]
    if "masks" in output:
        for detection, rle in zip(detections, mask_rles(output["masks"])):
            detection["mask"] = rle
    return detections


def evaluate_checkpoint(path: str | Path, *, root: str | None = None, split: str | None = None, batch_size: int = 2,
                        num_workers: int = 2, device: str = "auto", amp: str = "none",
                        config: str | Path | None = None) -> dict[str, float]:
    """COCO metrics of a det-train checkpoint on ``root/split`` (default: its config's held-out split), or of
    a release file (``root`` needed; default split ``val2017``; its classes found in the data set by name)."""
    detector = load_detector(path, device, config)
    config = detector.config
    if config is None and root is None:
        raise InputError(f"{path} is a release file, which names no data set: give the COCO root with --root")
    root = root if root is not None else config.data.root
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
                               f"{path}'s {len(detector.class_names)} classes")
        category_ids = [by_name[name] for name in detector.class_names]
    elif dataset.category_ids != category_ids:
        raise DatasetError(f"{paths.annotations} has categories {dataset.category_ids}, but the checkpoint was "
                           f"trained on {category_ids}")
    loader = DataLoader(dataset, batch_size, collate_fn=collate, num_workers=num_workers)
    return evaluate(detector.model, loader, dataset, detector.device, amp, with_masks, category_ids=category_ids)
