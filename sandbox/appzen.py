"""appzen: POST {base}/invoice/{uuid}/status-sync, x-api-key/customer-id/customer-key headers;
GET {base}/invoice/{uuid} reads it.

The success (200, empty body), the error shape, 401 and 404 are documented, as is the
x-correlation-id header on every answer, and the (deprecated) read carrying `invoice_status`;
the read's other fields and its layout (a flat object) are assumed, as is the rest.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

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

NAME = "appzen"
BASE_PATH = "/appzen/dictionary-data-services"

_API_KEY = "sandbox-appzen-key-8e41"
_CUSTOMER_ID = "sandbox-appzen-customer-6d09"
_CUSTOMER_KEY = "sandbox-appzen-customer-key-a7f3"

_OK: Reply = (200, b"", (), "")  # documented: 200 with an empty body
_NOT_FOUND_DETAIL = "The resource you specified cannot be not found"  # documented message (typo included)


def _error(status: int, detail: str) -> bytes:
    """AppZen's documented error shape, with a fresh 8-hex error code."""
    now = datetime.now(UTC)
    return dumps(
        {
            "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+0000",
            "status": str(status),
            "error": HTTPStatus(status).phrase,
            "message": f"Error code : {random.getrandbits(32):08x} - {detail}",
        }
    )


def _refused(call: Call) -> Reply | None:
    """The 401 for a request without the three keys, or None (documented: 401; the sandbox never answers 403)."""
    h = call.headers
    if h.get("x-api-key") != _API_KEY or h.get("customer-id") != _CUSTOMER_ID or h.get("customer-key") != _CUSTOMER_KEY:
        return json_reply(401, _error(401, "Invalid or missing x-api-key, customer-id or customer-key"))
    return None


def _status_sync(sandbox: State, call: Call) -> Reply:
    refused = _refused(call)
    if refused is not None:
        return refused
    data = loads(call.body)
    problem = _body_problem(data)
    if problem:
        return json_reply(400, _error(400, problem))
    with sandbox.lock:
        invoice = sandbox.lookup(NAME, call.invoice_id or "")
        if invoice is None:
            return json_reply(404, _error(404, _NOT_FOUND_DETAIL))
        if data["appzen_invoice_state"] == "ERROR":
            return _OK  # an error report changes no status
        new = data["invoice_status"]
        current = invoice.status.casefold()
        if current != new.casefold():
            if current in ("approved", "cancelled"):  # assumed: final states stay final
                return json_reply(400, _error(400, "Invoice already finalised"))
            invoice.status = new
            invoice.changes += 1
    return _OK


def _read_invoice(sandbox: State, call: Call) -> Reply:
    refused = _refused(call)
    if refused is not None:
        return refused
    with sandbox.lock:
        invoice = sandbox.lookup(NAME, call.invoice_id or "")
        if invoice is None:
            return json_reply(404, _error(404, _NOT_FOUND_DETAIL))
        body = {"appzen_uuid": call.invoice_id, "invoice_id": invoice.invoice_number, "invoice_status": invoice.status}
    return json_reply(200, body)


def _body_problem(data: Any) -> str | None:
    """Why a status-sync body is invalid (documented required fields), or None."""
    if data is BAD_JSON or not isinstance(data, dict):
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


def _error_reply(status: int, headers: HeaderPairs) -> Reply:
    detail = "Rate limit exceeded" if status == 429 else HTTPStatus(status).phrase
    return json_reply(status, _error(status, detail), headers)


def _no_route(method: str, path: str) -> Reply:
    return json_reply(404, _error(404, _NOT_FOUND_DETAIL))


def _correlation_id() -> HeaderPairs:
    return (("x-correlation-id", str(uuid.uuid4())),)  # documented: on every AppZen answer


API = VendorAPI(
    name=NAME,
    base_path=BASE_PATH,
    initial_status="pending",  # assumed: AppZen holds the customer's status text; none synced yet
    credentials={"APPZEN_API_KEY": _API_KEY, "APPZEN_CUSTOMER_ID": _CUSTOMER_ID, "APPZEN_CUSTOMER_KEY": _CUSTOMER_KEY},
    routes=(
        Route("POST", path_pattern(BASE_PATH, r"/invoice/([^/]+)/status-sync"), _status_sync),
        Route("GET", path_pattern(BASE_PATH, r"/invoice/([^/]+)"), _read_invoice),
    ),
    error_reply=_error_reply,
    no_route=_no_route,
    false_success=None,  # a success has no body to lie in
    reply_headers=_correlation_id,
)
