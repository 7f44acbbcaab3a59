# The two commands of a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing: torch first (TORCH_SPEC; the CPU wheel here), then the
# project with its extras.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,embed
BIN := $(VENV)/bin
export TUNESTACK_HOME ?= $(CURDIR)/.tunestack

.PHONY: venv demo lint test test-fast gpu-check bench bench-quick clean

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

demo: venv
	$(BIN)/tunestack demo

# One torch thread per process: these models are tiny, and on a small shared machine a second
# thread makes each step far slower (Ray's workers already run with OMP_NUM_THREADS=1).
# ruff's lint rules and format live in pyproject.toml; `make test` fails on either.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Line coverage of pipeline/ and serve/ (pytest-cov) and the 20 slowest tests are reported every run.
# The fast tier first, one process per core (pytest-xdist, a module per process, at most
# TEST_WORKERS): it starts no Ray, and one pytest process keeps only one core busy (measured on
# 2 cores: 168 s alone, 85 s on two). Then the integration tier in one process: its tests start
# real Ray clusters sized to the machine, and two at once would only fight over the cores.
TEST_WORKERS ?= 4
test: venv lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --maxprocesses $(TEST_WORKERS) --dist loadfile \
	  tests/unit --cov --cov-report=
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests/integration --cov --cov-append --cov-report= --durations=20
	@echo "line coverage: pipeline/ $$($(BIN)/coverage report --include='pipeline/*' --format=total)%," \
	  "serve/ $$($(BIN)/coverage report --include='serve/*' --format=total)%"

test-fast: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --maxprocesses $(TEST_WORKERS) --dist loadfile tests/unit

# The GPU check, for a machine with a CUDA device (tests marked `gpu`; without CUDA they skip, here
# and in `make test`): CUDA + AMP training of both families equal to the CPU run within tolerance,
# a Serve replica on the GPU, batches streamed into pinned memory. Under 5 minutes on one GPU; the
# venv needs a CUDA build of torch (e.g. make TORCH_SPEC='torch==2.13.0' on Linux x86-64 from PyPI).
gpu-check: venv
	OMP_NUM_THREADS=1 timeout 300 $(BIN)/python -m pytest -q -rs -m gpu tests/integration/test_gpu.py

bench: venv
	$(BIN)/tunestack bench

# The whole suite at small sizes (a smoke run of every benchmark, figures not to be quoted): about
# 10 minutes on 2 cores.
bench-quick: venv
	$(BIN)/tunestack bench --quick

clean:
	rm -rf .tunestack .pytest_cache
