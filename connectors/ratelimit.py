"""Pacing: a limiter that spaces requests evenly instead of bursting a second's worth at once."""

from __future__ import annotations

import threading
import time
from typing import Callable

# Aim a little under the vendor's limit: thread wake-up jitter must never push a 1-second
# window over it, and 97% of the limit is still "using it fully".
HEADROOM = 0.97


class RateLimiter:
    """Hands out send slots at most `rate` per second, `1/rate` apart (GCRA with no burst).

    Every attempt takes a slot (retries and token fetches included). `pause(seconds)` holds
    every slot back, which is how a 429 slows the whole vendor down before it recovers.
    With `rate=None` there is no spacing, but pauses still apply.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.interval = 1.0 / (rate * HEADROOM) if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot = 0.0

    def acquire(self) -> float:
        """Wait for this caller's slot; returns how long it waited."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self.interval
        delay = slot - now
        if delay > 0:
            self._sleep(delay)
        return delay

    def pause(self, seconds: float) -> None:
        """No slot is handed out for the next `seconds` (the vendor asked us to back off)."""
        with self._lock:
            self._next_slot = max(self._next_slot, self._clock() + seconds)
