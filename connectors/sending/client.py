"""The one place requests are sent: pacing, retries, concurrency, the vendor's stop.

A `VendorClient` wraps one connector for one run. It turns each `Decision` into exactly one
`RowResult`, whatever happens: a retryable answer is retried with declared backoff
(exponential with jitter, `Retry-After` honoured up to a cap), a permanent one fails the row,
and refused credentials stop the vendor so that its remaining rows are not sent at all.
Retries happen here only: the Prefect tasks above never retry a chunk.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from tenacity import Future, RetryCallState, Retrying, retry_if_result, stop_after_attempt, wait_exponential_jitter
from tenacity.nap import sleep as tenacity_sleep  # Retrying's own default
from tenacity.wait import wait_base

from connectors.connector import Connector
from connectors.reading import Action, Verdict
from connectors.redact import redact
from connectors.sending.http import Http
from connectors.sending.ratelimit import GlobalRateLimiter, RateLimiter, limiter_for
from connectors.vocabulary import Decision, ErrorCode, Outcome, RowResult
from connectors.wire import Request, Response


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try: the classified answer and the HTTP status, if there was one."""

    verdict: Verdict
    http_status: int | None
    sent: bool = True  # False: the vendor had been stopped, so this try sent nothing


class BackoffWait(wait_base):
    """Exponential backoff with jitter; a vendor's `Retry-After` wins, clamped to a maximum."""

    def __init__(
        self, initial: float, maximum: float, retry_after_max: float, on_throttle: Callable[[float], None]
    ) -> None:
        self.exponential = wait_exponential_jitter(initial=initial, max=maximum, jitter=initial)
        self.retry_after_max = retry_after_max
        self.on_throttle = on_throttle

    def __call__(self, retry_state: RetryCallState) -> float:
        # tenacity calls `wait` only after an attempt, so its outcome is set.
        verdict: Verdict = cast(Future, retry_state.outcome).result().verdict
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
        http: Http | None = None,
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
        self._stopped: tuple[int, Verdict] | None = None
        self._stop_lock = threading.Lock()
        self._retrying = Retrying(
            stop=stop_after_attempt(settings.max_attempts),
            wait=BackoffWait(
                settings.backoff_initial, settings.backoff_max, settings.retry_after_max, self.limiter.pause
            ),
            retry=retry_if_result(self._should_retry),
            retry_error_callback=lambda state: cast(Future, state.outcome).result(),  # the last attempt decides
            reraise=True,
            sleep=sleep or tenacity_sleep,
        )

    # -- public -----------------------------------------------------------------------------
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
            return self._result(
                decision, Attempt(Verdict(Action.FAIL, ErrorCode.INVALID_ROW, message=str(exc)), None), 0
            )
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
            finished_at=datetime.now(UTC),
        )

    def _result(self, decision: Decision, attempt: Attempt, attempts: int) -> RowResult:
        verdict = attempt.verdict
        now = datetime.now(UTC)
        if verdict.action is Action.SUCCEED:
            # A plain success's body text ("update Invoice") is the vendor's chatter, not a message
            # for anyone; a coded success (ALREADY_IN_STATE) keeps the text that explains its code.
            return RowResult(
                decision.row_number,
                Outcome.SUCCEEDED,
                attempt.http_status,
                verdict.error_code,
                None,
                redact(verdict.message) if verdict.error_code else "",
                attempts,
                now,
            )
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
