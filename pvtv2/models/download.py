"""The official release of pretrained weights: which files exist, where they are cached, fetching them.

``create_model(name, pretrained="official")`` calls :func:`fetch`. A file enters the cache only complete and
checked: it is downloaded to a temporary file beside its place in the cache, checked (sha256 where the
table has one, else a strict key-and-shape match against the model), and then renamed into place, so an
interrupted or damaged download never leaves a file that a later run would trust. A cached file is used
as it is, without any network request.

Environment:

``PVT_HOME``            the cache folder (default: torch.hub's, ``$TORCH_HOME/hub/checkpoints`` or
                        ``~/.cache/torch/hub/checkpoints``)
``PVT_WEIGHTS_MIRROR``  a base URL or a local folder that replaces the release address: the weights of
                        NAME are read from ``<mirror>/NAME.pth``
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from ..errors import EnvironmentProblem, InputError
from ..files import written_atomically
from . import reference
from .loading import CheckpointError, fit_state_dict, model_shapes, open_checkpoint
from .registry import list_models

logger = logging.getLogger("pvtv2")

RELEASE_URL = "https://github.com/whai362/PVT/releases/download/v2"
HOME_ENV = "PVT_HOME"
MIRROR_ENV = "PVT_WEIGHTS_MIRROR"
_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60


@dataclass(frozen=True)
class ReleaseFile:
    """One file of the official release: an ImageNet-1K classifier in the official layout."""

    model: str
    top1: float  # published ImageNet-1K top-1 (%) at 224x224, from pvtv2/models/reference.json
    # The release publishes no hashes and we cannot compute them offline; without one, a downloaded
    # file must instead pass a strict key-and-shape match against the model before it is cached.
    sha256: str | None = None

    @property
    def file_name(self) -> str:
        return f"{self.model}.pth"

    @property
    def url(self) -> str:
        return f"{RELEASE_URL}/{self.file_name}"

    @property
    def approx_size_bytes(self) -> int:
        """Float32 parameters x 4 bytes: the file is this plus a few kB of pickle (not a measured size)."""
        return sum(4 * tensor.numel() for tensor in model_shapes(self.model).values())


# The release (github.com/whai362/PVT, tag v2) holds every ImageNet-1K model of the two papers.
_RELEASED = (
    "pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b2_li", "pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5",
    "pvt_tiny", "pvt_small", "pvt_medium", "pvt_large",
)
_TOP1 = {name: row["top1"] for name, row in reference.published(reference.IMAGENET).items()}
RELEASES: dict[str, ReleaseFile] = {name: ReleaseFile(name, top1=_TOP1[name]) for name in _RELEASED}


class WeightsUnavailableError(EnvironmentProblem):
    """The weights could not be fetched (offline, unreachable, interrupted, wrong hash); nothing was cached."""


def release_file(name: str) -> ReleaseFile:
    """The release entry of model ``name``."""
    if name not in RELEASES:
        if name in list_models():  # a model of the zoo that the release lacks (the -Li twins but B2-Li)
            raise InputError(
                f"no official weights were released for {name}, so pretrained='official' cannot load any: train it "
                f"(pvt train) or pass pretrained= a checkpoint file; released: {', '.join(RELEASES)}"
            )
        raise InputError(f"no released weights for {name!r}; released: {', '.join(RELEASES)}")
    return RELEASES[name]


def cache_dir() -> Path:
    """``$PVT_HOME``, else the folder torch.hub caches checkpoints in (``$TORCH_HOME/hub/checkpoints``, ...)."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser() if home else Path(torch.hub.get_dir()) / "checkpoints"


def cached_path(name: str) -> Path:
    """Where the weights of ``name`` are (or will be) cached."""
    return cache_dir() / release_file(name).file_name


def is_cached(name: str) -> bool:
    return cached_path(name).is_file()


def source_of(name: str) -> str:
    """The URL (or, with a folder as mirror, the file) that :func:`fetch` reads the weights of ``name`` from."""
    release = release_file(name)
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return release.url
    if _is_url(mirror):
        return f"{mirror.rstrip('/')}/{release.file_name}"
    return str(Path(mirror).expanduser() / release.file_name)


def fetch(name: str, *, progress: bool = True) -> Path:
    """The cached weights file of ``name``, downloaded and checked first if it is not cached yet.

    Raises :class:`WeightsUnavailableError` when the source cannot be read (its message says where to put
    the file by hand), and :class:`CheckpointError` when what was read is not the model's weights.
    """
    destination = cached_path(name)
    if destination.is_file():
        return destination
    source = source_of(name)
    logger.info("downloading the weights of %s from %s to %s", name, source, destination)
    with written_atomically(destination) as temporary:  # cached only once complete and checked
        try:
            stream, total = _open(source)
        except (OSError, http.client.HTTPException) as error:
            raise WeightsUnavailableError(_unavailable(name, source, _reason(error))) from error
        with stream, temporary.open("wb") as partial:
            digest = _copy(stream, partial, total, name, source, progress)
        _check_download(name, source, temporary, digest)
    return destination


def import_weights(name: str, file: str | os.PathLike) -> Path:
    """Check ``file`` (official, timm or HF layout; a ``.pth``, ``.safetensors`` or HF folder) against
    model ``name`` and store it in the cache as ``NAME.pth`` in the official layout; returns that path.

    For machines that cannot download: the file is fetched elsewhere and imported. Nothing is cached when
    the file does not hold the complete ImageNet-1K model ``name``.
    """
    destination = cached_path(name)
    state = check_release_weights(name, open_checkpoint(file).tensors, f"file {file}")
    with written_atomically(destination) as temporary:
        torch.save(state, temporary)
    logger.info("imported %s as the weights of %s: %s", file, name, destination)
    return destination


def check_release_weights(name: str, state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``state_dict`` in official keys, checked to be the whole ImageNet-1K model ``name``, head included."""
    fitted = fit_state_dict(state_dict, model_shapes(name), source=source, model_name=name)
    if fitted.head_note:
        # A backbone or a model fine-tuned to other classes is not the release file the cache stands for.
        raise CheckpointError(f"{source} is not the ImageNet-1K classifier {name}: {fitted.head_note}")
    return fitted.state_dict


# -- downloading -----------------------------------------------------------------------------------------
def _is_url(location: str) -> bool:
    return "://" in location


def _open(source: str) -> tuple[BinaryIO, int | None]:
    """A readable stream of ``source`` (URL or local file) and its size in bytes, when known."""
    if not _is_url(source):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"the mirror folder {path.parent} has no file {path.name}")
        return path.open("rb"), path.stat().st_size
    request = urllib.request.Request(source, headers={"User-Agent": "pvtv2"})
    response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


def _copy(stream: BinaryIO, out: BinaryIO, total: int | None, name: str, source: str, progress: bool) -> str:
    """Copy ``stream`` to ``out`` with a progress bar; the sha256 of what was copied. A stream that ends
    before its announced size (a dropped connection) is an error, not a short file."""
    from tqdm import tqdm

    sha256 = hashlib.sha256()
    received = 0
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
              disable=None if progress else True) as bar:
        try:
            while chunk := stream.read(_CHUNK_BYTES):
                out.write(chunk)
                sha256.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:
            raise WeightsUnavailableError(_unavailable(
                name, source, f"the transfer broke off after {received} bytes: {_reason(error)}")) from error
    if total is not None and received != total:
        raise WeightsUnavailableError(_unavailable(
            name, source, f"the transfer ended after {received} of {total} bytes"))
    return sha256.hexdigest()


def _check_download(name: str, source: str, path: Path, sha256: str) -> None:
    expected = release_file(name).sha256
    if expected is not None:
        if sha256 != expected:
            raise WeightsUnavailableError(
                f"the file downloaded from {source} has sha256 {sha256}, but the weights of {name} have sha256 "
                f"{expected}; it was not cached. The download was damaged or the file on the server is not "
                f"the release file."
            )
        return
    try:
        check_release_weights(name, open_checkpoint(path).tensors, f"the file downloaded from {source}")
    except CheckpointError as error:
        raise CheckpointError(f"{error}\nThe file was not cached.") from error


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__


def _unavailable(name: str, source: str, reason: str) -> str:
    """The one paragraph a user who cannot download needs: what failed and how to do it by hand."""
    return (
        f"could not fetch the pretrained weights of {name} from {source} ({reason}); nothing was cached. "
        f"If this machine is offline or behind a firewall, download {release_file(name).url} elsewhere and "
        f"either copy it to {cached_path(name)} or run `pvt weights import {name} FILE`, which checks the file "
        f"before caching it; or set {MIRROR_ENV} to a mirror URL or a shared folder holding "
        f"{release_file(name).file_name}."
    )
