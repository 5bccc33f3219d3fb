# The two commands a new user needs: `make up` runs the whole system, `make test` passes the tests.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Test run options, e.g. `make test PYTEST_ARGS="tests/jobs -x"`.
PYTEST_ARGS ?=

.PHONY: up test lint format venv venv-dev stop clean-var browser docker-engine pgbouncer

$(VENV)/.installed: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	@$(PIP) install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

venv: $(VENV)/.installed
venv-dev: $(VENV)/.installed-dev

## make up: embedded or configured PostgreSQL + Redis, migrate, admin user, then web, beat, worker, flower
## under supervisord (config generated from the Procfile; a process that dies is restarted). Ctrl-C stops
## the four processes, then the embedded servers (they start again in about a second).
up: venv
	@exports="$$($(PY) -m scheduler_project.devservers env up)" || { $(PY) -m scheduler_project.devservers stop; exit 1; }; \
	eval "$$exports"; \
	trap '' INT TERM; \
	$(PY) manage.py migrate --no-input -v 0 && \
	$(PY) manage.py ensure_admin && \
	$(PY) -m scheduler_project.devservers banner && \
	export PATH="$(CURDIR)/$(VENV)/bin:$$PATH" && \
	conf="$$($(PY) -m scheduler_project.supervise config)" && \
	$(VENV)/bin/supervisord --nodaemon --configuration "$$conf"; \
	status=$$?; \
	$(PY) -m scheduler_project.devservers stop; \
	exit $$status

## make browser: Debian's chromium + chromium-driver for the dashboard's browser test (apt-get only if absent).
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

## make docker-engine: Debian's docker.io and busybox-static for the container tests (apt-get only if absent;
## the tests start a private dockerd of their own and never use a system one).
docker-engine:
	@{ test -x /usr/sbin/dockerd && dpkg -s busybox-static >/dev/null 2>&1; } || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		docker.io busybox-static; }

## make pgbouncer: Debian's pgbouncer for the PgBouncer test (apt-get only if absent; the test starts a private
## pgbouncer of its own and never uses a system one).
pgbouncer:
	@test -x /usr/sbin/pgbouncer || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer; }

## make test: lint, then the whole suite against real PostgreSQL, Redis and a private Docker Engine; then the
## real-worker integration tests marked broker_matrix again on RabbitMQ, in a vhost of their own.
test: venv-dev browser docker-engine pgbouncer
	@exports="$$($(PY) -m scheduler_project.devservers env test)"; \
	eval "$$exports"; \
	$(MAKE) --no-print-directory lint; \
	SCHEDULER_ENVIRONMENT=test $(VENV)/bin/pytest $(PYTEST_ARGS); \
	SCHEDULER_ENVIRONMENT=test $(PY) -m tests.broker_matrix -- $(VENV)/bin/pytest -m broker_matrix $(PYTEST_ARGS)

lint: venv-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports

format: venv-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## make stop: stop the embedded PostgreSQL and Redis that `make up` started under var/ (data is kept).
stop: venv
	@$(PY) -m scheduler_project.devservers stop
