# Two commands for a newcomer: `make reproduce` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
# make reproduce PROFILE=test|quick|full|paper [ARGS="--force --only deep_nets"]
PROFILE ?= quick
RESULTS ?= results
FIGURES ?= figures
REPORT  ?= REPORT.md
ARGS    ?=
# -qq: errors only (pip's notices and setuptools' editable-install banner stay off the screen)
PIP    := $(PY) -m pip -qq --disable-pip-version-check

.PHONY: reproduce test bench gpu-check lint format data clean

$(STAMP): requirements.txt pyproject.toml
	@echo "set-up: $(VENV) with the pinned requirements.txt (minutes, once)"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install --upgrade pip
	@$(PIP) install -r requirements.txt
	@# The library (the wheel holds `sharpness` only), editable; an older venv's monorepo install
	@# (distribution sharpness-suite) goes first.
	@$(PIP) uninstall -y sharpness-suite 2>/dev/null || true
	@$(PIP) install --no-deps --no-build-isolation -e .
	@# The suite's packages (suite, deep_nets, analysis, ...) run from this checkout: a .pth file
	@# puts it on this venv's path, so workers, CLI subprocesses and notebooks find them from any
	@# directory, and nothing is installed under their generic names.
	@$(PY) -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()['purelib'], \
	  'sharpness-suite-checkout.pth').write_text('$(CURDIR)\n')"
	@touch $@

# Fashion-MNIST from Debian's package when we can install it (root + apt); otherwise the loader
# explains how to point --data_dir at the files.
data:
	@if [ -d $(FMNIST) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || \
	  echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST runs need --data_dir"; \
	else echo "note: $(FMNIST) missing; install the Debian package dataset-fashion-mnist or pass --data_dir"; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP) data lint
	$(PY) -m pytest -q

reproduce: $(STAMP) data
	@$(PY) -m analysis.reproduce --profile $(PROFILE) --results_dir $(RESULTS) \
	  --figures_dir $(FIGURES) --report $(REPORT) $(ARGS)

bench: $(STAMP) data
	$(PY) -m benchmarks

# On a machine with one GPU (<= 8 minutes): device tests, ResNet-18 timings, GPU-hours table.
gpu-check: $(STAMP)
	PY=$(PY) benchmarks/gpu_check.sh $(ARGS)

clean:
	rm -rf $(VENV) results figures .pytest_cache .ruff_cache
