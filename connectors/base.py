"""The contract every vendor connector follows.

A connector is declarative: it names its vendor, its settings, how it authenticates, turns a
`Decision` into a plain `Request` (`build_request`, pure) and maps whatever came back — a plain
`Response` or an exception — to a `Verdict` (`classify`). Sending, retrying, pacing and
concurrency live in one shared place, `connectors.transport`; no connector touches an HTTP
library.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from urllib3.exceptions import ProtocolError
from urllib3.exceptions import TimeoutError as HTTPTimeoutError

from connectors.auth import Auth, AuthRefused, AuthUnavailable
from connectors.ratelimit import GlobalLimitError
from connectors.settings import VendorSettings


class Outcome(enum.StrEnum):
    """What happened to one input row; exactly one per row in the results."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"  # broke a validation rule: never sent
    SKIPPED = "skipped"  # nothing to send (already done, or a duplicate row)


class ErrorCode(enum.StrEnum):
    """The error vocabulary shared by all vendors (README: "Error codes")."""

    NOT_FOUND = "NOT_FOUND"  # the vendor does not know the invoice
    VENDOR_REJECTED = "VENDOR_REJECTED"  # the vendor refused this change (4xx, or a 2xx saying failure)
    AUTH_FAILED = "AUTH_FAILED"  # credentials refused: the vendor's remaining rows are not sent
    RATE_LIMITED = "RATE_LIMITED"  # still throttled (429) when retries ran out
    RETRIES_EXHAUSTED = "RETRIES_EXHAUSTED"  # 5xx, timeouts or dropped connections until retries ran out
    BAD_RESPONSE = "BAD_RESPONSE"  # an answer we cannot read as success or failure
    INVALID_ROW = "INVALID_ROW"  # the row broke a validation rule
    CONFIG_MISSING = "CONFIG_MISSING"  # the vendor's settings are missing or unusable
    DUPLICATE_ROW = "DUPLICATE_ROW"  # the same decision appears earlier in the file: sent once
    ALREADY_DONE = "ALREADY_DONE"  # an earlier run already succeeded with this decision: not sent again
    CONFLICTING_ROWS = "CONFLICTING_ROWS"  # the file holds opposite decisions for one invoice


class Action(enum.Enum):
    """What the caller must do with a classified answer."""

    SUCCEED = "succeed"  # the vendor confirmed the change
    RETRY = "retry"  # transient: try again after a backoff
    REAUTH = "reauth"  # the session token was refused: fetch a new one, then try again
    FAIL = "fail"  # permanent for this row: give up on it, go on with the others
    STOP = "stop"  # the credentials are refused: stop sending to this vendor


@dataclass(frozen=True, slots=True)
class Decision:
    """One validated row of the decision file, as a connector sees it."""

    row_number: int  # 1-based position of the row among the file's data rows
    invoice_id: str
    vendor: str
    decision: str  # "approve" | "cancel"
    invoice_number: str | None = None
    void_date: str | None = None  # "YYYY-MM-DD HH:MM:SS"


@dataclass(frozen=True, slots=True)
class Request:
    """A plain description of one HTTP call, before credentials are applied."""

    method: str
    path: str  # appended to the vendor's base URL
    json: Any = None
    form: Mapping[str, str] | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Response:
    """A vendor's answer, as read off the wire by the transport."""

    status_code: int
    headers: Mapping[str, str]  # case-insensitive (urllib3's HTTPHeaderDict)
    content: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")  # JSON APIs speak UTF-8 (RFC 8259)

    def json(self) -> Any:
        return json.loads(self.content)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A classified answer: what to do next and what to write in the results."""

    action: Action
    error_code: ErrorCode | None = None
    vendor_error_code: str | None = None
    message: str = ""
    retry_after: float | None = None  # seconds the vendor asked us to wait, if it said

    @property
    def succeeded(self) -> bool:
        return self.action is Action.SUCCEED


# Declared once for every vendor: what is worth retrying.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRYABLE_EXCEPTIONS: tuple[type[BaseException], ...] = (
    ProtocolError,  # connection refused, reset or cut mid-answer
    HTTPTimeoutError,  # connect and read timeouts (and a new connection that failed)
    ConnectionError,
    TimeoutError,
)


def parse_retry_after(response: Response) -> float | None:
    """Seconds from a numeric `Retry-After` header (HTTP dates are rare here and ignored)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def json_body(response: Response) -> Any:
    """The response body as JSON, or None when it is empty or not JSON."""
    if not response.content:
        return None
    try:
        return response.json()
    except (ValueError, json.JSONDecodeError):
        return None


def short_text(response: Response, limit: int = 200) -> str:
    """The start of a response body, for messages."""
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("…" if len(text) > limit else "")


class Connector:
    """Base class: subclasses declare `name`, `required_settings`, and implement the hooks."""

    name: ClassVar[str]
    # The credentials this vendor needs, as environment-variable suffixes (e.g. "API_KEY").
    credential_names: ClassVar[tuple[str, ...]] = ()
    decision_map: ClassVar[Mapping[str, str]] = {}

    def __init__(self, settings: VendorSettings) -> None:
        self.settings = settings

    # -- hooks ------------------------------------------------------------------------------
    def make_auth(self) -> Auth:
        """The auth object that puts this vendor's credentials on a request."""
        raise NotImplementedError

    def build_request(self, decision: Decision) -> Request:
        """The request that carries one decision; pure, no credentials."""
        raise NotImplementedError

    def classify_success(self, request: Request, response: Response) -> Verdict:
        """Check a 2xx body: vendors can answer 2xx and still mean failure."""
        return Verdict(Action.SUCCEED)

    def classify_error(self, request: Request, response: Response) -> Verdict | None:
        """Vendor-specific reading of a non-2xx answer; None falls back to the status table."""
        return None

    def error_message(self, response: Response) -> tuple[str, str | None]:
        """(message, vendor error code) from a vendor's error body."""
        body = json_body(response)
        if isinstance(body, dict):
            message = body.get("message") or body.get("error") or ""
            return str(message), None
        return short_text(response), None

    # -- shared classification --------------------------------------------------------------
    def classify(
        self,
        request: Request,
        response: Response | None = None,
        error: BaseException | None = None,
    ) -> Verdict:
        """Map the answer to `request` (a response or an exception) to a Verdict: the one error table."""
        if error is not None:
            return classify_exception(error)
        assert response is not None
        status = response.status_code
        if 200 <= status < 300:
            return self.classify_success(request, response)
        specific = self.classify_error(request, response)
        if specific is not None:
            return specific
        message, vendor_code = self.error_message(response)
        prefix = f"HTTP {status}"
        text = f"{prefix}: {message}" if message else prefix
        if status == 429:
            return Verdict(Action.RETRY, ErrorCode.RATE_LIMITED, vendor_code, text, parse_retry_after(response))
        if status in RETRYABLE_STATUSES:
            return Verdict(
                Action.RETRY, ErrorCode.RETRIES_EXHAUSTED, vendor_code, text, parse_retry_after(response)
            )
        if status in (401, 403):
            return Verdict(Action.STOP, ErrorCode.AUTH_FAILED, vendor_code, text)
        if status == 404:
            return Verdict(Action.FAIL, ErrorCode.NOT_FOUND, vendor_code, text)
        if 400 <= status < 500:
            return Verdict(Action.FAIL, ErrorCode.VENDOR_REJECTED, vendor_code, text)
        # 501, 505+ and anything odd: the vendor will not do it by being asked again.
        return Verdict(Action.FAIL, ErrorCode.BAD_RESPONSE, vendor_code, text)


def classify_exception(error: BaseException) -> Verdict:
    """Transport and auth failures: retry the transient ones, stop on refused credentials."""
    kind = type(error).__name__
    if isinstance(error, AuthRefused):
        return Verdict(Action.STOP, ErrorCode.AUTH_FAILED, None, str(error))
    if isinstance(error, AuthUnavailable):
        return Verdict(Action.RETRY, ErrorCode.RETRIES_EXHAUSTED, None, str(error))
    if isinstance(error, GlobalLimitError):  # the shared limit is missing or unusable: send nothing
        return Verdict(Action.STOP, ErrorCode.CONFIG_MISSING, None, str(error))
    if isinstance(error, RETRYABLE_EXCEPTIONS):
        return Verdict(Action.RETRY, ErrorCode.RETRIES_EXHAUSTED, None, f"{kind} talking to the vendor")
    return Verdict(Action.FAIL, ErrorCode.BAD_RESPONSE, None, f"{kind} preparing or sending the request")
