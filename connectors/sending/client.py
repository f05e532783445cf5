"""The one place requests are sent: pacing, retries, concurrency, the vendor's stop.

A `VendorClient` wraps one connector for one run. It turns each `Decision` into exactly one
`RowResult`, whatever happens: a retryable answer is retried with declared backoff
(exponential with jitter, `Retry-After` honoured up to a cap), a permanent one fails the row,
and refused credentials stop the vendor so that its remaining rows are not sent at all.
Retries happen here only: the Prefect tasks above never retry a chunk.

A run's stop (a `threading.Event` the orchestration sets on SIGINT/SIGTERM) is checked before
every request: once it is set no request starts, backoff and pacing waits end at once, and
rows not sent yet end `INTERRUPTED` (attempts 0). Requests already in flight get up to
`STOP_GRACE` seconds for their answer; one still unanswered then is given up on (it is
`INTERRUPTED` too, with its attempts, and not recorded: the next run sends it again).

A preview (`check`, `check_many`) reads each decision's invoice the same way (auth, limiter,
retries, both stops) and turns it into one `VendorCheck`; it never sends a decision.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar, cast

from tenacity import Future, RetryCallState, Retrying, retry_if_result, stop_after_attempt, wait_exponential_jitter
from tenacity.nap import sleep as tenacity_sleep  # Retrying's own default
from tenacity.wait import wait_base

from connectors.connector import Connector
from connectors.reading import Action, Verdict
from connectors.redact import redact
from connectors.sending.http import Http
from connectors.sending.quota import DailyQuota
from connectors.sending.ratelimit import GlobalRateLimiter, RateLimiter, limiter_for
from connectors.vocabulary import (
    Decision,
    ErrorCode,
    HttpAttempt,
    Outcome,
    RequestKind,
    RowResult,
    VendorCheck,
    WouldChange,
)
from connectors.wire import Request, Response, is_absolute

Answer = TypeVar("Answer", RowResult, VendorCheck)
# How one answer is read: the connector's `classify`, or its `classify_read` for a preview.
Classify = Callable[..., Verdict]

# Seconds a request in flight when the run is stopped gets for its answer (the default vendor
# timeout is 30 s; a stop must leave within 15 s). docs/operations.md, "Stopping a run".
STOP_GRACE = 5.0
STOP_POLL = 0.25  # how often send_many looks at the stop while its senders work


class _StoppedBeforeSending(Exception):
    """The run's stop was set while this request waited for its slot: it is not sent."""


class _QuotaExhausted(Exception):
    """The vendor's daily quota is used up: this request is not sent."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try: the classified answer and the HTTP status, if there was one."""

    verdict: Verdict
    http_status: int | None
    sent: bool = True  # False: the vendor had been stopped, so this try sent nothing
    reference: str | None = None  # the vendor's own reference of its answer, if it sent one


class _Clock:
    """When one request left and how long its answer took (the pacing wait before it excluded)."""

    __slots__ = ("_t0", "micros", "started")

    def __init__(self) -> None:
        self.started: datetime | None = None
        self._t0 = 0.0
        self.micros: int | None = None

    def start(self) -> None:
        self.started = datetime.now(UTC)
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self.micros = round((time.perf_counter() - self._t0) * 1e6)

    def attempt(
        self,
        kind: RequestKind,
        number: int,
        status: int | None,
        verdict: Verdict | None = None,
        reference: str | None = None,
        message: str = "",
    ) -> HttpAttempt:
        return HttpAttempt(
            kind,
            number,
            self.started or datetime.now(UTC),
            self.micros,
            status,
            verdict.action.value if verdict is not None else None,
            verdict.error_code.value if verdict is not None and verdict.error_code else None,
            verdict.vendor_error_code if verdict is not None else None,
            reference,
            verdict.message if verdict is not None else message,
        )


def _audited(tries: list[HttpAttempt], kind: RequestKind, said: str) -> tuple[HttpAttempt, ...]:
    """The tries as the audit keeps them: texts redacted, the last try of `kind` with what the row's
    result (or read) `said`."""
    own = [i for i, t in enumerate(tries) if t.kind is kind]
    last = own[-1] if own else -1
    audited = []
    for i, t in enumerate(tries):
        message = said if i == last else (redact(t.message) if t.message else "")
        reference = redact(t.vendor_reference) if t.vendor_reference else None
        if message != t.message or reference != t.vendor_reference:
            # Built whole, not with dataclasses.replace (which reads the fields anew on every call):
            # a row's last try always changes, hundreds of times a second.
            t = HttpAttempt(
                t.kind,
                t.attempt,
                t.started_at,
                t.latency_us,
                t.http_status,
                t.action,
                t.error_code,
                t.vendor_error_code,
                reference,
                message,
            )
        audited.append(t)
    return tuple(audited)


_STOPPED_BEFORE_SENDING = Verdict(Action.FAIL, ErrorCode.INTERRUPTED, message="the run was stopped")
_QUOTA_USED_UP = Verdict(Action.FAIL, ErrorCode.QUOTA_EXHAUSTED, message="the daily quota is used up")


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
        stop: threading.Event | None = None,
        stop_grace: float = STOP_GRACE,
        quota: DailyQuota | None = None,
    ) -> None:
        settings = connector.settings
        self.quota = quota  # the vendor's daily limit, counted with every other run (None: no quota)
        self.connector = connector
        self.vendor = connector.name
        self.settings = settings
        self.base_url = settings.base_url or ""
        self.limiter = limiter or limiter_for(settings, stop=stop)
        self.auth = connector.make_auth()
        self.http = http or Http(settings.max_concurrency)
        self._pool = ThreadPoolExecutor(settings.max_concurrency, thread_name_prefix=f"send-{self.vendor}")
        self._stopped: tuple[int, Verdict] | None = None
        self._stop_lock = threading.Lock()
        self.run_stop = stop or threading.Event()  # set by the orchestration: the whole run stops
        self.stop_grace = stop_grace
        self._retrying = Retrying(
            stop=stop_after_attempt(settings.max_attempts),
            wait=BackoffWait(
                settings.backoff_initial, settings.backoff_max, settings.retry_after_max, self.limiter.pause
            ),
            retry=retry_if_result(self._should_retry),
            retry_error_callback=lambda state: cast(Future, state.outcome).result(),  # the last attempt decides
            reraise=True,
            sleep=sleep or (self._backoff if stop is not None else tenacity_sleep),
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
        sends anything else (the ledger relies on this). After the run's stop, requests in
        flight get `stop_grace` seconds; a row still unanswered then is reported `INTERRUPTED`
        (attempts 1) without `on_result`, and its late answer is dropped.
        """
        return self._concurrently(decisions, self.send, on_result, self._unanswered, self._interrupted)

    def check_many(
        self,
        decisions: Iterable[Decision],
        on_result: Callable[[Decision, VendorCheck], None] | None = None,
    ) -> list[VendorCheck]:
        """Read the invoices of decisions concurrently, as `send_many` sends them; nothing is written."""
        return self._concurrently(decisions, self.check, on_result, self._unread, self._unread)

    def _concurrently(
        self,
        decisions: Iterable[Decision],
        work: Callable[[Decision], Answer],
        on_result: Callable[[Decision, Answer], None] | None,
        given_up_on: Callable[[Decision], Answer],
        not_reached: Callable[[Decision], Answer],
    ) -> list[Answer]:
        """`work` on every decision, up to the vendor's max concurrency; answers in input order.

        After the run's stop: `given_up_on` for a row still in flight when the grace ran out,
        `not_reached` for a row no sender took.
        """
        decisions = list(decisions)
        results: list[Answer | None] = [None] * len(decisions)
        claim = itertools.count()  # next() on it is atomic: each row is taken by exactly one sender
        sending: dict[int, int] = {}  # sender -> the row it waits on an answer for
        handover = threading.Lock()  # guards `sending` and `given_up`, never held while sending
        given_up = False

        def sender(k: int) -> None:
            # One pool task per sender, looping over the rows, rather than one per row: a Future
            # and its Condition per row cost about a seventh of the sending threads' time.
            while (i := next(claim)) < len(decisions):
                with handover:
                    if given_up:
                        return
                    sending[k] = i
                result = work(decisions[i])
                with handover:
                    if given_up:
                        return  # reported when the grace ran out; this late answer is dropped
                    del sending[k]
                if on_result is not None:
                    on_result(decisions[i], result)
                results[i] = result

        count = min(self.settings.max_concurrency, len(decisions))
        senders = [self._pool.submit(sender, k) for k in range(count)]
        if not self._wait_for(senders):
            with handover:
                given_up = True
                unanswered = dict(sending)
            for i in unanswered.values():
                results[i] = given_up_on(decisions[i])
            # The others are between two rows, or recording an answer (one commit): wait for them.
            self._wait_all([f for k, f in enumerate(senders) if k not in unanswered])
            senders = [f for k, f in enumerate(senders) if k not in unanswered]
        for finished in senders:
            finished.result()  # a sender's crash is the chunk's: raised here, like any bug
        return [r if r is not None else not_reached(decisions[i]) for i, r in enumerate(results)]

    def _wait_for(self, senders: list) -> bool:
        """Wait for every sender; after the run's stop, for `stop_grace` seconds at most. True: all done."""
        while not self.run_stop.is_set():
            if self._wait_all(senders, STOP_POLL):
                return True
        return self._wait_all(senders, self.stop_grace)

    @staticmethod
    def _wait_all(futures: list, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for future in futures:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                future.exception(timeout=left)
            except TimeoutError:
                return False
        return True

    def send(self, decision: Decision) -> RowResult:
        """Send one decision, retrying as declared; always returns its one result."""
        if self.run_stop.is_set():
            return self._interrupted(decision)
        if self._stopped is not None:
            return self._not_sent(decision)
        if self.quota is not None and self.quota.exhausted_on is not None:
            return self._quota_used_up(decision)
        try:
            request = self.connector.build_request(decision)
        except (ValueError, KeyError) as exc:
            return self._result(
                decision, Attempt(Verdict(Action.FAIL, ErrorCode.INVALID_ROW, message=str(exc)), None), 0
            )
        tries: list[HttpAttempt] = []
        attempt, attempts, reference, answered = self._try(request, self.connector.classify, tries)
        if not attempt.sent and attempt.verdict.error_code is ErrorCode.QUOTA_EXHAUSTED:
            result = self._quota_used_up(decision, attempts - 1, answered)
        elif not attempt.sent and attempt.verdict.error_code is ErrorCode.INTERRUPTED:
            result = self._interrupted(decision, attempts - 1, answered)  # the run stopped before this try
        elif not attempt.sent:  # another row found the credentials refused while this one waited
            result = self._not_sent(decision, attempts - 1)
        elif attempt.verdict.action in (Action.RETRY, Action.REAUTH) and self.run_stop.is_set():
            result = self._interrupted(decision, attempts, attempt)  # retries cut short by the run's stop
        elif attempt.verdict.action in (Action.RETRY, Action.REAUTH) and self._stopped is not None:
            # Retries were cut short by another row's stop, not run out: say that.
            result = self._not_sent(decision, attempts)
        else:
            if attempt.verdict.action is Action.STOP:
                self._stop(decision, attempt.verdict)
            result = self._result(decision, attempt, attempts)
            result.vendor_reference = redact(reference) if reference else None
        result.tries = _audited(tries, RequestKind.DECISION, result.error_message)
        return result

    def check(self, decision: Decision) -> VendorCheck:
        """Read one decision's invoice at its vendor (a preview), retrying as declared; never a write."""
        tries: list[HttpAttempt] = []
        checked = self._check(decision, tries)
        if tries:  # the audit trail keeps the reads too: requests a vendor saw, and counted
            checked.tries = _audited(tries, RequestKind.READ, checked.message)
        return checked

    def _check(self, decision: Decision, tries: list[HttpAttempt]) -> VendorCheck:
        row = decision.row_number
        if self.run_stop.is_set():
            return self._unread(decision)
        if self._stopped is not None:
            return VendorCheck(row, WouldChange.UNKNOWN, message=redact(self._stop_text("not read", 0)))
        try:
            request = self.connector.build_read(decision)
        except (ValueError, KeyError) as exc:
            return VendorCheck(row, WouldChange.UNKNOWN, message=redact(f"not read: {exc}"))
        if request is None:
            return VendorCheck(
                row, WouldChange.UNKNOWN, message=f"{self.vendor} documents no read of an invoice's state"
            )
        classify = partial(self.connector.classify_read, decision)
        attempt, reads, reference, _ = self._try(request, classify, tries, RequestKind.READ)
        reference = redact(reference) if reference else None
        verdict = attempt.verdict
        if not attempt.sent and verdict.error_code is ErrorCode.QUOTA_EXHAUSTED:
            return VendorCheck(row, WouldChange.UNKNOWN, message=f"not read: {self._quota_text()}")
        if (not attempt.sent and verdict.error_code is ErrorCode.INTERRUPTED) or (
            verdict.action in (Action.RETRY, Action.REAUTH) and self.run_stop.is_set()
        ):
            return self._unread(decision, reads if attempt.sent else reads - 1)
        if not attempt.sent or (verdict.action in (Action.RETRY, Action.REAUTH) and self._stopped is not None):
            return VendorCheck(row, WouldChange.UNKNOWN, message=redact(self._stop_text("not read", reads - 1)))
        if verdict.action is Action.STOP:
            self._stop(decision, verdict)
        if verdict.action is Action.SUCCEED and verdict.would_change is not None:
            message = redact(verdict.message)
            return VendorCheck(
                row, verdict.would_change, verdict.vendor_state, message, attempt.http_status, reference, reads
            )
        why = verdict.message
        if verdict.action in (Action.RETRY, Action.REAUTH):
            why = f"gave up after {reads} reads; last: {why}"
        message = redact(f"could not read the invoice's state: {why}")
        return VendorCheck(row, WouldChange.UNKNOWN, None, message, attempt.http_status, reference, reads)

    def close(self) -> None:
        # After a stop, a sender may still wait on an answer given up on: do not wait for it too.
        self._pool.shutdown(wait=not self.run_stop.is_set())
        self.http.close()
        self.limiter.close()
        if self.quota is not None:
            self.quota.close()  # what was counted but not sent goes back to the day's count

    # -- internals --------------------------------------------------------------------------
    def _backoff(self, seconds: float) -> None:
        self.run_stop.wait(seconds)  # a stop ends the wait: the next try sees it and sends nothing

    def _should_retry(self, attempt: Attempt) -> bool:
        return (
            attempt.verdict.action in (Action.RETRY, Action.REAUTH)
            and self._stopped is None
            and not self.run_stop.is_set()
        )

    def _try(
        self, request: Request, classify: Classify, tries: list[HttpAttempt], kind: RequestKind = RequestKind.DECISION
    ) -> tuple[Attempt, int, str | None, Attempt]:
        """One request, retried as declared: (the last attempt, attempts made, the latest vendor
        reference, the last attempt that went out). Every request made is added to `tries`."""
        attempt: Attempt = self._attempt(request, classify, tries, 1, kind)
        attempts = 1
        reference = attempt.reference
        answered = attempt  # the last try that went out
        if self._should_retry(attempt) and self.settings.max_attempts > 1:
            # Only a row that needs another try pays for tenacity (a Retrying copy and its
            # loop per row add up at hundreds of rows a second); it starts from this answer.
            first = [attempt]
            number = 0  # the attempt `again` makes: 1 is the one already made

            def again(request: Request) -> Attempt:
                nonlocal reference, answered, number
                number += 1
                tried = first.pop() if first else self._attempt(request, classify, tries, number, kind)
                reference = tried.reference or reference  # the latest answer the vendor named
                answered = tried if tried.sent else answered
                return tried

            retrying = self._retrying.copy()
            attempt = retrying(again, request)
            attempts = retrying.statistics.get("attempt_number", 1)
        return attempt, attempts, reference, answered

    def _attempt(
        self, request: Request, classify: Classify, tries: list[HttpAttempt], number: int, kind: RequestKind
    ) -> Attempt:
        if self.run_stop.is_set():  # checked after every backoff too: no request after the run's stop
            return Attempt(_STOPPED_BEFORE_SENDING, None, sent=False)
        if self._stopped is not None:  # checked after every backoff too: no request after a stop
            return Attempt(self._stopped[1], None, sent=False)
        clock = _Clock()

        def fetch_token(token_request: Request) -> Response:  # the auth's own request, paced like any other
            fetched = _Clock()
            try:
                answer = self._send_raw(token_request, fetched)
            except Exception as exc:
                if fetched.started is not None:
                    tries.append(fetched.attempt(RequestKind.TOKEN, number, None, message=type(exc).__name__))
                raise
            tries.append(fetched.attempt(RequestKind.TOKEN, number, answer.status_code))
            return answer

        try:
            authed = self.auth.apply(request, fetch_token)
            response = self._send_raw(authed, clock)
        except _StoppedBeforeSending:
            return Attempt(_STOPPED_BEFORE_SENDING, None, sent=False)
        except _QuotaExhausted:
            return Attempt(_QUOTA_USED_UP, None, sent=False)
        except Exception as exc:  # every failure becomes a Verdict; nothing escapes a row
            verdict = classify(request, error=exc)
            if clock.started is not None:  # the request went out and got no answer
                tries.append(clock.attempt(kind, number, None, verdict))
            return Attempt(verdict, None)
        verdict = classify(request, response=response)
        if verdict.action is Action.REAUTH:
            self.auth.invalidate(authed)
        reference = self.connector.vendor_reference(response)
        tries.append(clock.attempt(kind, number, response.status_code, verdict, reference))
        return Attempt(verdict, response.status_code, reference=reference)

    def _send_raw(self, request: Request, clock: _Clock | None = None) -> Response:
        if self.quota is not None and not self.quota.take():  # every request counts: retries, tokens, reads
            raise _QuotaExhausted
        self.limiter.acquire()  # every request takes a slot: retries and token fetches too
        granted_at = self.limiter.granted_at
        if self.run_stop.is_set():  # the stop came while this request waited for its slot
            raise _StoppedBeforeSending
        if clock is not None:
            clock.start()
        try:
            response = self.http.request(
                request.method,
                request.path if is_absolute(request.path) else self.base_url + request.path,
                params=request.params or None,
                json=request.json,
                data=request.form,
                headers=request.headers or None,
                timeout=self.settings.timeout,
            )
        finally:
            if clock is not None:
                clock.stop()
        self.limiter.observe(granted_at, response.status_code, response.headers)  # how the rate is learned
        return response

    def _stop(self, decision: Decision, verdict: Verdict) -> None:
        with self._stop_lock:
            if self._stopped is None:
                self._stopped = (decision.row_number, verdict)

    def _not_sent(self, decision: Decision, attempts: int = 0) -> RowResult:
        """A row the vendor's stop caught before it was sent, or between two of its tries."""
        verdict = self._stopped[1]  # type: ignore[index]
        return RowResult(
            decision.row_number,
            Outcome.FAILED,
            error_code=verdict.error_code or ErrorCode.AUTH_FAILED,
            error_message=redact(self._stop_text("not sent", attempts)),
            attempts=attempts,
            finished_at=datetime.now(UTC),
        )

    def _stop_text(self, what: str, attempts: int) -> str:
        """Why a row was cut short by the vendor's stop ("not sent: alfred refused our credentials at row 3 (...)")."""
        row, verdict = self._stopped  # type: ignore[misc]
        if attempts:
            what = f"retries stopped after {attempts} attempts"
        why = "refused our credentials" if verdict.error_code is ErrorCode.AUTH_FAILED else "was stopped"
        return f"{what}: {self.vendor} {why} at row {row} ({verdict.message})"

    def _interrupted(self, decision: Decision, attempts: int = 0, last: Attempt | None = None) -> RowResult:
        """A row the run's stop caught before it was sent, or between two of its tries."""
        if attempts == 0:
            message = "not sent: the run was stopped before this row's turn; the next run sends it"
            last = None
        else:
            said = f"; last: {last.verdict.message}" if last is not None and last.sent else ""
            message = f"retries stopped after {attempts} attempts: the run was stopped; the next run sends it{said}"
        return RowResult(
            decision.row_number,
            Outcome.FAILED,
            last.http_status if last is not None else None,
            ErrorCode.INTERRUPTED,
            None,
            redact(message),
            attempts,
            datetime.now(UTC),
        )

    def _quota_text(self) -> str:
        quota = cast(DailyQuota, self.quota)
        day = quota.exhausted_on or quota.resets_at().date()
        return (
            f"{self.vendor}'s daily limit of {quota.limit:,} requests is used up for {day:%Y-%m-%d} (UTC); "
            f"it resets at {quota.resets_at():%Y-%m-%d %H:%M} UTC"
        )

    def _quota_used_up(self, decision: Decision, attempts: int = 0, last: Attempt | None = None) -> RowResult:
        """A row the vendor's daily quota caught before it was sent, or between two of its tries."""
        what = f"retries stopped after {attempts} attempts" if attempts else "not sent"
        return RowResult(
            decision.row_number,
            Outcome.FAILED,
            last.http_status if attempts and last is not None and last.sent else None,
            ErrorCode.QUOTA_EXHAUSTED,
            None,
            f"{what}: {self._quota_text()}; the next run after that sends it",
            attempts,
            datetime.now(UTC),
        )

    def _unanswered(self, decision: Decision) -> RowResult:
        """A row in flight when the run stopped that got no answer within the grace."""
        message = (
            f"sent, but {self.vendor} had not answered {self.stop_grace:g} s after the run was stopped: "
            "whether it applied the decision is unknown; the next run sends it again (safe: "
            "'already in that state' counts as success)"
        )
        return RowResult(
            decision.row_number, Outcome.FAILED, None, ErrorCode.INTERRUPTED, None, message, 1, datetime.now(UTC)
        )

    def _unread(self, decision: Decision, reads: int = 0) -> VendorCheck:
        """A preview's row the run's stop caught before its invoice was read (or between two reads)."""
        what = f"reads stopped after {reads} attempts" if reads else "not read"
        return VendorCheck(decision.row_number, WouldChange.UNKNOWN, message=f"{what}: the run was stopped")

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
