"""How an answer is read: one table from status or exception to an action and an error code.

Each connector declares `readings`, this table merged with its own entries
(`{**READINGS, 401: Reading(Action.REAUTH, ErrorCode.AUTH_FAILED)}`), in the manner of
Airbyte's error mapping. A key is an HTTP status, a status class (`"4xx"`), or an exception
type (matched with `isinstance`, in table order). What a body says (a 2xx that means failure,
"already in that state") is read by the connector's own hooks; the table decides the rest.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from urllib3.exceptions import ProtocolError
from urllib3.exceptions import TimeoutError as HTTPTimeoutError

from connectors.errors import AuthRefused, AuthUnavailable, AuthUnreadable, GlobalLimitError
from connectors.vocabulary import ErrorCode, WouldChange


class Action(enum.Enum):
    """What the caller must do with a classified answer."""

    SUCCEED = "succeed"  # the vendor confirmed the change
    RETRY = "retry"  # transient: try again after a backoff
    REAUTH = "reauth"  # the session token was refused: fetch a new one, then try again
    FAIL = "fail"  # permanent for this row: give up on it, go on with the others
    STOP = "stop"  # the credentials are refused: stop sending to this vendor


@dataclass(frozen=True, slots=True)
class Verdict:
    """A classified answer: what to do next and what to write in the results."""

    action: Action
    error_code: ErrorCode | None = None
    vendor_error_code: str | None = None
    message: str = ""
    retry_after: float | None = None  # seconds the vendor asked us to wait, if it said
    # A preview read: what the vendor holds, and what sending would do (None for a send).
    vendor_state: str | None = None
    would_change: WouldChange | None = None

    @property
    def succeeded(self) -> bool:
        return self.action is Action.SUCCEED


@dataclass(frozen=True, slots=True)
class Reading:
    """One row of the table: the action and the error code an answer stands for."""

    action: Action
    error_code: ErrorCode | None = None


ReadingKey = int | str | type[BaseException]

RETRY = Reading(Action.RETRY, ErrorCode.RETRIES_EXHAUSTED)

READINGS: Mapping[ReadingKey, Reading] = {
    # Statuses
    401: Reading(Action.STOP, ErrorCode.AUTH_FAILED),
    403: Reading(Action.STOP, ErrorCode.AUTH_FAILED),
    404: Reading(Action.FAIL, ErrorCode.NOT_FOUND),
    408: RETRY,
    425: RETRY,
    429: Reading(Action.RETRY, ErrorCode.RATE_LIMITED),
    500: RETRY,
    502: RETRY,
    503: RETRY,
    504: RETRY,
    "4xx": Reading(Action.FAIL, ErrorCode.VENDOR_REJECTED),
    # 1xx, 3xx (redirects are never followed), 501, 505+: the vendor will not do it by being asked again.
    "other": Reading(Action.FAIL, ErrorCode.BAD_RESPONSE),
    # Exceptions
    AuthRefused: Reading(Action.STOP, ErrorCode.AUTH_FAILED),
    AuthUnavailable: RETRY,
    AuthUnreadable: Reading(Action.STOP, ErrorCode.BAD_RESPONSE),
    GlobalLimitError: Reading(Action.STOP, ErrorCode.CONFIG_MISSING),
    ProtocolError: RETRY,  # connection refused, reset or cut mid-answer
    HTTPTimeoutError: RETRY,  # connect and read timeouts (and a new connection that failed)
    ConnectionError: RETRY,
    TimeoutError: RETRY,
    BaseException: Reading(Action.FAIL, ErrorCode.BAD_RESPONSE),  # a bug preparing or sending the request
}


def status_reading(readings: Mapping[ReadingKey, Reading], status: int) -> Reading:
    """The table's reading of a non-2xx status: exact status, then its class, then "other"."""
    return readings.get(status) or readings.get(f"{status // 100}xx") or readings["other"]


def exception_reading(readings: Mapping[ReadingKey, Reading], error: BaseException) -> Reading:
    """The table's reading of an exception: the first exception type it is an instance of."""
    for key, reading in readings.items():
        if isinstance(key, type) and isinstance(error, key):
            return reading
    return readings[BaseException]


def retryable_statuses(readings: Mapping[ReadingKey, Reading]) -> frozenset[int]:
    """The statuses a table retries."""
    return frozenset(k for k, r in readings.items() if isinstance(k, int) and r.action is Action.RETRY)


RETRYABLE_STATUSES = retryable_statuses(READINGS)
RETRYABLE_EXCEPTIONS: tuple[type[BaseException], ...] = tuple(
    k for k, r in READINGS.items() if isinstance(k, type) and r.action is Action.RETRY and k not in (AuthUnavailable,)
)
