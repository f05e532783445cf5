"""The rate each vendor held at the end of a run, kept in the state folder for the next run.

A month end must not relearn a vendor's limit with a burst of 429s: the rate its controller
held (connectors.sending.adaptive) is written to `rates.json` in `INVOICE_SYNC_STATE_DIR`
when a run's clients close, per vendor and API (a hash of the base URL: another account or
the sandbox has its own), and the next run starts from it. A remembered rate older than
`INVOICE_SYNC_RATE_TRUST_DAYS` (default 7) is trusted less: the controller starts at half of
it and grows back (docs/rates.md). The file is small and rewritten whole under a lock, so
two runs ending at once both land.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flows.state.ledger import DEFAULT_STATE_DIR

try:
    import fcntl
except ImportError:  # not a POSIX system: a plain rewrite (os.replace keeps it whole)
    fcntl = None  # type: ignore[assignment]

RATES_FILE = "rates.json"
TRUST_DAYS = 7.0


class RememberedRates:
    """Rates vendors held, by vendor and base URL, with when they were kept."""

    def __init__(
        self, path: Path, trust_for: timedelta = timedelta(days=TRUST_DAYS), now: Callable[[], datetime] | None = None
    ) -> None:
        self.path = path
        self.trust_for = trust_for
        self._now = now or (lambda: datetime.now(UTC))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> RememberedRates:
        env = os.environ if environ is None else environ
        folder = Path(env.get("INVOICE_SYNC_STATE_DIR", "").strip() or DEFAULT_STATE_DIR)
        try:
            days = float(env.get("INVOICE_SYNC_RATE_TRUST_DAYS", "").strip() or TRUST_DAYS)
        except ValueError:
            days = TRUST_DAYS
        return cls(folder / RATES_FILE, timedelta(days=max(0.0, days)))

    @staticmethod
    def key(vendor: str, base_url: str | None) -> str:
        return f"{vendor}:{hashlib.sha256((base_url or '').encode()).hexdigest()[:16]}"

    def recall(self, vendor: str, base_url: str | None) -> tuple[float, bool] | None:
        """(the rate, whether it is stale), or None when this vendor's API has none kept."""
        entry = self._read().get(self.key(vendor, base_url))
        if not isinstance(entry, dict):
            return None
        try:
            rate = float(entry["rate"])
            kept = datetime.fromisoformat(entry["kept_at"])
        except (KeyError, TypeError, ValueError):
            return None
        if not rate > 0:
            return None
        return rate, self._now() - kept > self.trust_for

    def keep(self, vendor: str, base_url: str | None, rate: float) -> None:
        """Remember `rate` for this vendor's API, now."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            rates = self._read()
            rates[self.key(vendor, base_url)] = {
                "vendor": vendor,
                "rate": round(rate, 3),
                "kept_at": self._now().isoformat(timespec="seconds"),
            }
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(rates, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(temporary, self.path)

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: the controller learns afresh
        return data if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def _locked(self):
        if fcntl is None:
            yield
            return
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock
