"""Accounteer: `POST {base}/invoices/{id}` with `{"invoice": {"status": "approved"}}`.

Documented: method, path, body, OAuth 2.0 bearer token, 200 with the whole invoice object,
approval only (no cancel: a cancel decision is never built into a request), approved
invoices are final, ids are 40-hex strings, money fields are decimals. Assumed: the error
bodies (OAuth-style 401, 404, 422 `{"errors": {...}}`) and that re-approving is refused with
an "already approved" message, which we treat as success.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import ClassVar
from urllib.parse import quote

from connectors.auth import HeaderAuth
from connectors.connector import Connector
from connectors.reading import Action, Verdict
from connectors.vocabulary import Decision, ErrorCode
from connectors.wire import Request, Response, json_body

ALREADY_APPROVED = re.compile(r"already\s+approved", re.IGNORECASE)


class UnsupportedDecision(ValueError):
    """The vendor's API cannot carry this decision; it must never be sent."""


class AccounteerConnector(Connector):
    name = "accounteer"
    credential_names = ("ACCESS_TOKEN",)
    decision_map: ClassVar[Mapping[str, str]] = {"approve": "approved"}

    def make_auth(self) -> HeaderAuth:
        return HeaderAuth(
            {"Authorization": self.settings.credentials["ACCESS_TOKEN"]},
            template={"Authorization": "Bearer {}"},
        )

    def build_request(self, decision: Decision) -> Request:
        if decision.decision not in self.decision_map:
            raise UnsupportedDecision("Accounteer has no cancel: only approvals can be sent")
        return Request(
            "POST",
            f"/invoices/{quote(decision.invoice_id, safe='')}",
            json={"invoice": {"status": self.decision_map[decision.decision]}},
        )

    def read_success(self, request: Request, response: Response) -> Verdict:
        try:
            # Money fields are decimals: never let them pass through float.
            invoice = json.loads(response.text, parse_float=Decimal)
        except ValueError:
            return Verdict(
                Action.FAIL, ErrorCode.BAD_RESPONSE, message=f"HTTP {response.status_code}: body is not JSON"
            )
        status = invoice.get("status") if isinstance(invoice, dict) else None
        if status == "approved":
            return Verdict(Action.SUCCEED)
        return Verdict(
            Action.FAIL,
            ErrorCode.VENDOR_REJECTED,
            message=f"HTTP {response.status_code} but the invoice status is {status!r}, not 'approved'",
        )

    def read_refusal(self, request: Request, response: Response) -> Verdict | None:
        message, _code = self.error_message(response)
        if response.status_code in (400, 409, 422) and ALREADY_APPROVED.search(message):
            return Verdict(Action.SUCCEED, ErrorCode.ALREADY_IN_STATE, message=f"already in that state: {message}")
        return None

    def error_message(self, response: Response) -> tuple[str, str | None]:
        body = json_body(response)
        if isinstance(body, dict) and isinstance(body.get("errors"), dict):
            parts = [
                f"{field}: {', '.join(map(str, msgs if isinstance(msgs, list) else [msgs]))}"
                for field, msgs in body["errors"].items()
            ]
            return "; ".join(parts), None
        if isinstance(body, dict) and "error" in body:
            text = str(body.get("error_description") or body.get("message") or body["error"])
            return text, str(body["error"])
        return super().error_message(response)
