"""Stop means stop: SIGINT and SIGTERM to a real `invoice-sync run` against the sandbox.

Each run starts Prefect's temporary server itself (no PREFECT_API_URL), as a person's run does:
the signal goes to the command's whole process group, as a terminal's Ctrl-C does, and the
server must still outlive the flow's last API call. The runs synchronise on what the sandbox
has received, never on sleeps. Then the unit side: a VendorClient's stop and its grace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import pandas as pd
import pytest

from connectors.registry import CONNECTORS
from connectors.sending.client import VendorClient
from connectors.sending.ratelimit import RateLimiter
from connectors.settings import VendorSettings
from connectors.vocabulary import Decision, ErrorCode, Outcome
from tests.helpers import seed_approvals
from tests.test_ledger import _cli, changing_requests

EXIT_WITHIN = 15.0  # seconds from the signal to the process gone, with default settings
CONCURRENCY = 4


def _env(sandbox, tmp_path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),  # the temporary server's own database
        INVOICE_SYNC_STATE_DIR=str(tmp_path / "state"),
        INVOICE_SYNC_RATE_DIR=str(tmp_path / "rates"),
        PYTHONUNBUFFERED="1",
        ALFRED_RATE_LIMIT="20",
        ALFRED_MAX_CONCURRENCY=str(CONCURRENCY),
        ALFRED_TIMEOUT="30",  # the default: the stop's grace, not the timeout, bounds the exit
    )
    env.update(extra)
    return env


def _start_run(sandbox, tmp_path, rows: int):
    """`invoice-sync run` on `rows` alfred approvals (results in tmp_path/out): (path, decisions, env, process)."""
    decisions = seed_approvals(sandbox, "alfred", range(rows))
    path = tmp_path / "d.csv"
    pd.DataFrame(decisions).to_csv(path, index=False)
    env = _env(sandbox, tmp_path)
    return path, decisions, env, _cli(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"], env)


def _wait_for_requests(sandbox, proc, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while len(changing_requests(sandbox, "alfred")) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run did not start sending"
        time.sleep(0.02)


def _hang_the_vendor(sandbox, proc, after: int) -> None:
    """After `after` requests the vendor hangs (25 s, longer than the stop's grace); returns once
    every sender waits on a hanging answer. The caller sets `sandbox.latency` back to 0."""
    _wait_for_requests(sandbox, proc, after)
    sandbox.latency = 25.0
    _wait_for_requests(sandbox, proc, len(changing_requests(sandbox, "alfred")) + CONCURRENCY)


def _signal_and_wait(proc, signum) -> float:
    os.killpg(proc.pid, signum)  # the whole group, as a terminal's Ctrl-C
    sent_at = time.monotonic()
    proc.wait(timeout=60)
    return time.monotonic() - sent_at


def _check_stopped_run(sandbox, results: pd.DataFrame, decisions: list[dict], in_flight: int) -> None:
    """One result per row; reported successes were acknowledged; at most `in_flight` acknowledged unreported."""
    assert len(results) == len(decisions)
    assert results["row_number"].tolist() == list(range(1, len(decisions) + 1))
    changed = {d["invoice_id"] for d in decisions if sandbox.changes("alfred", d["invoice_id"]) == 1}
    succeeded = set(results.loc[results["outcome"] == "succeeded", "invoice_id"])
    assert succeeded <= changed  # every success reported was acknowledged by the vendor
    assert len(changed - succeeded) <= in_flight  # acknowledged but not reported: only those in flight
    not_sent = results[(results["error_code"] == ErrorCode.INTERRUPTED.value) & (results["attempts"] == 0)]
    assert len(not_sent) > 0 and (not_sent["outcome"] == "failed").all()
    assert set(results["outcome"]) <= {"succeeded", "failed"}
    assert set(results.loc[results["outcome"] == "failed", "error_code"]) == {ErrorCode.INTERRUPTED.value}


def _rerun_finishes_the_rest(sandbox, tmp_path, env, path, decisions, first: pd.DataFrame) -> None:
    rerun = _cli(["run", str(path), "--out", str(tmp_path / "rerun"), "--no-progress"], env)
    _, stderr = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, stderr.decode()[-2000:]
    second = pd.read_parquet(tmp_path / "rerun" / "results.parquet")
    assert second["outcome"].isin(["succeeded", "skipped"]).all()
    done_before = set(first.loc[first["outcome"] == "succeeded", "invoice_id"])
    assert set(second.loc[second["error_code"] == ErrorCode.ALREADY_DONE.value, "invoice_id"]) == done_before
    for d in decisions:  # every decision landed, none twice
        assert sandbox.changes("alfred", d["invoice_id"]) == 1


@pytest.mark.e2e
def test_sigint_stops_sending_writes_every_result_and_exits_130(sandbox, tmp_path):
    path, decisions, env, proc = _start_run(sandbox, tmp_path, 300)  # 15 s at 20/s: stopped well before the end
    _wait_for_requests(sandbox, proc, 40)
    took = _signal_and_wait(proc, signal.SIGINT)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 130, stderr.decode()[-3000:]
    assert took < EXIT_WITHIN
    sent_at_stop = len(changing_requests(sandbox, "alfred"))
    results = pd.read_parquet(tmp_path / "out" / "results.parquet")
    _check_stopped_run(sandbox, results, decisions, in_flight=CONCURRENCY)
    # one line, no traceback, no noise from Prefect's services (its server outlived the flow)
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, stderr.decode()
    sent = int((results["attempts"] > 0).sum())
    not_sent = int((results["attempts"] == 0).sum())
    assert lines[0].startswith(f"invoice-sync: stopped by SIGINT: {sent} rows sent, {not_sent} not sent")
    assert str(tmp_path / "out" / "results.parquet") in lines[0] or "results.parquet" in lines[0]
    assert stdout.decode().strip() == ""
    assert sent_at_stop < len(decisions)
    _rerun_finishes_the_rest(sandbox, tmp_path, env, path, decisions, results)


@pytest.mark.e2e
def test_sigterm_with_a_slow_vendor_gives_requests_in_flight_a_grace_and_exits_143(sandbox, tmp_path):
    path, decisions, env, proc = _start_run(sandbox, tmp_path, 120)
    try:
        _hang_the_vendor(sandbox, proc, after=20)
        took = _signal_and_wait(proc, signal.SIGTERM)
        _, stderr = proc.communicate()
        assert proc.returncode == 143, stderr.decode()[-3000:]
        assert took < EXIT_WITHIN  # the 30 s timeout did not hold it up: 5 s of grace, then results
        results = pd.read_parquet(tmp_path / "out" / "results.parquet")
        unanswered = results[(results["error_code"] == ErrorCode.INTERRUPTED.value) & (results["attempts"] == 1)]
        assert len(unanswered) == CONCURRENCY
        assert unanswered["error_message"].str.contains("had not answered").all()
        assert "stopped by SIGTERM" in stderr.decode()
    finally:
        sandbox.latency = 0.0
    # the hanging requests land at the sandbox only now: at most those were acknowledged unreported
    deadline = time.monotonic() + 60
    while sum(sandbox.changes("alfred", i) for i in unanswered["invoice_id"]) < CONCURRENCY:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    _check_stopped_run(sandbox, results, decisions, in_flight=CONCURRENCY)
    _rerun_finishes_the_rest(sandbox, tmp_path, env, path, decisions, results)


@pytest.mark.e2e
def test_a_second_ctrl_c_leaves_at_once(sandbox, tmp_path):
    proc = _start_run(sandbox, tmp_path, 120)[-1]
    try:
        _hang_the_vendor(sandbox, proc, after=10)
        sent_at = time.monotonic()
        # Ctrl-C, then Ctrl-C again: signals that arrive together count once, so keep pressing
        # (every 0.1 s, well inside the 5 s grace) until it has gone.
        while proc.poll() is None and time.monotonic() - sent_at < 30:
            with contextlib.suppress(ProcessLookupError):  # it may be gone between poll and kill
                os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.1)
        took = time.monotonic() - sent_at
    finally:
        sandbox.latency = 0.0
    _, stderr = proc.communicate()
    assert proc.returncode == 130 and took < 3.0, (took, stderr.decode()[-2000:])
    assert "SIGINT again: leaving at once" in stderr.decode()
    assert not (tmp_path / "out" / "results.parquet").exists()  # it left without writing: as asked


# -- the client's stop -----------------------------------------------------------------------------


def _client(sandbox, stop, **env):
    cls = CONNECTORS["alfred"]
    settings = VendorSettings.from_env("alfred", cls.credential_names, {**sandbox.env(), **env})
    return VendorClient(cls(settings), limiter=RateLimiter(settings.rate_limit, stop=stop), stop=stop, stop_grace=1.0)


def test_after_the_stop_no_request_starts_and_the_rest_is_interrupted(sandbox):
    decisions = [
        Decision(i + 1, d["invoice_id"], "alfred", "approve")
        for i, d in enumerate(seed_approvals(sandbox, "alfred", range(60)))
    ]
    stop = threading.Event()
    client = _client(sandbox, stop, ALFRED_RATE_LIMIT="20", ALFRED_MAX_CONCURRENCY="4")
    answered: list[int] = []

    def on_result(decision, result):
        if result.attempts:
            answered.append(decision.row_number)
        if len(answered) == 10:
            stop.set()

    try:
        results = client.send_many(decisions, on_result=on_result)
    finally:
        client.close()
    requests_made = len(changing_requests(sandbox, "alfred"))
    assert requests_made <= 10 + 4  # the senders that were already waiting on an answer, no more
    interrupted = [r for r in results if r.error_code is ErrorCode.INTERRUPTED]
    assert all(r.outcome is Outcome.FAILED and r.attempts == 0 for r in interrupted)
    assert len(interrupted) == len(decisions) - requests_made
    assert [r.row_number for r in results] == [d.row_number for d in decisions]


def test_a_stop_ends_a_backoff_wait_at_once(sandbox):
    (row,) = seed_approvals(sandbox, "alfred", [0])
    sandbox.inject("alfred", "503", times=5)
    stop = threading.Event()
    client = _client(sandbox, stop, ALFRED_BACKOFF_INITIAL="30", ALFRED_BACKOFF_MAX="30")
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    try:
        (result,) = client.send_many([Decision(1, row["invoice_id"], "alfred", "approve")])
    finally:
        client.close()
    assert time.monotonic() - started < 5  # not the 30 s backoff
    assert result.error_code is ErrorCode.INTERRUPTED and result.attempts == 1
    assert result.http_status == 503 and "retries stopped after 1 attempts" in result.error_message
    assert len(changing_requests(sandbox, "alfred")) == 1
