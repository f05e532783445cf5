"""The Prefect flow: read, validate, plan, send per vendor in chunks, write the results.

The flow only orchestrates; the work is in small tasks and in `connectors` / `flows.*`.
"""

from __future__ import annotations

import os
import queue
import time
from collections import deque
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from connectors import CONNECTORS
from connectors.base import ErrorCode, Outcome
from connectors.redact import install_log_redaction
from connectors.settings import VendorSettings
from connectors.transport import RowResult, VendorClient
from flows.ledger import Ledger
from flows.planning import Plan, apply_history, decisions_for, plan_rows
from flows.progress import RunProgress
from flows.reader import UnusableFile, read_decisions
from flows.results import RunSummary, assemble_results, summarize, write_results
from flows.secrets import settings_environ
from flows.validation import SuiteError, ValidationError, ValidationReport, validate_decisions, write_data_docs

# Each chunk is one task run: ~10 ms of orchestration here plus the API server's own work, all
# on the CPU the sending threads share. 2,000 rows keep that to a few task runs a minute per
# vendor; progress still shows every row (bars) and every PROGRESS_EVERY seconds (artifact).
DEFAULT_CHUNK_SIZE = 2000
CHUNKS_IN_FLIGHT_PER_VENDOR = 2  # the next chunk is ready when one ends: no idle gap per vendor
PROGRESS_EVERY = 2.0  # seconds between updates of the progress artifact while chunks run
TASK_WORKERS = CHUNKS_IN_FLIGHT_PER_VENDOR * len(CONNECTORS)


@task(cache_policy=NO_CACHE)
def read_file(path: str) -> pd.DataFrame | UnusableFile:
    """Read and normalise the decision file, or say why it cannot be used."""
    try:
        return read_decisions(path)
    except UnusableFile as exc:  # an answer about the file, not a crash: no traceback anywhere
        return exc


@task(cache_policy=NO_CACHE)
def validate(frame: pd.DataFrame) -> ValidationReport | SuiteError | ValidationError:
    """Run the Great Expectations suite over the decisions, or say why it could not run."""
    try:
        report = validate_decisions(frame)
    except (SuiteError, ValidationError) as exc:  # no rules, no sending: nothing goes out unchecked
        return exc
    if report.row_errors:
        get_run_logger().warning("%d rows break validation rules and will not be sent", len(report.row_errors))
    return report


@task(cache_policy=NO_CACHE)
def plan(frame: pd.DataFrame, report: ValidationReport, vendors: list[str] | None) -> Plan:
    """Decide each row's fate before sending: rejected, duplicate, conflicting, or to send."""
    return plan_rows(frame, report.row_errors, vendors)


@task(cache_policy=NO_CACHE)
def consult_ledger(frame: pd.DataFrame, plan_: Plan, ledger: Ledger, retry_failed: bool) -> list[RowResult]:
    """Skip decisions that already succeeded; report known permanent failures without a call."""
    reported = apply_history(frame, plan_, ledger.lookup(sorted(plan_.to_send)), retry_failed=retry_failed)
    skipped = int((plan_.error_code == ErrorCode.ALREADY_DONE.value).sum())
    if skipped or reported:
        get_run_logger().info("ledger %s: %d already succeeded, %d permanent failures reported again",
                              ledger.describe(), skipped, len(reported))
    return reported


@task(cache_policy=NO_CACHE)
def open_clients(vendors: list[str], environ: Mapping[str, str] | None = None) -> dict[str, VendorClient | VendorSettings]:
    """A client per vendor with usable settings; the settings (with their problems) otherwise."""
    opened: dict[str, VendorClient | VendorSettings] = {}
    for vendor in vendors:
        connector_class = CONNECTORS[vendor]
        settings = VendorSettings.from_env(vendor, connector_class.credential_names, environ)
        if settings.usable:
            opened[vendor] = VendorClient(connector_class(settings))
        else:
            get_run_logger().error("%s is not configured: %s", vendor, "; ".join(settings.problems))
            opened[vendor] = settings
    return opened


@task(cache_policy=NO_CACHE)
def send_chunk(
    client: VendorClient, frame: pd.DataFrame, positions: np.ndarray, ledger: Ledger, run_id: str, progress: RunProgress
) -> list[RowResult]:
    """Send one chunk of one vendor's decisions, recording each answer in the ledger as it comes."""

    def answered(decision, result: RowResult) -> None:
        try:
            ledger.record(decision, result, run_id)
        except Exception as exc:  # keep the vendor's answer; a rerun re-sends it, which is safe
            result.error_message = f"{result.error_message} (not recorded in the ledger: {type(exc).__name__})".strip()
            get_run_logger().error("ledger write failed for row %d: %s", decision.row_number, exc)
        progress.advance(client.vendor)

    return client.send_many(decisions_for(frame, positions), on_result=answered)


def unconfigured_results(frame: pd.DataFrame, positions: np.ndarray, settings: VendorSettings) -> list[RowResult]:
    """Rows of a vendor whose settings are missing: failed, never sent (and never to a sandbox)."""
    message = f"{settings.vendor} is not configured: {'; '.join(settings.problems)}"
    rows = frame["row_number"].to_numpy()[positions]
    return [RowResult(int(r), Outcome.FAILED, error_code=ErrorCode.CONFIG_MISSING, error_message=message) for r in rows]


def lanes(
    to_send: Mapping[str, np.ndarray], chunk_size: int, submit, tick: float | None = None
) -> Iterator[tuple[str, object] | None]:
    """Submit chunks so that each vendor has a few in flight; yield (vendor, future) as they finish,
    and None every `tick` seconds in between (time to report progress).

    Lanes keep one slow vendor from filling every task-runner worker while the others wait.
    """
    pending = {v: deque(p[i : i + chunk_size] for i in range(0, len(p), chunk_size)) for v, p in to_send.items()}
    finished: queue.Queue = queue.Queue()
    in_flight = 0

    def launch(vendor: str) -> None:
        nonlocal in_flight
        future = submit(vendor, pending[vendor].popleft())
        future.add_done_callback(lambda f, v=vendor: finished.put((v, f)))
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


@flow(name="invoice-sync", task_runner=ThreadPoolTaskRunner(max_workers=TASK_WORKERS), log_prints=False)
def sync_decisions(
    path: str,
    out_dir: str = "data/results",
    dry_run: bool = False,
    vendors: list[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    retry_failed: bool = False,
    show_progress: bool | None = None,
    settings_from_blocks: bool = False,
) -> RunSummary:
    """Send every valid decision in `path` to its vendor and write one result row per input row."""
    started = time.monotonic()
    install_log_redaction()  # deployments and the CLI alike: no credential reaches a log line
    logger = get_run_logger()
    run_id = str(flow_run.get_id() or "local")

    frame = read_file(path)
    if isinstance(frame, UnusableFile):
        logger.info("nothing sent: %s", frame)  # the state says it; the terminal gets one line
        return Failed(name="UnusableFile", message=str(frame))
    report = validate(frame)
    if not isinstance(report, ValidationReport):
        logger.info("nothing sent: validation could not run: %s", report)
        return Failed(name="ValidationUnavailable", message=f"nothing sent: validation could not run: {report}")
    plan_ = plan(frame, report, vendors)
    ledger = Ledger.open()
    try:
        sent = consult_ledger(frame, plan_, ledger, retry_failed)
        logger.info("%s: %d rows, %d to send, %d rejected", path, len(frame), plan_.send_count, len(report.row_errors))
        if not dry_run and plan_.send_count:
            sent += dispatch(frame, plan_, chunk_size, ledger, run_id, show_progress, settings_from_blocks)
    finally:
        ledger.close()

    results = assemble_results(frame, plan_, sent, run_id, dry_run=dry_run)
    parquet_path, csv_path = write_results(results, out_dir)
    summary = summarize(results, run_id, path, dry_run=dry_run)
    summary.results_path, summary.csv_path = str(parquet_path), str(csv_path)
    try:  # the GX Data Docs page beside the results; an extra: never lose the run over it
        summary.extra["validation_report"] = str(write_data_docs(report, out_dir, source=path))
    except Exception as exc:
        logger.warning("validation report not written: %s", exc)
    summary.seconds = time.monotonic() - started
    publish(summary)
    if summary.all_done:
        return Completed(message=summary.counts_text(), data=summary)
    return Failed(name="RowsNotDone", message=summary.counts_text(), data=summary)


def dispatch(
    frame: pd.DataFrame, plan_: Plan, chunk_size: int, ledger: Ledger, run_id: str, show_progress: bool | None,
    settings_from_blocks: bool = False,
) -> list[RowResult]:
    """Send all planned rows, vendors in parallel, chunks in lanes; one result per row."""
    vendors = sorted(plan_.to_send)
    # Deployments: settings missing from the environment come from Prefect Secret blocks.
    environ = settings_environ(vendors, log=get_run_logger()) if settings_from_blocks else None
    clients = open_clients(vendors, environ)
    configured = {v: p for v, p in plan_.to_send.items() if isinstance(clients[v], VendorClient)}
    sent: list[RowResult] = []
    for vendor, positions in plan_.to_send.items():
        if vendor not in configured:
            sent.extend(unconfigured_results(frame, positions, clients[vendor]))

    progress = RunProgress({v: len(p) for v, p in configured.items()}, show_bars=show_progress)
    artifact_id = create_progress_artifact(progress=0.0, key="invoice-sync-progress", description="Decisions sent")

    def submit(vendor: str, positions: np.ndarray):
        return send_chunk.with_options(task_run_name=f"send-{vendor}-rows-{positions[0] + 1}").submit(
            clients[vendor], frame, positions, ledger, run_id, progress
        )

    try:
        for finished in lanes(configured, chunk_size, submit, tick=PROGRESS_EVERY):
            if finished is not None:  # None: no chunk ended within a tick, only progress to report
                vendor, future = finished
                outcome = future.result(raise_on_failure=False)
                if isinstance(outcome, list):
                    sent.extend(outcome)
                else:  # a bug, not a vendor answer: its rows are reported failed by assemble_results
                    get_run_logger().error("a chunk for %s crashed: %s", vendor, outcome)
            update_progress_artifact(artifact_id, progress=round(100 * progress.fraction, 1))
    finally:
        progress.close()
        for client in clients.values():
            if isinstance(client, VendorClient):
                client.close()
    return sent


def publish(summary: RunSummary) -> None:
    """Table and markdown artifacts for the Prefect UI."""
    rows = [
        {"vendor": v, **counts, "top errors": ", ".join(f"{c} ({n})" for c, n in summary.top_errors.get(v, []))}
        for v, counts in summary.by_vendor.items()
    ]
    create_table_artifact(rows, key="invoice-sync-outcomes", description="Outcomes per vendor")
    create_markdown_artifact(
        "\n".join(
            [
                f"# invoice-sync run {summary.run_id}",
                f"- file: `{summary.source}`",
                f"- rows: {summary.rows} ({summary.counts_text()})" + (" — dry run, nothing sent" if summary.dry_run else ""),
                f"- took: {summary.seconds:.1f} s",
                f"- results: `{summary.results_path}` (and `{summary.csv_path}`)",
                *([f"- validation report (Great Expectations Data Docs): `{summary.extra['validation_report']}`"]
                  if summary.extra.get("validation_report") else []),
            ]
        ),
        key="invoice-sync-run",
        description="What ran",
    )
