"""The audit trail: every attempt appended in the ledger's commit, a hash chain per run that
`audit verify` checks (SQLite and PostgreSQL), `history` and `audit export` to read it."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from datetime import UTC, datetime

import pandas as pd
import pytest
import sqlalchemy as sa

from connectors.vocabulary import Decision, ErrorCode, HttpAttempt, Outcome, RequestKind, RowResult
from flows.cli.main import EXIT_OK, main
from flows.state import audit
from flows.state.ledger import Ledger
from tests.helpers import seed_approvals
from tests.test_ledger import _cli, changing_requests
from tests.test_ledger import postgres_url as postgres_server  # noqa: F401 - a fixture

NOW = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)
_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """An empty ledger database: a SQLite file, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    server = request.getfixturevalue("postgres_server")
    import psycopg

    name = f"audit_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(server.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server.rsplit('/', 1)[0]}/{name}"


def tries(*statuses: int | None, token: bool = False) -> tuple[HttpAttempt, ...]:
    made = [HttpAttempt(RequestKind.TOKEN, 1, NOW, 900, 200)] if token else []
    for number, status in enumerate(statuses, start=1):
        action = "succeed" if status and status < 300 else "retry" if status is None or status >= 500 else "fail"
        made.append(HttpAttempt(RequestKind.DECISION, number, NOW, 12_000 + number, status, action, None, None, None))
    return tuple(made)


def result(row: int, outcome: Outcome, made: tuple[HttpAttempt, ...], code: ErrorCode | None = None) -> RowResult:
    attempts = sum(t.kind is RequestKind.DECISION for t in made)
    return RowResult(row, outcome, made[-1].http_status, code, None, "msg", attempts, NOW, None, made)


def write_run(ledger: Ledger, run_id: str, decisions: list[tuple[Decision, RowResult]]) -> str:
    """A run as the flow writes it: the register row, the attempts (from several threads), the end."""
    registration = audit.RunRegistration(run_id, "a.user@host", source_path="/in/d.csv", source_sha256="ab" * 32)
    ledger.append_audit(registration.entry())
    threads = [threading.Thread(target=ledger.record, args=(d, r, run_id)) for d, r in decisions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    end = audit.end_entry(
        run_id, "Completed", "done", len(decisions), {"succeeded": 1}, None, ledger.audit_attempts(run_id)
    )
    return ledger.append_audit(end)


def verify_cli(url: str, capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.setenv("INVOICE_SYNC_LEDGER_URL", url)
    code = main(["audit", "verify"])
    out, err = capsys.readouterr()
    return code, out + err


def attempt_row(engine: sa.Engine, run_id: str, seq: int) -> dict:
    with engine.connect() as conn:
        table = audit.attempts_table
        return dict(conn.execute(sa.select(table).where(table.c.run_id == run_id, table.c.seq == seq)).mappings().one())


def test_verify_names_the_edited_the_removed_and_the_inserted_row(store_url, capsys, monkeypatch):
    ledger = Ledger(store_url)
    decisions = [
        (Decision(1, "000123", "alfred", "approve"), result(1, Outcome.SUCCEEDED, tries(202))),
        (Decision(2, "000124", "alfred", "cancel"), result(2, Outcome.SUCCEEDED, tries(503, 503, 202))),
        (Decision(3, "4242", "modulus", "approve"), result(3, Outcome.SUCCEEDED, tries(200, token=True))),
        (Decision(4, "000125", "alfred", "approve"), result(4, Outcome.FAILED, tries(404), ErrorCode.NOT_FOUND)),
    ]
    other = [(Decision(1, "000900", "alfred", "approve"), result(1, Outcome.SUCCEEDED, tries(202)))]
    try:
        # Two runs at once, each its own chain; every request is one attempt row (a token fetch too).
        runs = [threading.Thread(target=write_run, args=(ledger, "run-1", decisions))]
        runs.append(threading.Thread(target=write_run, args=(ledger, "run-2", other)))
        for thread in runs:
            thread.start()
        for thread in runs:
            thread.join()
        assert ledger.audit_attempts("run-1") == 7 and ledger.audit_attempts("run-2") == 1
    finally:
        ledger.close()
    engine = sa.create_engine(store_url)
    table = audit.attempts_table
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(table.c.seq, table.c.kind).where(table.c.run_id == "run-1")).all()
        assert sorted(seq for seq, _ in rows) == list(range(1, 8))  # seq 0 is the register row, 8 the end
        assert sorted(kind for _, kind in rows).count("token") == 1
        report = audit.verify(engine)
        assert report.intact and report.runs == 2 and report.entries == 9 + 3 and not report.unfinished
        assert verify_cli(store_url, capsys, monkeypatch) == (EXIT_OK, "audit verify: 2 runs, 12 entries: intact\n")

        # edited: a 503 made into a 202
        original = attempt_row(engine, "run-1", 3)
        with engine.begin() as conn:
            conn.execute(table.update().where(table.c.run_id == "run-1", table.c.seq == 3).values(http_status=202))
        code, text = verify_cli(store_url, capsys, monkeypatch)
        invoice = f"{original['vendor']} {original['invoice_id']}"
        assert code == 1 and f"run run-1: audit_attempts seq 3 ({invoice}): its content no longer" in text, text
        assert "1 broken" in text
        with engine.begin() as conn:
            conn.execute(
                table.update()
                .where(table.c.run_id == "run-1", table.c.seq == 3)
                .values(http_status=original["http_status"])
            )
        assert verify_cli(store_url, capsys, monkeypatch)[0] == EXIT_OK

        # removed: the row after the gap is named; put back as it was, the chain holds again
        removed = attempt_row(engine, "run-1", 5)
        with engine.begin() as conn:
            conn.execute(table.delete().where(table.c.run_id == "run-1", table.c.seq == 5))
        code, text = verify_cli(store_url, capsys, monkeypatch)
        assert code == 1 and "run run-1: audit_attempts seq 6" in text, text
        assert "entries 5..5 before it are missing: removed" in text
        with engine.begin() as conn:
            conn.execute(table.insert().values(**removed))
        assert verify_cli(store_url, capsys, monkeypatch)[0] == EXIT_OK

        # inserted: a forged approval, well formed, its hash right, chained to seq 2 and given seq 3
        approvals = audit.approvals_table
        forged = audit.approval_entry("run-1", audit.ApprovalOutcome.APPROVED, "mallory", "", None).values
        forged.update(seq=3, prev_hash=attempt_row(engine, "run-1", 2)["row_hash"])
        forged["row_hash"] = audit.entry_hash(approvals.name, forged)
        with engine.begin() as conn:
            conn.execute(approvals.insert().values(**forged))
        code, text = verify_cli(store_url, capsys, monkeypatch)
        assert code == 1 and "run run-1: audit_approvals seq 3: an entry with the seq of another" in text, text
        with engine.begin() as conn:
            conn.execute(approvals.delete().where(approvals.c.approver == "mallory"))

        # inserted after the run's end, chained to it: still caught
        with engine.connect() as conn:
            end = conn.execute(sa.select(audit.ends_table).where(audit.ends_table.c.run_id == "run-1")).mappings().one()
        late = {**attempt_row(engine, "run-1", 1), "invoice_id": "000999", "seq": end["seq"] + 1}
        late["prev_hash"] = end["row_hash"]
        late["row_hash"] = audit.entry_hash(table.name, late)
        with engine.begin() as conn:
            conn.execute(table.insert().values(**late))
        code, text = verify_cli(store_url, capsys, monkeypatch)
        assert code == 1 and f"audit_attempts seq {end['seq'] + 1} (alfred 000999): after the run's end" in text, text
        assert "run-2" not in text  # the other run's chain is its own, and intact
    finally:
        engine.dispose()


# -- history, after a run with retries and a crash ----------------------------------------------


def invoice_requests(sandbox, vendor: str, invoice_id: str) -> int:
    return sum(1 for p in changing_requests(sandbox, vendor) if p.endswith(f"/{invoice_id}"))


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_history_after_retries_and_a_crash_shows_every_attempt(sandbox, tmp_path, state_dir, capsys):
    from prefect.settings import PREFECT_API_URL

    rows = seed_approvals(sandbox, "alfred", range(80))
    retried = rows[0]["invoice_id"]
    sandbox.inject("alfred", "503", times=2, invoice_id=retried)  # answered 503, 503, then 202
    path = tmp_path / "d.csv"
    frame = pd.DataFrame(rows).assign(decided_by="m.ortiz")
    frame.to_csv(path, index=False)
    env = {**os.environ, "INVOICE_SYNC_STATE_DIR": str(state_dir), "PYTHONUNBUFFERED": "1"}
    env.update(ALFRED_RATE_LIMIT="20", ALFRED_MAX_CONCURRENCY="2", PREFECT_API_URL=PREFECT_API_URL.value())
    crashed = _cli(["run", str(path), "--out", str(tmp_path / "crashed"), "--submitted-by", "a.clerk"], env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(changing_requests(sandbox, "alfred")) < 30:
        assert crashed.poll() is None, crashed.communicate()
        time.sleep(0.05)
    os.killpg(crashed.pid, signal.SIGKILL)
    crashed.wait()
    assert invoice_requests(sandbox, "alfred", retried) == 3  # its retries were all made before the kill

    assert main(["run", str(path), "--out", str(tmp_path / "rerun"), "--no-progress"]) == EXIT_OK
    capsys.readouterr()

    assert main(["history", retried, "--vendor", "alfred", "--json"]) == EXIT_OK
    (run,) = json.loads(capsys.readouterr().out)  # the rerun skipped it (ALREADY_DONE): no request, no attempt
    assert run["ended_at"] is None and run["submitted_by"] == "a.clerk" and run["decided_by"] == ["m.ortiz"]
    assert run["source_sha256"] == audit.fingerprint(path)[1] and run["started_by"].endswith("submitted by a.clerk")
    made = run["attempts_made"]  # newest first
    assert [(a["attempt"], a["http_status"], a["action"]) for a in made] == [
        (3, 202, "succeed"),
        (2, 503, "retry"),
        (1, 503, "retry"),
    ]
    assert all(a["payload"] == f"approve|{rows[0]['invoice_number']}|" and a["latency_us"] > 0 for a in made)

    # Every answered request of both runs is in the trail; only those in flight at the kill are not.
    engine = sa.create_engine(f"sqlite:///{state_dir / 'ledger.sqlite'}")
    with engine.connect() as conn:
        audited = pd.DataFrame(conn.execute(sa.select(audit.attempts_table)).mappings().all())
    engine.dispose()
    assert audited["run_id"].nunique() == 2
    for row in rows:
        sent = invoice_requests(sandbox, "alfred", row["invoice_id"])
        recorded = int((audited["invoice_id"] == row["invoice_id"]).sum())
        assert recorded == sent or (recorded == sent - 1 and sandbox.changes("alfred", row["invoice_id"]) == 1)
    lost = sum(invoice_requests(sandbox, "alfred", r["invoice_id"]) for r in rows) - len(audited)
    assert 0 <= lost <= 2  # the kill caught at most one request per sending thread

    capsys.readouterr()
    assert main(["history", rows[50]["invoice_id"]]) == EXIT_OK  # sent by the rerun, at least
    text = capsys.readouterr().out
    assert "attempt 1" in text and "HTTP 202" in text
    assert main(["audit", "verify"]) == EXIT_OK  # the crashed run's chain holds; it is named unfinished
    out = capsys.readouterr().out
    assert "1 runs never finished" in out and "entries: intact" in out


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_export_writes_the_period_for_an_auditor(sandbox, tmp_path, capsys):
    rows = seed_approvals(sandbox, "modulus", range(3))  # a token fetch, then three decisions
    path = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--no-progress"]) == EXIT_OK
    today = datetime.now(UTC).date().isoformat()
    for suffix in (".parquet", ".csv", ".xlsx"):
        out = tmp_path / f"audit{suffix}"
        assert main(["audit", "export", "--since", today, "--until", today, "--out", str(out)]) == EXIT_OK
    attempts = pd.read_parquet(tmp_path / "audit.parquet")
    assert sorted(attempts["kind"]) == ["decision"] * 3 + ["token"]
    runs = pd.read_csv(tmp_path / "audit_runs.csv")
    assert len(runs) == 1 and runs.loc[0, "state"] == "Completed" and runs.loc[0, "attempts"] == 4
    assert runs.loc[0, "source_sha256"] == audit.fingerprint(path)[1]
    assert json.loads((tmp_path / "r" / "audit.json").read_text())["chain_head"] == runs.loc[0, "chain_head"]
    from python_calamine import CalamineWorkbook

    workbook = CalamineWorkbook.from_path(str(tmp_path / "audit.xlsx"))
    assert workbook.sheet_names == ["attempts", "runs"]
    secrets = [v for k, v in sandbox.env().items() if not k.endswith("_URL")]
    cells = (tmp_path / "audit.csv").read_text() + (tmp_path / "audit_runs.csv").read_text()
    assert secrets and not any(secret in cells for secret in secrets)  # no credential in any cell
    yesterday = (datetime.now(UTC) - pd.Timedelta(days=2)).date().isoformat()
    assert main(["audit", "export", "--since", yesterday, "--until", yesterday, "--out", str(tmp_path / "e.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "e.csv")) == 0
