# One-command entry points; each creates .venv and installs the project first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install install-dev install-bench browser demo test lint bench bench-quick clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

demo: install  ## drawn faces -> retrain flow -> production.json -> batch flow on held-out actors
	$(BIN)/emotion-pipeline demo --dir demo

browser:  ## Debian's chromium, headless, for the tests of the HTML run report
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }
	@chromium --version

test: install-dev browser  ## the whole test suite (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .

install-bench: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,bench]'

bench: install-bench  ## throughput: pipeline vs model card vs model-only vs decode-only
	$(BIN)/python bench/throughput.py

bench-quick: install-bench
	$(BIN)/python bench/throughput.py --quick

clean:
	rm -rf demo .pytest_cache
