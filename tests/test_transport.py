"""The shared sender: retries, backoff, Retry-After, pacing, stop on refused credentials."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from datetime import UTC

import pytest
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from connectors.reading import RETRYABLE_EXCEPTIONS, Action
from connectors.sending.client import VendorClient
from connectors.sending.http import ONE_WRITE_MAX, Http
from connectors.sending.ratelimit import HEADROOM, RateLimiter
from connectors.vocabulary import Decision, ErrorCode, Outcome
from connectors.wire import Request
from tests.helpers import FAKE_ENV, connector, response

OK = (202, {"statusCode": 202, "data": True, "message": "update Invoice"})


class ScriptedHttp:
    """Stands in for `Http`: answers from a script (status, body[, headers]) or raises the exception given."""

    def __init__(self, script):
        self.script = list(script)
        self.calls: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()

    def request(self, method, url, **kwargs):
        with self.lock:
            self.calls.append((method, url, kwargs))
            step = self.script.pop(0) if self.script else OK
        if isinstance(step, BaseException):
            raise step
        return response(*step)

    def close(self):
        pass


def client_for(vendor, script, env=None, **limiter):
    env = {**FAKE_ENV, **(env or {}), f"{vendor.upper()}_BACKOFF_INITIAL": "0.01"}
    sleeps: list[float] = []
    http = ScriptedHttp(script)
    c = VendorClient(
        connector(vendor, env),
        http=http,
        sleep=sleeps.append,
        limiter=RateLimiter(limiter.get("rate"), sleep=sleeps.append),
    )
    return c, http, sleeps


def decision(n=1, vendor="alfred", invoice_id="000123", verdict="approve", **kw):
    return Decision(n, invoice_id, vendor, verdict, **kw)


def test_success_first_time_carries_credentials_once():
    c, http, _ = client_for("alfred", [OK])
    result = c.send(decision())
    assert (result.outcome, result.http_status, result.attempts) == (Outcome.SUCCEEDED, 202, 1)
    method, url, kwargs = http.calls[0]
    assert (method, url) == ("PUT", FAKE_ENV["ALFRED_BASE_URL"] + "/invoice/000123")
    assert kwargs["headers"]["API-Key"] == FAKE_ENV["ALFRED_API_KEY"]
    assert kwargs["json"] == {"status": "approved"}
    assert kwargs["timeout"] == 30.0


def test_transient_failures_are_retried_then_succeed():
    c, http, sleeps = client_for(
        "alfred",
        [
            (503, None),
            ProtocolError("Connection aborted.", ConnectionResetError()),
            ReadTimeoutError(None, "/x", "Read timed out."),
            OK,
        ],
    )
    result = c.send(decision())
    assert (result.outcome, result.attempts) == (Outcome.SUCCEEDED, 4)
    assert len(http.calls) == 4
    assert len(sleeps) == 3 and sleeps[0] < sleeps[2]  # exponential


def test_retries_run_out():
    c, http, _ = client_for("alfred", [(500, {"message": "boom"})] * 9)
    result = c.send(decision())
    assert result.outcome is Outcome.FAILED
    assert result.error_code is ErrorCode.RETRIES_EXHAUSTED
    assert result.attempts == 5 == len(http.calls)
    assert result.error_message.startswith("gave up after 5 attempts")


def test_retry_after_is_honoured_and_clamped():
    env = {"ALFRED_RETRY_AFTER_MAX": "10"}
    c, _, sleeps = client_for(
        "alfred", [(429, None, {"Retry-After": "3"}), (429, None, {"Retry-After": "3600"}), OK], env
    )
    result = c.send(decision())
    assert result.outcome is Outcome.SUCCEEDED and result.attempts == 3
    assert 3.0 in sleeps and 10.0 in sleeps and 3600.0 not in sleeps


def test_rate_limited_until_the_end():
    c, _, _ = client_for("alfred", [(429, None)] * 5)
    result = c.send(decision())
    assert (result.outcome, result.error_code, result.http_status) == (Outcome.FAILED, ErrorCode.RATE_LIMITED, 429)


class TimedHttp(ScriptedHttp):
    """A ScriptedHttp that notes the (fake) time each request went out."""

    def __init__(self, script, clock):
        super().__init__(script)
        self.clock = clock
        self.sent_at: list[float] = []

    def request(self, method, url, **kwargs):
        self.sent_at.append(self.clock())
        return super().request(method, url, **kwargs)


@pytest.mark.parametrize("retry_after, pause", [("2", 2.0), ("0", 0.0)])
def test_a_429_pauses_the_whole_vendor(retry_after, pause):
    # Fake time: only the limiter moves the clock (it is what holds requests back); tenacity's
    # own backoff sleep is recorded but takes no time, so any wait seen is the vendor's pause.
    now = [1000.0]
    limiter_waits: list[float] = []

    def limiter_sleep(seconds):
        limiter_waits.append(seconds)
        now[0] += seconds

    env = {**FAKE_ENV, "ALFRED_BACKOFF_INITIAL": "0.01", "ALFRED_RETRY_AFTER_MAX": "10"}
    http = TimedHttp([(429, None, {"Retry-After": retry_after}), OK, OK], clock=lambda: now[0])
    backoffs: list[float] = []
    c = VendorClient(
        connector("alfred", env),
        http=http,
        sleep=backoffs.append,
        limiter=RateLimiter(None, clock=lambda: now[0], sleep=limiter_sleep),
    )
    other: list = []

    def backoff_while_another_row_is_sent(seconds):
        # Row 1 got the 429 and backs off; meanwhile row 2, which never saw a 429, is sent.
        backoffs.append(seconds)
        if not other:
            other.append(c.send(decision(2, invoice_id="000456")))

    c._retrying.sleep = backoff_while_another_row_is_sent
    first = c.send(decision(1))
    assert (first.outcome, first.attempts) == (Outcome.SUCCEEDED, 2)
    assert [(r.outcome, r.attempts) for r in other] == [(Outcome.SUCCEEDED, 1)]
    assert backoffs == [pause]  # row 1 itself waited the Retry-After
    # Row 2 went out only once the pause was over, and row 1's retry no earlier: the whole vendor waited.
    assert http.sent_at == pytest.approx([1000.0, 1000.0 + pause, 1000.0 + pause])
    assert sum(limiter_waits) == pytest.approx(pause)


def test_permanent_failure_is_not_retried():
    c, _http, _ = client_for("alfred", [(404, {"statusCode": 404, "message": "Invoice not found"})])
    result = c.send(decision())
    assert (result.outcome, result.error_code, result.attempts) == (Outcome.FAILED, ErrorCode.NOT_FOUND, 1)
    assert "Invoice not found" in result.error_message


def test_refused_credentials_stop_the_vendor():
    c, http, _ = client_for("alfred", [(401, {"statusCode": 401, "message": "Unauthorized"})])
    first = c.send(decision(1))
    later = c.send_many([decision(2, invoice_id="2"), decision(3, invoice_id="3")])
    assert first.error_code is ErrorCode.AUTH_FAILED and first.attempts == 1
    assert [r.error_code for r in later] == [ErrorCode.AUTH_FAILED] * 2
    assert all(r.attempts == 0 and "not sent" in r.error_message for r in later)
    assert len(http.calls) == 1  # nobody hammers a vendor that refused us


def test_modulus_refused_token_is_renewed_once():
    def token(t):
        return (200, {"result": True, "title": "Success", "object": {"token": t}})

    expired = (401, {"result": False, "title": "Error", "message": "Invalid or expired token."})
    ok = (200, {"result": True, "title": "Success", "message": "Invoice Status changed successfully"})
    c, http, sleeps = client_for("modulus", [token("tok-aaaa-1"), expired, token("tok-bbbb-2"), ok])
    result = c.send(decision(vendor="modulus", invoice_id="35", invoice_number="INV_1"))
    assert (result.outcome, result.attempts) == (Outcome.SUCCEEDED, 2)
    urls = [(m, u.rsplit("/", 1)[-1], kw.get("params")) for m, u, kw in http.calls]
    assert urls == [
        ("POST", "Authenticate", None),
        ("PATCH", "Invoice", {"token": "tok-aaaa-1"}),
        ("POST", "Authenticate", None),
        ("PATCH", "Invoice", {"token": "tok-bbbb-2"}),
    ]
    assert not any(sleeps)  # a new token is all it takes: no backoff


def test_modulus_wrong_credentials_stop_without_retry():
    c, http, _ = client_for(
        "modulus", [(401, {"result": False, "title": "Error", "message": "Authentication failed."})]
    )
    results = c.send_many([decision(i, vendor="modulus", invoice_id=str(i), invoice_number="N") for i in range(1, 4)])
    assert {r.error_code for r in results} == {ErrorCode.AUTH_FAILED}
    assert len(http.calls) == 1


def test_messages_never_carry_tokens():
    c, _, _ = client_for(
        "modulus",
        [
            (200, {"result": True, "object": {"token": "leaky-token-98765"}}),
            (400, {"result": False, "message": "bad token leaky-token-98765 in https://x/?token=leaky-token-98765"}),
        ],
    )
    result = c.send(decision(vendor="modulus", invoice_id="35", invoice_number="INV_1"))
    assert "leaky-token-98765" not in result.error_message


def test_send_many_keeps_order_and_one_result_each():
    c, _, _ = client_for("alfred", [])
    decisions = [decision(i, invoice_id=f"{i:06d}") for i in range(1, 51)]
    results = c.send_many(decisions)
    assert [r.row_number for r in results] == list(range(1, 51))


def test_limiter_spaces_requests():
    now = [0.0]
    slept: list[float] = []

    def sleep(s):
        slept.append(s)

    limiter = RateLimiter(10, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.acquire()
    interval = 1 / (10 * HEADROOM)
    assert slept == pytest.approx([interval, 2 * interval, 3 * interval, 4 * interval])
    limiter.pause(5)
    assert limiter.acquire() == pytest.approx(5.0)


def test_a_row_waiting_to_retry_sends_nothing_once_another_row_stopped_the_vendor():
    unauthorized = (401, {"statusCode": 401, "message": "Unauthorized"})
    c, http, _ = client_for("alfred", [(503, None), unauthorized])
    # While row 1 backs off after its 503, row 2 is refused: row 1 must not try again.
    c._retrying.sleep = lambda seconds: c.send(decision(2, invoice_id="2"))
    result = c.send(decision(1))
    assert (result.outcome, result.error_code, result.attempts) == (Outcome.FAILED, ErrorCode.AUTH_FAILED, 1)
    assert result.error_message.startswith("retries stopped after 1 attempts: alfred refused our credentials at row 2")
    assert len(http.calls) == 2


def test_a_row_whose_retry_is_cut_short_by_a_stop_says_so():
    c, http, _ = client_for("alfred", [(503, None)])
    original = c._attempt

    def first_answer_then_another_row_is_refused(request, *how):
        attempt = original(request, *how)
        # between this row's 503 and its retry decision, another row finds the credentials refused
        c._stop(decision(7), c.connector.classify(request, response=response(401, {"message": "Unauthorized"})))
        return attempt

    c._attempt = first_answer_then_another_row_is_refused
    result = c.send(decision(1))
    assert (result.outcome, result.error_code, result.attempts) == (Outcome.FAILED, ErrorCode.AUTH_FAILED, 1)
    assert result.error_message.startswith("retries stopped after 1 attempts: alfred refused our credentials at row 7")
    assert len(http.calls) == 1


# -- Http on a real socket: what goes on the wire, and which errors come back -----------------


class LocalServer:
    """A 127.0.0.1 socket serving one connection at a time with `handle`; `received`: the requests, whole.

    `wrap` turns an accepted socket into the one to serve (TLS)."""

    def __init__(self, wrap=lambda conn: conn):
        self.wrap = wrap
        self.received: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.wrap(conn) as served:
                    self.handle(served)
            except (EOFError, OSError):
                pass  # the client hung up

    def handle(self, conn) -> None:
        raise NotImplementedError

    def read_request(self, conn, data: bytes) -> bytes:
        """Read one request (after `data`, already read) into `received`; what was read beyond it."""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise EOFError
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        found = re.search(rb"(?i)content-length: (\d+)", head)
        length = int(found.group(1)) if found else 0
        while len(data) < length:
            data += conn.recv(65536)
        self.received.append(head + b"\r\n\r\n" + data[:length])
        return data[length:]

    def close(self):
        self.sock.close()


class OneShotServer(LocalServer):
    """Answers each connection's request with `reply(request_bytes)` (None: hang up)."""

    def __init__(self, reply):
        self.reply = reply
        super().__init__()

    def handle(self, conn) -> None:
        self.read_request(conn, b"")
        answer = self.reply(self.received[-1])
        if answer:
            conn.sendall(answer)


class KeepAliveServer(LocalServer):
    """Answers every request of each connection `200 ok`, keeping the connection open."""

    OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def handle(self, conn) -> None:
        data = b""
        while True:
            data = self.read_request(conn, data)
            conn.sendall(self.OK)


def test_http_sends_json_form_params_and_user_agent_and_reads_the_answer():
    server = OneShotServer(
        lambda _: (
            b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nRetry-After: 3\r\n"
            b'Content-Length: 13\r\nConnection: close\r\n\r\n{"data":true}'
        )
    )
    http = Http(2)
    try:
        answer = http.request(
            "PATCH", f"{server.url}/inv", params={"token": "t 1"}, json={"a": "é"}, headers={"X-Key": "k"}, timeout=5
        )
        http.request("POST", f"{server.url}/auth", data={"app": "a&b"}, timeout=5)
    finally:
        http.close()
        server.close()
    assert (answer.status_code, answer.json(), answer.headers["retry-after"], answer.ok) == (
        202,
        {"data": True},
        "3",
        True,
    )
    first, second = server.received
    assert first.startswith(b"PATCH /inv?token=t+1 HTTP/1.1\r\n")
    assert b"X-Key: k" in first and b"User-Agent: invoice-sync/" in first and b"Content-Type: application/json" in first
    assert first.endswith(json.dumps({"a": "é"}).encode())
    assert second.startswith(b"POST /auth HTTP/1.1") and second.endswith(b"app=a%26b")
    assert b"application/x-www-form-urlencoded" in second


def test_http_keeps_one_pool_per_origin_and_sends_each_request_to_its_own():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    vendor, token_endpoint = OneShotServer(lambda _: ok), OneShotServer(lambda _: ok)
    http = Http(2)
    try:
        http.request("GET", f"{vendor.url}/api/v1/invoices/INV-1", params={"expand": "state"}, timeout=5)
        http.request("POST", f"{token_endpoint.url}?grant=client", data={"a": "b"}, timeout=5)
        http.request("GET", vendor.url, timeout=5)
        http.request("PUT", f"{vendor.url}/api/v1/invoices/INV 2/approve", json={}, timeout=5)
    finally:
        http.close()
        vendor.close()
        token_endpoint.close()
    assert [r.split(b"\r\n")[0] for r in vendor.received] == [
        b"GET /api/v1/invoices/INV-1?expand=state HTTP/1.1",
        b"GET / HTTP/1.1",
        b"PUT /api/v1/invoices/INV%202/approve HTTP/1.1",  # encoded by the pool, as before
    ]
    assert [r.split(b"\r\n")[0] for r in token_endpoint.received] == [b"POST /?grant=client HTTP/1.1"]
    host = vendor.url.removeprefix("http://").encode()
    assert all(f"Host: {host.decode()}".encode() in r for r in vendor.received)


def record_writes_and_timeouts(monkeypatch) -> tuple[list[bytes], list[float | None]]:
    """Every write a connection makes, and every timeout a socket really sets (after a change)."""
    writes: list[bytes] = []
    timeouts: list[float | None] = []
    send, settimeout = http.client.HTTPConnection.send, socket.socket.settimeout

    def recorded_send(self, data):
        writes.append(bytes(data))
        return send(self, data)

    def recorded_settimeout(self, value):
        timeouts.append(value)
        return settimeout(self, value)

    monkeypatch.setattr(http.client.HTTPConnection, "send", recorded_send)
    monkeypatch.setattr(socket.socket, "settimeout", recorded_settimeout)
    return writes, timeouts


def requests_in_one_write(client: Http, base: str, writes: list, timeouts: list, server: KeepAliveServer) -> None:
    """Three requests on one kept-alive connection, then a large body: what each wrote and set."""
    body = {"status": "approved", "note": "é"}
    client.request("PUT", f"{base}/invoices/1", json=body, timeout=5)  # connects: its timeout is set
    del writes[:], timeouts[:]
    client.request("PUT", f"{base}/invoices/2", json=body, timeout=5)
    client.request("GET", f"{base}/invoices/3", timeout=5)
    assert len(writes) == 2 and writes[0].endswith(json.dumps(body).encode()) and b"PUT /invoices/2" in writes[0]
    assert writes[1].startswith(b"GET /invoices/3") and writes[1].endswith(b"\r\n\r\n")
    assert timeouts == []  # the same timeout again: no system call
    client.request("PUT", f"{base}/invoices/4", json=body, timeout=7)
    assert timeouts == [7.0]  # a new one is set (once: the read timeout is the same)
    del writes[:]
    large = {"note": "x" * ONE_WRITE_MAX}
    client.request("PUT", f"{base}/invoices/5", json=large, timeout=7)
    assert len(writes) == 2 and writes[0].endswith(b"\r\n\r\n")  # too large to join: header block, then body
    assert [r.split(b"\r\n")[0] for r in server.received] == [
        b"PUT /invoices/1 HTTP/1.1",
        b"PUT /invoices/2 HTTP/1.1",
        b"GET /invoices/3 HTTP/1.1",
        b"PUT /invoices/4 HTTP/1.1",
        b"PUT /invoices/5 HTTP/1.1",
    ]
    assert server.received[1].endswith(json.dumps(body).encode())
    assert server.received[4].endswith(json.dumps(large).encode())


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_http_sends_each_request_in_one_write_and_sets_a_timeout_only_when_it_changes(scheme, monkeypatch, tmp_path):
    wrap = None
    if scheme == "https":
        import ssl

        cert, key = self_signed_certificate(tmp_path, ca=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        monkeypatch.setattr("connectors.sending.http.certifi.where", lambda: str(cert))  # trusted, for this test
        wrap = lambda conn: context.wrap_socket(conn, server_side=True)  # noqa: E731
    writes, timeouts = record_writes_and_timeouts(monkeypatch)
    server = KeepAliveServer(wrap) if wrap else KeepAliveServer()
    client = Http(1)
    try:
        requests_in_one_write(client, f"{scheme}://127.0.0.1:{server.port}", writes, timeouts, server)
    finally:
        client.close()
        server.close()


def self_signed_certificate(folder, *, ca: bool = False):
    """(cert.pem, key.pem) for 127.0.0.1, signed by itself: no CA vouches for it unless trusted."""
    from datetime import datetime, timedelta
    from ipaddress import IPv4Address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
    )
    if ca:  # trusted as its own root by a client that loads it
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False
        ).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    cert = builder.sign(key, hashes.SHA256())
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder / "cert.pem", folder / "key.pem"


def test_http_does_not_follow_redirects():
    server = OneShotServer(
        lambda _: (
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    )
    try:
        answer = Http(1).request("PUT", f"{server.url}/invoice/1", json={}, timeout=5)
    finally:
        server.close()
    assert answer.status_code == 307 and len(server.received) == 1


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(lambda _: None, id="hang-up-before-answering"),
        pytest.param(
            lambda _: b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{"da', id="cut-mid-body"
        ),
        pytest.param(lambda _: time.sleep(1.5), id="read-timeout"),
        pytest.param("refused", id="connection-refused"),
    ],
)
def test_http_failures_are_the_retryable_kind(reply):
    if reply == "refused":
        with socket.create_server(("127.0.0.1", 0)) as closed:
            url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        server = None
    else:
        server = OneShotServer(reply)
        url = server.url
    try:
        with pytest.raises(Exception) as raised:
            Http(1).request("PUT", f"{url}/invoice/1", json={}, timeout=0.5)
    finally:
        if server:
            server.close()
    assert isinstance(raised.value, RETRYABLE_EXCEPTIONS), type(raised.value)
    verdict = connector("alfred").classify(Request("PUT", "/invoice/1"), error=raised.value)
    assert (verdict.action, verdict.error_code) == (Action.RETRY, ErrorCode.RETRIES_EXHAUSTED)


def test_https_with_an_untrusted_certificate_fails_the_row_and_sends_nothing(tmp_path):
    import ssl

    self_signed_certificate(tmp_path)  # self-signed: no CA vouches for it
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    received: list[bytes] = []
    handshake: list[str] = []
    served = threading.Event()  # set once the server side is done with the connection
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        try:
            conn, _ = listener.accept()
            with conn:
                try:
                    tls = context.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    handshake.append(f"failed: {exc}")  # the client gave up during the handshake
                    return
                with tls:
                    handshake.append("completed")
                    while data := tls.recv(65536):  # everything the client sends, until it closes
                        received.append(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            served.set()

    threading.Thread(target=serve, daemon=True).start()
    try:
        with pytest.raises(Exception) as raised:
            Http(1).request("PUT", f"https://127.0.0.1:{listener.getsockname()[1]}/invoice/1", json={}, timeout=5)
        # The server has read all it will ever get (or seen the handshake fail) before we look.
        assert served.wait(10), "the server never finished with the connection"
    finally:
        listener.close()
    assert received == []  # nothing went over the wire
    assert len(handshake) == 1 and handshake[0].startswith("failed"), handshake
    assert "certificate" in str(raised.value).lower()
    verdict = connector("alfred").classify(Request("PUT", "/invoice/1"), error=raised.value)
    assert (verdict.action, verdict.error_code) == (Action.FAIL, ErrorCode.BAD_RESPONSE)  # not retried


def test_every_token_request_takes_a_rate_limit_slot():
    """Accounteer's refresh grant: the token request goes through the same paced transport."""
    from tests.test_connectors import GRANT_ENV, token_answer

    class CountingLimiter(RateLimiter):
        def __init__(self):
            super().__init__(None)
            self.slots = 0

        def acquire(self):
            self.slots += 1
            return super().acquire()

    http = ScriptedHttp(
        [
            (200, json.loads(token_answer().content)),
            (401, {"error": "invalid_token", "error_description": "The access token expired"}),
            (200, json.loads(token_answer("access-two-bbbb").content)),
            (200, {"id": "b" * 40, "status": "approved"}),
        ]
    )
    limiter = CountingLimiter()
    c = VendorClient(connector("accounteer", GRANT_ENV), http=http, limiter=limiter, sleep=lambda s: None)
    result = c.send(decision(vendor="accounteer", invoice_id="b" * 40))
    assert (result.outcome, result.attempts) == (Outcome.SUCCEEDED, 2)
    assert [url for _, url, _ in http.calls].count(GRANT_ENV["ACCOUNTEER_TOKEN_URL"]) == 2
    assert limiter.slots == len(http.calls) == 4  # two token requests, two sends: a slot each
    assert http.calls[3][2]["headers"]["Authorization"] == "Bearer access-two-bbbb"
