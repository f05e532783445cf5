"""A vendor's daily quota (`<VENDOR>_DAILY_LIMIT`), counted across runs and workers by UTC day.

AppZen documents 300,000 requests a day (its default); any vendor can be given one. Every
request counts (retries, token fetches and reads too), in a store every run shares (the
ledger: `flows.state.ledger.Ledger.take_quota`; nothing here imports it). A run takes the
quota in blocks (one transaction each, never one per request) and gives back what it did not
use when it ends, so other runs and workers count on the rest. The first block is `BLOCK`
requests and each next one twice the last, up to `MAX_BLOCK_SHARE` of the day's limit: a big
run takes a handful of transactions (each one stalls that vendor's senders, which wait for
it), and a run never holds back more than that share from the others. Once the
day's quota is used up nothing more is sent to that vendor that day: the client fails the
remaining rows `QUOTA_EXHAUSTED` (transient: the next run sends them) and says when the
quota resets (the next UTC midnight).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol

BLOCK = 100  # requests taken from the shared count in a run's first block
MAX_BLOCK_SHARE = 0.01  # the most one block takes: this share of the day's limit (BLOCK, if that is more)


class QuotaStore(Protocol):
    """Where every run's count of one vendor's requests per UTC day lives (the ledger)."""

    def take_quota(self, vendor: str, day: str, wanted: int, limit: int) -> int:
        """Count up to `wanted` more requests of `day` (ISO date) within `limit`; returns how many were counted."""
        ...

    def return_quota(self, vendor: str, day: str, unused: int) -> None:
        """Uncount `unused` requests of `day` taken but not sent."""
        ...


def utc_today() -> date:
    return datetime.now(UTC).date()


class DailyQuota:
    """One vendor's daily limit for one run: `take()` before every request (thread-safe)."""

    def __init__(
        self,
        vendor: str,
        limit: int,
        store: QuotaStore,
        *,
        block: int = BLOCK,
        today: Callable[[], date] = utc_today,
    ) -> None:
        self.vendor = vendor
        self.limit = limit
        self.block = max(1, min(block, limit))
        self.max_block = max(self.block, int(limit * MAX_BLOCK_SHARE))
        self._next_block = self.block
        self._store = store
        self._today = today
        self._lock = threading.Lock()
        self._day: date | None = None
        self._stock = 0  # counted in the store, not sent yet
        self.exhausted_on: date | None = None  # the UTC day whose quota ran out

    def take(self) -> bool:
        """Count one request; False when the day's quota is used up (send nothing)."""
        with self._lock:
            day = self._today()
            if day != self._day:  # a run across midnight: the old day's rest goes back, a new day starts
                self._give_back()
                self._day, self.exhausted_on = day, None
            if self.exhausted_on == day:
                return False
            if not self._stock:
                self._stock = self._store.take_quota(self.vendor, day.isoformat(), self._next_block, self.limit)
                self._next_block = min(2 * self._next_block, self.max_block)
                if not self._stock:
                    self.exhausted_on = day
                    return False
            self._stock -= 1
            return True

    def resets_at(self) -> datetime:
        """When the exhausted day's quota resets: the next UTC midnight."""
        day = self.exhausted_on or self._today()
        return datetime.combine(day + timedelta(days=1), time(0, 0), UTC)

    def close(self) -> None:
        """Give back what was counted but not sent."""
        with self._lock:
            self._give_back()

    def _give_back(self) -> None:
        if self._stock and self._day is not None:
            self._store.return_quota(self.vendor, self._day.isoformat(), self._stock)
        self._stock = 0
