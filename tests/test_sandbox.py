"""The vendor sandbox, exercised directly over HTTP with `requests`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from http.client import HTTPConnection
from pathlib import Path

import pytest
import requests

from sandbox import MODULUS_AUTHENTICATE, VENDORS, Sandbox

ROOT = Path(__file__).resolve().parents[1]
C = Sandbox.CREDENTIALS
APPZEN_ERROR = re.compile(r"^Error code : [0-9a-f]{8} - .+")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sb:
        yield sb


@pytest.fixture(autouse=True)
def clean(sandbox: Sandbox) -> None:
    sandbox.reset()


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # no proxy settings from the environment for 127.0.0.1
    yield session
    session.close()


# -- helpers ----------------------------------------------------------------------------------
ALFRED_HEADERS = {"API-Key": C["ALFRED_API_KEY"], "API-Secret": C["ALFRED_API_SECRET"]}
ACCOUNTEER_HEADERS = {"Authorization": f"Bearer {C['ACCOUNTEER_ACCESS_TOKEN']}"}
APPZEN_HEADERS = {
    "x-api-key": C["APPZEN_API_KEY"],
    "customer-id": C["APPZEN_CUSTOMER_ID"],
    "customer-key": C["APPZEN_CUSTOMER_KEY"],
}


def alfred(http, sb, invoice_id, status="approved", headers=ALFRED_HEADERS, **kw) -> requests.Response:
    return http.put(f"{sb.base_url('alfred')}/invoice/{invoice_id}", json={"status": status}, headers=headers, **kw)


def accounteer(http, sb, invoice_id, body=None, headers=ACCOUNTEER_HEADERS, **kw) -> requests.Response:
    body = {"invoice": {"status": "approved"}} if body is None else body
    return http.post(f"{sb.base_url('accounteer')}/invoices/{invoice_id}", json=body, headers=headers, **kw)


def appzen_body(status="Approved", **over) -> dict:
    body = {
        "appzen_invoice_state": "CREATED",
        "timestamp": "2026-11-01T11:01:00Z",
        "invoice_id": "INV-1",
        "invoice_status": status,
    }
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def appzen(http, sb, uuid, body=None, headers=APPZEN_HEADERS, **kw) -> requests.Response:
    body = appzen_body() if body is None else body
    return http.post(f"{sb.base_url('appzen')}/invoice/{uuid}/status-sync", json=body, headers=headers, **kw)


def modulus_token(http, sb) -> str:
    r = http.post(
        f"{sb.base_url('modulus')}/api/cmn/Authenticate", data={"app": C["MODULUS_APP"], "secret": C["MODULUS_SECRET"]}
    )
    assert r.status_code == 200, r.text
    return r.json()["object"]["token"]


def modulus(
    http, sb, token, invoice_id="35", status="STATUS_SENT", number="INV_2023_01_01_828", **extra
) -> requests.Response:
    details = {"invoice_id": invoice_id, "status": status, "invoice_number": number, **extra}
    details = {k: v for k, v in details.items() if v is not None}
    params = {} if token is None else {"token": token}
    return http.patch(f"{sb.base_url('modulus')}/api/inv/v1/Invoice", params=params, json={"customer_details": details})


def modulus_error(response: requests.Response) -> tuple[int, str, int | None]:
    body = response.json()
    assert body["result"] is False and body["title"] == "Error"
    return response.status_code, body["message"], (body.get("object") or {}).get("error_code")


def assert_appzen_error(response: requests.Response, status: int, text: str = "") -> None:
    assert response.status_code == status
    assert response.headers.get("x-correlation-id")
    body = response.json()
    assert body["status"] == str(status)
    assert body["error"] and body["timestamp"]
    assert APPZEN_ERROR.match(body["message"]), body["message"]
    assert text in body["message"]


# -- setup, env, lifecycle -----------------------------------------------------------------------
def test_env_and_base_urls(sandbox: Sandbox) -> None:
    env = sandbox.env()
    assert set(env) == {
        "ALFRED_BASE_URL",
        "ALFRED_API_KEY",
        "ALFRED_API_SECRET",
        "ACCOUNTEER_BASE_URL",
        "ACCOUNTEER_ACCESS_TOKEN",
        "APPZEN_BASE_URL",
        "APPZEN_API_KEY",
        "APPZEN_CUSTOMER_ID",
        "APPZEN_CUSTOMER_KEY",
        "MODULUS_BASE_URL",
        "MODULUS_APP",
        "MODULUS_SECRET",
    }
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sandbox.url)
    assert env["ALFRED_BASE_URL"] == f"{sandbox.url}/alfred/api/v1/third-party-service"
    assert env["ACCOUNTEER_BASE_URL"] == f"{sandbox.url}/accounteer/api/v0.1"
    assert env["APPZEN_BASE_URL"] == f"{sandbox.url}/appzen/dictionary-data-services"
    assert env["MODULUS_BASE_URL"] == f"{sandbox.url}/modulus"
    secrets = [v for k, v in env.items() if not k.endswith("_BASE_URL")]
    assert all(v.startswith("sandbox-") for v in secrets) and len(set(secrets)) == len(secrets)
    with pytest.raises(ValueError):
        sandbox.base_url("nobody")


def test_keep_alive_serves_several_requests_on_one_connection(sandbox: Sandbox) -> None:
    sandbox.seed("alfred", "K1")
    sandbox.seed("alfred", "K2")
    conn = HTTPConnection("127.0.0.1", sandbox.port, timeout=5)
    try:
        for invoice_id in ("K1", "K2", "K1"):
            conn.request(
                "PUT",
                f"/alfred/api/v1/third-party-service/invoice/{invoice_id}",
                body=b'{"status":"approved"}',
                headers={**ALFRED_HEADERS, "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            response.read()
            assert response.status in (202, 422)
            assert response.getheader("Connection") != "close"
    finally:
        conn.close()
    assert sandbox.state("alfred", "K1") == sandbox.state("alfred", "K2") == "approved"


def test_stop_releases_the_port_and_cuts_keep_alive_connections(http: requests.Session) -> None:
    sb = Sandbox().start()
    sb.seed("alfred", "A")
    session = requests.Session()
    session.trust_env = False
    assert alfred(session, sb, "A").status_code == 202
    url = sb.url
    sb.stop()
    with pytest.raises(requests.ConnectionError):
        session.put(
            f"{url}/alfred/api/v1/third-party-service/invoice/A",
            json={"status": "cancel"},
            headers=ALFRED_HEADERS,
            timeout=2,
        )
    with pytest.raises(RuntimeError):
        sb.url  # noqa: B018  reading the property is the test


def test_portal_answers_a_sign_in_page_to_anything(http: requests.Session, sandbox: Sandbox) -> None:
    assert sandbox.env(portal=True)["ALFRED_BASE_URL"] == f"{sandbox.url}/portal/alfred/api/v1/third-party-service"
    sandbox.seed("alfred", "A1")
    base = sandbox.portal_url("alfred")
    for method in ("GET", "PUT", "POST", "PATCH"):
        r = http.request(method, f"{base}/invoice/A1", json={"status": "approved"}, headers=ALFRED_HEADERS)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        assert "<title>Sign in</title>" in r.text
    assert next((m, p) for _, m, p in sandbox.portal_requests()) == (
        "GET",
        "/portal/alfred/api/v1/third-party-service/invoice/A1",
    )
    assert sandbox.request_log("alfred") == [] and sandbox.changes("alfred", "A1") == 0
    sandbox.reset()
    assert sandbox.portal_requests() == []


def test_unknown_path(http: requests.Session, sandbox: Sandbox) -> None:
    assert http.get(f"{sandbox.url}/nobody/x").status_code == 404
    r = http.delete(f"{sandbox.base_url('alfred')}/invoice/1")  # wrong method
    assert r.status_code == 404 and r.json()["statusCode"] == 404


# -- alfred -------------------------------------------------------------------------------------
def test_alfred_approve_and_idempotent_refusals(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("alfred", "A1")
    assert sandbox.state("alfred", "A1") == "pending"
    r = alfred(http, sandbox, "A1")
    assert r.status_code == 202
    assert r.json() == {"statusCode": 202, "data": True, "message": "update Invoice"}
    assert sandbox.state("alfred", "A1") == "approved" and sandbox.changes("alfred", "A1") == 1

    again = alfred(http, sandbox, "A1")
    assert again.status_code == 422
    body = again.json()
    assert body["code"] == "VALIDATION_ERROR" and body["statusCode"] == 422
    assert body["message"] == "A logic validation has not been fulfilled"
    assert body["reasons"][0]["message"] == "Invoice is already approved"
    assert set(body["reasons"][0]) == {"message", "path", "validation"}

    cancel = alfred(http, sandbox, "A1", "cancel")
    assert cancel.status_code == 422
    assert cancel.json()["reasons"][0]["message"] == "Invoice status cannot be changed from approved"
    assert sandbox.changes("alfred", "A1") == 1


def test_alfred_cancel(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("alfred", "A2")
    assert alfred(http, sandbox, "A2", "cancel").status_code == 202
    assert sandbox.state("alfred", "A2") == "cancelled"
    again = alfred(http, sandbox, "A2", "cancel")
    assert again.status_code == 422 and again.json()["reasons"][0]["message"] == "Invoice is already cancelled"
    approve = alfred(http, sandbox, "A2", "approved")
    assert approve.json()["reasons"][0]["message"] == "Invoice status cannot be changed from cancelled"
    assert sandbox.changes("alfred", "A2") == 1


def test_alfred_refusals(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("alfred", "A3")
    sandbox.seed("alfred", "PAYIN", kind="pay-in")
    for headers in ({}, {**ALFRED_HEADERS, "API-Secret": "wrong"}, {"API-Key": C["ALFRED_API_KEY"]}):
        r = alfred(http, sandbox, "A3", headers=headers)
        assert r.status_code == 401 and r.json() == {"statusCode": 401, "message": "Unauthorized"}
    r = alfred(http, sandbox, "NOPE")
    assert r.status_code == 404 and r.json() == {"statusCode": 404, "message": "Invoice not found"}
    r = alfred(http, sandbox, "A3", "rejected")
    assert r.status_code == 422 and r.json()["code"] == "VALIDATION_ERROR"
    assert r.json()["reasons"][0]["path"] == "status"
    r = alfred(http, sandbox, "PAYIN")
    assert r.status_code == 422 and r.json()["code"] == "VALIDATION_ERROR"
    assert "Pay-in" in r.json()["reasons"][0]["message"]
    r = http.put(f"{sandbox.base_url('alfred')}/invoice/A3", data=b"{oops", headers=ALFRED_HEADERS)
    assert r.status_code == 400
    assert sandbox.state("alfred", "A3") == "pending" and sandbox.state("alfred", "PAYIN") == "pending"


def test_alfred_ids_are_url_decoded(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("alfred", "INV 1/2")
    assert (
        http.put(
            f"{sandbox.base_url('alfred')}/invoice/INV%201%2F2", json={"status": "approved"}, headers=ALFRED_HEADERS
        ).status_code
        == 202
    )
    assert sandbox.state("alfred", "INV 1/2") == "approved"


# -- accounteer ---------------------------------------------------------------------------------
ACC_ID = "ba775d2a3f9612ab288489f20ceab582f7f62fd5"


def test_accounteer_approve_returns_the_invoice(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("accounteer", ACC_ID, invoice_number="2026-0042")
    assert sandbox.state("accounteer", ACC_ID) == "draft"
    r = accounteer(http, sandbox, ACC_ID)
    assert r.status_code == 200
    invoice = json.loads(r.text, parse_float=Decimal)
    assert invoice["id"] == ACC_ID and invoice["status"] == "approved"
    assert invoice["document_number"] == "2026-0042" and invoice["currency"] == "EUR"
    assert re.fullmatch(r"[0-9a-f]{40}", invoice["organization_id"])
    assert isinstance(invoice["total_amount"], Decimal)
    assert invoice["total_amount"] == invoice["total_base_amount"] + invoice["total_tax_amount"]
    assert re.search(r'"total_amount":\d+\.\d\d[,}]', r.text)  # bare two-decimal numbers
    assert invoice["items"] and invoice["attachments"] == []
    assert sandbox.state("accounteer", ACC_ID) == "approved" and sandbox.changes("accounteer", ACC_ID) == 1

    again = accounteer(http, sandbox, ACC_ID)
    assert again.status_code == 422
    assert again.json() == {"errors": {"status": ["Invoice is already approved"]}}
    assert sandbox.changes("accounteer", ACC_ID) == 1


def test_accounteer_refusals(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("accounteer", ACC_ID)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": C["ACCOUNTEER_ACCESS_TOKEN"]}):
        r = accounteer(http, sandbox, ACC_ID, headers=headers)
        assert r.status_code == 401
        assert r.json() == {"error": "invalid_token", "error_description": "The access token is invalid"}
    r = accounteer(http, sandbox, "f" * 40)
    assert r.status_code == 404 and r.json() == {"error": "not_found"}
    for body in ({"invoice": {"status": "cancelled"}}, {"status": "approved"}, {}):
        r = accounteer(http, sandbox, ACC_ID, body=body)
        assert r.status_code == 422 and r.json() == {"errors": {"status": ["is not a valid status"]}}
    assert sandbox.state("accounteer", ACC_ID) == "draft" and sandbox.changes("accounteer", ACC_ID) == 0


def refresh(http, sb, refresh_token, auth=(C["ACCOUNTEER_CLIENT_ID"], C["ACCOUNTEER_CLIENT_SECRET"]), **form):
    token_url = sb.env(refresh_grant=True)["ACCOUNTEER_TOKEN_URL"]
    return http.post(token_url, auth=auth, data={"grant_type": "refresh_token", "refresh_token": refresh_token, **form})


def test_accounteer_refresh_grant_rotates_and_expires(http: requests.Session, sandbox: Sandbox) -> None:
    env = sandbox.env(refresh_grant=True)
    assert (
        "ACCOUNTEER_ACCESS_TOKEN" not in env and env["ACCOUNTEER_TOKEN_URL"] == f"{sandbox.url}/accounteer/oauth/token"
    )
    assert {"ACCOUNTEER_CLIENT_ID", "ACCOUNTEER_CLIENT_SECRET", "ACCOUNTEER_REFRESH_TOKEN"} <= set(env)
    sandbox.seed("accounteer", ACC_ID)
    first = refresh(http, sandbox, env["ACCOUNTEER_REFRESH_TOKEN"])
    assert first.status_code == 200 and first.headers["Cache-Control"] == "no-store"
    grant = first.json()
    assert (grant["token_type"], grant["expires_in"]) == ("Bearer", 3600)
    assert grant["refresh_token"] != env["ACCOUNTEER_REFRESH_TOKEN"]  # rotated
    bearer = {"Authorization": f"Bearer {grant['access_token']}"}
    assert http.get(f"{sandbox.base_url('accounteer')}/invoices/{ACC_ID}", headers=bearer).json()["status"] == "draft"
    assert accounteer(http, sandbox, ACC_ID, headers=bearer).status_code == 200
    # The old refresh token stopped working; the new one works (client auth in the form, too).
    again = refresh(http, sandbox, env["ACCOUNTEER_REFRESH_TOKEN"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    form_auth = {"client_id": C["ACCOUNTEER_CLIENT_ID"], "client_secret": C["ACCOUNTEER_CLIENT_SECRET"]}
    assert refresh(http, sandbox, grant["refresh_token"], auth=None, **form_auth).status_code == 200
    assert refresh(http, sandbox, "whatever", auth=("someone", "else")).json()["error"] == "invalid_client"
    sandbox.expire_tokens()
    expired = accounteer(http, sandbox, ACC_ID, headers=bearer)
    assert expired.status_code == 401 and expired.json()["error_description"] == "The access token expired"
    assert set(sandbox.issued_tokens()) >= {grant["access_token"], grant["refresh_token"]}
    sandbox.reset()  # the initial refresh token works again; issued tokens are forgotten
    assert sandbox.issued_tokens() == [] and refresh(http, sandbox, env["ACCOUNTEER_REFRESH_TOKEN"]).status_code == 200


def test_alfred_and_appzen_reads(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("alfred", "A1", status="approved")
    r = http.get(f"{sandbox.base_url('alfred')}/invoice/A1", headers=ALFRED_HEADERS)
    assert r.status_code == 202  # documented: the read answers 202 too
    assert r.json()["message"] == "list invoice/transaction" and r.json()["data"]["estatus_invoice"] == "approved"
    assert http.get(f"{sandbox.base_url('alfred')}/invoice/A2", headers=ALFRED_HEADERS).status_code == 404
    assert http.get(f"{sandbox.base_url('alfred')}/invoice/A1").status_code == 401
    sandbox.seed("appzen", UUID, invoice_number="ERP-1")
    r = http.get(f"{sandbox.base_url('appzen')}/invoice/{UUID}", headers=APPZEN_HEADERS)
    assert r.status_code == 200 and r.json()["invoice_status"] == "pending" and r.headers["x-correlation-id"]
    assert_appzen_error(http.get(f"{sandbox.base_url('appzen')}/invoice/{UUID[:-1]}0", headers=APPZEN_HEADERS), 404)
    assert_appzen_error(http.get(f"{sandbox.base_url('appzen')}/invoice/{UUID}"), 401)
    assert sandbox.changes("alfred", "A1") == sandbox.changes("appzen", UUID) == 0


def test_accounteer_read(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("accounteer", ACC_ID, status="approved")
    r = http.get(f"{sandbox.base_url('accounteer')}/invoices/{ACC_ID}", headers=ACCOUNTEER_HEADERS)
    assert r.status_code == 200 and r.json()["status"] == "approved" and r.headers["X-Request-Id"]
    assert (
        http.get(f"{sandbox.base_url('accounteer')}/invoices/{'f' * 40}", headers=ACCOUNTEER_HEADERS).status_code == 404
    )
    assert http.get(f"{sandbox.base_url('accounteer')}/invoices/{ACC_ID}").status_code == 401
    assert sandbox.changes("accounteer", ACC_ID) == 0


# -- appzen -------------------------------------------------------------------------------------
UUID = "75823296-4af2-4475-aafd-461c60c284e7"


def test_appzen_sync_and_refusals_of_finalised(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("appzen", UUID)
    r = appzen(http, sandbox, UUID)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["x-correlation-id"]
    assert sandbox.state("appzen", UUID) == "Approved" and sandbox.changes("appzen", UUID) == 1

    again = appzen(http, sandbox, UUID)  # the same status again: a no-op
    assert again.status_code == 200 and sandbox.changes("appzen", UUID) == 1
    assert again.headers["x-correlation-id"] != r.headers["x-correlation-id"]

    flip = appzen(http, sandbox, UUID, body=appzen_body("Cancelled"))
    assert_appzen_error(flip, 400, "Invoice already finalised")
    assert sandbox.state("appzen", UUID) == "Approved"


def test_appzen_error_state_changes_nothing(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("appzen", UUID)
    body = {
        "appzen_invoice_state": "ERROR",
        "timestamp": "2026-11-01T11:01:00Z",
        "error_data": {"message": "m", "status": "s", "exception": "e"},
    }
    assert appzen(http, sandbox, UUID, body=body).status_code == 200
    assert sandbox.state("appzen", UUID) == "pending" and sandbox.changes("appzen", UUID) == 0


@pytest.mark.parametrize(
    "body, text",
    [
        (appzen_body(appzen_invoice_state=None), "appzen_invoice_state is required"),
        (appzen_body(appzen_invoice_state="DONE"), "appzen_invoice_state must be"),
        (appzen_body(timestamp=None), "timestamp is required"),
        (appzen_body(timestamp="yesterday"), "timestamp"),
        (appzen_body(invoice_id=None), "invoice_id is required"),
        (appzen_body(invoice_status=None), "invoice_status is required"),
        ({"appzen_invoice_state": "ERROR", "timestamp": "2026-11-01T11:01:00Z"}, "error_data is required"),
    ],
)
def test_appzen_body_validation(http: requests.Session, sandbox: Sandbox, body: dict, text: str) -> None:
    sandbox.seed("appzen", UUID)
    assert_appzen_error(appzen(http, sandbox, UUID, body=body), 400, text)
    assert sandbox.changes("appzen", UUID) == 0


def test_appzen_auth_and_not_found(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("appzen", UUID)
    for name in APPZEN_HEADERS:
        missing = {k: v for k, v in APPZEN_HEADERS.items() if k != name}
        assert_appzen_error(appzen(http, sandbox, UUID, headers=missing), 401)
        assert_appzen_error(appzen(http, sandbox, UUID, headers={**missing, name: "wrong"}), 401)
    assert_appzen_error(appzen(http, sandbox, "00000000-0000-0000-0000-000000000000"), 404, "cannot be not found")
    assert sandbox.state("appzen", UUID) == "pending"


# -- modulus ------------------------------------------------------------------------------------
def test_modulus_authenticate(http: requests.Session, sandbox: Sandbox) -> None:
    url = f"{sandbox.base_url('modulus')}/api/cmn/Authenticate"
    r = http.post(url, data={"app": C["MODULUS_APP"], "secret": C["MODULUS_SECRET"]})
    assert r.status_code == 200
    body = r.json()
    assert body["result"] is True and body["title"] == "Success"
    assert re.fullmatch(r"[0-9a-f]{32}", body["object"]["token"])
    assert body["object"]["ip"] == "127.0.0.1" and body["object"]["app_id"]
    assert sandbox.issued_tokens() == [body["object"]["token"]]

    r = http.post(url, data={"app": C["MODULUS_APP"]})
    assert modulus_error(r) == (400, "Missing parameters.", 5001)
    r = http.post(url, data={"app": C["MODULUS_APP"], "secret": "wrong"})
    assert r.status_code == 401
    assert r.json() == {"result": False, "title": "Error", "message": "Authentication failed."}


def test_modulus_send_then_void(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("modulus", "35", invoice_number="INV_2023_01_01_828")
    assert sandbox.state("modulus", "35") == "STATUS_DRAFT"
    token = modulus_token(http, sandbox)
    r = modulus(http, sandbox, token)
    assert r.status_code == 200
    assert r.json() == {"result": True, "title": "Success", "message": "Invoice Status changed successfully"}
    assert sandbox.state("modulus", "35") == "STATUS_SENT"

    assert modulus_error(modulus(http, sandbox, token)) == (400, "Invoice already has this status.", 5512)
    void = modulus(http, sandbox, token, status="STATUS_VOID", void_date="2023-01-14 19:59:22")
    assert void.status_code == 200 and sandbox.state("modulus", "35") == "STATUS_VOID"
    code = modulus_error(modulus(http, sandbox, token, status="STATUS_SENT"))
    assert code[0] == 400 and code[2] == 5513
    assert modulus_error(modulus(http, sandbox, token, status="STATUS_VOID"))[2] == 5512
    assert sandbox.changes("modulus", "35") == 2


def test_modulus_refusals(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("modulus", "35", invoice_number="INV_2023_01_01_828")
    token = modulus_token(http, sandbox)
    assert modulus_error(modulus(http, sandbox, token, status=None)) == (400, "Missing status.", 5526)
    assert modulus_error(modulus(http, sandbox, token, status="STATUS_PAID")) == (400, "Invalid status", 5505)
    code = modulus_error(modulus(http, sandbox, token, number=None))
    assert code[0] == 400 and code[2] == 5510
    assert modulus_error(modulus(http, sandbox, token, invoice_id="36")) == (400, "Invoice not found.", 5504)
    assert modulus_error(modulus(http, sandbox, token, number="INV_OTHER")) == (400, "Invoice not found.", 5504)
    future = (datetime.now() + timedelta(days=2)).strftime("%Y-%m-%d %H:%M:%S")
    r = modulus(http, sandbox, token, status="STATUS_VOID", void_date=future)
    assert r.status_code == 400
    assert r.json() == {"result": False, "title": "Error", "message": "The void date cannot be in the future."}
    assert sandbox.state("modulus", "35") == "STATUS_DRAFT" and sandbox.changes("modulus", "35") == 0


def test_modulus_invoice_number_is_free_when_not_seeded(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("modulus", "7")
    assert modulus(http, sandbox, modulus_token(http, sandbox), invoice_id=7, number="ANY").status_code == 200


@pytest.mark.parametrize("token", [None, "", "0" * 32])
def test_modulus_bad_token(http: requests.Session, sandbox: Sandbox, token: str | None) -> None:
    sandbox.seed("modulus", "35")
    assert modulus_error(modulus(http, sandbox, token)) == (401, "Invalid or expired token.", 5002)
    assert sandbox.state("modulus", "35") == "STATUS_DRAFT"


def test_modulus_expire_tokens(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("modulus", "35")
    token = modulus_token(http, sandbox)
    sandbox.expire_tokens()
    assert modulus_error(modulus(http, sandbox, token))[2] == 5002
    assert modulus(http, sandbox, modulus_token(http, sandbox)).status_code == 200


class FakeClock:
    """Stands in for the `time` module the modulus simulator reads its clock from."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.mark.parametrize("lifetime", [None, 0.3], ids=["documented-15-minutes", "custom"])
def test_modulus_token_lifetime(
    http: requests.Session, monkeypatch: pytest.MonkeyPatch, lifetime: float | None
) -> None:
    import importlib

    # The simulator's clock, moved by the test: the token's age is exact, whatever the machine's load.
    clock = FakeClock()
    monkeypatch.setattr(importlib.import_module("sandbox.modulus"), "time", clock)
    with Sandbox(**({} if lifetime is None else {"token_lifetime": lifetime})) as sb:
        seconds = 15 * 60 if lifetime is None else lifetime
        sb.seed("modulus", "35")
        sb.seed("modulus", "36")
        token = modulus_token(http, sb)
        clock.now += seconds * 0.999
        assert modulus(http, sb, token).status_code == 200  # still valid just before its lifetime ends
        clock.now = 1000.0 + seconds
        assert modulus_error(modulus(http, sb, token, invoice_id="36"))[0] == 401  # expired at its end
        assert sb.state("modulus", "36") == "STATUS_DRAFT"


# -- auto-create, seeding, reset ---------------------------------------------------------------
def test_auto_create(http: requests.Session) -> None:
    with Sandbox(auto_create=True) as sb:
        assert alfred(http, sb, "NEW-1").status_code == 202
        assert accounteer(http, sb, "a" * 40).status_code == 200
        assert appzen(http, sb, UUID).status_code == 200
        assert modulus(http, sb, modulus_token(http, sb), invoice_id="99").status_code == 200
        assert sb.state("alfred", "NEW-1") == "approved"
        assert sb.state("accounteer", "a" * 40) == "approved"
        assert sb.state("appzen", UUID) == "Approved"
        assert sb.state("modulus", "99") == "STATUS_SENT"


def test_unknown_invoice_is_none(sandbox: Sandbox) -> None:
    assert sandbox.state("alfred", "nobody") is None and sandbox.changes("alfred", "nobody") == 0


def test_seed_file(http: requests.Session, sandbox: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "seed.csv"
    path.write_text(
        "vendor,invoice_id,status,kind,invoice_number\n"
        "alfred,A1,,,\n"
        "alfred,A2,approved,pay-out,\n"
        "alfred,A3,,pay-in,\n"
        "modulus,35,,,INV_1\n"
        "\n"
        "accounteer,abc,,,\n"
    )
    assert sandbox.seed_file(path) == 5
    assert sandbox.state("alfred", "A1") == "pending"
    assert sandbox.state("alfred", "A2") == "approved"
    assert alfred(http, sandbox, "A3").status_code == 422  # pay-in
    assert sandbox.state("modulus", "35") == "STATUS_DRAFT"
    assert modulus(http, sandbox, modulus_token(http, sandbox), number="INV_2").status_code == 400
    assert sandbox.state("accounteer", "abc") == "draft"

    short = tmp_path / "short.csv"
    short.write_text("vendor,invoice_id\nappzen,u-1\n")
    assert sandbox.seed_file(short) == 1 and sandbox.state("appzen", "u-1") == "pending"
    bad = tmp_path / "bad.csv"
    bad.write_text("vendor,id\nalfred,1\n")
    with pytest.raises(ValueError):
        sandbox.seed_file(bad)


def test_seed_validation(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError):
        sandbox.seed("nobody", "1")
    with pytest.raises(ValueError):
        sandbox.seed("alfred", "1", kind="sideways")


def test_reset_forgets_everything(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("alfred", "A1")
    token = modulus_token(http, sandbox)
    sandbox.inject("alfred", "500")
    sandbox.reset()
    assert sandbox.state("alfred", "A1") is None
    assert all(sandbox.request_log(v) == [] for v in VENDORS)
    assert sandbox.issued_tokens() == []
    sandbox.seed("modulus", "35")
    assert modulus(http, sandbox, token).status_code == 401
    sandbox.seed("alfred", "A1")
    assert alfred(http, sandbox, "A1").status_code == 202  # the fault is gone too


# -- request log ---------------------------------------------------------------------------------
def test_request_log_has_no_secrets(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("alfred", "A1")
    sandbox.seed("modulus", "35")
    before = time.monotonic()
    alfred(http, sandbox, "A1")
    token = modulus_token(http, sandbox)
    modulus(http, sandbox, token)
    after = time.monotonic()
    log = sandbox.request_log("alfred")
    assert [(m, p) for _, m, p in log] == [("PUT", "/alfred/api/v1/third-party-service/invoice/A1")]
    assert before <= log[0][0] <= after
    mod = sandbox.request_log("modulus")
    assert [(m, p) for _, m, p in mod] == [
        ("POST", "/modulus/api/cmn/Authenticate"),
        ("PATCH", "/modulus/api/inv/v1/Invoice"),
    ]
    assert mod[0][0] <= mod[1][0]
    text = repr([sandbox.request_log(v) for v in VENDORS])
    for secret in [token, *C.values()]:
        assert secret not in text
    assert sandbox.request_log("appzen") == [] and sandbox.request_log("accounteer") == []


# -- faults -------------------------------------------------------------------------------------
def send(http: requests.Session, sb: Sandbox, vendor: str, invoice_id: str, **kw) -> requests.Response:
    """One approve request to `vendor` for an invoice seeded beforehand."""
    if vendor == "alfred":
        return alfred(http, sb, invoice_id, **kw)
    if vendor == "accounteer":
        return accounteer(http, sb, invoice_id, **kw)
    if vendor == "appzen":
        return appzen(http, sb, invoice_id, **kw)
    return modulus(http, sb, modulus_token(http, sb), invoice_id=invoice_id, **kw)


APPROVED = {"alfred": "approved", "accounteer": "approved", "appzen": "Approved", "modulus": "STATUS_SENT"}


def assert_vendor_error_shape(vendor: str, response: requests.Response) -> None:
    body = response.json()
    if vendor == "alfred":
        assert body["statusCode"] == response.status_code and body["message"]
    elif vendor == "accounteer":
        assert body["error"] and body["error_description"]
    elif vendor == "appzen":
        assert_appzen_error(response, response.status_code)
    else:
        assert body["result"] is False and body["title"] == "Error" and body["message"]


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("status", ["429", "500", "502", "503"])
def test_status_faults(http: requests.Session, sandbox: Sandbox, vendor: str, status: str) -> None:
    sandbox.seed(vendor, "F1")
    sandbox.inject(vendor, status, times=2)
    for _ in range(2):
        r = send(http, sandbox, vendor, "F1")
        assert r.status_code == int(status)
        assert "Retry-After" not in r.headers
        assert_vendor_error_shape(vendor, r)
    assert sandbox.state(vendor, "F1") != APPROVED[vendor]
    assert send(http, sandbox, vendor, "F1").status_code in (200, 202)  # faults used up
    assert sandbox.state(vendor, "F1") == APPROVED[vendor]


@pytest.mark.parametrize("retry_after, header", [(2, "2"), (0.5, "0.5")])
def test_429_retry_after(http: requests.Session, sandbox: Sandbox, retry_after: float, header: str) -> None:
    sandbox.seed("alfred", "F1")
    sandbox.inject("alfred", "429", retry_after=retry_after)
    r = alfred(http, sandbox, "F1")
    assert r.status_code == 429 and r.headers["Retry-After"] == header


@pytest.mark.parametrize("vendor", VENDORS)
def test_drop_before(http: requests.Session, sandbox: Sandbox, vendor: str) -> None:
    sandbox.seed(vendor, "F1")
    sandbox.inject(vendor, "drop_before")
    with pytest.raises(requests.ConnectionError):
        send(http, sandbox, vendor, "F1")
    assert sandbox.changes(vendor, "F1") == 0
    assert send(http, sandbox, vendor, "F1").status_code in (200, 202)
    assert sandbox.changes(vendor, "F1") == 1


@pytest.mark.parametrize("vendor", VENDORS)
def test_drop_after(http: requests.Session, sandbox: Sandbox, vendor: str) -> None:
    sandbox.seed(vendor, "F1")
    sandbox.inject(vendor, "drop_after")
    with pytest.raises(requests.ConnectionError):
        send(http, sandbox, vendor, "F1")
    assert sandbox.state(vendor, "F1") == APPROVED[vendor] and sandbox.changes(vendor, "F1") == 1


def test_slow(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("alfred", "F1")
    sandbox.inject("alfred", "slow", delay=0.3)
    started = time.monotonic()
    assert alfred(http, sandbox, "F1").status_code == 202
    assert time.monotonic() - started >= 0.3


class HeldSleep:
    """Stands in for the `time` module of the sandbox's server: a "slow" fault of `delay` seconds
    is held until the test releases it (every other sleep and the clock are the real ones)."""

    def __init__(self, delay: float) -> None:
        import threading

        self.delay = delay
        self.holding = threading.Event()
        self.release = threading.Event()

    def sleep(self, seconds: float) -> None:
        if seconds != self.delay:
            return time.sleep(seconds)
        self.holding.set()
        assert self.release.wait(30), "the test never released the held request"

    def __getattr__(self, name: str):
        return getattr(time, name)


def test_slow_times_out_but_still_applies(
    http: requests.Session, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    held = HeldSleep(delay=7.25)  # held, not slept: the vendor answers when the test says so
    monkeypatch.setattr(importlib.import_module("sandbox.server"), "time", held)
    sandbox.seed("alfred", "F1")
    sandbox.inject("alfred", "slow", delay=held.delay)
    try:
        with pytest.raises(requests.Timeout):
            alfred(http, sandbox, "F1", timeout=0.1)
        assert held.holding.is_set()  # the vendor has the request and is still on it
        assert sandbox.state("alfred", "F1") == "pending"
    finally:
        held.release.set()
    deadline = time.monotonic() + 10
    while sandbox.state("alfred", "F1") != "approved" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox.state("alfred", "F1") == "approved"  # the late request still applied


def test_expire_token_fault(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("modulus", "35")
    token = modulus_token(http, sandbox)
    sandbox.inject("modulus", "expire_token")
    assert modulus_error(modulus(http, sandbox, token)) == (401, "Invalid or expired token.", 5002)
    assert modulus(http, sandbox, token).status_code == 401  # it stays expired
    assert modulus(http, sandbox, modulus_token(http, sandbox)).status_code == 200


@pytest.mark.parametrize("vendor", VENDORS)
def test_bad_body(http: requests.Session, sandbox: Sandbox, vendor: str) -> None:
    sandbox.seed(vendor, "F1")
    sandbox.inject(vendor, "bad_body")
    r = send(http, sandbox, vendor, "F1")
    assert r.status_code == 200 and r.text == "<html>oops</html>"
    with pytest.raises(ValueError):
        r.json()
    assert sandbox.changes(vendor, "F1") == 0


def test_false_success(http: requests.Session, sandbox: Sandbox) -> None:
    for vendor in ("alfred", "accounteer", "modulus"):
        sandbox.seed(vendor, "F1")
        sandbox.inject(vendor, "false_success")
    r = alfred(http, sandbox, "F1")
    assert r.status_code == 200
    assert r.json() == {"statusCode": 200, "data": False, "message": "update invoice/transaction"}
    r = accounteer(http, sandbox, "F1")
    assert r.status_code == 200 and r.json()["status"] == "draft"
    r = modulus(http, sandbox, modulus_token(http, sandbox), invoice_id="F1")
    assert r.status_code == 200
    assert r.json() == {"result": False, "title": "Error", "message": "Something went wrong"}
    for vendor in ("alfred", "accounteer", "modulus"):
        assert sandbox.changes(vendor, "F1") == 0


def test_refusal_500(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("modulus", "35")
    sandbox.inject("modulus", "refusal_500")
    r = modulus(http, sandbox, modulus_token(http, sandbox))
    assert modulus_error(r) == (500, "Invalid status", 5505)  # documented: 500 with a 55xx code
    assert sandbox.changes("modulus", "35") == 0
    assert modulus(http, sandbox, modulus_token(http, sandbox)).status_code == 200
    for vendor in ("alfred", "accounteer", "appzen"):  # only modulus documents that shape
        with pytest.raises(ValueError):
            sandbox.inject(vendor, "refusal_500")


def test_fault_targets_one_invoice(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("alfred", "A1")
    sandbox.seed("alfred", "A2")
    sandbox.seed("modulus", "35")
    sandbox.seed("modulus", "36")
    sandbox.inject("alfred", "500", invoice_id="A2", times=2)
    sandbox.inject("modulus", "503", invoice_id="36")
    assert alfred(http, sandbox, "A1").status_code == 202
    assert alfred(http, sandbox, "A2").status_code == 500
    assert alfred(http, sandbox, "A2").status_code == 500
    assert alfred(http, sandbox, "A2").status_code == 202
    token = modulus_token(http, sandbox)
    assert modulus(http, sandbox, token, invoice_id="35").status_code == 200
    assert modulus(http, sandbox, token, invoice_id="36").status_code == 503
    assert modulus(http, sandbox, token, invoice_id="36").status_code == 200


def test_faults_are_consumed_in_order(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("alfred", "A1")
    sandbox.inject("alfred", "503")
    sandbox.inject("alfred", "429", retry_after=1)
    assert alfred(http, sandbox, "A1").status_code == 503
    assert alfred(http, sandbox, "A1").status_code == 429
    assert alfred(http, sandbox, "A1").status_code == 202


def test_faults_skip_modulus_authentication_unless_aimed(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("modulus", "35")
    sandbox.inject("modulus", "500")
    token = modulus_token(http, sandbox)  # not hit by the fault
    assert modulus(http, sandbox, token).status_code == 500
    sandbox.inject("modulus", "503", invoice_id=MODULUS_AUTHENTICATE)
    r = http.post(
        f"{sandbox.base_url('modulus')}/api/cmn/Authenticate",
        data={"app": C["MODULUS_APP"], "secret": C["MODULUS_SECRET"]},
    )
    assert r.status_code == 503
    assert modulus(http, sandbox, modulus_token(http, sandbox)).status_code == 200


def test_clear_faults(http: requests.Session, sandbox: Sandbox) -> None:
    sandbox.seed("alfred", "A1")
    sandbox.inject("alfred", "500", times=5)
    sandbox.clear_faults()
    assert alfred(http, sandbox, "A1").status_code == 202


def test_inject_validation(sandbox: Sandbox) -> None:
    for args in [("alfred", "404"), ("nobody", "500"), ("alfred", "expire_token"), ("appzen", "false_success")]:
        with pytest.raises(ValueError):
            sandbox.inject(*args)
    with pytest.raises(ValueError):
        sandbox.inject("alfred", "500", times=0)
    with pytest.raises(ValueError):
        sandbox.inject("alfred", "500", invoice_id=MODULUS_AUTHENTICATE)
    with pytest.raises(ValueError):
        sandbox.inject("modulus", "expire_token", invoice_id=MODULUS_AUTHENTICATE)


def test_latency(http: requests.Session) -> None:
    with Sandbox(auto_create=True, latency=0.2) as sb:
        started = time.monotonic()
        assert alfred(http, sb, "L1").status_code == 202
        assert time.monotonic() - started >= 0.2


# -- command line -------------------------------------------------------------------------------
def test_main_serves_until_interrupted(tmp_path: Path) -> None:
    seed = tmp_path / "seed.csv"
    seed.write_text("vendor,invoice_id\nalfred,CLI-1\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", "--seed", str(seed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal gives it, even when this suite was started with SIGINT ignored (a
        # background job of a script): Python then installs no KeyboardInterrupt, and the
        # sandbox rightly ignores SIGINT, as that job asked.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            if line.startswith("# Ctrl-C"):
                break
        env = dict(line[len("export ") :].split("=", 1) for line in lines if line.startswith("export "))
        assert env["ALFRED_API_KEY"] == C["ALFRED_API_KEY"] and len(env) == 12
        assert any("seeded 1 invoice" in line for line in lines)
        session = requests.Session()
        session.trust_env = False
        r = session.put(
            f"{env['ALFRED_BASE_URL']}/invoice/CLI-1",
            json={"status": "approved"},
            headers={"API-Key": env["ALFRED_API_KEY"], "API-Secret": env["ALFRED_API_SECRET"]},
            timeout=5,
        )
        assert r.status_code == 202
        session.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)  # reads both pipes: a full one never holds it up
        assert proc.returncode == 0, err
        assert out.rstrip().endswith("# sandbox stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
