# The two commands that matter: `make learn` (train XOR) and `make test` (the whole suite);
# `make test-fast` runs only the unit tests, which start no process, in seconds.
PYTHON ?= python3
# Another interpreter gets its own venv: `make bench PYTHON=python3.12 VENV=.venv-3.12`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/xor.yaml

.PHONY: learn test test-fast lint bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

learn: $(VENV)/.installed
	$(PY) -m exmachina.supervisor --config $(CONFIG)

# The tests also cover neurons placed on a two-node Ray cluster: the optional extra comes with them.
$(VENV)/.ray-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,ray]'
	touch $@

# ruff (lint and format) and mypy first: a style or type fault fails in seconds, not after the suite.
test: $(VENV)/.ray-installed lint
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m unit

lint: $(VENV)/.installed
	$(PY) -m ruff check exmachina supervisor tests
	$(PY) -m ruff format --check exmachina supervisor tests
	$(PY) -m mypy

# e.g. `make bench BENCH_ARGS=--startup=100,1000,10000` on the 16-core machine
bench: $(VENV)/.installed
	$(PY) -m exmachina.bench $(BENCH_ARGS)

bench-quick: $(VENV)/.installed
	$(PY) -m exmachina.bench --quick

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache .ruff_cache
