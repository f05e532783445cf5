"""AppZen: `POST {base}/invoice/{uuid}/status-sync`.

Documented: method, path, the three auth headers (`x-api-key`, `customer-id`,
`customer-key`), the body fields (`appzen_invoice_state`, `timestamp`, and with CREATED
`invoice_id` + `invoice_status`), 200 with an empty body, the error shape with
`"message": "Error code : <hex> - ..."`, 429 over the rate limit (1,000/s, 300,000/day) with no
Retry-After documented, and the `x-correlation-id` header on every answer (kept as the row's
`vendor_reference`). Assumed: the status texts we send (`Approved`, `Cancelled`).

Preview read, documented (marked deprecated): `GET {base}/invoice/{uuid}` with the same headers
carries `invoice_status`, the ERP status text last synced (where in the body is assumed: at the
top, or under `data`). The decision's own text is already done; any other would change (AppZen
takes any status text from the ERP). The documented `POST {base}/invoice/search` needs a time
window and filters by the ERP's ids, not AppZen's uuid, so it is not used for one invoice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import ClassVar
from urllib.parse import quote

from connectors.auth import HeaderAuth
from connectors.connector import Connector, state_reading, unreadable_state
from connectors.reading import Action, Verdict
from connectors.settings import VendorSettings
from connectors.vocabulary import Decision, ErrorCode
from connectors.wire import Request, Response, json_body, short_text

ERROR_CODE = re.compile(r"Error code\s*:\s*([0-9A-Za-z]+)\s*-\s*(.*)", re.DOTALL)


def utc_now() -> datetime:
    return datetime.now(UTC)


class AppZenConnector(Connector):
    name = "appzen"
    credential_names = ("API_KEY", "CUSTOMER_ID", "CUSTOMER_KEY")
    decision_map: ClassVar[Mapping[str, str]] = {"approve": "Approved", "cancel": "Cancelled"}
    reference_headers = ("x-correlation-id",)  # documented on every answer; support asks for it
    daily_limit = 300_000  # documented: 1,000 requests/second and 300,000 requests/day

    def __init__(self, settings: VendorSettings, clock: Callable[[], datetime] = utc_now) -> None:
        super().__init__(settings)
        self.clock = clock  # the body carries a timestamp; injected so requests stay reproducible

    def make_auth(self) -> HeaderAuth:
        creds = self.settings.credentials
        return HeaderAuth(
            {
                "x-api-key": creds["API_KEY"],
                "customer-id": creds["CUSTOMER_ID"],
                "customer-key": creds["CUSTOMER_KEY"],
            }
        )

    def build_request(self, decision: Decision) -> Request:
        return Request(
            "POST",
            f"/invoice/{quote(decision.invoice_id, safe='')}/status-sync",
            json={
                "appzen_invoice_state": "CREATED",
                "timestamp": self.clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "invoice_id": decision.invoice_number,
                "invoice_status": self.decision_map[decision.decision],
            },
        )

    def build_read(self, decision: Decision) -> Request:
        return Request("GET", f"/invoice/{quote(decision.invoice_id, safe='')}")

    def read_state(self, decision: Decision, response: Response) -> Verdict:
        body = json_body(response)
        invoice = body.get("data") if isinstance(body, dict) and isinstance(body.get("data"), dict) else body
        if not isinstance(invoice, dict) or "invoice_status" not in invoice:
            return unreadable_state(response, "no invoice_status in the answer")
        return state_reading(invoice["invoice_status"], (self.decision_map[decision.decision],))

    def read_success(self, request: Request, response: Response) -> Verdict:
        # Documented: 200 with an empty body. Any other 2xx, or a body (a sign-in page answering
        # for a mistyped base URL), is not a confirmation.
        if response.status_code == 200 and not response.content.strip():
            return Verdict(Action.SUCCEED)
        what = "a body" if response.content.strip() else "an empty body"
        return Verdict(
            Action.FAIL,
            ErrorCode.BAD_RESPONSE,
            message=f"HTTP {response.status_code} with {what}: AppZen confirms with 200 and an empty body"
            + (f" ({short_text(response, 80)})" if response.content.strip() else ""),
        )

    def error_message(self, response: Response) -> tuple[str, str | None]:
        body = json_body(response)
        if not isinstance(body, dict):
            return short_text(response), None
        message = str(body.get("message") or body.get("error") or "")
        match = ERROR_CODE.match(message)
        if match:
            return match.group(2).strip(), match.group(1)
        return message, None
