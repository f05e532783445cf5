"""Two runs at once never collide: claims in the ledger, one vendor rate per machine.

The store first (SQLite and PostgreSQL alike), then two real `invoice-sync run` processes at
once on one file and on two files against one vendor: no invoice acknowledged twice, every
row of each run accounted for, never more than the vendor's limit in any second together,
and a third run finds everything done. The runs are made to overlap by a gate in the sandbox,
not by timing: the first run's requests are held until the second run's first request arrives.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from connectors.sending.ratelimit import MachineSchedule
from connectors.vocabulary import Decision, ErrorCode, Outcome, RowResult
from flows.state.ledger import ClaimHolder, Ledger, holder_is_gone
from tests.helpers import (
    NOT_STUCK,
    grant_log_env,
    max_arrivals_in_window,
    max_in_window,
    read_grants,
    record_grants,
    seed_approvals,
)
from tests.test_ledger import _cli, changing_requests, postgres_url  # noqa: F401 - a fixture, used by name

RATE = 20  # alfred requests per second, for both runs together
ROWS = 160  # per file: 8 s at the shared rate for one run alone


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_env(request, tmp_path) -> dict[str, str]:
    """The ledger both runs share: a SQLite file, or the module's PostgreSQL, emptied."""
    if request.param == "sqlite":
        return {"INVOICE_SYNC_STATE_DIR": str(tmp_path / "state")}
    url = request.getfixturevalue("postgres_url")
    ledger = Ledger(url)
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM decision_ledger")
        conn.exec_driver_sql("DELETE FROM decision_claims")
    ledger.close()
    return {"INVOICE_SYNC_LEDGER_URL": url, "INVOICE_SYNC_STATE_DIR": str(tmp_path / "state")}


# -- the store ---------------------------------------------------------------------------------


def decisions(n: int, start: int = 0) -> list[Decision]:
    return [Decision(i + 1, f"A{start + i:05d}", "alfred", "approve") for i in range(n)]


def exercise_claims(ledger: Ledger) -> None:
    rows = decisions(1200)  # more than one claim batch
    a, b = ClaimHolder.for_run("run-a"), ClaimHolder.for_run("run-b")
    first = ledger.claim(rows[:700], a)
    assert len(first.won) == 700 and not first.held and not first.done
    # run-a answers its first row, releases it; run-b then claims everything
    ledger.record(rows[0], RowResult(1, Outcome.SUCCEEDED, 200, attempts=1), "run-a")
    ledger.release(rows[:1], a)
    second = ledger.claim(rows, b)
    assert {d.row_number for d in second.won} == set(range(701, 1201))
    assert set(second.held) == set(range(2, 701)) and {run for run, _ in second.held.values()} == {"run-a"}
    assert set(second.done) == {1} and second.done[1][0] == "run-a"  # answered after b looked: not sent
    assert ledger.claim(rows[700:710], b).won == rows[700:710]  # a holder's own claim is still its own
    assert ledger.renew(a) == 699
    ledger.release(rows, b)
    # an expired lease is taken over
    live = ledger.claim(rows[1:6], ClaimHolder.for_run("run-c"), lease=-1)
    assert len(live.won) == 0 and len(live.held) == 5  # still a's, and a's lease runs
    ledger.release(rows, a)
    assert len(ledger.claim(rows[1:6], ClaimHolder.for_run("run-c"), lease=-1).won) == 5  # expired at once
    assert len(ledger.claim(rows[1:6], b).won) == 5
    ledger.release(rows, b)
    # the claim of a process on this machine that is gone is taken over at once, lease or not
    token = a.token.split("|")
    dead = ClaimHolder("run-dead", "|".join([*token[:2], str(_dead_pid()), "x"]))
    assert holder_is_gone(dead.token) and not holder_is_gone(a.token)
    assert len(ledger.claim(rows[1:51], dead).won) == 50
    taken = ledger.claim(rows[1:51], b)
    assert len(taken.won) == 50 and not taken.held
    # another machine's holder is only ever given up on at expiry
    elsewhere = ClaimHolder("run-far", "other-host||1|y")
    assert not holder_is_gone(elsewhere.token)


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_sqlite_claims(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    try:
        exercise_claims(ledger)
    finally:
        ledger.close()


def test_postgres_claims(postgres_url):  # noqa: F811 - the fixture
    ledger = Ledger(postgres_url)
    try:
        with ledger.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM decision_ledger")
            conn.exec_driver_sql("DELETE FROM decision_claims")
        exercise_claims(ledger)
    finally:
        ledger.close()


def _together(work: list) -> None:
    threads = [threading.Thread(target=w) for w in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_claims_on_one_chunk_give_each_row_to_one_run(tmp_path, request):
    url = f"sqlite:///{tmp_path / 'l.sqlite'}"
    ledgers = [Ledger(url) for _ in range(4)]
    rows = decisions(600)
    barrier = threading.Barrier(4)
    won: dict[int, list[int]] = {}

    def claim(k: int) -> None:
        barrier.wait()
        won[k] = [d.row_number for d in ledgers[k].claim(rows, ClaimHolder.for_run(f"run-{k}")).won]

    _together([lambda k=k: claim(k) for k in range(4)])
    for ledger in ledgers:
        ledger.close()
    everyone = [row for rows_won in won.values() for row in rows_won]
    assert sorted(everyone) == list(range(1, 601))  # every row to exactly one claimer


def test_a_machine_schedule_spaces_two_limiters_as_one(tmp_path):
    from connectors.sending.ratelimit import RateLimiter

    limiters = [RateLimiter(50, machine=MachineSchedule(tmp_path / "alfred.slot")) for _ in range(2)]
    times: list[float] = []
    for limiter in limiters:
        record_grants(limiter, times)
    barrier = threading.Barrier(2)

    def send(limiter: RateLimiter) -> None:
        barrier.wait()
        for _ in range(60):
            limiter.acquire()

    _together([lambda limiter=limiter: send(limiter) for limiter in limiters])
    for limiter in limiters:
        limiter.close()
    assert max_in_window(times) <= 50  # two limiters of 50/s each: 50/s together
    assert len(times) / (max(times) - min(times)) >= NOT_STUCK * 50


# -- two real runs at once ----------------------------------------------------------------------


class Gate:
    """Holds the sandbox's answers to the first run after `hold_after` requests, until a request for
    one of `opener` arrives (the second run sending): from then on both runs send at once."""

    def __init__(self, sandbox, hold_after: int, opener: set[str]) -> None:
        self.sandbox, self.hold_after, self.opener = sandbox, hold_after, opener
        self.open = threading.Event()
        self.seen = 0
        self._lock = threading.Lock()
        self._handle = sandbox._handle
        self.held = threading.Event()

    def __enter__(self) -> Gate:
        def gated(api, arrived, method, path, *rest):
            if not self.open.is_set():
                if any(path.endswith(f"/{invoice}") or f"/{invoice}/" in path for invoice in self.opener):
                    self.opened_at = time.monotonic()
                    self.open.set()
                with self._lock:
                    self.seen += 1
                    hold = self.seen > self.hold_after
                if hold:
                    self.held.set()
                    self.open.wait(120)
            return self._handle(api, arrived, method, path, *rest)

        self.sandbox._handle = gated
        return self

    def __exit__(self, *exc) -> None:
        self.open.set()
        del self.sandbox._handle


def _env(tmp_path: Path, ledger_env: dict[str, str]) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {
        **os.environ,
        **ledger_env,
        "PREFECT_API_URL": PREFECT_API_URL.value(),  # the session's test server: no second start-up
        "INVOICE_SYNC_RATE_DIR": str(tmp_path / "rates"),
        "PYTHONUNBUFFERED": "1",
        "ALFRED_RATE_LIMIT": str(RATE),
        "ALFRED_MAX_CONCURRENCY": "4",
        "ALFRED_TIMEOUT": "120",  # held at the gate: waiting is expected, not a failure
    }


def _busiest_second(times: list[float]) -> str:
    """The gaps (ms) inside the busiest 1-second window: what a failure needs to show."""
    times = sorted(times)
    best, first = 0, 0
    for i, t in enumerate(times):
        j = i
        while j + 1 < len(times) and times[j + 1] - t < 1.0:
            j += 1
        if j - i + 1 > best:
            best, first = j - i + 1, i
    window = times[first : first + best]
    return f"{best} arrivals within 1 s from {window[0]}, gaps ms: {[round(1000 * (b - a), 1) for a, b in itertools.pairwise(window)]}"


def _write(rows: list[dict], path: Path) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("files", ["one file", "two files"])
def test_two_runs_at_once_send_each_decision_once_within_one_rate(sandbox, tmp_path, ledger_env, files):
    rows = seed_approvals(sandbox, "alfred", range(2 * ROWS if files == "two files" else ROWS))
    if files == "one file":
        paths = [_write(rows, tmp_path / "d.csv")] * 2
        # the second run's first claim is the chunks the first has not taken: rows 81 on
        opener = {r["invoice_id"] for r in rows[80:]}
    else:
        paths = [_write(rows[:ROWS], tmp_path / "a.csv"), _write(rows[ROWS:], tmp_path / "b.csv")]
        opener = {r["invoice_id"] for r in rows[ROWS:]}
    env = _env(tmp_path, ledger_env)
    env.update(grant_log_env(tmp_path / "grants.log", env))  # both runs' grant times, one machine-wide clock
    args = ["--no-progress", "--chunk-size", "40"]  # 2 chunks in flight per vendor: 80 rows claimed at once
    with Gate(sandbox, hold_after=20, opener=opener) as gate:
        first = _cli(["run", str(paths[0]), "--out", str(tmp_path / "r1"), *args], env)
        deadline = time.monotonic() + 180
        while not gate.held.is_set():  # the first run is sending, and held mid-chunk
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = _cli(["run", str(paths[1]), "--out", str(tmp_path / "r2"), *args], env)
        outputs = [p.communicate(timeout=300) for p in (first, second)]
        assert gate.open.is_set()
    for proc, (_, stderr) in zip((first, second), outputs, strict=True):
        assert proc.returncode == 0, stderr.decode()[-3000:]
    results = [pd.read_parquet(tmp_path / d / "results.parquet") for d in ("r1", "r2")]

    for path, result in zip(paths, results, strict=True):  # every row of each run accounted for
        assert len(result) == len(pd.read_csv(path))
        assert result["outcome"].isin(["succeeded", "skipped"]).all()
        skipped = result[result["outcome"] == "skipped"]
        assert skipped["error_code"].isin([ErrorCode.IN_PROGRESS.value, ErrorCode.ALREADY_DONE.value]).all()
    for row in rows:  # no invoice acknowledged twice, none missed
        assert sandbox.changes("alfred", row["invoice_id"]) == 1
    requests_made = changing_requests(sandbox, "alfred")
    assert len(requests_made) == len(rows)  # nothing sent twice: the claims held
    succeeded = [set(r.loc[r["outcome"] == "succeeded", "invoice_id"]) for r in results]
    assert all(succeeded) and not (succeeded[0] & succeeded[1])  # both sent, never the same decision
    if files == "one file":
        in_progress = results[1][results[1]["error_code"] == ErrorCode.IN_PROGRESS.value]
        assert len(in_progress) and in_progress["error_message"].str.contains("is sending this decision").all()
        assert set(succeeded[0]) | set(succeeded[1]) == {r["invoice_id"] for r in rows}
    # both sent at once after the gate opened, and never above the limit together
    arrivals = [t for t, _, p in sandbox.request_log("alfred")]
    grants = read_grants(tmp_path / "grants.log")
    assert len(grants) == len(arrivals)  # every request the two runs sent took a slot of the one schedule
    assert max_in_window(grants) <= RATE, _busiest_second(grants)  # exactly, where the limit is kept
    assert max_arrivals_in_window(arrivals) <= RATE, (_busiest_second(arrivals), gate.opened_at, sorted(arrivals)[:3])
    starts = [r.loc[r["outcome"] == "succeeded", "finished_at"] for r in results]
    assert starts[1].min() < starts[0].max()  # the two runs' answers interleave

    third = _cli(["run", str(paths[0]), "--out", str(tmp_path / "r3"), *args], env)
    _, stderr = third.communicate(timeout=300)
    assert third.returncode == 0, stderr.decode()[-3000:]
    done = pd.read_parquet(tmp_path / "r3" / "results.parquet")
    assert (done["error_code"] == ErrorCode.ALREADY_DONE.value).all()
    assert len(changing_requests(sandbox, "alfred")) == len(rows)  # the third run sent nothing
