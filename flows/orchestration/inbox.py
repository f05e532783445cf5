"""The flow `process-inbox`: analysts drop decision files into a folder; each is processed once.

It claims the ready files (`flows.state.inbox_folder`), runs `sync_decisions` as a subflow
on each, and moves each file to processed/ or rejected/.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed

from connectors.registry import UnknownVendor, parse_vendors
from flows.orchestration.approval import NOT_APPROVED_STATES
from flows.orchestration.final_states import failed
from flows.orchestration.stopping import RunStop, stop_on_signals
from flows.orchestration.sync import DEFAULT_CHUNK_SIZE, sync_decisions
from flows.pipeline.files import one_line
from flows.pipeline.results import NEEDS_ATTENTION_CSV, NEEDS_ATTENTION_WORKBOOK
from flows.pipeline.workbook_reader import WORKBOOK_SUFFIXES
from flows.state.inbox_folder import (
    DEFAULT_SETTLE_SECONDS,
    InboxLayout,
    claim_ready,
    finish,
    new_claim_token,
    put_back,
    ready_files,
    release_orphans,
    results_dir,
    stamp,
)

# A subflow state name -> what happens to its file.
PROCESSED_STATES = ("Completed", "RowsNotDone")
UNUSABLE_STATE = "UnusableFile"


def _run_is_finished(token: str) -> bool:
    """Whether the flow run that made a claim is over (unknown runs count as over)."""
    if token.startswith("local-"):
        return False  # a run without an API: only a person can tell; see docs/operations.md
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        run_id = uuid.UUID(token)
    except ValueError:
        return False
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:
            return True
    return run.state is not None and run.state.is_final()


def run_name() -> str:
    """The flow run's name at its start: `inbox data/inbox`; `_rename_run` adds the files taken."""
    parameters = flow_run.parameters
    return f"inbox {parameters.get('inbox', 'data/inbox')}" + (" (dry run)" if parameters.get("dry_run") else "")


def _rename_run(logger, what: str) -> None:
    """`inbox data/inbox: 2 files`: the run's name says how much it took, in the runs list too."""
    run_id = flow_run.get_id()
    if not run_id:
        return
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_name(uuid.UUID(str(run_id)), f"{run_name()}: {what}")
    except Exception as error:  # a name is worth a warning, never the run
        logger.warning("could not rename the flow run: %s", one_line(error))


@flow(name="process-inbox", flow_run_name=run_name, log_prints=False)
def process_inbox(
    inbox: str = "data/inbox",
    dry_run: bool = False,
    vendors: list[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    max_files: int | None = None,
    settings_from_blocks: bool = True,
    processed_dir: str | None = None,
    rejected_dir: str | None = None,
    results_root: str | None = None,
    check_vendors: bool = False,
    sheet: str | None = None,
    submitted_by: str | None = None,
):
    """Process every ready file in `inbox` once: claim, sync, then move to processed/ or rejected/.

    `sheet` names the worksheet read from each Excel workbook (default: its first); CSV and
    Parquet files have none. A processed file some of whose rows need a person gets a
    `<name>.reason.txt` beside it naming its needs_attention.xlsx.

    Final state: Completed when every file's rows all succeeded or were skipped (or there was
    nothing to do); otherwise Failed, named `RowsNotDone` when some file had rows not done, or
    `FilesRejected` when files were rejected; the message names each file and its counts.
    A dry run reads, validates and plans each file, writes its results, sends nothing, and
    puts the file back into the inbox; with `check_vendors` it also reads each invoice that
    would be sent at its vendor (the preview of `invoice-sync run --dry-run --check-vendors`).
    Cancelled (a worker's SIGTERM, or SIGINT): the file being sent stops as `invoice-sync` does
    and goes to rejected/ (to be dropped in again), files not started go back into the inbox,
    and the run ends `Cancelled` naming each.
    `submitted_by` (who submitted the files, for the audit trail) may never approve them
    (`INVOICE_SYNC_APPROVAL`); a file rejected or not approved in time goes to rejected/ with the reason.
    """
    with stop_on_signals() as stop:
        return _process_inbox(
            inbox,
            dry_run,
            vendors,
            chunk_size,
            settle_seconds,
            max_files,
            settings_from_blocks,
            processed_dir,
            rejected_dir,
            results_root,
            check_vendors,
            stop,
            sheet,
            submitted_by,
        )


def _process_inbox(
    inbox: str,
    dry_run: bool,
    vendors: list[str] | None,
    chunk_size: int,
    settle_seconds: float,
    max_files: int | None,
    settings_from_blocks: bool,
    processed_dir: str | None,
    rejected_dir: str | None,
    results_root: str | None,
    check_vendors: bool,
    stop: RunStop,
    sheet: str | None,
    submitted_by: str | None = None,
):
    logger = get_run_logger()
    try:
        vendors = parse_vendors(vendors)
    except UnknownVendor as error:
        return failed("BadParameters", str(error))
    if chunk_size < 1:
        return failed("BadParameters", "chunk_size must be at least 1")
    layout = InboxLayout.of(inbox, processed_dir, rejected_dir, results_root)
    layout.create()

    for path in release_orphans(layout, _run_is_finished):
        logger.warning("put back into the inbox (its run ended without finishing it): %s", path.name)
    ready, settling = ready_files(layout.inbox, settle_seconds)
    if settling:
        logger.info("still being written, left for the next run: %s", ", ".join(settling))
    token = new_claim_token(str(flow_run.get_id() or "") or None)
    claimed = claim_ready(layout, ready, token, max_files)
    _rename_run(logger, f"{len(claimed)} file{'' if len(claimed) == 1 else 's'}" if claimed else "no file ready")
    if not claimed:
        return Completed(
            message=f"no file ready in {layout.inbox}" + (f" ({len(settling)} still being written)" if settling else "")
        )
    logger.info("claimed %d file(s): %s", len(claimed), ", ".join(p.name for p in claimed))

    rows: list[dict[str, object]] = []
    for path in claimed:
        if stop.is_set():  # not started: back into the inbox, as if never claimed
            moved = put_back(layout, path)
            row: dict[str, object] = {"file": path.name, "outcome": "put back, not started", "state": "NotStarted"}
            rows.append(row | {"detail": stop.reason, "moved to": str(moved), "results": "", "needs attention": ""})
            continue
        rows.append(
            _process_one(
                layout,
                inbox,
                path,
                dry_run,
                vendors,
                chunk_size,
                settings_from_blocks,
                logger,
                check_vendors,
                sheet,
                submitted_by,
            )
        )

    create_table_artifact(rows, key="invoice-sync-inbox", description=f"Files taken from {layout.inbox}")
    text = "; ".join(f"{r['file']}: {r['outcome']} ({r['detail']})" for r in rows)
    if stop.is_set():
        return Cancelled(message=f"{stop.reason}: {text}", data=rows)
    if all(r["state"] == "Completed" for r in rows):
        return Completed(message=text, data=rows)
    name = "RowsNotDone" if any(r["state"] == "RowsNotDone" for r in rows) else "FilesRejected"
    return failed(name, text, rows)


def _process_one(
    layout: InboxLayout,
    inbox: str,
    path: Path,
    dry_run,
    vendors,
    chunk_size,
    settings_from_blocks,
    logger,
    check_vendors=False,
    sheet=None,
    submitted_by=None,
) -> dict:
    """Run the sync subflow on one claimed file and move it on; one row for the inbox table."""
    when = stamp()
    out = results_dir(layout, path, when)
    source = str(Path(inbox) / path.name)  # where it was dropped, not its claim folder
    try:
        state = sync_decisions(
            str(path),
            out_dir=str(out),
            dry_run=dry_run,
            vendors=vendors,
            chunk_size=chunk_size,
            show_progress=False,
            settings_from_blocks=settings_from_blocks,
            check_vendors=check_vendors,
            sheet=sheet if path.suffix.lower() in WORKBOOK_SUFFIXES else None,
            source_name=source,
            submitted_by=submitted_by,
            return_state=True,
        )
        name, message = state.name, state.message or ""
    except Exception as error:  # the subflow could not even start: the file must not be lost
        state, name, message = None, "Crashed", f"{type(error).__name__}: {error}"
    message = message.replace(str(path), path.name).replace(source, path.name)  # this table names the file

    attention = _attention(out) if name in PROCESSED_STATES else None
    if name in PROCESSED_STATES and dry_run:  # a rehearsal: nothing sent, so the file stays to be sent
        moved = put_back(layout, path)
        outcome = "previewed (dry run, left in the inbox)"
    elif name in PROCESSED_STATES:
        moved = finish(layout, path, when=when, attention=attention)
        outcome = "processed"
    else:
        if name == UNUSABLE_STATE:
            reason = f"unusable file: {message}"
        elif name in NOT_APPROVED_STATES:
            reason = f"not approved ({name}): {message}. Drop the file into the inbox again to ask anew."
        else:
            reason = (
                f"the run did not finish ({name}: {message}). Nothing is lost: drop the file into the "
                "inbox again to retry; rows a vendor already accepted are not sent twice."
            )
        moved = finish(layout, path, rejected_because=reason, when=when)
        outcome = "rejected"
        logger.warning("%s rejected: %s", path.name, reason)
    if not any(out.iterdir()):
        out.rmdir()  # nothing was written (an unusable file): no empty results folder
    return {
        "file": path.name,
        "outcome": outcome,
        "state": name,
        "detail": message,
        "moved to": str(moved),
        "results": str(out) if out.exists() else "",
        "needs attention": attention or "",
    }


def _attention(out: Path) -> str | None:
    """What the reason file says of rows that need a person: their file, and what to do with it."""
    found = [out / name for name in (NEEDS_ATTENTION_WORKBOOK, NEEDS_ATTENTION_CSV) if (out / name).exists()]
    if not found:
        return None
    return (
        f"The rows that were rejected or refused by the vendor are in {found[0]}, each with its "
        "error_code and reason. Fix them there and drop that file into the inbox as it is: the "
        "other rows are done and are not sent again."
    )
