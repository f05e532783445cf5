"""Per connector: how a decision becomes a request, and how each answer is classified."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from urllib3.exceptions import NewConnectionError, ProtocolError, ReadTimeoutError

from connectors.vendors.accounteer import UnsupportedDecision
from connectors.errors import AuthRefused, AuthUnavailable
from connectors.reading import Action
from connectors.vocabulary import Decision, ErrorCode
from connectors.wire import Request
from connectors.sending.ratelimit import GlobalLimitError
from connectors.settings import VendorSettings
from tests.helpers import FAKE_ENV, connector, response

APPROVE = dict(row_number=1, decision="approve")
CANCEL = dict(row_number=1, decision="cancel")
FIXED_NOW = datetime(2026, 11, 30, 18, 0, 5, tzinfo=timezone.utc)


# -- request building ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "vendor, decision, expected",
    [
        ("alfred", Decision(invoice_id="000123", vendor="alfred", **APPROVE),
         Request("PUT", "/invoice/000123", json={"status": "approved"})),
        ("alfred", Decision(invoice_id="000123", vendor="alfred", **CANCEL),
         Request("PUT", "/invoice/000123", json={"status": "cancel"})),
        ("alfred", Decision(invoice_id="a/b c", vendor="alfred", **APPROVE),
         Request("PUT", "/invoice/a%2Fb%20c", json={"status": "approved"})),
        ("accounteer", Decision(invoice_id="ba775d2a3f9612ab288489f20ceab582f7f62fd5", vendor="accounteer", **APPROVE),
         Request("POST", "/invoices/ba775d2a3f9612ab288489f20ceab582f7f62fd5", json={"invoice": {"status": "approved"}})),
        ("appzen", Decision(invoice_id="75823296-4af2-4475-aafd-461c60c284e7", vendor="appzen", invoice_number="ERP-1", **APPROVE),
         Request("POST", "/invoice/75823296-4af2-4475-aafd-461c60c284e7/status-sync",
                 json={"appzen_invoice_state": "CREATED", "timestamp": "2026-11-30T18:00:05Z",
                       "invoice_id": "ERP-1", "invoice_status": "Approved"})),
        ("appzen", Decision(invoice_id="75823296-4af2-4475-aafd-461c60c284e7", vendor="appzen", invoice_number="ERP-1", **CANCEL),
         Request("POST", "/invoice/75823296-4af2-4475-aafd-461c60c284e7/status-sync",
                 json={"appzen_invoice_state": "CREATED", "timestamp": "2026-11-30T18:00:05Z",
                       "invoice_id": "ERP-1", "invoice_status": "Cancelled"})),
        ("modulus", Decision(invoice_id="35", vendor="modulus", invoice_number="INV_1", **APPROVE),
         Request("PATCH", "/api/inv/v1/Invoice",
                 json={"customer_details": {"invoice_id": "35", "status": "STATUS_SENT", "invoice_number": "INV_1"}})),
        ("modulus", Decision(invoice_id="35", vendor="modulus", invoice_number="INV_1", void_date="2026-11-01 10:00:00", **CANCEL),
         Request("PATCH", "/api/inv/v1/Invoice",
                 json={"customer_details": {"invoice_id": "35", "status": "STATUS_VOID", "invoice_number": "INV_1",
                                            "void_date": "2026-11-01 10:00:00"}})),
    ],
    ids=["alfred-approve", "alfred-cancel", "alfred-quoted-id", "accounteer-approve", "appzen-approve",
         "appzen-cancel", "modulus-approve", "modulus-void"],
)
def test_build_request(vendor, decision, expected):
    kwargs = {"clock": lambda: FIXED_NOW} if vendor == "appzen" else {}
    built = connector(vendor, **kwargs).build_request(decision)
    assert built == expected
    # Pure: credentials are never part of the plain request.
    assert not any(secret in repr(built) for secret in FAKE_ENV.values() if "test" in secret)


def test_accounteer_never_builds_a_cancel():
    with pytest.raises(UnsupportedDecision):
        connector("accounteer").build_request(Decision(invoice_id="b" * 40, vendor="accounteer", **CANCEL))


# -- auth ------------------------------------------------------------------------------------

def _never_send(request):
    raise AssertionError("static credentials need no request")


@pytest.mark.parametrize(
    "vendor, headers",
    [
        ("alfred", {"API-Key": FAKE_ENV["ALFRED_API_KEY"], "API-Secret": FAKE_ENV["ALFRED_API_SECRET"]}),
        ("accounteer", {"Authorization": "Bearer " + FAKE_ENV["ACCOUNTEER_ACCESS_TOKEN"]}),
        ("appzen", {"x-api-key": FAKE_ENV["APPZEN_API_KEY"], "customer-id": FAKE_ENV["APPZEN_CUSTOMER_ID"],
                    "customer-key": FAKE_ENV["APPZEN_CUSTOMER_KEY"]}),
    ],
)
def test_header_auth(vendor, headers):
    c = connector(vendor)
    applied = c.make_auth().apply(Request("PUT", "/x"), _never_send)
    assert dict(applied.headers) == headers


def test_modulus_token_is_fetched_once_and_renewed_when_refused():
    c = connector("modulus")
    sent: list[Request] = []

    def send(request: Request):
        sent.append(request)
        return response(200, {"result": True, "title": "Success", "object": {"token": f"tok-{len(sent)}-abcdef"}})

    auth = c.make_auth()
    first = auth.apply(Request("PATCH", "/api/inv/v1/Invoice"), send)
    again = auth.apply(Request("PATCH", "/api/inv/v1/Invoice"), send)
    assert first.params == again.params == {"token": "tok-1-abcdef"}
    assert sent[0] == Request("POST", "/api/cmn/Authenticate",
                              form={"app": FAKE_ENV["MODULUS_APP"], "secret": FAKE_ENV["MODULUS_SECRET"]})
    auth.invalidate(first)
    renewed = auth.apply(Request("PATCH", "/api/inv/v1/Invoice"), send)
    assert renewed.params == {"token": "tok-2-abcdef"}
    # A stale refusal (of a token already replaced) does not throw away the new token.
    auth.invalidate(first)
    assert auth.apply(Request("PATCH", "/x"), send).params == {"token": "tok-2-abcdef"}
    assert len(sent) == 2


def test_modulus_token_expires_after_its_lifetime():
    from connectors.auth import SessionTokenAuth

    now = [0.0]
    tokens = iter(["t-one-123", "t-two-456"])
    auth = SessionTokenAuth(lambda send: next(tokens), lifetime=15 * 60, margin=60, clock=lambda: now[0])
    assert auth.apply(Request("PATCH", "/x"), None).params["token"] == "t-one-123"
    now[0] = 13 * 60
    assert auth.apply(Request("PATCH", "/x"), None).params["token"] == "t-one-123"
    now[0] = 14 * 60 + 1  # within the safety margin of the 15-minute expiry
    assert auth.apply(Request("PATCH", "/x"), None).params["token"] == "t-two-456"


@pytest.mark.parametrize(
    "status, body, error",
    [
        (401, {"result": False, "title": "Error", "message": "Authentication failed."}, AuthRefused),
        (400, {"result": False, "title": "Error", "message": "Missing parameters."}, AuthRefused),
        (200, {"result": False, "title": "Error", "message": "nope"}, AuthRefused),
        (503, "<html>down</html>", AuthUnavailable),
        (429, None, AuthUnavailable),
    ],
)
def test_modulus_token_failures(status, body, error):
    with pytest.raises(error):
        connector("modulus").fetch_token(lambda request: response(status, body))


# -- classification: the table of answers -> verdicts ----------------------------------------

ALFRED_422 = {"statusCode": 422, "message": "A logic validation has not been fulfilled",
              "reasons": [{"message": "Pay-in invoices are approved by alfred", "path": "status", "validation": "payout"}],
              "code": "VALIDATION_ERROR"}
ALFRED_ALREADY = {**ALFRED_422, "reasons": [{"message": "Invoice is already approved", "path": "status", "validation": "state"}]}
ALFRED_ALREADY_CANCELLED = {**ALFRED_422, "reasons": [{"message": "Invoice is already cancelled", "path": "status", "validation": "state"}]}
APPZEN_ERR = {"timestamp": "2019-01-17T16:12:45.977+0000", "status": 404, "error": "Not Found",
              "message": "Error code : 17e3338d - The resource you specified cannot be not found"}
MODULUS_ERR = {"result": False, "title": "Error", "message": "Invalid status", "object": {"error_code": 5505}}

# vendor, decision, status, body, headers, action, error_code, vendor_error_code
TABLE = [
    ("alfred", "approve", 202, {"statusCode": 202, "data": True, "message": "update Invoice"}, {}, Action.SUCCEED, None, None),
    ("alfred", "approve", 200, {"statusCode": 200, "data": True, "message": "update invoice/transaction"}, {}, Action.SUCCEED, None, None),
    ("alfred", "approve", 200, {"statusCode": 200, "data": False, "message": "update invoice/transaction"}, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, None),
    ("alfred", "approve", 202, "<html>ok</html>", {}, Action.FAIL, ErrorCode.BAD_RESPONSE, None),
    ("alfred", "approve", 404, {"statusCode": 404, "message": "Invoice not found"}, {}, Action.FAIL, ErrorCode.NOT_FOUND, None),
    ("alfred", "approve", 422, ALFRED_422, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, "VALIDATION_ERROR"),
    ("alfred", "approve", 422, ALFRED_ALREADY, {}, Action.SUCCEED, ErrorCode.ALREADY_IN_STATE, None),
    ("alfred", "cancel", 422, ALFRED_ALREADY, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, "VALIDATION_ERROR"),
    ("alfred", "cancel", 422, ALFRED_ALREADY_CANCELLED, {}, Action.SUCCEED, ErrorCode.ALREADY_IN_STATE, None),
    ("alfred", "approve", 401, {"statusCode": 401, "message": "Unauthorized"}, {}, Action.STOP, ErrorCode.AUTH_FAILED, None),
    ("alfred", "approve", 403, None, {}, Action.STOP, ErrorCode.AUTH_FAILED, None),
    ("alfred", "approve", 429, None, {"Retry-After": "7"}, Action.RETRY, ErrorCode.RATE_LIMITED, None),
    ("alfred", "approve", 500, {"statusCode": 500, "message": "boom"}, {}, Action.RETRY, ErrorCode.RETRIES_EXHAUSTED, None),
    ("alfred", "approve", 503, None, {}, Action.RETRY, ErrorCode.RETRIES_EXHAUSTED, None),
    ("alfred", "approve", 501, None, {}, Action.FAIL, ErrorCode.BAD_RESPONSE, None),
    ("accounteer", "approve", 200, {"id": "ba77", "status": "approved", "total_amount": 221.10}, {}, Action.SUCCEED, None, None),
    ("accounteer", "approve", 200, {"id": "ba77", "status": "draft"}, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, None),
    ("accounteer", "approve", 200, "not json", {}, Action.FAIL, ErrorCode.BAD_RESPONSE, None),
    ("accounteer", "approve", 422, {"errors": {"status": ["Invoice is already approved"]}}, {}, Action.SUCCEED, ErrorCode.ALREADY_IN_STATE, None),
    ("accounteer", "approve", 422, {"errors": {"status": ["is not a valid status"]}}, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, None),
    ("accounteer", "approve", 401, {"error": "invalid_token", "error_description": "The access token is invalid"}, {}, Action.STOP, ErrorCode.AUTH_FAILED, "invalid_token"),
    ("accounteer", "approve", 404, {"error": "not_found"}, {}, Action.FAIL, ErrorCode.NOT_FOUND, "not_found"),
    ("accounteer", "approve", 429, None, {}, Action.RETRY, ErrorCode.RATE_LIMITED, None),
    ("accounteer", "approve", 502, None, {}, Action.RETRY, ErrorCode.RETRIES_EXHAUSTED, None),
    ("appzen", "approve", 200, None, {"x-correlation-id": "c-1"}, Action.SUCCEED, None, None),
    ("appzen", "approve", 404, APPZEN_ERR, {}, Action.FAIL, ErrorCode.NOT_FOUND, "17e3338d"),
    ("appzen", "approve", 400, {**APPZEN_ERR, "status": "400", "error": "Bad Request"}, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, "17e3338d"),
    ("appzen", "approve", 401, {**APPZEN_ERR, "status": "401", "error": "Unauthorized"}, {}, Action.STOP, ErrorCode.AUTH_FAILED, "17e3338d"),
    ("appzen", "approve", 403, {**APPZEN_ERR, "status": "403", "error": "Forbidden"}, {}, Action.STOP, ErrorCode.AUTH_FAILED, "17e3338d"),
    ("appzen", "approve", 429, None, {}, Action.RETRY, ErrorCode.RATE_LIMITED, None),
    ("appzen", "approve", 500, {**APPZEN_ERR, "status": "500", "error": "Internal Server Error"}, {}, Action.RETRY, ErrorCode.RETRIES_EXHAUSTED, "17e3338d"),
    ("modulus", "approve", 200, {"result": True, "title": "Success", "message": "Invoice Status changed successfully"}, {}, Action.SUCCEED, None, None),
    ("modulus", "approve", 200, {"result": False, "title": "Error", "message": "Something went wrong"}, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, None),
    ("modulus", "approve", 200, "<html>", {}, Action.FAIL, ErrorCode.BAD_RESPONSE, None),
    ("modulus", "approve", 400, MODULUS_ERR, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, "5505"),
    ("modulus", "approve", 400, {**MODULUS_ERR, "message": "Missing status", "object": {"error_code": 5526}}, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, "5526"),
    ("modulus", "cancel", 400, {"result": False, "title": "Error", "message": "The void date cannot be in the future."}, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, None),
    ("modulus", "approve", 400, {**MODULUS_ERR, "message": "Invoice not found.", "object": {"error_code": 5504}}, {}, Action.FAIL, ErrorCode.NOT_FOUND, "5504"),
    ("modulus", "approve", 400, {**MODULUS_ERR, "message": "Invoice already has this status.", "object": {"error_code": 5512}}, {}, Action.SUCCEED, ErrorCode.ALREADY_IN_STATE, None),
    ("modulus", "approve", 401, {"result": False, "title": "Error", "message": "Invalid or expired token."}, {}, Action.REAUTH, ErrorCode.AUTH_FAILED, None),
    ("modulus", "approve", 500, MODULUS_ERR, {}, Action.RETRY, ErrorCode.RETRIES_EXHAUSTED, "5505"),
    ("modulus", "approve", 429, None, {"Retry-After": "2"}, Action.RETRY, ErrorCode.RATE_LIMITED, None),
]


def _request_for(vendor: str, decision: str) -> Request:
    c = connector(vendor)
    ids = {"alfred": "000123", "accounteer": "b" * 40, "appzen": "75823296-4af2-4475-aafd-461c60c284e7", "modulus": "35"}
    if vendor == "accounteer" and decision == "cancel":
        pytest.skip("never built")
    return c.build_request(Decision(1, ids[vendor], vendor, decision, invoice_number="N-1"))


@pytest.mark.parametrize("vendor, decision, status, body, headers, action, error_code, vendor_code", TABLE,
                         ids=[f"{t[0]}-{t[1]}-{t[2]}-{i}" for i, t in enumerate(TABLE)])
def test_classify_response(vendor, decision, status, body, headers, action, error_code, vendor_code):
    verdict = connector(vendor).classify(_request_for(vendor, decision), response=response(status, body, headers))
    assert verdict.action is action
    assert verdict.error_code is error_code
    assert verdict.vendor_error_code == vendor_code
    if action is not Action.SUCCEED:
        assert verdict.message  # every failure says something a person can act on


def test_retry_after_is_read():
    verdict = connector("alfred").classify(_request_for("alfred", "approve"), response=response(429, None, {"Retry-After": "7"}))
    assert verdict.retry_after == 7.0
    verdict = connector("alfred").classify(_request_for("alfred", "approve"), response=response(429, None, {"Retry-After": "soon"}))
    assert verdict.retry_after is None


@pytest.mark.parametrize("vendor", ["alfred", "accounteer", "appzen", "modulus"])
@pytest.mark.parametrize(
    "error, action, error_code",
    [
        (NewConnectionError(None, "refused"), Action.RETRY, ErrorCode.RETRIES_EXHAUSTED),
        (ProtocolError("Connection aborted.", ConnectionResetError()), Action.RETRY, ErrorCode.RETRIES_EXHAUSTED),
        (ReadTimeoutError(None, "/x", "Read timed out."), Action.RETRY, ErrorCode.RETRIES_EXHAUSTED),
        (ConnectionResetError(), Action.RETRY, ErrorCode.RETRIES_EXHAUSTED),
        (AuthRefused("token request answered HTTP 401"), Action.STOP, ErrorCode.AUTH_FAILED),
        (AuthUnavailable("token request answered HTTP 503"), Action.RETRY, ErrorCode.RETRIES_EXHAUSTED),
        (GlobalLimitError("no global concurrency limit named vendor-x"), Action.STOP, ErrorCode.CONFIG_MISSING),
        (ValueError("odd"), Action.FAIL, ErrorCode.BAD_RESPONSE),
    ],
)
def test_classify_exception(vendor, error, action, error_code):
    verdict = connector(vendor).classify(Request("PUT", "/x"), error=error)
    assert (verdict.action, verdict.error_code) == (action, error_code)


# -- settings --------------------------------------------------------------------------------

def test_missing_settings_are_named_never_defaulted():
    settings = VendorSettings.from_env("alfred", ("API_KEY", "API_SECRET"), {"ALFRED_API_KEY": "k-12345"})
    assert not settings.usable
    assert settings.problems == ("ALFRED_BASE_URL is not set", "ALFRED_API_SECRET is not set")


@pytest.mark.parametrize(
    "url, extra, usable",
    [
        ("https://api.example.com/v1", {}, True),
        ("http://127.0.0.1:8765/alfred", {}, True),
        ("http://localhost:8765/alfred", {}, True),
        ("http://api.example.com/v1", {}, False),
        ("http://api.example.com/v1", {"INVOICE_SYNC_ALLOW_INSECURE_HTTP": "1"}, True),
        ("ftp://api.example.com/v1", {}, False),
    ],
)
def test_plain_http_only_to_this_machine(url, extra, usable):
    env = {**FAKE_ENV, "ALFRED_BASE_URL": url, **extra}
    assert VendorSettings.from_env("alfred", ("API_KEY", "API_SECRET"), env).usable is usable


def test_tuning_settings():
    env = {**FAKE_ENV, "ALFRED_RATE_LIMIT": "12.5", "ALFRED_MAX_CONCURRENCY": "3", "ALFRED_MAX_ATTEMPTS": "x"}
    settings = VendorSettings.from_env("alfred", ("API_KEY", "API_SECRET"), env)
    assert settings.rate_limit == 12.5 and settings.max_concurrency == 3
    assert settings.problems == ("ALFRED_MAX_ATTEMPTS is not a number",)


def test_credentials_are_secret_types():
    settings = VendorSettings.from_env("alfred", ("API_KEY", "API_SECRET"), FAKE_ENV)
    key = FAKE_ENV["ALFRED_API_KEY"]
    assert key not in repr(settings) and key not in str(settings)
