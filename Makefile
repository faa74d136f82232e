# Quick start: `make demo` and `make test`. Both create/update .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo test lint venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dposer generate --part body -n 16 --out demo_out --seed 0
	@echo "demo: wrote demo_out/poses.npz and demo_out/grid.png"

test: $(STAMP)
	$(BIN)/lint-imports
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.run_all

clean:
	rm -rf demo_out .pytest_cache
