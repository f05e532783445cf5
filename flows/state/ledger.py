"""The durable ledger: each decision's last outcome at its vendor, recorded as it happens.

A row is written only after the vendor answered (so "succeeded" always means the vendor said
so), and committed before the next decision of that sending thread goes out: after a crash,
`kill -9` included, only the requests that were in flight are unknown, and a rerun sends
exactly those again (vendors treat "already in that state" as success, so that is safe).

Commits are grouped: one writer thread commits every answer waiting at that moment in one
transaction, and each sender waits for the commit that holds its own row. The guarantee is
the same as a commit per row; the cost is one commit per group instead of one per row, so
dozens of sending threads do not queue behind each other. The writer runs its own statement
texts on its DBAPI connection, one multi-row statement per table and group
(`flows/state/statements.py`): SQLAlchemy compiles its SQLite and PostgreSQL upserts anew on
every execute (they have no cache key), and an `executemany` gives the GIL back once per row,
each time a wait for it that every sender of the group shares.

Keyed by vendor and invoice, with the `payload` that was sent (decision, invoice_number,
void_date): a changed decision for the same invoice is a new decision and is sent.

Claims keep two runs from sending the same decision at once. Before a chunk is sent, its rows
are claimed in one transaction (a lease: run id, holder, expiry); a row another live run
holds is not sent (the caller reports it `IN_PROGRESS`), and a row the ledger says already
succeeded is not sent either (`ALREADY_DONE`), even when that answer came after this run
looked. The lease is renewed while the run sends and released row by row once answered; the
claim of a run that died expires (at once, when it ran on this machine and its process is
gone), so a rerun takes it over and the crash bound stays: only requests in flight are unknown.

Every answer's requests (`RowResult.tries`) go to the audit trail in the same transaction as its
ledger row (`flows/state/audit.py`), and a preview's reads (`VendorCheck.tries`) go there alone:
the writer seals each run's audit entries into that run's hash chain as it commits them, so the
chain's order is the commit order.

Default store: SQLite under `INVOICE_SYNC_STATE_DIR` (default `data/state/`). Several workers
share one ledger through PostgreSQL: set `INVOICE_SYNC_LEDGER_URL`
(`postgresql+psycopg://user:pass@host/db`).
"""

from __future__ import annotations

import enum
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
import sqlalchemy.dialects.postgresql
import sqlalchemy.dialects.sqlite

from connectors.redact import redact
from connectors.vocabulary import Decision, ErrorCode, Outcome, RowResult, VendorCheck
from flows.state import audit
from flows.state.audit import Chains, Entry
from flows.state.statements import RowsStatement, placeholder

DEFAULT_STATE_DIR = "data/state"
LEDGER_FILE = "ledger.sqlite"

# Failures worth sending again on a rerun: the vendor never said no to the decision itself.
TRANSIENT_CODES = frozenset(
    {
        ErrorCode.RETRIES_EXHAUSTED,
        ErrorCode.RATE_LIMITED,
        ErrorCode.AUTH_FAILED,
        ErrorCode.BAD_RESPONSE,
        ErrorCode.INTERRUPTED,
        ErrorCode.QUOTA_EXHAUSTED,
    }
)
CLAIM_LEASE = 60.0  # seconds a claim lives unless renewed; renewed every quarter of it while sending
CLAIM_BATCH = 500  # rows per claim statement (six parameters a row: under every driver's limit)


class LedgerState(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED_TRANSIENT = "failed_transient"  # sent again on the next run
    FAILED_PERMANENT = "failed_permanent"  # reported again without a call, unless asked


metadata = sa.MetaData()
decisions_table = sa.Table(
    "decision_ledger",
    metadata,
    sa.Column("vendor", sa.String(32), primary_key=True),
    sa.Column("invoice_id", sa.String(256), primary_key=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("http_status", sa.Integer),
    sa.Column("error_code", sa.String(32)),
    sa.Column("vendor_error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # Added after the first release: `add_missing_columns` adds it to a ledger created before.
    sa.Column("vendor_reference", sa.String(256)),  # the vendor's own reference of its last answer
)


claims_table = sa.Table(
    "decision_claims",
    metadata,
    sa.Column("vendor", sa.String(32), primary_key=True),
    sa.Column("invoice_id", sa.String(256), primary_key=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("holder", sa.String(200), nullable=False),  # ClaimHolder.token: which process holds it
    sa.Column("expires_at", sa.Float, nullable=False),  # Unix seconds
)


# Each vendor's requests per UTC day, every run and worker together (`<VENDOR>_DAILY_LIMIT`):
# taken in blocks by connectors.sending.quota, never a transaction per request.
quota_table = sa.Table(
    "vendor_daily_requests",
    metadata,
    sa.Column("vendor", sa.String(32), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),  # ISO date, UTC
    sa.Column("used", sa.Integer, nullable=False),
)


def ledger_url(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    url = env.get("INVOICE_SYNC_LEDGER_URL", "").strip()
    if url:
        return url
    state_dir = Path(env.get("INVOICE_SYNC_STATE_DIR", "").strip() or DEFAULT_STATE_DIR)
    state_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(state_dir / LEDGER_FILE).resolve()}"


COLUMNS = tuple(c.name for c in decisions_table.columns)
KEY_COLUMNS = tuple(c.name for c in decisions_table.primary_key)


def upsert_statement(paramstyle: str) -> RowsStatement:
    """Insert rows or replace those with their keys, many rows per statement: the same text for SQLite and PostgreSQL."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in KEY_COLUMNS)
    return RowsStatement(
        f"INSERT INTO {decisions_table.name} ({', '.join(COLUMNS)})",
        len(COLUMNS),
        placeholder(paramstyle),
        f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {updates}",
    )


def _process_identity() -> str:
    """This machine and PID namespace: a PID means the same process only where both match."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}|{namespace}"


@dataclass(frozen=True)
class ClaimHolder:
    """Who holds a claim: a run (named in messages) and the process it runs in (`token`)."""

    run_id: str
    token: str

    @classmethod
    def for_run(cls, run_id: str) -> ClaimHolder:
        return cls(run_id, f"{_process_identity()}|{os.getpid()}|{uuid.uuid4().hex[:12]}")


def holder_is_gone(token: str) -> bool:
    """True when the holder ran on this machine (same PID namespace) and its process is gone."""
    parts = token.split("|")
    if len(parts) != 4 or f"{parts[0]}|{parts[1]}" != _process_identity():
        return False
    try:
        pid = int(parts[2])
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError, OSError):
        return False  # alive (another user's), or not a PID: leave it to the lease
    return False


@dataclass
class Claims:
    """What claiming a chunk found: the decisions this run may send, and why it may not send the others."""

    won: list[Decision]
    held: dict[int, tuple[str, float]] = field(default_factory=dict)  # row -> (run holding it, lease end)
    done: dict[int, tuple[str, datetime]] = field(default_factory=dict)  # row -> (run that succeeded, when)


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(eq=False)
class _PendingRow:
    values: tuple | None  # in COLUMNS order, as the database driver takes them; None: audit entries only
    entries: list[Entry] = field(default_factory=list)  # sealed into their runs' chains by the writer
    # Held until the writer has committed (or failed to commit) this row: its sender waits on it.
    # A bare lock, not an Event: waiting and waking stay in C (an Event's Condition is Python).
    committed: threading.Lock = field(default_factory=_held_lock)
    error: BaseException | None = None


class Ledger:
    """One ledger store; thread-safe. Open it per run, close it at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True)
        self._upsert = upsert_statement(self.engine.dialect.paramstyle)
        self._mark = placeholder(self.engine.dialect.paramstyle)
        self._prepare_claim_sql()
        self._chains = Chains(self._mark)
        self._timestamp = timestamp_binder(self.engine.dialect)
        create_missing_tables(self.engine)
        add_missing_columns(self.engine)
        # The writer's inbox (None: close). A SimpleQueue and a plain lock keep each hand-off in C:
        # with dozens of sending threads, Python-level Conditions cost the senders' core (docs/performance.md).
        self._pending: queue.SimpleQueue[_PendingRow | None] = queue.SimpleQueue()
        self._handoff = threading.Lock()  # guards `_closing` and the writer's start
        # SQLite has one write lock per file, and a connection that finds it taken sleeps in
        # growing steps before it tries again: a claim or a quota block waiting on the writer's
        # back-to-back commits stalled a vendor, and the writer waiting on a claim stalled every
        # sender (docs/performance.md, "Stalls"). Within this process the write
        # transactions take turns on a lock instead, which wakes the next one the moment the
        # last commits. (PostgreSQL locks rows, not the store: no turns needed there.)
        self._write_turn: AbstractContextManager = threading.Lock() if self.is_sqlite else nullcontext()
        self._closing = False
        self._writer: threading.Thread | None = None
        self.commits = 0  # transactions written (fewer than rows when answers arrive together)

    @classmethod
    def open(cls, environ: Mapping[str, str] | None = None) -> Ledger:
        return cls(ledger_url(environ))

    def describe(self) -> str:
        """Where the ledger lives, without a password."""
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def lookup(self, vendors: Iterable[str]) -> pd.DataFrame:
        """Every ledger row of these vendors (one query per vendor, merged by the caller)."""
        columns = [c.name for c in decisions_table.columns]
        frames = []
        with self.engine.connect() as conn:
            for vendor in vendors:
                rows = conn.execute(sa.select(decisions_table).where(decisions_table.c.vendor == vendor)).all()
                if rows:
                    frames.append(pd.DataFrame(rows, columns=columns))
        if not frames:
            return pd.DataFrame(columns=columns)
        return pd.concat(frames, ignore_index=True)

    def transient_failures(self, run_id: str) -> pd.DataFrame:
        """The decisions run `run_id` left failed for a transient reason (TRANSIENT_CODES), as last recorded."""
        columns = [c.name for c in decisions_table.columns]
        query = sa.select(decisions_table).where(
            decisions_table.c.run_id == run_id, decisions_table.c.state == LedgerState.FAILED_TRANSIENT.value
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(decisions_table.c.vendor, decisions_table.c.invoice_id)).all()
        return pd.DataFrame(rows, columns=columns)

    def record(self, decision: Decision, result: RowResult, run_id: str) -> None:
        """Write one decision's outcome (only for decisions that were actually sent), and its
        requests to the audit trail, in one transaction."""
        pending = self.pending_row(decision, result, run_id)
        if pending is not None:
            self._write(pending)

    def pending_row(self, decision: Decision, result: RowResult, run_id: str) -> _PendingRow | None:
        """What `record` commits for an answer: its ledger row (None when the decision was not
        sent) and its audit entries; None when there is nothing to write."""
        entries = audit.attempt_entries(decision, result.tries, run_id)
        if result.attempts == 0 or result.outcome not in (Outcome.SUCCEEDED, Outcome.FAILED):
            # Requests may have gone out (a token fetch) though the decision itself did not.
            return _PendingRow(None, entries) if entries else None
        if result.outcome is Outcome.SUCCEEDED:
            state = LedgerState.SUCCEEDED
        elif result.error_code in TRANSIENT_CODES:
            state = LedgerState.FAILED_TRANSIENT
        else:
            state = LedgerState.FAILED_PERMANENT
        values = (  # COLUMNS order
            decision.vendor,
            decision.invoice_id,
            decision.payload,
            state.value,
            result.http_status,
            result.error_code.value if result.error_code else None,
            result.vendor_error_code,
            redact(result.error_message or ""),
            result.attempts,
            run_id,
            self._timestamp(result.finished_at or datetime.now(UTC)),
            result.vendor_reference,
        )
        return _PendingRow(values, entries)

    def record_reads(self, decision: Decision, check: VendorCheck, run_id: str) -> None:
        """Write a preview's requests for one decision to the audit trail (the ledger itself is not changed)."""
        entries = audit.attempt_entries(decision, check.tries, run_id)
        if entries:
            self._write(_PendingRow(None, entries))

    def append_audit(self, entry: Entry) -> str:
        """Append one audit entry (a run's register row, an approval, its end) to its run's chain; its hash."""
        pending = _PendingRow(None, [entry])
        self._write(pending)
        return entry.row_hash or ""

    def audit_attempts(self, run_id: str) -> int:
        """The audit attempts this ledger wrote (or found) for a run so far."""
        head = self._chains.head(run_id)
        return head.attempts if head is not None else 0

    def _write(self, pending: _PendingRow) -> None:
        """Hand `pending` to the writer thread; back once it is committed (or its commit failed)."""
        with self._handoff:
            if self._closing:
                raise RuntimeError("the ledger is closed")
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_groups, name="ledger-writer", daemon=True)
                self._writer.start()
            self._pending.put(pending)
        pending.committed.acquire()  # back to the sender only once its row is durable
        if pending.error is not None:
            raise pending.error

    # -- claims ------------------------------------------------------------------------------
    def _prepare_claim_sql(self) -> None:
        """The claim statements as driver text, built once (the same for SQLite and PostgreSQL)."""
        m, claims, ledger = self._mark, claims_table.name, decisions_table.name
        self._claim_rows_statement = RowsStatement(
            f"INSERT INTO {claims} (vendor, invoice_id, payload, run_id, holder, expires_at)",
            6,
            m,
            "ON CONFLICT (vendor, invoice_id) DO UPDATE SET "
            "payload = excluded.payload, run_id = excluded.run_id, holder = excluded.holder, "
            f"expires_at = excluded.expires_at WHERE {claims}.holder = excluded.holder "
            f"OR {claims}.expires_at < excluded.expires_at - {m}",  # expired: its end before now (= ours - lease)
        )
        self._owned_sql = (
            f"SELECT invoice_id FROM {claims} WHERE vendor = {m} AND invoice_id IN ({{keys}}) AND holder = {m}"
        )
        self._holders_sql = f"SELECT invoice_id, holder, run_id, expires_at FROM {claims} WHERE vendor = {m} AND invoice_id IN ({{keys}})"
        self._succeeded_sql = (
            f"SELECT invoice_id, payload, run_id, updated_at FROM {ledger} "
            f"WHERE vendor = {m} AND invoice_id IN ({{keys}}) AND state = '{LedgerState.SUCCEEDED.value}'"
        )
        self._release_sql = f"DELETE FROM {claims} WHERE vendor = {m} AND holder = {m} AND invoice_id IN ({{keys}})"

    def claim(self, decisions: Iterable[Decision], holder: ClaimHolder, lease: float = CLAIM_LEASE) -> Claims:
        """Claim decisions of one vendor for `holder`, in one transaction: see the module's docstring."""
        decisions = list(decisions)
        if not decisions:
            return Claims([])
        vendor = decisions[0].vendor
        by_invoice = {d.invoice_id: d for d in decisions}
        keys = sorted(by_invoice)  # one lock order for every run: concurrent claims never deadlock
        with self._write_turn, self.engine.begin() as conn:
            won = self._claim_rows(conn, vendor, [by_invoice[k] for k in keys], holder, lease)
            others = self._holders(conn, vendor, [k for k in keys if k not in won])
            gone = {token for token, _, _ in others.values() if holder_is_gone(token)}
            if gone:  # claims of processes on this machine that died: taken over now, not at expiry
                conn.execute(
                    claims_table.delete().where(claims_table.c.vendor == vendor, claims_table.c.holder.in_(gone))
                )
                retaken = [k for k, (token, _, _) in others.items() if token in gone]
                won |= self._claim_rows(conn, vendor, [by_invoice[k] for k in retaken], holder, lease)
        # Read after the claim's commit (outside the write lock the ledger's writer also needs): a
        # success recorded by the run that held a row before is committed before that run let go.
        with self.engine.connect() as conn:
            done = self._succeeded(conn, vendor, [by_invoice[k] for k in sorted(won)])
        if done:  # answered meanwhile by another run: not ours to send
            with self._write_turn, self.engine.begin() as conn:
                self._delete_claims(conn, vendor, sorted(done), holder)
        claims = Claims([by_invoice[k] for k in keys if k in won and k not in done])
        for key, (_, run_id, until) in others.items():
            if key not in won:
                claims.held[by_invoice[key].row_number] = (run_id, until)
        for key, answered in done.items():
            claims.done[by_invoice[key].row_number] = answered
        return claims

    def take_quota(self, vendor: str, day: str, wanted: int, limit: int) -> int:
        """Count up to `wanted` more of `vendor`'s requests on `day` within `limit`, in one
        transaction that every other run and worker waits for; returns how many were counted."""
        table, key = quota_table, (quota_table.c.vendor == vendor) & (quota_table.c.day == day)
        insert = (sa.dialects.sqlite.insert if self.is_sqlite else sa.dialects.postgresql.insert)(table)
        with self._write_turn, self.engine.begin() as conn:
            conn.execute(insert.values(vendor=vendor, day=day, used=0).on_conflict_do_nothing())
            conn.execute(table.update().where(key).values(used=table.c.used))  # the row's write lock first
            used = conn.execute(sa.select(table.c.used).where(key)).scalar_one()
            granted = max(0, min(wanted, limit - used))
            if granted:
                conn.execute(table.update().where(key).values(used=table.c.used + granted))
        return granted

    def return_quota(self, vendor: str, day: str, unused: int) -> None:
        """Uncount `unused` requests taken by `take_quota` but never sent."""
        table = quota_table
        with self._write_turn, self.engine.begin() as conn:
            conn.execute(
                table.update()
                .where(table.c.vendor == vendor, table.c.day == day)
                .values(used=sa.case((table.c.used > unused, table.c.used - unused), else_=0))
            )

    def quota_used(self, vendor: str, day: str) -> int:
        """The vendor's requests counted on `day` (UTC, ISO), every run together."""
        with self.engine.connect() as conn:
            used = conn.execute(
                sa.select(quota_table.c.used).where(quota_table.c.vendor == vendor, quota_table.c.day == day)
            ).scalar_one_or_none()
        return used or 0

    def release(self, decisions: Iterable[Decision], holder: ClaimHolder) -> None:
        """Drop `holder`'s claims on these decisions (answered, or never sent)."""
        by_vendor: dict[str, list[str]] = {}
        for d in decisions:
            by_vendor.setdefault(d.vendor, []).append(d.invoice_id)
        with self._write_turn, self.engine.begin() as conn:
            for vendor, keys in by_vendor.items():
                self._delete_claims(conn, vendor, sorted(keys), holder)

    def renew(self, holder: ClaimHolder, lease: float = CLAIM_LEASE) -> int:
        """Extend every claim `holder` has; returns how many it has."""
        with self._write_turn, self.engine.begin() as conn:
            renewed = conn.execute(
                claims_table.update()
                .where(claims_table.c.holder == holder.token)
                .values(expires_at=time.time() + lease)
            )
        return renewed.rowcount

    def _claim_rows(self, conn, vendor: str, decisions: list[Decision], holder: ClaimHolder, lease: float) -> set[str]:
        """Insert or take over (expired, or already ours) the claims; returns the invoices now ours."""
        now = time.time()
        until = now + lease
        rows = [(vendor, d.invoice_id, d.payload, holder.run_id, holder.token, until) for d in decisions]
        for text, values in self._claim_rows_statement.batches(rows, lease):  # many rows per statement
            conn.exec_driver_sql(text, values)
        return set(self._select(conn, self._owned_sql, vendor, [d.invoice_id for d in decisions], holder.token))

    def _holders(self, conn, vendor: str, keys: list[str]) -> dict[str, tuple[str, str, float]]:
        """invoice -> (holder token, run id, lease end) of the claims on `keys`."""
        return {row[0]: tuple(row[1:]) for row in self._select(conn, self._holders_sql, vendor, keys, rows=True)}

    def _succeeded(self, conn, vendor: str, decisions: list[Decision]) -> dict[str, tuple[str, datetime]]:
        """invoice -> (run, when) for the decisions the ledger holds as succeeded, same payload."""
        payloads = {d.invoice_id: d.payload for d in decisions}
        found = self._select(conn, self._succeeded_sql, vendor, sorted(payloads), rows=True)
        return {key: (run_id, _utc(when)) for key, payload, run_id, when in found if payloads[key] == payload}

    def _delete_claims(self, conn, vendor: str, keys: list[str], holder: ClaimHolder) -> None:
        for start in range(0, len(keys), CLAIM_BATCH):
            part = keys[start : start + CLAIM_BATCH]
            text = self._release_sql.format(keys=", ".join([self._mark] * len(part)))
            conn.exec_driver_sql(text, (vendor, holder.token, *part))

    def _select(self, conn, sql: str, vendor: str, keys: list[str], *extra: str, rows: bool = False) -> list:
        """Run `sql` (its `{keys}` a list of placeholders) over `keys`, CLAIM_BATCH at a time."""
        found: list = []
        for start in range(0, len(keys), CLAIM_BATCH):
            part = keys[start : start + CLAIM_BATCH]
            text = sql.format(keys=", ".join([self._mark] * len(part)))
            result = conn.exec_driver_sql(text, (vendor, *part, *extra))
            found.extend(result.all() if rows else result.scalars())
        return found

    def _write_groups(self) -> None:
        """The one writer: commit every row waiting now in one transaction, then wake their senders."""
        connection = None
        try:
            closing = False
            while not closing:
                taken = [self._pending.get()]
                while True:  # and every other row waiting now: one transaction for all of them
                    try:
                        taken.append(self._pending.get_nowait())
                    except queue.Empty:
                        break
                closing = taken[-1] is None  # `close` queues None last, after every row
                group = [row for row in taken if row is not None]
                if not group:
                    continue
                try:
                    connection = connection or self.engine.raw_connection()
                    with self._write_turn:
                        self._commit(connection, group)
                    self.commits += 1
                except BaseException as exc:  # each sender gets the failure of its own commit
                    for row in group:
                        row.error = exc
                    if connection is not None:
                        connection.invalidate()  # a broken connection is not reused: the next group opens another
                        connection = None
                for row in group:
                    row.committed.release()
        finally:
            if connection is not None:
                connection.close()

    def _commit(self, connection, group: list[_PendingRow]) -> None:
        # One row per key, the last: a statement may not touch one row twice (PostgreSQL refuses to).
        latest = {row.values[:2]: row.values for row in group if row.values is not None}
        cursor = connection.cursor()
        try:
            entries, heads = self._chains.seal(connection, (e for row in group for e in row.entries))
            self._upsert.execute(cursor, list(latest.values()))
            for table, values in entries.items():
                self._chains.insert(cursor, table, values)
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        finally:
            cursor.close()
        self._chains.commit(heads)  # only a committed chain moves on

    def close(self) -> None:
        """Write what is pending, stop the writer, release the connections."""
        with self._handoff:
            self._closing = True
            if self._writer is not None:
                self._pending.put(None)  # after every row handed over: they are committed first
        if self._writer is not None:
            self._writer.join()
        self.engine.dispose()


def create_missing_tables(engine: sa.Engine) -> None:
    """Create the tables a ledger lacks (all, for a new one; `decision_claims`, for one made before claims).

    Several workers may open one ledger at once, so each table is created `IF NOT EXISTS`; on
    PostgreSQL two such statements can still collide in its catalogue: a table another process
    created meanwhile is taken as created.
    """
    for table in metadata.sorted_tables:
        try:
            with engine.begin() as conn:
                conn.execute(sa.schema.CreateTable(table, if_not_exists=True))
        except sa.exc.DBAPIError:
            if not sa.inspect(engine).has_table(table.name):
                raise
    audit.create_audit_tables(engine)


def add_missing_columns(engine: sa.Engine) -> None:
    """Bring a ledger made by an earlier version up to this table: add the (nullable) columns it lacks.

    Several workers may open one PostgreSQL ledger at once: `ADD COLUMN IF NOT EXISTS` lets
    them all; SQLite has no such clause, so a column another process added meanwhile is
    taken as added.
    """
    present = {c["name"] for c in sa.inspect(engine).get_columns(decisions_table.name)}
    missing = [c for c in decisions_table.columns if c.name not in present]
    if not missing:
        return
    guard = "" if engine.dialect.name == "sqlite" else "IF NOT EXISTS "
    with engine.begin() as conn:
        for column in missing:
            kind = column.type.compile(dialect=engine.dialect)
            try:
                conn.execute(sa.text(f"ALTER TABLE {decisions_table.name} ADD COLUMN {guard}{column.name} {kind}"))
            except sa.exc.OperationalError as exc:  # SQLite: another process added it first
                if "duplicate column" not in str(exc).lower():
                    raise


def timestamp_binder(dialect: sa.Dialect) -> Callable[[datetime], object]:
    """What SQLAlchemy does to a datetime before the driver sees it (SQLite stores text).

    For SQLite, the same text made by `isoformat` (C) instead of SQLAlchemy's `%`-format of a
    dict: the writer's group commits pay for it once per answer.
    """
    if dialect.name == "sqlite":
        return lambda value: value.replace(tzinfo=None).isoformat(" ", "microseconds")
    return decisions_table.c.updated_at.type.dialect_impl(dialect).bind_processor(dialect) or (lambda value: value)


def _utc(value) -> datetime:
    """A timestamp as the driver gives it (SQLite: text, naive UTC; PostgreSQL: aware) in UTC."""
    stamp = pd.Timestamp(value)
    return (stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)).to_pydatetime()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL + synchronous=NORMAL: a commit survives the process being killed (not a power cut),
    # and readers never block the writer.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
