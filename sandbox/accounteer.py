"""accounteer: POST {base}/invoices/{id} with {"invoice": {"status": "approved"}}, an OAuth bearer token;
GET {base}/invoices/{id} reads the invoice; POST /accounteer/oauth/token renews access tokens.

Only the 200 invoice object is documented; the error bodies are assumed (OAuth-style 401,
Rails-style 422), as is the `X-Request-Id` header on every answer. The single-invoice read is
assumed from the docs' menu ("Get Invoice"): it answers the same invoice object.

Access: the long-lived `ACCOUNTEER_ACCESS_TOKEN` (as if pasted by a person), or access tokens
issued by the token endpoint (path assumed; RFC 6749 §6 refresh grant, HTTP Basic or form
client authentication). Issued tokens expire after `oauth_token_lifetime` seconds (sent as
`expires_in`); every grant rotates the refresh token and the old one stops working.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
import uuid
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from http import HTTPStatus
from urllib.parse import parse_qs, unquote

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
TOKEN_PATH = "/accounteer/oauth/token"  # assumed: the token endpoint is not public
_CLIENT_ID = "sandbox-accounteer-client-41d8"
_CLIENT_SECRET = "sandbox-accounteer-client-secret-92fa"
REFRESH_TOKEN = "sandbox-accounteer-refresh-0d5c"  # valid after every reset, until rotated

_UNAUTHORIZED = dumps({"error": "invalid_token", "error_description": "The access token is invalid"})
_EXPIRED = dumps({"error": "invalid_token", "error_description": "The access token expired"})
_INVALID_CLIENT = dumps({"error": "invalid_client", "error_description": "Client authentication failed"})
_INVALID_GRANT = dumps(
    {"error": "invalid_grant", "error_description": "The refresh token is invalid, expired or revoked"}
)
_NOT_FOUND = dumps({"error": "not_found"})
_BAD_STATUS = dumps({"errors": {"status": ["is not a valid status"]}})
_ALREADY_APPROVED = dumps({"errors": {"status": ["Invoice is already approved"]}})


def _refused(sandbox: State, call: Call) -> Reply | None:
    """The 401 for a request without a valid access token, or None when it may go ahead."""
    header = call.headers.get("Authorization") or ""
    if header == _AUTHORIZATION:  # the long-lived token; the "expire_token" fault refuses it once
        return json_reply(401, _EXPIRED) if call.expire_token else None
    token = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
    with sandbox.lock:
        expiry = sandbox.tokens.get(token) if token else None
        if expiry is not None and call.expire_token:
            sandbox.tokens[token] = expiry = 0.0  # once expired, it stays expired
    if expiry is None:
        return json_reply(401, _UNAUTHORIZED)
    if expiry <= time.monotonic():
        return json_reply(401, _EXPIRED)
    return None


def _token(sandbox: State, call: Call) -> Reply:
    """RFC 6749 §6: a refresh token for a new access token (and a new refresh token)."""
    fields = {k: v[0] for k, v in parse_qs(call.body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    client = _basic_client(call.headers.get("Authorization") or "") or (
        fields.get("client_id"),
        fields.get("client_secret"),
    )
    if client != (_CLIENT_ID, _CLIENT_SECRET):
        return json_reply(401, _INVALID_CLIENT)
    if fields.get("grant_type") != "refresh_token":
        return json_reply(400, {"error": "unsupported_grant_type"})
    presented = fields.get("refresh_token") or ""
    access, renewed = secrets.token_hex(20), "sandbox-accounteer-refresh-" + secrets.token_hex(12)
    with sandbox.lock:
        if not sandbox.refresh_tokens.get(presented):
            return json_reply(400, _INVALID_GRANT)
        sandbox.refresh_tokens[presented] = False  # rotated: the old one stops working
        sandbox.refresh_tokens[renewed] = True
        sandbox.tokens[access] = time.monotonic() + sandbox.oauth_token_lifetime
        lifetime = sandbox.oauth_token_lifetime
    body = {"access_token": access, "token_type": "Bearer", "expires_in": int(lifetime), "refresh_token": renewed}
    return json_reply(200, body, (("Cache-Control", "no-store"),))  # RFC 6749 §5.1


def _basic_client(header: str) -> tuple[str, str] | None:
    if not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[len("Basic ") :]).decode().partition(":")
    except ValueError:
        return None
    return unquote(user), unquote(password)


def _read(sandbox: State, call: Call) -> Reply:
    """GET {base}/invoices/{id}: the invoice object (assumed from the docs' "Get Invoice")."""
    refused = _refused(sandbox, call)
    if refused is not None:
        return refused
    with sandbox.lock:
        invoice = sandbox.lookup(NAME, call.invoice_id or "")
        if invoice is None:
            return json_reply(404, _NOT_FOUND)
        body = _invoice_object(call.invoice_id or "", invoice)
    return json_reply(200, body)


def _approve(sandbox: State, call: Call) -> Reply:
    refused = _refused(sandbox, call)
    if refused is not None:
        return refused
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
    routes=(
        Route("POST", path_pattern(BASE_PATH, r"/invoices/([^/]+)"), _approve),
        Route("GET", path_pattern(BASE_PATH, r"/invoices/([^/]+)"), _read),
        Route("POST", path_pattern(TOKEN_PATH, ""), _token, authentication=True),
    ),
    error_reply=_error_reply,
    no_route=_no_route,
    false_success=_false_success,
    reply_headers=_request_id,
    token_path=TOKEN_PATH,
    grant_credentials={
        "ACCOUNTEER_CLIENT_ID": _CLIENT_ID,
        "ACCOUNTEER_CLIENT_SECRET": _CLIENT_SECRET,
        "ACCOUNTEER_REFRESH_TOKEN": REFRESH_TOKEN,
    },
)
