"""Planning: decide, before anything is sent, what each row's fate is.

Rows that broke a rule are rejected; a repeated decision is sent once; opposite decisions for
one invoice are both held back; rows of vendors left out of the run are skipped. What is left
is cut into per-vendor chunks, interleaved so that every vendor starts at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from connectors.base import Decision, ErrorCode, Outcome

KEY = ["vendor", "invoice_id"]


@dataclass
class Plan:
    """Per-row decisions made before sending, and the rows to send per vendor."""

    outcome: np.ndarray  # object: Outcome value or None (to be sent) per row, in file order
    error_code: np.ndarray  # object: ErrorCode value or None
    error_message: np.ndarray  # object: str
    to_send: dict[str, np.ndarray] = field(default_factory=dict)  # vendor -> row positions

    @property
    def send_count(self) -> int:
        return int(sum(len(p) for p in self.to_send.values()))

    def chunks(self, size: int) -> list[tuple[str, np.ndarray]]:
        """(vendor, positions) chunks, round-robin across vendors so all start together."""
        per_vendor = {
            vendor: [positions[i : i + size] for i in range(0, len(positions), size)]
            for vendor, positions in self.to_send.items()
            if len(positions)
        }
        ordered: list[tuple[str, np.ndarray]] = []
        for round_ in range(max((len(c) for c in per_vendor.values()), default=0)):
            ordered.extend((v, c[round_]) for v, c in per_vendor.items() if round_ < len(c))
        return ordered


def plan_rows(
    frame: pd.DataFrame,
    row_errors: dict[int, list[str]],
    vendors: Iterable[str] | None = None,
) -> Plan:
    """Fix the fate of every row that will not be sent, and list the ones that will."""
    n = len(frame)
    outcome = np.full(n, None, dtype=object)
    error_code = np.full(n, None, dtype=object)
    message = np.full(n, "", dtype=object)
    row_numbers = frame["row_number"].to_numpy()

    if row_errors:
        rejected = np.flatnonzero(np.isin(row_numbers, np.fromiter(row_errors, dtype=np.int64)))
        outcome[rejected] = Outcome.REJECTED.value
        error_code[rejected] = ErrorCode.INVALID_ROW.value
        message[rejected] = ["; ".join(row_errors[int(row_numbers[i])]) for i in rejected]

    open_ = outcome == None  # noqa: E711 - elementwise comparison on an object array
    _mark_repeats(frame, open_, row_numbers, outcome, error_code, message)

    if vendors is not None:
        chosen = set(vendors)
        left_out = (outcome == None) & ~frame["vendor"].isin(chosen).to_numpy()  # noqa: E711
        outcome[left_out] = Outcome.SKIPPED.value
        message[left_out] = "vendor not included in this run"

    sendable = np.flatnonzero(outcome == None)  # noqa: E711
    vendor_of = frame["vendor"].to_numpy()[sendable]
    to_send = {str(v): sendable[vendor_of == v] for v in pd.unique(vendor_of)}
    return Plan(outcome, error_code, message, to_send)


def _mark_repeats(frame, open_, row_numbers, outcome, error_code, message) -> None:
    """Same decision twice: send the first only. Opposite decisions: send none, say why."""
    candidates = frame.loc[open_, KEY + ["decision"]]
    repeated = candidates.duplicated(KEY, keep=False)
    if not repeated.any():
        return
    groups = candidates[repeated].assign(position=np.flatnonzero(open_)[repeated.to_numpy()])
    for (_, _), group in groups.groupby(KEY, sort=False):
        positions = group["position"].to_numpy()
        rows = row_numbers[positions]
        if group["decision"].nunique() > 1:
            said = ", ".join(f"row {r} says {d}" for r, d in zip(rows, group["decision"]))
            outcome[positions] = Outcome.REJECTED.value
            error_code[positions] = ErrorCode.CONFLICTING_ROWS.value
            message[positions] = f"conflicting decisions for this invoice ({said}): none sent"
        else:
            later = positions[1:]
            outcome[later] = Outcome.SKIPPED.value
            error_code[later] = ErrorCode.DUPLICATE_ROW.value
            message[later] = f"same decision as row {rows[0]}: sent once"


def decisions_for(frame: pd.DataFrame, positions: np.ndarray) -> list[Decision]:
    """The Decision objects for some rows (built per chunk, never for the whole file)."""
    part = frame.iloc[positions]
    cols = {c: part[c].tolist() if c in part else [None] * len(part) for c in ("invoice_number", "void_date")}
    return [
        Decision(int(r), str(i), str(v), str(d), _text(n), _text(vd))
        for r, i, v, d, n, vd in zip(
            part["row_number"], part["invoice_id"], part["vendor"], part["decision"],
            cols["invoice_number"], cols["void_date"],
        )
    ]


def _text(value) -> str | None:
    return None if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) else str(value)
