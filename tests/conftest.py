"""Shared fixtures: one Prefect test server per session, one sandbox per module."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Tests read results, not Prefect's console; its handler also outlives pytest's captured streams.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")

import pytest

from connectors.registry import VENDORS

VENDOR_PREFIXES = tuple(f"{vendor.upper()}_" for vendor in VENDORS)


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect API on 127.0.0.1 for the whole session (started once: it is slow)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def sandbox_server():
    from sandbox import Sandbox

    with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(sandbox_server, monkeypatch):
    """A clean sandbox whose URLs and credentials are the only vendor settings in the environment."""
    sandbox_server.reset()
    for name in list(os.environ):
        if name.startswith(VENDOR_PREFIXES):
            monkeypatch.delenv(name)
    for name, value in sandbox_server.env().items():
        monkeypatch.setenv(name, value)
    for prefix in VENDOR_PREFIXES:  # quick retries: the tests are about behaviour, not patience
        monkeypatch.setenv(f"{prefix}BACKOFF_INITIAL", "0.02")
        monkeypatch.setenv(f"{prefix}BACKOFF_MAX", "0.2")
        monkeypatch.setenv(f"{prefix}RETRY_AFTER_MAX", "1")
        # A safety net for a loaded machine, not a measure: an answer that takes seconds must not
        # turn into a retry (tests count attempts). Tests that need a timeout set their own.
        monkeypatch.setenv(f"{prefix}TIMEOUT", "30")
    yield sandbox_server
    sandbox_server.clear_faults()


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    """Every test gets its own ledger: no test sees another's history."""
    monkeypatch.setenv("INVOICE_SYNC_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("INVOICE_SYNC_LEDGER_URL", raising=False)
    return tmp_path / "state"
