"""The detectors, by name: each one's :class:`~pvtv2.detection.spec.DetectorSpec`, declared beside its code."""

from __future__ import annotations

from ..errors import InputError
from . import cascade, dense_heads, mask_rcnn, retinanet, sparse_rcnn
from .spec import DetectorSpec

# Table 3's two, then Table 4's four, in the paper's order.
DETECTORS: dict[str, DetectorSpec] = {spec.name: spec for spec in (
    retinanet.SPEC, mask_rcnn.SPEC, dense_heads.ATSS_SPEC, dense_heads.GFL_SPEC, cascade.SPEC, sparse_rcnn.SPEC,
)}
DETECTOR_NAMES = tuple(DETECTORS)


def detector_spec(name: str) -> DetectorSpec:
    """The spec of detector ``name``; an error naming the known ones otherwise."""
    spec = DETECTORS.get(name)
    if spec is None:
        raise InputError(f"unknown detector {name!r}; expected one of {', '.join(DETECTORS)}")
    return spec
