"""A vendor's rate shared by every worker: a Prefect global concurrency limit in rate-limit mode.

Handed to `connectors.sending.ratelimit.GlobalRateLimiter` as its `SharedLimit`, so the vendor
side never imports Prefect itself.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from connectors.errors import GlobalLimitError

if TYPE_CHECKING:
    import httpx
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse

HTTP_LOCKED = 423  # the GCL's answer when the slots asked for are taken
HTTP_BUSY = 503  # the server's database was locked by another write (SQLite, workers asking at once)
BUSY_WAIT = 0.01  # after a 503, ask again this soon
INCREMENT = "/v2/concurrency_limits/increment"


class PrefectGlobalLimit:
    """Reads and takes slots of a GCL through the Prefect API at PREFECT_API_URL.

    One per vendor client, with one API client opened on first use and closed with it: a client
    per call costs a new connection each time, several times the round trip itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: SyncPrefectClient | None = None

    def describe(self, name: str) -> tuple[int, float, bool]:
        """The GCL's (limit, slot decay, active)."""
        missing = (
            f"Prefect global concurrency limit {name!r} does not exist; create it with "
            f"`prefect gcl create {name} --limit <burst> --slot-decay-per-second <rate>`"
        )
        gcl = self._read(self._api(), name, missing)
        return int(gcl.limit), float(gcl.slot_decay_per_second or 0.0), bool(gcl.active)

    def take(self, name: str, occupy: int) -> float:
        """Take `occupy` slots if they are free now: 0.0 when taken, else the seconds until enough decay."""
        api = self._api()
        answer = self._ask_once(api, name, occupy)
        if answer is None or answer.status_code not in (200, HTTP_LOCKED, HTTP_BUSY):
            answer = self._ask_with_client_retries(api, name, occupy)  # unreachable, or CSRF and the like
        if answer.status_code == HTTP_BUSY:  # its database was busy with another worker's ask
            return BUSY_WAIT
        if answer.status_code == HTTP_LOCKED:
            return self._time_until_free(api, name, occupy)
        if answer.status_code >= 400:
            raise GlobalLimitError(f"Prefect global concurrency limit {name!r}: HTTP {answer.status_code}")
        if not answer.json():  # the server grants a limit that does not exist: never send unlimited
            raise GlobalLimitError(f"Prefect global concurrency limit {name!r} no longer exists")
        return 0.0

    def close(self) -> None:
        """Close the API client; the next call opens another."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.__exit__(None, None, None)

    def _api(self) -> SyncPrefectClient:
        from prefect.client.orchestration import get_client

        with self._lock:
            if self._client is None:
                client = get_client(sync_client=True)
                client.__enter__()
                self._client = client
            return self._client

    @staticmethod
    def _ask_once(api: SyncPrefectClient, name: str, occupy: int) -> httpx.Response | None:
        """One ask, on the Prefect client's own connection but past its retry wrapper: after a 503
        that wrapper sleeps about 2 s (even with retries set to 0), ~40 slots of a 20/s limit left
        idle, and a 503 was a common answer when two workers asked at once on SQLite."""
        import httpx

        http = api._client  # the pinned Prefect's httpx client (its class adds the retries)
        request = http.build_request("POST", INCREMENT, json={"names": [name], "slots": occupy, "mode": "rate_limit"})
        try:
            return httpx.Client.send(http, request)
        except httpx.TransportError:
            return None

    @staticmethod
    def _ask_with_client_retries(api: SyncPrefectClient, name: str, occupy: int) -> httpx.Response:
        import httpx

        try:
            return api.increment_concurrency_slots(names=[name], slots=occupy, mode="rate_limit")
        except httpx.HTTPStatusError as exc:
            return exc.response
        except Exception as exc:
            raise GlobalLimitError(f"cannot reach Prefect global concurrency limit {name!r}: {exc}") from None

    @classmethod
    def _time_until_free(cls, api: SyncPrefectClient, name: str, occupy: int) -> float:
        """Taken by others: the limit's own count, decayed to now, says when `occupy` slots will be free.

        Its decay counts whole slots since its last change, so this is at most one slot period early."""
        gcl = cls._read(api, name, f"Prefect global concurrency limit {name!r} no longer exists")
        shortfall = gcl.active_slots + occupy - gcl.limit
        return max(shortfall, 1) / float(gcl.slot_decay_per_second or 1.0)

    @staticmethod
    def _read(api: SyncPrefectClient, name: str, missing: str) -> GlobalConcurrencyLimitResponse:
        """The GCL as the server has it now; `missing` is the error's text when it does not exist."""
        from prefect.exceptions import ObjectNotFound

        try:
            return api.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            raise GlobalLimitError(missing) from None
        except Exception as exc:  # the API is unreachable or refuses us: never send unlimited
            raise GlobalLimitError(f"cannot read Prefect global concurrency limit {name!r}: {exc}") from None
