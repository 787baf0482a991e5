SHELL := /bin/bash
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PROTO_SRC := proto
STUB_DIR := libs/common/src

.PHONY: setup proto proto-check lint typecheck test test-unit test-integration test-deploy demo clean \
	bench bench-quick bench-lr bench-scenarios bench-system bench-secagg bench-load fuzz fuzz-deps images compose-up compose-status compose-down compose-e2e

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

test: setup fuzz-deps proto-check lint typecheck
	$(BIN)/python -m pytest -q tests

# atheris (coverage-guided fuzzing) is optional: where it does not install, the fuzz test skips.
fuzz-deps: setup
	@$(BIN)/python -c "import atheris" 2>/dev/null || $(BIN)/pip install -q atheris \
		|| echo "atheris does not install here: the fuzz test will be skipped"

fuzz: fuzz-deps
	$(BIN)/python tools/fuzz_chunks.py -max_total_time=60

# 500 concurrent light clients, 20 rounds, one coordinator: RSS per round, errors.
bench-load: setup
	$(BIN)/python -m bench.load_500 --clients 500 --rounds 20

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit

test-integration: setup
	$(BIN)/python -m pytest -q tests/integration

# System benchmarks (not part of `make test`): each script prints its figures.
bench-system: setup
	$(BIN)/python -m bench.codec_throughput
	$(BIN)/python -m bench.aggregation_1000
	$(BIN)/python -m bench.round_overhead --clients 10 100 1000
	$(BIN)/python -m bench.grpc_floor
	$(BIN)/python -m bench.upload_1gb
	$(BIN)/python -m bench.client_throughput

# SecAgg+ inside one cluster: bytes and CPU per round, 10/100 members, 0/10/30 % dropouts.
bench-secagg: setup
	$(BIN)/python -m bench.secagg_cost

test-deploy: setup
	$(BIN)/python -m pytest -q tests/deploy

# --- containers (Docker engine: docker/start-dockerd.sh starts one if none runs) --------
COMPOSE = $(shell $(BIN)/python -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose
# The compose federation runs with mutual TLS (the docker-compose.mtls.yml overlay) unless
# MTLS=0 (or FEDPROMPT_COMPOSE_MTLS=0 in the environment): then docker-compose.yml alone, plaintext.
MTLS ?= $(if $(FEDPROMPT_COMPOSE_MTLS),$(FEDPROMPT_COMPOSE_MTLS),1)
COMPOSE_FILES = -f docker-compose.yml $(if $(filter 0 false no off,$(MTLS)),,-f docker-compose.mtls.yml)

images: setup
	$(BIN)/python docker/compose_e2e.py --build-only

compose-up: images
	$(COMPOSE) $(COMPOSE_FILES) up -d --no-build silo-data clusterer coordinator client-0 client-1 client-2 prometheus

# The status as the operator (mTLS: the operator certificate, copied out of the certs one-shot).
compose-status: setup
	FEDPROMPT_COMPOSE_MTLS=$(MTLS) $(BIN)/python docker/compose_status.py

# both files: the overlay's certificate volumes go too, whichever mode ran
compose-down:
	$(COMPOSE) -f docker-compose.yml -f docker-compose.mtls.yml down -v --remove-orphans

compose-e2e: setup
	FEDPROMPT_COMPOSE_MTLS=$(MTLS) $(BIN)/python docker/compose_e2e.py

demo: setup
	$(BIN)/fedprompt up --clients 4 --rounds 5

# The evaluation report (reports/full/report.md; about an hour on 2 cores) and its quick
# variant (reports/quick/, under 15 minutes): same structure, fewer rounds and steps.
# bench-scenarios adds many small clinics, a second seed of every hard scenario and the fpl
# ablations on the two 6-silo hard scenarios to the full plan's finished runs
# (reports/scenarios/; about 70 minutes after make bench).
bench: setup
	$(BIN)/fedprompt bench

bench-scenarios: setup
	$(BIN)/fedprompt bench --scenarios --merge reports/full

# bench-lr chooses every prompt strategy's learning rate on validation (default x 1/3, 1, 3
# on seed 0, the winner on the other seeds; reports/lr-grid/, make bench's runs reused).
bench-lr: setup
	$(BIN)/fedprompt bench --lr-grid --merge reports/full

bench-quick: setup
	$(BIN)/fedprompt bench --quick

clean:
	rm -rf runs .pytest_cache
