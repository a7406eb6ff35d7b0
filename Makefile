# `make run` and `make test` each build .venv from scratch on a fresh machine (no step by hand).
# Everything installs from requirements.txt, the exact set that CI last passed with; `make lock`
# refreshes it from the ranges in pyproject.toml (see the README, "Installs").
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.txt
LOCK_VENV := .lock-venv
NNI_VENV := .venv-nni
NNI_STAMP := $(NNI_VENV)/.installed
NNI_LOCK := requirements-nni.txt
NNI_TESTS := tests/techniques/test_nni_pruning.py tests/techniques/test_conformance.py -k nni
SITE := lib/python3.11/site-packages
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
# Modules are byte-compiled when first imported (install uses --no-compile): an environment with
# PYTHONDONTWRITEBYTECODE=1 would have every process (each job driver, Ray worker and agent) compile
# torch and Ray from source again, twice the CPU of a tiny job on 2 cores. Our recipes write the cache.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install run test test-nni lint browser bench fuzz lock lock-nni clean

# --no-deps: the lock is the whole environment; `pip check` (and tests/test_lock.py) prove it whole.
# --no-compile: modules are byte-compiled when first imported, not all of torch and Ray up front
# (see PYTHONDONTWRITEBYTECODE above)
# pip spends ~95 s of one core on the lock's wheels: pip itself first (the lock pins it), then the
# others in two halves side by side (disjoint files; ~60 s instead of ~100 s on 2 cores).
PIP_INSTALL := $(PY) -m pip install --quiet --no-deps --no-compile
PIP_PINS := '^(pip|setuptools|wheel)=='
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	grep -E $(PIP_PINS) $(LOCK) > $(VENV)/lock-pip.txt
	grep -vE $(PIP_PINS) $(LOCK) | grep -v '^#' > $(VENV)/lock-rest.txt
	awk 'NR % 2 == 1' $(VENV)/lock-rest.txt > $(VENV)/lock-1.txt
	awk 'NR % 2 == 0' $(VENV)/lock-rest.txt > $(VENV)/lock-2.txt
	$(PIP_INSTALL) -r $(VENV)/lock-pip.txt
	$(PIP_INSTALL) -r $(VENV)/lock-1.txt & first=$$!; $(PIP_INSTALL) -r $(VENV)/lock-2.txt; second=$$?; \
	  wait $$first && [ $$second -eq 0 ]
	$(PIP_INSTALL) --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

# NNI pins packages (filelock<3.12, typeguard<4.2) that the main environment must not take: it gets
# an environment of its own that sees .venv's packages through a .pth file and adds the nni extra.
$(NNI_STAMP): $(NNI_LOCK) $(STAMP)
	rm -rf $(NNI_VENV)
	$(PYTHON) -m venv $(NNI_VENV)
	echo "$(abspath $(VENV))/$(SITE)" > $(NNI_VENV)/$(SITE)/autocompress-venv.pth
	$(NNI_VENV)/bin/python -m pip install --quiet --no-deps --no-compile -r $(NNI_LOCK)
	touch $(NNI_STAMP)

run: $(STAMP)
	$(VENV)/bin/autocompress run

lint: $(STAMP)
	$(VENV)/bin/ruff check autocompress serve_app tests benchmarks
	$(VENV)/bin/ruff format --check autocompress serve_app tests benchmarks
	$(VENV)/bin/mypy

# lint (mypy: ~70 s on one core) and the NNI environment and tests run side by side (-O keeps each
# one's output together); then two pytest workers, file by file (a file's Ray or Serve fixture is set
# up once)
test: $(STAMP) browser
	$(MAKE) --no-print-directory -j2 -O lint test-nni
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests

# the nni_pruning technique and its conformance, which skip in .venv (no nni there)
test-nni: $(NNI_STAMP)
	$(NNI_VENV)/bin/python -m pytest -q -p no:cacheprovider $(NNI_TESTS)

# The dashboard's browser test drives Debian's chromium through its chromedriver (no browser download):
# installed here when missing and apt-get is at hand (as root, or through sudo without a password).
# Without them the test skips, and fails under CI=true.
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo -n) env DEBIAN_FRONTEND=noninteractive apt-get
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver (the dashboard's browser test)"; \
	    { $(APT_GET) update -qq && $(APT_GET) install -y -qq chromium chromium-driver >/dev/null; } || echo "could not install chromium: the browser test skips (fails under CI=true)"; \
	  else echo "no apt-get: install chromium and chromedriver for the dashboard's browser test"; fi; \
	fi

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
	$(LOCK_VENV)/bin/python -m pip install --quiet -e ".[dev,postgres,mlflow]"
	$(LOCK_VENV)/bin/python -m pip check
	{ echo "# The lock file: every package of .venv, direct and transitive, written by \`make lock\`; do not edit."; \
	  echo "# Installed with --no-deps by \`make install\`; tests/test_lock.py checks .venv against it."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)

# Resolve the nni extra afresh over .venv and freeze what it added.
lock-nni: $(STAMP)
	rm -rf $(NNI_VENV)
	$(PYTHON) -m venv $(NNI_VENV)
	echo "$(abspath $(VENV))/$(SITE)" > $(NNI_VENV)/$(SITE)/autocompress-venv.pth
	$(NNI_VENV)/bin/python -m pip install --quiet "nni>=3.0"
	{ echo "# The NNI environment's own packages (the nni extra), over .venv's: written by \`make lock-nni\`; do not edit."; \
	  echo "# .venv-nni sees .venv's packages through a .pth file and installs these with --no-deps (make test-nni)."; \
	  $(NNI_VENV)/bin/python -m pip freeze --path $(NNI_VENV)/$(SITE); } > $(NNI_LOCK)
	rm -rf $(NNI_VENV)

clean:
	rm -rf $(VENV) $(NNI_VENV) $(LOCK_VENV) .pytest_cache .mypy_cache .ruff_cache
