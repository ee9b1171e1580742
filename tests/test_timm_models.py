"""timm's own model tests on this package's 16 models, registered in timm's registry by ``pvtv2.timm_compat``.

The test functions are timm's, imported from ``tests/test_models.py`` of timm's source release (its wheel has
no tests). ``make test`` fetches them: the venv step unpacks the installed timm's sdist tests into
``.venv/timm-<version>/tests`` (Makefile); ``PVT_TIMM_TESTS=path/to/test_models.py`` points elsewhere. Each
kind of test runs on every model (FX + TorchScript on the shallow ones: SHALLOW_ONLY), at timm's sizes, as timm
runs it on its own models.
"""

import importlib.util
import os
import sys
import warnings
from pathlib import Path

import pytest
import timm

import pvtv2
from pvtv2.timm_compat import timm_name


def _timm_tests_file() -> Path:
    given = os.environ.get("PVT_TIMM_TESTS")
    return Path(given) if given else Path(sys.prefix) / f"timm-{timm.__version__}" / "tests" / "test_models.py"


def _import_timm_tests():
    path = _timm_tests_file()
    if not path.is_file():
        pytest.skip(f"timm's tests/test_models.py not found at {path}: `make test` fetches it (timm's sdist), or set "
                    f"PVT_TIMM_TESTS", allow_module_level=True)
    spec = importlib.util.spec_from_file_location("timm_tests_test_models", path)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's pytest marks (timeout, fxforward...) are not registered here
        spec.loader.exec_module(module)
    return module


timm_tests = _import_timm_tests()

# timm's cfg_device fixture: the meta device where torch has device contexts.
CFG_DEVICE = "meta" if timm_tests._HAS_DEVICE_CONTEXT else "cpu"

# Test kind -> timm's test function and the arguments timm parametrizes it with, besides the model name.
KINDS = {
    "forward": ("test_model_forward", dict(batch_size=1)),
    "backward": ("test_model_backward", dict(batch_size=2)),
    "default_cfgs": ("test_model_default_cfgs", dict(batch_size=1, cfg_device=CFG_DEVICE)),
    "default_cfgs_non_std": ("test_model_default_cfgs_non_std", dict(batch_size=1, cfg_device=CFG_DEVICE)),
    "forward_features": ("test_model_forward_features", dict(batch_size=1)),
    "forward_intermediates_features": ("test_model_forward_intermediates_features", dict(batch_size=1)),
    "forward_intermediates": ("test_model_forward_intermediates", dict(batch_size=1)),
    "forward_fx": ("test_model_forward_fx", dict(batch_size=1)),
    "backward_fx": ("test_model_backward_fx", dict(batch_size=2)),
    "forward_fx_torchscript": ("test_model_forward_fx_torchscript", dict(batch_size=1)),
    "forward_torchscript": ("test_model_forward_torchscript", dict(batch_size=1)),
}

# The kinds our models fail, with the reason (the README names them too).
FAILING = {
    # timm runs its token-output models (ViTs) through default_cfgs_non_std instead, which ours pass.
    "default_cfgs": "forward_features gives tokens (B, N, C), this package's API, not the (B, C, 7, 7) map this test "
                    "wants",
}

# Deep models: a few seconds per test kind each.
SLOW = {"pvt_v2_b3", "pvt_v2_b3_li", "pvt_v2_b4", "pvt_v2_b4_li", "pvt_v2_b5", "pvt_v2_b5_li", "pvt_medium",
        "pvt_large"}

# FX + TorchScript on the shallow models only: timm's own CI does not run it at all (its test is defined only
# outside GitHub Actions), it scripts the same fx graph forward_torchscript scripts on all 16 (our
# __prepare_scriptable__ traces the model with fx), and torchvision's tracer, which it goes through, takes time
# quadratic in a graph's nodes: 4-5 s for each deep model, 35 s in all.
SHALLOW_ONLY = {"forward_fx_torchscript"}


def _cases():
    for kind in KINDS:
        for name in pvtv2.list_models():
            if kind in SHALLOW_ONLY and name in SLOW:
                continue
            marks = [pytest.mark.slow] if name in SLOW else []
            if kind in FAILING:
                marks.append(pytest.mark.xfail(strict=True, reason=FAILING[kind]))
            yield pytest.param(kind, name, marks=marks, id=f"{kind}-{name}")


@pytest.mark.parametrize("kind, name", _cases())
def test_timm_model_tests(kind, name, one_thread):
    function_name, arguments = KINDS[kind]
    test = getattr(timm_tests, function_name, None)
    if test is None:  # timm defines its FX + TorchScript test only outside GitHub Actions
        pytest.skip(f"timm's {function_name} is not defined in this environment")
    test(timm_name(name), **arguments)
