# Two entry points that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export GX_ANALYTICS_ENABLED ?= false

.PHONY: demo test lint install sandbox bench clean lock

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
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

lock: $(STAMP)
	( echo "# Exact versions this project was tested with (pip freeze of .venv). \`make lock\` regenerates it."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -vi '^invoice-sync' ) > constraints.txt

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
.PHONY: bench-scale bench-workbooks

# A million decisions: `validate` and `run --dry-run`, wall time and peak memory.
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py

# Excel workbooks: python-calamine against openpyxl, and writing a million-row run's results.
bench-workbooks: $(STAMP)
	$(BIN)/python benchmarks/workbooks.py
