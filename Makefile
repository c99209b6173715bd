# Two commands a fresh machine needs (see README):
#   make reproduce   -> foresight reproduce --scale quick
#   make test        -> ruff + pytest
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# Tests and reproductions read the shared data when it sits beside the checkout.
SHARED_DATA := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))../shared/data)
export FORESIGHT_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)
# On 2 cores, small nets run faster on one thread per process; pytest-xdist uses both cores.
export OMP_NUM_THREADS ?= 1
export MPLBACKEND := Agg

.PHONY: setup test test-slow lint reproduce bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

# Tests over 20 s on a cold machine (torch.compile's first C++ kernels); CI runs them after `make test`.
test-slow: setup
	$(BIN)/python -m pytest -q -m slow

reproduce: setup
	$(BIN)/foresight reproduce --scale quick --jobs 2 --out runs/reproduce-quick

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
