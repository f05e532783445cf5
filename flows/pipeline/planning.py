"""Planning: decide, before anything is sent, what each row's fate is.

Rows that broke a rule are rejected; a repeated decision is sent once; opposite decisions for
one invoice are both held back; rows of vendors left out of the run are skipped. What is left
is listed per vendor (the orchestration cuts it into chunks); the ledger's history then takes
out what an earlier run already did.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd

from connectors.vocabulary import Decision, ErrorCode, Outcome, RowResult, payload_text

if TYPE_CHECKING:
    from datetime import datetime
    from typing import NamedTuple

KEY = ["vendor", "invoice_id"]


@dataclass
class Plan:
    """Per-row decisions made before sending, and the rows to send per vendor."""

    outcome: np.ndarray  # object: Outcome value or None (to be sent) per row, in file order
    error_code: np.ndarray  # object: ErrorCode value or None
    error_message: np.ndarray  # object: str
    to_send: dict[str, np.ndarray] = field(default_factory=dict)  # vendor -> row positions
    previous_run_id: np.ndarray | None = None  # object: the earlier run a row's outcome comes from
    vendor_reference: np.ndarray | None = None  # object: the vendor's reference of that earlier answer

    @property
    def send_count(self) -> int:
        return int(sum(len(p) for p in self.to_send.values()))


def plan_rows(
    frame: pd.DataFrame,
    row_errors: dict[int, list[str]],
    vendors: Iterable[str] | None = None,
    known_vendors: Iterable[str] = (),
) -> Plan:
    """Fix the fate of every row that will not be sent, and list the ones that will.

    With `vendors`, the rows of the other `known_vendors` are left out on purpose: `skipped`
    (VENDOR_NOT_INCLUDED) whether they are valid or not, since they are another run's to send
    and to report. A row whose vendor is missing or unknown is still checked, and rejected: it
    may be meant for this run.
    """
    n = len(frame)
    outcome = np.full(n, None, dtype=object)
    error_code = np.full(n, None, dtype=object)
    message = np.full(n, "", dtype=object)
    row_numbers = frame["row_number"].to_numpy()

    if vendors is not None:
        chosen = list(vendors)
        others = [v for v in known_vendors if v not in chosen]
        left_out = frame["vendor"].isin(others).fillna(False).to_numpy(dtype=bool)
        outcome[left_out] = Outcome.SKIPPED.value
        error_code[left_out] = ErrorCode.VENDOR_NOT_INCLUDED.value
        message[left_out] = f"vendor not included in this run (only {', '.join(chosen)})"

    if row_errors:
        rejected = np.flatnonzero(np.isin(row_numbers, np.fromiter(row_errors, dtype=np.int64)))
        rejected = rejected[outcome[rejected] == None]  # noqa: E711 - a left-out vendor's rows stay skipped
        outcome[rejected] = Outcome.REJECTED.value
        error_code[rejected] = ErrorCode.INVALID_ROW.value
        message[rejected] = ["; ".join(row_errors[int(row_numbers[i])]) for i in rejected]

    open_ = outcome == None  # noqa: E711 - elementwise comparison on an object array
    _mark_repeats(frame, open_, row_numbers, outcome, error_code, message)

    if vendors is not None:  # never send to a vendor that was not chosen, whatever the rules let through
        stray = (outcome == None) & ~frame["vendor"].isin(chosen).fillna(False).to_numpy(dtype=bool)  # noqa: E711
        outcome[stray] = Outcome.SKIPPED.value
        error_code[stray] = ErrorCode.VENDOR_NOT_INCLUDED.value
        message[stray] = f"vendor not included in this run (only {', '.join(chosen)})"

    sendable = np.flatnonzero(outcome == None)  # noqa: E711
    vendor_of = frame["vendor"].to_numpy()[sendable]
    to_send = {str(v): sendable[vendor_of == v] for v in pd.unique(vendor_of)}
    return Plan(outcome, error_code, message, to_send)


def _mark_repeats(frame, open_, row_numbers, outcome, error_code, message) -> None:
    """Same decision twice: send the first only. Opposite decisions: send none, say why.

    Vectorised over all groups at once (a file with many repeats must not loop per group in
    pandas); only the messages of conflicting groups are built row by row.
    """
    candidates = frame.loc[open_, [*KEY, "decision"]]
    repeated = candidates.duplicated(KEY, keep=False).to_numpy()
    if not repeated.any():
        return
    groups = candidates[repeated]
    positions = np.flatnonzero(open_)[repeated]  # ascending: file order
    keyed = groups[KEY].notna().all(axis=1).to_numpy()  # like groupby: rows missing a key stay open
    groups, positions = groups[keyed], positions[keyed]
    if not len(positions):
        return
    code = groups.groupby(KEY, sort=False).ngroup().to_numpy()
    distinct = groups.groupby(code, sort=False)["decision"].nunique()
    conflicting = distinct.reindex(code).to_numpy() > 1
    _, first_at = np.unique(code, return_index=True)  # each group's first row (positions ascend)
    first_row = row_numbers[positions[first_at]][code]  # per row: its group's first row number
    later = ~conflicting & (positions != positions[first_at][code])

    skipped = positions[later]
    outcome[skipped] = Outcome.SKIPPED.value
    error_code[skipped] = ErrorCode.DUPLICATE_ROW.value
    message[skipped] = [f"same decision as row {r}: sent once" for r in first_row[later].tolist()]

    if conflicting.any():
        held = positions[conflicting]
        held_code = code[conflicting]
        order = np.argsort(held_code, kind="stable")  # by group, file order within each
        rows = row_numbers[held].tolist()
        said_by = groups["decision"].to_numpy()[conflicting].tolist()
        texts: dict[int, list[str]] = {}
        for i in order.tolist():
            texts.setdefault(int(held_code[i]), []).append(f"row {rows[i]} says {said_by[i]}")
        joined = {c: f"conflicting decisions for this invoice ({', '.join(t)}): none sent" for c, t in texts.items()}
        outcome[held] = Outcome.REJECTED.value
        error_code[held] = ErrorCode.CONFLICTING_ROWS.value
        message[held] = [joined[c] for c in held_code.tolist()]


def decisions_for(frame: pd.DataFrame, positions: np.ndarray) -> list[Decision]:
    """The Decision objects for some rows (built per chunk, never for the whole file)."""
    part = frame.iloc[positions]
    # Whole columns as lists: iterating a pandas (Arrow) column goes through Python per value.
    cols = {
        c: part[c].tolist() if c in part else [None] * len(part)
        for c in ("row_number", "invoice_id", "vendor", "decision", "invoice_number", "void_date")
    }
    return [
        Decision(int(r), str(i), str(v), str(d), _text(n), _text(vd))
        for r, i, v, d, n, vd in zip(
            cols["row_number"],
            cols["invoice_id"],
            cols["vendor"],
            cols["decision"],
            cols["invoice_number"],
            cols["void_date"],
            strict=True,
        )
    ]


def _text(value) -> str | None:
    return None if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) else str(value)


def apply_history(
    frame: pd.DataFrame, plan: Plan, history: pd.DataFrame, *, retry_failed: bool = False
) -> list[RowResult]:
    """Use the ledger: skip what already succeeded, report permanent failures again without a call.

    Only an identical decision (same payload) counts as done; a changed decision is sent.
    Returns the results of permanent failures reported again (attempts 0).
    """
    plan.previous_run_id = np.full(len(frame), None, dtype=object)
    plan.vendor_reference = np.full(len(frame), None, dtype=object)
    if history.empty or not plan.send_count:
        return []
    positions = np.concatenate(list(plan.to_send.values()))
    part = frame.iloc[positions]
    blank = pd.Series("", index=part.index, dtype="string")
    payload = payload_text(
        part["decision"].astype("string"),
        part.get("invoice_number", blank).astype("string"),
        part.get("void_date", blank).astype("string"),
    )
    keys = pd.DataFrame(
        {
            "position": positions,
            "vendor": part["vendor"].astype(str).to_numpy(),
            "invoice_id": part["invoice_id"].astype(str).to_numpy(),
            "sending": payload.astype(str).to_numpy(),
        }
    )
    merged = keys.merge(history, on=["vendor", "invoice_id"], how="inner")
    merged = merged[merged["sending"] == merged["payload"]]
    _skip_done(plan, merged[merged["state"] == "succeeded"])
    reported = [] if retry_failed else _report_failed(plan, merged[merged["state"] == "failed_permanent"], frame)
    settled = np.flatnonzero(plan.outcome != None)  # noqa: E711
    plan.to_send = {v: p[~np.isin(p, settled)] for v, p in plan.to_send.items()}
    plan.to_send = {v: p for v, p in plan.to_send.items() if len(p)}
    return reported


def _skip_done(plan: Plan, done: pd.DataFrame) -> None:
    """Decisions an earlier run already saw succeed: skipped, naming that run."""
    at = pd.to_datetime(done["updated_at"], utc=True).dt.strftime("%Y-%m-%d %H:%M:%S UTC")
    idx = done["position"].to_numpy()
    plan.outcome[idx] = Outcome.SKIPPED.value
    plan.error_code[idx] = ErrorCode.ALREADY_DONE.value
    plan.error_message[idx] = ("already succeeded in run " + done["run_id"] + " at " + at).tolist()
    assert plan.previous_run_id is not None and plan.vendor_reference is not None
    plan.previous_run_id[idx] = done["run_id"].tolist()
    plan.vendor_reference[idx] = [None if pd.isna(v) else v for v in done["vendor_reference"].tolist()]


if TYPE_CHECKING:

    class _History(NamedTuple):
        """A row of `apply_history`'s merge (the keys sent now beside their ledger row), as itertuples gives it."""

        position: int
        vendor: str
        invoice_id: str
        sending: str
        payload: str
        state: str
        http_status: float  # NaN where the ledger holds none
        error_code: str | None
        vendor_error_code: str | None  # NaN where the ledger holds none
        error_message: str
        attempts: int
        run_id: str
        updated_at: datetime
        vendor_reference: str | None  # NaN where the ledger holds none


def _report_failed(plan: Plan, failed: pd.DataFrame, frame: pd.DataFrame) -> list[RowResult]:
    """Decisions a vendor refused for good in an earlier run: reported again, not re-sent."""
    assert plan.previous_run_id is not None
    row_numbers = frame["row_number"].to_numpy()
    reported: list[RowResult] = []
    for f in cast("Iterable[_History]", failed.itertuples(index=False)):
        plan.outcome[f.position] = Outcome.FAILED.value
        plan.previous_run_id[f.position] = f.run_id
        reported.append(
            RowResult(
                int(row_numbers[f.position]),
                Outcome.FAILED,
                None if pd.isna(f.http_status) else int(f.http_status),
                ErrorCode(f.error_code) if f.error_code else ErrorCode.VENDOR_REJECTED,
                None if pd.isna(f.vendor_error_code) else f.vendor_error_code,
                f"reported again from run {f.run_id}, not re-sent (--retry-failed sends it): {f.error_message}",
                0,
                pd.Timestamp(f.updated_at).to_pydatetime(),
                None if pd.isna(f.vendor_reference) else f.vendor_reference,
            )
        )
    return reported
