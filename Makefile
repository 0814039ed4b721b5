# One-command entry points; each creates .venv and installs the project first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install install-dev demo test lint bench bench-quick clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

demo: install  ## sample videos + untrained small model -> the batch flow -> Parquet
	$(BIN)/emotion-pipeline demo --dir demo

test: install-dev  ## the whole test suite (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .

bench: install-dev  ## throughput: pipeline vs model-only vs decode-only, small and R50
	$(BIN)/python bench/throughput.py

bench-quick: install-dev
	$(BIN)/python bench/throughput.py --quick

clean:
	rm -rf demo .pytest_cache
