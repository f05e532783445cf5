"""The results dataset: one row per input row, written atomically, and its summary."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
from pandas.core.arrays.integer import IntegerDtype

from connectors.vocabulary import ErrorCode, Outcome, RowResult
from flows.pipeline.files import atomic_write
from flows.pipeline.planning import Plan

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


NEEDS_ATTENTION = (Outcome.FAILED.value, Outcome.REJECTED.value)  # the outcomes a person must act on
NEEDS_ATTENTION_LISTED = 300  # rows of them a summary carries (the terminal, the Prefect UI); all are in the files
NEEDS_ATTENTION_COLUMNS = ["row_number", "invoice_id", "vendor", "decision", "outcome", "error_code", "error_message"]


@dataclass
class RunSummary:
    """Counts a person (and the CLI's exit code) needs after a run."""

    run_id: str
    source: str  # the file as a person knows it (for the inbox: where it was dropped)
    rows: int
    counts: dict[str, int]  # outcome -> rows
    by_vendor: dict[str, dict[str, int]]  # vendor -> outcome -> rows
    results_path: str | None = None
    csv_path: str | None = None
    dry_run: bool = False
    seconds: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)  # error_code -> rows, most frequent first
    codes_by_vendor: dict[str, dict[str, int]] = field(default_factory=dict)  # vendor -> error_code -> rows
    needs_attention: list[dict[str, object]] = field(default_factory=list)  # the first failed/rejected rows
    reported_again: int = 0  # permanent failures of an earlier run reported again without a call
    needs_attention_path: str | None = None  # a file of only the rows that need a person, when one is written

    @property
    def all_done(self) -> bool:
        """Every row succeeded or was skipped."""
        return self.counts.get("failed", 0) == 0 and self.counts.get("rejected", 0) == 0

    @property
    def needs_attention_count(self) -> int:
        """Rows failed or rejected: each needs a person."""
        return sum(self.counts.get(o, 0) for o in NEEDS_ATTENTION)

    @property
    def file_name(self) -> str:
        return Path(self.source).name

    def counts_text(self) -> str:
        return ", ".join(f"{n} {outcome_label(o)}" for o, n in self.counts.items() if n) or "no rows"

    def notes(self) -> list[str]:
        """What a person should know beyond the counts, one line each (`code` in backticks): rows an
        earlier run already did or a vendor already had, and how to send them again."""
        said: list[str] = []
        done = self.codes.get(ErrorCode.ALREADY_DONE.value, 0)
        if done:
            said.append(
                f"{rows_text(done, 'was', 'were')} already done by an earlier run (`ALREADY_DONE`) and not sent "
                f"again; to send {_them(done)} again, start from a fresh ledger (`INVOICE_SYNC_STATE_DIR` set to "
                f"another folder). This run's ledger: `{self.extra.get('ledger', 'data/state/ledger.sqlite')}`."
            )
        if self.reported_again:
            said.append(
                f"{rows_text(self.reported_again, 'was', 'were')} refused for good in an earlier run and "
                f"reported again without a call; `invoice-sync run --retry-failed` sends {_them(self.reported_again)} "
                "again."
            )
        already = self.codes.get(ErrorCode.ALREADY_IN_STATE.value, 0)
        if already:
            said.append(
                f"{rows_text(already, 'was', 'were')} already in that state at the vendor (`ALREADY_IN_STATE`): "
                "nothing changed there; counted as succeeded."
            )
        return said


def _them(n: int) -> str:
    return "it" if n == 1 else "them"


def rows_text(n: int, singular_verb: str = "", plural_verb: str = "") -> str:
    """`1 row was`, `2,000 rows were`."""
    return f"{n:,} row {singular_verb}".rstrip() if n == 1 else f"{n:,} rows {plural_verb}".rstrip()


def outcome_label(outcome: str) -> str:
    """An outcome as a person reads it: `would_send` is "would send"."""
    return outcome.replace("_", " ")


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
    now = datetime.now(UTC)

    position = dict(zip(frame["row_number"].tolist(), range(n), strict=True))
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
            outcome[unsent] = Outcome.WOULD_SEND.value
            message[unsent] = "dry run: would be sent"
        else:  # never silently lost: a row with no answer is a failure, said loudly
            outcome[unsent] = Outcome.FAILED.value
            message[unsent] = "no result was recorded for this row"
    # np.asarray(now): the 0-d object array np.where itself would make of the datetime.
    finished = np.where(finished == None, np.asarray(now), finished)  # noqa: E711

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
    atomic_write(parquet_path, lambda p: results.to_parquet(p, index=False))
    atomic_write(csv_path, lambda p: _write_csv(results, p))
    return parquet_path, csv_path


# -- results.csv, fast --------------------------------------------------------------------------
# `results.to_csv(path, index=False)` is slow for a million rows (most of it formatting the
# zone-aware finished_at one Timestamp at a time). `_write_csv` writes the bytes pandas would
# write for the frame with its UTC times cut to whole seconds (`_in_seconds`), built column by
# column in Arrow: the same quoting (csv.QUOTE_MINIMAL: a field is quoted when it holds a
# character below, quotes doubled), NA as an empty field, "\n" line ends. A column of any other
# dtype (floats, bools, objects) makes it hand the whole frame to pandas, times cut the same way.


def _csv_specials() -> str:
    """The characters that make Python's csv writer (as pandas drives it) quote a field."""
    import csv
    import io

    found = ""
    for char in ',"\n\r':
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_MINIMAL).writerow(["a", f"x{char}y"])
        if buffer.getvalue().startswith('a,"'):
            found += char
    return found


_CSV_SPECIALS = _csv_specials()


def _write_csv(results: pd.DataFrame, path: str | os.PathLike, rows_per_write: int = 250_000) -> None:
    import csv
    import io
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.compute as pc

    # No rows, or one column (csv quotes an empty single field): nothing to gain, pandas writes it.
    if not len(results) or results.shape[1] < 2:
        _in_seconds(results).to_csv(path, index=False)
        return

    def column_cells(name: str):  # a def, not a lambda: with `name: str`, results[name] types as a Series
        return _csv_column(results[name])

    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:  # Arrow kernels release the GIL
        columns = list(pool.map(column_cells, results.columns))
    if any(column is None for column in columns):
        _in_seconds(results).to_csv(path, index=False, chunksize=200_000)
        return
    header = io.StringIO()
    csv.writer(header, lineterminator="\n", quoting=csv.QUOTE_MINIMAL).writerow([str(c) for c in results.columns])
    comma, nothing, newline = (pa.scalar(t, pa.large_string()) for t in (",", "", "\n"))
    with open(path, "wb") as out:
        out.write(header.getvalue().encode("utf-8"))
        for start in range(0, len(results), rows_per_write):  # a slice at a time: less memory at once
            part = [column.slice(start, rows_per_write) for column in columns]
            rows = pc.binary_join_element_wise(*part, comma, null_handling="replace", null_replacement="")
            rows = pc.binary_join_element_wise(rows, nothing, newline)
            offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)[rows.offset : rows.offset + len(rows) + 1]
            out.write(memoryview(rows.buffers()[2])[int(offsets[0]) : int(offsets[-1])])


def _in_seconds(results: pd.DataFrame) -> pd.DataFrame:
    """The frame with its UTC datetime columns cut to whole seconds, as results.csv shows them."""
    utc = [c for c, dtype in results.dtypes.items() if isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC"]
    return results.assign(**{str(c): results[c].dt.floor("s") for c in utc}) if utc else results


def _csv_column(column: pd.Series):
    """One column as Arrow large_string cells ready to join (None: not a dtype handled here)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    dtype = column.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC":
        return _utc_text(column)
    is_int = isinstance(dtype, np.dtype) and dtype.kind in "iu"
    if not (isinstance(dtype, pd.StringDtype) or is_int or isinstance(dtype, IntegerDtype)):
        return None
    values = pa.array(column)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = pc.cast(values, pa.large_string())
    if not isinstance(dtype, pd.StringDtype) or not _CSV_SPECIALS:
        return values
    special = "[" + "".join({"\n": "\\n", "\r": "\\r"}.get(c, c) for c in _CSV_SPECIALS) + "]"
    needs_quotes = pc.match_substring_regex(values, special)
    if not pc.any(needs_quotes).as_py():
        return values
    quote = pa.scalar('"', pa.large_string())
    quoted = pc.binary_join_element_wise(
        quote, pc.replace_substring(values, '"', '""'), quote, pa.scalar("", pa.large_string())
    )
    return pc.if_else(needs_quotes, quoted, values)


def _utc_text(column: pd.Series):
    """A UTC datetime column as people read it in a spreadsheet: whole seconds, "+00:00", NaT as
    empty ("2026-11-30 18:00:05+00:00"; the fraction is cut, not rounded; the Parquet keeps it).

    Built as fixed-width bytes: each distinct second is formatted once (a run spans minutes).
    None when a date does not print as 19 characters.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    stamps = column.dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
    missing = np.isnat(stamps)
    ticks = np.where(missing, 0, stamps.view(np.int64))
    distinct, which = np.unique(ticks // 1_000_000, return_inverse=True)
    names = np.strings.replace(np.datetime_as_string(distinct.astype("datetime64[s]"), unit="s"), "T", " ")
    if np.strings.str_len(names).min() != 19 or np.strings.str_len(names).max() != 19:
        return None
    parts = [np.frombuffer(names.astype("S19").tobytes(), np.uint8).reshape(-1, 19)[which]]
    parts.append(np.frombuffer(b"+00:00", np.uint8)[None, :].repeat(len(ticks), axis=0))
    cells = np.ascontiguousarray(np.concatenate(parts, axis=1))
    width = cells.shape[1]
    offsets = np.arange(0, width * len(ticks) + 1, width, dtype=np.int64)
    text = pa.LargeStringArray.from_buffers(len(ticks), pa.py_buffer(offsets), pa.py_buffer(cells))
    if missing.any():
        text = pc.if_else(pa.array(missing), pa.scalar(None, pa.large_string()), text)
    return text


def summarize(results: pd.DataFrame, run_id: str, source: str, *, dry_run: bool = False) -> RunSummary:
    """Counts by outcome, vendor and error code, and the first rows that need a person."""
    counts = results["outcome"].value_counts()
    # The outcomes a summary shows: `would_send` only where it can happen, in a dry run.
    order = [o.value for o in Outcome if o is not Outcome.WOULD_SEND or dry_run or counts.get(o.value, 0)]
    by_vendor: dict[str, dict[str, int]] = {}
    codes_by_vendor: dict[str, dict[str, int]] = {}
    vendor_col = results["vendor"].fillna("(none)")
    for vendor, part in results[["outcome", "error_code"]].groupby(vendor_col, sort=True):  # only what is counted
        vc = part["outcome"].value_counts()
        by_vendor[str(vendor)] = {o: int(vc.get(o, 0)) for o in order}
        errors = Counter(part["error_code"].dropna().tolist())
        codes_by_vendor[str(vendor)] = dict(errors.most_common())
    codes = {str(code): int(n) for code, n in results["error_code"].value_counts().items()}
    attention = np.flatnonzero(results["outcome"].isin(NEEDS_ATTENTION).to_numpy(dtype=bool))
    listed = results.iloc[attention[:NEEDS_ATTENTION_LISTED]][NEEDS_ATTENTION_COLUMNS].astype(object)
    reported_again = (results["outcome"] == Outcome.FAILED.value) & results["previous_run_id"].notna()
    return RunSummary(
        run_id=run_id,
        source=source,
        rows=len(results),
        counts={o: int(counts.get(o, 0)) for o in order},
        by_vendor=by_vendor,
        dry_run=dry_run,
        codes=codes,
        codes_by_vendor=codes_by_vendor,
        needs_attention=cast("list[dict[str, object]]", listed.where(listed.notna(), None).to_dict("records")),
        reported_again=int(reported_again.sum()),
    )
