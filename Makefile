# The two commands of the README: `make run` and `make test`.
# PYTHON must be 3.11 or newer; VENV is created on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU builds of torch on a CPU machine; a GPU user installs CUDA torch first (README).
CONSTRAINTS ?= constraints/cpu.txt
PIP := $(BIN)/python -m pip --disable-pip-version-check
RUN_OUT ?= runs/demo

.PHONY: run test install install-dev lint typecheck layers pytest bench soak clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "autoscope needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[dev,nion]'
	@touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

RUN_POLICY ?= bayes
RUN_STEPS ?= 20

## make run: set up and run the main job: a simulated experiment, recorded, and its report
## (the demo directory is replaced on each run: a session directory is written once)
run: install
	rm -rf $(RUN_OUT)
	$(BIN)/autoscope run --instrument sim --policy $(RUN_POLICY) --steps $(RUN_STEPS) --record $(RUN_OUT) --json $(RUN_OUT)/SUMMARY.json
	$(BIN)/autoscope report $(RUN_OUT) --out $(RUN_OUT)/report.html

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-dev
	$(BIN)/mypy

layers: install-dev
	$(BIN)/lint-imports

pytest: install-dev
	$(BIN)/python -m pytest

## make test: install what the tests need and run every check
test: lint typecheck layers pytest

bench: install
	$(BIN)/python benchmarks/simulate.py
	$(BIN)/python benchmarks/loop.py
	$(BIN)/python benchmarks/policies.py

## make soak: the long reliability runs (about 3 hours at SOAK_SCALE=1); JSON report in benchmarks/results/soak.json
SOAK_SCALE ?= 1
soak: install-dev
	$(BIN)/python benchmarks/soak.py --scale $(SOAK_SCALE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache runs
