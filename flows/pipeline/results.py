"""The results dataset: one row per input row, written atomically, and its summary.

Beside results.parquet (every value exactly as read and as answered) go results.csv (for
scripts, made safe to open in a spreadsheet: see `spreadsheet_safe`), results.xlsx (for people:
see `write_results_workbook`), and, when some rows need a person, needs_attention.csv and
needs_attention.xlsx: those rows in the input file's own columns, ready to be fixed and dropped
back into the inbox.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
from pandas.core.arrays.integer import IntegerDtype

from connectors.vocabulary import ErrorCode, Outcome, RowResult, VendorCheck, WouldChange
from flows.pipeline.files import atomic_write
from flows.pipeline.planning import Plan
from flows.pipeline.reader import ROW_NUMBER
from flows.pipeline.workbook_writer import DataSheet, Kind, Mark, TableSheet, fits_in_a_sheet, write_workbook

LEAD_COLUMNS = ["row_number", "invoice_id", "vendor", "decision"]
RESULT_COLUMNS = [
    "outcome",
    "http_status",
    "error_code",
    "vendor_error_code",
    "vendor_reference",
    "error_message",
    "attempts",
    "finished_at",
    "run_id",
    "previous_run_id",
    "vendor_state",
    "would_change",
]
RESULTS_WORKBOOK = "results.xlsx"
NEEDS_ATTENTION_CSV = "needs_attention.csv"
NEEDS_ATTENTION_WORKBOOK = "needs_attention.xlsx"
ATTENTION_COLUMNS = ["error_code", "reason"]  # after the input file's own columns
# What a person must fix in the row (or decide) before it can go: the rules it broke, the
# vendor's "no such invoice" or "refused". Not: the transient failures a later run sends again
# by itself (RETRIES_EXHAUSTED, RATE_LIMITED, AUTH_FAILED, BAD_RESPONSE: the ledger's
# TRANSIENT_CODES, INTERRUPTED among them), CONFIG_MISSING (the vendor's settings, not the row:
# run the file again once they are fixed), and skipped rows (DUPLICATE_ROW, ALREADY_DONE,
# IN_PROGRESS: nothing to do, or another run is sending it).
NEEDS_ATTENTION_CODES = frozenset(
    {ErrorCode.INVALID_ROW, ErrorCode.CONFLICTING_ROWS, ErrorCode.NOT_FOUND, ErrorCode.VENDOR_REJECTED}
)


NEEDS_ATTENTION = (Outcome.FAILED.value, Outcome.REJECTED.value)  # the outcomes of the rows a person must act on
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
    workbook_path: str | None = None  # results.xlsx
    no_workbook_because: str | None = None  # why there is no results.xlsx (too big for Excel)
    needs_attention_paths: list[str] = field(default_factory=list)  # the .xlsx (if it fits), then the .csv
    dry_run: bool = False
    seconds: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)
    # A preview that asked the vendors (`--check-vendors`): would_change -> rows, overall and per vendor.
    checks: dict[str, int] | None = None
    checks_by_vendor: dict[str, dict[str, int]] = field(default_factory=dict)
    stopped_by: str | None = None  # "SIGINT" / "SIGTERM": the run was stopped before it was done
    sent: int = 0  # rows whose request went out in this run
    not_sent: int = 0  # rows the stop kept from being sent (INTERRUPTED, attempts 0)
    codes: dict[str, int] = field(default_factory=dict)  # error_code -> rows, most frequent first
    codes_by_vendor: dict[str, dict[str, int]] = field(default_factory=dict)  # vendor -> error_code -> rows
    # The rows a person must fix or decide (NEEDS_ATTENTION_CODES): outcome -> rows, and the first of them.
    needs_attention_counts: dict[str, int] = field(default_factory=dict)
    needs_attention: list[dict[str, object]] = field(default_factory=list)
    reported_again: int = 0  # permanent failures of an earlier run reported again without a call

    def stop_text(self) -> str:
        """What a stopped run says: rows sent, rows not sent, then the counts."""
        return f"stopped by {self.stopped_by}: {self.sent} rows sent, {self.not_sent} not sent; {self.counts_text()}"

    @property
    def all_done(self) -> bool:
        """Every row succeeded or was skipped."""
        return self.counts.get("failed", 0) == 0 and self.counts.get("rejected", 0) == 0

    @property
    def needs_attention_count(self) -> int:
        """Rows a person must fix or decide (failed or rejected with a NEEDS_ATTENTION_CODES code)."""
        return sum(self.needs_attention_counts.values())

    @property
    def needs_attention_path(self) -> str | None:
        """The file of those rows to fix and drop back (the workbook if it fits, else the CSV)."""
        return self.needs_attention_paths[0] if self.needs_attention_paths else None

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

    def top_codes(self, vendor: str, n: int = 3) -> list[tuple[str, int]]:
        """A vendor's `n` most frequent error codes, with their rows."""
        return list(self.codes_by_vendor.get(vendor, {}).items())[:n]

    def checks_text(self, vendor: str | None = None) -> str:
        """ "would change N, already done M, not found K, unknown U" (empty without a preview)."""
        counts = self.checks if vendor is None else self.checks_by_vendor.get(vendor)
        return "" if counts is None else preview_text(counts)

    def attention_text(self) -> str:
        """One line naming the needs-attention file, or "" when no row needs a person."""
        total = self.needs_attention_count
        if not total or not self.needs_attention_path:
            return ""
        return f"{rows_text(total, 'needs', 'need')} attention: {self.needs_attention_path}"


def _them(n: int) -> str:
    return "it" if n == 1 else "them"


def rows_text(n: int, singular_verb: str = "", plural_verb: str = "") -> str:
    """`1 row was`, `2,000 rows were`."""
    return f"{n:,} row {singular_verb}".rstrip() if n == 1 else f"{n:,} rows {plural_verb}".rstrip()


def outcome_label(outcome: str) -> str:
    """An outcome as a person reads it: `would_send` is "would send"."""
    return outcome.replace("_", " ")


def preview_text(counts: dict[str, int]) -> str:
    """What a preview found, in the words a month-end operator reads."""
    words = {
        WouldChange.YES: "would change",
        WouldChange.NO: "already done",
        WouldChange.NOT_FOUND: "not found",
        WouldChange.UNKNOWN: "unknown",
    }
    return ", ".join(f"{words[w]} {counts.get(w.value, 0)}" for w in WouldChange)


def assemble_results(
    frame: pd.DataFrame,
    plan: Plan,
    sent: Iterable[RowResult],
    run_id: str,
    *,
    dry_run: bool = False,
    checks: Iterable[VendorCheck] | None = None,
) -> pd.DataFrame:
    """Join planned and sent outcomes into one frame, one row per input row, in file order.

    `checks`: a preview's reads of the rows a dry run would send (`vendor_state`, `would_change`).
    """
    n = len(frame)
    outcome = plan.outcome.copy()
    error_code = plan.error_code.copy()
    message = plan.error_message.copy()
    http_status = np.full(n, None, dtype=object)
    vendor_code = np.full(n, None, dtype=object)
    reference = plan.vendor_reference.copy() if plan.vendor_reference is not None else np.full(n, None, dtype=object)
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
        reference[i] = r.vendor_reference
        attempts[i] = r.attempts
        finished[i] = r.finished_at

    unsent = outcome == None  # noqa: E711 - rows planned for sending that produced no result
    vendor_state = np.full(n, None, dtype=object)
    would_change = np.full(n, None, dtype=object)
    for c in checks or ():
        i = position[c.row_number]
        vendor_state[i], would_change[i] = c.vendor_state, c.would_change.value
        http_status[i], reference[i] = c.http_status, c.vendor_reference
        message[i] = f"dry run: would be sent; {c.message}" if c.message else "dry run: would be sent"
    if unsent.any():
        if dry_run:
            outcome[unsent] = Outcome.WOULD_SEND.value
            unread = unsent & (would_change == None)  # noqa: E711
            message[unread] = "dry run: would be sent"
            if checks is not None:  # a preview row whose read left no answer (its chunk crashed): say so
                would_change[unread] = WouldChange.UNKNOWN.value
                message[unread] = "dry run: would be sent; no read was recorded for this row"
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
    result["vendor_reference"] = pd.array(reference, dtype="string")
    result["error_message"] = pd.array(message, dtype="string")
    result["attempts"] = attempts
    result["finished_at"] = pd.to_datetime(pd.Series(finished, index=result.index), utc=True)
    result["run_id"] = pd.array([run_id] * n, dtype="string")
    previous = plan.previous_run_id if plan.previous_run_id is not None else np.full(n, None, dtype=object)
    result["previous_run_id"] = pd.array(previous, dtype="string")
    result["vendor_state"] = pd.array(vendor_state, dtype="string")
    result["would_change"] = pd.array(would_change, dtype="string")
    passthrough = [c for c in frame.columns if c not in LEAD_COLUMNS]
    return pd.concat([result, frame[passthrough].rename(columns=_beside(result.columns, passthrough))], axis=1)


def _beside(taken: pd.Index, passthrough: list[str]) -> dict[str, str]:
    """New names for input columns named like a result column (a needs-attention file dropped back
    carries an error_code): `input_error_code`, kept beside the run's own."""
    used = set(taken) | set(passthrough)
    renamed = {}
    for name in passthrough:
        if name in taken:
            new = f"input_{name}"
            while new in used:
                new = f"input_{new}"
            used.add(new)
            renamed[name] = new
    return renamed


def write_results(results: pd.DataFrame, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write results.parquet and results.csv atomically: a crash never leaves a complete-looking file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parquet_path, csv_path = out / "results.parquet", out / "results.csv"
    atomic_write(parquet_path, lambda p: results.to_parquet(p, index=False))
    atomic_write(csv_path, lambda p: _write_csv(spreadsheet_safe(results), p))
    return parquet_path, csv_path


def write_results_workbook(results: pd.DataFrame, summary: RunSummary, out_dir: str | os.PathLike) -> Path | None:
    """results.xlsx: the results for people, and a summary sheet; None (and the summary says why) when
    the rows do not fit in an Excel sheet."""
    path = Path(out_dir) / RESULTS_WORKBOOK
    summary.no_workbook_because = fits_in_a_sheet(len(results), results.shape[1])
    if summary.no_workbook_because:
        path.unlink(missing_ok=True)  # never leave an earlier run's workbook beside these results
        return None
    outcome = results["outcome"].to_numpy(dtype=object)
    marks = np.select(
        [outcome == Outcome.FAILED.value, outcome == Outcome.REJECTED.value], [Mark.FAILED, Mark.REJECTED], Mark.NONE
    )
    kinds = {
        "row_number": Kind.NUMBER,
        "http_status": Kind.NUMBER,
        "attempts": Kind.NUMBER,
        "finished_at": Kind.DATETIME,
    }
    sheets: list[DataSheet | TableSheet] = [DataSheet("results", results, kinds, marks), _summary_sheet(summary)]
    atomic_write(path, lambda p: write_workbook(p, sheets))
    summary.workbook_path = str(path)
    return path


def _summary_sheet(summary: RunSummary) -> TableSheet:
    """The counts per vendor and outcome, and each vendor's most frequent error codes."""
    outcomes = list(summary.counts)
    rows: list[list[str | int | float | None]] = [
        ["invoice-sync " + ("dry run" if summary.dry_run else "run"), summary.run_id],
        ["file", summary.source],
        ["rows", summary.rows],
        [],
        ["vendor", *outcomes, "total"],
    ]
    bold = {0, 4}
    for vendor, counts in summary.by_vendor.items():
        rows.append([vendor, *(counts.get(o, 0) for o in outcomes), sum(counts.values())])
    bold.add(len(rows))
    rows.append(["total", *(summary.counts.get(o, 0) for o in outcomes), summary.rows])
    rows += [[], ["vendor", "top error codes", "rows"]]
    bold.add(len(rows) - 1)
    for vendor in summary.codes_by_vendor:
        rows += [[vendor, code, count] for code, count in summary.top_codes(vendor)]
    if summary.no_workbook_because is None and summary.needs_attention_count:
        rows += [[], ["needs attention", summary.attention_text()]]
    return TableSheet("summary", rows, bold=bold, widths=[18.0, 40.0, *[11.0] * len(outcomes)])


def needs_attention_mask(results: pd.DataFrame) -> np.ndarray:
    """True for each result row a person must fix or decide (see NEEDS_ATTENTION_CODES)."""
    codes = [code.value for code in NEEDS_ATTENTION_CODES]
    wanted = results["outcome"].isin(NEEDS_ATTENTION) & results["error_code"].isin(codes)
    return wanted.fillna(False).to_numpy(dtype=bool)


def needs_attention(frame: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The rows a person must fix, in the input's own columns and order, then error_code and reason.

    `frame` is the input as read, `results` its results (same rows, same order). Columns named
    error_code or reason in the input (a needs-attention file dropped back) give way to the new ones.
    """
    chosen = needs_attention_mask(results)
    columns = [c for c in frame.columns if c != ROW_NUMBER and c not in ATTENTION_COLUMNS]
    attention = frame.loc[chosen, columns].reset_index(drop=True)
    attention["error_code"] = results.loc[chosen, "error_code"].reset_index(drop=True)
    attention["reason"] = results.loc[chosen, "error_message"].reset_index(drop=True)
    return attention


def write_needs_attention(
    attention: pd.DataFrame, summary: RunSummary, out_dir: str | os.PathLike, *, sheet: str | None = None
) -> list[Path]:
    """needs_attention.xlsx (if it fits in a sheet) and needs_attention.csv, only when some row needs a
    person; an earlier run's files in the same folder are removed when none does.

    `sheet` is the input workbook's sheet: the needs-attention sheet takes its name, so an inbox
    told to read that sheet reads the corrected file too.
    """
    out = Path(out_dir)
    workbook, csv_copy = out / NEEDS_ATTENTION_WORKBOOK, out / NEEDS_ATTENTION_CSV
    written: list[Path] = []
    if len(attention) and fits_in_a_sheet(len(attention), attention.shape[1]) is None:
        sheets = [DataSheet(sheet or "needs attention", attention)]
        atomic_write(workbook, lambda p: write_workbook(p, sheets))
        written.append(workbook)
    else:
        workbook.unlink(missing_ok=True)
    if len(attention):
        atomic_write(csv_copy, lambda p: _write_csv(spreadsheet_safe(attention), p))
        written.append(csv_copy)
    else:
        csv_copy.unlink(missing_ok=True)
    summary.needs_attention_paths = [str(p) for p in written]
    return written


# -- a CSV safe to open in a spreadsheet ----------------------------------------------------------
# OWASP, "CSV Injection": a cell that starts with = + - @, a tab or a carriage return may be run
# as a formula by Excel, LibreOffice or Google Sheets (=HYPERLINK(...) sends data elsewhere). Such
# a cell is written with a leading ' (a spreadsheet shows the text, not a formula); a number like
# -2.5 or +1 stays as it is. Texts from files and from vendors reach these files alike.

FORMULA_START = r"^[=+\-@\t\r]"
PLAIN_NUMBER = r"^[+-]?([0-9]+([.,][0-9]*)?|[.,][0-9]+)([eE][+-]?[0-9]+)?$"


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every text cell that a spreadsheet would run as a formula prefixed with '."""
    import pyarrow as pa
    import pyarrow.compute as pc

    changed: dict[str, pd.Series] = {}
    for name in frame.columns:
        column = frame[name]
        if not (isinstance(column.dtype, pd.StringDtype) or column.dtype == object):
            continue  # numbers and times never start a formula
        values = pa.array(column.astype("string"), from_pandas=True)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        values = pc.cast(values, pa.large_string())
        risky = pc.and_kleene(
            pc.match_substring_regex(values, FORMULA_START), pc.invert(pc.match_substring_regex(values, PLAIN_NUMBER))
        )
        if not pc.any(risky).as_py():
            continue
        quoted = pc.binary_join_element_wise(
            pa.scalar("'", pa.large_string()), values, pa.scalar("", pa.large_string())
        )
        safe = pc.if_else(pc.fill_null(risky, False), quoted, values)
        changed[str(name)] = pd.Series(pd.arrays.ArrowStringArray(safe), index=frame.index)
    safe_frame = frame.assign(**changed) if changed else frame
    names = [str(name) for name in frame.columns]
    risky_names = {n: f"'{n}" for n in names if re.match(FORMULA_START, n) and not re.match(PLAIN_NUMBER, n)}
    return safe_frame.rename(columns=risky_names) if risky_names else safe_frame


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


def summarize(
    results: pd.DataFrame, run_id: str, source: str, *, dry_run: bool = False, stopped_by: str | None = None
) -> RunSummary:
    """Counts by outcome, vendor and error code, the first rows that need a person, and a preview's findings."""
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
    wanted = needs_attention_mask(results)
    attention = np.flatnonzero(wanted)
    listed = results.iloc[attention[:NEEDS_ATTENTION_LISTED]][NEEDS_ATTENTION_COLUMNS].astype(object)
    by_outcome = results.loc[wanted, "outcome"].value_counts()
    reported_again = (results["outcome"] == Outcome.FAILED.value) & results["previous_run_id"].notna()
    summary = RunSummary(
        run_id=run_id,
        source=source,
        rows=len(results),
        counts={o: int(counts.get(o, 0)) for o in order},
        by_vendor=by_vendor,
        dry_run=dry_run,
        stopped_by=stopped_by,
        sent=int((results["attempts"] > 0).sum()),
        not_sent=int(((results["error_code"] == ErrorCode.INTERRUPTED.value) & (results["attempts"] == 0)).sum()),
        codes=codes,
        codes_by_vendor=codes_by_vendor,
        needs_attention_counts={o: int(by_outcome[o]) for o in NEEDS_ATTENTION if by_outcome.get(o, 0)},
        needs_attention=cast("list[dict[str, object]]", listed.where(listed.notna(), None).to_dict("records")),
        reported_again=int(reported_again.sum()),
    )
    checked = results["would_change"].notna() if "would_change" in results else None
    if checked is not None and checked.any():
        part = results.loc[checked, ["vendor", "would_change"]]
        summary.checks = {w.value: int((part["would_change"] == w.value).sum()) for w in WouldChange}
        for vendor, rows in part.groupby(part["vendor"].fillna("(none)"), sort=True):
            found = rows["would_change"].value_counts()
            summary.checks_by_vendor[str(vendor)] = {str(w): int(k) for w, k in found.items()}
    return summary
