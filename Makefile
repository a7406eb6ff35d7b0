# `make run` and `make test` each build .venv from scratch on a fresh machine (no step by hand).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install run test lint bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.*"
	$(PY) -m pip install --quiet -e ".[dev,postgres]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/autocompress run

lint: $(STAMP)
	$(VENV)/bin/ruff check autocompress serve_app tests benchmarks
	$(VENV)/bin/ruff format --check autocompress serve_app tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q --durations=15 tests

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

fuzz: $(STAMP)
	$(PY) benchmarks/fuzz.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
