# The two commands of the README: `make demo` and `make test`. Each sets up
# .venv on first use (CPU torch first, so pip never pulls a CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Container engine and extra build flags for `make docker` (see docker/README.md).
ENGINE ?= $(shell command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && echo docker || echo podman)
DOCKER_BUILD_ARGS ?=

.PHONY: setup demo simulate test test-unit bench docker docker-test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: setup
	$(BIN)/swarmtrain demo --peers 3 --rounds 20

simulate: setup
	$(BIN)/swarmtrain simulate --peers 4 --rounds 8 --fault sign-flip

test: setup
	$(BIN)/python -m pytest -q

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit

bench: setup
	$(BIN)/python benchmarks/codec.py
	$(BIN)/python benchmarks/convergence.py

docker:
	$(ENGINE) build -f docker/Dockerfile -t swarmtrain $(DOCKER_BUILD_ARGS) .

docker-test: setup docker
	SWARMTRAIN_TEST_IMAGE=swarmtrain $(BIN)/python -m pytest -q tests/integration/test_docker.py

clean:
	rm -rf $(VENV) build *.egg-info
