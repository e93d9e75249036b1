# Every target bootstraps what it needs; running it twice does the work once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# hiredis (redis-py's C reply parser) lives outside the venv: the main run tests the pure-Python
# parser a plain `pip install 'payonce[redis]'` gets, the hiredis run puts it on PYTHONPATH.
HIREDIS := $(VENV)/hiredis

.PHONY: help venv test lint types pytest pytest-hiredis bench demo services clean

help:
	@echo "make test   - bootstrap .venv, then ruff, mypy --strict and pytest (the Redis tests"
	@echo "              twice: redis-py's pure-Python parser, then hiredis)"
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

$(HIREDIS)/.installed: pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet --upgrade --target $(HIREDIS) 'hiredis>=3.0'
	touch $@

pytest: $(STAMP)
	PAYONCE_TEST_REDIS_PARSER=python $(BIN)/python -m pytest $(PYTEST_ARGS)

pytest-hiredis: $(HIREDIS)/.installed
	PYTHONPATH=$(abspath $(HIREDIS)) PAYONCE_TEST_REDIS_PARSER=hiredis \
		$(BIN)/python -m pytest -k redis $(PYTEST_ARGS)

test: lint types pytest pytest-hiredis

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

demo: $(STAMP)
	$(BIN)/payonce demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
