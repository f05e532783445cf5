"""What every connector in the registry must do, whatever its vendor: one suite, parametrized.

A new vendor is safe by construction once it passes this: its requests carry no credential
until its auth applies them, every status and transport failure reads as its table declares
(and as the shared rules demand), nothing but a documented success is a success (not a sign-in
page, not a redirect), its one real success comes back `succeeded` from the vendor's simulator,
and no credential reaches any message.
"""

from __future__ import annotations

import pytest
from urllib3.exceptions import NewConnectionError, ProtocolError, ReadTimeoutError

from connectors.errors import AuthUnavailable
from connectors.reading import Action, status_reading
from connectors.registry import CONNECTORS
from connectors.sending.client import VendorClient
from connectors.sending.ratelimit import RateLimiter
from connectors.vocabulary import Decision, ErrorCode, Outcome, WouldChange
from connectors.wire import Request
from sandbox.vendors import BY_NAME
from tests.helpers import FAKE_ENV, connector, invoice_id_for, response, seed_approvals
from tests.test_transport import ScriptedHttp

VENDORS = sorted(CONNECTORS)
CREDENTIALS = {
    vendor: [FAKE_ENV[f"{vendor.upper()}_{name}"] for name in cls.credential_names]
    for vendor, cls in CONNECTORS.items()
}
# Each vendor's documented success, and what its token endpoint answers first (if it has one).
SUCCESS = {
    "alfred": (202, {"statusCode": 202, "data": True, "message": "update Invoice"}),
    "accounteer": (200, {"id": "b" * 40, "status": "approved"}),
    "appzen": (200, ""),
    "modulus": (200, {"result": True, "title": "Success", "message": "Invoice Status changed successfully"}),
}
TOKEN_ANSWERS = {"modulus": [(200, {"result": True, "title": "Success", "object": {"token": "tok-conformance-1"}})]}
SIGN_IN_PAGE = "<!DOCTYPE html><html><head><title>Sign in</title></head><body><form>…</form></body></html>"


def a_decision(vendor: str) -> Decision:
    """A decision every vendor can carry: an approval with an invoice number."""
    return Decision(1, invoice_id_for(vendor, 1), vendor, "approve", invoice_number="N-1")


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_request_carries_no_credential_until_auth_applies_it(vendor):
    c = connector(vendor)
    request = c.build_request(a_decision(vendor))
    assert not any(secret in repr(request) for secret in CREDENTIALS[vendor])
    sent: list[Request] = []

    def unavailable(token_request: Request):  # a session-token vendor's token endpoint, down for now
        sent.append(token_request)
        return response(503, {})

    try:
        applied = c.make_auth().apply(request, unavailable)
    except AuthUnavailable:  # the credentials went into the token request, never into the decision
        assert len(sent) == 1 and any(secret in repr(sent[0]) for secret in CREDENTIALS[vendor])
    else:
        assert not sent and any(secret in repr(applied) for secret in CREDENTIALS[vendor])
    assert request == c.build_request(a_decision(vendor))  # pure: applying auth changed nothing in place


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("status", [401, 403, 404, 408, 429, 500, 502, 503, 504])
def test_every_status_reads_as_the_table_declares(vendor, status):
    c = connector(vendor)
    request = c.build_request(a_decision(vendor))
    verdict = c.classify(request, response=response(status, {"message": "no"}))
    declared = status_reading(c.readings, status)
    assert (verdict.action, verdict.error_code) == (declared.action, declared.error_code)
    # The shared rules a vendor's table may refine but never break:
    if status in (401, 403):
        assert verdict.action in (Action.STOP, Action.REAUTH) and verdict.error_code is ErrorCode.AUTH_FAILED
    elif status == 404:
        assert (verdict.action, verdict.error_code) == (Action.FAIL, ErrorCode.NOT_FOUND)
    elif status == 429:
        assert (verdict.action, verdict.error_code) == (Action.RETRY, ErrorCode.RATE_LIMITED)
    else:
        assert verdict.action is Action.RETRY
    assert verdict.message.startswith(f"HTTP {status}")


@pytest.mark.parametrize("vendor", VENDORS)
def test_retry_after_is_read_on_throttling(vendor):
    c = connector(vendor)
    verdict = c.classify(c.build_request(a_decision(vendor)), response=response(429, {}, {"Retry-After": "7"}))
    assert verdict.retry_after == 7.0


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize(
    "error",
    [
        ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer")),
        ReadTimeoutError(None, "/", "Read timed out. (read timeout=30)"),
        NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
    ],
    ids=["connection-reset", "read-timeout", "connection-refused", "socket-reset", "socket-timeout"],
)
def test_connection_failures_and_timeouts_are_retried(vendor, error):
    c = connector(vendor)
    verdict = c.classify(c.build_request(a_decision(vendor)), error=error)
    assert (verdict.action, verdict.error_code) == (Action.RETRY, ErrorCode.RETRIES_EXHAUSTED)


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize(
    "status, body, headers",
    [
        (200, SIGN_IN_PAGE, {"Content-Type": "text/html; charset=utf-8"}),
        (200, SIGN_IN_PAGE, {"Content-Type": "application/json"}),  # a header that lies
        (201, "", {}),
        (204, "", {}),
        (301, "", {"Location": "https://portal.example/login"}),
        (302, SIGN_IN_PAGE, {"Location": "https://portal.example/login"}),
        (307, "", {"Location": "https://portal.example/login"}),
    ],
    ids=["html-200", "html-200-json-header", "empty-201", "empty-204", "redirect-301", "redirect-302", "redirect-307"],
)
def test_nothing_but_a_documented_success_is_a_success(vendor, status, body, headers):
    c = connector(vendor)
    verdict = c.classify(c.build_request(a_decision(vendor)), response=response(status, body, headers))
    assert verdict.action is not Action.SUCCEED
    assert verdict.action is Action.FAIL  # never retried into a double send either


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_vendor_pointed_at_a_sign_in_portal_succeeds_nowhere(vendor):
    """Every answer, a token request's included, is a 200 sign-in page: every row BAD_RESPONSE."""
    http = ScriptedHttp([(200, SIGN_IN_PAGE, {"Content-Type": "text/html"})] * 20)
    client = VendorClient(connector(vendor), http=http, limiter=RateLimiter(None), sleep=lambda s: None)
    decisions = [Decision(i, invoice_id_for(vendor, i), vendor, "approve", invoice_number=f"N-{i}") for i in (1, 2, 3)]
    try:
        results = [client.send(d) for d in decisions]
    finally:
        client.close()
    assert [(r.outcome, r.error_code) for r in results] == [(Outcome.FAILED, ErrorCode.BAD_RESPONSE)] * 3
    assert len(http.calls) <= len(decisions)  # never retried: a retry could send a decision twice


def _send_scripted(vendor: str, script: list, **env: str):
    settings = {**FAKE_ENV, **{f"{vendor.upper()}_{k}": v for k, v in env.items()}}
    http = ScriptedHttp([*TOKEN_ANSWERS.get(vendor, []), *script])
    client = VendorClient(connector(vendor, settings), http=http, limiter=RateLimiter(None), sleep=lambda s: None)
    try:
        return client.send(a_decision(vendor))
    finally:
        client.close()


@pytest.mark.parametrize("vendor", VENDORS)
def test_the_vendors_reference_of_every_answer_is_kept(vendor):
    headers = CONNECTORS[vendor].reference_headers
    assert headers, "every connector declares the header(s) carrying the vendor's reference"
    for header in headers:
        busy = (503, {"message": "busy"}, {header: "ref-busy-1"})
        result = _send_scripted(vendor, [busy, (*SUCCESS[vendor], {header: "ref-ok-2"})])
        assert (result.outcome, result.vendor_reference) == (Outcome.SUCCEEDED, "ref-ok-2"), header
        result = _send_scripted(vendor, [(404, {"message": "no such invoice"}, {header: "ref-404-3"})])
        assert (result.outcome, result.vendor_reference) == (Outcome.FAILED, "ref-404-3"), header
        result = _send_scripted(vendor, [busy, (503, {"message": "busy"})], MAX_ATTEMPTS="2")
        assert (result.error_code, result.vendor_reference) == (ErrorCode.RETRIES_EXHAUSTED, "ref-busy-1"), header
    assert _send_scripted(vendor, [SUCCESS[vendor]]).vendor_reference is None  # none sent, none invented


@pytest.mark.parametrize("vendor", VENDORS)
def test_the_documented_success_succeeds_against_the_vendors_simulator(vendor, sandbox):
    (row,) = seed_approvals(sandbox, vendor, [1])
    cls = CONNECTORS[vendor]
    client = VendorClient(cls(cls.settings_from_env()))
    try:
        result = client.send(Decision(1, row["invoice_id"], vendor, "approve", invoice_number=row["invoice_number"]))
    finally:
        client.close()
    assert (result.outcome, result.error_code, result.attempts) == (Outcome.SUCCEEDED, None, 1)
    assert sandbox.changes(vendor, row["invoice_id"]) == 1
    # A simulator that names its answers (AppZen's x-correlation-id) has its reference kept.
    assert (result.vendor_reference is not None) == (BY_NAME[vendor].reply_headers is not None)


@pytest.mark.parametrize("vendor", VENDORS)
def test_no_credential_in_any_message(vendor):
    """Vendors that echo what they were sent (credentials included) still leak nothing to the results."""
    echo = " ".join(CREDENTIALS[vendor])
    script = [
        (401, {"message": f"bad credentials {echo}", "error": echo}),
        (404, {"message": f"no invoice for key {echo}"}),
        (422, {"message": echo, "errors": {"key": [echo]}, "reasons": [{"message": echo}]}),
        (200, f"<html>{echo}</html>"),
        (500, echo),
        ProtocolError(f"Connection aborted {echo}"),
    ]
    for step in script:
        env = {**FAKE_ENV, f"{vendor.upper()}_MAX_ATTEMPTS": "1"}
        http = ScriptedHttp([step])  # it answers the first request: the decision, or a token request
        client = VendorClient(connector(vendor, env), http=http, limiter=RateLimiter(None), sleep=lambda s: None)
        try:
            result = client.send(a_decision(vendor))
        finally:
            client.close()
        assert result.outcome is Outcome.FAILED
        assert not any(secret in result.error_message for secret in CREDENTIALS[vendor]), (step, result.error_message)


# -- previews: reads that never write ------------------------------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_preview_read_is_pure_and_never_a_write(vendor):
    c = connector(vendor)
    read = c.build_read(a_decision(vendor))
    if read is None:  # the vendor documents no read: a preview says unknown
        return
    assert read.method == "GET" and read.json is None and read.form is None
    assert not any(secret in repr(read) for secret in CREDENTIALS[vendor])
    assert read == c.build_read(a_decision(vendor))


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize(
    "status, body, headers",
    [
        (200, SIGN_IN_PAGE, {"Content-Type": "text/html; charset=utf-8"}),
        (202, SIGN_IN_PAGE, {"Content-Type": "application/json"}),
        (200, {"something": "else"}, {}),
        (204, "", {}),
        (302, SIGN_IN_PAGE, {"Location": "https://portal.example/login"}),
    ],
    ids=["html-200", "html-202-json-header", "other-json", "empty-204", "redirect-302"],
)
def test_nothing_but_a_documented_state_is_read_as_one(vendor, status, body, headers):
    http = ScriptedHttp([*TOKEN_ANSWERS.get(vendor, []), (status, body, headers)])
    client = VendorClient(connector(vendor), http=http, limiter=RateLimiter(None), sleep=lambda s: None)
    try:
        check = client.check(a_decision(vendor))
    finally:
        client.close()
    assert (check.would_change, check.vendor_state) == (WouldChange.UNKNOWN, None)
    assert check.message
    assert all(method == "GET" for method, url, _ in http.calls if "Authenticate" not in url)


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_preview_reads_the_simulator_and_changes_nothing(vendor, sandbox):
    (row,) = seed_approvals(sandbox, vendor, [1])
    decision = Decision(1, row["invoice_id"], vendor, "approve", invoice_number=row["invoice_number"])
    unknown = Decision(2, invoice_id_for(vendor, 99), vendor, "approve", invoice_number="N-99")
    cls = CONNECTORS[vendor]
    client = VendorClient(cls(cls.settings_from_env()))
    try:
        before, missing = client.check_many([decision, unknown])
        if cls(cls.settings_from_env()).build_read(decision) is None:
            assert before.would_change is missing.would_change is WouldChange.UNKNOWN
            assert "documents no read" in before.message and not sandbox.request_log(vendor)
            return
        assert (before.would_change, before.vendor_state) == (WouldChange.YES, sandbox.state(vendor, row["invoice_id"]))
        assert missing.would_change is WouldChange.NOT_FOUND
        assert sandbox.changes(vendor, row["invoice_id"]) == 0  # reads never write
        assert {method for _, method, path in sandbox.request_log(vendor) if "token" not in path} == {"GET"}
        assert client.send(decision).outcome is Outcome.SUCCEEDED
        (after,) = client.check_many([decision])
        assert after.would_change is WouldChange.NO  # already in that state
    finally:
        client.close()
