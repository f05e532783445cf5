# Two entry points that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export GX_ANALYTICS_ENABLED ?= false

.PHONY: demo test lint install sandbox bench clean lock

# Every download is checked against its sha256 in requirements.lock (pip's hash-checking mode).
# pip comes first, from its own entry there (a current pip installs the rest a third faster than
# the one a new venv has); setuptools and uv are in the lock too. The project itself is then
# installed without deps and built without isolation, with that setuptools, so nothing unchecked
# is fetched. `pip check` fails when requirements.lock no longer satisfies pyproject.toml: then
# run `make lock`.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	sed -n '/^pip==/,/[^\\]$$/p' requirements.lock > $(VENV)/pip.lock
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(VENV)/pip.lock
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/invoice-sync demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff (lint and format) over all the Python here; mypy over the packages (pyproject.toml says how).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

sandbox: $(STAMP)
	$(BIN)/invoice-sync sandbox

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) data/results/demo .pytest_cache

# Re-resolves requirements.lock from pyproject.toml (the test and postgres extras and the
# bootstrap group) on PyPI, with the hashes of every file of each pinned release. Versions already
# in it are kept unless pyproject.toml now needs others; `make lock LOCK_ARGS=--upgrade` takes the
# newest allowed, `LOCK_ARGS="--upgrade-package NAME"` one package's. uv comes from the lock (the
# test extra); it is there even when the stamp failed only at `pip check`.
LOCK_ARGS ?=
lock:
	test -x $(BIN)/uv || $(MAKE) --no-print-directory $(STAMP) || test -x $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml --extra test --extra postgres --group bootstrap \
	  --universal --python-version 3.11 --generate-hashes --quiet \
	  --custom-compile-command "make lock" $(LOCK_ARGS) -o requirements.lock

# -- Running it the Prefect way (docs/operations.md) ----------------------------------------
# Each in its own terminal: `make server`, then `make pool deploy`, then `make worker` (one or more).
PREFECT_PORT ?= 4200
INVOICE_SYNC_POOL ?= invoice-sync
INVOICE_SYNC_TIMEZONE ?= UTC

.PHONY: server pool deploy worker

# A local Prefect server and its UI on http://127.0.0.1:$(PREFECT_PORT) (SQLite under
# PREFECT_HOME; set PREFECT_API_DATABASE_CONNECTION_URL for PostgreSQL).
server: $(STAMP)
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

pool deploy worker: export PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api

# The process work pool the deployments run on (left as it is if it exists).
pool: $(STAMP)
	$(BIN)/prefect work-pool inspect $(INVOICE_SYNC_POOL) >/dev/null 2>&1 || \
	  $(BIN)/prefect work-pool create $(INVOICE_SYNC_POOL) --type process

# Both deployments in prefect.yaml; the month-end schedule runs in INVOICE_SYNC_TIMEZONE.
deploy: $(STAMP)
	INVOICE_SYNC_HOME=$(CURDIR) INVOICE_SYNC_POOL=$(INVOICE_SYNC_POOL) INVOICE_SYNC_TIMEZONE=$(INVOICE_SYNC_TIMEZONE) \
	  $(BIN)/prefect --no-prompt deploy --all

# A worker: runs each flow run of the pool as a subprocess. Start several for more throughput.
worker: $(STAMP)
	$(BIN)/prefect worker start --pool $(INVOICE_SYNC_POOL) --type process

# -- Benchmarks (docs/performance.md) ---------------------------------------------------------
.PHONY: bench-scale bench-rates bench-workbooks

# A million decisions: `validate` and `run --dry-run`, wall time and peak memory.
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py

# Vendors that never said their limit: found, kept to, remembered (docs/rates.md).
bench-rates: $(STAMP)
	$(BIN)/python benchmarks/rates.py

# Excel workbooks: python-calamine against openpyxl, and writing a million-row run's results.
bench-workbooks: $(STAMP)
	$(BIN)/python benchmarks/workbooks.py
