# drawdown: `make up` brings the engine up, `make test` runs the tests. `make help` lists the rest.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The first Python >= 3.11 on PATH.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help install browser up down status test test-fast bench demo reset

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "drawdown needs Python 3.11 or newer on PATH (Debian: apt-get install python3)"; exit 1; }
	@echo "[drawdown] installing Python dependencies into $(VENV) with $(PYTHON) (first run: a minute or two) ..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) ## create the virtualenv and install dependencies (once)

up: install ## start Kafka, PostgreSQL and the engine in the background; print where each listens
	@$(BIN)/python -m drawdown up

down: ## stop everything `make up` started (by recorded pid)
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m drawdown down; else echo "[drawdown] nothing to stop"; fi

status: install ## what runs, where it listens, where its log is
	@$(BIN)/python -m drawdown status

browser: ## Debian's chromium for the dashboard's browser tests (apt-get install when missing; never a downloaded build)
	@[ -n "$$DRAWDOWN_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || { \
		echo "[drawdown] installing Debian's chromium for the dashboard's browser tests ..."; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || { \
			echo "drawdown: could not install chromium; as root run: apt-get install -y chromium chromium-driver"; \
			echo "  (or point DRAWDOWN_CHROMIUM at a chromium binary)"; exit 1; }; \
		command -v chromium >/dev/null 2>&1 || { echo "drawdown: chromium is still missing after apt-get install"; exit 1; }; }

test: install browser ## run the whole suite against a real Kafka and PostgreSQL (started if needed, stopped after)
	@$(BIN)/python -m pytest

test-fast: install ## only the unit tests (no services)
	@$(BIN)/python -m pytest tests/unit

bench: install ## run every benchmark; table on stdout, JSON in .bench/
	@$(BIN)/python -m benchmarks

demo: install ## the Hypernian walkthrough through the Stripe SDK against the running engine (make up first)
	@$(BIN)/python -m api.demo

reset: down ## stop and delete all local state (Kafka data, PostgreSQL cluster, logs)
	@$(BIN)/python -c 'from deploy.local import reset; from drawdown.settings import get_settings; reset(get_settings())' 2>/dev/null || rm -rf .state
