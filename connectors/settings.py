"""Vendor settings, built once from the environment (or any mapping) by the orchestration layer.

Connectors receive a `VendorSettings`; they never read the environment themselves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar, overload
from urllib.parse import urlsplit

from pydantic import SecretStr

from connectors.redact import register_secret

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

_Number = TypeVar("_Number", int, float)
_Default = TypeVar("_Default")


@dataclass(frozen=True)
class VendorSettings:
    """Everything one vendor connector needs; credentials stay `SecretStr` until sent."""

    vendor: str
    base_url: str | None
    credentials: Mapping[str, SecretStr] = field(default_factory=dict)
    rate_limit: float | None = None  # requests per second; None: no limit of ours
    max_concurrency: int = 8  # requests in flight at once
    max_attempts: int = 5  # attempts per decision, first one included
    timeout: float = 30.0  # seconds per request (connect and read)
    backoff_initial: float = 0.5  # first retry wait, doubled each time, with jitter
    backoff_max: float = 30.0
    retry_after_max: float = 120.0  # a vendor's Retry-After is honoured up to this
    problems: tuple[str, ...] = ()  # why the settings are unusable, if they are
    global_limit: str | None = None  # Prefect GCL (rate-limit mode) shared with other workers
    daily_limit: int | None = None  # requests per UTC day, counted in the ledger across runs; None: no quota
    urls: Mapping[str, str] = field(default_factory=dict)  # more endpoints, e.g. {"TOKEN_URL": ...}; not secrets
    # Saves a credential the vendor replaced (a rotated refresh token) back where it came from:
    # (credential name, new value). Set by the orchestration; None keeps it for this run only.
    save_credential: Callable[[str, str], None] | None = field(default=None, compare=False, repr=False)

    @property
    def usable(self) -> bool:
        return not self.problems

    @classmethod
    def from_env(
        cls,
        vendor: str,
        credential_names: tuple[str, ...],
        environ: Mapping[str, str] | None = None,
        *,
        credential_sets: tuple[tuple[str, ...], ...] = (),
        url_names: tuple[str, ...] = (),
        daily_limit: int | None = None,
    ) -> VendorSettings:
        """Read `<VENDOR>_*` settings; problems are collected, never raised.

        `credential_names` are secrets, `url_names` more endpoints (not secrets). Without
        `credential_sets` every credential is required; with them (ways in, each a tuple of
        names) one set must be complete, and a set given only in part is a problem too.
        `daily_limit`: the vendor's documented requests per day, unless `<VENDOR>_DAILY_LIMIT`
        says otherwise (0: none).
        """
        env = os.environ if environ is None else environ
        read = _SettingsReader(vendor.upper(), env)
        base_url = read.text("BASE_URL")
        if base_url is None:
            read.problems.append(f"{read.prefix}_BASE_URL is not set")
        else:
            base_url = base_url.rstrip("/")
            read.problems.extend(_url_problems(read.prefix, base_url, env))
        urls: dict[str, str] = {}
        for name in url_names:
            url = read.text(name)
            if url is not None:
                urls[name] = url
                read.problems.extend(_url_problems(read.prefix, url, env, name))
        credentials: dict[str, SecretStr] = {}
        for name in credential_names:
            value = read.text(name)
            if value is not None:
                register_secret(value)
                credentials[name] = SecretStr(value)
        read.problems.extend(
            _credential_problems(read.prefix, credential_sets or (credential_names,), {*credentials, *urls})
        )
        rate = read.number("RATE_LIMIT", None)
        daily = read.whole("DAILY_LIMIT", daily_limit or 0, minimum=0)
        return cls(
            vendor=vendor,
            base_url=base_url,
            credentials=credentials,
            rate_limit=rate if rate else None,
            max_concurrency=read.whole("MAX_CONCURRENCY", 8, minimum=1),
            max_attempts=read.whole("MAX_ATTEMPTS", 5, minimum=1),
            timeout=read.number("TIMEOUT", 30.0, minimum=0.001),
            backoff_initial=read.number("BACKOFF_INITIAL", 0.5),
            backoff_max=read.number("BACKOFF_MAX", 30.0),
            retry_after_max=read.number("RETRY_AFTER_MAX", 120.0),
            problems=tuple(read.problems),
            global_limit=read.text("GLOBAL_LIMIT"),
            daily_limit=daily or None,
            urls=urls,
        )


def _credential_problems(prefix: str, sets: tuple[tuple[str, ...], ...], given: set[str]) -> list[str]:
    """Why no way in is usable: one set must be complete; a set given in part is named as such."""

    def names(items) -> str:
        return ", ".join(f"{prefix}_{n}" for n in items)

    if len(sets) == 1:
        return [f"{prefix}_{n} is not set" for n in sets[0] if n not in given]
    problems = [
        f"{names(n for n in way if n not in given)} not set (with {names(n for n in way if n in given)} set, "
        f"all of {names(way)} are needed)"
        for way in sets
        if 0 < len(given & set(way)) < len(way)
    ]
    if not problems and not any(given >= set(way) for way in sets):
        problems.append("no credentials: set " + " or else ".join(names(way) for way in sets))
    return problems


class _SettingsReader:
    """Reads one vendor's `<PREFIX>_<NAME>` values, noting each unusable one in `problems`."""

    def __init__(self, prefix: str, env: Mapping[str, str]) -> None:
        self.prefix = prefix
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str) -> str | None:
        value = self.env.get(f"{self.prefix}_{name}", "").strip()
        return value or None

    @overload
    def number(self, name: str, default: float, minimum: float = 0.0) -> float: ...
    @overload
    def number(self, name: str, default: None, minimum: float = 0.0) -> float | None: ...
    def number(self, name: str, default: float | None, minimum: float = 0.0) -> float | None:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.problems.append(f"{self.prefix}_{name} is not a number")
            return default
        return self._at_least(name, value, default, minimum)

    def whole(self, name: str, default: int, minimum: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problems.append(f"{self.prefix}_{name} is not a number")
            return default
        return self._at_least(name, value, default, minimum)

    def _at_least(self, name: str, value: _Number, default: _Default, minimum: _Number) -> _Number | _Default:
        if value < minimum:
            self.problems.append(f"{self.prefix}_{name} must be at least {minimum}")
            return default
        return value


def _url_problems(prefix: str, url: str, env: Mapping[str, str], name: str = "BASE_URL") -> list[str]:
    """TLS stays on: plain http is only for this machine unless explicitly allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [f"{prefix}_{name} is not an http(s) URL"]
    allowed = env.get("INVOICE_SYNC_ALLOW_INSECURE_HTTP", "").strip().lower() in ("1", "true", "yes")
    if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS and not allowed:
        return [
            f"{prefix}_{name} uses plain http to {parts.hostname}; use https "
            "(or set INVOICE_SYNC_ALLOW_INSECURE_HTTP=1 if you really mean it)"
        ]
    return []
