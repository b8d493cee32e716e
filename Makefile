# hpft: two commands from a fresh clone, `make train` and `make test`. `make help` lists every target.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# Python used to create the virtual environment (3.11: the CPU torch wheel is built for it).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch goes in FIRST and pinned: an unpinned torch pulls a multi-GB CUDA build. Override on a GPU
# machine, e.g. `make venv TORCH_SPEC='torch==2.14.1'`.
TORCH_SPEC ?= torch==2.13.0
PIP := $(PY) -m pip

# Tests never touch the network and never talk to W&B servers.
TEST_ENV := HF_HUB_OFFLINE=1 WANDB_MODE=offline TRANSFORMERS_VERBOSITY=error
# Defaults for runs; override with e.g. `make train WANDB_MODE=online HF_HUB_OFFLINE=0`.
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TRANSFORMERS_VERBOSITY ?= error

PYTEST_ARGS ?=

.PHONY: help venv train test lint bench clean distclean

help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-zA-Z_-]*:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(STAMP) ## Create .venv and install torch (CPU, pinned) then hpft[dev]; instant when up to date.

# Re-runs only when pyproject.toml changes (or the stamp is deleted).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install '$(TORCH_SPEC)'
	$(PIP) install -e '.[dev,slurm,optuna,deepspeed]'
	@touch $@

train: venv ## Finetune the embedded tiny-omni model under the default reduction (low_to_high, keep 25%).
	$(PY) -m hpft.train schedule=low_to_high keep=0.25

# pytest exits 5 when it collects no test; that is reported, not treated as a failure.
test: venv ## Run the CPU test suite (offline; `make test PYTEST_ARGS='-m "not slow"'` to filter).
	@rc=0; $(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

lint: venv ## ruff check and ruff format --check.
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: venv ## Measure prefill time, reduced (low_to_high, keep 25%) against unreduced.
	$(PY) scripts/bench_prefill.py --schedule low_to_high --keep 0.25

clean: ## Remove build artefacts and caches (keeps .venv and run outputs).
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too.
	rm -rf $(VENV)
