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
    INTERRUPTED = "INTERRUPTED"  # the run was stopped before this row was sent (or answered): the next run sends it
    QUOTA_EXHAUSTED = (
        "QUOTA_EXHAUSTED"  # the vendor's daily limit was used up: the next run (that UTC day's over) sends it
    )
    # Decided by the pipeline before anything is sent.
    INVALID_ROW = "INVALID_ROW"  # the row broke a validation rule
    DUPLICATE_ROW = "DUPLICATE_ROW"  # the same decision appears earlier in the file: sent once
    ALREADY_DONE = "ALREADY_DONE"  # an earlier run already succeeded with this decision: not sent again
    CONFLICTING_ROWS = "CONFLICTING_ROWS"  # the file holds opposite decisions for one invoice
    IN_PROGRESS = "IN_PROGRESS"  # another live run holds this decision's claim: it sends it, not this run
    VENDOR_NOT_INCLUDED = "VENDOR_NOT_INCLUDED"  # skipped: the run was asked for other vendors only
    # Read from a vendor's answer, on a row that succeeded.
    ALREADY_IN_STATE = "ALREADY_IN_STATE"  # the vendor says the invoice already was in that state


class WouldChange(enum.StrEnum):
    """What a preview read says sending a decision would do (`run --dry-run --check-vendors`)."""

    YES = "yes"  # the vendor has the invoice, not yet in the decision's state
    NO = "no"  # already in that state: sending changes nothing
    NOT_FOUND = "not_found"  # the vendor does not know the invoice
    UNKNOWN = "unknown"  # no documented read, an unreadable answer, or a state we cannot judge


@dataclass(frozen=True, slots=True)
class Decision:
    """One validated row of the decision file, as a connector sees it."""

    row_number: int  # the file's row_number: 1-based among its data rows; for a workbook, the row Excel shows
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
    vendor_reference: str | None = None  # the vendor's own id of its last answer (AppZen's x-correlation-id)
    tries: tuple[HttpAttempt, ...] = ()  # every request made for this decision, token fetches included


class RequestKind(enum.StrEnum):
    """Why a request went out: the decision itself, a preview's read of its invoice, or a token fetch either needed."""

    DECISION = "decision"
    READ = "read"
    TOKEN = "token"


@dataclass(frozen=True, slots=True)
class HttpAttempt:
    """One HTTP request made for a decision (or a preview's read of it), as the audit trail keeps it (plain data, no credential)."""

    kind: RequestKind
    attempt: int  # the decision's attempt (or read) this request belongs to (1 = its first)
    started_at: datetime
    latency_us: int | None  # from the request leaving to its answer (or failure), pacing waits excluded
    http_status: int | None  # None: no answer (a timeout, a dropped connection)
    action: str | None = None  # our reading of the answer (connectors.reading.Action's value); None for a token fetch
    error_code: str | None = None
    vendor_error_code: str | None = None
    vendor_reference: str | None = None
    message: str = ""  # our reading in words (redacted), or the failure of a request that got no answer


@dataclass(slots=True)
class VendorCheck:
    """What a preview read of one decision's invoice found at its vendor (nothing was written)."""

    row_number: int
    would_change: WouldChange
    vendor_state: str | None = None  # the invoice's state as the vendor names it
    message: str = ""
    http_status: int | None = None
    vendor_reference: str | None = None
    reads: int = 0  # HTTP requests this read took (retries included)
    tries: tuple[HttpAttempt, ...] = ()  # every request made for it, as the audit trail keeps them


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
