import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from pvtv2.data.shapes import write_coco_shapes

from . import oracle
from .detectors import SCENE_SIZE


# The modules that share the session fixture `released` (MMDetection models, minutes to build): under
# pytest-xdist (`make test` runs two workers) they run in one worker, so each model is built once.
SHARE_RELEASED = ("test_oracle", "test_release", "test_release_one_stage", "test_release_two_stage",
                  "test_release_sparse_rcnn")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One torch thread per worker: two workers on two cores, where two threads each would wait for each other.
    torch.set_num_threads(1)


def _module_group(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return "released" if Path(module).stem in SHARE_RELEASED else module


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`--dist loadfile` with the modules sharing `released` as one unit: a module's tests stay in one worker
    (its module-scoped fixtures are made once). xdist's own `loadgroup` marks cannot do it under pytest 9
    (xdist 3.8 renames node ids through an attribute pytest 9 no longer has)."""
    if config.getvalue("dist") != "loadfile":
        return None
    config.option.loadscopereorder = False  # xdist would order units by their number of tests, not their time
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _module_group(nodeid)

    return ModuleGroups(config, log)


# The longest units, longest first (seconds on 2 cores: released ~500, timm ~170, ecosystem ~60, the others
# 30-60); the scheduler hands units out in this order, so no long one starts when the other worker is nearly done.
LONGEST_FIRST = ("released", "tests/test_timm_models.py", "tests/test_ecosystem.py", "tests/test_parity.py",
                 "tests/test_bench.py", "tests/test_export.py", "tests/test_train.py", "tests/test_dense_detectors.py")


def _rank(nodeid: str) -> int:
    group = _module_group(nodeid)
    return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In xdist's workers: the longest units first (LONGEST_FIRST); the scheduler keeps this order."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: _rank(item.nodeid))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module of tiny training runs: a second thread buys little there, and on a busy
    machine threads waiting for each other make the runs many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 training and 4 held-out generated 64-pixel COCO-format scenes for the detection tests (read only)."""
    return write_coco_shapes(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=4, size=SCENE_SIZE,
                             seed=1, max_objects=3)


@pytest.fixture(scope="session")
def released(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], oracle.Released]:
    """``released(kind, backbone)``: MMDetection's model of the official config, its release-layout file and its
    detections, made once per session (:class:`tests.oracle.Released`)."""
    made: dict[tuple[str, str], oracle.Released] = {}

    def get(kind: str, backbone: str) -> oracle.Released:
        if (kind, backbone) not in made:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # see one_thread
            try:
                made[kind, backbone] = oracle.Released(kind, backbone, tmp_path_factory.mktemp(kind))
            finally:
                torch.set_num_threads(threads)
        return made[kind, backbone]

    return get

