"""What a vendor module declares (`VendorAPI`, `Route`) and what its handlers share.

A handler gets the simulator's `State` (the `Sandbox` is one) and one `Call`, and returns a
`Reply`. It holds `state.lock` while it reads or changes invoices (`state.lookup`,
`state.invoices`) or tokens (`state.tokens`), and answers from static bodies built once at import where it can: the
benchmark sends 1,000+ requests/s through the server.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

HeaderPairs = tuple[tuple[str, str], ...]
# (status, body, extra headers, content type)
Reply = tuple[int, bytes, HeaderPairs, str]

BAD_JSON = object()  # marker: the request body was not JSON


class RequestHeaders(Protocol):
    """A request's headers as handlers read them: `get` by name, case-insensitive (the server's
    own parser gives a `_Headers` dict, the stdlib's fallback an `email.message.Message`)."""

    def get(self, name: str, /) -> str | None: ...


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def loads(body: bytes) -> Any:
    """The parsed JSON body, None for an empty one, BAD_JSON for anything else."""
    try:
        return json.loads(body) if body else None
    except ValueError:  # includes JSONDecodeError and UnicodeDecodeError
        return BAD_JSON


def json_reply(status: int, obj: Any | bytes, headers: HeaderPairs = ()) -> Reply:
    """A JSON answer; `obj` is either pre-built bytes or something to dump."""
    return (status, obj if isinstance(obj, bytes) else dumps(obj), headers, "application/json")


def path_pattern(base_path: str, rest: str) -> re.Pattern[str]:
    """A route's pattern: `base_path` then `rest` (a regex), the whole path, trailing slash allowed."""
    return re.compile(re.escape(base_path) + rest + r"/?\Z")


@dataclass(slots=True)
class Invoice:
    status: str
    kind: str = "pay-out"
    invoice_number: str | None = None
    changes: int = 0  # times the status actually changed


class State(Protocol):
    """What handlers may touch of the simulator: its invoices and tokens, under its lock."""

    lock: threading.Lock
    invoices: dict[tuple[str, str], Invoice]
    tokens: dict[str, float]  # issued token -> monotonic expiry (modulus' session tokens, OAuth access tokens)
    token_lifetime: float
    refresh_tokens: dict[str, bool]  # OAuth refresh token -> still valid (a rotated one is not)
    oauth_token_lifetime: float  # seconds an OAuth access token lives (its `expires_in`)

    def lookup(self, vendor: str, invoice_id: str, invoice_number: str | None = None) -> Invoice | None: ...


@dataclass(slots=True)
class Call:
    """What a vendor handler needs to know about one request."""

    headers: RequestHeaders
    body: bytes
    query: str
    invoice_id: str | None  # from the path, or set by the route's `parse_body`
    payload: Any  # parsed JSON body where already parsed, else None
    client_ip: str
    expire_token: bool = False  # the "expire_token" fault: the token presented expires now


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]  # matches the whole path; group 1, if any, is the URL-encoded invoice id
    handle: Callable[[State, Call], Reply]
    # For an invoice id that is in the body: parses it into `call.payload` and `call.invoice_id`
    # before faults are matched (faults can be aimed at one invoice).
    parse_body: Callable[[Call], None] | None = None
    # A token endpoint: faults skip it unless aimed at it (`invoice_id=MODULUS_AUTHENTICATE`),
    # and the "expire_token" fault applies to its vendor.
    authentication: bool = False


@dataclass(frozen=True, slots=True)
class VendorAPI:
    """One simulated vendor; its module builds one as `API` and `vendors.ALL` lists it."""

    name: str  # the first path segment; upper-cased, the prefix of its settings (ALFRED_BASE_URL)
    base_path: str  # the part of the base URL after the host: everything before the documented paths
    initial_status: str  # of a seeded or auto-created invoice
    credentials: Mapping[str, str]  # setting name -> the sandbox's fake value
    routes: tuple[Route, ...]
    # The vendor-shaped answer to an injected 429/500/502/503 (headers: Retry-After, if any).
    error_reply: Callable[[int, HeaderPairs], Reply]
    # The answer to (method, path) under base_path that no route takes.
    no_route: Callable[[str, str], Reply]
    # The "false_success" fault: 200 saying failure, nothing changes; None where it makes no sense.
    false_success: Callable[[State, Call], Reply] | None = None
    # The "refusal_500" fault: a 500 whose body refuses the change with the vendor's own error
    # code (modulus documents it); nothing changes. None where the vendor documents no such body.
    refusal_500: Callable[[], Reply] | None = None
    # Headers added to every answer of this vendor (faults and errors included).
    reply_headers: Callable[[], HeaderPairs] | None = None
    # An OAuth refresh grant: the token endpoint's path and the settings handed out for it by
    # `Sandbox.env(refresh_grant=True)` instead of `credentials` (`<NAME>_TOKEN_URL` is added there).
    token_path: str = ""
    grant_credentials: Mapping[str, str] = field(default_factory=dict)
