"""The results dataset: one row per input row, written atomically, and its summary."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from connectors.base import Outcome
from connectors.transport import RowResult
from flows.planning import Plan

LEAD_COLUMNS = ["row_number", "invoice_id", "vendor", "decision"]
RESULT_COLUMNS = [
    "outcome",
    "http_status",
    "error_code",
    "vendor_error_code",
    "error_message",
    "attempts",
    "finished_at",
    "run_id",
    "previous_run_id",
]


@dataclass
class RunSummary:
    """Counts a person (and the CLI's exit code) needs after a run."""

    run_id: str
    source: str
    rows: int
    counts: dict[str, int]  # outcome -> rows
    by_vendor: dict[str, dict[str, int]]  # vendor -> outcome -> rows
    top_errors: dict[str, list[tuple[str, int]]]  # vendor -> [(error_code, rows)]
    results_path: str | None = None
    csv_path: str | None = None
    dry_run: bool = False
    seconds: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def all_done(self) -> bool:
        """Every row succeeded or was skipped."""
        return self.counts.get("failed", 0) == 0 and self.counts.get("rejected", 0) == 0

    def counts_text(self) -> str:
        return ", ".join(f"{n} {o}" for o, n in self.counts.items() if n) or "no rows"


def assemble_results(
    frame: pd.DataFrame, plan: Plan, sent: Iterable[RowResult], run_id: str, *, dry_run: bool = False
) -> pd.DataFrame:
    """Join planned and sent outcomes into one frame, one row per input row, in file order."""
    n = len(frame)
    outcome = plan.outcome.copy()
    error_code = plan.error_code.copy()
    message = plan.error_message.copy()
    http_status = np.full(n, None, dtype=object)
    vendor_code = np.full(n, None, dtype=object)
    attempts = np.zeros(n, dtype=np.int64)
    finished = np.full(n, None, dtype=object)
    now = datetime.now(timezone.utc)

    position = dict(zip(frame["row_number"].tolist(), range(n)))
    for r in sent:
        i = position[r.row_number]
        outcome[i] = r.outcome.value
        error_code[i] = r.error_code.value if r.error_code else None
        message[i] = r.error_message
        http_status[i] = r.http_status
        vendor_code[i] = r.vendor_error_code
        attempts[i] = r.attempts
        finished[i] = r.finished_at

    unsent = outcome == None  # noqa: E711 - rows planned for sending that produced no result
    if unsent.any():
        if dry_run:
            outcome[unsent] = Outcome.SKIPPED.value
            message[unsent] = "dry run: would be sent"
        else:  # never silently lost: a row with no answer is a failure, said loudly
            outcome[unsent] = Outcome.FAILED.value
            message[unsent] = "no result was recorded for this row"
    finished = np.where(finished == None, now, finished)  # noqa: E711

    result = frame[LEAD_COLUMNS].copy()
    result["outcome"] = pd.array(outcome, dtype="string")
    result["http_status"] = pd.array(http_status, dtype="Int64")
    result["error_code"] = pd.array(error_code, dtype="string")
    result["vendor_error_code"] = pd.array(vendor_code, dtype="string")
    result["error_message"] = pd.array(message, dtype="string")
    result["attempts"] = attempts
    result["finished_at"] = pd.to_datetime(pd.Series(finished, index=result.index), utc=True)
    result["run_id"] = pd.array([run_id] * n, dtype="string")
    previous = plan.previous_run_id if plan.previous_run_id is not None else np.full(n, None, dtype=object)
    result["previous_run_id"] = pd.array(previous, dtype="string")
    passthrough = [c for c in frame.columns if c not in LEAD_COLUMNS]
    return pd.concat([result, frame[passthrough]], axis=1)


def write_results(results: pd.DataFrame, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write results.parquet and results.csv atomically: a crash never leaves a complete-looking file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parquet_path, csv_path = out / "results.parquet", out / "results.csv"
    _atomic_write(parquet_path, lambda p: results.to_parquet(p, index=False))
    _atomic_write(csv_path, lambda p: results.to_csv(p, index=False))
    return parquet_path, csv_path


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summarize(results: pd.DataFrame, run_id: str, source: str, *, dry_run: bool = False) -> RunSummary:
    """Counts by outcome and by vendor, and each vendor's most frequent error codes."""
    order = [o.value for o in Outcome]
    counts = results["outcome"].value_counts()
    by_vendor: dict[str, dict[str, int]] = {}
    top: dict[str, list[tuple[str, int]]] = {}
    vendor_col = results["vendor"].fillna("(none)")
    for vendor, part in results.groupby(vendor_col, sort=True):
        vc = part["outcome"].value_counts()
        by_vendor[str(vendor)] = {o: int(vc.get(o, 0)) for o in order}
        errors = Counter(part["error_code"].dropna().tolist())
        top[str(vendor)] = errors.most_common(3)
    return RunSummary(
        run_id=run_id,
        source=source,
        rows=len(results),
        counts={o: int(counts.get(o, 0)) for o in order},
        by_vendor=by_vendor,
        top_errors=top,
        dry_run=dry_run,
    )
