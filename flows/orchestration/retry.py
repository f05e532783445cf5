"""The flow `retry-failed`: send again, without a person, the rows a run left failed for a transient reason.

The `retry-failed` deployment (prefect.yaml) is started by the `invoice-sync.run.finished` event
of a run that left such rows (label `invoice-sync.transient-left`), one trigger per round, each
with its own delay (`schedule_after`). A round reads those rows from the ledger (it holds what was
sent: decision, invoice_number, void_date), writes them as a decision file into a results folder
of its own beside the retried run's (`<folder>-retry-<round>`, with `retry.json` naming the run it
retries) and runs `invoice-sync` on it as a subflow, which emits its own run-finished event: the
next round's trigger, or, after the last round, the alert of what is still failing. Permanent
failures are not in the ledger as transient, so they are never sent again here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed

from connectors.vocabulary import PAYLOAD_SEPARATOR
from flows.orchestration.sync import DEFAULT_CHUNK_SIZE, sync_decisions
from flows.pipeline.files import atomic_write
from flows.state.ledger import Ledger

RETRY_FILE = "retried-decisions.csv"
DEFAULT_RESULTS_ROOT = "data/results"


@task(cache_policy=NO_CACHE)
def transient_rows(run_id: str) -> pd.DataFrame:
    """The ledger's rows that run `run_id` left failed for a transient reason, as a decision file."""
    ledger = Ledger.open()
    try:
        found = ledger.transient_failures(run_id)
    finally:
        ledger.close()
    return decisions_from_ledger(found)


def decisions_from_ledger(rows: pd.DataFrame) -> pd.DataFrame:
    """Ledger rows -> the decision file columns: the payload split back into what was sent."""
    parts = rows["payload"].astype(str).str.split(PAYLOAD_SEPARATOR)
    return pd.DataFrame(
        {
            "invoice_id": rows["invoice_id"].astype(str),
            "vendor": rows["vendor"].astype(str),
            "decision": parts.str[0],
            "invoice_number": parts.map(lambda p: PAYLOAD_SEPARATOR.join(p[1:-1])),
            "void_date": parts.str[-1],
            "last_error": rows["error_code"].astype("string"),
        }
    )


def retry_folder(results_dir: str | None, run_id: str, round_: int) -> Path:
    """`<retried run's results folder>-retry-<round>` (the original's, not the previous round's, name)."""
    if not results_dir or results_dir == "None":
        return Path(DEFAULT_RESULTS_ROOT) / f"retry-{run_id}-{round_}"
    base = re.sub(r"-retry-\d+$", "", str(Path(results_dir)))
    return Path(f"{base}-retry-{round_}")


@flow(name="retry-failed", log_prints=False)
def retry_failed(
    run_id: str,
    results_dir: str | None = None,
    round: int = 1,
    rounds: int = 3,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    settings_from_blocks: bool = True,
):
    """Send again the rows `run_id` left failed for a transient reason: round `round` of `rounds`."""
    logger = get_run_logger()
    frame = transient_rows(run_id)
    if frame.empty:
        return Completed(message=f"nothing to retry: run {run_id} left no transient failure in the ledger")
    folder = retry_folder(results_dir, run_id, round)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RETRY_FILE
    atomic_write(path, lambda p: frame.to_csv(p, index=False))
    link = {"retries_run": run_id, "retried_results": results_dir, "round": round, "rounds": rounds}
    atomic_write(folder / "retry.json", lambda p: Path(p).write_text(json.dumps(link, indent=2)))
    logger.info(
        "round %d of %d: %d rows of run %s sent again, results in %s", round, rounds, len(frame), run_id, folder
    )
    state = sync_decisions.with_options(flow_run_name=f"invoice-sync retry {round} of {run_id}")(
        str(path),
        out_dir=str(folder),
        chunk_size=chunk_size,
        show_progress=False,
        settings_from_blocks=settings_from_blocks,
        retry_round=round,
        retry_rounds=rounds,
        retries_run=run_id,
        return_state=True,
    )
    message = f"round {round} of {rounds} of run {run_id}: {state.message or state.name} ({folder})"
    if state.is_completed():
        return Completed(message=message)
    return Failed(name=state.name or "Failed", message=message)
