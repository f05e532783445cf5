"""The one place requests are sent: pooled connections, pacing, retries, concurrency.

A `VendorClient` wraps one connector for one run. It turns each `Decision` into exactly one
`RowResult`, whatever happens: a retryable answer is retried with declared backoff
(exponential with jitter, `Retry-After` honoured up to a cap), a permanent one fails the row,
and refused credentials stop the vendor so that its remaining rows are not sent at all.
Retries happen here only: the Prefect tasks above never retry a chunk.

HTTP goes through urllib3, the connection pool underneath `requests`, called directly: a call
costs about 0.3 ms of CPU instead of `requests`' 0.65 ms (session merging, cookie jars, hooks
we do not use), and at hundreds of calls a second that CPU is what the sending threads share.
"""

from __future__ import annotations

import itertools
import json as jsonlib  # `json` is a parameter of Http.request, as in requests
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlencode

import certifi
import urllib3
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, wait_exponential_jitter
from tenacity.wait import wait_base

from connectors.base import Action, Connector, Decision, ErrorCode, Outcome, Request, Response, Verdict
from connectors.ratelimit import GlobalRateLimiter, RateLimiter, limiter_for
from connectors.redact import redact

USER_AGENT = "invoice-sync/0.1"


@dataclass(slots=True)
class RowResult:
    """What happened to one decision at its vendor."""

    row_number: int
    outcome: Outcome
    http_status: int | None = None
    error_code: ErrorCode | None = None
    vendor_error_code: str | None = None
    error_message: str = ""
    attempts: int = 0
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try: the classified answer and the HTTP status, if there was one."""

    verdict: Verdict
    http_status: int | None
    sent: bool = True  # False: the vendor had been stopped, so this try sent nothing


class BackoffWait(wait_base):
    """Exponential backoff with jitter; a vendor's `Retry-After` wins, clamped to a maximum."""

    def __init__(self, initial: float, maximum: float, retry_after_max: float, on_throttle) -> None:
        self.exponential = wait_exponential_jitter(initial=initial, max=maximum, jitter=initial)
        self.retry_after_max = retry_after_max
        self.on_throttle = on_throttle

    def __call__(self, retry_state: RetryCallState) -> float:
        verdict: Verdict = retry_state.outcome.result().verdict
        if verdict.action is Action.REAUTH:
            return 0.0  # a fresh token is all it takes
        if verdict.retry_after is not None:
            wait = min(verdict.retry_after, self.retry_after_max)
        else:
            wait = self.exponential(retry_state)
        if verdict.error_code is ErrorCode.RATE_LIMITED:
            self.on_throttle(wait)
        return wait


class VendorClient:
    """Sends one vendor's decisions for one run (thread-safe; share it across chunks)."""

    def __init__(
        self,
        connector: Connector,
        *,
        limiter: RateLimiter | GlobalRateLimiter | None = None,
        http: "Http | None" = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        settings = connector.settings
        self.connector = connector
        self.vendor = connector.name
        self.settings = settings
        self.base_url = settings.base_url or ""
        self.limiter = limiter or limiter_for(settings)
        self.auth = connector.make_auth()
        self.http = http or Http(settings.max_concurrency)
        self._pool = ThreadPoolExecutor(settings.max_concurrency, thread_name_prefix=f"send-{self.vendor}")
        self._sent = itertools.count()
        self._requests_sent = 0
        self._stopped: tuple[int, Verdict] | None = None
        self._stop_lock = threading.Lock()
        self._retrying = Retrying(
            stop=stop_after_attempt(settings.max_attempts),
            wait=BackoffWait(settings.backoff_initial, settings.backoff_max, settings.retry_after_max, self.limiter.pause),
            retry=retry_if_result(self._should_retry),
            retry_error_callback=lambda state: state.outcome.result(),  # the last attempt decides
            reraise=True,
            **({"sleep": sleep} if sleep else {}),
        )

    # -- public -----------------------------------------------------------------------------
    @property
    def requests_sent(self) -> int:
        """HTTP requests made so far (every attempt and token fetch)."""
        return self._requests_sent

    @property
    def stopped(self) -> bool:
        return self._stopped is not None

    def send_many(
        self,
        decisions: Iterable[Decision],
        on_result: Callable[[Decision, RowResult], None] | None = None,
    ) -> list[RowResult]:
        """Send decisions concurrently (up to the vendor's max concurrency); results in input order.

        `on_result` runs in the sending thread right after each answer, before that thread
        sends anything else (the ledger relies on this).
        """
        decisions = list(decisions)
        results: list[RowResult | None] = [None] * len(decisions)
        claim = itertools.count()  # next() on it is atomic: each row is taken by exactly one sender

        def sender() -> None:
            # One pool task per sender, looping over the rows, rather than one per row: a Future
            # and its Condition per row cost about a seventh of the sending threads' time.
            while (i := next(claim)) < len(decisions):
                result = self.send(decisions[i])
                if on_result is not None:
                    on_result(decisions[i], result)
                results[i] = result

        senders = [self._pool.submit(sender) for _ in range(min(self.settings.max_concurrency, len(decisions)))]
        for finished in senders:
            finished.result()  # a sender's crash is the chunk's: raised here, like any bug
        return results  # type: ignore[return-value]  # every index was claimed and filled

    def send(self, decision: Decision) -> RowResult:
        """Send one decision, retrying as declared; always returns its one result."""
        if self._stopped is not None:
            return self._not_sent(decision)
        try:
            request = self.connector.build_request(decision)
        except (ValueError, KeyError) as exc:
            return self._result(decision, Attempt(Verdict(Action.FAIL, ErrorCode.INVALID_ROW, message=str(exc)), None), 0)
        attempt: Attempt = self._attempt(request)
        attempts = 1
        if self._should_retry(attempt) and self.settings.max_attempts > 1:
            # Only a row that needs another try pays for tenacity (a Retrying copy and its
            # loop per row add up at hundreds of rows a second); it starts from this answer.
            first = [attempt]

            def again(request: Request) -> Attempt:
                return first.pop() if first else self._attempt(request)

            retrying = self._retrying.copy()
            attempt = retrying(again, request)
            attempts = retrying.statistics.get("attempt_number", 1)
        if not attempt.sent:  # another row found the credentials refused while this one waited
            return self._not_sent(decision, attempts - 1)
        if attempt.verdict.action in (Action.RETRY, Action.REAUTH) and self._stopped is not None:
            # Retries were cut short by another row's stop, not run out: say that.
            return self._not_sent(decision, attempts)
        if attempt.verdict.action is Action.STOP:
            self._stop(decision, attempt.verdict)
        return self._result(decision, attempt, attempts)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.http.close()

    # -- internals --------------------------------------------------------------------------
    def _should_retry(self, attempt: Attempt) -> bool:
        return attempt.verdict.action in (Action.RETRY, Action.REAUTH) and self._stopped is None

    def _attempt(self, request: Request) -> Attempt:
        if self._stopped is not None:  # checked after every backoff too: no request after a stop
            return Attempt(self._stopped[1], None, sent=False)
        try:
            authed = self.auth.apply(request, self._send_raw)
            response = self._send_raw(authed)
        except Exception as exc:  # every failure becomes a Verdict; nothing escapes a row
            return Attempt(self.connector.classify(request, error=exc), None)
        verdict = self.connector.classify(request, response=response)
        if verdict.action is Action.REAUTH:
            self.auth.invalidate(authed)
        return Attempt(verdict, response.status_code)

    def _send_raw(self, request: Request) -> Response:
        self.limiter.acquire()  # every request takes a slot: retries and token fetches too
        self._requests_sent = next(self._sent) + 1
        return self.http.request(
            request.method,
            self.base_url + request.path,
            params=request.params or None,
            json=request.json,
            data=request.form,
            headers=request.headers or None,
            timeout=self.settings.timeout,
        )

    def _stop(self, decision: Decision, verdict: Verdict) -> None:
        with self._stop_lock:
            if self._stopped is None:
                self._stopped = (decision.row_number, verdict)

    def _not_sent(self, decision: Decision, attempts: int = 0) -> RowResult:
        """A row the vendor's stop caught before it was sent, or between two of its tries."""
        row, verdict = self._stopped  # type: ignore[misc]
        what = "not sent" if attempts == 0 else f"retries stopped after {attempts} attempts"
        message = f"{what}: {self.vendor} refused our credentials at row {row} ({verdict.message})"
        return RowResult(
            decision.row_number,
            Outcome.FAILED,
            error_code=verdict.error_code or ErrorCode.AUTH_FAILED,
            error_message=redact(message),
            attempts=attempts,
            finished_at=datetime.now(timezone.utc),
        )

    def _result(self, decision: Decision, attempt: Attempt, attempts: int) -> RowResult:
        verdict = attempt.verdict
        now = datetime.now(timezone.utc)
        if verdict.action is Action.SUCCEED:
            return RowResult(decision.row_number, Outcome.SUCCEEDED, attempt.http_status, None, None,
                             redact(verdict.message), attempts, now)
        message = verdict.message
        if verdict.action in (Action.RETRY, Action.REAUTH):
            message = f"gave up after {attempts} attempts; last: {message}"
        return RowResult(
            decision.row_number,
            Outcome.FAILED,
            attempt.http_status,
            verdict.error_code or ErrorCode.BAD_RESPONSE,
            verdict.vendor_error_code,
            redact(message),
            attempts,
            now,
        )


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
