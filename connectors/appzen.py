"""AppZen: `POST {base}/invoice/{uuid}/status-sync`.

Documented: method, path, the three auth headers (`x-api-key`, `customer-id`,
`customer-key`), the body fields (`appzen_invoice_state`, `timestamp`, and with CREATED
`invoice_id` + `invoice_status`), 200 with an empty body, the error shape with
`"message": "Error code : <hex> - ..."`, 429 over the rate limit (1,000/s, 300,000/day) with no
Retry-After documented, and the `x-correlation-id` header. Assumed: the status texts we send
(`Approved`, `Cancelled`).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import quote

from connectors.auth import HeaderAuth
from connectors.base import Connector, Decision, Request, Response, json_body, short_text
from connectors.settings import VendorSettings

ERROR_CODE = re.compile(r"Error code\s*:\s*([0-9A-Za-z]+)\s*-\s*(.*)", re.DOTALL)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class AppZenConnector(Connector):
    name = "appzen"
    credential_names = ("API_KEY", "CUSTOMER_ID", "CUSTOMER_KEY")
    decision_map = {"approve": "Approved", "cancel": "Cancelled"}

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
                "timestamp": self.clock().astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "invoice_id": decision.invoice_number,
                "invoice_status": self.decision_map[decision.decision],
            },
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
