# Every target bootstraps what it needs; running it twice does the work once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv test lint types pytest bench demo services clean

help:
	@echo "make test   - bootstrap .venv, then ruff, mypy --strict and pytest"
	@echo "make bench  - run the benchmarks and print payonce next to the hand-written baseline"
	@echo "make demo   - run the demo on the embedded SQLite store"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

types: $(STAMP)
	$(BIN)/mypy --strict src

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint types pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

demo: $(STAMP)
	$(BIN)/payonce demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
