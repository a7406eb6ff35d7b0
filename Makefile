# `make run` and `make test` each build .venv from scratch on a fresh machine (no step by hand).
# Everything installs from requirements.txt, the exact set that CI last passed with; `make lock`
# refreshes it from the ranges in pyproject.toml (see the README, "Installs").
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.txt
LOCK_VENV := .lock-venv
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install run test lint bench fuzz lock clean

# --no-deps: the lock is the whole environment; `pip check` (and tests/test_lock.py) prove it whole
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
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

# Resolve pyproject.toml's ranges afresh in a throw-away venv and freeze the result. torch comes
# first as the CPU wheel (a plain resolve would take a multi-GB CUDA build).
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(LOCK_VENV)/bin/python -m pip install --quiet "torch==2.13.*"
	$(LOCK_VENV)/bin/python -m pip install --quiet -e ".[dev,postgres]"
	$(LOCK_VENV)/bin/python -m pip check
	{ echo "# The lock file: every package of .venv, direct and transitive, written by \`make lock\`; do not edit."; \
	  echo "# Installed with --no-deps by \`make install\`; tests/test_lock.py checks .venv against it."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .mypy_cache .ruff_cache
