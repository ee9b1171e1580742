"""Fetching the release weights by name: cache, mirror, integrity, offline use and import.

A local HTTP server on 127.0.0.1 (started here, random port) serves generated checkpoints of pvt_v2_b0,
so the tests are offline; ``PVT_WEIGHTS_MIRROR`` points at it and ``PVT_HOME`` at a temporary cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import pvtv2
from pvtv2.models import reference
from pvtv2.models import download
from pvtv2.models.keys import from_official
from pvtv2.errors import InputError
from pvtv2.models.loading import CheckpointError

NAME = "pvt_v2_b0"


class _Server:
    """Serves ``files`` (URL path -> bytes) and counts requests; paths in ``truncated`` announce their full
    size but send half of it and close the connection, as a dropped download does."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncated: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.truncated else body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/pvt/v2"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, name: str, body: bytes, *, truncated: bool = False) -> None:
        path = f"/pvt/v2/{name}.pth"
        self.files[path] = body
        if truncated:
            self.truncated.add(path)


@pytest.fixture
def server() -> Iterator[_Server]:
    running = _Server()
    running.thread.start()
    yield running
    running.httpd.shutdown()
    running.httpd.server_close()


@pytest.fixture(scope="module")
def b0_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(8)
    return pvtv2.create_model(NAME).state_dict()


@pytest.fixture(scope="module")
def b0_bytes(b0_state) -> bytes:
    buffer = io.BytesIO()
    torch.save(b0_state, buffer)
    return buffer.getvalue()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("PVT_HOME", str(folder))
    monkeypatch.delenv("PVT_WEIGHTS_MIRROR", raising=False)
    return folder


@pytest.fixture
def mirror(server, cache, monkeypatch) -> _Server:
    monkeypatch.setenv("PVT_WEIGHTS_MIRROR", server.url)
    return server


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _files_in(folder: Path) -> list[str]:
    """Everything in the cache, temporary files included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the table --------------------------------------------------------------------------------------------
# Linear SRA at the sizes the release lacks: every other model of the zoo has a release file.
UNRELEASED = ["pvt_v2_b0_li", "pvt_v2_b1_li", "pvt_v2_b3_li", "pvt_v2_b4_li", "pvt_v2_b5_li"]


def test_every_model_of_the_zoo_is_in_the_release_table_with_its_published_top1():
    assert list(download.RELEASES) == [n for n in pvtv2.list_models() if n not in UNRELEASED]
    assert set(UNRELEASED) < set(pvtv2.list_models())
    for name in UNRELEASED:
        with pytest.raises(InputError, match=f"no official weights were released for {name}"):
            download.release_file(name)
    published = reference.published(reference.IMAGENET)
    for name, release in download.RELEASES.items():
        assert release.url == f"https://github.com/whai362/PVT/releases/download/v2/{name}.pth"
        assert release.top1 == published[name]["top1"]
    params = sum(p.numel() for p in pvtv2.create_model(NAME).parameters())
    assert download.RELEASES[NAME].approx_size_bytes == 4 * params


def test_cache_folder_follows_pvt_home_then_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PVT_HOME", str(tmp_path / "pvt"))
    assert download.cached_path(NAME) == tmp_path / "pvt" / f"{NAME}.pth"
    monkeypatch.delenv("PVT_HOME")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert download.cached_path(NAME) == tmp_path / "torch" / "hub" / "checkpoints" / f"{NAME}.pth"


# -- downloading ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pretrained", ["official", True])
def test_pretrained_official_downloads_into_the_cache_and_loads(pretrained, mirror, cache, b0_state, b0_bytes):
    mirror.serve(NAME, b0_bytes)
    model = pvtv2.create_model(NAME, pretrained=pretrained)
    assert _same_tensors(model.state_dict(), b0_state)
    assert mirror.requests == [f"/pvt/v2/{NAME}.pth"]
    assert _files_in(cache) == [f"{NAME}.pth"]  # no temporary file left beside it
    assert (cache / f"{NAME}.pth").read_bytes() == b0_bytes


def test_second_fetch_uses_the_cache_without_any_request(mirror, b0_bytes, monkeypatch):
    mirror.serve(NAME, b0_bytes)
    first = download.fetch(NAME, progress=False)
    monkeypatch.setenv("PVT_WEIGHTS_MIRROR", f"http://127.0.0.1:{_closed_port()}")  # the network is gone
    assert download.fetch(NAME, progress=False) == first
    pvtv2.create_model(NAME, pretrained="official")
    assert len(mirror.requests) == 1


def test_hash_mismatch_is_rejected_naming_both_hashes(mirror, cache, b0_bytes, monkeypatch):
    mirror.serve(NAME, b0_bytes)
    expected = "0" * 64
    monkeypatch.setitem(download.RELEASES, NAME, dataclasses.replace(download.RELEASES[NAME], sha256=expected))
    with pytest.raises(download.WeightsUnavailableError) as error:
        download.fetch(NAME, progress=False)
    actual = hashlib.sha256(b0_bytes).hexdigest()
    assert f"has sha256 {actual}" in str(error.value) and f"have sha256 {expected}" in str(error.value)
    assert _files_in(cache) == []


def test_a_known_hash_that_matches_is_accepted(mirror, cache, b0_bytes, monkeypatch):
    mirror.serve(NAME, b0_bytes)
    actual = hashlib.sha256(b0_bytes).hexdigest()
    monkeypatch.setitem(download.RELEASES, NAME, dataclasses.replace(download.RELEASES[NAME], sha256=actual))
    assert download.fetch(NAME, progress=False).read_bytes() == b0_bytes


def test_connection_dropped_halfway_leaves_nothing_cached(mirror, cache, b0_bytes):
    mirror.serve(NAME, b0_bytes, truncated=True)
    size = len(b0_bytes)
    with pytest.raises(download.WeightsUnavailableError, match=rf"ended after {size // 2} of {size} bytes"):
        download.fetch(NAME, progress=False)
    assert _files_in(cache) == []


@pytest.mark.parametrize("served", ["garbage", "another model"])
def test_a_download_that_is_not_the_model_is_not_cached(mirror, cache, served):
    if served == "garbage":
        body = bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1)).tolist())
    else:
        buffer = io.BytesIO()
        torch.save(pvtv2.create_model("pvt_tiny").state_dict(), buffer)
        body = buffer.getvalue()
    mirror.serve(NAME, body)
    with pytest.raises(CheckpointError, match="not cached"):
        download.fetch(NAME, progress=False)
    assert _files_in(cache) == []


def test_unreachable_mirror_gives_one_paragraph_saying_what_to_do(cache, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}/weights"
    monkeypatch.setenv("PVT_WEIGHTS_MIRROR", url)
    with pytest.raises(download.WeightsUnavailableError) as error:
        pvtv2.create_model(NAME, pretrained=True)
    message = str(error.value)
    assert f"{url}/{NAME}.pth" in message  # which URL failed
    assert str(cache / f"{NAME}.pth") in message  # where to put the file by hand
    assert f"pvt weights import {NAME} FILE" in message
    assert download.RELEASES[NAME].url in message and "\n" not in message
    assert _files_in(cache) == []


def test_missing_file_on_the_mirror_is_reported_with_the_http_status(mirror, cache):
    with pytest.raises(download.WeightsUnavailableError, match=rf"{mirror.url}/{NAME}\.pth \(HTTP 404"):
        download.fetch(NAME, progress=False)
    assert _files_in(cache) == []


def test_release_address_is_the_default_and_the_mirror_replaces_it(cache, monkeypatch):
    assert download.source_of(NAME) == download.RELEASES[NAME].url
    monkeypatch.setenv("PVT_WEIGHTS_MIRROR", "https://mirror.example.org/pvt/")
    assert download.source_of(NAME) == f"https://mirror.example.org/pvt/{NAME}.pth"


def test_mirror_folder_is_copied_into_the_cache(tmp_path, cache, b0_state, b0_bytes, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / f"{NAME}.pth").write_bytes(b0_bytes)
    monkeypatch.setenv("PVT_WEIGHTS_MIRROR", str(shared))
    model = pvtv2.create_model(NAME, pretrained=True)
    assert _same_tensors(model.state_dict(), b0_state)
    assert _files_in(cache) == [f"{NAME}.pth"]
    with pytest.raises(download.WeightsUnavailableError, match=rf"mirror folder {shared} has no file pvt_v2_b1\.pth"):
        download.fetch("pvt_v2_b1", progress=False)


# -- import -----------------------------------------------------------------------------------------------
def test_import_checks_the_file_and_caches_it_in_official_layout(tmp_path, cache, b0_state):
    timm_file = tmp_path / "timm_b0.pth"
    torch.save(from_official(b0_state, "timm"), timm_file)
    path = download.import_weights(NAME, timm_file)
    assert path == cache / f"{NAME}.pth" and _files_in(cache) == [f"{NAME}.pth"]
    assert _same_tensors(torch.load(path, weights_only=True), b0_state)
    assert _same_tensors(pvtv2.create_model(NAME, pretrained=True).state_dict(), b0_state)


def test_import_of_a_file_for_another_model_is_rejected_and_nothing_cached(tmp_path, cache, b0_state):
    torch.save(b0_state, tmp_path / "b0.pth")
    with pytest.raises(CheckpointError, match=r"does not fit pvt_v2_b1"):
        download.import_weights("pvt_v2_b1", tmp_path / "b0.pth")
    backbone = {k: v for k, v in b0_state.items() if not k.startswith("head.")}
    torch.save(backbone, tmp_path / "backbone.pth")
    no_head = "not the ImageNet-1K classifier pvt_v2_b0: the checkpoint has no classification head"
    with pytest.raises(CheckpointError, match=no_head):
        download.import_weights(NAME, tmp_path / "backbone.pth")
    assert _files_in(cache) == []



# -- the command line -------------------------------------------------------------------------------------
def _pvt(capsys, *argv: str) -> tuple[int, str, str]:
    from pvtv2.cli.main import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_download_then_list_shows_it_cached(mirror, cache, b0_bytes, capsys):
    mirror.serve(NAME, b0_bytes)
    code, out, _ = _pvt(capsys, "weights", "download", NAME)
    assert code == 0 and out.strip() == f"{NAME}: {cache / f'{NAME}.pth'}"
    code, out, _ = _pvt(capsys, "weights", "list", "pvt_v2_b[01]")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    assert rows[NAME][1:] == ["~15", "MB", "70.5", "yes", f"{mirror.url}/{NAME}.pth"]
    assert rows["pvt_v2_b1"][4] == "no"
    assert out.splitlines()[-1] == f"cache: {cache}"


def test_cli_download_offline_prints_the_recipe(cache, monkeypatch, capsys):
    monkeypatch.setenv("PVT_WEIGHTS_MIRROR", f"http://127.0.0.1:{_closed_port()}")
    code, out, err = _pvt(capsys, "weights", "download", NAME)
    assert code == 2 and out == ""
    assert err.startswith("pvt weights: error: could not fetch") and f"pvt weights import {NAME} FILE" in err


def test_cli_import_good_and_wrong_files(tmp_path, cache, b0_state, capsys):
    torch.save(b0_state, tmp_path / "b0.pth")
    code, _, err = _pvt(capsys, "weights", "import", "pvt_v2_b1", str(tmp_path / "b0.pth"))
    assert code == 2 and "does not fit pvt_v2_b1" in err and _files_in(cache) == []
    code, out, _ = _pvt(capsys, "weights", "import", NAME, str(tmp_path / "b0.pth"))
    assert code == 0 and out.startswith(f"{NAME}: {cache / f'{NAME}.pth'}")
    assert _same_tensors(torch.load(cache / f"{NAME}.pth", weights_only=True), b0_state)


def test_cli_convert_says_when_it_takes_a_backbone(tmp_path, b0_state, capsys):
    state = {f"backbone.{k}": v for k, v in b0_state.items() if not k.startswith("head.")}
    state["neck.fpn_convs.0.conv.weight"] = torch.zeros(8, 8, 3, 3)
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "det.pth")
    code, out, _ = _pvt(capsys, "convert", str(tmp_path / "det.pth"), str(tmp_path / "hf"), "--to", "hf")
    assert code == 0
    assert "detector or segmenter checkpoint: took its backbone, left out 1 tensors of neck" in out
    assert f"{NAME} (no classification head), official -> hf" in out
    assert (tmp_path / "hf" / "config.json").is_file()
    code, _, err = _pvt(capsys, "convert", str(tmp_path / "det.pth"), str(tmp_path / "x.pth"), "--to", "onnx")
    assert code == 2 and "invalid choice: 'onnx'" in err
