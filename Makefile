# `make demo` and `make test` set everything up on a fresh machine: they create ./.venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,demo]"
	touch $(STAMP)

# The main job: train PVTv2-B0 from scratch on scikit-learn's digits, report held-out accuracy.
demo: $(STAMP)
	$(BIN)/python -m pvtv2 train --config configs/digits/pvt_v2_b0.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info
