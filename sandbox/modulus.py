"""modulus: POST {base}/api/cmn/Authenticate (form app/secret) for a token, then
PATCH {base}/api/inv/v1/Invoice?token=T with {"customer_details": {invoice_id, status, ...}}.

The 200 bodies, the 400/500 shape, codes 5505/5526 and the void-date message are documented;
the other codes and messages are assumed. Tokens live 15 minutes (documented; see
`State.token_lifetime`).
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from urllib.parse import parse_qs

from .vendor_api import (
    BAD_JSON,
    Call,
    HeaderPairs,
    Reply,
    Route,
    State,
    VendorAPI,
    dumps,
    json_reply,
    loads,
    path_pattern,
)

NAME = "modulus"
BASE_PATH = "/modulus"

_APP = "sandbox-modulus-app-2c58"
_SECRET = "sandbox-modulus-secret-e6b4"
_APP_ID = "sandbox-app-0001"

_OK = dumps({"result": True, "title": "Success", "message": "Invoice Status changed successfully"})
_AUTH_FAILED = dumps({"result": False, "title": "Error", "message": "Authentication failed."})
_FALSE_SUCCESS = dumps({"result": False, "title": "Error", "message": "Something went wrong"})
_VOID_FUTURE = dumps({"result": False, "title": "Error", "message": "The void date cannot be in the future."})

# Assumed: sending a draft, voiding a draft or a sent invoice; a void invoice is final.
_TRANSITIONS = frozenset(
    {("STATUS_DRAFT", "STATUS_SENT"), ("STATUS_DRAFT", "STATUS_VOID"), ("STATUS_SENT", "STATUS_VOID")}
)


def _error(message: str, code: int) -> bytes:
    return dumps({"result": False, "title": "Error", "message": message, "object": {"error_code": code}})


_MISSING_PARAMS = _error("Missing parameters.", 5001)
_BAD_TOKEN = _error("Invalid or expired token.", 5002)


def _authenticate(sandbox: State, call: Call) -> Reply:
    fields = parse_qs(call.body.decode("utf-8", "replace"), keep_blank_values=True)
    app = (fields.get("app") or [""])[0]
    secret = (fields.get("secret") or [""])[0]
    if not app or not secret:
        return json_reply(400, _MISSING_PARAMS)  # documented 400; code 5001 assumed
    if app != _APP or secret != _SECRET:
        return json_reply(401, _AUTH_FAILED)  # documented
    token = secrets.token_hex(16)
    now = time.monotonic()
    with sandbox.lock:
        if len(sandbox.tokens) > 10_000:  # long benchmarks: forget long-expired tokens
            sandbox.tokens = {t: e for t, e in sandbox.tokens.items() if e > now}
        sandbox.tokens[token] = now + sandbox.token_lifetime
    return json_reply(
        200,
        {
            "result": True,
            "title": "Success",
            "message": "Authenticated",
            "object": {"token": token, "app_id": _APP_ID, "ip": call.client_ip},
        },
    )


def _parse_invoice_body(call: Call) -> None:
    """The invoice id is in the body (customer_details.invoice_id), not in the path."""
    call.payload = loads(call.body)
    details = call.payload.get("customer_details") if isinstance(call.payload, dict) else None
    raw_id = details.get("invoice_id") if isinstance(details, dict) else None
    call.invoice_id = None if raw_id is None else str(raw_id)


def _change_status(sandbox: State, call: Call) -> Reply:
    token = (parse_qs(call.query).get("token") or [""])[0]
    now = time.monotonic()
    with sandbox.lock:
        expiry = sandbox.tokens.get(token) if token else None
        if expiry is not None and call.expire_token:
            sandbox.tokens[token] = expiry = 0.0  # once expired, it stays expired
    if expiry is None or expiry <= now:
        return json_reply(401, _BAD_TOKEN)  # assumed status and code
    data = call.payload
    if data is BAD_JSON or not isinstance(data, dict):
        return json_reply(400, _error("Invalid JSON payload.", 5500))  # assumed
    details = data.get("customer_details")
    if not isinstance(details, dict):
        return json_reply(400, _MISSING_PARAMS)  # assumed
    status = details.get("status")
    if status is None or status == "":
        return json_reply(400, _error("Missing status.", 5526))  # documented code
    if status not in ("STATUS_SENT", "STATUS_VOID"):
        return json_reply(400, _error("Invalid status", 5505))  # documented code
    if call.invoice_id is None or call.invoice_id == "":
        return json_reply(400, _error("Missing invoice id.", 5503))  # assumed
    number = details.get("invoice_number")
    if number is None or number == "":
        return json_reply(400, _error("Missing invoice number.", 5510))  # documented required; code assumed
    void_date = details.get("void_date")
    if void_date not in (None, ""):
        try:
            when = datetime.strptime(str(void_date), "%Y-%m-%d %H:%M:%S")
        except ValueError:
            return json_reply(400, _error("Invalid void date.", 5511))  # assumed
        # The vendor's clock zone is unknown: only refuse what is future in both local time
        # and UTC (plus a minute of clock skew).
        latest = max(datetime.now(), datetime.now(UTC).replace(tzinfo=None)) + timedelta(minutes=1)
        if when > latest:
            return json_reply(400, _VOID_FUTURE)  # documented: message only, no object
    number = str(number)
    with sandbox.lock:
        invoice = sandbox.lookup(NAME, call.invoice_id, number)
        if invoice is None or (invoice.invoice_number is not None and invoice.invoice_number != number):
            return json_reply(400, _error("Invoice not found.", 5504))  # assumed
        if invoice.status == status:
            return json_reply(400, _error("Invoice already has this status.", 5512))  # assumed
        if invoice.status == "STATUS_VOID":
            return json_reply(400, _error("A void invoice cannot be changed.", 5513))  # assumed
        if (invoice.status, status) not in _TRANSITIONS:
            return json_reply(400, _error(f"Invoice status cannot be changed from {invoice.status}.", 5513))
        invoice.status = status
        invoice.changes += 1
    return json_reply(200, _OK)  # documented


def _false_success(sandbox: State, call: Call) -> Reply:
    return json_reply(200, _FALSE_SUCCESS)


def _refusal_500() -> Reply:
    return json_reply(500, _error("Invalid status", 5505))  # documented: 500 with a 55xx code


def _error_reply(status: int, headers: HeaderPairs) -> Reply:
    if status == 500:  # documented 500 shape; 429/502/503 assumed without object
        return json_reply(status, _error("Internal server error.", 5000), headers)
    message = "Too many requests." if status == 429 else HTTPStatus(status).phrase + "."
    return json_reply(status, {"result": False, "title": "Error", "message": message}, headers)


def _no_route(method: str, path: str) -> Reply:
    return json_reply(404, {"result": False, "title": "Error", "message": "Not found."})


API = VendorAPI(
    name=NAME,
    base_path=BASE_PATH,
    initial_status="STATUS_DRAFT",  # assumed: STATUS_SENT / STATUS_VOID are the documented targets
    credentials={"MODULUS_APP": _APP, "MODULUS_SECRET": _SECRET},
    routes=(
        Route("POST", path_pattern(BASE_PATH, r"/api/cmn/Authenticate"), _authenticate, authentication=True),
        Route("PATCH", path_pattern(BASE_PATH, r"/api/inv/v1/Invoice"), _change_status, parse_body=_parse_invoice_body),
    ),
    error_reply=_error_reply,
    no_route=_no_route,
    false_success=_false_success,
    refusal_500=_refusal_500,
)
