"""A local simulator of the four vendor APIs, for the demo, the tests and the benchmark.

One stdlib `ThreadingHTTPServer` on 127.0.0.1 serves every vendor under its own path prefix:

    alfred      {url}/alfred/api/v1/third-party-service   PUT   /invoice/{id}
    accounteer  {url}/accounteer/api/v0.1                 POST  /invoices/{id}
    appzen      {url}/appzen/dictionary-data-services     POST  /invoice/{uuid}/status-sync
    modulus     {url}/modulus                             POST  /api/cmn/Authenticate
                                                          PATCH /api/inv/v1/Invoice?token=T

Every answer follows /work/shared/vendors.md. Each vendor section below says which parts are
documented by the vendor and which the sandbox assumes (a plausible answer where the vendor
says nothing). Faults can be queued per vendor (`Sandbox.inject`) to exercise retries,
ambiguous failures and token expiry.

Run it by hand: `python -m connectors.sandbox [--port 8765] [--seed FILE] [--auto-create]`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import re
import secrets
import shlex
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qs, unquote

VENDORS: tuple[str, ...] = ("alfred", "accounteer", "appzen", "modulus")

# The part of each base URL after the host: everything before the documented path.
BASE_PATHS: dict[str, str] = {
    "alfred": "/alfred/api/v1/third-party-service",
    "accounteer": "/accounteer/api/v0.1",
    "appzen": "/appzen/dictionary-data-services",
    "modulus": "/modulus",
}

INITIAL_STATUS: dict[str, str] = {
    "alfred": "pending",  # documented: invoices start pending
    "accounteer": "draft",  # assumed: an invoice not yet approved
    "appzen": "pending",  # assumed: AppZen holds the customer's status text; none synced yet
    "modulus": "STATUS_DRAFT",  # assumed: STATUS_SENT / STATUS_VOID are the documented targets
}

KINDS = frozenset({"pay-out", "pay-in"})

FAULTS: frozenset[str] = frozenset(
    {"429", "500", "502", "503", "drop_before", "drop_after", "slow", "expire_token", "bad_body", "false_success"}
)
# Faults that make no sense for some vendors (AppZen's success has no body to lie in).
_FAULT_VENDORS: dict[str, frozenset[str]] = {
    "expire_token": frozenset({"modulus"}),
    "false_success": frozenset({"alfred", "accounteer", "modulus"}),
}

# Faults normally hit the invoice-changing requests only. Pass this as `invoice_id` to aim a
# fault at modulus' token endpoint instead.
MODULUS_AUTHENTICATE = "@authenticate"
_AUTH_FAULTS = frozenset({"429", "500", "502", "503", "drop_before", "drop_after", "slow", "bad_body"})

_BAD_JSON = object()  # marker: the request body was not JSON
_DROP = None  # a handler returning this means: close the connection without answering

# (status, body, extra headers, content type)
Reply = tuple[int, bytes, tuple[tuple[str, str], ...], str]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:  # includes JSONDecodeError and UnicodeDecodeError
        return _BAD_JSON


def _json(status: int, obj: Any | bytes, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return (status, obj if isinstance(obj, bytes) else _dumps(obj), headers, "application/json")


def _seconds(value: float) -> str:
    """A Retry-After value: integral seconds without a fraction."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


@dataclass(slots=True)
class _Invoice:
    status: str
    kind: str = "pay-out"
    invoice_number: str | None = None
    changes: int = 0  # times the status actually changed


@dataclass(slots=True)
class _Fault:
    kind: str
    remaining: int
    invoice_id: str | None
    retry_after: float | None
    delay: float


@dataclass(slots=True)
class _Call:
    """What a vendor handler needs to know about one request."""

    headers: Mapping[str, str]
    body: bytes
    query: str
    invoice_id: str | None  # from the path, or modulus' customer_details.invoice_id
    payload: Any  # parsed JSON body where already parsed, else None
    client_ip: str
    expire_token: bool = False


# --------------------------------------------------------------------------------------------
# Vendor-shaped static bodies (built once: the handler stays allocation-light).

# alfred: the 202 body and the 422 shape are documented; 401 and the 429/5xx bodies are
# assumed (the API looks NestJS-based: {"statusCode", "message"}).
_ALFRED_OK = _dumps({"statusCode": 202, "data": True, "message": "update Invoice"})
_ALFRED_401 = _dumps({"statusCode": 401, "message": "Unauthorized"})
_ALFRED_404 = _dumps({"statusCode": 404, "message": "Invoice not found"})
_ALFRED_FALSE = _dumps({"statusCode": 200, "data": False, "message": "update invoice/transaction"})

# accounteer: only the 200 invoice object is documented; the error bodies are assumed
# (OAuth-style 401, Rails-style 422).
_ACC_401 = _dumps({"error": "invalid_token", "error_description": "The access token is invalid"})
_ACC_404 = _dumps({"error": "not_found"})
_ACC_BAD_STATUS = _dumps({"errors": {"status": ["is not a valid status"]}})
_ACC_ALREADY = _dumps({"errors": {"status": ["Invoice is already approved"]}})

# modulus: the 200 bodies, the 400/500 shape, 5505/5526 and the void-date message are
# documented; the other codes and messages are assumed.
_MOD_OK = _dumps({"result": True, "title": "Success", "message": "Invoice Status changed successfully"})
_MOD_AUTH_FAILED = _dumps({"result": False, "title": "Error", "message": "Authentication failed."})
_MOD_FALSE = _dumps({"result": False, "title": "Error", "message": "Something went wrong"})
_MOD_VOID_FUTURE = _dumps({"result": False, "title": "Error", "message": "The void date cannot be in the future."})
_MOD_APP_ID = "sandbox-app-0001"


def _mod_error(message: str, code: int) -> bytes:
    return _dumps({"result": False, "title": "Error", "message": message, "object": {"error_code": code}})


_MOD_MISSING_PARAMS = _mod_error("Missing parameters.", 5001)
_MOD_BAD_TOKEN = _mod_error("Invalid or expired token.", 5002)

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_BAD_BODY = b"<html>oops</html>"
_DEC = re.compile(r'"@@dec:(-?[0-9.]+)@@"')
_CENT = Decimal("0.01")
_VAT = Decimal("0.21")


def _dec(value: Decimal) -> str:
    """A placeholder that becomes a bare JSON decimal (e.g. 221.10) after dumping."""
    return f"@@dec:{value.quantize(_CENT)}@@"


def _appzen_error(status: int, detail: str) -> bytes:
    """AppZen's documented error shape, with a fresh 8-hex error code."""
    now = datetime.now(timezone.utc)
    return _dumps(
        {
            "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+0000",
            "status": str(status),
            "error": HTTPStatus(status).phrase,
            "message": f"Error code : {random.getrandbits(32):08x} - {detail}",
        }
    )


# --------------------------------------------------------------------------------------------
# Routing: the vendor is the first path segment; each vendor has one or two routes.

_ROUTES: dict[str, tuple[tuple[str, re.Pattern[str], str], ...]] = {
    "alfred": (("PUT", re.compile(r"/alfred/api/v1/third-party-service/invoice/([^/]+)/?\Z"), "invoice"),),
    "accounteer": (("POST", re.compile(r"/accounteer/api/v0\.1/invoices/([^/]+)/?\Z"), "invoice"),),
    "appzen": (("POST", re.compile(r"/appzen/dictionary-data-services/invoice/([^/]+)/status-sync/?\Z"), "invoice"),),
    "modulus": (
        ("POST", re.compile(r"/modulus/api/cmn/Authenticate/?\Z"), "auth"),
        ("PATCH", re.compile(r"/modulus/api/inv/v1/Invoice/?\Z"), "invoice"),
    ),
}


class _Headers(dict):
    """Request headers with case-insensitive `get` (keys are stored lower-case)."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never keeps the process alive
    request_queue_size = 1024  # the benchmark opens many pooled connections at once
    sandbox: "Sandbox"

    def __init__(self, address: tuple[str, int], sandbox: "Sandbox") -> None:
        self.sandbox = sandbox
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def close_open_connections(self) -> None:
        """Keep-alive connections outlive serve_forever(): cut them so stop() really stops."""
        with self.connections_lock:
            conns = list(self.open_connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the benchmark reuses pooled connections
    server_version = "invoice-sync-sandbox"
    disable_nagle_algorithm = True  # small answers must not wait for delayed ACKs
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)
        try:
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
        if vendor not in _ROUTES:
            self._write(_json(404, {"error": "unknown sandbox path; vendors: " + ", ".join(VENDORS)}))
            return
        sandbox._enter(vendor)
        try:
            reply = sandbox._handle(vendor, arrived, self.command, path, query, body, self.headers, self.client_address[0])
        except Exception:  # a sandbox bug: answer and show it, never hang the client
            traceback.print_exc(file=sys.stderr)
            reply = _json(500, {"error": "sandbox internal error"})
        finally:
            sandbox._leave(vendor)
        if reply is _DROP:
            self._drop()
            return
        if vendor == "appzen":  # documented: every AppZen answer carries x-correlation-id
            status, data, headers, ctype = reply
            reply = (status, data, headers + (("x-correlation-id", str(uuid.uuid4())),), ctype)
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
            chunks = []
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
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------


class Sandbox:
    """The four vendor APIs on one local port, with inspectable state and queued faults."""

    # The sandbox's own fake credentials: distinctive so tests can scan outputs for leaks.
    CREDENTIALS: dict[str, str] = {
        "ALFRED_API_KEY": "sandbox-alfred-key-5f1e",
        "ALFRED_API_SECRET": "sandbox-alfred-secret-9c2d",
        "ACCOUNTEER_ACCESS_TOKEN": "sandbox-accounteer-token-3b7a",
        "APPZEN_API_KEY": "sandbox-appzen-key-8e41",
        "APPZEN_CUSTOMER_ID": "sandbox-appzen-customer-6d09",
        "APPZEN_CUSTOMER_KEY": "sandbox-appzen-customer-key-a7f3",
        "MODULUS_APP": "sandbox-modulus-app-2c58",
        "MODULUS_SECRET": "sandbox-modulus-secret-e6b4",
    }

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        auto_create: bool = False,
        token_lifetime: float = 15 * 60,
        latency: float = 0.0,
    ) -> None:
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("the sandbox only binds to 127.0.0.1")
        self.host = "127.0.0.1"
        self.port = port
        self.auto_create = auto_create
        self.token_lifetime = float(token_lifetime)  # documented: 15 minutes
        self.latency = float(latency)
        self._lock = threading.Lock()  # one lock around all state below
        self._invoices: dict[tuple[str, str], _Invoice] = {}
        self._faults: dict[str, list[_Fault]] = {v: [] for v in VENDORS}
        self._logs: dict[str, list[tuple[float, str, str]]] = {v: [] for v in VENDORS}
        self._tokens: dict[str, float] = {}  # modulus token -> monotonic expiry
        self._in_flight: dict[str, int] = {v: 0 for v in VENDORS}  # requests being handled now
        self._in_flight_max: dict[str, int] = {v: 0 for v in VENDORS}  # high-water mark since reset
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        c = self.CREDENTIALS
        self._modulus_form = (c["MODULUS_APP"], c["MODULUS_SECRET"])
        self._accounteer_auth = "Bearer " + c["ACCOUNTEER_ACCESS_TOKEN"]

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Sandbox":
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

    def __enter__(self) -> "Sandbox":
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

    def env(self) -> dict[str, str]:
        """Every setting the connectors need to talk to this sandbox."""
        c = self.CREDENTIALS
        return {
            "ALFRED_BASE_URL": self.base_url("alfred"),
            "ALFRED_API_KEY": c["ALFRED_API_KEY"],
            "ALFRED_API_SECRET": c["ALFRED_API_SECRET"],
            "ACCOUNTEER_BASE_URL": self.base_url("accounteer"),
            "ACCOUNTEER_ACCESS_TOKEN": c["ACCOUNTEER_ACCESS_TOKEN"],
            "APPZEN_BASE_URL": self.base_url("appzen"),
            "APPZEN_API_KEY": c["APPZEN_API_KEY"],
            "APPZEN_CUSTOMER_ID": c["APPZEN_CUSTOMER_ID"],
            "APPZEN_CUSTOMER_KEY": c["APPZEN_CUSTOMER_KEY"],
            "MODULUS_BASE_URL": self.base_url("modulus"),
            "MODULUS_APP": c["MODULUS_APP"],
            "MODULUS_SECRET": c["MODULUS_SECRET"],
        }

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
        invoice = _Invoice(status or INITIAL_STATUS[vendor], kind, invoice_number or None)
        with self._lock:
            self._invoices[(vendor, str(invoice_id))] = invoice

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
        with self._lock:
            invoice = self._invoices.get((self._vendor(vendor), str(invoice_id)))
            return invoice.status if invoice else None

    def changes(self, vendor: str, invoice_id: str) -> int:
        with self._lock:
            invoice = self._invoices.get((self._vendor(vendor), str(invoice_id)))
            return invoice.changes if invoice else 0

    def request_log(self, vendor: str) -> list[tuple[float, str, str]]:
        """(monotonic arrival time, method, path without query) per request received."""
        with self._lock:
            return list(self._logs[self._vendor(vendor)])

    def max_in_flight(self, vendor: str) -> int:
        """The most requests this vendor was handling at once since the last reset."""
        with self._lock:
            return self._in_flight_max[self._vendor(vendor)]

    def _stats(self, path: str) -> Reply:
        """GET /_sandbox/requests/{vendor}: request_log() and the in-flight high-water mark."""
        vendor = path.rstrip("/").rsplit("/", 1)[-1]
        if not path.startswith("/_sandbox/requests/") or vendor not in BASE_PATHS:
            return _json(404, {"error": "use /_sandbox/requests/{vendor}"})
        with self._lock:
            log = list(self._logs[vendor])
            high = self._in_flight_max[vendor]
        return _json(200, {"vendor": vendor, "requests": log, "max_in_flight": high})

    def _enter(self, vendor: str) -> None:
        with self._lock:
            now = self._in_flight[vendor] = self._in_flight[vendor] + 1
            if now > self._in_flight_max[vendor]:
                self._in_flight_max[vendor] = now

    def _leave(self, vendor: str) -> None:
        with self._lock:
            self._in_flight[vendor] -= 1

    def issued_tokens(self) -> list[str]:
        """Every modulus token handed out since the last reset (for leak checks)."""
        with self._lock:
            return list(self._tokens)

    def expire_tokens(self) -> None:
        """Make every issued modulus token expire now."""
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = 0.0

    def reset(self) -> None:
        """Forget invoices, faults, logs and tokens (the server keeps running)."""
        with self._lock:
            self._invoices.clear()
            self._tokens.clear()
            for v in VENDORS:
                self._faults[v].clear()
                self._logs[v].clear()
                self._in_flight_max[v] = self._in_flight[v]

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
        (sleep `delay` s, default 5, then handle), "expire_token" (modulus), "bad_body"
        (200, not JSON), "false_success" (200 saying failure; nothing changes).
        `invoice_id=MODULUS_AUTHENTICATE` aims the fault at modulus' token endpoint.
        """
        vendor = self._vendor(vendor)
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
        if vendor not in _FAULT_VENDORS.get(fault, VENDORS):
            raise ValueError(f"fault {fault!r} does not apply to {vendor}")
        if invoice_id == MODULUS_AUTHENTICATE and (vendor != "modulus" or fault not in _AUTH_FAULTS):
            raise ValueError(f"fault {fault!r} cannot target {vendor} authentication")
        if times < 1:
            raise ValueError("times must be at least 1")
        entry = _Fault(fault, int(times), None if invoice_id is None else str(invoice_id), retry_after,
                       5.0 if delay is None else float(delay))
        with self._lock:
            self._faults[vendor].append(entry)

    def clear_faults(self) -> None:
        with self._lock:
            for v in VENDORS:
                self._faults[v].clear()

    def _take_fault(self, vendor: str, invoice_id: str | None, auth: bool) -> _Fault | None:
        """Consume the first queued fault that matches this request (FIFO)."""
        with self._lock:
            queue = self._faults[vendor]
            for i, fault in enumerate(queue):
                target = fault.invoice_id
                if (auth and target == MODULUS_AUTHENTICATE) or (
                    not auth and (target is None or target == invoice_id)
                ):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del queue[i]
                    return fault
        return None

    def _fault_reply(self, vendor: str, fault: _Fault, call: _Call) -> Reply:
        kind = fault.kind
        if kind == "bad_body":
            return (200, _BAD_BODY, (), "application/json")  # the header lies too: worst case
        if kind == "false_success":
            if vendor == "alfred":
                return _json(200, _ALFRED_FALSE)
            if vendor == "modulus":
                return _json(200, _MOD_FALSE)
            # accounteer: 200 with the invoice as it is (not approved) — assumed failure mode
            with self._lock:
                invoice = self._invoices.get((vendor, call.invoice_id or ""))
                current = invoice or _Invoice(INITIAL_STATUS[vendor])
                body = _accounteer_invoice(call.invoice_id or "", current)
            return _json(200, body)
        status = int(kind)  # 429 / 500 / 502 / 503, vendor-shaped
        headers = (("Retry-After", _seconds(fault.retry_after)),) if kind == "429" and fault.retry_after is not None else ()
        phrase = HTTPStatus(status).phrase
        if vendor == "alfred":
            message = "ThrottlerException: Too Many Requests" if status == 429 else phrase
            return _json(status, {"statusCode": status, "message": message}, headers)
        if vendor == "accounteer":
            error = "rate_limit_exceeded" if status == 429 else "server_error"
            return _json(status, {"error": error, "error_description": phrase}, headers)
        if vendor == "appzen":
            detail = "Rate limit exceeded" if status == 429 else phrase
            return _json(status, _appzen_error(status, detail), headers)
        if status == 500:  # modulus: documented 500 shape; 429/502/503 assumed without object
            return _json(status, _mod_error("Internal server error.", 5000), headers)
        message = "Too many requests." if status == 429 else phrase + "."
        return _json(status, {"result": False, "title": "Error", "message": message}, headers)

    # -- request handling (called from handler threads) --------------------------------------
    def _handle(
        self,
        vendor: str,
        arrived: float,
        method: str,
        path: str,
        query: str,
        body: bytes,
        headers: Mapping[str, str],
        client_ip: str,
    ) -> Reply | None:
        """Answer one request; None means drop the connection without answering."""
        with self._lock:
            self._logs[vendor].append((arrived, method, path))  # no query: tokens stay out
        if self.latency:
            time.sleep(self.latency)
        route = None
        match = None
        for route_method, pattern, name in _ROUTES[vendor]:
            match = pattern.match(path)
            if match and route_method == method:
                route = name
                break
        if route is None:
            return self._no_route(vendor, method, path)
        call = _Call(headers, body, query, unquote(match.group(1)) if match.groups() else None, None, client_ip)
        if vendor == "modulus" and route == "invoice":
            call.payload = _loads(body)
            details = call.payload.get("customer_details") if isinstance(call.payload, dict) else None
            raw_id = details.get("invoice_id") if isinstance(details, dict) else None
            call.invoice_id = None if raw_id is None else str(raw_id)
        fault = self._take_fault(vendor, call.invoice_id, route == "auth") if self._faults[vendor] else None
        if fault is not None:
            kind = fault.kind
            if kind == "drop_before":
                return _DROP
            if kind == "slow":
                time.sleep(fault.delay)  # outside the lock: other requests go on
            elif kind == "expire_token":
                call.expire_token = True
            elif kind != "drop_after":
                return self._fault_reply(vendor, fault, call)
        if vendor == "alfred":
            reply = self._alfred(call)
        elif vendor == "accounteer":
            reply = self._accounteer(call)
        elif vendor == "appzen":
            reply = self._appzen(call)
        elif route == "auth":
            reply = self._modulus_auth(call)
        else:
            reply = self._modulus_invoice(call)
        if fault is not None and fault.kind == "drop_after":
            return _DROP  # committed, but the client never hears about it
        return reply

    def _no_route(self, vendor: str, method: str, path: str) -> Reply:
        if vendor == "alfred":  # NestJS' default answer, assumed
            return _json(404, {"statusCode": 404, "message": f"Cannot {method} {path}", "error": "Not Found"})
        if vendor == "accounteer":
            return _json(404, _ACC_404)
        if vendor == "appzen":
            return _json(404, _appzen_error(404, "The resource you specified cannot be not found"))
        return _json(404, {"result": False, "title": "Error", "message": "Not found."})

    def _lookup(self, vendor: str, invoice_id: str, invoice_number: str | None = None) -> _Invoice | None:
        """The invoice, created on first sight when auto_create is on. Call with the lock held."""
        key = (vendor, invoice_id)
        invoice = self._invoices.get(key)
        if invoice is None and self.auto_create:
            invoice = self._invoices[key] = _Invoice(INITIAL_STATUS[vendor], invoice_number=invoice_number)
        return invoice

    # alfred ---------------------------------------------------------------------------------
    @staticmethod
    def _alfred_422(message: str, path: str, validation: str) -> Reply:
        # Documented shape: {"statusCode":422,...,"reasons":[...],"code":"VALIDATION_ERROR"}.
        return _json(
            422,
            {
                "statusCode": 422,
                "message": "A logic validation has not been fulfilled",
                "reasons": [{"message": message, "path": path, "validation": validation}],
                "code": "VALIDATION_ERROR",
            },
        )

    def _alfred(self, call: _Call) -> Reply:
        h = call.headers
        c = self.CREDENTIALS
        if h.get("API-Key") != c["ALFRED_API_KEY"] or h.get("API-Secret") != c["ALFRED_API_SECRET"]:
            return _json(401, _ALFRED_401)  # assumed: the wrong-credentials shape is undocumented
        data = _loads(call.body)
        if data is _BAD_JSON:
            return _json(400, {"statusCode": 400, "message": "Unexpected token in JSON body", "error": "Bad Request"})
        wanted = data.get("status") if isinstance(data, dict) else None
        if wanted not in ("approved", "cancel"):  # documented values
            return self._alfred_422("status must be one of the following values: approved, cancel", "status", "isIn")
        target = "approved" if wanted == "approved" else "cancelled"
        with self._lock:
            invoice = self._lookup("alfred", call.invoice_id or "")
            if invoice is None:
                return _json(404, _ALFRED_404)  # documented status, assumed body
            if invoice.kind == "pay-in":  # documented: pay-in invoices are approved by alfred
                return self._alfred_422(
                    "Pay-in invoices are approved by alfred and cannot be changed through this API", "id", "payOut"
                )
            if invoice.status == target:  # assumed wording; clients must treat it as done
                return self._alfred_422(f"Invoice is already {target}", "status", "transition")
            if invoice.status != "pending":
                return self._alfred_422(f"Invoice status cannot be changed from {invoice.status}", "status", "transition")
            invoice.status = target
            invoice.changes += 1
        return _json(202, _ALFRED_OK)  # documented

    # accounteer -----------------------------------------------------------------------------
    def _accounteer(self, call: _Call) -> Reply:
        if call.headers.get("Authorization") != self._accounteer_auth:  # documented: OAuth bearer
            return _json(401, _ACC_401)
        data = _loads(call.body)
        if data is _BAD_JSON:
            return _json(400, {"error": "invalid_request", "error_description": "The request body is not valid JSON"})
        inner = data.get("invoice") if isinstance(data, dict) else None
        if not isinstance(inner, dict) or inner.get("status") != "approved":  # only approval exists
            return _json(422, _ACC_BAD_STATUS)
        with self._lock:
            invoice = self._lookup("accounteer", call.invoice_id or "")
            if invoice is None:
                return _json(404, _ACC_404)
            if invoice.status == "approved":  # documented: approved is final; wording assumed
                return _json(422, _ACC_ALREADY)
            if invoice.status != "draft":
                return _json(422, {"errors": {"status": [f"Invoice status cannot be changed from {invoice.status}"]}})
            invoice.status = "approved"
            invoice.changes += 1
            body = _accounteer_invoice(call.invoice_id or "", invoice)
        return _json(200, body)  # documented: the whole invoice object

    # appzen ---------------------------------------------------------------------------------
    def _appzen(self, call: _Call) -> Reply:
        h = call.headers
        c = self.CREDENTIALS
        if (
            h.get("x-api-key") != c["APPZEN_API_KEY"]
            or h.get("customer-id") != c["APPZEN_CUSTOMER_ID"]
            or h.get("customer-key") != c["APPZEN_CUSTOMER_KEY"]
        ):  # documented: 401 for a missing/invalid key (the sandbox never answers 403)
            return _json(401, _appzen_error(401, "Invalid or missing x-api-key, customer-id or customer-key"))
        data = _loads(call.body)
        problem = _appzen_body_problem(data)
        if problem:
            return _json(400, _appzen_error(400, problem))
        with self._lock:
            invoice = self._lookup("appzen", call.invoice_id or "")
            if invoice is None:  # documented message (typo included)
                return _json(404, _appzen_error(404, "The resource you specified cannot be not found"))
            if data["appzen_invoice_state"] == "ERROR":
                return (200, b"", (), "")  # an error report changes no status
            new = data["invoice_status"]
            current = invoice.status.casefold()
            if current != new.casefold():
                if current in ("approved", "cancelled"):  # assumed: final states stay final
                    return _json(400, _appzen_error(400, "Invoice already finalised"))
                invoice.status = new
                invoice.changes += 1
        return (200, b"", (), "")  # documented: 200 with an empty body

    # modulus --------------------------------------------------------------------------------
    def _modulus_auth(self, call: _Call) -> Reply:
        fields = parse_qs(call.body.decode("utf-8", "replace"), keep_blank_values=True)
        app = (fields.get("app") or [""])[0]
        secret = (fields.get("secret") or [""])[0]
        if not app or not secret:
            return _json(400, _MOD_MISSING_PARAMS)  # documented 400; code 5001 assumed
        if (app, secret) != self._modulus_form:
            return _json(401, _MOD_AUTH_FAILED)  # documented
        token = secrets.token_hex(16)
        now = time.monotonic()
        with self._lock:
            if len(self._tokens) > 10_000:  # long benchmarks: forget long-expired tokens
                self._tokens = {t: e for t, e in self._tokens.items() if e > now}
            self._tokens[token] = now + self.token_lifetime
        return _json(
            200,
            {
                "result": True,
                "title": "Success",
                "message": "Authenticated",
                "object": {"token": token, "app_id": _MOD_APP_ID, "ip": call.client_ip},
            },
        )

    def _modulus_invoice(self, call: _Call) -> Reply:
        token = (parse_qs(call.query).get("token") or [""])[0]
        now = time.monotonic()
        with self._lock:
            expiry = self._tokens.get(token) if token else None
            if expiry is not None and call.expire_token:
                self._tokens[token] = expiry = 0.0  # once expired, it stays expired
        if expiry is None or expiry <= now:
            return _json(401, _MOD_BAD_TOKEN)  # assumed status and code
        data = call.payload
        if data is _BAD_JSON or not isinstance(data, dict):
            return _json(400, _mod_error("Invalid JSON payload.", 5500))  # assumed
        details = data.get("customer_details")
        if not isinstance(details, dict):
            return _json(400, _MOD_MISSING_PARAMS)  # assumed
        status = details.get("status")
        if status is None or status == "":
            return _json(400, _mod_error("Missing status.", 5526))  # documented code
        if status not in ("STATUS_SENT", "STATUS_VOID"):
            return _json(400, _mod_error("Invalid status", 5505))  # documented code
        if call.invoice_id is None or call.invoice_id == "":
            return _json(400, _mod_error("Missing invoice id.", 5503))  # assumed
        number = details.get("invoice_number")
        if number is None or number == "":
            return _json(400, _mod_error("Missing invoice number.", 5510))  # documented required; code assumed
        void_date = details.get("void_date")
        if void_date not in (None, ""):
            try:
                when = datetime.strptime(str(void_date), "%Y-%m-%d %H:%M:%S")
            except ValueError:
                return _json(400, _mod_error("Invalid void date.", 5511))  # assumed
            # The vendor's clock zone is unknown: only refuse what is future in both local time
            # and UTC (plus a minute of clock skew).
            latest = max(datetime.now(), datetime.now(timezone.utc).replace(tzinfo=None)) + timedelta(minutes=1)
            if when > latest:
                return _json(400, _MOD_VOID_FUTURE)  # documented: message only, no object
        number = str(number)
        with self._lock:
            invoice = self._lookup("modulus", call.invoice_id, number)
            if invoice is None or (invoice.invoice_number is not None and invoice.invoice_number != number):
                return _json(400, _mod_error("Invoice not found.", 5504))  # assumed
            if invoice.status == status:
                return _json(400, _mod_error("Invoice already has this status.", 5512))  # assumed
            if invoice.status == "STATUS_VOID":
                return _json(400, _mod_error("A void invoice cannot be changed.", 5513))  # assumed
            if (invoice.status, status) not in _MODULUS_TRANSITIONS:
                return _json(400, _mod_error(f"Invoice status cannot be changed from {invoice.status}.", 5513))
            invoice.status = status
            invoice.changes += 1
        return _json(200, _MOD_OK)  # documented

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _vendor(vendor: str) -> str:
        if vendor not in BASE_PATHS:
            raise ValueError(f"unknown vendor {vendor!r}; known: {', '.join(VENDORS)}")
        return vendor


# Assumed: sending a draft, voiding a draft or a sent invoice; a void invoice is final.
_MODULUS_TRANSITIONS = frozenset(
    {("STATUS_DRAFT", "STATUS_SENT"), ("STATUS_DRAFT", "STATUS_VOID"), ("STATUS_SENT", "STATUS_VOID")}
)


def _appzen_body_problem(data: Any) -> str | None:
    """Why an AppZen status-sync body is invalid (documented required fields), or None."""
    if data is _BAD_JSON or not isinstance(data, dict):
        return "Malformed JSON request"
    state = data.get("appzen_invoice_state")
    if not state:
        return "appzen_invoice_state is required"
    if state not in ("CREATED", "ERROR"):
        return "appzen_invoice_state must be one of CREATED, ERROR"
    stamp = data.get("timestamp")
    if not stamp:
        return "timestamp is required"
    try:
        datetime.fromisoformat(str(stamp))
    except ValueError:
        return "timestamp is not a valid date-time"
    if state == "CREATED":
        for name in ("invoice_id", "invoice_status"):
            value = data.get(name)
            if not isinstance(value, str) or not value.strip():
                return f"{name} is required when appzen_invoice_state is CREATED"
    elif not isinstance(data.get("error_data"), dict):
        return "error_data is required when appzen_invoice_state is ERROR"
    return None


def _hex40(*parts: str) -> str:
    return hashlib.sha1(":".join(parts).encode()).hexdigest()


_ORG_ID = _hex40("sandbox-organization")
_TEMPLATE_ID = _hex40("sandbox-template")
_TAX_ID = _hex40("sandbox-tax-vat21")
_GL_ACCOUNT = {"id": _hex40("sandbox-gl-7000000"), "code": "7000000", "title": "Sales", "description": None}


def _accounteer_invoice(invoice_id: str, invoice: _Invoice) -> bytes:
    """The whole invoice object, modelled on the documented example; amounts are bare decimals."""
    digest = _hex40(invoice_id)
    base = (Decimal(1000 + int(digest[:8], 16) % 99000) / 100).quantize(_CENT)  # stable per id
    tax = (base * _VAT).quantize(_CENT, ROUND_HALF_UP)
    total = base + tax
    issued = date(2026, 1, 1) + timedelta(days=int(digest[8:10], 16))
    obj = {
        "id": invoice_id,
        "organization_id": _ORG_ID,
        "document_number": invoice.invoice_number or "-",
        "client_id": _hex40(invoice_id, "client"),
        "template_id": _TEMPLATE_ID,
        "total_amount": _dec(total),
        "total_base_amount": _dec(base),
        "total_tax_amount": _dec(tax),
        "amount_due": _dec(total),
        "currency": "EUR",
        "date_issued": issued.isoformat(),
        "date_due": (issued + timedelta(days=30)).isoformat(),
        "date_created": issued.isoformat(),
        "date_updated": date.today().isoformat(),
        "status": invoice.status,
        "reference": None,
        "items": [
            {
                "id": _hex40(invoice_id, "item"),
                "title": "item 01",
                "description": None,
                "quantity": 1,
                "item_base_amount": _dec(base),
                "tax_id": _TAX_ID,
                "tax_name": "VAT 21%",
                "tax_percentage": 21,
                "line_base_amount": _dec(base),
                "line_tax_amount": _dec(tax),
                "line_total_amount": _dec(total),
                "tax_included": False,
                "price": _dec(base),
                "gl_account": _GL_ACCOUNT,
            }
        ],
        "attachments": [],
    }
    return _DEC.sub(r"\1", json.dumps(obj, separators=(",", ":"))).encode()


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve the sandbox until Ctrl-C, printing its URLs and the settings to export."""
    parser = argparse.ArgumentParser(
        prog="invoice-sync sandbox", description="Serve local simulators of the four vendor APIs."
    )
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 picks a free one)")
    parser.add_argument("--seed", type=Path, metavar="FILE", help="CSV: vendor,invoice_id[,status,kind,invoice_number]")
    parser.add_argument("--auto-create", action="store_true", help="create unknown invoices on first request")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    args = parser.parse_args(argv)

    sandbox = Sandbox(port=args.port, auto_create=args.auto_create, latency=args.latency)
    seeded = 0
    if args.seed is not None:
        try:
            seeded = sandbox.seed_file(args.seed)
        except (OSError, ValueError, KeyError) as exc:
            print(f"sandbox: cannot load seed file: {exc}", file=sys.stderr)
            return 2
    try:
        sandbox.start()
    except OSError as exc:
        print(f"sandbox: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    lines = [f"# invoice-sync sandbox listening on {sandbox.url}"]
    lines += [f"#   {vendor:<11} {sandbox.base_url(vendor)}" for vendor in VENDORS]
    if args.seed is not None:
        lines.append(f"# seeded {seeded} invoice(s) from {args.seed}")
    if args.auto_create:
        lines.append("# unknown invoices are created on first request")
    lines.append("# paste these into the shell that runs invoice-sync (fake sandbox credentials):")
    lines += [f"export {name}={shlex.quote(value)}" for name, value in sandbox.env().items()]
    lines.append("# Ctrl-C to stop")
    print("\n".join(lines), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    print("# sandbox stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
