"""Accounteer: `POST {base}/invoices/{id}` with `{"invoice": {"status": "approved"}}`.

Documented: method, path, body, OAuth 2.0 bearer token (authorization-code grant: a client id
and secret, tokens that expire), 200 with the whole invoice object, approval only (no cancel:
a cancel decision is never built into a request), approved invoices are final, ids are 40-hex
strings, money fields are decimals.

Auth, two ways in: the refresh grant (RFC 6749 §6; `TOKEN_URL`, `CLIENT_ID`, `CLIENT_SECRET`,
`REFRESH_TOKEN`): an access token is fetched at the start, and again when it expires
(`expires_in`) or is refused (401), through the same paced transport; a refresh token the
server rotates is handed to `settings.save_credential`. Or a lone `ACCESS_TOKEN`, used as it is
until refused (a 401 then stops the vendor). Not public, so assumed: the token endpoint (the
URL is a setting), that it follows RFC 6749 §5 (JSON token answer, `invalid_grant` errors),
and that it takes HTTP Basic client authentication.

Assumed too: the error bodies (OAuth-style 401, 404, 422 `{"errors": {...}}`), that
re-approving is refused with an "already approved" message, which we treat as success, and
an `X-Request-Id` header as the answer's reference.

Preview read, assumed from the docs' menu ("Get Invoice"; the list `GET {base}/invoices/` is
documented with the same bearer header): `GET {base}/invoices/{id}` answers the invoice object
with its `status`. `approved` is already done; `draft` (assumed: the state before approval)
would change; anything else stays unknown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import ClassVar
from urllib.parse import quote

from connectors.auth import Auth, HeaderAuth, SessionTokenAuth
from connectors.connector import REQUEST_ID_HEADERS, Connector, state_reading, unreadable_state
from connectors.oauth import RefreshGrant
from connectors.reading import READINGS, Action, Reading, Verdict
from connectors.settings import VendorSettings
from connectors.vocabulary import Decision, ErrorCode
from connectors.wire import Request, Response, json_body

ALREADY_APPROVED = re.compile(r"already\s+approved", re.IGNORECASE)


class UnsupportedDecision(ValueError):
    """The vendor's API cannot carry this decision; it must never be sent."""


REFRESH_GRANT = ("TOKEN_URL", "CLIENT_ID", "CLIENT_SECRET", "REFRESH_TOKEN")


class AccounteerConnector(Connector):
    name = "accounteer"
    credential_names = ("ACCESS_TOKEN", "CLIENT_ID", "CLIENT_SECRET", "REFRESH_TOKEN")
    url_names = ("TOKEN_URL",)
    credential_sets = (REFRESH_GRANT, ("ACCESS_TOKEN",))  # the refresh grant wins when both are set
    decision_map: ClassVar[Mapping[str, str]] = {"approve": "approved"}
    reference_headers = REQUEST_ID_HEADERS  # assumed: Rails-style APIs send X-Request-Id

    def __init__(self, settings: VendorSettings) -> None:
        super().__init__(settings)
        given = {*settings.credentials, *settings.urls}
        self.refreshes = given >= set(REFRESH_GRANT)
        if self.refreshes:  # a refused access token is renewed, not the end of the vendor
            self.readings = {**READINGS, 401: Reading(Action.REAUTH, ErrorCode.AUTH_FAILED)}

    def make_auth(self) -> Auth:
        creds = self.settings.credentials
        if not self.refreshes:
            return HeaderAuth({"Authorization": creds["ACCESS_TOKEN"]}, template={"Authorization": "Bearer {}"})
        save = self.settings.save_credential
        grant = RefreshGrant(
            self.settings.urls["TOKEN_URL"],
            creds["CLIENT_ID"],
            creds["CLIENT_SECRET"],
            creds["REFRESH_TOKEN"],
            vendor=self.name,
            on_rotate=None if save is None else lambda token: save("REFRESH_TOKEN", token),
        )
        return SessionTokenAuth(grant, lifetime=None, header="Authorization", template="Bearer {}")

    def build_request(self, decision: Decision) -> Request:
        if decision.decision not in self.decision_map:
            raise UnsupportedDecision("Accounteer has no cancel: only approvals can be sent")
        return Request(
            "POST",
            f"/invoices/{quote(decision.invoice_id, safe='')}",
            json={"invoice": {"status": self.decision_map[decision.decision]}},
        )

    def build_read(self, decision: Decision) -> Request:
        if decision.decision not in self.decision_map:
            raise UnsupportedDecision("Accounteer has no cancel: only approvals can be sent")
        return Request("GET", f"/invoices/{quote(decision.invoice_id, safe='')}")

    def read_state(self, decision: Decision, response: Response) -> Verdict:
        try:
            invoice = json.loads(response.text, parse_float=Decimal)
        except ValueError:
            return unreadable_state(response, "body is not JSON")
        if not isinstance(invoice, dict) or "status" not in invoice:
            return unreadable_state(response, "no invoice status in the answer")
        return state_reading(invoice["status"], ("approved",), movable=("draft",))

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
