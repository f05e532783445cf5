"""The OAuth 2.0 refresh grant (RFC 6749 §6): a new access token for a refresh token.

`RefreshGrant` is a token fetch for `SessionTokenAuth`: the request goes out through the same
`send` as every other call (paced, counted against the vendor's limit), and its answer is read
here into an `IssuedToken`, or into the errors the reading table knows (refused: stop the
vendor; unavailable: retry; unreadable: stop, BAD_RESPONSE).

Why not authlib: its OAuth2Client posts through a requests-style session (`session.post(url,
data=, auth=)`, then `raise_for_status()` and `.json()`), so fitting it to our transport would
mean faking a requests session around `send` and translating its exceptions back, for what is a
form of two fields, a Basic header and the reading of one JSON answer.
"""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Callable
from urllib.parse import quote

from pydantic import SecretStr

from connectors.auth import IssuedToken, Send
from connectors.errors import AuthRefused, AuthUnavailable, AuthUnreadable
from connectors.reading import RETRYABLE_STATUSES
from connectors.redact import register_secret
from connectors.wire import Request, json_body

# RFC 6749 §5.2: the error codes that mean our client or our grant is refused.
REFUSALS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client", "unsupported_grant_type"})


class RefreshGrant:
    """Exchanges the refresh token for an access token; keeps (and reports) a rotated refresh token.

    `on_rotate(new_refresh_token)` is called when the server issues a new refresh token (the
    old one may stop working): the orchestration saves it back where it came from. It must not
    raise; if it does, the new token is still used for this run.
    """

    def __init__(
        self,
        token_url: str,
        client_id: SecretStr,
        client_secret: SecretStr,
        refresh_token: SecretStr,
        *,
        vendor: str,
        on_rotate: Callable[[str], None] | None = None,
    ) -> None:
        self.token_url = token_url
        self._client = _basic(client_id.get_secret_value(), client_secret.get_secret_value())
        register_secret(self._client.removeprefix("Basic "))  # the encoded pair is as secret as its parts
        self._refresh = refresh_token.get_secret_value()
        self._vendor = vendor
        self._on_rotate = on_rotate
        self._lock = threading.Lock()
        self.rotations = 0

    def request(self) -> Request:
        """The token request: client authentication by HTTP Basic (RFC 6749 §2.3.1), the grant in the form."""
        with self._lock:
            refresh = self._refresh
        return Request(
            "POST",
            self.token_url,
            form={"grant_type": "refresh_token", "refresh_token": refresh},
            headers={"Authorization": self._client, "Accept": "application/json"},
        )

    def __call__(self, send: Send) -> IssuedToken:
        request = self.request()
        response = send(request)
        body = json_body(response)
        status = response.status_code
        if 200 <= status < 300 and isinstance(body, dict) and isinstance(body.get("access_token"), str):
            if str(body.get("token_type", "")).lower() != "bearer":
                raise AuthUnreadable(f"token endpoint issued a {body.get('token_type')!r} token, not a bearer token")
            self._rotate(body.get("refresh_token"), request.form["refresh_token"] if request.form else "")
            return IssuedToken(body["access_token"], _seconds(body.get("expires_in")))
        error = body.get("error") if isinstance(body, dict) else None
        described = body.get("error_description") if isinstance(body, dict) else None
        text = f"token request answered HTTP {status}" + (f": {error}" if error else "")
        text += f" ({described})" if described else ""
        if error in REFUSALS or status in (400, 401, 403):
            raise AuthRefused(f"{text}; {self._vendor}'s refresh token or client credentials are refused")
        if status in RETRYABLE_STATUSES:
            raise AuthUnavailable(text)
        if status < 400:  # a 2xx that is no token, or a redirect: not the token endpoint answering
            raise AuthUnreadable(f"token request answered HTTP {status} without an OAuth token")
        raise AuthRefused(text)

    def _rotate(self, issued: object, sent: str) -> None:
        if not isinstance(issued, str) or not issued or issued == sent:
            return  # no new refresh token: the one we have stays good (RFC 6749 §6)
        register_secret(issued)
        with self._lock:
            self._refresh = issued
            self.rotations += 1
        if self._on_rotate is not None:
            # The saver reports its own failures; this run goes on with the new token either way.
            with contextlib.suppress(Exception):
                self._on_rotate(issued)


def _basic(client_id: str, client_secret: str) -> str:
    # RFC 6749 §2.3.1: both form-urlencoded before the Basic encoding.
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _seconds(value: object) -> float | None:
    """`expires_in` (a number, sometimes sent as text) in seconds; None if absent or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None
