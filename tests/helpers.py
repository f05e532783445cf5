"""Small builders shared by the tests."""

from __future__ import annotations

import json as jsonlib
import os
from bisect import bisect_left
from pathlib import Path

import pytest
from urllib3 import HTTPHeaderDict

from connectors.registry import CONNECTORS
from connectors.wire import Response


def in_ci() -> bool:
    """CI=true (or 1/yes): this machine is CI's, which installs every server the tests need (.ci/run)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str):
    """A server or tool a test needs is not here: skip on a developer's machine, fail loudly in CI.

    CI installs PostgreSQL and Chromium (.ci/run), so there their absence or a failure to start
    is a broken test environment, never a reason to report the test as skipped.
    """
    if in_ci():
        pytest.fail(f"{reason} (CI=true: CI provides it, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def fake_env() -> dict[str, str]:
    """Settings for every registered vendor: an https base URL and a distinctive fake credential each."""
    env: dict[str, str] = {}
    for vendor, cls in CONNECTORS.items():
        env[f"{vendor.upper()}_BASE_URL"] = f"https://{vendor}.test/api"
        for name in cls.credential_names:
            env[f"{vendor.upper()}_{name}"] = f"{vendor}-{name.lower().replace('_', '-')}-test"
    return env


FAKE_ENV = fake_env()


def connector(vendor: str, env: dict[str, str] | None = None, **kwargs):
    cls = CONNECTORS[vendor]
    return cls(cls.settings_from_env(env or FAKE_ENV), **kwargs)


def response(status: int, body=None, headers: dict[str, str] | None = None) -> Response:
    """A Response as a vendor would send it (dict/list bodies become JSON)."""
    sent = HTTPHeaderDict(headers or {})
    if body is None:
        content = b""
    elif isinstance(body, (dict, list)):
        content = jsonlib.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    else:
        content = body.encode() if isinstance(body, str) else body
    return Response(status, sent, content)


def artifacts_of(run_id) -> list:
    """The artifacts one flow run published, read back through the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))


def max_in_window(times: list[float], width: float = 1.0) -> int:
    """The most arrivals within any `width`-second window (t, t + width)."""
    times = sorted(times)
    best = 0
    for i, t in enumerate(times):
        first = bisect_left(times, t - width, 0, i + 1)
        while first <= i and t - times[first] >= width:
            first += 1
        best = max(best, i - first + 1)
    return best


class FakeTime:
    """A clock and a sleep for the limiters and the rate controller: sleeping moves the clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


# The sandbox runs in the test process: its handler threads share the GIL (and, with other
# processes, two cores) with the senders, so on a loaded machine it stamps a request's arrival
# late by tens of ms, now and then over 100 ms, and requests sent on their evenly spaced slots
# can be stamped a few ms apart. Arrival-side checks count in a window this much shorter than a
# second: they catch a burst (a batch sent at once, a pause ignored), not a late stamp. What
# must hold exactly is checked at the send side, on the limiter's grant times (`record_grants`,
# `grant_log_env`), with the full second.
SANDBOX_JITTER = 0.100
# How much of a set limit a sandbox test must see used: only "not stuck slow" (a pause never
# lifted, a lost wake-up). How fully a limit is used is a speed figure: the fake-clock tests
# check the spacing exactly, the benchmarks measure it (docs/performance.md).
NOT_STUCK = 0.5


def max_arrivals_in_window(times: list[float], width: float = 1.0) -> int:
    """`max_in_window` over the sandbox's arrival stamps, allowing `SANDBOX_JITTER` on them."""
    return max_in_window(times, width - SANDBOX_JITTER)


def record_grants(limiter, grants: list[float] | None = None) -> list[float]:
    """The grant times of a RateLimiter (or a GlobalRateLimiter's local one), appended as they happen."""
    grants = [] if grants is None else grants
    getattr(limiter, "local", limiter).on_grant = grants.append  # list.append is atomic: senders share it
    return grants


GRANT_LOG_HOOK = Path(__file__).resolve().parent / "grant_log"


def grant_log_env(path: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Settings for a process the test starts that record its limiters' grants in `path` (tests/grant_log)."""
    base = (environ if environ is not None else os.environ).get("PYTHONPATH", "")
    return {
        "PYTHONPATH": os.pathsep.join(p for p in (str(GRANT_LOG_HOOK), base) if p),
        "INVOICE_SYNC_TEST_GRANT_LOG": str(path),
    }


def read_grants(path: Path, vendor: str = "alfred") -> list[float]:
    """One vendor's grant times that `grant_log_env` processes wrote (every process's, one machine-wide clock)."""
    if not path.exists():
        return []
    lines = (line.split() for line in path.read_text().splitlines())
    return sorted(float(at) for name, at in lines if name == vendor)


def invoice_id_for(vendor: str, i: int) -> str:
    """A valid invoice id for `vendor` (the formats its validation rules demand), distinct per i."""
    formats = {
        "alfred": f"A{i:05d}",
        "accounteer": f"{i:040x}",
        "appzen": f"00000000-0000-4000-8000-{i:012x}",
        "modulus": str(1000 + i),
    }
    return formats.get(vendor, f"{vendor}-{i:05d}")


def seed_approvals(sandbox, vendor: str, indices, **seed) -> list[dict]:
    """Seed invoices in the sandbox and return one approve row per invoice for a decision file."""
    rows = []
    for i in indices:
        invoice_id, number = invoice_id_for(vendor, i), f"N-{vendor}-{i}"
        sandbox.seed(vendor, invoice_id, invoice_number=number, **seed)
        rows.append({"invoice_id": invoice_id, "vendor": vendor, "decision": "approve", "invoice_number": number})
    return rows
