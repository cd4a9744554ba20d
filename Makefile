# Two entry points for a fresh machine: `make run` and `make test`. Both build .venv first.
# Python 3.11, 3.12 or 3.13 (TensorFlow 2.21 has wheels for each); the first one found, 3.11 first.
PYTHON ?= $(or $(shell for v in 3.11 3.12 3.13; do command -v python$$v && break; done),\
	$(error no python3.11, python3.12 or python3.13 on PATH; install one, or run make PYTHON=/path/to/python))
VENV := .venv
BIN := $(VENV)/bin
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: setup system-packages run test lint lock ui

# --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set (CI images,
# containers) Python never caches one, so every process would compile TensorFlow, MLflow and Great
# Expectations from source again: 16.7 s -> 5.5 s for `import tensorflow`, 6.4 s -> 2.3 s for mlflow.
$(BIN)/char-rnn: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==0.13.8
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -r requirements.lock -e .
	touch $@

setup: $(BIN)/char-rnn

# Runs every stage of dvc.yaml on the corpus named in params.yaml (default: the blog's sentence).
run: setup
	@test -d .git || git init -q
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc metrics show

# What the suite drives besides Python (Chromium, CJK fonts, PostgreSQL), installed when missing: the
# same command passes on a fresh machine and in CI (.ci/run runs exactly this).
test: lint system-packages
	$(BIN)/python -m pytest

system-packages:
	.ci/system-packages

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lock:
	$(BIN)/uv pip compile requirements.in --python-version 3.11 -o requirements.lock

ui: setup
	$(BIN)/char-rnn ui
