"""Auth objects: built from settings, they put credentials on a `Request` at send time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from pydantic import SecretStr

from connectors.errors import AuthRefused, AuthUnreadable
from connectors.redact import register_secret
from connectors.wire import Request, Response

# How the transport sends a request for an auth object (paced like any other call).
Send = Callable[[Request], Response]


class Auth:
    """No credentials at all."""

    def apply(self, request: Request, send: Send) -> Request:
        return request

    def invalidate(self, request: Request) -> None:
        """The vendor refused the credentials `request` carried; forget them if they rotate."""


class HeaderAuth(Auth):
    """Static credentials sent as headers (API keys, a bearer token)."""

    def __init__(self, headers: Mapping[str, SecretStr], template: Mapping[str, str] | None = None):
        self._headers = dict(headers)
        self._template = dict(template or {})  # e.g. {"Authorization": "Bearer {}"}

    def apply(self, request: Request, send: Send) -> Request:
        extra = {
            name: self._template.get(name, "{}").format(value.get_secret_value())
            for name, value in self._headers.items()
        }
        return replace(request, headers={**request.headers, **extra})


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token as its endpoint issued it: the value, and how long it lives if the vendor said."""

    value: str
    lifetime: float | None = None  # seconds from now (OAuth's `expires_in`); None: the declared lifetime


class SessionTokenAuth(Auth):
    """A token fetched from the vendor, reused until it expires or is refused.

    `fetch(send)` returns the new token (text, or an `IssuedToken` saying its lifetime); it
    raises AuthRefused, AuthUnavailable or AuthUnreadable. The token travels in the query
    (`param`, modulus) or in a header (`header` and its `template`, an OAuth bearer token). It
    is renewed `margin` seconds before it expires (a tenth of its life at most, for short ones).
    Once the endpoint refused us (or answered something unreadable), every later apply raises
    the same at once: the senders already waiting for a token do not ask it again.
    """

    def __init__(
        self,
        fetch: Callable[[Send], str | IssuedToken],
        *,
        lifetime: float | None,
        margin: float = 60.0,
        param: str = "token",
        header: str | None = None,
        template: str = "{}",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._lifetime = lifetime  # None: until refused
        self._margin = margin
        self._param = param
        self._header = header
        self._template = template
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at: float | None = None
        self._refused: AuthRefused | AuthUnreadable | None = None
        self.fetches = 0

    def apply(self, request: Request, send: Send) -> Request:
        token = self._current(send)
        if self._header is not None:
            return replace(request, headers={**request.headers, self._header: self._template.format(token)})
        return replace(request, params={**request.params, self._param: token})

    def invalidate(self, request: Request) -> None:
        with self._lock:
            # Only forget the token that was refused: another thread may have renewed it already.
            if self._token is not None and self._carried(request) == self._template.format(self._token):
                self._token = None

    def _carried(self, request: Request) -> str | None:
        return request.headers.get(self._header) if self._header is not None else request.params.get(self._param)

    def _current(self, send: Send) -> str:
        with self._lock:  # one fetch at a time; other senders wait for its token
            if self._refused is not None:
                raise type(self._refused)(*self._refused.args)
            if self._token is None or (self._renew_at is not None and self._clock() >= self._renew_at):
                try:
                    issued = self._fetch(send)
                except (AuthRefused, AuthUnreadable) as refused:
                    self._refused = refused
                    raise
                if isinstance(issued, str):
                    issued = IssuedToken(issued)
                register_secret(issued.value)
                life = self._lifetime if issued.lifetime is None else issued.lifetime
                # Renew before the vendor's clock runs out.
                self._renew_at = None if life is None else self._clock() + life - min(self._margin, life / 10)
                self._token = issued.value
                self.fetches += 1
            return self._token
