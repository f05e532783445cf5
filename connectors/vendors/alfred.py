"""alfred (Penny API): `PUT {base}/invoice/{id}` with `{"status": "approved" | "cancel"}`.

Documented: method, path, the `API-Key`/`API-Secret` headers, the body, the 202 success body
(`data: true`), 404 and the 422 VALIDATION_ERROR shape. Assumed: 401/403 for wrong credentials
and the wording of "already approved/cancelled" reasons, which we treat as success so that a
retry after an ambiguous failure is safe. Assumed: a request-id header, if alfred sends one
(`X-Request-Id`, `Request-Id` or `X-Correlation-Id`), is its reference of the answer.

Preview read, documented ("Consult individual invoice by invoice id"): `GET {base}/invoice/{id}`
with the same headers answers 202 `{"data": {..., "estatus_invoice": ...}}`. Only `pending` and
`completed` are documented values: `pending` would change; the decision's own state (approved,
cancelled) is already done (assumed spelling); `completed` and anything else stay unknown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar
from urllib.parse import quote

from connectors.auth import HeaderAuth
from connectors.connector import REQUEST_ID_HEADERS, Connector, state_reading, unreadable_state
from connectors.reading import Action, Verdict
from connectors.vocabulary import Decision, ErrorCode
from connectors.wire import Request, Response, json_body

ALREADY = re.compile(r"already\s+(approved|cancel)", re.IGNORECASE)
# The read's states that mean a decision is already done (assumed spelling beside `pending`).
READ_DONE: Mapping[str, tuple[str, ...]] = {"approve": ("approved",), "cancel": ("cancelled", "canceled", "cancel")}


class AlfredConnector(Connector):
    name = "alfred"
    credential_names = ("API_KEY", "API_SECRET")
    decision_map: ClassVar[Mapping[str, str]] = {"approve": "approved", "cancel": "cancel"}
    reference_headers = REQUEST_ID_HEADERS  # assumed: alfred documents no request id

    def make_auth(self) -> HeaderAuth:
        creds = self.settings.credentials
        return HeaderAuth({"API-Key": creds["API_KEY"], "API-Secret": creds["API_SECRET"]})

    def build_request(self, decision: Decision) -> Request:
        return Request(
            "PUT",
            f"/invoice/{quote(decision.invoice_id, safe='')}",
            json={"status": self.decision_map[decision.decision]},
        )

    def build_read(self, decision: Decision) -> Request:
        return Request("GET", f"/invoice/{quote(decision.invoice_id, safe='')}")

    def read_state(self, decision: Decision, response: Response) -> Verdict:
        body = json_body(response)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or "estatus_invoice" not in data:
            return unreadable_state(response, "no data.estatus_invoice in the answer")
        return state_reading(data["estatus_invoice"], READ_DONE[decision.decision], movable=("pending",))

    def read_success(self, request: Request, response: Response) -> Verdict:
        body = json_body(response)
        if isinstance(body, dict) and body.get("data") is True:
            return Verdict(Action.SUCCEED, message=str(body.get("message") or ""))
        if isinstance(body, dict) and body.get("data") is False:
            return Verdict(
                Action.FAIL,
                ErrorCode.VENDOR_REJECTED,
                message=f"HTTP {response.status_code} but data is false: {body.get('message', '')}",
            )
        return Verdict(Action.FAIL, ErrorCode.BAD_RESPONSE, message=f"HTTP {response.status_code} without data: true")

    def read_refusal(self, request: Request, response: Response) -> Verdict | None:
        if response.status_code != 422:
            return None
        message, code = self.error_message(response)
        already = ALREADY.search(message)
        if already and already.group(1).lower() == request.json["status"]:
            return Verdict(Action.SUCCEED, ErrorCode.ALREADY_IN_STATE, message=f"already in that state: {message}")
        return Verdict(Action.FAIL, ErrorCode.VENDOR_REJECTED, code, f"HTTP 422: {message}")

    def error_message(self, response: Response) -> tuple[str, str | None]:
        body = json_body(response)
        if not isinstance(body, dict):
            return super().error_message(response)
        reasons = [str(r.get("message")) for r in body.get("reasons") or [] if isinstance(r, dict)]
        message = str(body.get("message") or "")
        if reasons:
            message = f"{message} ({'; '.join(reasons)})" if message else "; ".join(reasons)
        return message, body.get("code")
