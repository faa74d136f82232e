# Quick start: `make demo` and `make test`. Both create/update .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo test test-fast lint venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,detect]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dposer generate --part body -n 16 --out demo_out --seed 0
	@echo "demo: wrote demo_out/poses.npz and demo_out/grid.png"

# `test` = import contracts, lint (ruff check, ruff format --check, mypy), then the whole suite.
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check dposer_cli tests bench docs
	$(BIN)/ruff format --check dposer_cli tests bench docs
	$(BIN)/mypy
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest

# The suite without the tests marked slow (quality, parity, DDP): a few minutes on 2 cores.
test-fast: $(STAMP)
	$(BIN)/lint-imports
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check dposer_cli tests bench docs
	$(BIN)/ruff format --check dposer_cli tests bench docs
	$(BIN)/mypy

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.run_all

clean:
	rm -rf demo_out .pytest_cache
