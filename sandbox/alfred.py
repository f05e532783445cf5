"""alfred: PUT {base}/invoice/{id} with {"status": "approved" | "cancel"}, API-Key/API-Secret headers;
GET {base}/invoice/{id} reads it.

The 202 body and the 422 shape are documented; 401 and the 429/5xx bodies are assumed (the API
looks NestJS-based: {"statusCode", "message"}). The read's 202 `{"data": {..., "estatus_invoice"}}`
is documented; the other fields of `data`, and that it shows the invoice's status as is
(approved, cancelled beside the documented pending), are assumed.
"""

from __future__ import annotations

from http import HTTPStatus

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

NAME = "alfred"
BASE_PATH = "/alfred/api/v1/third-party-service"

_API_KEY = "sandbox-alfred-key-5f1e"
_API_SECRET = "sandbox-alfred-secret-9c2d"

_OK = dumps({"statusCode": 202, "data": True, "message": "update Invoice"})
_UNAUTHORIZED = dumps({"statusCode": 401, "message": "Unauthorized"})
_NOT_FOUND = dumps({"statusCode": 404, "message": "Invoice not found"})
_FALSE_SUCCESS = dumps({"statusCode": 200, "data": False, "message": "update invoice/transaction"})


def _validation_error(message: str, path: str, validation: str) -> Reply:
    # Documented shape: {"statusCode":422,...,"reasons":[...],"code":"VALIDATION_ERROR"}.
    return json_reply(
        422,
        {
            "statusCode": 422,
            "message": "A logic validation has not been fulfilled",
            "reasons": [{"message": message, "path": path, "validation": validation}],
            "code": "VALIDATION_ERROR",
        },
    )


def _authorized(call: Call) -> bool:
    return call.headers.get("API-Key") == _API_KEY and call.headers.get("API-Secret") == _API_SECRET


def _update_invoice(sandbox: State, call: Call) -> Reply:
    if not _authorized(call):
        return json_reply(401, _UNAUTHORIZED)  # assumed: the wrong-credentials shape is undocumented
    data = loads(call.body)
    if data is BAD_JSON:
        return json_reply(400, {"statusCode": 400, "message": "Unexpected token in JSON body", "error": "Bad Request"})
    wanted = data.get("status") if isinstance(data, dict) else None
    if wanted not in ("approved", "cancel"):  # documented values
        return _validation_error("status must be one of the following values: approved, cancel", "status", "isIn")
    target = "approved" if wanted == "approved" else "cancelled"
    with sandbox.lock:
        invoice = sandbox.lookup(NAME, call.invoice_id or "")
        if invoice is None:
            return json_reply(404, _NOT_FOUND)  # documented status, assumed body
        if invoice.kind == "pay-in":  # documented: pay-in invoices are approved by alfred
            return _validation_error(
                "Pay-in invoices are approved by alfred and cannot be changed through this API", "id", "payOut"
            )
        if invoice.status == target:  # assumed wording; clients must treat it as done
            return _validation_error(f"Invoice is already {target}", "status", "transition")
        if invoice.status != "pending":
            return _validation_error(f"Invoice status cannot be changed from {invoice.status}", "status", "transition")
        invoice.status = target
        invoice.changes += 1
    return json_reply(202, _OK)  # documented


def _read_invoice(sandbox: State, call: Call) -> Reply:
    if not _authorized(call):
        return json_reply(401, _UNAUTHORIZED)
    with sandbox.lock:
        invoice = sandbox.lookup(NAME, call.invoice_id or "")
        if invoice is None:
            return json_reply(404, _NOT_FOUND)
        data = {"id": call.invoice_id, "type": invoice.kind, "estatus_invoice": invoice.status}
    return json_reply(202, {"statusCode": 202, "message": "list invoice/transaction", "data": data})  # documented shape


def _false_success(sandbox: State, call: Call) -> Reply:
    return json_reply(200, _FALSE_SUCCESS)


def _error_reply(status: int, headers: HeaderPairs) -> Reply:
    message = "ThrottlerException: Too Many Requests" if status == 429 else HTTPStatus(status).phrase
    return json_reply(status, {"statusCode": status, "message": message}, headers)


def _no_route(method: str, path: str) -> Reply:
    # NestJS' default answer, assumed
    return json_reply(404, {"statusCode": 404, "message": f"Cannot {method} {path}", "error": "Not Found"})


API = VendorAPI(
    name=NAME,
    base_path=BASE_PATH,
    initial_status="pending",  # documented: invoices start pending
    credentials={"ALFRED_API_KEY": _API_KEY, "ALFRED_API_SECRET": _API_SECRET},
    routes=(
        Route("PUT", path_pattern(BASE_PATH, r"/invoice/([^/]+)"), _update_invoice),
        Route("GET", path_pattern(BASE_PATH, r"/invoice/([^/]+)"), _read_invoice),
    ),
    error_reply=_error_reply,
    no_route=_no_route,
    false_success=_false_success,
)
