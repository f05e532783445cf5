"""The audit trail: every run registered, every HTTP attempt appended, each run's entries a hash chain.

Four append-only tables, beside the ledger (same database): `audit_runs` (one row per run, when
it starts: the file, its size and SHA-256, who started it), `audit_approvals` (a four-eyes
decision, or a refused approver), `audit_attempts` (one row per HTTP request: the decision's
attempts, a preview's reads, and the token fetches they needed) and `audit_run_ends` (counts,
state, where the results went). Nothing here updates or deletes a row.

The entries of one run, in all four tables, form one chain ordered by `seq`: the run's register
row is entry 0, each entry holds `prev_hash` (the previous entry's `row_hash`; the first holds
`GENESIS`) and `row_hash`, the SHA-256 of its own content with `prev_hash`, in one canonical
form that SQLite and PostgreSQL both return unchanged (text and integers only; times as
ISO-8601 UTC text). The run's end row holds the chain's head. `verify` recomputes every chain
and names the first entry edited, removed or inserted. A chain per run: concurrent runs never
contend for one. The ledger's group-commit writer (`flows/state/ledger.py`) seals and writes
these entries, so an attempt is in the same transaction as the ledger row it explains.

What the chain proves, and what it does not: anyone who edits a row without recomputing every
hash after it is caught. Someone with write access to the database who recomputes a whole chain
is caught only against a copy of its head kept elsewhere: the head is published in the Prefect
run's markdown artifact and in the results folder (`audit.json`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from connectors.redact import redact
from connectors.vocabulary import Decision, HttpAttempt
from flows.state.statements import RowsStatement

GENESIS = "0" * 64  # the prev_hash of a run's first entry
FINGERPRINT_BLOCK = 1 << 20

metadata = sa.MetaData()


def _chain_columns() -> list[sa.Column]:
    return [
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
    ]


runs_table = sa.Table(
    "audit_runs",
    metadata,
    *_chain_columns(),
    sa.Column("started_at", sa.String(32), nullable=False),
    sa.Column("source_name", sa.Text),
    sa.Column("source_path", sa.Text),
    sa.Column("source_bytes", sa.BigInteger),
    sa.Column("source_sha256", sa.String(64)),
    sa.Column("sheet", sa.Text),
    sa.Column("rows", sa.Integer),
    sa.Column("dry_run", sa.Integer, nullable=False),
    sa.Column("vendors", sa.Text),
    sa.Column("out_dir", sa.Text),
    sa.Column("started_by", sa.Text, nullable=False),  # one line: user@host, or the deployment and its flow run
    sa.Column("os_user", sa.Text),
    sa.Column("host", sa.Text),
    sa.Column("deployment", sa.Text),
    sa.Column("flow_run_id", sa.String(64)),
    sa.Column("root_flow_run_id", sa.String(64)),
    sa.Column("submitted_by", sa.Text),
    sa.Column("file_owner", sa.Text),
    sa.Column("decided_by", sa.Text),  # a JSON list of the file's decided_by values
    sa.Column("approval_policy", sa.Text),
)
approvals_table = sa.Table(
    "audit_approvals",
    metadata,
    *_chain_columns(),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # ApprovalOutcome
    sa.Column("approver", sa.Text),  # as typed in the Prefect UI: Prefect's open-source server has no accounts
    sa.Column("reason", sa.Text),
    sa.Column("plan", sa.Text),  # what was approved: rows per vendor and decision (JSON)
)
attempts_table = sa.Table(
    "audit_attempts",
    metadata,
    *_chain_columns(),
    sa.Column("at", sa.String(32), nullable=False),  # when the request left
    sa.Column("vendor", sa.String(32), nullable=False),
    sa.Column("invoice_id", sa.String(256), nullable=False),
    sa.Column("row_number", sa.Integer),
    sa.Column("decision", sa.String(16)),
    sa.Column("payload", sa.Text),
    sa.Column("kind", sa.String(16), nullable=False),  # decision | read (a preview's) | token
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("http_status", sa.Integer),
    sa.Column("action", sa.String(16)),
    sa.Column("error_code", sa.String(32)),
    sa.Column("vendor_error_code", sa.String(64)),
    sa.Column("vendor_reference", sa.String(256)),
    sa.Column("latency_us", sa.BigInteger),
    sa.Column("message", sa.Text),
    # `history` reads by invoice; an export by time scans (rare, and cheaper than an index every commit pays).
    sa.Index("audit_attempts_by_invoice", "vendor", "invoice_id"),
)
ends_table = sa.Table(
    "audit_run_ends",
    metadata,
    *_chain_columns(),
    sa.Column("ended_at", sa.String(32), nullable=False),
    sa.Column("state", sa.String(64), nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("rows", sa.Integer),
    sa.Column("counts", sa.Text),  # JSON: outcome -> rows
    sa.Column("results_path", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False),  # audit_attempts rows of the run
)
TABLES = (runs_table, approvals_table, attempts_table, ends_table)
COLUMNS = {t.name: tuple(c.name for c in t.columns) for t in TABLES}
CHAIN_COLUMNS = ("run_id", "seq", "prev_hash", "row_hash")  # each table's first four
CONTENT = {t.name: COLUMNS[t.name][len(CHAIN_COLUMNS) :] for t in TABLES}
ATTEMPT_CONTENT = (
    "at",
    "vendor",
    "invoice_id",
    "row_number",
    "decision",
    "payload",
    "kind",
    "attempt",
    "http_status",
    "action",
    "error_code",
    "vendor_error_code",
    "vendor_reference",
    "latency_us",
    "message",
)
assert CONTENT[attempts_table.name] == ATTEMPT_CONTENT  # attempt_entries builds its rows in this order


class ApprovalOutcome:
    APPROVED = "approved"
    REJECTED = "rejected"
    REFUSED = "refused"  # the approver may not approve this file (a decided_by, or the submitter)
    TIMED_OUT = "timed_out"


def utc_text(when: datetime | None = None) -> str:
    """A time as the audit stores it: ISO-8601 UTC text, microseconds, `Z` (sorts as it reads)."""
    when = datetime.now(UTC) if when is None else when
    if when.tzinfo is not UTC:
        when = when.astimezone(UTC)
    return when.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def content_text(table: str, run_id: str, row: tuple) -> str:
    """An entry's content (its run and every column after the chain's, in table order) as one canonical text."""
    return _canonical([table, run_id, *row])


_canonical = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def chained_hash(prev_hash: str, seq: int, content: str) -> str:
    """SHA-256 of an entry in its chain: the previous entry's hash, its seq, its content."""
    return hashlib.sha256(f"{prev_hash}\n{seq}\n{content}".encode()).hexdigest()


def entry_hash(table: str, values: Mapping[str, Any]) -> str:
    """The hash an entry (a row as the database returns it) must hold."""
    row = tuple(values[c] for c in CONTENT[table])
    return chained_hash(values["prev_hash"], values["seq"], content_text(table, values["run_id"], row))


class Entry:
    """One audit entry waiting to be chained: its table and content (run_id included, no seq or hashes).

    Its canonical text and its row's values are prepared when it is made, in the thread that
    made it, so the ledger's single writer only chains it: one SHA-256 per entry."""

    __slots__ = ("content", "row", "row_hash", "run_id", "table")

    def __init__(self, table: str, run_id: str, row: tuple) -> None:
        self.table = table
        self.run_id = run_id
        self.row = row  # CONTENT[table] order
        self.content = content_text(table, run_id, row)
        self.row_hash: str | None = None  # set once sealed

    @classmethod
    def of(cls, table: str, values: Mapping[str, Any]) -> Entry:
        return cls(table, values["run_id"], tuple(values[c] for c in CONTENT[table]))

    @property
    def values(self) -> dict[str, Any]:
        return {"run_id": self.run_id, **dict(zip(CONTENT[self.table], self.row, strict=True))}


def attempt_entries(decision: Decision, tries: Iterable[HttpAttempt], run_id: str) -> list[Entry]:
    """The audit entries of one decision's requests, or of a preview's reads (plain data from the sending side)."""
    table = attempts_table.name
    vendor, invoice, row_number, what, payload = (
        decision.vendor,
        decision.invoice_id,
        decision.row_number,
        decision.decision,
        decision.payload,
    )
    return [
        Entry(
            table,
            run_id,
            (  # ATTEMPT_CONTENT order
                utc_text(t.started_at),
                vendor,
                invoice,
                row_number,
                what,
                payload,
                t.kind.value,
                t.attempt,
                t.http_status,
                t.action,
                t.error_code,
                t.vendor_error_code,
                t.vendor_reference,
                t.latency_us,
                t.message,
            ),
        )
        for t in tries
    ]


@dataclass
class RunRegistration:
    """What the register keeps of a run when it starts."""

    run_id: str
    started_by: str
    dry_run: bool = False
    source_path: str | None = None  # the file read (and hashed)
    source_name: str | None = None  # its name as a person knows it (default: source_path's)
    source_bytes: int | None = None
    source_sha256: str | None = None
    sheet: str | None = None
    rows: int | None = None
    vendors: list[str] | None = None
    out_dir: str | None = None
    os_user: str | None = None
    host: str | None = None
    deployment: str | None = None
    flow_run_id: str | None = None
    root_flow_run_id: str | None = None
    submitted_by: str | None = None
    file_owner: str | None = None
    decided_by: list[str] = field(default_factory=list)
    approval_policy: str | None = None

    def entry(self) -> Entry:
        return Entry.of(
            runs_table.name,
            {
                "run_id": self.run_id,
                "started_at": utc_text(),
                "source_name": self.source_name or (Path(self.source_path).name if self.source_path else None),
                "source_path": self.source_path,
                "source_bytes": self.source_bytes,
                "source_sha256": self.source_sha256,
                "sheet": self.sheet,
                "rows": self.rows,
                "dry_run": int(self.dry_run),
                "vendors": ",".join(self.vendors) if self.vendors else None,
                "out_dir": self.out_dir,
                "started_by": self.started_by,
                "os_user": self.os_user,
                "host": self.host,
                "deployment": self.deployment,
                "flow_run_id": self.flow_run_id,
                "root_flow_run_id": self.root_flow_run_id,
                "submitted_by": self.submitted_by,
                "file_owner": self.file_owner,
                "decided_by": json.dumps(self.decided_by, ensure_ascii=False),
                "approval_policy": self.approval_policy,
            },
        )


def approval_entry(run_id: str, outcome: str, approver: str | None, reason: str, plan: Mapping | None) -> Entry:
    return Entry.of(
        approvals_table.name,
        {
            "run_id": run_id,
            "at": utc_text(),
            "outcome": outcome,
            "approver": approver,
            "reason": redact(reason or ""),
            "plan": json.dumps(plan, sort_keys=True) if plan is not None else None,
        },
    )


def end_entry(
    run_id: str,
    state: str,
    message: str,
    rows: int | None,
    counts: Mapping[str, int] | None,
    results_path: str | None,
    attempts: int,
) -> Entry:
    return Entry.of(
        ends_table.name,
        {
            "run_id": run_id,
            "ended_at": utc_text(),
            "state": state,
            "message": redact(message or ""),
            "rows": rows,
            "counts": json.dumps(dict(counts or {}), sort_keys=True),
            "results_path": results_path,
            "attempts": attempts,
        },
    )


def fingerprint(path: str | os.PathLike) -> tuple[int, str] | None:
    """(size in bytes, SHA-256) of a file as it is now; None when it cannot be read."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as handle:
            while block := handle.read(FINGERPRINT_BLOCK):
                digest.update(block)
                size += len(block)
    except OSError:
        return None
    return size, digest.hexdigest()


# -- sealing: the ledger's writer thread -------------------------------------------------------


@dataclass
class ChainHead:
    next_seq: int
    head: str
    attempts: int = 0


class Chains:
    """Each run's chain head as committed, for the one writer thread that seals entries."""

    def __init__(self, mark: str) -> None:
        self._heads: dict[str, ChainHead] = {}
        self._inserts = {
            t.name: RowsStatement(f"INSERT INTO {t.name} ({', '.join(COLUMNS[t.name])})", len(COLUMNS[t.name]), mark)
            for t in TABLES
        }
        self._mark = mark

    def insert(self, cursor, table: str, rows: list[tuple]) -> None:
        """Insert `rows` of `table`, many rows per statement (see flows/state/statements.py)."""
        self._inserts[table].execute(cursor, rows)

    def head(self, run_id: str) -> ChainHead | None:
        return self._heads.get(run_id)

    def seal(self, connection, entries: Iterable[Entry]) -> tuple[dict[str, list[tuple]], dict[str, ChainHead]]:
        """Give entries their seq and hashes, in order; returns the rows per table and the new heads
        (kept by `commit` only once the transaction holding the rows is committed)."""
        rows: dict[str, list[tuple]] = {}
        heads: dict[str, ChainHead] = {}
        for entry in entries:
            run_id = entry.run_id
            head = heads.get(run_id) or self._heads.get(run_id) or self._load(connection, run_id)
            entry.row_hash = chained_hash(head.head, head.next_seq, entry.content)
            rows.setdefault(entry.table, []).append((run_id, head.next_seq, head.head, entry.row_hash, *entry.row))
            counted = head.attempts + (entry.table == attempts_table.name)
            heads[run_id] = ChainHead(head.next_seq + 1, entry.row_hash, counted)
        return rows, heads

    def commit(self, heads: Mapping[str, ChainHead]) -> None:
        self._heads.update(heads)

    def _load(self, connection, run_id: str) -> ChainHead:
        """The head of a run's chain as the database holds it (a run this process has not written yet)."""
        cursor = connection.cursor()
        try:
            last, head, attempts = -1, GENESIS, 0
            for table in TABLES:
                cursor.execute(
                    f"SELECT seq, row_hash FROM {table.name} WHERE run_id = {self._mark} ORDER BY seq DESC LIMIT 1",
                    (run_id,),
                )
                found = cursor.fetchone()
                if found is not None and found[0] > last:
                    last, head = found
            cursor.execute(f"SELECT COUNT(*) FROM {attempts_table.name} WHERE run_id = {self._mark}", (run_id,))
            attempts = cursor.fetchone()[0]
        finally:
            cursor.close()
        return ChainHead(last + 1, head, attempts)


# -- verifying ---------------------------------------------------------------------------------


@dataclass
class Finding:
    """The first entry of a run whose chain does not hold, and what is wrong with it."""

    run_id: str
    table: str
    seq: int
    what: str
    invoice: str | None = None

    def __str__(self) -> str:
        where = f"{self.table} seq {self.seq}" + (f" ({self.invoice})" if self.invoice else "")
        return f"run {self.run_id}: {where}: {self.what}"


@dataclass
class Verification:
    runs: int = 0
    entries: int = 0
    findings: list[Finding] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # runs with no end entry (crashed, or still running)

    @property
    def intact(self) -> bool:
        return not self.findings


def _entries(conn, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for table in TABLES:
        for row in conn.execute(sa.select(table).where(table.c.run_id == run_id)).mappings():
            found.append((table.name, dict(row)))
    # A tie in seq (an inserted entry) keeps the register row first, then table order.
    return sorted(found, key=lambda e: e[1]["seq"])


def run_ids(engine: sa.Engine) -> list[str]:
    """Every run with an audit entry, in any table."""
    union = sa.union(*(sa.select(t.c.run_id) for t in TABLES)).subquery()
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(union.c.run_id)).scalars())


def verify(engine: sa.Engine, runs: Iterable[str] | None = None) -> Verification:
    """Recompute every run's chain: the first edited, removed or inserted entry of each run is a finding."""
    create_audit_tables(engine)
    report = Verification()
    with engine.connect() as conn:
        for run_id in runs if runs is not None else run_ids(engine):
            entries = _entries(conn, run_id)
            report.runs += 1
            report.entries += len(entries)
            finding = _check_chain(run_id, entries)
            if finding is not None:
                report.findings.append(finding)
            elif entries and entries[-1][0] != ends_table.name:
                report.unfinished.append(run_id)
    return report


def _check_chain(run_id: str, entries: list[tuple[str, dict[str, Any]]]) -> Finding | None:
    """The first entry of a run's chain (ordered by seq) that breaks it; None when it holds."""
    prev, expected, attempts, ended = GENESIS, 0, 0, False
    for i, (table, row) in enumerate(entries):
        invoice = f"{row['vendor']} {row['invoice_id']}" if table == attempts_table.name else None

        def finding(what: str, table=table, row=row, invoice=invoice) -> Finding:
            return Finding(run_id, table, row["seq"], what, invoice)

        if row["seq"] < expected:
            return finding("a second entry with this seq: inserted")
        if i + 1 < len(entries) and entries[i + 1][1]["seq"] == row["seq"] and _is_inserted(entries, i):
            return finding("an entry with the seq of another, which the chain does not go on from: inserted")
        if expected == 0 and (row["seq"] != 0 or table != runs_table.name):
            return finding("the run's register row (seq 0) is missing: removed, or this entry was inserted")
        if row["seq"] > expected:
            return finding(f"entries {expected}..{row['seq'] - 1} before it are missing: removed")
        if entry_hash(table, row) != row["row_hash"]:
            return finding("its content no longer matches its hash: edited")
        if row["prev_hash"] != prev:
            return finding("its prev_hash is not the previous entry's hash: an entry before it was replaced")
        if ended:
            return finding("after the run's end entry: inserted")
        attempts += table == attempts_table.name
        if table == ends_table.name:
            if row["attempts"] != attempts:
                return finding(f"the run's end counts {row['attempts']} attempts, the chain holds {attempts}")
            ended = True
        prev, expected = row["row_hash"], expected + 1
    return None


def _is_inserted(entries: list[tuple[str, dict[str, Any]]], i: int) -> bool:
    """Of entries sharing entry i's seq, whether entry i is one the chain does not go on from."""
    seq = entries[i][1]["seq"]
    following = next((row for _, row in entries[i:] if row["seq"] > seq), None)
    twins = [row for _, row in entries[i:] if row["seq"] == seq]
    if following is None:  # nothing after them tells: the later one is named (`seq < expected`)
        return False
    return entries[i][1]["row_hash"] != following["prev_hash"] and any(
        r["row_hash"] == following["prev_hash"] for r in twins
    )


# -- reading -----------------------------------------------------------------------------------


def create_audit_tables(engine: sa.Engine) -> None:
    """Create the audit tables a database lacks (several processes at once: as the ledger does)."""
    for table in TABLES:
        try:
            with engine.begin() as conn:
                conn.execute(sa.schema.CreateTable(table, if_not_exists=True))
                for index in table.indexes:
                    conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))
        except sa.exc.DBAPIError:
            if not sa.inspect(engine).has_table(table.name):
                raise


def _frame(conn, query) -> pd.DataFrame:
    result = conn.execute(query)
    return pd.DataFrame(result.all(), columns=list(result.keys()))


def runs_frame(conn, run_ids_: Iterable[str] | None = None, since: str | None = None, until: str | None = None):
    """The register, one row per run: its start, its approvals (the last decision) and its end."""
    query = sa.select(runs_table)
    if run_ids_ is not None:
        query = query.where(runs_table.c.run_id.in_(list(run_ids_)))
    if since is not None:
        query = query.where(runs_table.c.started_at >= since)
    if until is not None:
        query = query.where(runs_table.c.started_at < until)
    runs = _frame(conn, query.order_by(runs_table.c.started_at))
    if runs.empty:
        return runs
    ids = runs["run_id"].tolist()
    ends = _frame(
        conn,
        sa.select(
            ends_table.c.run_id,
            ends_table.c.ended_at,
            ends_table.c.state,
            ends_table.c.message.label("end_message"),
            ends_table.c.counts,
            ends_table.c.results_path,
            ends_table.c.attempts,
            ends_table.c.row_hash.label("chain_head"),
        ).where(ends_table.c.run_id.in_(ids)),
    )
    approvals = _frame(
        conn,
        sa.select(
            approvals_table.c.run_id,
            approvals_table.c.seq,
            approvals_table.c.at.label("approval_at"),
            approvals_table.c.outcome.label("approval"),
            approvals_table.c.approver,
            approvals_table.c.reason.label("approval_reason"),
        )
        .where(approvals_table.c.run_id.in_(ids))
        .order_by(approvals_table.c.seq),
    )
    approvals = approvals.drop_duplicates("run_id", keep="last").drop(columns="seq")
    ends = ends.drop_duplicates("run_id", keep="last")
    runs = runs.drop(columns=["seq", "prev_hash", "row_hash"])
    return runs.merge(approvals, on="run_id", how="left").merge(ends, on="run_id", how="left")


def history(engine: sa.Engine, invoice_id: str, vendor: str | None = None) -> list[dict[str, Any]]:
    """Every run that sent (or, a preview, read) this invoice, newest first, each with its attempts (newest first)."""
    create_audit_tables(engine)
    query = sa.select(attempts_table).where(attempts_table.c.invoice_id == invoice_id)
    if vendor is not None:
        query = query.where(attempts_table.c.vendor == vendor)
    with engine.connect() as conn:
        attempts = _frame(conn, query.order_by(attempts_table.c.at.desc(), attempts_table.c.seq.desc()))
        if attempts.empty:
            return []
        runs = runs_frame(conn, attempts["run_id"].unique().tolist())
    out = []
    attempts = attempts.drop(columns=["prev_hash", "row_hash"])
    by_run = {run_id: group for run_id, group in attempts.groupby("run_id", sort=False)}
    for run in runs.sort_values("started_at", ascending=False).to_dict("records"):
        rows = by_run.get(run["run_id"])
        run = {k: _plain(v) for k, v in run.items()}
        run["decided_by"] = json.loads(run["decided_by"]) if run.get("decided_by") else []
        run["counts"] = json.loads(run["counts"]) if run.get("counts") else None
        run["attempts_made"] = (
            [] if rows is None else [{k: _plain(v) for k, v in r.items()} for r in rows.to_dict("records")]
        )
        out.append(run)
    return out


def _plain(value: Any) -> Any:
    """A frame's cell as JSON takes it (NaN and NA become None, numpy numbers Python ones)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def export_frames(engine: sa.Engine, since: str, until: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(attempts, runs) of a period: attempts made, and runs started, at or after `since` and before `until`."""
    create_audit_tables(engine)
    query = sa.select(attempts_table).where(attempts_table.c.at >= since)
    if until is not None:
        query = query.where(attempts_table.c.at < until)
    with engine.connect() as conn:
        attempts = _frame(conn, query.order_by(attempts_table.c.at, attempts_table.c.run_id, attempts_table.c.seq))
        started = runs_frame(conn, since=since, until=until)
        others = sorted(set(attempts["run_id"]) - set(started.get("run_id", pd.Series(dtype=str))))
        if others:  # runs that began before the period and sent in it
            started = pd.concat([runs_frame(conn, others), started], ignore_index=True)
    return attempts, started
