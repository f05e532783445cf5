"""Keep-alive HTTP over urllib3, the connection pool underneath `requests`, called directly.

`requests` adds session merging, cookie jars and hooks this tool never uses, and at hundreds
of calls a second that CPU is what the sending threads share (docs/performance.md).
"""

from __future__ import annotations

import json as jsonlib  # `json` is a parameter of Http.request, as in requests
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import certifi
import urllib3

from connectors.wire import Response

USER_AGENT = "invoice-sync/0.1"


class Http:
    """Keep-alive HTTP for one vendor: a urllib3 pool sized for its concurrency.

    No retries or redirects of its own (ours rule, and a redirected PUT is not the call we
    meant), no proxy or netrc from the environment: we talk to the configured URL only. TLS is
    verified against certifi's CA bundle, as `requests` did.
    """

    def __init__(self, max_connections: int) -> None:
        self._pool = urllib3.PoolManager(
            maxsize=max_connections, retries=False, cert_reqs="CERT_REQUIRED", ca_certs=certifi.where()
        )

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """One call; the body is read whole. Raises urllib3's errors for the connector to classify."""
        if params:
            url = f"{url}?{urlencode(params)}"
        sent_headers = {"User-Agent": USER_AGENT, **(headers or {})}
        body = None
        if json is not None:
            body = jsonlib.dumps(json, allow_nan=False).encode()
            sent_headers["Content-Type"] = "application/json"
        elif data is not None:
            body = urlencode(data).encode()
            sent_headers["Content-Type"] = "application/x-www-form-urlencoded"
        answer = self._pool.request(method, url, body=body, headers=sent_headers, timeout=timeout, redirect=False)
        return Response(answer.status, answer.headers, answer.data)

    def close(self) -> None:
        self._pool.clear()
