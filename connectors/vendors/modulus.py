"""modulus invoicing v1: a session token, then `PATCH {base}/api/inv/v1/Invoice?token=...`.

Documented: `POST /api/cmn/Authenticate` with form fields `app` and `secret` (200 with
`object.token`, 400 missing parameters, 401 "Authentication failed."), tokens expiring 15
minutes after creation, the PATCH body under `customer_details`, STATUS_SENT / STATUS_VOID,
`invoice_number` required, `void_date` optional and never in the future, success
`{"result": true}`, errors `{"result": false, "object": {"error_code": N}}` on 400 and 500
(5505 invalid status, 5526 missing status; the invoicing codes are 55xx) or with a message
only. A 500 carrying a 55xx code is the vendor refusing the change (VENDOR_REJECTED, not
retried); a 500 without one stays an outage (retried). Assumed: an expired or unknown token is
answered 401, "already has this status" errors (treated as success) say "already", and a
request-id header, if modulus sends one, is its reference of the answer.
No invoicing-v1 page documents a read of one invoice: `build_read` is None (a preview says
`unknown`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

from connectors.auth import Send, SessionTokenAuth
from connectors.connector import REQUEST_ID_HEADERS, Connector
from connectors.errors import AuthRefused, AuthUnavailable, AuthUnreadable
from connectors.reading import READINGS, RETRYABLE_STATUSES, Action, Reading, ReadingKey, Verdict
from connectors.vocabulary import Decision, ErrorCode
from connectors.wire import Request, Response, json_body, short_text

TOKEN_LIFETIME = 15 * 60  # documented: a token expires 15 minutes after creation
ALREADY = re.compile(r"\balready\b", re.IGNORECASE)
NOT_FOUND = re.compile(r"not\s+found", re.IGNORECASE)
INVOICING_CODE = re.compile(r"55\d\d")  # documented: the invoicing error codes (5500-5531, 5597)


class ModulusConnector(Connector):
    name = "modulus"
    credential_names = ("APP", "SECRET")
    decision_map: ClassVar[Mapping[str, str]] = {"approve": "STATUS_SENT", "cancel": "STATUS_VOID"}
    reference_headers = REQUEST_ID_HEADERS  # assumed: modulus documents no request id
    # Assumed: an expired or unknown session token is answered 401; a new token is all it takes.
    readings: Mapping[ReadingKey, Reading] = {**READINGS, 401: Reading(Action.REAUTH, ErrorCode.AUTH_FAILED)}

    def make_auth(self) -> SessionTokenAuth:
        return SessionTokenAuth(self.fetch_token, lifetime=TOKEN_LIFETIME)

    def token_request(self) -> Request:
        creds = self.settings.credentials
        return Request(
            "POST",
            "/api/cmn/Authenticate",
            form={"app": creds["APP"].get_secret_value(), "secret": creds["SECRET"].get_secret_value()},
        )

    def fetch_token(self, send: Send) -> str:
        """Authenticate and return a fresh token; AuthRefused stops the vendor."""
        response = send(self.token_request())
        body = json_body(response)
        if response.ok and isinstance(body, dict) and body.get("result") is True:
            token = (body.get("object") or {}).get("token")
            if token:
                return str(token)
        message, _ = self.error_message(response)
        text = f"token request answered HTTP {response.status_code}: {message}"
        if response.status_code in RETRYABLE_STATUSES:
            raise AuthUnavailable(text)
        if response.ok and not (isinstance(body, dict) and isinstance(body.get("result"), bool)):
            # Not modulus answering (a sign-in page, a redirect): not a refusal of our credentials.
            raise AuthUnreadable(f"token request answered HTTP {response.status_code} without modulus' JSON")
        raise AuthRefused(text)

    def build_request(self, decision: Decision) -> Request:
        details = {
            "invoice_id": decision.invoice_id,
            "status": self.decision_map[decision.decision],
            "invoice_number": decision.invoice_number,
        }
        if decision.void_date:
            details["void_date"] = decision.void_date
        return Request("PATCH", "/api/inv/v1/Invoice", json={"customer_details": details})

    def read_success(self, request: Request, response: Response) -> Verdict:
        body = json_body(response)
        if not isinstance(body, dict) or "result" not in body:
            return Verdict(Action.FAIL, ErrorCode.BAD_RESPONSE, message=f"HTTP {response.status_code}: unreadable body")
        if body["result"] is True:
            return Verdict(Action.SUCCEED, message=str(body.get("message") or ""))
        # A 2xx that says `result: false` is a failure, never a success.
        return self._business_error(response) or Verdict(Action.FAIL, ErrorCode.VENDOR_REJECTED)

    def read_refusal(self, request: Request, response: Response) -> Verdict | None:
        if response.status_code == 400:
            return self._business_error(response)
        if response.status_code == 500:
            # Documented: a 500 carrying an invoicing error code refuses the change; retrying
            # it five times would only report a refusal as an outage.
            _, code = self.error_message(response)
            if code is not None and INVOICING_CODE.fullmatch(code):
                return self._business_error(response)
        return None  # a bare 500 (or one with another code): the table retries it

    def _business_error(self, response: Response) -> Verdict | None:
        message, code = self.error_message(response)
        text = f"HTTP {response.status_code}: {message}"
        if ALREADY.search(message):
            return Verdict(Action.SUCCEED, ErrorCode.ALREADY_IN_STATE, message=f"already in that state: {message}")
        if NOT_FOUND.search(message):
            return Verdict(Action.FAIL, ErrorCode.NOT_FOUND, code, text)
        return Verdict(Action.FAIL, ErrorCode.VENDOR_REJECTED, code, text)

    def error_message(self, response: Response) -> tuple[str, str | None]:
        body = json_body(response)
        if not isinstance(body, dict):
            return short_text(response), None
        code = (body.get("object") or {}).get("error_code") if isinstance(body.get("object"), dict) else None
        return str(body.get("message") or body.get("title") or ""), (str(code) if code is not None else None)
