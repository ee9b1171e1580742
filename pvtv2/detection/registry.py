"""The detectors, by name: each one's :class:`~pvtv2.detection.spec.DetectorSpec`, declared beside its code."""

from __future__ import annotations

from ..errors import InputError
from .one_stage import atss, gfl, retinanet
from .query import sparse_rcnn
from .spec import DetectorSpec
from .two_stage import cascade, mask_rcnn

# Table 3's detectors, then Table 4's, in the paper's order.
DETECTORS: dict[str, DetectorSpec] = {spec.name: spec for spec in (
    retinanet.SPEC, mask_rcnn.SPEC, atss.SPEC, gfl.SPEC, cascade.SPEC, sparse_rcnn.SPEC,
)}
DETECTOR_NAMES = tuple(DETECTORS)


def detector_spec(name: str) -> DetectorSpec:
    """The spec of detector ``name``; an error naming the known ones otherwise."""
    spec = DETECTORS.get(name)
    if spec is None:
        raise InputError(f"unknown detector {name!r}; expected one of {', '.join(DETECTORS)}")
    return spec
