# metarec: `make run` (set-up + the retraining flow on the default data) and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export DVC_SITE_CACHE_DIR ?= $(CURDIR)/.dvc/tmp/site

.PHONY: setup run test test-fast test-integration lint typecheck bench clean

setup: $(STAMP)

# Re-installs only when pyproject.toml or constraints.txt change. Without an NVIDIA GPU the CPU build of
# torch goes in first (from /opt/wheels when the machine has it, else PyTorch's CPU index), so the
# dependency range in pyproject never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade uv
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  if ls /opt/wheels/torch-$(TORCH_VERSION)+cpu-*.whl >/dev/null 2>&1; then \
	    $(BIN)/uv pip install -q --python $(BIN)/python --find-links /opt/wheels "torch==$(TORCH_VERSION)+cpu"; \
	  else \
	    $(BIN)/uv pip install -q --python $(BIN)/python --index-url https://download.pytorch.org/whl/cpu "torch==$(TORCH_VERSION)"; \
	  fi; \
	fi
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode -c constraints.txt -e '.[dev]'
	touch $@

run: setup
	$(BIN)/metarec run

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not integration"

test-integration: setup
	$(BIN)/python -m pytest -q -m integration

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check pipeline flows tests benchmarks

typecheck: setup
	$(BIN)/mypy pipeline flows

# Bad input, faults and restarts: runs the reliability tests, renders docs/reliability.md from them.
.PHONY: reliability
reliability: setup
	$(BIN)/python -m tests.reliability_report --out docs/reliability.md

bench: setup
	$(BIN)/python benchmarks/meta_throughput.py --device cpu --json benchmarks/results/meta_throughput_cpu.json

clean:
	rm -rf $(VENV)
