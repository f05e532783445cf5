"""Finding the rate a vendor allows when it never said it, and keeping to it.

A `RateController` decides one vendor's sending rate from what the vendor answers; the
`RateLimiter` it belongs to feeds it every grant and every answer (under its lock) and applies
what it decides. Every decision is a pure function of those inputs and the clock it is given,
so each can be tested on a fake clock. docs/rates.md says how it behaves, for an operator.

* **Start.** The rate remembered from an earlier run, if there is one (a stale one, older
  than its trust period, at half of it, growing back to it by `REGROWTH` per clean second);
  the set `<VENDOR>_RATE_LIMIT` if lower; else no pacing at all: a vendor without a limit
  costs nothing.
* **A 429 (one throttle).** The vendor refused the request granted at time g. Many APIs count
  every request in a sliding window, refused ones too, so the requests we were granted in the
  window before g are what it let through: that count is the new rate (never above the rate
  we had, and at least `BACKOFF` lower than the last throttle's if that one did not help). All
  429s for requests granted before this decision are the same throttle: they can only lower
  the estimate, never pause again. Without `Retry-After`, sending pauses `COOL_DOWN` (one
  window: the vendor's count drains); with it, the client's pause (`Retry-After`) applies.
* **Rate-limit headers** (`RateLimit-Limit`/`-Remaining`/`-Reset` of the IETF draft,
  `X-RateLimit-*`, `RateLimit-Policy`'s `w=` window): the limit over its window caps the
  rate (it is what the vendor says), and `Remaining: 0` pauses until the reset.
* **Probing.** After `PROBE_AFTER` seconds at the rate without a throttle, while the rate is
  really used (a window held at least `BUSY` of it), it steps up by `PROBE_STEP` (at least 1
  request/s), never above the set limit or the vendor's announced one. A probe too far is one
  throttle, which measures the limit again.
* **Bounds.** Never below `MIN_RATE`, never above `<VENDOR>_RATE_LIMIT` or the announced limit.

The limiter spaces requests at `spacing(rate)`, which keeps its 3% headroom: a learned rate of
25 sends about 24.25 a second, under the vendor's 25 in any window.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Mapping
from dataclasses import dataclass

WINDOW = 1.0  # seconds a vendor counts requests in, when it does not say (the common case)
COOL_DOWN = 1.0  # pause after a throttle without Retry-After: one window, so the vendor's count drains
PROBE_AFTER = 30.0  # seconds at a rate without a throttle before trying a step higher
PROBE_STEP = 0.05  # a probe's step: 5% (at least 1 request/s)
BUSY = 0.9  # a probe only while the rate is really used: a window held this share of it
BACKOFF = 0.95  # a throttle at the last throttle's rate lowers it at least this much
REGROWTH = 1.25  # a stale remembered rate: from half of it, this much more per clean second
MIN_RATE = 0.2  # requests/s: the controller never goes below (one request every 5 s)


@dataclass(frozen=True, slots=True)
class RateChange:
    """What the limiter should do: send at `rate` (None: unpaced) and hold back for `pause` seconds."""

    rate: float | None
    pause: float = 0.0
    why: str = ""


@dataclass(frozen=True, slots=True)
class LimitHeaders:
    """A vendor's announced limit, read off an answer's headers."""

    limit: float | None  # requests per window
    window: float  # seconds
    remaining: int | None
    reset: float | None  # seconds from now until the window frees up

    @property
    def rate(self) -> float | None:
        return self.limit / self.window if self.limit else None


def _first_number(value: str | None) -> float | None:
    """The leading number of a header value ("25", "25, 25;w=1", "  3 ") or None."""
    if not value:
        return None
    head = value.split(",", 1)[0].split(";", 1)[0].strip()
    try:
        number = float(head)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _policy_window(*values: str | None) -> float | None:
    """The `w=` window of a quota policy ("25;w=1", "100;w=60") in any of `values`."""
    for value in values:
        for part in (value or "").replace(",", ";").split(";"):
            name, _, number = part.strip().partition("=")
            if name.strip().lower() == "w":
                window = _first_number(number)
                if window:
                    return window
    return None


def read_limit_headers(headers: Mapping[str, str], now_epoch: float | None = None) -> LimitHeaders | None:
    """The rate-limit headers vendors commonly send, or None when there are none.

    IETF draft (`RateLimit-Limit`, `-Remaining`, `-Reset` in seconds; `RateLimit-Policy` or a
    policy in `RateLimit-Limit` giving `w=`), its later form (`RateLimit: limit=.., remaining=..,
    reset=..`), and `X-RateLimit-*` (a reset that looks like a Unix time is taken as one). The
    window is 1 s unless a policy says otherwise (assumed: what per-second APIs send).
    """
    if not any("ratelimit" in name.lower() for name in headers):  # most answers: one look at the names
        return None
    get = headers.get
    combined = get("RateLimit")
    fields: dict[str, str] = {}
    if combined:
        for part in combined.split(","):
            name, _, value = part.strip().partition("=")
            fields[name.strip().lower()] = value.strip()
    limit_text = get("RateLimit-Limit") or fields.get("limit") or get("X-RateLimit-Limit")
    remaining_text = get("RateLimit-Remaining") or fields.get("remaining") or get("X-RateLimit-Remaining")
    reset_text = get("RateLimit-Reset") or fields.get("reset") or get("X-RateLimit-Reset")
    if limit_text is None and remaining_text is None:
        return None
    limit = _first_number(limit_text)
    remaining = _first_number(remaining_text)
    reset = _first_number(reset_text)
    if reset is not None and reset > 1e9:  # a Unix time (X-RateLimit-Reset of many APIs)
        reset = max(0.0, reset - (time.time() if now_epoch is None else now_epoch))
    window = _policy_window(get("RateLimit-Policy"), limit_text, get("X-RateLimit-Policy")) or WINDOW
    return LimitHeaders(limit or None, window, None if remaining is None else int(remaining), reset)


class RateController:
    """One vendor's rate, learned from its answers (see the module's docstring). Not thread-safe:
    its `RateLimiter` calls it under its lock."""

    def __init__(
        self,
        *,
        ceiling: float | None = None,
        remembered: float | None = None,
        stale: bool = False,
        clock: Callable[[], float] = time.monotonic,
        probe_after: float = PROBE_AFTER,
    ) -> None:
        self.ceiling = ceiling  # the set <VENDOR>_RATE_LIMIT: never above it
        self.announced: float | None = None  # the vendor's own limit, from its headers
        self.probe_after = probe_after
        self._clock = clock
        start = remembered
        if start is not None and ceiling is not None:
            start = min(start, ceiling)
        self.target: float | None = None  # a stale remembered rate grows back to this
        if start is not None and stale:
            self.target, start = start, max(MIN_RATE, start / 2)
        self.rate: float | None = start if start is not None else ceiling
        self.learned = start is not None  # a rate from the vendor's answers (now or in an earlier run)
        self.heard = False  # the vendor's answers changed the rate this run: worth remembering
        self.throttles = 0  # throttle events this run (not 429s: one event covers a burst of them)
        self.corrected: str | None = None  # set once: the set limit was more than the vendor allows
        self._grants: list[float] = []  # grant times, oldest first (trimmed to the last two windows now and then)
        self._accepted: list[float] = []  # grant times of the requests answered, not 429, in the same span
        self._epoch = float("-inf")  # requests granted before this were sent at the old rate
        self._calm_since = clock()  # since when no throttle came
        self._last_throttle_rate: float | None = None
        self._confirmed: float | None = None  # the rate before a probe not yet confirmed by a calm stretch
        self._busiest = 0  # the most grants seen in one window since the last change
        # The last throttle, until its count is final: (first refused grant, decided at, the rate
        # before it, the rate the throttle before it left).
        self._event: tuple[float, float, float | None, float | None] | None = None

    @property
    def held(self) -> float | None:
        """The rate to remember: the current one, or before a probe not yet confirmed."""
        return self._confirmed if self._confirmed is not None else self.rate

    # -- fed by the limiter ---------------------------------------------------------------
    def granted(self, at: float) -> RateChange | None:
        """A request was granted at `at`; returns a step up when one is due."""
        grants = self._grants
        grants.append(at)  # granted under the limiter's lock, so in order
        if len(grants) > 4096 and grants[2048] < at - 2 * WINDOW:
            del grants[: bisect_left(grants, at - 2 * WINDOW)]
            del self._accepted[: bisect_left(self._accepted, at - 2 * WINDOW)]
        if self._event is not None and at >= self._event[1] + WINDOW:
            return self._settle(at)
        if self.rate is None:  # unpaced: an append is all a request costs
            return None
        in_window = len(grants) - bisect_right(grants, at - WINDOW)
        self._busiest = max(self._busiest, in_window)
        return self._maybe_grow(at)

    def answered(self, granted_at: float, status: int, headers: Mapping[str, str]) -> RateChange | None:
        """The answer to a request granted at `granted_at`; returns what changes, if anything."""
        change: RateChange | None = None
        if status != 429:
            insort(self._accepted, granted_at)  # answers come nearly in order: an insert near the end
        announced = read_limit_headers(headers) if headers else None
        if announced is not None:
            change = self._announced(announced)
        if status == 429:
            change = self._throttled(granted_at, change, told_when="Retry-After" in headers)
        return change

    # -- decisions -------------------------------------------------------------------------
    def _throttled(self, granted_at: float, change: RateChange | None, *, told_when: bool) -> RateChange | None:
        # What the vendor let through in the window before this request: our requests in it
        # answered so far without a 429 (one still in flight is not counted: it may be refused too).
        let_through = self._count(self._accepted, granted_at - WINDOW, granted_at)
        if let_through < 1:  # refused with nothing let through first: no rate of ours caused it
            if told_when or (change is not None and change.pause):
                return change
            return RateChange(self.rate, COOL_DOWN, "429 with nothing let through before it")
        estimate = float(let_through)
        if granted_at < self._epoch:  # the same throttle as the last decision: settled a window later
            if self._event is not None and granted_at < self._event[0]:
                self._event = (granted_at, *self._event[1:])
            return change
        now = self._clock()
        current = self.rate
        # At most halved by one throttle: a vendor's blip must not cost the whole run.
        rate = estimate if current is None else min(current, max(estimate, current / 2))
        previous = self._last_throttle_rate
        if current is not None and previous is not None and current <= previous + 1e-9:
            rate = min(rate, current * BACKOFF)  # throttled at the last throttle's rate: it did not help
        self.throttles += 1
        self._last_throttle_rate = rate
        self._confirmed = None
        self._calm_since = now
        self.target = None  # a throttle says more than a stale memory
        if self.ceiling is not None and rate < self.ceiling and self.corrected is None:
            self.corrected = (
                f"the set limit of {self.ceiling:g}/s is more than the vendor allows: "
                f"its 429s brought the rate down to {rate:g}/s"
            )
        # With Retry-After the client pauses as told; a pause the headers asked for covers it too.
        pause = 0.0 if told_when or (change is not None and change.pause) else COOL_DOWN
        decided = self._set(rate, pause, f"429 with {let_through} requests in the window before it")
        self._event = (granted_at, self._epoch, current, previous)
        return decided

    def _settle(self, now: float) -> RateChange | None:
        """A window after a throttle, every answer to what was sent before it is in: the vendor
        let through what we sent from a window before its first refusal until the decision,
        less what it refused. Requests overtake each other on the way (threads, the network),
        so this count, not the first refusal's, is what the vendor's window held."""
        assert self._event is not None
        first, decided, before, previous = self._event
        self._event = None
        let_through = self._count(self._accepted, first - WINDOW, decided)
        if let_through < 1 or self.rate is None:
            return None
        rate = float(let_through) if before is None else min(before, max(float(let_through), before / 2))
        if previous is not None and before is not None and before <= previous + 1e-9:
            rate = min(rate, before * BACKOFF)  # throttled at the last throttle's rate: it did not help
        self._last_throttle_rate = rate
        if rate == self.rate:
            return None
        return self._set(rate, 0.0, f"settled: {let_through} let through in the window of the last 429", keep_calm=True)

    def _announced(self, announced: LimitHeaders) -> RateChange | None:
        rate, pause = self.rate, 0.0
        if announced.rate is not None and announced.rate != self.announced:
            self.announced = announced.rate
            rate = announced.rate if rate is None else min(rate, announced.rate)
            if self.ceiling is not None and announced.rate < self.ceiling and self.corrected is None:
                self.corrected = (
                    f"the set limit of {self.ceiling:g}/s is more than the vendor allows: "
                    f"it announces {announced.rate:g}/s"
                )
        # Paced at the announced rate, the spacing keeps within it: an empty allowance then only
        # means the window is full for a moment (a sliding one frees a slot within a spacing).
        paced_within = self.announced is not None and rate is not None and rate <= self.announced
        if announced.remaining == 0 and announced.reset and not paced_within:
            pause = announced.reset
        if rate == self.rate and not pause:
            return None
        return self._set(rate, pause, "the vendor's rate-limit headers")

    def _maybe_grow(self, now: float) -> RateChange | None:
        rate = self.rate
        assert rate is not None
        if self.target is not None:  # a stale remembered rate, growing back
            if now - self._calm_since < WINDOW:
                return None
            grown = min(self.target, rate * REGROWTH)
            if grown >= self.target:
                self.target = None
            self._calm_since = now
            return self._set(grown, 0.0, "growing back to the remembered rate", keep_calm=True)
        if now - self._calm_since < self.probe_after or self._busiest < BUSY * math.floor(rate):
            return None
        step = max(1.0, rate * PROBE_STEP)
        bound = min(b for b in (self.ceiling, self.announced, math.inf) if b is not None)
        self._confirmed = None  # the rate held a calm stretch: it is confirmed
        if rate >= bound:
            return None
        self._confirmed = rate
        self._calm_since = now
        return self._set(min(bound, rate + step), 0.0, "probing upward", keep_calm=True)

    def _set(self, rate: float | None, pause: float, why: str, *, keep_calm: bool = False) -> RateChange:
        if rate is not None:
            bound = min(b for b in (self.ceiling, self.announced, math.inf) if b is not None)
            rate = max(MIN_RATE, min(rate, bound))
        self.rate = rate
        self.learned = self.heard = True
        self._busiest = 0
        if not keep_calm:
            self._epoch = self._clock()
        return RateChange(rate, pause, why)

    @staticmethod
    def _count(times: list[float], after: float, before: float) -> int:
        """Times within (after, before)."""
        return max(0, bisect_left(times, before) - bisect_right(times, after))
