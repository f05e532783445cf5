"""Per connector: how a decision becomes a request, and how each answer is classified."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from urllib3.exceptions import NewConnectionError, ProtocolError, ReadTimeoutError

from connectors.errors import AuthRefused, AuthUnavailable, AuthUnreadable
from connectors.reading import Action
from connectors.registry import CONNECTORS
from connectors.sending.ratelimit import GlobalLimitError
from connectors.settings import VendorSettings
from connectors.vendors.accounteer import UnsupportedDecision
from connectors.vocabulary import Decision, ErrorCode
from connectors.wire import Request
from tests.helpers import FAKE_ENV, connector, response

APPROVE = dict(row_number=1, decision="approve")
CANCEL = dict(row_number=1, decision="cancel")
FIXED_NOW = datetime(2026, 11, 30, 18, 0, 5, tzinfo=UTC)


# -- request building ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vendor, decision, expected",
    [
        (
            "alfred",
            Decision(invoice_id="000123", vendor="alfred", **APPROVE),
            Request("PUT", "/invoice/000123", json={"status": "approved"}),
        ),
        (
            "alfred",
            Decision(invoice_id="000123", vendor="alfred", **CANCEL),
            Request("PUT", "/invoice/000123", json={"status": "cancel"}),
        ),
        (
            "alfred",
            Decision(invoice_id="a/b c", vendor="alfred", **APPROVE),
            Request("PUT", "/invoice/a%2Fb%20c", json={"status": "approved"}),
        ),
        (
            "accounteer",
            Decision(invoice_id="ba775d2a3f9612ab288489f20ceab582f7f62fd5", vendor="accounteer", **APPROVE),
            Request(
                "POST", "/invoices/ba775d2a3f9612ab288489f20ceab582f7f62fd5", json={"invoice": {"status": "approved"}}
            ),
        ),
        (
            "appzen",
            Decision(
                invoice_id="75823296-4af2-4475-aafd-461c60c284e7", vendor="appzen", invoice_number="ERP-1", **APPROVE
            ),
            Request(
                "POST",
                "/invoice/75823296-4af2-4475-aafd-461c60c284e7/status-sync",
                json={
                    "appzen_invoice_state": "CREATED",
                    "timestamp": "2026-11-30T18:00:05Z",
                    "invoice_id": "ERP-1",
                    "invoice_status": "Approved",
                },
            ),
        ),
        (
            "appzen",
            Decision(
                invoice_id="75823296-4af2-4475-aafd-461c60c284e7", vendor="appzen", invoice_number="ERP-1", **CANCEL
            ),
            Request(
                "POST",
                "/invoice/75823296-4af2-4475-aafd-461c60c284e7/status-sync",
                json={
                    "appzen_invoice_state": "CREATED",
                    "timestamp": "2026-11-30T18:00:05Z",
                    "invoice_id": "ERP-1",
                    "invoice_status": "Cancelled",
                },
            ),
        ),
        (
            "modulus",
            Decision(invoice_id="35", vendor="modulus", invoice_number="INV_1", **APPROVE),
            Request(
                "PATCH",
                "/api/inv/v1/Invoice",
                json={"customer_details": {"invoice_id": "35", "status": "STATUS_SENT", "invoice_number": "INV_1"}},
            ),
        ),
        (
            "modulus",
            Decision(
                invoice_id="35", vendor="modulus", invoice_number="INV_1", void_date="2026-11-01 10:00:00", **CANCEL
            ),
            Request(
                "PATCH",
                "/api/inv/v1/Invoice",
                json={
                    "customer_details": {
                        "invoice_id": "35",
                        "status": "STATUS_VOID",
                        "invoice_number": "INV_1",
                        "void_date": "2026-11-01 10:00:00",
                    }
                },
            ),
        ),
    ],
    ids=[
        "alfred-approve",
        "alfred-cancel",
        "alfred-quoted-id",
        "accounteer-approve",
        "appzen-approve",
        "appzen-cancel",
        "modulus-approve",
        "modulus-void",
    ],
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
        (
            "appzen",
            {
                "x-api-key": FAKE_ENV["APPZEN_API_KEY"],
                "customer-id": FAKE_ENV["APPZEN_CUSTOMER_ID"],
                "customer-key": FAKE_ENV["APPZEN_CUSTOMER_KEY"],
            },
        ),
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
    assert sent[0] == Request(
        "POST", "/api/cmn/Authenticate", form={"app": FAKE_ENV["MODULUS_APP"], "secret": FAKE_ENV["MODULUS_SECRET"]}
    )
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

ALFRED_422 = {
    "statusCode": 422,
    "message": "A logic validation has not been fulfilled",
    "reasons": [{"message": "Pay-in invoices are approved by alfred", "path": "status", "validation": "payout"}],
    "code": "VALIDATION_ERROR",
}
ALFRED_ALREADY = {
    **ALFRED_422,
    "reasons": [{"message": "Invoice is already approved", "path": "status", "validation": "state"}],
}
ALFRED_ALREADY_CANCELLED = {
    **ALFRED_422,
    "reasons": [{"message": "Invoice is already cancelled", "path": "status", "validation": "state"}],
}
APPZEN_ERR = {
    "timestamp": "2019-01-17T16:12:45.977+0000",
    "status": 404,
    "error": "Not Found",
    "message": "Error code : 17e3338d - The resource you specified cannot be not found",
}
MODULUS_ERR = {"result": False, "title": "Error", "message": "Invalid status", "object": {"error_code": 5505}}

# vendor, decision, status, body, headers, action, error_code, vendor_error_code
TABLE = [
    (
        "alfred",
        "approve",
        202,
        {"statusCode": 202, "data": True, "message": "update Invoice"},
        {},
        Action.SUCCEED,
        None,
        None,
    ),
    (
        "alfred",
        "approve",
        200,
        {"statusCode": 200, "data": True, "message": "update invoice/transaction"},
        {},
        Action.SUCCEED,
        None,
        None,
    ),
    (
        "alfred",
        "approve",
        200,
        {"statusCode": 200, "data": False, "message": "update invoice/transaction"},
        {},
        Action.FAIL,
        ErrorCode.VENDOR_REJECTED,
        None,
    ),
    ("alfred", "approve", 202, "<html>ok</html>", {}, Action.FAIL, ErrorCode.BAD_RESPONSE, None),
    (
        "alfred",
        "approve",
        404,
        {"statusCode": 404, "message": "Invoice not found"},
        {},
        Action.FAIL,
        ErrorCode.NOT_FOUND,
        None,
    ),
    ("alfred", "approve", 422, ALFRED_422, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, "VALIDATION_ERROR"),
    ("alfred", "approve", 422, ALFRED_ALREADY, {}, Action.SUCCEED, ErrorCode.ALREADY_IN_STATE, None),
    ("alfred", "cancel", 422, ALFRED_ALREADY, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, "VALIDATION_ERROR"),
    ("alfred", "cancel", 422, ALFRED_ALREADY_CANCELLED, {}, Action.SUCCEED, ErrorCode.ALREADY_IN_STATE, None),
    (
        "alfred",
        "approve",
        401,
        {"statusCode": 401, "message": "Unauthorized"},
        {},
        Action.STOP,
        ErrorCode.AUTH_FAILED,
        None,
    ),
    ("alfred", "approve", 403, None, {}, Action.STOP, ErrorCode.AUTH_FAILED, None),
    ("alfred", "approve", 429, None, {"Retry-After": "7"}, Action.RETRY, ErrorCode.RATE_LIMITED, None),
    (
        "alfred",
        "approve",
        500,
        {"statusCode": 500, "message": "boom"},
        {},
        Action.RETRY,
        ErrorCode.RETRIES_EXHAUSTED,
        None,
    ),
    ("alfred", "approve", 503, None, {}, Action.RETRY, ErrorCode.RETRIES_EXHAUSTED, None),
    ("alfred", "approve", 501, None, {}, Action.FAIL, ErrorCode.BAD_RESPONSE, None),
    (
        "accounteer",
        "approve",
        200,
        {"id": "ba77", "status": "approved", "total_amount": 221.10},
        {},
        Action.SUCCEED,
        None,
        None,
    ),
    ("accounteer", "approve", 200, {"id": "ba77", "status": "draft"}, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, None),
    ("accounteer", "approve", 200, "not json", {}, Action.FAIL, ErrorCode.BAD_RESPONSE, None),
    (
        "accounteer",
        "approve",
        422,
        {"errors": {"status": ["Invoice is already approved"]}},
        {},
        Action.SUCCEED,
        ErrorCode.ALREADY_IN_STATE,
        None,
    ),
    (
        "accounteer",
        "approve",
        422,
        {"errors": {"status": ["is not a valid status"]}},
        {},
        Action.FAIL,
        ErrorCode.VENDOR_REJECTED,
        None,
    ),
    (
        "accounteer",
        "approve",
        401,
        {"error": "invalid_token", "error_description": "The access token is invalid"},
        {},
        Action.STOP,
        ErrorCode.AUTH_FAILED,
        "invalid_token",
    ),
    ("accounteer", "approve", 404, {"error": "not_found"}, {}, Action.FAIL, ErrorCode.NOT_FOUND, "not_found"),
    ("accounteer", "approve", 429, None, {}, Action.RETRY, ErrorCode.RATE_LIMITED, None),
    ("accounteer", "approve", 502, None, {}, Action.RETRY, ErrorCode.RETRIES_EXHAUSTED, None),
    ("appzen", "approve", 200, None, {"x-correlation-id": "c-1"}, Action.SUCCEED, None, None),
    ("appzen", "approve", 404, APPZEN_ERR, {}, Action.FAIL, ErrorCode.NOT_FOUND, "17e3338d"),
    (
        "appzen",
        "approve",
        400,
        {**APPZEN_ERR, "status": "400", "error": "Bad Request"},
        {},
        Action.FAIL,
        ErrorCode.VENDOR_REJECTED,
        "17e3338d",
    ),
    (
        "appzen",
        "approve",
        401,
        {**APPZEN_ERR, "status": "401", "error": "Unauthorized"},
        {},
        Action.STOP,
        ErrorCode.AUTH_FAILED,
        "17e3338d",
    ),
    (
        "appzen",
        "approve",
        403,
        {**APPZEN_ERR, "status": "403", "error": "Forbidden"},
        {},
        Action.STOP,
        ErrorCode.AUTH_FAILED,
        "17e3338d",
    ),
    ("appzen", "approve", 429, None, {}, Action.RETRY, ErrorCode.RATE_LIMITED, None),
    (
        "appzen",
        "approve",
        500,
        {**APPZEN_ERR, "status": "500", "error": "Internal Server Error"},
        {},
        Action.RETRY,
        ErrorCode.RETRIES_EXHAUSTED,
        "17e3338d",
    ),
    (
        "modulus",
        "approve",
        200,
        {"result": True, "title": "Success", "message": "Invoice Status changed successfully"},
        {},
        Action.SUCCEED,
        None,
        None,
    ),
    (
        "modulus",
        "approve",
        200,
        {"result": False, "title": "Error", "message": "Something went wrong"},
        {},
        Action.FAIL,
        ErrorCode.VENDOR_REJECTED,
        None,
    ),
    ("modulus", "approve", 200, "<html>", {}, Action.FAIL, ErrorCode.BAD_RESPONSE, None),
    ("modulus", "approve", 400, MODULUS_ERR, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, "5505"),
    (
        "modulus",
        "approve",
        400,
        {**MODULUS_ERR, "message": "Missing status", "object": {"error_code": 5526}},
        {},
        Action.FAIL,
        ErrorCode.VENDOR_REJECTED,
        "5526",
    ),
    (
        "modulus",
        "cancel",
        400,
        {"result": False, "title": "Error", "message": "The void date cannot be in the future."},
        {},
        Action.FAIL,
        ErrorCode.VENDOR_REJECTED,
        None,
    ),
    (
        "modulus",
        "approve",
        400,
        {**MODULUS_ERR, "message": "Invoice not found.", "object": {"error_code": 5504}},
        {},
        Action.FAIL,
        ErrorCode.NOT_FOUND,
        "5504",
    ),
    (
        "modulus",
        "approve",
        400,
        {**MODULUS_ERR, "message": "Invoice already has this status.", "object": {"error_code": 5512}},
        {},
        Action.SUCCEED,
        ErrorCode.ALREADY_IN_STATE,
        None,
    ),
    (
        "modulus",
        "approve",
        401,
        {"result": False, "title": "Error", "message": "Invalid or expired token."},
        {},
        Action.REAUTH,
        ErrorCode.AUTH_FAILED,
        None,
    ),
    # Documented: a 500 carrying a 55xx code refuses the change; a 500 without one is an outage.
    ("modulus", "approve", 500, MODULUS_ERR, {}, Action.FAIL, ErrorCode.VENDOR_REJECTED, "5505"),
    (
        "modulus",
        "approve",
        500,
        {**MODULUS_ERR, "message": "Missing status", "object": {"error_code": 5526}},
        {},
        Action.FAIL,
        ErrorCode.VENDOR_REJECTED,
        "5526",
    ),
    (
        "modulus",
        "approve",
        500,
        {"result": False, "title": "Error", "message": "Internal server error.", "object": {"error_code": 5000}},
        {},
        Action.RETRY,
        ErrorCode.RETRIES_EXHAUSTED,
        "5000",
    ),
    (
        "modulus",
        "approve",
        500,
        {"result": False, "title": "Error", "message": "Internal server error."},
        {},
        Action.RETRY,
        ErrorCode.RETRIES_EXHAUSTED,
        None,
    ),
    (
        "modulus",
        "approve",
        500,
        "<html>Internal Server Error</html>",
        {},
        Action.RETRY,
        ErrorCode.RETRIES_EXHAUSTED,
        None,
    ),
    ("modulus", "approve", 429, None, {"Retry-After": "2"}, Action.RETRY, ErrorCode.RATE_LIMITED, None),
]


def _request_for(vendor: str, decision: str) -> Request:
    c = connector(vendor)
    ids = {
        "alfred": "000123",
        "accounteer": "b" * 40,
        "appzen": "75823296-4af2-4475-aafd-461c60c284e7",
        "modulus": "35",
    }
    return c.build_request(Decision(1, ids[vendor], vendor, decision, invoice_number="N-1"))


@pytest.mark.parametrize(
    "vendor, decision, status, body, headers, action, error_code, vendor_code",
    TABLE,
    ids=[f"{t[0]}-{t[1]}-{t[2]}-{i}" for i, t in enumerate(TABLE)],
)
def test_classify_response(vendor, decision, status, body, headers, action, error_code, vendor_code):
    verdict = connector(vendor).classify(_request_for(vendor, decision), response=response(status, body, headers))
    assert verdict.action is action
    assert verdict.error_code is error_code
    assert verdict.vendor_error_code == vendor_code
    if action is not Action.SUCCEED:
        assert verdict.message  # every failure says something a person can act on


def test_retry_after_is_read():
    verdict = connector("alfred").classify(
        _request_for("alfred", "approve"), response=response(429, None, {"Retry-After": "7"})
    )
    assert verdict.retry_after == 7.0
    verdict = connector("alfred").classify(
        _request_for("alfred", "approve"), response=response(429, None, {"Retry-After": "soon"})
    )
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


# -- Accounteer's refresh grant (RFC 6749 §6) ----------------------------------------------------

GRANT_ENV = {
    "ACCOUNTEER_BASE_URL": "https://accounteer.test/api",
    "ACCOUNTEER_TOKEN_URL": "https://auth.accounteer.test/oauth/token",
    "ACCOUNTEER_CLIENT_ID": "client-id-7f1a",
    "ACCOUNTEER_CLIENT_SECRET": "client-secret-c9d2",
    "ACCOUNTEER_REFRESH_TOKEN": "refresh-one-4e5b",
}


def token_answer(access="access-one-aaaa", refresh=None, expires_in=3600, **extra):
    body = {"access_token": access, "token_type": "Bearer", "expires_in": expires_in, **extra}
    if refresh:
        body["refresh_token"] = refresh
    return response(200, body)


def test_accounteer_settings_take_either_way_in():
    from connectors.vendors.accounteer import AccounteerConnector as A

    grant = A.settings_from_env(GRANT_ENV)
    assert grant.usable and grant.urls == {"TOKEN_URL": GRANT_ENV["ACCOUNTEER_TOKEN_URL"]}
    assert A(grant).refreshes and "client-secret-c9d2" not in repr(grant)
    lone = A.settings_from_env({"ACCOUNTEER_BASE_URL": "https://a.test", "ACCOUNTEER_ACCESS_TOKEN": "tok-123456"})
    assert lone.usable and not A(lone).refreshes
    partial = A.settings_from_env(
        {**GRANT_ENV, "ACCOUNTEER_CLIENT_SECRET": "", "ACCOUNTEER_ACCESS_TOKEN": "tok-123456"}
    )
    assert (
        not partial.usable and "ACCOUNTEER_CLIENT_SECRET not set" in partial.problems[0]
    )  # a grant half set is a mistake
    nothing = A.settings_from_env({"ACCOUNTEER_BASE_URL": "https://a.test"})
    assert nothing.problems == (
        "no credentials: set ACCOUNTEER_TOKEN_URL, ACCOUNTEER_CLIENT_ID, ACCOUNTEER_CLIENT_SECRET, "
        "ACCOUNTEER_REFRESH_TOKEN or else ACCOUNTEER_ACCESS_TOKEN",
    )
    insecure = A.settings_from_env({**GRANT_ENV, "ACCOUNTEER_TOKEN_URL": "http://auth.accounteer.test/token"})
    assert insecure.problems[0].startswith("ACCOUNTEER_TOKEN_URL uses plain http")


def test_refresh_grant_request_and_rotation():
    import base64

    rotated: list[tuple[str, str]] = []
    settings = dataclasses.replace(
        connector("accounteer", GRANT_ENV).settings, save_credential=lambda n, v: rotated.append((n, v))
    )
    auth = CONNECTORS["accounteer"](settings).make_auth()
    sent: list[Request] = []
    answers = [token_answer("access-one-aaaa", "refresh-two-5f6c"), token_answer("access-two-bbbb", "refresh-two-5f6c")]

    def send(request):
        sent.append(request)
        return answers.pop(0)

    applied = auth.apply(Request("POST", "/invoices/x"), send)
    assert applied.headers == {"Authorization": "Bearer access-one-aaaa"}
    token_request = sent[0]
    assert (token_request.method, token_request.path) == ("POST", GRANT_ENV["ACCOUNTEER_TOKEN_URL"])
    assert token_request.form == {"grant_type": "refresh_token", "refresh_token": "refresh-one-4e5b"}
    basic = base64.b64encode(b"client-id-7f1a:client-secret-c9d2").decode()
    assert token_request.headers["Authorization"] == f"Basic {basic}"
    assert rotated == [("REFRESH_TOKEN", "refresh-two-5f6c")]  # saved back once
    auth.invalidate(applied)  # refused: the next request fetches again, with the rotated refresh token
    assert auth.apply(Request("POST", "/x"), send).headers["Authorization"] == "Bearer access-two-bbbb"
    assert sent[1].form["refresh_token"] == "refresh-two-5f6c"
    assert rotated == [("REFRESH_TOKEN", "refresh-two-5f6c")]  # not rotated again: nothing to save


def test_an_access_token_is_renewed_before_it_expires():
    from pydantic import SecretStr

    from connectors.auth import SessionTokenAuth
    from connectors.oauth import RefreshGrant

    now = [0.0]
    grant = RefreshGrant(
        "https://t.test/token",
        SecretStr("id-1234"),
        SecretStr("secret-1234"),
        SecretStr("rt-1234"),
        vendor="accounteer",
    )
    answers = iter([token_answer("access-one-aaaa", expires_in=300), token_answer("access-two-bbbb", expires_in="300")])
    auth = SessionTokenAuth(grant, lifetime=None, header="Authorization", template="Bearer {}", clock=lambda: now[0])
    send = lambda request: next(answers)  # noqa: E731
    assert auth.apply(Request("GET", "/x"), send).headers["Authorization"] == "Bearer access-one-aaaa"
    now[0] = 269.0  # a tenth of a short life is the margin: renewed from 270 s on
    assert auth.apply(Request("GET", "/x"), send).headers["Authorization"] == "Bearer access-one-aaaa"
    now[0] = 270.0
    assert auth.apply(Request("GET", "/x"), send).headers["Authorization"] == "Bearer access-two-bbbb"
    assert auth.fetches == 2


@pytest.mark.parametrize(
    "answer, error",
    [
        (response(400, {"error": "invalid_grant", "error_description": "revoked"}), AuthRefused),
        (response(401, {"error": "invalid_client"}), AuthRefused),
        (response(404, "<html>no</html>"), AuthRefused),
        (response(503, None), AuthUnavailable),
        (response(429, {"error": "slow_down"}), AuthUnavailable),
        (response(200, "<!DOCTYPE html><html>Sign in</html>", {"Content-Type": "text/html"}), AuthUnreadable),
        (response(302, None, {"Location": "https://sso.test/login"}), AuthUnreadable),
        (response(200, {"access_token": "mac-token-1234", "token_type": "mac"}), AuthUnreadable),
    ],
    ids=[
        "invalid-grant",
        "invalid-client",
        "wrong-url",
        "unavailable",
        "throttled",
        "sign-in-page",
        "redirect",
        "not-bearer",
    ],
)
def test_refresh_grant_failures(answer, error):
    from connectors.auth import SessionTokenAuth

    auth = connector("accounteer", GRANT_ENV).make_auth()
    assert isinstance(auth, SessionTokenAuth)
    with pytest.raises(error):
        auth.apply(Request("POST", "/invoices/x"), lambda request: answer)


def test_accounteer_401_renews_with_the_grant_but_stops_with_a_lone_token():
    refused = response(401, {"error": "invalid_token", "error_description": "The access token expired"})
    request = Request("POST", "/invoices/x", json={"invoice": {"status": "approved"}})
    assert connector("accounteer", GRANT_ENV).classify(request, response=refused).action is Action.REAUTH
    lone = {"ACCOUNTEER_BASE_URL": "https://a.test", "ACCOUNTEER_ACCESS_TOKEN": "tok-123456"}
    assert connector("accounteer", lone).classify(request, response=refused).action is Action.STOP


# -- preview reads: the invoice's state, and what sending would do -------------------------------

ALFRED_READ = {"statusCode": 202, "message": "list invoice/transaction"}
READS = [
    # vendor, decision, status, body, would_change, vendor_state
    ("alfred", "approve", 202, {**ALFRED_READ, "data": {"estatus_invoice": "pending"}}, "yes", "pending"),
    ("alfred", "approve", 202, {**ALFRED_READ, "data": {"estatus_invoice": "approved"}}, "no", "approved"),
    ("alfred", "cancel", 202, {**ALFRED_READ, "data": {"estatus_invoice": "cancelled"}}, "no", "cancelled"),
    ("alfred", "cancel", 202, {**ALFRED_READ, "data": {"estatus_invoice": "approved"}}, "unknown", "approved"),
    ("alfred", "approve", 202, {**ALFRED_READ, "data": {"estatus_invoice": "completed"}}, "unknown", "completed"),
    ("alfred", "approve", 202, {**ALFRED_READ, "data": True}, "unknown", None),
    ("alfred", "approve", 404, {"statusCode": 404, "message": "Invoice not found"}, "not_found", None),
    ("accounteer", "approve", 200, {"id": "b" * 40, "status": "draft", "total_amount": 221.10}, "yes", "draft"),
    ("accounteer", "approve", 200, {"id": "b" * 40, "status": "approved"}, "no", "approved"),
    ("accounteer", "approve", 200, {"id": "b" * 40, "status": "paid"}, "unknown", "paid"),
    ("accounteer", "approve", 200, "<html>", "unknown", None),
    ("accounteer", "approve", 404, {"error": "not_found"}, "not_found", None),
    ("appzen", "approve", 200, {"invoice_status": "pending"}, "yes", "pending"),
    ("appzen", "approve", 200, {"data": {"invoice_status": "Approved"}}, "no", "Approved"),
    ("appzen", "cancel", 200, {"invoice_status": "approved"}, "yes", "approved"),
    ("appzen", "approve", 200, None, "unknown", None),
    ("appzen", "approve", 404, APPZEN_ERR, "not_found", None),
]


@pytest.mark.parametrize(
    "vendor, decision, status, body, would_change, state",
    READS,
    ids=[f"{r[0]}-{r[1]}-{r[2]}-{i}" for i, r in enumerate(READS)],
)
def test_read_state(vendor, decision, status, body, would_change, state):
    c = connector(vendor)
    d = Decision(
        1,
        {"alfred": "000123", "accounteer": "b" * 40, "appzen": "75823296-4af2-4475-aafd-461c60c284e7"}[vendor],
        vendor,
        decision,
        invoice_number="N-1",
    )
    verdict = c.classify_read(d, c.build_read(d), response=response(status, body))
    assert (verdict.would_change, verdict.vendor_state) == (would_change, state)
    assert verdict.message


@pytest.mark.parametrize(
    "status, action", [(401, Action.STOP), (429, Action.RETRY), (503, Action.RETRY), (422, Action.FAIL)]
)
def test_a_read_answered_otherwise_reads_through_the_table(status, action):
    c = connector("alfred")
    d = Decision(1, "000123", "alfred", "approve")
    verdict = c.classify_read(d, c.build_read(d), response=response(status, {"message": "no"}))
    assert verdict.action is action and verdict.would_change is None


def test_modulus_documents_no_read():
    assert connector("modulus").build_read(Decision(1, "35", "modulus", "approve", invoice_number="N")) is None


def test_a_refused_token_request_is_not_repeated_by_the_senders_waiting_for_it():
    from connectors.auth import SessionTokenAuth

    asked = []

    def refused(send):
        asked.append(1)
        raise AuthRefused("token request answered HTTP 400: invalid_grant")

    auth = SessionTokenAuth(refused, lifetime=None, header="Authorization", template="Bearer {}")
    for _ in range(3):
        with pytest.raises(AuthRefused, match="invalid_grant"):
            auth.apply(Request("GET", "/x"), None)
    assert len(asked) == 1
