"""The ledger: reruns send only what is not done, a kill -9 loses nothing, PostgreSQL works too."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from connectors.registry import VENDORS as ALL_VENDORS
from connectors.vocabulary import Decision, ErrorCode, Outcome, RowResult
from flows.cli.main import EXIT_OK, EXIT_ROWS_NOT_DONE, main
from flows.orchestration.temporary_server import free_port
from flows.state.ledger import Ledger, ledger_url
from tests.helpers import missing, seed_approvals

NOW = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)


def result(row, outcome, code=None, attempts=1, status=200, reference=None):
    return RowResult(row, outcome, status, code, None, "msg", attempts, NOW, reference)


# -- the store ---------------------------------------------------------------------------------


def exercise_store(ledger: Ledger) -> None:
    d1 = Decision(1, "000123", "alfred", "approve")
    d2 = Decision(2, "000124", "alfred", "cancel")
    d3 = Decision(3, "000125", "alfred", "approve")
    d4 = Decision(4, "000126", "alfred", "approve")
    ledger.record(d1, result(1, Outcome.SUCCEEDED, reference="corr-0001"), "run-1")
    ledger.record(d2, result(2, Outcome.FAILED, ErrorCode.NOT_FOUND, status=404), "run-1")
    ledger.record(d3, result(3, Outcome.FAILED, ErrorCode.RETRIES_EXHAUSTED, attempts=5, status=503), "run-1")
    ledger.record(d4, result(4, Outcome.FAILED, ErrorCode.AUTH_FAILED, attempts=0, status=None), "run-1")  # never sent
    rows = ledger.lookup(["alfred"]).set_index("invoice_id")
    assert rows.loc["000123", "state"] == "succeeded" and rows.loc["000123", "payload"] == "approve||"
    assert rows.loc["000123", "vendor_reference"] == "corr-0001" and pd.isna(rows.loc["000124", "vendor_reference"])
    assert rows.loc["000124", "state"] == "failed_permanent"
    assert rows.loc["000125", "state"] == "failed_transient"
    assert "000126" not in rows.index  # attempts 0: nothing was sent, nothing to remember
    # the latest answer wins
    ledger.record(d3, result(3, Outcome.SUCCEEDED), "run-2")
    rows = ledger.lookup(["alfred", "modulus"]).set_index("invoice_id")
    assert rows.loc["000125", "state"] == "succeeded" and rows.loc["000125", "run_id"] == "run-2"
    assert len(rows) == 3
    # Two answers for one invoice in one group commit (its rows go in one statement, which
    # PostgreSQL refuses when it touches a row twice): the later answer is kept.
    group = [
        ledger.pending_row(d2, result(2, Outcome.FAILED, ErrorCode.RETRIES_EXHAUSTED, status=503), "run-3"),
        ledger.pending_row(d2, result(2, Outcome.SUCCEEDED, reference="corr-0002"), "run-3"),
    ]
    connection = ledger.engine.raw_connection()
    try:
        ledger._commit(connection, group)
    finally:
        connection.close()
    row = ledger.lookup(["alfred"]).set_index("invoice_id").loc["000124"]
    assert (row["state"], row["run_id"], row["vendor_reference"]) == ("succeeded", "run-3", "corr-0002")


def test_sqlite_store(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    try:
        exercise_store(ledger)
    finally:
        ledger.close()


# The table as the first release created it, before `vendor_reference`.
OLD_TABLE = """CREATE TABLE decision_ledger (
    vendor VARCHAR(32) NOT NULL, invoice_id VARCHAR(256) NOT NULL, payload TEXT NOT NULL,
    state VARCHAR(32) NOT NULL, http_status INTEGER, error_code VARCHAR(32), vendor_error_code VARCHAR(64),
    error_message TEXT, attempts INTEGER NOT NULL, run_id VARCHAR(64) NOT NULL, updated_at {stamp} NOT NULL,
    PRIMARY KEY (vendor, invoice_id))"""
OLD_ROW = (
    "INSERT INTO decision_ledger VALUES ('alfred', '000777', 'approve||', 'succeeded', 202, NULL, NULL, '', 1, "
    "'run-old', '2026-10-31 18:00:00')"
)


def exercise_upgrade(url: str, stamp: str, openers: int = 1) -> None:
    """A ledger created before `vendor_reference` keeps its rows and gains the column (several openers at once)."""
    from concurrent.futures import ThreadPoolExecutor

    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS decision_ledger")
        conn.exec_driver_sql(OLD_TABLE.format(stamp=stamp))
        conn.exec_driver_sql(OLD_ROW)
    engine.dispose()
    with ThreadPoolExecutor(openers) as pool:  # several workers opening one old ledger at the same moment
        ledgers = list(pool.map(lambda _: Ledger(url), range(openers)))
    try:
        ledger = ledgers[0]
        old = ledger.lookup(["alfred"]).set_index("invoice_id").loc["000777"]
        assert (old["state"], old["run_id"]) == ("succeeded", "run-old") and pd.isna(old["vendor_reference"])
        ledger.record(
            Decision(1, "000778", "alfred", "approve"), result(1, Outcome.SUCCEEDED, reference="req-42"), "run-new"
        )
        rows = ledger.lookup(["alfred"]).set_index("invoice_id")
        assert rows.loc["000778", "vendor_reference"] == "req-42" and len(rows) == 2
    finally:
        for ledger in ledgers:
            ledger.close()


def test_a_sqlite_ledger_from_before_vendor_reference_keeps_working(tmp_path):
    exercise_upgrade(f"sqlite:///{tmp_path / 'old.sqlite'}", "DATETIME", openers=3)


def test_concurrent_answers_share_commits_and_all_are_durable(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    url = f"sqlite:///{tmp_path / 'l.sqlite'}"
    ledger = Ledger(url)
    decisions = [Decision(i, f"{i:06d}", "alfred", "approve") for i in range(400)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda d: ledger.record(d, result(d.row_number, Outcome.SUCCEEDED), "run-g"), decisions))
    assert ledger.commits < len(decisions)  # grouped: fewer transactions than rows
    ledger.close()
    reopened = Ledger(url)  # every row was committed before its sender got control back
    assert len(reopened.lookup(["alfred"])) == 400
    reopened.close()


def test_claims_quota_and_answers_take_turns_on_one_sqlite_ledger(tmp_path, monkeypatch):
    """Within one process, the writer's group commits, claims, releases and quota blocks never
    find SQLite's write lock taken (whose busy handler sleeps up to 100 ms a try): with SQLite's
    busy timeout at 0, any overlap would fail at once with "database is locked"."""
    from concurrent.futures import ThreadPoolExecutor

    import flows.state.ledger as ledger_module
    from flows.state.ledger import ClaimHolder

    with_pragmas = ledger_module._sqlite_pragmas

    def no_busy_wait(dbapi_connection, record):
        with_pragmas(dbapi_connection, record)
        dbapi_connection.execute("PRAGMA busy_timeout=0")

    monkeypatch.setattr(ledger_module, "_sqlite_pragmas", no_busy_wait)
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    holder = ClaimHolder.for_run("run-t")
    answers = [Decision(i, f"{i:06d}", "alfred", "approve") for i in range(600)]
    chunks = [[Decision(i, f"c{k}-{i:04d}", "modulus", "cancel") for i in range(50)] for k in range(30)]

    def claim_and_release(chunk):
        claims = ledger.claim(chunk, holder)
        ledger.release(claims.won, holder)
        return len(claims.won)

    with ThreadPoolExecutor(24) as pool:
        recorded = pool.map(lambda d: ledger.record(d, result(d.row_number, Outcome.SUCCEEDED), "run-t"), answers)
        claimed = pool.map(claim_and_release, chunks)
        taken = pool.map(lambda _: ledger.take_quota("appzen", "2026-11-30", 10, 300_000), range(30))
        assert (len(list(recorded)), sum(claimed), sum(taken)) == (600, 1500, 300)
    assert ledger.quota_used("appzen", "2026-11-30") == 300
    ledger.close()


def test_a_failed_commit_reaches_its_senders_and_the_writer_recovers(tmp_path):
    from flows.state.ledger import metadata

    ledger = Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}")
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE decision_ledger")
    with pytest.raises(Exception, match="no such table"):
        ledger.record(Decision(1, "1", "alfred", "approve"), result(1, Outcome.SUCCEEDED), "run-x")
    metadata.create_all(ledger.engine)
    ledger.record(Decision(2, "2", "alfred", "approve"), result(2, Outcome.SUCCEEDED), "run-x")  # a fresh connection
    assert ledger.lookup(["alfred"])["invoice_id"].tolist() == ["2"]
    ledger.close()


def test_default_location_follows_state_dir(tmp_path):
    url = ledger_url({"INVOICE_SYNC_STATE_DIR": str(tmp_path / "st")})
    assert url == f"sqlite:///{tmp_path / 'st' / 'ledger.sqlite'}" and (tmp_path / "st").is_dir()
    assert ledger_url({"INVOICE_SYNC_LEDGER_URL": "postgresql+psycopg://u@h/db"}) == "postgresql+psycopg://u@h/db"


# -- reruns ------------------------------------------------------------------------------------


def run(args, capsys):
    code = main([*args, "--no-progress"])
    capsys.readouterr()
    return code


def changing_requests(sandbox, vendor):
    return [p for _, m, p in sandbox.request_log(vendor) if not p.endswith("/Authenticate")]


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_rerun_sends_only_what_is_not_done(sandbox, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALFRED_MAX_ATTEMPTS", "2")
    rows = seed_approvals(sandbox, "alfred", range(6))
    rows.append({"invoice_id": "A99999", "vendor": "alfred", "decision": "approve"})  # unknown: permanent failure
    sandbox.inject("alfred", "503", times=2, invoice_id=rows[1]["invoice_id"])  # transient, retries run out
    path = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(path, index=False)

    assert run(["run", str(path), "--out", str(tmp_path / "r1")], capsys) == EXIT_ROWS_NOT_DONE
    first = pd.read_parquet(tmp_path / "r1" / "results.parquet").set_index("invoice_id")
    run1 = first["run_id"].iloc[0]
    assert first.loc["A00001", "error_code"] == "RETRIES_EXHAUSTED"
    assert first.loc["A99999", "error_code"] == "NOT_FOUND"
    sent_before = len(changing_requests(sandbox, "alfred"))

    assert run(["run", str(path), "--out", str(tmp_path / "r2")], capsys) == EXIT_ROWS_NOT_DONE
    second = pd.read_parquet(tmp_path / "r2" / "results.parquet").set_index("invoice_id")
    # successes come back skipped, naming the run that did them
    done = second.drop(index=["A00001", "A99999"])
    assert (done["outcome"] == "skipped").all() and (done["error_code"] == "ALREADY_DONE").all()
    assert (done["previous_run_id"] == run1).all() and (done["attempts"] == 0).all()
    # the transient failure is tried again and now succeeds
    assert second.loc["A00001", "outcome"] == "succeeded" and second.loc["A00001", "attempts"] == 1
    # the permanent failure is reported again, without a call
    again = second.loc["A99999"]
    assert (again["outcome"], again["error_code"], again["attempts"]) == ("failed", "NOT_FOUND", 0)
    assert again["previous_run_id"] == run1 and "not re-sent" in again["error_message"]
    assert len(changing_requests(sandbox, "alfred")) == sent_before + 1  # only A00001

    # --retry-failed asks the vendor again
    assert run(["run", str(path), "--out", str(tmp_path / "r3"), "--retry-failed"], capsys) == EXIT_ROWS_NOT_DONE
    third = pd.read_parquet(tmp_path / "r3" / "results.parquet").set_index("invoice_id")
    assert third.loc["A99999", "attempts"] == 1
    assert len(changing_requests(sandbox, "alfred")) == sent_before + 2
    for row in rows[:6]:
        assert sandbox.changes("alfred", row["invoice_id"]) == 1


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_the_vendors_reference_is_in_the_results_and_the_ledger_and_on_reruns(sandbox, tmp_path, capsys, state_dir):
    rows = [row for v in ("appzen", "alfred") for row in seed_approvals(sandbox, v, range(3))]
    rows.append(
        {
            "invoice_id": "00000000-0000-4000-8000-00000000ffff",
            "vendor": "appzen",
            "decision": "approve",
            "invoice_number": "N-x",
        }
    )  # unknown to AppZen: its 404 is named too
    path = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert run(["run", str(path), "--out", str(tmp_path / "r1")], capsys) == EXIT_ROWS_NOT_DONE
    first = pd.read_parquet(tmp_path / "r1" / "results.parquet").set_index("invoice_id")
    appzen, alfred = first[first["vendor"] == "appzen"], first[first["vendor"] == "alfred"]
    assert appzen["vendor_reference"].str.fullmatch(r"[0-9a-f-]{36}").all()  # x-correlation-id, every answer
    assert appzen["vendor_reference"].is_unique
    assert alfred["vendor_reference"].isna().all()  # the simulated alfred names no answer: none invented
    ledger = Ledger(ledger_url({"INVOICE_SYNC_STATE_DIR": str(state_dir)}))
    try:
        kept = ledger.lookup(["appzen"]).set_index("invoice_id")["vendor_reference"]
    finally:
        ledger.close()
    assert kept.to_dict() == appzen["vendor_reference"].to_dict()
    # A rerun names the answer its outcome comes from: the earlier success, the earlier refusal.
    assert run(["run", str(path), "--out", str(tmp_path / "r2")], capsys) == EXIT_ROWS_NOT_DONE
    second = pd.read_parquet(tmp_path / "r2" / "results.parquet").set_index("invoice_id")
    assert set(second.loc[appzen.index, "error_code"]) == {"ALREADY_DONE", "NOT_FOUND"}
    assert second.loc[appzen.index, "vendor_reference"].to_dict() == appzen["vendor_reference"].to_dict()
    assert (second.loc[appzen.index, "attempts"] == 0).all()


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_a_changed_decision_is_sent(sandbox, tmp_path, capsys):
    sandbox.seed("modulus", "35", invoice_number="INV_1")
    path = tmp_path / "d.csv"
    pd.DataFrame([{"invoice_id": "35", "vendor": "modulus", "decision": "approve", "invoice_number": "INV_1"}]).to_csv(
        path, index=False
    )
    assert run(["run", str(path), "--out", str(tmp_path / "r1")], capsys) == EXIT_OK
    pd.DataFrame([{"invoice_id": "35", "vendor": "modulus", "decision": "cancel", "invoice_number": "INV_1"}]).to_csv(
        path, index=False
    )
    assert run(["run", str(path), "--out", str(tmp_path / "r2")], capsys) == EXIT_OK
    assert pd.read_parquet(tmp_path / "r2" / "results.parquet")["outcome"].item() == "succeeded"
    assert sandbox.state("modulus", "35") == "STATUS_VOID"


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_dry_run_consults_the_ledger_without_writing(sandbox, tmp_path, capsys):
    rows = seed_approvals(sandbox, "accounteer", range(4))
    path = tmp_path / "d.csv"
    pd.DataFrame(rows[:2]).to_csv(path, index=False)
    assert run(["run", str(path), "--out", str(tmp_path / "r1")], capsys) == EXIT_OK
    pd.DataFrame(rows).to_csv(path, index=False)
    assert run(["run", str(path), "--out", str(tmp_path / "r2"), "--dry-run"], capsys) == EXIT_OK
    dry = pd.read_parquet(tmp_path / "r2" / "results.parquet")
    assert dry["error_code"].tolist()[:2] == ["ALREADY_DONE"] * 2
    assert dry["outcome"].tolist() == ["skipped"] * 2 + ["would_send"] * 2
    assert dry["error_message"].tolist()[2:] == ["dry run: would be sent"] * 2
    assert len(changing_requests(sandbox, "accounteer")) == 2


# -- kill -9 -----------------------------------------------------------------------------------


def _cli(args, env, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **kwargs,
    )


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_kill_9_mid_run_then_rerun_sends_each_decision_once(sandbox, tmp_path, state_dir):
    from prefect.settings import PREFECT_API_URL

    rows = []
    for vendor in ALL_VENDORS:
        rows += seed_approvals(sandbox, vendor, range(60))
    path = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    env = {**os.environ, "INVOICE_SYNC_STATE_DIR": str(state_dir), "PYTHONUNBUFFERED": "1"}
    concurrency = 4
    for vendor in ALL_VENDORS:  # slow enough to be killed halfway: 60 rows at 20/s per vendor
        env[f"{vendor.upper()}_RATE_LIMIT"] = "20"
        env[f"{vendor.upper()}_MAX_CONCURRENCY"] = str(concurrency)
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the session's test server: no second start-up
    out = tmp_path / "crashed"
    proc = _cli(["run", str(path), "--out", str(out), "--no-progress"], env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sum(len(changing_requests(sandbox, v)) for v in ALL_VENDORS) < 80:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    sent_at_crash = sum(len(changing_requests(sandbox, v)) for v in ALL_VENDORS)
    assert 0 < sent_at_crash < len(rows)
    assert not (out / "results.parquet").exists()  # a crashed run leaves no complete-looking results

    rerun = _cli(["run", str(path), "--out", str(tmp_path / "rerun"), "--no-progress"], env)
    _stdout, stderr = rerun.communicate(timeout=240)
    assert rerun.returncode == EXIT_OK, stderr.decode()[-2000:]
    results = pd.read_parquet(tmp_path / "rerun" / "results.parquet")
    assert len(results) == len(rows) and results["outcome"].isin(["succeeded", "skipped"]).all()
    skipped = int((results["outcome"] == "skipped").sum())
    assert skipped > 0
    for row in rows:  # every decision landed, and no invoice was changed twice
        assert sandbox.changes(row["vendor"], row["invoice_id"]) == 1
    total = sum(len(changing_requests(sandbox, v)) for v in ALL_VENDORS)
    resent = total - len(rows)
    # at most the requests in flight at the moment of the kill were sent a second time
    assert 0 <= resent <= concurrency * len(ALL_VENDORS)
    assert skipped >= sent_at_crash - concurrency * len(ALL_VENDORS)


# -- PostgreSQL --------------------------------------------------------------------------------


def _postgres_binaries() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1, started and stopped here."""
    bin_dir = _postgres_binaries()
    if bin_dir is None:
        missing("no PostgreSQL server binaries (install Debian's postgresql package to run this test)")
    # Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="invoice-sync-pg-"))
    data = base / "data"
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            missing("running as root without runuser: cannot start PostgreSQL")
        shutil.chown(base, "postgres")
        os.chmod(base, 0o700)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    init = subprocess.run(
        [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        capture_output=True,
        text=True,
    )
    if init.returncode != 0:
        missing(f"initdb failed: {init.stderr.strip()[:300]}")
    start = subprocess.run(
        [
            *as_postgres,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(base / "log"),
            "-w",
            "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1",
            "start",
        ],
        capture_output=True,
        text=True,
    )
    if start.returncode != 0:
        missing(f"PostgreSQL did not start: {start.stderr.strip()[:300]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_store(postgres_url):
    ledger = Ledger(postgres_url)
    try:
        with ledger.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM decision_ledger")
        exercise_store(ledger)
        assert "postgresql" in ledger.describe()
    finally:
        ledger.close()


def test_a_postgres_ledger_from_before_vendor_reference_keeps_working(postgres_url):
    exercise_upgrade(postgres_url, "TIMESTAMP WITH TIME ZONE", openers=4)


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_postgres_ledger_end_to_end(postgres_url, sandbox, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INVOICE_SYNC_LEDGER_URL", postgres_url)
    rows = seed_approvals(sandbox, "appzen", range(100, 110))
    path = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert run(["run", str(path), "--out", str(tmp_path / "r1")], capsys) == EXIT_OK
    assert run(["run", str(path), "--out", str(tmp_path / "r2")], capsys) == EXIT_OK
    second = pd.read_parquet(tmp_path / "r2" / "results.parquet")
    assert (second["error_code"] == "ALREADY_DONE").all()
    assert len(changing_requests(sandbox, "appzen")) == len(rows)
