# `make demo` and `make test` set everything up on a fresh machine: they create ./.venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TIMM_TESTS := $(VENV)/.timm-tests

.PHONY: demo test test-quick docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,demo]"
	touch $(STAMP)

# timm's own model tests (tests/test_timm_models.py runs them on our models): its wheel has no tests, so
# unpack them from the installed version's source release into .venv/timm-<version>/tests.
$(TIMM_TESTS): $(STAMP)
	rm -rf $(VENV)/sdist && $(BIN)/python -m pip download --quiet --no-deps --no-binary :all: -d $(VENV)/sdist \
		"timm==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("timm"))')"
	tar -xzf $(VENV)/sdist/timm-*.tar.gz -C $(VENV) --wildcards '*/tests/*'
	rm -rf $(VENV)/sdist
	touch $(TIMM_TESTS)

# The main job: train PVTv2-B0 from scratch on scikit-learn's digits, report held-out accuracy.
demo: $(STAMP)
	$(BIN)/python -m pvtv2 train --config configs/digits/pvt_v2_b0.yaml

# Two workers, one per core of the CI machine (tests/conftest.py keeps each module's tests together).
test: $(STAMP) $(TIMM_TESTS)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-quick: $(STAMP) $(TIMM_TESTS)
	$(BIN)/python -m pytest -q -m "not slow"

# The documentation (docs/, mkdocs.yml) as a site in site/; --strict fails on a broken link or a missing page.
docs:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import mkdocs, material" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build *.egg-info
