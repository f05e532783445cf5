"""The flow `invoice-sync`: read, validate, plan, send per vendor in chunks, write the results.

The flow only orchestrates: the work is in small tasks, in the pure stages of `flows.pipeline`
and in `connectors`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, State
from prefect.task_runners import ThreadPoolTaskRunner

from connectors.redact import install_log_redaction
from connectors.registry import VENDORS
from connectors.vocabulary import ErrorCode, RowResult, VendorCheck
from flows.orchestration.approval import APPROVAL_REQUIRED, ApprovalSettings, require_approval
from flows.orchestration.artifacts import publish
from flows.orchestration.audit_trail import RunTrail, who_started
from flows.orchestration.dispatch import DEFAULT_CHUNK_SIZE, TASK_WORKERS, dispatch, preview
from flows.orchestration.events import RetryRound, emit_run_finished
from flows.orchestration.final_states import failed
from flows.orchestration.stopping import RunStop, stop_on_signals
from flows.pipeline.datadocs import write_data_docs
from flows.pipeline.files import one_line
from flows.pipeline.planning import Plan, apply_history, plan_rows
from flows.pipeline.reader import DecisionFile, ErrorCell, UnusableFile, read_decision_file
from flows.pipeline.results import (
    RunSummary,
    assemble_results,
    needs_attention,
    summarize,
    write_needs_attention,
    write_results,
    write_results_workbook,
)
from flows.pipeline.validation import SuiteError, ValidationError, ValidationReport, validate_decisions
from flows.state.ledger import Ledger

__all__ = ["DEFAULT_CHUNK_SIZE", "NOTHING_SENT_STATES", "sync_decisions"]

UNUSABLE_FILE = "UnusableFile"
VALIDATION_UNAVAILABLE = "ValidationUnavailable"
NOTHING_SENT_STATES = (UNUSABLE_FILE, VALIDATION_UNAVAILABLE, APPROVAL_REQUIRED)


@dataclass(frozen=True)
class NothingSent:
    """Why a run stops before sending anything: the state it ends in and the line a person reads."""

    state: str
    message: str


@task(cache_policy=NO_CACHE)
def read_file(path: str, sheet: str | None = None) -> DecisionFile | NothingSent:
    """Read and normalise the decision file (a workbook's `sheet`), or say why it cannot be used."""
    try:
        return read_decision_file(path, sheet=sheet)
    except UnusableFile as exc:  # an answer about the file, not a crash: no traceback anywhere
        return NothingSent(UNUSABLE_FILE, str(exc))


@task(cache_policy=NO_CACHE)
def validate(frame: pd.DataFrame, error_cells: tuple[ErrorCell, ...] = ()) -> ValidationReport | NothingSent:
    """Run the Great Expectations suite over the decisions, or say why it could not run."""
    try:
        report = validate_decisions(frame, error_cells=error_cells)
    except (SuiteError, ValidationError) as exc:  # no rules, no sending: nothing goes out unchecked
        return NothingSent(VALIDATION_UNAVAILABLE, f"nothing sent: validation could not run: {exc}")
    if report.row_errors:
        get_run_logger().warning("%d rows break validation rules and will not be sent", len(report.row_errors))
    return report


@task(cache_policy=NO_CACHE)
def plan(frame: pd.DataFrame, report: ValidationReport, vendors: list[str] | None) -> Plan:
    """Decide each row's fate before sending: rejected, duplicate, conflicting, or to send."""
    return plan_rows(frame, report.row_errors, vendors, known_vendors=VENDORS)


@task(cache_policy=NO_CACHE)
def consult_ledger(frame: pd.DataFrame, plan_: Plan, ledger: Ledger, retry_failed: bool) -> list[RowResult]:
    """Skip decisions that already succeeded; report known permanent failures without a call."""
    reported = apply_history(frame, plan_, ledger.lookup(sorted(plan_.to_send)), retry_failed=retry_failed)
    skipped = int((plan_.error_code == ErrorCode.ALREADY_DONE.value).sum())
    if skipped or reported:
        get_run_logger().info(
            "ledger %s: %d already succeeded, %d permanent failures reported again",
            ledger.describe(),
            skipped,
            len(reported),
        )
    return reported


def write_spreadsheets(decisions: DecisionFile, results: pd.DataFrame, summary: RunSummary, out_dir: str) -> None:
    """needs_attention.xlsx/.csv and results.xlsx; results.parquet and .csv are written already, so a
    failure here is said (in the summary and the log) and never loses the run."""
    logger = get_run_logger()
    try:
        write_needs_attention(needs_attention(decisions.frame, results), summary, out_dir, sheet=decisions.sheet)
    except Exception as exc:
        logger.warning("needs_attention files not written: %s", one_line(exc))
    if summary.needs_attention_path:
        logger.warning("%s", summary.attention_text())
    try:
        write_results_workbook(results, summary, out_dir)
    except Exception as exc:
        summary.no_workbook_because = f"it could not be written ({one_line(exc)})"
    if summary.no_workbook_because:
        logger.warning("no results.xlsx: %s", summary.no_workbook_because)


def run_name() -> str:
    """The flow run's name: the file and the time, `invoice-sync decisions.csv 2026-11-30 18:00 UTC`."""
    parameters = flow_run.parameters
    name = Path(str(parameters.get("source_name") or parameters.get("path") or "")).name
    return f"invoice-sync {name} {datetime.now(UTC):%Y-%m-%d %H:%M} UTC" + (
        " (dry run)" if parameters.get("dry_run") else ""
    )


# `flow()` takes a TaskRunner[PrefectFuture[Any]] and that parameter is invariant, so no concrete
# runner fits, not even ThreadPoolTaskRunner, Prefect's default and documented choice (it casts its own).
@flow(
    name="invoice-sync",
    flow_run_name=run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=TASK_WORKERS),  # type: ignore[arg-type]
    log_prints=False,
)
def sync_decisions(
    path: str,
    out_dir: str = "data/results",
    dry_run: bool = False,
    vendors: list[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    retry_failed: bool = False,
    show_progress: bool | None = None,
    settings_from_blocks: bool = False,
    check_vendors: bool = False,
    retry_round: int = 0,
    retry_rounds: int = 0,
    retries_run: str | None = None,
    sheet: str | None = None,
    source_name: str | None = None,
    submitted_by: str | None = None,
) -> State:
    """Send every valid decision in `path` to its vendor and write one result row per input row.

    `sheet` names the worksheet to read when `path` is an Excel workbook (default: the first).
    `source_name` is the file as a person knows it, when `path` is not (the inbox claims a
    file into a folder of its own first): it names the run, the summary and the artifacts.
    `check_vendors` with `dry_run`: a preview that reads, for every decision that would be
    sent, the invoice's current state at its vendor (nothing is written, the ledger unchanged).
    `retry_round` (of `retry_rounds`, retrying the run `retries_run`) is set by `retry-failed` only.
    SIGINT or SIGTERM (Ctrl-C, or a worker cancelling the run) stops the sending: the results are
    still written, and the run ends `Cancelled` with its counts.
    `submitted_by` names who submitted the file (the audit trail's register; never its approver).
    Every run is registered and its requests appended to the audit trail (`flows/state/audit.py`);
    `INVOICE_SYNC_APPROVAL` may make it wait for a second person (`flows/orchestration/approval.py`).
    """
    with stop_on_signals() as stop:
        ledger = Ledger.open()
        trail = RunTrail(
            ledger,
            str(flow_run.get_id() or "local"),
            path,
            who_started(submitted_by),
            dry_run,
            source_name=source_name,
            sheet=sheet,
            vendors=vendors,
            out_dir=out_dir,
            approval_policy=ApprovalSettings.from_env().describe(),
        )
        try:
            return _sync(
                path,
                out_dir,
                dry_run,
                vendors,
                chunk_size,
                retry_failed,
                show_progress,
                settings_from_blocks,
                check_vendors,
                RetryRound(retry_round, retry_rounds, retries_run),
                stop,
                sheet,
                source_name,
                ledger=ledger,
                trail=trail,
            )
        except BaseException as exc:  # a crash still ends the run's chain (a kill -9 leaves it unfinished)
            if trail.registered:
                trail.finish(failed("Crashed", f"{type(exc).__name__}: {exc}"), None, None, None)
            raise
        finally:
            ledger.close()


def _sync(
    path: str,
    out_dir: str,
    dry_run: bool,
    vendors: list[str] | None,
    chunk_size: int,
    retry_failed: bool,
    show_progress: bool | None,
    settings_from_blocks: bool,
    check_vendors: bool,
    retry: RetryRound,
    stop: RunStop,
    sheet: str | None,
    source_name: str | None,
    *,
    ledger: Ledger,
    trail: RunTrail,
) -> State:
    started = time.monotonic()
    install_log_redaction()  # deployments and the CLI alike: no credential reaches a log line
    logger = get_run_logger()
    run_id = str(flow_run.get_id() or "local")

    decisions = read_file(path, sheet)
    trail.register(None if isinstance(decisions, NothingSent) else decisions.frame)
    if isinstance(decisions, NothingSent):
        message = decisions.message.replace(path, source_name) if source_name else decisions.message
        logger.info("nothing sent: %s", message)  # the state says it; the terminal gets one line
        return _ended(trail, failed(decisions.state, message))
    frame = decisions.frame
    report = validate(frame, decisions.error_cells)
    if isinstance(report, NothingSent):
        logger.info("%s", report.message)
        return _ended(trail, failed(report.state, report.message), len(frame))
    plan_ = plan(frame, report, vendors)
    if check_vendors and not dry_run:
        logger.warning("check_vendors previews a dry run only: ignored, the decisions are sent")
    checks: list[VendorCheck] | None = [] if check_vendors and dry_run else None
    sent = consult_ledger(frame, plan_, ledger, retry_failed)
    logger.info(
        "%s: %d rows, %d to send, %d rejected",
        source_name or path,
        len(frame),
        plan_.send_count,
        len(report.row_errors),
    )
    if not dry_run and plan_.send_count:
        not_approved = require_approval(frame, plan_, trail, out_dir)
        if not_approved is not None:
            logger.warning("%s", not_approved.message)
            return _ended(trail, not_approved, len(frame))
        sent += dispatch(frame, plan_, chunk_size, ledger, run_id, show_progress, settings_from_blocks, stop)
    ledger_place = ledger.describe()
    if checks is not None and plan_.send_count:  # reads only: audited and counted, no ledger row changed
        checks += preview(frame, plan_, chunk_size, ledger, run_id, show_progress, settings_from_blocks, stop)

    results = assemble_results(frame, plan_, sent, run_id, dry_run=dry_run, checks=checks)
    parquet_path, csv_path = write_results(results, out_dir)
    stopped_by = stop.signal.name if stop.is_set() and stop.signal is not None else None
    summary = summarize(results, run_id, source_name or path, dry_run=dry_run, stopped_by=stopped_by)
    summary.results_path, summary.csv_path = str(parquet_path), str(csv_path)
    summary.extra["ledger"] = ledger_place
    write_spreadsheets(decisions, results, summary, out_dir)
    try:  # the GX Data Docs page beside the results; an extra: never lose the run over it
        summary.extra["validation_report"] = str(write_data_docs(report, out_dir, source=path))
    except Exception as exc:
        logger.warning("validation report not written: %s", exc)
    summary.seconds = time.monotonic() - started
    summary.extra.update(trail.summary_lines())
    state: State
    if summary.stopped_by:
        state = Cancelled(message=summary.stop_text(), data=summary)
    else:
        text = summary.counts_text() + (f"; {summary.checks_text()}" if summary.checks else "")
        state = Completed(message=text, data=summary) if summary.all_done else failed("RowsNotDone", text, summary)
    summary.extra["audit_chain_head"] = trail.finish(state, summary.rows, summary.counts, summary.results_path)
    trail.write_copy(out_dir)
    publish(summary)
    try:  # what the alerts and the retry-failed deployment react to; never lose the run over it
        emit_run_finished(summary, results, retry)
    except Exception as exc:
        logger.warning("run-finished event not emitted: %s", exc)
    if summary.quota_exhausted:
        logger.warning("%s", summary.quota_text())
    return state


def _ended(trail: RunTrail, state: State, rows: int | None = None) -> State:
    """A run that ends before its results: its end in the audit trail, then its state."""
    trail.finish(state, rows, None, None)
    return state
