# edgehub: one gate for developers and CI.
#   make run                 a local fleet solving a sample goal on the real model
#   make test                every test (installs what is missing first)
#   make lint                ruff + mypy + ansible-lint
#   make bench [B=name]      benchmarks (QUICK=1 for a smaller run); results in bench/results/
#   make gen-protos          regenerate protocol/src/edgehub/protocol/v1 from protocol/proto
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := uv run --no-sync
PYTEST_ARGS ?=

.PHONY: help setup run test lint fmt bench gen-protos

help:
	@sed -n '2,7p' Makefile | sed 's/^# *//'

setup:
	@scripts/bootstrap.sh

run: setup
	@scripts/run_local.sh

test: setup
	$(PY) pytest $(PYTEST_ARGS)

lint: setup
	$(PY) ruff check .
	$(PY) ruff format --check .
	$(PY) mypy
	cd ansible && $(PY) ansible-lint -q

fmt: setup
	$(PY) ruff format .
	$(PY) ruff check --fix .

bench: setup
	$(PY) python bench/run.py $(B)

gen-protos: setup
	$(PY) python scripts/gen_protos.py
