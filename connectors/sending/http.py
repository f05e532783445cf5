"""Keep-alive HTTP over urllib3, the connection pool underneath `requests`, called directly.

`requests` adds session merging, cookie jars and hooks this tool never uses, and at hundreds
of calls a second that CPU is what the sending threads share (docs/performance.md).
"""

from __future__ import annotations

import json as jsonlib  # `json` is a parameter of Http.request, as in requests
import socket
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

from connectors.wire import Response

USER_AGENT = "invoice-sync/0.1"
# A body up to this size leaves in the same write as the header block.
ONE_WRITE_MAX = 64 * 1024


class _KeepsTimeout:
    """A socket whose `settimeout` to the timeout it already has does nothing.

    urllib3 sets a connection's timeout twice per request, to the same value; each call is a
    system call that releases the GIL, which the sending thread then queues to take back
    behind every other (docs/performance.md, "Sending threads and the GIL").
    """

    __slots__ = ()

    def settimeout(self, value: float | None) -> None:
        if value != self.gettimeout():  # type: ignore[attr-defined]
            super().settimeout(value)  # type: ignore[misc]


class _KeepsTimeoutSocket(_KeepsTimeout, socket.socket):
    __slots__ = ()


class _KeepsTimeoutSSLSocket(_KeepsTimeout, ssl.SSLSocket):
    pass


_KEEPS_TIMEOUT: dict[type, type] = {socket.socket: _KeepsTimeoutSocket, ssl.SSLSocket: _KeepsTimeoutSSLSocket}


class _OneWrite:
    """A keep-alive connection that sends a request's header block and its body in one write.

    urllib3 writes them apart: two TCP segments for one small request (where Nagle's algorithm
    meets delayed ACKs), and two more system calls that release the GIL (see `_KeepsTimeout`).
    """

    sock: socket.socket | None
    _join = False
    _header_block: bytes | None = None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        kind = _KEEPS_TIMEOUT.get(type(self.sock))
        if kind is not None:  # the same socket, only its settimeout differs
            self.sock.__class__ = kind

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> None:
        self._join = isinstance(body, bytes) and 0 < len(body) <= ONE_WRITE_MAX
        try:
            super().request(method, url, body=body, headers=headers, **kwargs)  # type: ignore[misc]
        finally:
            self._join, self._header_block = False, None

    def send(self, data: Any) -> None:
        if self._join:
            if self._header_block is None:  # http.client's first write: the header block
                self._header_block = data
                return
            data, self._join, self._header_block = self._header_block + data, False, None
        super().send(data)  # type: ignore[misc]


class OneWriteHTTPConnection(_OneWrite, HTTPConnection):
    pass


class OneWriteHTTPSConnection(_OneWrite, HTTPSConnection):
    pass


class Http:
    """Keep-alive HTTP for one vendor: a urllib3 pool sized for its concurrency.

    No retries or redirects of its own (ours rule, and a redirected PUT is not the call we
    meant), no proxy or netrc from the environment: we talk to the configured URL only. TLS is
    verified against certifi's CA bundle, as `requests` did.
    """

    def __init__(self, max_connections: int) -> None:
        self._manager = urllib3.PoolManager(
            maxsize=max_connections, retries=False, cert_reqs="CERT_REQUIRED", ca_certs=certifi.where()
        )
        # One connection pool per origin, found once: the manager's own per-call work (parsing
        # the whole URL, building a pool key) is a share of every request's CPU (docs/performance.md).
        self._pools: dict[str, urllib3.HTTPConnectionPool] = {}

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """One call; the body is read whole. Raises urllib3's errors for the connector to classify."""
        if params:
            url = f"{url}?{urlencode(params)}"
        sent_headers = {"User-Agent": USER_AGENT, **(headers or {})}
        body = None
        if json is not None:
            body = jsonlib.dumps(json, allow_nan=False).encode()
            sent_headers["Content-Type"] = "application/json"
        elif data is not None:
            body = urlencode(data).encode()
            sent_headers["Content-Type"] = "application/x-www-form-urlencoded"
        origin, target = split_origin(url)
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = self._manager.connection_from_url(origin)
            pool.ConnectionCls = OneWriteHTTPSConnection if origin.startswith("https:") else OneWriteHTTPConnection
        answer = pool.urlopen(
            method, target, body=body, headers=sent_headers, timeout=timeout, redirect=False, assert_same_host=False
        )
        return Response(answer.status, answer.headers, answer.data)

    def close(self) -> None:
        self._manager.clear()


def split_origin(url: str) -> tuple[str, str]:
    """("https://host:port", "/path?query") of an absolute URL; the pool encodes the target."""
    start = url.find("//") + 2
    end = url.find("/", start)
    if end < 0 or "?" in url[start:end]:  # no path: "https://host" or "https://host?query"
        query = url.find("?", start)
        end = query if query >= 0 else len(url)
        return url[:end], "/" + url[end:]
    return url[:end], url[end:]
