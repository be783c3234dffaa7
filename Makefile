# The two commands of the README: `make demo` and `make test`. Each sets up
# .venv on first use (CPU torch first, so pip never pulls a CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo simulate test test-unit bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: setup
	$(BIN)/swarmtrain demo --peers 3 --rounds 12

simulate: setup
	$(BIN)/swarmtrain simulate --peers 4 --rounds 8 --fault sign-flip

test: setup
	$(BIN)/python -m pytest -q

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit

bench: setup
	$(BIN)/python benchmarks/codec.py
	$(BIN)/python benchmarks/convergence.py

clean:
	rm -rf $(VENV) build *.egg-info
