"""Auth objects: built from settings, they put credentials on a `Request` at send time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from pydantic import SecretStr

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


class SessionTokenAuth(Auth):
    """A token fetched from the vendor, reused until it expires or is refused.

    `fetch(send)` returns the new token; it raises AuthRefused or AuthUnavailable.
    """

    def __init__(
        self,
        fetch: Callable[[Send], str],
        *,
        lifetime: float,
        margin: float = 60.0,
        param: str = "token",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._lifetime = max(lifetime - margin, 1.0)  # renew before the vendor's clock runs out
        self._param = param
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._fetched_at = 0.0
        self.fetches = 0

    def apply(self, request: Request, send: Send) -> Request:
        return replace(request, params={**request.params, self._param: self._current(send)})

    def invalidate(self, request: Request) -> None:
        with self._lock:
            # Only forget the token that was refused: another thread may have renewed it already.
            if self._token is not None and request.params.get(self._param) == self._token:
                self._token = None

    def _current(self, send: Send) -> str:
        with self._lock:  # one fetch at a time; other senders wait for its token
            if self._token is None or self._clock() - self._fetched_at >= self._lifetime:
                token = self._fetch(send)
                register_secret(token)
                self._token, self._fetched_at = token, self._clock()
                self.fetches += 1
            return self._token
