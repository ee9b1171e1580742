"""Semantic FPN release files (MMSegmentation 0.13 layout) against MMSegmentation 1.2.2 itself (tests/oracle.py):
the official PVT-Tiny config's model with random weights, written as a release file, gives MMSegmentation's label
map through ``pvt seg-predict --labels`` on a photo the official test pipeline keeps and on one it resizes and
aligns; the file goes through our layout and back unchanged (``pvt convert``) and loads strictly into
MMSegmentation's model; the test-time AlignResize is mmcv's to the pixel; layouts that are not Semantic FPN's are
named.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pvtv2.cli.main import main
from pvtv2.engine.release import ReleaseFileError, read_release
from pvtv2.models.loading import CheckpointError
from pvtv2.segmentation import build_segmenter
from pvtv2.segmentation.config import SegmentationConfig
from pvtv2.segmentation.predict import load_segmenter
from pvtv2.segmentation.release import from_release, to_release, write_release_file
from pvtv2.segmentation.transforms import EvalTransform
from tests import oracle

pytest.importorskip("mmseg", reason="the oracle needs MMSegmentation 1.2.2 (the test extra)")

BACKBONE = "pvt_tiny"
AGREEMENT = 0.995  # of the pixels, the Done-when's


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """The models are large for the CPU: one torch thread (the machine is shared)."""


@pytest.fixture(scope="module")
def released_segmenter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[torch.nn.Module, Path]]:
    """MMSegmentation's Semantic FPN of the official PVT-Tiny config (random weights, logits spread over the
    classes) and its release file, named as the released one."""
    model = oracle.build_mmseg_semantic_fpn(BACKBONE)
    folder = tmp_path_factory.mktemp("semantic_fpn")
    yield model, oracle.release_segmentation_checkpoint(model, BACKBONE, folder / "fpn_pvt_t_ade20k_40k.pth")


@pytest.mark.slow
@pytest.mark.parametrize("size", [(512, 768), None], ids=["kept-512x768", "resized-aligned-427x640"])
def test_seg_predict_gives_mmsegmentations_label_map(released_segmenter: tuple[torch.nn.Module, Path], size: tuple[int, int] | None,
                                                     tmp_path: Path) -> None:
    """>= 99.5% of the pixels get MMSegmentation's class, on a label map of many classes. 512x768 passes
    AlignResize unchanged; 427x640 is rescaled to 512x767, then aligned to 512x768."""
    model, path = released_segmenter
    image = oracle.test_photo(size)
    theirs = oracle.mmseg_segment(model, image)
    photo, labels = tmp_path / "photo.png", tmp_path / "labels.png"
    Image.fromarray(image).save(photo)
    assert main(["seg-predict", str(photo), "--checkpoint", str(path), "--out", str(tmp_path / "overlay.png"),
                 "--labels", str(labels), "--device", "cpu"]) == 0
    ours = np.asarray(Image.open(labels)).astype(np.int64)
    assert ours.shape == theirs.shape == image.shape[:2]
    assert len(np.unique(theirs)) >= 10
    assert (ours == theirs).mean() >= AGREEMENT


@pytest.mark.slow
def test_release_file_round_trips_and_loads_strictly_into_mmsegmentation(released_segmenter: tuple[torch.nn.Module, Path]) -> None:
    """Release file -> our Semantic FPN's state dict -> release layout: the same keys and tensors; those
    outside the backbone load with strict keys into MMSegmentation's model; the backbone, classes, palette and
    test settings are the file's."""
    model, path = released_segmenter
    release = from_release(read_release(path))
    classes, palette = oracle.ade20k_classes_and_palette()
    assert release.backbone == BACKBONE and release.class_names == tuple(c.strip() for c in classes)
    assert release.palette == tuple(tuple(c) for c in palette)
    config = release.config
    assert (config.augment.scale, config.test.test_mode, config.model.norm) == ((2048, 512), "whole", "batch")
    written = to_release(release.state_dict, config.model.norm)
    original = torch.load(path, weights_only=True)["state_dict"]
    assert written.keys() == original.keys()
    assert all(torch.equal(written[k], original[k]) for k in original)
    mmseg_state = model.state_dict()
    rest = {k: v for k, v in written.items() if not k.startswith("backbone.")}
    model.load_state_dict({**{k: v for k, v in mmseg_state.items() if k.startswith("backbone.")}, **rest}, strict=True)


@pytest.mark.slow
def test_convert_to_a_seg_train_checkpoint_and_back(released_segmenter: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    """pvt convert --to pvtv2 gives a seg-train checkpoint with the release's classes, palette and test
    settings; --to mmseg writes it back as the same release weights, classes and palette."""
    _, path = released_segmenter
    ours, back = tmp_path / "ours.pth", tmp_path / "back.pth"
    assert main(["convert", str(path), str(ours), "--to", "pvtv2"]) == 0
    loaded = load_segmenter(ours)
    assert loaded.backbone == BACKBONE and loaded.config.augment.scale == (2048, 512)
    assert main(["convert", str(ours), str(back), "--to", "mmseg"]) == 0
    original, written = torch.load(path, weights_only=True), torch.load(back, weights_only=True)
    assert written["state_dict"].keys() == original["state_dict"].keys()
    assert all(torch.equal(written["state_dict"][k], v) for k, v in original["state_dict"].items())
    assert [c.strip() for c in original["meta"]["CLASSES"]] == list(written["meta"]["CLASSES"])
    assert original["meta"]["PALETTE"] == written["meta"]["PALETTE"]
    np.testing.assert_array_equal(loaded.colours, np.array(original["meta"]["PALETTE"], dtype=np.uint8))


@pytest.mark.parametrize("size", [(427, 640), (300, 455), (1000, 333), (96, 96)])
def test_align_resize_is_mmcvs(size: tuple[int, int]) -> None:
    """The test image is mmcv's imrescale to fit 2048x512, then imresize of each side to a multiple of 32 (the
    official AlignResize), pixel for pixel; at the shapes config's scale its 96x96 scenes pass unchanged (so
    the shapes check's figures hold)."""
    import mmcv

    image = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    scale = (384, 96) if size == (96, 96) else (2048, 512)
    ours = EvalTransform(scale).resize(torch.from_numpy(image).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    rescaled = mmcv.imrescale(image, scale, interpolation="bilinear", backend="cv2")
    aligned = [int(np.ceil(s / 32)) * 32 for s in rescaled.shape[:2]]
    theirs = mmcv.imresize(rescaled, (aligned[1], aligned[0]), interpolation="bilinear", backend="cv2")
    np.testing.assert_array_equal(ours, theirs)
    if size == (96, 96):
        np.testing.assert_array_equal(ours, image)


def _tiny(norm: str = "batch") -> tuple[torch.nn.Module, SegmentationConfig]:
    config = SegmentationConfig.from_dict(dict(
        model=dict(backbone="pvt_v2_b0", norm=norm, neck_channels=32, head_channels=32),
        data=dict(dataset="folder", root="data/mine", num_classes=3)))
    model = build_segmenter(backbone="pvt_v2_b0", num_classes=3, norm=norm, neck_channels=32, head_channels=32).eval()
    with torch.no_grad():  # norm statistics that show a misplaced weight
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    return model, config


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_our_segmenter_as_a_release_file_predicts_the_same(norm: str, tmp_path: Path) -> None:
    """write_release_file of our Semantic FPN (BatchNorm: .bn, GroupNorm: .gn) is read back as the same model."""
    model, config = _tiny(norm)
    path = tmp_path / "release.pth"
    write_release_file(path, model.state_dict(), config, ("sky", "sea", "sand"), ((1, 2, 3), (4, 5, 6), (7, 8, 9)))
    keys = torch.load(path, weights_only=True)["state_dict"]
    assert f"decode_head.scale_heads.3.4.{'bn' if norm == 'batch' else 'gn'}.weight" in keys
    loaded = load_segmenter(path)
    assert (loaded.class_names, loaded.config.model.norm, loaded.palette.tolist()) == (
        ["sky", "sea", "sand"], norm, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(image), model(image))


def test_layouts_that_are_not_semantic_fpns_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A detector's release file, a head key of another decode head and another decode head's config each give
    one sentence naming what was found and what was expected."""
    model, config = _tiny()
    path = tmp_path / "release.pth"
    write_release_file(path, model.state_dict(), config, ("sky", "sea", "sand"))
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["state_dict"]

    detector = {k.replace("decode_head.conv_seg", "bbox_head.retina_cls"): v for k, v in state.items()
                if not k.startswith("decode_head.scale_heads")}
    torch.save({"meta": checkpoint["meta"], "state_dict": detector}, tmp_path / "detector.pth")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), "gray").save(photo)
    assert main(["seg-predict", str(photo), "--checkpoint", str(tmp_path / "detector.pth"), "--out",
                 str(tmp_path / "overlay.png")]) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "nor an MMSegmentation release file" in error

    torch.save({"meta": checkpoint["meta"], "state_dict": {**state, "decode_head.bottleneck.conv.weight": torch.zeros(1)}},
               tmp_path / "uper.pth")
    with pytest.raises(ReleaseFileError, match=r"decode_head\.bottleneck\.conv\.weight is not a weight of "
                                               r"MMSegmentation's Semantic FPN; expected neck\.lateral_convs"):
        load_segmenter(tmp_path / "uper.pth")

    meta = dict(checkpoint["meta"], config=checkpoint["meta"]["config"].replace("'FPNHead'", "'UPerHead'"))
    torch.save({"meta": meta, "state_dict": state}, tmp_path / "uper_config.pth")
    with pytest.raises(ReleaseFileError, match="decode_head.type is 'UPerHead'; this package runs Semantic FPN"):
        load_segmenter(tmp_path / "uper_config.pth")
    with pytest.raises(CheckpointError):
        load_segmenter(tmp_path / "missing.pth")
