"""The contract every vendor connector follows.

A connector is declarative: it names its vendor and credentials, builds its auth object,
turns a `Decision` into a plain `Request` (`build_request`, pure), and reads whatever came
back (a plain `Response` or an exception) into a `Verdict` through its reading table
(`connectors.reading`) and two hooks for what bodies say. Sending, retrying, pacing and
concurrency live in one shared place, `connectors.sending`.

For a preview, `build_read(decision)` (pure; None where the vendor documents no read) asks for
the invoice's current state, and `read_state` reads the answer into a vendor state and a
`WouldChange`; `classify_read` reads the rest through the same table.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import ClassVar

from connectors.auth import Auth
from connectors.errors import AuthRefused, AuthUnavailable, AuthUnreadable, GlobalLimitError
from connectors.reading import READINGS, Action, Reading, ReadingKey, Verdict, exception_reading, status_reading
from connectors.settings import VendorSettings
from connectors.vocabulary import Decision, ErrorCode, WouldChange
from connectors.wire import Request, Response, json_body, parse_retry_after, short_text

# Request-id headers vendors commonly send; a connector declares the ones it reads.
REQUEST_ID_HEADERS: tuple[str, ...] = ("X-Request-Id", "Request-Id", "X-Correlation-Id")
REFERENCE_MAX = 256  # characters kept of a vendor reference (the ledger's column width)


class Connector:
    """Base class: subclasses declare `name`, `credential_names`, and implement the hooks."""

    name: ClassVar[str]
    # The credentials this vendor reads, as environment-variable suffixes (e.g. "API_KEY"): secrets.
    credential_names: ClassVar[tuple[str, ...]] = ()
    # More endpoints it reads (e.g. "TOKEN_URL"): settings, not secrets.
    url_names: ClassVar[tuple[str, ...]] = ()
    # Ways in, when there is more than one: one set must be complete. () = all of credential_names.
    credential_sets: ClassVar[tuple[tuple[str, ...], ...]] = ()
    decision_map: ClassVar[Mapping[str, str]] = {}
    readings: Mapping[ReadingKey, Reading] = READINGS  # a class's table; an instance may refine it
    # Headers carrying the vendor's own id of an answer, first found wins (support asks for it).
    reference_headers: ClassVar[tuple[str, ...]] = ()
    # Requests a day the vendor documents (the default of <VENDOR>_DAILY_LIMIT); None: none documented.
    daily_limit: ClassVar[int | None] = None

    def __init__(self, settings: VendorSettings) -> None:
        self.settings = settings

    @classmethod
    def settings_from_env(cls, environ: Mapping[str, str] | None = None) -> VendorSettings:
        """This vendor's settings from the environment (or `environ`), as it declares them."""
        return VendorSettings.from_env(
            cls.name,
            cls.credential_names,
            environ,
            credential_sets=cls.credential_sets,
            url_names=cls.url_names,
            daily_limit=cls.daily_limit,
        )

    # -- hooks ------------------------------------------------------------------------------
    def make_auth(self) -> Auth:
        """The auth object that puts this vendor's credentials on a request."""
        raise NotImplementedError

    def build_request(self, decision: Decision) -> Request:
        """The request that carries one decision; pure, no credentials."""
        raise NotImplementedError

    def read_success(self, request: Request, response: Response) -> Verdict:
        """Read a 2xx body: only what the vendor documents as success is one."""
        raise NotImplementedError

    def read_refusal(self, request: Request, response: Response) -> Verdict | None:
        """What a non-2xx body says beyond its status ("already in that state"); None: the table decides."""
        return None

    def build_read(self, decision: Decision) -> Request | None:
        """The read of the invoice's current state for a preview; pure, never a write. None: no documented read."""
        return None

    def read_state(self, decision: Decision, response: Response) -> Verdict:
        """Read a 2xx answer to `build_read` into the vendor's state and what sending would do."""
        return unreadable_state(response, "no read of this vendor's invoices is known")

    def error_message(self, response: Response) -> tuple[str, str | None]:
        """(message, vendor error code) from a vendor's error body."""
        body = json_body(response)
        if isinstance(body, dict):
            message = body.get("message") or body.get("error") or ""
            return str(message), None
        return short_text(response), None

    def vendor_reference(self, response: Response) -> str | None:
        """The vendor's own reference of this answer, from the first declared header it carries."""
        for name in self.reference_headers:
            value = (response.headers.get(name) or "").strip()
            if value:
                return value[:REFERENCE_MAX]
        return None

    # -- the one reading --------------------------------------------------------------------
    def classify(
        self,
        request: Request,
        response: Response | None = None,
        error: BaseException | None = None,
    ) -> Verdict:
        """Read the answer to `request` (a response or an exception) into a Verdict."""
        return self._read_answer(
            response, error, lambda r: self.read_success(request, r), lambda r: self.read_refusal(request, r)
        )

    def classify_read(
        self,
        decision: Decision,
        request: Request,
        response: Response | None = None,
        error: BaseException | None = None,
    ) -> Verdict:
        """Read the answer to a preview read: a state, "not found" (404), or the table's action."""
        return self._read_answer(response, error, lambda r: self.read_state(decision, r), self._read_missing)

    def _read_answer(
        self,
        response: Response | None,
        error: BaseException | None,
        on_success: Callable[[Response], Verdict],
        on_refusal: Callable[[Response], Verdict | None],
    ) -> Verdict:
        """An exception, a 2xx (`on_success`), or a refusal read by `on_refusal`, else by the table."""
        if error is not None:
            return self.read_exception(error)
        assert response is not None
        if 200 <= response.status_code < 300:
            return on_success(response)
        specific = on_refusal(response)
        if specific is not None:
            return specific
        return self._read_status(response)

    def _read_missing(self, response: Response) -> Verdict | None:
        if response.status_code != 404:
            return None
        return Verdict(
            Action.SUCCEED,
            message=f"HTTP 404: {self.name} does not know this invoice",
            would_change=WouldChange.NOT_FOUND,
        )

    def _read_status(self, response: Response) -> Verdict:
        """A non-2xx answer as the reading table has it (with the vendor's message and code)."""
        status = response.status_code
        reading = status_reading(self.readings, status)
        message, vendor_code = self.error_message(response)
        text = f"HTTP {status}: {message}" if message else f"HTTP {status}"
        retry_after = parse_retry_after(response) if reading.action is Action.RETRY else None
        return Verdict(reading.action, reading.error_code, vendor_code, text, retry_after)

    def read_exception(self, error: BaseException) -> Verdict:
        """Transport and auth failures, read through the same table."""
        reading = exception_reading(self.readings, error)
        kind = type(error).__name__
        if isinstance(error, (AuthRefused, AuthUnavailable, AuthUnreadable, GlobalLimitError)):
            message = str(error)  # our own errors say what happened, without credentials
        elif reading.action is Action.RETRY:
            message = f"{kind} talking to the vendor"
        else:
            message = f"{kind} preparing or sending the request"
        return Verdict(reading.action, reading.error_code, None, message)


def state_reading(state: object, done: Collection[str], movable: Collection[str] | None = None) -> Verdict:
    """What sending would do to an invoice the vendor holds in `state`.

    NO when `state` is one of `done` (the decision's state); YES when the change starts from
    it (`movable`; None: from any other state); else UNKNOWN. Compared without case.
    """
    if not isinstance(state, str) or not state.strip():
        return Verdict(
            Action.FAIL, ErrorCode.BAD_RESPONSE, message="the answer names no state", would_change=WouldChange.UNKNOWN
        )
    folded = state.strip().casefold()
    if folded in {s.casefold() for s in done}:
        return Verdict(
            Action.SUCCEED,
            message=f"already {state}: sending changes nothing",
            vendor_state=state,
            would_change=WouldChange.NO,
        )
    if movable is None or folded in {s.casefold() for s in movable}:
        return Verdict(
            Action.SUCCEED,
            message=f"{state} now: sending would change it",
            vendor_state=state,
            would_change=WouldChange.YES,
        )
    return Verdict(
        Action.SUCCEED,
        message=f"{state} now: whether the vendor takes the change from there is unknown",
        vendor_state=state,
        would_change=WouldChange.UNKNOWN,
    )


def unreadable_state(response: Response, why: str) -> Verdict:
    """A 2xx answer to a read that names no state (a sign-in page, another shape): unknown, never a guess."""
    return Verdict(
        Action.FAIL,
        ErrorCode.BAD_RESPONSE,
        message=f"HTTP {response.status_code}: {why}",
        would_change=WouldChange.UNKNOWN,
    )
