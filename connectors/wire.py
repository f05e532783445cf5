"""The plain request and response a connector builds and reads; no HTTP library in sight."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Request:
    """A plain description of one HTTP call, before credentials are applied."""

    method: str
    path: str  # appended to the vendor's base URL; an absolute URL (a token endpoint elsewhere) is used as is
    json: Any = None
    form: Mapping[str, str] | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Response:
    """A vendor's answer, as read off the wire by the transport."""

    status_code: int
    headers: Mapping[str, str]  # case-insensitive (urllib3's HTTPHeaderDict)
    content: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")  # JSON APIs speak UTF-8 (RFC 8259)

    def json(self) -> Any:
        return json.loads(self.content)


def is_absolute(path: str) -> bool:
    """A request path that is a whole URL of its own, not a path under the base URL."""
    return path.startswith(("https://", "http://"))


def parse_retry_after(response: Response) -> float | None:
    """Seconds from a numeric `Retry-After` header (HTTP dates are rare here and ignored)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def json_body(response: Response) -> Any:
    """The response body as JSON, or None when it is empty or not JSON."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def short_text(response: Response, limit: int = 200) -> str:
    """The start of a response body, for messages."""
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("…" if len(text) > limit else "")
