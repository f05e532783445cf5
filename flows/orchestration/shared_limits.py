"""A vendor's rate shared by every worker: a Prefect global concurrency limit in rate-limit mode.

Handed to `connectors.sending.ratelimit.GlobalRateLimiter` as its `SharedLimit`, so the vendor
side never imports Prefect itself.
"""

from __future__ import annotations

from connectors.errors import GlobalLimitError


class PrefectGlobalLimit:
    """Reads and takes slots of a GCL through the Prefect API at PREFECT_API_URL."""

    def describe(self, name: str) -> tuple[int, float, bool]:
        """The GCL's (limit, slot decay, active)."""
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        try:
            with get_client(sync_client=True) as client:
                gcl = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            raise GlobalLimitError(
                f"Prefect global concurrency limit {name!r} does not exist; create it with "
                f"`prefect gcl create {name} --limit <burst> --slot-decay-per-second <rate>`"
            ) from None
        except Exception as exc:  # the API is unreachable or refuses us: never send unlimited
            raise GlobalLimitError(f"cannot read Prefect global concurrency limit {name!r}: {exc}") from None
        return int(gcl.limit), float(gcl.slot_decay_per_second or 0.0), bool(gcl.active)

    def take(self, name: str, occupy: int) -> None:
        """Block until `occupy` slots are granted (Prefect's own 423/Retry-After loop)."""
        from prefect.concurrency.sync import rate_limit

        # strict: a limit that vanished mid-run raises instead of letting every request through.
        rate_limit(name, occupy=occupy, strict=True)


PREFECT_GLOBAL_LIMIT = PrefectGlobalLimit()
