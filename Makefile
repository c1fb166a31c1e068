# cxr-lightning: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NIH_ROOT ?= data/nih
OUT ?= runs

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

# The virtual environment is (re)built when missing or when pyproject.toml changed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its test tools

test: $(STAMP) ## run the whole test suite
	$(BIN)/python -m pytest -q

demo: $(STAMP) ## train and test the paper's CNN on embedded synthetic data (CPU, about a minute)
	$(BIN)/cxr-lightning fit --config configs/demo.yaml

table4: $(STAMP) ## Table 4 (Appendix D): class prevalence per split of the paper, from the metadata
	@mkdir -p $(OUT)
	$(BIN)/cxr-lightning data stats --split paper --out $(OUT)/table4.md
	@cat $(OUT)/table4.md

download: $(STAMP) ## download and extract the NIH images into NIH_ROOT (about 45 GB)
	$(BIN)/cxr-lightning data download --root $(NIH_ROOT)

clean: ## remove the virtual environment, caches and run outputs
	rm -rf $(VENV) .pytest_cache $(OUT) *.egg-info

.PHONY: help install test demo table4 download clean
