"""The simulator's HTTP side and state: one `ThreadingHTTPServer` on 127.0.0.1 serving every
vendor in `vendors.ALL` under its base path, and the `Sandbox` that owns invoices, tokens,
queued faults and request logs. What each vendor answers lives in its own module."""

from __future__ import annotations

import contextlib
import csv
import math
import socket
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

from .vendor_api import Call, Invoice, Reply, RequestHeaders, VendorAPI, json_reply
from .vendors import ALL, BASE_PATHS, BY_NAME, INITIAL_STATUS, VENDORS

KINDS = frozenset({"pay-out", "pay-in"})

FAULTS: frozenset[str] = frozenset(
    {
        "429",
        "500",
        "502",
        "503",
        "drop_before",
        "drop_after",
        "slow",
        "expire_token",
        "bad_body",
        "false_success",
        "refusal_500",
    }
)
# Vendors with a token endpoint (modulus): faults can target it, and its tokens can expire.
_AUTHENTICATING = frozenset(api.name for api in ALL if any(route.authentication for route in api.routes))
# Faults that make sense for some vendors only (AppZen's success has no body to lie in).
_FAULT_VENDORS: dict[str, frozenset[str]] = {
    "expire_token": _AUTHENTICATING,
    "false_success": frozenset(api.name for api in ALL if api.false_success is not None),
    "refusal_500": frozenset(api.name for api in ALL if api.refusal_500 is not None),
}

# Faults normally hit the invoice requests only. Pass this as `invoice_id` to aim a fault at a
# vendor's token endpoint instead (modulus' Authenticate, Accounteer's OAuth token endpoint).
MODULUS_AUTHENTICATE = "@authenticate"
_AUTH_FAULTS = frozenset({"429", "500", "502", "503", "drop_before", "drop_after", "slow", "bad_body"})

_DROP = None  # a handler returning this means: close the connection without answering
# `{url}/portal/...` answers every request with this page: a vendor's base URL pointed by
# mistake at a web portal (or a proxy's sign-in) instead of the API.
PORTAL = "portal"
_SIGN_IN_PAGE: Reply = (
    200,
    b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><h1>Sign in</h1>"
    b'<form method="post" action="/login"><input name="user"><input name="password" type="password">'
    b"<button>Sign in</button></form></body></html>",
    (),
    "text/html; charset=utf-8",
)
_BAD_BODY = b"<html>oops</html>"
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


def _seconds(value: float) -> str:
    """A Retry-After value: integral seconds without a fraction."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


@dataclass(slots=True)
class _Fault:
    kind: str
    remaining: int
    invoice_id: str | None
    retry_after: float | None
    delay: float


# Rate-limit headers a limited vendor can send on every answer (`Sandbox.enforce_limit`).
LIMIT_HEADERS = frozenset({"ietf", "x"})


@dataclass(slots=True)
class _Limit:
    """A vendor's own limit, unpublished: `rate` requests in any `window` seconds, refused ones counted too."""

    rate: int
    window: float
    retry_after: float | None
    headers: str | None
    arrivals: deque[float] = field(default_factory=deque)  # every request within the window
    refused: int = 0


# --------------------------------------------------------------------------------------------
# The HTTP side: the vendor is the first path segment.


class _Headers(dict):
    """Request headers with case-insensitive `get` (keys are stored lower-case)."""

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never keeps the process alive
    request_queue_size = 1024  # the benchmark opens many pooled connections at once
    sandbox: Sandbox

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def close_open_connections(self) -> None:
        """Keep-alive connections outlive serve_forever(): cut them so stop() really stops."""
        with self.connections_lock:
            conns = list(self.open_connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the benchmark reuses pooled connections
    server_version = "invoice-sync-sandbox"
    disable_nagle_algorithm = True  # small answers must not wait for delayed ACKs
    server: _Server
    raw_requestline: bytes  # set by handle_one_request() before parse_request(); typeshed omits it

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)
        try:  # noqa: SIM105  per connection in the handler: try/except is cheaper than contextlib.suppress
            super().finish()
        except OSError:
            pass

    def parse_request(self) -> bool:
        """A lean HTTP/1.1 request parser (the stdlib's goes through the email package, which
        costs several times the rest of a request); anything unusual goes to the stdlib's."""
        words = self.raw_requestline.decode("iso-8859-1").rstrip("\r\n").split()
        if len(words) != 3 or words[2] != "HTTP/1.1":
            return super().parse_request()
        self.requestline = " ".join(words)
        self.command, path, self.request_version = words
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        headers = _Headers()
        readline = self.rfile.readline
        name = ""
        for _ in range(101):
            line = readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            if len(line) > 65536:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long")
                return False
            text = line.decode("iso-8859-1")
            if text[0] in " \t" and name:  # obsolete line folding
                headers[name] += " " + text.strip()
                continue
            name, sep, value = text.partition(":")
            if not sep:
                self.send_error(HTTPStatus.BAD_REQUEST, "Bad header line")
                return False
            name = name.strip().lower()
            headers[name] = value.strip()
        else:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers")
            return False
        self.headers = headers  # type: ignore[assignment]
        self.close_connection = headers.get("connection", "").lower() == "close"
        if headers.get("expect", "").lower() == "100-continue":
            return self.handle_expect_100()
        return True

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: per-request logging would cost throughput, and URLs carry modulus tokens."""

    def _dispatch(self) -> None:
        arrived = time.monotonic()
        body = self._read_body()
        raw = self.path
        q = raw.find("?")
        path, query = (raw, "") if q < 0 else (raw[:q], raw[q + 1 :])
        end = path.find("/", 1)
        vendor = path[1:end] if end > 0 else path[1:]
        sandbox = self.server.sandbox
        if vendor == "_sandbox":  # read-only stats for a benchmark running in another process
            self._write(sandbox._stats(path))
            return
        if vendor == PORTAL:  # any method, any path: a sign-in page, 200
            sandbox._note_portal(arrived, self.command, path)
            self._write(_SIGN_IN_PAGE)
            return
        api = BY_NAME.get(vendor)
        if api is None:
            self._write(json_reply(404, {"error": "unknown sandbox path; vendors: " + ", ".join(VENDORS)}))
            return
        sandbox._enter(vendor)
        try:
            reply = sandbox._handle(api, arrived, self.command, path, query, body, self.headers, self.client_address[0])
        except Exception:  # a sandbox bug: answer and show it, never hang the client
            traceback.print_exc(file=sys.stderr)
            reply = json_reply(500, {"error": "sandbox internal error"})
        finally:
            sandbox._leave(vendor)
        if reply is _DROP:
            self._drop()
            return
        if api.reply_headers is not None:  # e.g. AppZen's x-correlation-id on every answer
            status, data, headers, ctype = reply
            reply = (status, data, headers + api.reply_headers(), ctype)
        self._write(reply)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                self.close_connection = True  # cannot find the next request's start
                return b""
            return self.rfile.read(n) if n > 0 else b""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def _write(self, reply: Reply) -> None:
        status, body, headers, ctype = reply
        parts = [_STATUS_LINES[status]]
        if body:
            parts.append(b"Content-Type: " + ctype.encode() + b"\r\n")
        parts.append(b"Content-Length: %d\r\n" % len(body))
        for name, value in headers:
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if self.close_connection:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        parts.append(body)
        try:
            self.wfile.write(b"".join(parts))  # one write: one segment for small answers
        except OSError:
            self.close_connection = True  # the client went away (e.g. it timed out on "slow")

    def _drop(self) -> None:
        """Close without answering: the client sees RemoteDisconnected / ConnectionError."""
        self.close_connection = True
        try:  # noqa: SIM105  in the handler: try/except is cheaper than contextlib.suppress
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------


class Sandbox:
    """Every vendor API in `vendors.ALL` on one local port, with inspectable state and queued faults."""

    # The sandbox's own fake credentials: distinctive so tests can scan outputs for leaks.
    CREDENTIALS: ClassVar[dict[str, str]] = {
        name: value for api in ALL for name, value in {**api.credentials, **api.grant_credentials}.items()
    }

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        auto_create: bool = False,
        token_lifetime: float = 15 * 60,
        oauth_token_lifetime: float = 3600.0,
        latency: float = 0.0,
    ) -> None:
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("the sandbox only binds to 127.0.0.1")
        self.host = "127.0.0.1"
        self.port = port
        self.auto_create = auto_create
        self.token_lifetime = float(token_lifetime)  # documented: 15 minutes
        self.oauth_token_lifetime = float(oauth_token_lifetime)  # assumed: an hour, as OAuth servers often do
        self.latency = float(latency)
        # One lock around all state below. The vendor modules hold it while they touch
        # `invoices` (through `lookup`) or `tokens`.
        self.lock = threading.Lock()
        self.invoices: dict[tuple[str, str], Invoice] = {}
        self.tokens: dict[str, float] = {}  # issued token -> monotonic expiry
        self.refresh_tokens: dict[str, bool] = self._initial_refresh_tokens()
        self._faults: dict[str, list[_Fault]] = {v: [] for v in VENDORS}
        self._logs: dict[str, list[tuple[float, str, str]]] = {v: [] for v in VENDORS}
        self._in_flight: dict[str, int] = {v: 0 for v in VENDORS}  # requests being handled now
        self._in_flight_max: dict[str, int] = {v: 0 for v in VENDORS}  # high-water mark since reset
        self._portal_log: list[tuple[float, str, str]] = []
        self._limits: dict[str, _Limit] = {}  # vendors that enforce a rate limit of their own
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Sandbox:
        """Bind (port 0 picks a free one) and serve in a background thread."""
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="sandbox-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut open keep-alive connections, release the port."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_open_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox is not started")
        return f"http://{self.host}:{self.port}"

    def base_url(self, vendor: str) -> str:
        return self.url + BASE_PATHS[self._vendor(vendor)]

    def portal_url(self, vendor: str) -> str:
        """The vendor's base URL under the sign-in portal: every request there answers 200 with HTML."""
        return f"{self.url}/{PORTAL}{BASE_PATHS[self._vendor(vendor)]}"

    def env(self, *, portal: bool = False, refresh_grant: bool = False) -> dict[str, str]:
        """Every setting the connectors need to talk to this sandbox.

        `portal`: every URL points at the sign-in portal instead. `refresh_grant`: a vendor with
        an OAuth token endpoint (Accounteer) gets the refresh grant's settings instead of its
        long-lived token.
        """
        settings: dict[str, str] = {}
        for api in ALL:
            prefix = api.name.upper()
            settings[prefix + "_BASE_URL"] = self.portal_url(api.name) if portal else self.base_url(api.name)
            if refresh_grant and api.token_path:
                root = f"{self.url}/{PORTAL}" if portal else self.url
                settings[prefix + "_TOKEN_URL"] = root + api.token_path
                settings.update(api.grant_credentials)
            else:
                settings.update(api.credentials)
        return settings

    # -- state -------------------------------------------------------------------------------
    def seed(
        self,
        vendor: str,
        invoice_id: str,
        *,
        status: str | None = None,
        kind: str = "pay-out",
        invoice_number: str | None = None,
    ) -> None:
        """Create (or replace) an invoice in its initial state."""
        vendor = self._vendor(vendor)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
        invoice = Invoice(status or INITIAL_STATUS[vendor], kind, invoice_number or None)
        with self.lock:
            self.invoices[(vendor, str(invoice_id))] = invoice

    def seed_file(self, path: str | Path) -> int:
        """Seed from a CSV with columns vendor,invoice_id[,status,kind,invoice_number]."""
        count = 0
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = {"vendor", "invoice_id"} - {(f or "").strip() for f in reader.fieldnames or ()}
            if missing:
                raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
            for row in reader:
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k}
                if not row.get("vendor") and not row.get("invoice_id"):
                    continue  # blank line
                self.seed(
                    row["vendor"],
                    row["invoice_id"],
                    status=row.get("status") or None,
                    kind=row.get("kind") or "pay-out",
                    invoice_number=row.get("invoice_number") or None,
                )
                count += 1
        return count

    def state(self, vendor: str, invoice_id: str) -> str | None:
        with self.lock:
            invoice = self.invoices.get((self._vendor(vendor), str(invoice_id)))
            return invoice.status if invoice else None

    def changes(self, vendor: str, invoice_id: str) -> int:
        with self.lock:
            invoice = self.invoices.get((self._vendor(vendor), str(invoice_id)))
            return invoice.changes if invoice else 0

    def lookup(self, vendor: str, invoice_id: str, invoice_number: str | None = None) -> Invoice | None:
        """The invoice, created on first sight when auto_create is on. Call with the lock held."""
        key = (vendor, invoice_id)
        invoice = self.invoices.get(key)
        if invoice is None and self.auto_create:
            invoice = self.invoices[key] = Invoice(INITIAL_STATUS[vendor], invoice_number=invoice_number)
        return invoice

    def request_log(self, vendor: str) -> list[tuple[float, str, str]]:
        """(monotonic arrival time, method, path without query) per request received."""
        with self.lock:
            return list(self._logs[self._vendor(vendor)])

    def portal_requests(self) -> list[tuple[float, str, str]]:
        """(monotonic arrival time, method, path without query) per request the portal answered."""
        with self.lock:
            return list(self._portal_log)

    def _note_portal(self, arrived: float, method: str, path: str) -> None:
        with self.lock:
            self._portal_log.append((arrived, method, path))

    def max_in_flight(self, vendor: str) -> int:
        """The most requests this vendor was handling at once since the last reset."""
        with self.lock:
            return self._in_flight_max[self._vendor(vendor)]

    def _stats(self, path: str) -> Reply:
        """GET /_sandbox/requests/{vendor}: request_log() and the in-flight high-water mark."""
        vendor = path.rstrip("/").rsplit("/", 1)[-1]
        if not path.startswith("/_sandbox/requests/") or vendor not in BASE_PATHS:
            return json_reply(404, {"error": "use /_sandbox/requests/{vendor}"})
        with self.lock:
            log = list(self._logs[vendor])
            high = self._in_flight_max[vendor]
            refused = self._limits[vendor].refused if vendor in self._limits else 0
        return json_reply(200, {"vendor": vendor, "requests": log, "max_in_flight": high, "refused_by_limit": refused})

    def _enter(self, vendor: str) -> None:
        with self.lock:
            now = self._in_flight[vendor] = self._in_flight[vendor] + 1
            if now > self._in_flight_max[vendor]:
                self._in_flight_max[vendor] = now

    def _leave(self, vendor: str) -> None:
        with self.lock:
            self._in_flight[vendor] -= 1

    def issued_tokens(self) -> list[str]:
        """Every token handed out since the last reset, access and refresh tokens (for leak checks)."""
        initial = self._initial_refresh_tokens()
        with self.lock:
            return [*self.tokens, *(token for token in self.refresh_tokens if token not in initial)]

    def refresh_token_valid(self, token: str) -> bool:
        """Whether an OAuth refresh token would be honoured now (rotated ones are not)."""
        with self.lock:
            return bool(self.refresh_tokens.get(token))

    @staticmethod
    def _initial_refresh_tokens() -> dict[str, bool]:
        return {v: True for api in ALL for k, v in api.grant_credentials.items() if k.endswith("_REFRESH_TOKEN")}

    def expire_tokens(self) -> None:
        """Make every issued token (modulus' and OAuth access tokens) expire now."""
        with self.lock:
            for token in self.tokens:
                self.tokens[token] = 0.0

    def reset(self) -> None:
        """Forget invoices, faults, logs and tokens (the server keeps running)."""
        with self.lock:
            self.invoices.clear()
            self.tokens.clear()
            self.refresh_tokens = self._initial_refresh_tokens()
            self._portal_log.clear()
            self._limits.clear()
            for v in VENDORS:
                self._faults[v].clear()
                self._logs[v].clear()
                self._in_flight_max[v] = self._in_flight[v]

    # -- the vendors' own rate limits -------------------------------------------------------
    def enforce_limit(
        self,
        vendor: str,
        rate: int,
        *,
        window: float = 1.0,
        retry_after: float | None = None,
        headers: str | None = None,
    ) -> None:
        """Make the vendor enforce a limit it does not publish: at most `rate` requests in any
        `window` seconds (sliding), counting the requests it refuses too, as many APIs do; over
        it, 429 (with `Retry-After` when `retry_after` is given). `headers`: also send the
        limit on every answer, as the IETF draft's `RateLimit-Limit`/`-Remaining`/`-Reset`
        ("ietf", reset in seconds) or as `X-RateLimit-*` ("x", reset as a Unix time). Off by
        default; `reset()` lifts every limit."""
        vendor = self._vendor(vendor)
        if rate < 1 or window <= 0:
            raise ValueError("a limit needs rate >= 1 and window > 0")
        if headers is not None and headers not in LIMIT_HEADERS:
            raise ValueError(f"headers must be one of {sorted(LIMIT_HEADERS)} or None")
        with self.lock:
            self._limits[vendor] = _Limit(int(rate), float(window), retry_after, headers)

    def refused_by_limit(self, vendor: str) -> int:
        """How many requests the vendor's own limit refused (429) since it was set."""
        with self.lock:
            limit = self._limits.get(self._vendor(vendor))
            return limit.refused if limit else 0

    def _over_limit(self, vendor: str, arrived: float) -> tuple[bool, tuple[tuple[str, str], ...]]:
        """Count this request against the vendor's limit: (refused?, the rate-limit headers to send)."""
        with self.lock:
            limit = self._limits.get(vendor)
            if limit is None:
                return False, ()
            arrivals = limit.arrivals
            while arrivals and arrivals[0] <= arrived - limit.window:
                arrivals.popleft()
            refused = len(arrivals) >= limit.rate
            arrivals.append(arrived)  # a refused request counts too
            limit.refused += refused
            used, oldest = len(arrivals), arrivals[0]
        headers: tuple[tuple[str, str], ...] = ()
        if refused and limit.retry_after is not None:
            headers = (("Retry-After", _seconds(limit.retry_after)),)
        if limit.headers is not None:
            remaining = max(0, limit.rate - used)
            reset = max(0.0, oldest + limit.window - arrived)  # when the oldest request leaves the window
            if limit.headers == "ietf":
                headers += (
                    ("RateLimit-Limit", str(limit.rate)),
                    ("RateLimit-Remaining", str(remaining)),
                    ("RateLimit-Reset", str(math.ceil(reset))),
                )
            else:
                headers += (
                    ("X-RateLimit-Limit", str(limit.rate)),
                    ("X-RateLimit-Remaining", str(remaining)),
                    ("X-RateLimit-Reset", str(math.ceil(time.time() + reset))),
                )
        return refused, headers

    # -- faults ------------------------------------------------------------------------------
    def inject(
        self,
        vendor: str,
        fault: str,
        *,
        times: int = 1,
        invoice_id: str | None = None,
        retry_after: float | None = None,
        delay: float | None = None,
    ) -> None:
        """Queue `times` faults for the vendor's invoice requests (optionally one invoice's).

        Faults: "429" (with Retry-After when `retry_after` is given), "500", "502", "503",
        "drop_before" (no change, no answer), "drop_after" (change, no answer), "slow"
        (sleep `delay` s, default 5, then handle), "expire_token" (modulus, accounteer), "bad_body"
        (200, not JSON), "false_success" (200 saying failure; nothing changes), "refusal_500"
        (modulus: a 500 refusing the change with a 55xx code; nothing changes).
        `invoice_id=MODULUS_AUTHENTICATE` aims the fault at the vendor's token endpoint.
        """
        vendor = self._vendor(vendor)
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
        if vendor not in _FAULT_VENDORS.get(fault, VENDORS):
            raise ValueError(f"fault {fault!r} does not apply to {vendor}")
        if invoice_id == MODULUS_AUTHENTICATE and (vendor not in _AUTHENTICATING or fault not in _AUTH_FAULTS):
            raise ValueError(f"fault {fault!r} cannot target {vendor} authentication")
        if times < 1:
            raise ValueError("times must be at least 1")
        entry = _Fault(
            fault,
            int(times),
            None if invoice_id is None else str(invoice_id),
            retry_after,
            5.0 if delay is None else float(delay),
        )
        with self.lock:
            self._faults[vendor].append(entry)

    def clear_faults(self) -> None:
        with self.lock:
            for v in VENDORS:
                self._faults[v].clear()

    def _take_fault(self, vendor: str, invoice_id: str | None, auth: bool) -> _Fault | None:
        """Consume the first queued fault that matches this request (FIFO)."""
        with self.lock:
            queue = self._faults[vendor]
            for i, fault in enumerate(queue):
                target = fault.invoice_id
                if (auth and target == MODULUS_AUTHENTICATE) or (not auth and (target is None or target == invoice_id)):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del queue[i]
                    return fault
        return None

    def _fault_reply(self, api: VendorAPI, fault: _Fault, call: Call) -> Reply:
        kind = fault.kind
        if kind == "bad_body":
            return (200, _BAD_BODY, (), "application/json")  # the header lies too: worst case
        if kind == "false_success":
            return api.false_success(self, call)  # type: ignore[misc]  # inject() checked it exists
        if kind == "refusal_500":
            return api.refusal_500()  # type: ignore[misc]  # inject() checked it exists
        status = int(kind)  # 429 / 500 / 502 / 503, vendor-shaped
        headers = (
            (("Retry-After", _seconds(fault.retry_after)),) if kind == "429" and fault.retry_after is not None else ()
        )
        return api.error_reply(status, headers)

    # -- request handling (called from handler threads) --------------------------------------
    def _handle(
        self,
        api: VendorAPI,
        arrived: float,
        method: str,
        path: str,
        query: str,
        body: bytes,
        headers: RequestHeaders,
        client_ip: str,
    ) -> Reply | None:
        """Answer one request; None means drop the connection without answering."""
        vendor = api.name
        with self.lock:
            self._logs[vendor].append((arrived, method, path))  # no query: tokens stay out
        if self._limits:
            refused, limit_headers = self._over_limit(vendor, arrived)
            if refused:
                return api.error_reply(429, limit_headers)
            if limit_headers:
                reply = self._answer(api, method, path, query, body, headers, client_ip)
                if reply is None:
                    return reply
                status, data, sent, ctype = reply
                return status, data, sent + limit_headers, ctype
        return self._answer(api, method, path, query, body, headers, client_ip)

    def _answer(
        self, api: VendorAPI, method: str, path: str, query: str, body: bytes, headers: RequestHeaders, client_ip: str
    ) -> Reply | None:
        """The vendor's answer to a request its limit let through."""
        vendor = api.name
        if self.latency:
            time.sleep(self.latency)
        for route in api.routes:
            match = route.pattern.match(path)
            if match and route.method == method:
                break
        else:
            return api.no_route(method, path)
        call = Call(headers, body, query, unquote(match.group(1)) if route.pattern.groups else None, None, client_ip)
        if route.parse_body is not None:
            route.parse_body(call)
        fault = self._take_fault(vendor, call.invoice_id, route.authentication) if self._faults[vendor] else None
        if fault is not None:
            kind = fault.kind
            if kind == "drop_before":
                return _DROP
            if kind == "slow":
                time.sleep(fault.delay)  # outside the lock: other requests go on
            elif kind == "expire_token":
                call.expire_token = True
            elif kind != "drop_after":
                return self._fault_reply(api, fault, call)
        reply = route.handle(self, call)
        if fault is not None and fault.kind == "drop_after":
            return _DROP  # committed, but the client never hears about it
        return reply

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _vendor(vendor: str) -> str:
        if vendor not in BASE_PATHS:
            raise ValueError(f"unknown vendor {vendor!r}; known: {', '.join(VENDORS)}")
        return vendor
