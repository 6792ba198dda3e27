# AetherGate: `make run` (first run, embedded SQLite) and `make test` (whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The suite runs with DEBUG off, like production, so it needs a SECRET_KEY;
# it ignores .env so that a local configuration cannot leak into tests.
TEST_ENV := AETHERGATE_ENV_FILE= DEBUG=false \
	SECRET_KEY=$${SECRET_KEY:-test-only-secret-key-not-for-any-deployment}

.PHONY: run test lint format clean llama

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit("AetherGate needs Python 3.11+, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: $(BIN)/python requirements.txt
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

# The admin's static assets from npm (Chart.js, for the usage dashboard), as
# package-lock.json pins them; collectstatic serves them from node_modules/.
node_modules/.package-lock.json: package.json package-lock.json
	@command -v npm >/dev/null || { echo "AetherGate needs npm (Node.js) for the admin's assets: apt-get install npm"; exit 1; }
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

.env:
	sed "s|^SECRET_KEY=.*|SECRET_KEY=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(48))')|" .env.example > .env
	chmod 600 .env
	@echo "Wrote .env with a fresh SECRET_KEY (keep it: it also protects upstream credentials)."

run: $(VENV)/.runtime .env node_modules/.package-lock.json
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py ensure_admin
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	@echo "AetherGate admin: http://$(HOST):$(PORT)/admin/"
	$(BIN)/uvicorn aethergate.asgi:application --host $(HOST) --port $(PORT) --no-access-log \
		--http aethergate.server:HttpProtocol --timeout-graceful-shutdown 30

test: $(VENV)/.dev node_modules/.package-lock.json
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(TEST_ENV) $(BIN)/python manage.py check --fail-level WARNING
	$(TEST_ENV) $(BIN)/python manage.py makemigrations --check --dry-run
	$(TEST_ENV) $(BIN)/pytest $(PYTEST_ARGS)

# llama-cpp-python's server in .venv-llama, for the tests against a real upstream
# (proxy/tests/test_real_llamacpp.py; they skip without it). Compiled once into
# ${XDG_CACHE_HOME:-~/.cache}/aethergate-ci, then reused: see .ci/llama.
llama:
	.ci/llama

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .venv-llama node_modules staticfiles .pytest_cache .ruff_cache .import_linter_cache

# Benchmark: direct-to-upstream vs through AetherGate (bench/run.py; needs `wrk`).
# Every scenario runs REPEAT times (the median is reported), then a soak of
# SOAK requests checks memory, then STALL seconds of load with the log table
# locked (the log writer's buffer at its bound). BENCH_DB=postgres uses
# PostgreSQL; UPSTREAM=raw a mock upstream several times faster than aiohttp's;
# BENCH_ARGS passes more flags (see `python bench/run.py --help`).
# `make bench-memory`: the peak RSS target alone, in front of the raw upstream.
BENCH_DB ?= sqlite
REPEAT ?= 3
SOAK ?= 100000
STALL ?= 15
UPSTREAM ?= aiohttp
.PHONY: bench bench-smoke bench-memory bench-upload bench-instructions

bench: $(VENV)/.dev
	$(BIN)/python bench/run.py --db $(BENCH_DB) --upstream $(UPSTREAM) --repeat $(REPEAT) \
		$(if $(SOAK),--soak $(SOAK)) $(if $(STALL),--stall $(STALL)) $(BENCH_ARGS)

bench-memory: $(VENV)/.dev
	$(BIN)/python bench/run.py --db $(BENCH_DB) --upstream raw --only "non-stream c=64" \
		--soak $(SOAK) --stall 30 $(BENCH_ARGS)

# `make bench-upload`: the gateway's RSS while it relays 20 MB audio uploads (bench/upload.py).
bench-upload: $(VENV)/.dev
	$(BIN)/python bench/upload.py $(BENCH_ARGS)

# `make bench-instructions`: instructions per chat request under callgrind (bench/instructions.py),
# steady whatever the machine's load: for comparing two commits on a busy machine.
bench-instructions: $(VENV)/.dev
	$(BIN)/python bench/instructions.py --deployments 1 3

# Usage at scale (bench/usage_rows.py): the log writer's rows/s with and without rollups,
# then ROWS request logs and their rollups, the dashboard's report and the log-list totals.
ROWS ?= 1000000
.PHONY: bench-usage
bench-usage: $(VENV)/.dev
	$(BIN)/python bench/usage_rows.py --db $(BENCH_DB) --without-rollups writer
	$(BIN)/python bench/usage_rows.py --db $(BENCH_DB) writer
	$(BIN)/python bench/usage_rows.py --db $(BENCH_DB) --rows $(ROWS) scale

bench-smoke: $(VENV)/.dev
	$(BIN)/python bench/run.py --db $(BENCH_DB) --upstream $(UPSTREAM) --duration 5 --warmup 1 \
		$(BENCH_ARGS)
