# Two commands for a newcomer: `make reproduce` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
PROFILE ?= quick

.PHONY: reproduce test bench lint format data clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

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

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP) data lint
	$(PY) -m pytest -q

reproduce: $(STAMP) data
	$(PY) -m analysis.reproduce --profile $(PROFILE)

bench: $(STAMP) data
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) results figures .pytest_cache .ruff_cache
