"""Sending a plan: a client per vendor, chunks as Prefect tasks, a few in flight per vendor.

Each chunk claims its rows in the ledger before sending (rows another live run holds are
`skipped` with `IN_PROGRESS`); the run's stop ends the sending early (rows never sent are
`INTERRUPTED`); every vendor's pace is shared with this machine's other runs.

A preview (`preview`, for `run --dry-run --check-vendors`) goes the same way with reads: the
same clients, limiters and chunks, `check_chunk` instead of `send_chunk`, and no claims and no
ledger rows: its reads go to the audit trail and count against the vendors' daily limits.
"""

from __future__ import annotations

import gc
import os
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

from connectors.registry import CONNECTORS
from connectors.sending.client import VendorClient
from connectors.sending.quota import DailyQuota, QuotaStore
from connectors.sending.ratelimit import limiter_for
from connectors.settings import VendorSettings
from connectors.vocabulary import Decision, ErrorCode, Outcome, RowResult, VendorCheck, WouldChange
from flows.orchestration.progress import RunProgress
from flows.orchestration.secrets import SettingsEnviron, credential_saver, settings_environ
from flows.orchestration.shared_limits import PrefectGlobalLimit
from flows.orchestration.stopping import RunStop
from flows.pipeline.planning import Plan, decisions_for
from flows.state.ledger import CLAIM_LEASE, ClaimHolder, Claims, Ledger
from flows.state.rates import RememberedRates

# Each chunk is one task run, whose orchestration shares the CPU with the sending threads:
# large chunks keep that to a few task runs a minute per vendor, while progress still shows
# every row (bars) and every PROGRESS_EVERY seconds (artifact). docs/performance.md has figures.
DEFAULT_CHUNK_SIZE = 2000
CHUNKS_IN_FLIGHT_PER_VENDOR = 2  # the next chunk is ready when one ends: no idle gap per vendor
PROGRESS_EVERY = 2.0  # seconds between updates of the progress artifact while chunks run
TASK_WORKERS = CHUNKS_IN_FLIGHT_PER_VENDOR * len(CONNECTORS)
RENEW_CLAIMS_EVERY = CLAIM_LEASE / 4  # seconds: a lease outlives three missed renewals


def rate_schedule_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where this machine's runs share each vendor's pace (`INVOICE_SYNC_RATE_DIR`; default: per user, in the temp folder)."""
    env = os.environ if environ is None else environ
    folder = env.get("INVOICE_SYNC_RATE_DIR", "").strip()
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(folder) if folder else Path(tempfile.gettempdir()) / f"invoice-sync-rates-{user}"


@dataclass
class VendorClients:
    """A client per vendor whose settings are usable, and the settings of those that are not."""

    ready: dict[str, VendorClient] = field(default_factory=dict)
    unusable: dict[str, VendorSettings] = field(default_factory=dict)
    rates: RememberedRates | None = None  # where the rates the vendors held are kept for the next run

    def close(self) -> None:
        for client in self.ready.values():
            client.close()
            self._keep_rate(client)

    def _keep_rate(self, client: VendorClient) -> None:
        """The rate a vendor held, learned now or earlier, is where the next run starts."""
        controller = getattr(client.limiter, "controller", None)
        if self.rates is None or controller is None or not controller.heard or not controller.held:
            return
        try:
            self.rates.keep(client.vendor, client.base_url, controller.held)
        except OSError as exc:  # the run's results matter more: say so, and go on
            get_run_logger().warning("the rate %s held was not kept for the next run: %s", client.vendor, exc)
            return
        get_run_logger().info(
            "%s: sending at %.4g/s at the end (%d throttle(s) this run); kept for the next run",
            client.vendor,
            controller.held,
            controller.throttles,
        )


@task(cache_policy=NO_CACHE)
def open_clients(
    vendors: list[str],
    environ: Mapping[str, str] | None = None,
    stop: threading.Event | None = None,
    quota_store: QuotaStore | None = None,
) -> VendorClients:
    """Build each vendor's settings, and a client for every vendor whose settings are usable
    (counting a vendor's daily limit in `quota_store`, the ledger, when it has one)."""
    clients = VendorClients(rates=RememberedRates.from_environ(environ))
    from_blocks = environ.from_blocks if isinstance(environ, SettingsEnviron) else frozenset()
    for vendor in vendors:
        connector_class = CONNECTORS[vendor]
        settings = connector_class.settings_from_env(environ)
        # A credential the vendor replaces mid-run (a rotated refresh token) goes back where it came from.
        saver = credential_saver(vendor, from_blocks, log=get_run_logger())
        settings = replace(settings, save_credential=saver)
        if settings.usable:
            limiter = limiter_for(
                settings,
                PrefectGlobalLimit(),
                machine_dir=rate_schedule_dir(environ),
                stop=stop,
                remembered=clients.rates.recall(vendor, settings.base_url) if clients.rates else None,
                log=get_run_logger().warning,
            )
            quota = None
            if quota_store is not None and settings.daily_limit:
                quota = DailyQuota(vendor, settings.daily_limit, quota_store)
            clients.ready[vendor] = VendorClient(connector_class(settings), limiter=limiter, stop=stop, quota=quota)
        else:
            get_run_logger().error("%s is not configured: %s", vendor, "; ".join(settings.problems))
            clients.unusable[vendor] = settings
    return clients


@task(cache_policy=NO_CACHE)
def send_chunk(
    client: VendorClient,
    frame: pd.DataFrame,
    positions: np.ndarray,
    ledger: Ledger,
    holder: ClaimHolder,
    progress: RunProgress,
) -> list[RowResult]:
    """Claim one chunk of one vendor's decisions, send what is ours, record each answer as it comes."""
    claims = ledger.claim(decisions_for(frame, positions), holder)  # one transaction for the chunk
    not_ours = claim_results(claims)
    progress.advance(client.vendor, len(not_ours))
    answered: list[Decision] = []  # list.append is atomic: the senders share it

    def record(decision: Decision, result: RowResult) -> None:
        try:
            ledger.record(decision, result, holder.run_id)
        except Exception as exc:  # keep the vendor's answer; a rerun re-sends it, which is safe
            result.error_message = f"{result.error_message} (not recorded in the ledger: {type(exc).__name__})".strip()
            get_run_logger().error("ledger write failed for row %d: %s", decision.row_number, exc)
        answered.append(decision)
        progress.advance(client.vendor)

    sent = client.send_many(claims.won, on_result=record)
    # Rows still in flight when a stop's grace ran out keep their claim until it expires.
    unanswered = {r.row_number for r in sent if r.attempts} - {d.row_number for d in answered}
    ledger.release([d for d in claims.won if d.row_number not in unanswered], holder)
    return not_ours + sent


def claim_results(claims: Claims) -> list[RowResult]:
    """Rows this run does not send after claiming: another live run holds them, or one already did them."""
    now = datetime.now(UTC)
    results = [
        RowResult(
            row,
            Outcome.SKIPPED,
            error_code=ErrorCode.IN_PROGRESS,
            error_message=f"not sent: run {run_id} is sending this decision now (its claim runs until "
            f"{datetime.fromtimestamp(until, UTC):%H:%M:%S} UTC) and reports its outcome",
            finished_at=now,
        )
        for row, (run_id, until) in claims.held.items()
    ]
    results += [
        RowResult(
            row,
            Outcome.SKIPPED,
            error_code=ErrorCode.ALREADY_DONE,
            error_message=f"already succeeded in run {run_id} at {when:%Y-%m-%d %H:%M:%S} UTC",
            finished_at=now,
        )
        for row, (run_id, when) in claims.done.items()
    ]
    return results


def interrupted_results(frame: pd.DataFrame, positions: np.ndarray, answered: set[int], reason: str) -> list[RowResult]:
    """Rows the run's stop kept from being sent at all (their chunk never started): the next run sends them."""
    message = f"not sent: the run was {reason} before this row's turn; the next run sends it"
    rows = frame["row_number"].to_numpy()[positions].tolist()
    return [
        RowResult(int(r), Outcome.FAILED, error_code=ErrorCode.INTERRUPTED, error_message=message)
        for r in rows
        if int(r) not in answered
    ]


@task(cache_policy=NO_CACHE)
def check_chunk(
    client: VendorClient,
    frame: pd.DataFrame,
    positions: np.ndarray,
    ledger: Ledger,
    run_id: str,
    progress: RunProgress,
) -> list[VendorCheck]:
    """Read the invoices of one chunk of one vendor's decisions (a preview), each read audited as it comes."""

    def record(decision: Decision, check: VendorCheck) -> None:
        try:
            ledger.record_reads(decision, check, run_id)
        except Exception as exc:  # the read is still the preview's answer; say it was not audited
            check.message = f"{check.message} (not recorded in the audit trail: {type(exc).__name__})".strip()
            get_run_logger().error("audit write failed for row %d: %s", decision.row_number, exc)
        progress.advance(client.vendor)

    return client.check_many(decisions_for(frame, positions), on_result=record)


def unconfigured_results(frame: pd.DataFrame, positions: np.ndarray, settings: VendorSettings) -> list[RowResult]:
    """Rows of a vendor whose settings are missing: failed, never sent (and never to a sandbox)."""
    message = _unconfigured(settings)
    rows = frame["row_number"].to_numpy()[positions]
    return [RowResult(int(r), Outcome.FAILED, error_code=ErrorCode.CONFIG_MISSING, error_message=message) for r in rows]


def unconfigured_checks(frame: pd.DataFrame, positions: np.ndarray, settings: VendorSettings) -> list[VendorCheck]:
    """A preview's rows of a vendor whose settings are missing: unknown, and why (the real run would fail them)."""
    message = f"not read: {_unconfigured(settings)}"
    return [
        VendorCheck(int(r), WouldChange.UNKNOWN, message=message) for r in frame["row_number"].to_numpy()[positions]
    ]


def _unconfigured(settings: VendorSettings) -> str:
    return f"{settings.vendor} is not configured: {'; '.join(settings.problems)}"


Submit = Callable[[str, np.ndarray], PrefectFuture[Any]]
# Submits one chunk task for a vendor's client: (client, vendor's rows, progress) -> future.
SubmitChunk = Callable[[VendorClient, np.ndarray, RunProgress], PrefectFuture[Any]]


def lanes(
    to_send: Mapping[str, np.ndarray],
    chunk_size: int,
    submit: Submit,
    tick: float | None = None,
    stop: threading.Event | None = None,
) -> Iterator[tuple[str, PrefectFuture[Any]] | None]:
    """Submit chunks so that each vendor has a few in flight; yield (vendor, future) as they finish,
    and None every `tick` seconds in between (time to report progress). Once `stop` is set no
    chunk is submitted; those in flight are still waited for.

    Lanes keep one slow vendor from filling every task-runner worker while the others wait.
    """
    pending = {v: deque(p[i : i + chunk_size] for i in range(0, len(p), chunk_size)) for v, p in to_send.items()}
    finished: queue.Queue[tuple[str, PrefectFuture[Any]]] = queue.Queue()
    in_flight = 0

    def launch(vendor: str) -> None:
        nonlocal in_flight
        if stop is not None and stop.is_set():
            return
        future = submit(vendor, pending[vendor].popleft())
        future.add_done_callback(lambda f: finished.put((vendor, f)))
        in_flight += 1

    for vendor in pending:
        for _ in range(CHUNKS_IN_FLIGHT_PER_VENDOR):
            if pending[vendor]:
                launch(vendor)
    while in_flight:
        try:
            vendor, future = finished.get(timeout=tick)
        except queue.Empty:
            yield None
            continue
        in_flight -= 1
        yield vendor, future
        if pending[vendor]:
            launch(vendor)


def dispatch(
    frame: pd.DataFrame,
    plan_: Plan,
    chunk_size: int,
    ledger: Ledger,
    run_id: str,
    show_progress: bool | None,
    settings_from_blocks: bool = False,
    stop: RunStop | None = None,
) -> list[RowResult]:
    """Send all planned rows, vendors in parallel, chunks in lanes; one result per row."""
    stop = stop or RunStop()
    holder = ClaimHolder.for_run(run_id)

    def submit(client: VendorClient, positions: np.ndarray, progress: RunProgress) -> PrefectFuture[Any]:
        return send_chunk.with_options(task_run_name=f"send-{client.vendor}-rows-{positions[0] + 1}").submit(
            client, frame, positions, ledger, holder, progress
        )

    renewed = time.monotonic()

    def renew_claims() -> None:
        nonlocal renewed
        if time.monotonic() - renewed > RENEW_CLAIMS_EVERY:
            renewed = _renew_claims(ledger, holder)

    sent, unusable = _in_lanes(
        plan_,
        chunk_size,
        submit,
        show_progress,
        settings_from_blocks,
        "Decisions sent",
        stop,
        on_tick=renew_claims,
        quota_store=ledger,
    )
    for vendor, settings in unusable.items():
        sent.extend(unconfigured_results(frame, plan_.to_send[vendor], settings))
    if stop.is_set():
        answered = {r.row_number for r in sent}
        for vendor, positions in plan_.to_send.items():
            if vendor not in unusable:
                sent.extend(interrupted_results(frame, positions, answered, stop.reason))
        get_run_logger().info("%s: no request started after the stop; rows not sent are INTERRUPTED", stop.reason)
    return sent


def preview(
    frame: pd.DataFrame,
    plan_: Plan,
    chunk_size: int,
    ledger: Ledger,
    run_id: str,
    show_progress: bool | None,
    settings_from_blocks: bool = False,
    stop: RunStop | None = None,
) -> list[VendorCheck]:
    """Read, for every planned row, its invoice's state at the vendor: like `dispatch`, with reads that
    change no ledger row but are audited and count against each vendor's daily limit."""

    def submit(client: VendorClient, positions: np.ndarray, progress: RunProgress) -> PrefectFuture[Any]:
        return check_chunk.with_options(task_run_name=f"read-{client.vendor}-rows-{positions[0] + 1}").submit(
            client, frame, positions, ledger, run_id, progress
        )

    checks, unusable = _in_lanes(
        plan_,
        chunk_size,
        submit,
        show_progress,
        settings_from_blocks,
        "Invoices read",
        stop or RunStop(),
        quota_store=ledger,
    )
    for vendor, settings in unusable.items():
        checks.extend(unconfigured_checks(frame, plan_.to_send[vendor], settings))
    return checks


def _in_lanes(
    plan_: Plan,
    chunk_size: int,
    submit: SubmitChunk,
    show_progress: bool | None,
    settings_from_blocks: bool,
    description: str,
    stop: RunStop,
    on_tick: Callable[[], None] | None = None,
    quota_store: QuotaStore | None = None,
) -> tuple[list[Any], dict[str, VendorSettings]]:
    """Open the clients and run every configured vendor's chunks in lanes, reporting progress;
    once `stop` is set no chunk starts. `on_tick` runs as each chunk ends and every tick between.

    Returns what the chunks returned, and the settings of the vendors that are not configured.
    """
    vendors = sorted(plan_.to_send)
    # Deployments: settings missing from the environment come from Prefect Secret blocks.
    environ = settings_environ(vendors, log=get_run_logger()) if settings_from_blocks else None
    clients = open_clients(vendors, environ, stop, quota_store)
    configured = {v: p for v, p in plan_.to_send.items() if v in clients.ready}

    progress = RunProgress({v: len(p) for v, p in configured.items()}, show_bars=show_progress)
    # Called from sync code, Prefect's async_dispatch returns the id itself, not a coroutine.
    artifact_id = cast(
        UUID, create_progress_artifact(progress=0.0, key="invoice-sync-progress", description=description)
    )
    done: list[Any] = []
    try:
        with spared_from_collection():
            for finished in lanes(
                configured,
                chunk_size,
                lambda v, p: submit(clients.ready[v], p, progress),
                tick=PROGRESS_EVERY,
                stop=stop,
            ):
                gc.freeze()  # the results so far are long-lived too
                if on_tick is not None:
                    on_tick()
                if finished is not None:  # None: no chunk ended within a tick, only progress to report
                    vendor, future = finished
                    outcome = future.result(raise_on_failure=False)
                    if isinstance(outcome, list):
                        done.extend(outcome)
                    else:  # a bug, not a vendor answer: its rows are reported failed by assemble_results
                        get_run_logger().error("a chunk for %s crashed: %s", vendor, outcome)
                update_progress_artifact(artifact_id, progress=round(100 * progress.fraction, 1))
    finally:
        progress.close()
        clients.close()
    return done, clients.unusable


@contextmanager
def spared_from_collection() -> Iterator[None]:
    """While sending, what is alive is left out of the garbage collector's full collections.

    A full collection looks at every object in the process (Prefect, pandas, Great
    Expectations, the decisions, the results so far) with every thread stopped: during a run
    each one was a gap in every vendor's sending (docs/performance.md, "Stalls"). Objects
    alive when sending starts, and whenever `gc.freeze()` is called again, are long-lived; freezing
    them keeps each collection to what is new. Afterwards they are collectable again.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _renew_claims(ledger: Ledger, holder: ClaimHolder) -> float:
    """Extend this run's claims; a failure is logged (the claims may then expire under a slow chunk)."""
    try:
        ledger.renew(holder)
    except Exception as exc:
        get_run_logger().warning("claims not renewed in the ledger: %s", exc)
    return time.monotonic()
