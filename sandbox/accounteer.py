"""accounteer: POST {base}/invoices/{id} with {"invoice": {"status": "approved"}}, an OAuth bearer token.

Only the 200 invoice object is documented; the error bodies are assumed (OAuth-style 401,
Rails-style 422), as is the `X-Request-Id` header on every answer.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from http import HTTPStatus

from .vendor_api import (
    BAD_JSON,
    Call,
    HeaderPairs,
    Invoice,
    Reply,
    Route,
    State,
    VendorAPI,
    dumps,
    json_reply,
    loads,
    path_pattern,
)

NAME = "accounteer"
BASE_PATH = "/accounteer/api/v0.1"

_ACCESS_TOKEN = "sandbox-accounteer-token-3b7a"
_AUTHORIZATION = "Bearer " + _ACCESS_TOKEN  # documented: OAuth bearer

_UNAUTHORIZED = dumps({"error": "invalid_token", "error_description": "The access token is invalid"})
_NOT_FOUND = dumps({"error": "not_found"})
_BAD_STATUS = dumps({"errors": {"status": ["is not a valid status"]}})
_ALREADY_APPROVED = dumps({"errors": {"status": ["Invoice is already approved"]}})


def _approve(sandbox: State, call: Call) -> Reply:
    if call.headers.get("Authorization") != _AUTHORIZATION:
        return json_reply(401, _UNAUTHORIZED)
    data = loads(call.body)
    if data is BAD_JSON:
        return json_reply(400, {"error": "invalid_request", "error_description": "The request body is not valid JSON"})
    inner = data.get("invoice") if isinstance(data, dict) else None
    if not isinstance(inner, dict) or inner.get("status") != "approved":  # only approval exists
        return json_reply(422, _BAD_STATUS)
    with sandbox.lock:
        invoice = sandbox.lookup(NAME, call.invoice_id or "")
        if invoice is None:
            return json_reply(404, _NOT_FOUND)
        if invoice.status == "approved":  # documented: approved is final; wording assumed
            return json_reply(422, _ALREADY_APPROVED)
        if invoice.status != "draft":
            return json_reply(422, {"errors": {"status": [f"Invoice status cannot be changed from {invoice.status}"]}})
        invoice.status = "approved"
        invoice.changes += 1
        body = _invoice_object(call.invoice_id or "", invoice)
    return json_reply(200, body)  # documented: the whole invoice object


def _false_success(sandbox: State, call: Call) -> Reply:
    """200 with the invoice as it is (not approved): an assumed failure mode."""
    with sandbox.lock:
        invoice = sandbox.invoices.get((NAME, call.invoice_id or ""))
        current = invoice or Invoice(API.initial_status)
        body = _invoice_object(call.invoice_id or "", current)
    return json_reply(200, body)


def _error_reply(status: int, headers: HeaderPairs) -> Reply:
    error = "rate_limit_exceeded" if status == 429 else "server_error"
    return json_reply(status, {"error": error, "error_description": HTTPStatus(status).phrase}, headers)


def _no_route(method: str, path: str) -> Reply:
    return json_reply(404, _NOT_FOUND)


def _request_id() -> HeaderPairs:
    return (("X-Request-Id", str(uuid.uuid4())),)  # assumed: Rails sends one on every answer


# -- the invoice object ------------------------------------------------------------------------
_DECIMAL_PLACEHOLDER = re.compile(r'"@@dec:(-?[0-9.]+)@@"')
_CENT = Decimal("0.01")
_VAT = Decimal("0.21")


def _dec(value: Decimal) -> str:
    """A placeholder that becomes a bare JSON decimal (e.g. 221.10) after dumping."""
    return f"@@dec:{value.quantize(_CENT)}@@"


def _hex40(*parts: str) -> str:
    return hashlib.sha1(":".join(parts).encode()).hexdigest()


_ORG_ID = _hex40("sandbox-organization")
_TEMPLATE_ID = _hex40("sandbox-template")
_TAX_ID = _hex40("sandbox-tax-vat21")
_GL_ACCOUNT = {"id": _hex40("sandbox-gl-7000000"), "code": "7000000", "title": "Sales", "description": None}


def _invoice_object(invoice_id: str, invoice: Invoice) -> bytes:
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
    return _DECIMAL_PLACEHOLDER.sub(r"\1", json.dumps(obj, separators=(",", ":"))).encode()


API = VendorAPI(
    name=NAME,
    base_path=BASE_PATH,
    initial_status="draft",  # assumed: an invoice not yet approved
    credentials={"ACCOUNTEER_ACCESS_TOKEN": _ACCESS_TOKEN},
    routes=(Route("POST", path_pattern(BASE_PATH, r"/invoices/([^/]+)"), _approve),),
    error_reply=_error_reply,
    no_route=_no_route,
    false_success=_false_success,
    reply_headers=_request_id,
)
