"""The words both sides speak: a decision, what became of it, and why.

The vendor side (connectors, the sending machinery) and the pipeline (reading, planning, the
ledger, the results) import these and nothing else of each other. Pure data: no HTTP, no
files, no Prefect.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pandas as pd


class Outcome(enum.StrEnum):
    """What happened to one input row; exactly one per row in the results."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"  # broke a validation rule: never sent
    SKIPPED = "skipped"  # nothing to send (already done, a duplicate row, a vendor left out of the run)
    WOULD_SEND = "would_send"  # a dry run: valid and new, would be sent by a real run


class ErrorCode(enum.StrEnum):
    """The error vocabulary shared by all vendors and the pipeline (README: "Error codes")."""

    # Read from a vendor's answer (connectors produce these).
    NOT_FOUND = "NOT_FOUND"  # the vendor does not know the invoice
    VENDOR_REJECTED = "VENDOR_REJECTED"  # the vendor refused this change (4xx, or a 2xx saying failure)
    AUTH_FAILED = "AUTH_FAILED"  # credentials refused: the vendor's remaining rows are not sent
    RATE_LIMITED = "RATE_LIMITED"  # still throttled (429) when retries ran out
    RETRIES_EXHAUSTED = "RETRIES_EXHAUSTED"  # 5xx, timeouts or dropped connections until retries ran out
    BAD_RESPONSE = "BAD_RESPONSE"  # an answer we cannot read as success or failure
    CONFIG_MISSING = "CONFIG_MISSING"  # the vendor's settings are missing or unusable
    # Decided by the pipeline before anything is sent.
    INVALID_ROW = "INVALID_ROW"  # the row broke a validation rule
    DUPLICATE_ROW = "DUPLICATE_ROW"  # the same decision appears earlier in the file: sent once
    ALREADY_DONE = "ALREADY_DONE"  # an earlier run already succeeded with this decision: not sent again
    CONFLICTING_ROWS = "CONFLICTING_ROWS"  # the file holds opposite decisions for one invoice
    VENDOR_NOT_INCLUDED = "VENDOR_NOT_INCLUDED"  # skipped: the run was asked for other vendors only
    # Read from a vendor's answer, on a row that succeeded.
    ALREADY_IN_STATE = "ALREADY_IN_STATE"  # the vendor says the invoice already was in that state


@dataclass(frozen=True, slots=True)
class Decision:
    """One validated row of the decision file, as a connector sees it."""

    row_number: int  # 1-based position of the row among the file's data rows
    invoice_id: str
    vendor: str
    decision: str  # "approve" | "cancel"
    invoice_number: str | None = None
    void_date: str | None = None  # "YYYY-MM-DD HH:MM:SS"

    @property
    def payload(self) -> str:
        """What is sent for this decision, as one comparable text (see `payload_text`)."""
        return payload_text(self.decision, self.invoice_number, self.void_date)


@dataclass(slots=True)
class RowResult:
    """What happened to one decision at its vendor."""

    row_number: int
    outcome: Outcome
    http_status: int | None = None
    error_code: ErrorCode | None = None
    vendor_error_code: str | None = None
    error_message: str = ""
    attempts: int = 0
    finished_at: datetime | None = None


Text = TypeVar("Text", str, "pd.Series[str]")  # one decision, or a whole file's column

PAYLOAD_SEPARATOR = "|"


def payload_text(decision: Text, invoice_number: Any, void_date: Any) -> Text:
    """`decision|invoice_number|void_date`, missing parts empty: the identity of what was sent.

    One function for both uses, so the two can never drift apart: the ledger writes it for one
    decision (plain strings, None for missing) and the planner compares it for a whole file at
    once (pandas string Series, NA for missing).
    """
    return decision + PAYLOAD_SEPARATOR + _or_empty(invoice_number) + PAYLOAD_SEPARATOR + _or_empty(void_date)


def _or_empty(value: Any) -> Any:
    if value is None:
        return ""
    fillna = getattr(value, "fillna", None)  # a pandas Series: missing cells become ""
    return fillna("") if fillna is not None else value
