"""Read a decision file (CSV, Parquet or an Excel workbook) into a normalised DataFrame of strings.

Every cell comes back as pandas' `string` dtype (missing values are `pd.NA`), trimmed of
surrounding whitespace, with `vendor` and `decision` lower-cased and empty cells turned into
NA. Column names are trimmed and lower-cased. A `row_number` column (int64) comes first: for
CSV and Parquet the 1-based position among the file's data rows; for a workbook the row number
Excel shows at the left of the sheet (the header is usually row 1, so data starts at 2; empty
rows are not rows, so numbers may skip). A `row_number` column in the file itself is replaced
by it. Other columns pass through as text. Anything that makes the file unusable as a whole
raises `UnusableFile` with a one-line message meant for people; nothing is sent then.

Workbook cells become the text Excel shows: whole numbers without ".0" (`1001`, ids of 16
digits exact), other numbers with up to 15 significant digits, dates and times as
`YYYY-MM-DD HH:MM:SS` (a date alone as `YYYY-MM-DD`, except in `void_date` and `decided_at`),
booleans as TRUE/FALSE. An Excel error cell (#N/A, #REF!, ...) is no value: in the columns a
decision is made of (`DECISION_COLUMNS`) it is missing and listed in `DecisionFile.error_cells`
(validation rejects its row, naming the cell); elsewhere its text passes through.
"""

from __future__ import annotations

import bisect
import codecs
import contextlib
import csv
import gc
import io
import itertools
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flows.pipeline.files import one_line
from flows.pipeline.workbook_reader import WORKBOOK_SUFFIXES, UnreadableWorkbook, column_letters, open_sheet

REQUIRED_COLUMNS = ("invoice_id", "vendor", "decision")
OPTIONAL_COLUMNS = ("invoice_number", "void_date", "decided_by", "decided_at", "note")
DECISION_COLUMNS = (*REQUIRED_COLUMNS, "invoice_number", "void_date")  # what is sent to a vendor
DATE_TIME_COLUMNS = ("void_date", "decided_at")  # documented as YYYY-MM-DD HH:MM:SS
ROW_NUMBER = "row_number"

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
OLD_EXCEL_SUFFIXES = {
    ".xls": "an old Excel 97-2003 workbook (.xls): save it as an Excel Workbook (.xlsx) or as CSV",
    ".xlsb": "an Excel binary workbook (.xlsb): save it as an Excel Workbook (.xlsx) or as CSV",
    ".ods": "an OpenDocument spreadsheet (.ods): save it as an Excel Workbook (.xlsx) or as CSV",
}
DELIMITERS = (",", ";", "\t", "|")
LOWERCASE_COLUMNS = ("vendor", "decision")

_SCAN_CHUNK = 1 << 20  # bytes read at a time while checking the encoding
_HEAD_CHARS = 1 << 20  # the header must fit in the first million characters
_PANDAS_INDEX = re.compile(r"^__index_level_\d+__$")  # pandas' own index, stored by to_parquet
_EXCEL_SEP_HINT = re.compile(r"^sep=(.)\r?$")  # Excel's "sep=;" first line
_CP1252_UNDEFINED = re.compile(rb"[\x81\x8d\x8f\x90\x9d]")  # the bytes cp1252 cannot decode


class UnusableFile(Exception):
    """The file cannot be used at all: nothing is sent."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class ErrorCell:
    """A workbook cell in one of the DECISION_COLUMNS that holds an Excel error instead of a value."""

    row_number: int  # the spreadsheet row, as in the frame's row_number
    column: str  # the (normalised) column name
    cell: str  # where Excel shows it: "C7"
    error: str  # what Excel shows: "#N/A", "#REF!"

    def reason(self) -> str:
        return f"cell {self.cell} ({self.column}) holds the Excel error {self.error}, not a value"


@dataclass(frozen=True)
class DecisionFile:
    """A decision file as read: the normalised frame, and what the frame cannot say itself."""

    frame: pd.DataFrame
    error_cells: tuple[ErrorCell, ...] = ()
    sheet: str | None = None  # the workbook sheet that was read


# -- public API -------------------------------------------------------------------------------


def read_decisions(path: str | os.PathLike, *, sheet: str | None = None) -> pd.DataFrame:
    """The whole decision file as one normalised DataFrame (RangeIndex, `row_number` first)."""
    return read_decision_file(path, sheet=sheet).frame


def read_decision_file(path: str | os.PathLike, *, sheet: str | None = None) -> DecisionFile:
    """The whole decision file, read before anything acts on it, with a workbook's error cells.

    `sheet` names the worksheet of a workbook (default: the first visible one); other files
    have no sheets and ignore it.
    """
    opened = _open(path, 100_000, sheet)
    batches = list(opened.frames)
    frame = batches[0] if len(batches) == 1 else pd.concat(batches, ignore_index=True)
    return DecisionFile(frame=frame, error_cells=tuple(opened.error_cells), sheet=opened.sheet)


def iter_decision_batches(
    path: str | os.PathLike, batch_rows: int = 100_000, *, sheet: str | None = None
) -> Iterator[pd.DataFrame]:
    """The decision file in normalised batches of at most `batch_rows` rows.

    The file is opened and its header checked before this returns, so a file that is unusable
    from the start raises `UnusableFile` here. Damage found further in (a malformed CSV line, a
    corrupt Parquet page) raises `UnusableFile` while iterating: callers that must not act on
    part of a file should read it all first (`read_decisions` does). A file without data rows
    yields exactly one empty frame, so the columns are always known; otherwise no batch is empty.
    Each batch has a RangeIndex starting at 0; `row_number` continues across batches.
    """
    return _open(path, batch_rows, sheet).frames


@dataclass
class _Opened:
    frames: Iterator[pd.DataFrame]
    error_cells: list[ErrorCell]  # filled in as the frames are read
    sheet: str | None = None


def _open(path: str | os.PathLike, batch_rows: int, sheet: str | None) -> _Opened:
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    file = _check_path(path)
    suffix = file.suffix.lower()
    if suffix in WORKBOOK_SUFFIXES:
        return _open_workbook(file, batch_rows, sheet)
    if suffix in PARQUET_SUFFIXES:
        columns, raw = _open_parquet(file, batch_rows)
    else:
        columns, raw = _open_csv(file, batch_rows)
    return _Opened(_numbered(columns, raw), [])


# -- shared -----------------------------------------------------------------------------------


def _check_path(path: str | os.PathLike) -> Path:
    """The path, if it names a non-empty file with a supported extension."""
    file = Path(path)
    if not file.exists():
        raise UnusableFile(path, "no such file")
    if file.is_dir():
        raise UnusableFile(path, "is a directory, not a decision file")
    if not file.is_file():
        raise UnusableFile(path, "is not a regular file")
    suffix = file.suffix.lower()
    if suffix in OLD_EXCEL_SUFFIXES:
        raise UnusableFile(path, OLD_EXCEL_SUFFIXES[suffix])
    if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES + WORKBOOK_SUFFIXES:
        shown = f"'{file.suffix}'" if file.suffix else "no extension"
        raise UnusableFile(path, f"unsupported file type ({shown}): use a .csv, .parquet, .pq, .xlsx or .xlsm file")
    try:
        size = file.stat().st_size
    except OSError as error:
        raise UnusableFile(path, f"cannot be read ({one_line(error, 160)})") from None
    if size == 0:
        raise UnusableFile(path, "the file is empty (0 bytes)")
    if not os.access(file, os.R_OK):
        raise UnusableFile(path, "cannot be read (permission denied)")
    return file


def _normalise_names(path: Path, raw_names: list[str]) -> list[str]:
    """Trimmed, lower-cased column names; unnamed ones get `unnamed_<position>`.

    Raises UnusableFile for duplicates and for missing required columns.
    """
    names = []
    for position, raw in enumerate(raw_names, start=1):
        name = str(raw).replace("\ufeff", "").strip().lower()
        names.append(name or f"unnamed_{position}")
    seen: dict[str, int] = {}
    duplicates = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        if seen[name] == 2:
            duplicates.append(name)
    if duplicates:
        raise UnusableFile(path, f"duplicate column names: {_show_names(duplicates)}")
    missing = [column for column in REQUIRED_COLUMNS if column not in seen]
    if missing:
        raise UnusableFile(
            path,
            f"required column{'s' if len(missing) > 1 else ''} missing: {', '.join(missing)}"
            f" (found: {_show_names(names) or 'no columns'})",
        )
    return names


def _show_names(names: list[str], limit: int = 12, width: int = 40) -> str:
    """Column names for a message: printable, short, and not too many."""
    shown = []
    for name in names[:limit]:
        text = name.encode("unicode_escape").decode("ascii") if not name.isprintable() else name
        shown.append(text if len(text) <= width else text[: width - 1] + "…")
    more = len(names) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _normalise_array(array: pa.Array, lower: bool) -> pa.Array:
    """Trim, optionally lower-case, and turn empty strings into nulls (all in Arrow: fast)."""
    array = pc.utf8_trim_whitespace(array)
    if lower:
        array = pc.utf8_lower(array)
    return pc.if_else(pc.equal(array, ""), pa.scalar(None, array.type), array)


def _frame(
    columns: list[str], arrays: list[pa.Array], first_row: int, row_numbers: np.ndarray | None = None
) -> pd.DataFrame:
    """A normalised batch: `row_number` first (`row_numbers`, or counted from `first_row`), then
    every column as pandas `string`."""
    length = len(arrays[0]) if arrays else 0
    if row_numbers is None:
        row_numbers = np.arange(first_row, first_row + length, dtype=np.int64)
    data: dict[str, object] = {ROW_NUMBER: row_numbers}
    for name, array in zip(columns, arrays, strict=True):
        if name == ROW_NUMBER:
            continue  # ours wins: row_number always means the position in this file
        normalised = _normalise_array(array, lower=name in LOWERCASE_COLUMNS)
        data[name] = pd.Series(pd.arrays.ArrowStringArray(normalised), copy=False)
    return pd.DataFrame(data)


def _numbered(columns: list[str], raw: Iterator[list[pa.Array]]) -> Iterator[pd.DataFrame]:
    """Normalise raw batches into frames, numbering rows across batches."""
    next_row = 1
    for arrays in raw:
        if not len(arrays[0]):
            continue
        frame = _frame(columns, arrays, next_row)
        next_row += len(frame)
        yield frame
    if next_row == 1:
        yield _frame(columns, [pa.array([], pa.string()) for _ in columns], 1)


# -- CSV --------------------------------------------------------------------------------------


def _detect_encoding(file: Path) -> str:
    """The file's text encoding: UTF-16 by BOM, else UTF-8 (BOM optional), else cp1252/Latin-1.

    The whole file is scanned once in binary (fast) so a late non-UTF-8 byte cannot make the
    CSV parser fail half-way through a million-row file. NUL bytes mean it is not text.
    """
    with file.open("rb") as handle:
        head = handle.read(4)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # Excel's "Unicode text" export; the codec reads the BOM itself
    utf8 = codecs.getincrementaldecoder("utf-8-sig")()
    utf8_ok = cp1252_ok = True
    with file.open("rb") as handle:
        while chunk := handle.read(_SCAN_CHUNK):
            if b"\x00" in chunk:
                raise UnusableFile(file, "not a text CSV file (it contains NUL bytes: binary data?)")
            if utf8_ok:
                try:
                    utf8.decode(chunk)
                except UnicodeDecodeError:
                    utf8_ok = False
            if cp1252_ok and _CP1252_UNDEFINED.search(chunk):
                cp1252_ok = False
    if utf8_ok:
        try:
            utf8.decode(b"", final=True)  # a multi-byte character cut off at the very end
        except UnicodeDecodeError:
            utf8_ok = False
    if utf8_ok:
        return "utf-8-sig"
    return "cp1252" if cp1252_ok else "latin-1"  # latin-1 decodes any byte: never fails


def _read_head(file: Path, encoding: str) -> str:
    """The start of the file as text, enough to hold the header line."""
    with file.open("r", encoding=encoding, newline="") as handle:
        return handle.read(_HEAD_CHARS)


def _parse_header(head: str, delimiter: str) -> list[str]:
    """The first CSV record of `head`, split on `delimiter`."""
    reader = csv.reader(io.StringIO(head), delimiter=delimiter, skipinitialspace=True)
    try:
        for record in reader:
            # Blank (or whitespace-only) lines before the header are skipped, as pandas does.
            if len(record) > 1 or (record and record[0].strip()):
                return record
    except csv.Error:
        pass
    return []


def _sniff(file: Path, head: str) -> tuple[str, list[str], int]:
    """(delimiter, raw header names, lines to skip before the header).

    Picks, among `, ; TAB |`, the delimiter that splits the header into the most columns that
    include the required ones (falling back to the most columns, so the error names them).
    """
    skip = 0
    first_line = head.split("\n", 1)[0]
    hint = _EXCEL_SEP_HINT.match(first_line)
    candidates: tuple[str, ...] = DELIMITERS
    if hint:
        head = head.split("\n", 1)[1] if "\n" in head else ""
        candidates, skip = (hint.group(1),), 1
    if not head.strip():
        raise UnusableFile(file, "no header line: the file holds no column names")
    best: tuple[bool, int, int] | None = None
    chosen = candidates[0]
    chosen_names: list[str] = []
    for order, delimiter in enumerate(candidates):
        names = _parse_header(head, delimiter)
        cleaned = {name.replace("\ufeff", "").strip().lower() for name in names}
        has_required = all(column in cleaned for column in REQUIRED_COLUMNS)
        rank = (has_required, len(names), -order)  # ties go to the earlier (more usual) one
        if best is None or rank > best:
            best, chosen, chosen_names = rank, delimiter, names
    return chosen, chosen_names, skip


_FIELD_COUNT = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _csv_problem(error: Exception, width: int, skipped: int) -> str:
    """A human reading of a pandas CSV parser error."""
    text = one_line(error, 160)
    match = _FIELD_COUNT.search(text)
    if match:
        line, seen = int(match.group(2)) + skipped, match.group(3)
        return f"line {line} has {seen} fields but the header has {width} (an unquoted delimiter inside a value?)"
    return f"not a readable CSV file ({text.removeprefix('Error tokenizing data. ')})"


def _open_csv(file: Path, batch_rows: int) -> tuple[list[str], Iterator[list[pa.Array]]]:
    """Check the header now; return the column names and a lazy iterator of raw batches."""
    encoding = _detect_encoding(file)
    head = _read_head(file, encoding)
    delimiter, raw_names, skip = _sniff(file, head)
    columns = _normalise_names(file, raw_names)
    # The csv module only parses the header line; pandas' C parser reads the (possibly huge)
    # cells, so the csv module's field size limit never applies to them.
    return columns, _csv_batches(file, encoding, delimiter, skip, columns, raw_names, batch_rows)


def _csv_batches(
    file: Path,
    encoding: str,
    delimiter: str,
    skip: int,
    columns: list[str],
    raw_names: list[str],
    batch_rows: int,
) -> Iterator[list[pa.Array]]:
    """Raw string arrays, batch by batch, from pandas' C parser."""
    positions = list(range(len(columns)))
    describe = lambda error: _csv_problem(error, len(columns), skip)  # noqa: E731
    reader = _guard(
        file,
        lambda: pd.read_csv(
            file,
            sep=delimiter,
            # The header is read as data row 0: the C parser then holds every line to the header's
            # field count and fails on a longer one, instead of guessing an index column or
            # silently dropping the surplus fields (what it does with header=0).
            header=None,
            names=positions,
            index_col=False,
            skiprows=skip,
            dtype=str,  # every value as text: keeps leading zeros in ids
            keep_default_na=False,  # "NA", "null" are values; only empty cells become missing
            na_filter=False,
            skipinitialspace=True,
            encoding=encoding,
            encoding_errors="replace",  # the scan picked a codec that decodes the file; belt and braces
            engine="c",
            chunksize=batch_rows,
            low_memory=False,
        ),
        describe,
    )
    try:
        first = True
        while True:
            chunk = _guard(file, lambda: next(reader, None), describe)
            if chunk is None:
                return
            if first:
                first = False
                header = [str(value).strip() for value in chunk.iloc[0]]
                if header != [name.strip() for name in raw_names]:
                    raise UnusableFile(file, "the header line could not be read consistently")
                chunk = chunk.iloc[1:]
            yield [pa.array(chunk[position], type=pa.large_string()) for position in positions]
    finally:
        reader.close()


def _guard(file: Path, action: Callable, describe: Callable[[Exception], str]):
    """Run a parser step quietly, turning any failure into UnusableFile."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. pandas' ParserWarning: never printed
        try:
            return action()
        except UnusableFile:
            raise
        except MemoryError:
            raise
        except Exception as error:  # the parsers raise many kinds; none may escape raw
            raise UnusableFile(file, describe(error)) from None


# -- Parquet ----------------------------------------------------------------------------------


def _parquet_problem(error: Exception) -> str:
    return f"not a readable Parquet file ({one_line(error, 160)})"


def _open_parquet(file: Path, batch_rows: int) -> tuple[list[str], Iterator[list[pa.Array]]]:
    """Check the footer and schema now; return the column names and a lazy batch iterator."""
    import pyarrow.parquet as pq

    parquet = _guard(file, lambda: pq.ParquetFile(file), _parquet_problem)
    try:
        schema = parquet.schema_arrow
        keep = [name for name in schema.names if not _PANDAS_INDEX.match(name)]
        columns = _normalise_names(file, keep)
    except BaseException:
        parquet.close()
        raise
    return columns, _parquet_batches(file, parquet, keep, batch_rows)


def _parquet_batches(file: Path, parquet, keep: list[str], batch_rows: int) -> Iterator[list[pa.Array]]:
    """Raw string arrays, batch by batch, from pyarrow's Parquet reader."""
    try:
        batches = _guard(
            file,
            lambda: parquet.iter_batches(batch_size=batch_rows, columns=keep),
            _parquet_problem,
        )
        while True:
            batch = _guard(file, lambda: next(batches, None), _parquet_problem)
            if batch is None:
                return
            yield [
                _guard(file, lambda i=i, batch=batch: _as_strings(batch.column(i)), _parquet_problem)
                for i in range(batch.num_columns)
            ]
    finally:
        parquet.close()


def _as_strings(array: pa.Array) -> pa.Array:
    """Any Arrow column as exact text: ints as "123", integral floats as "123", times as text."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        return _as_strings(array.dictionary_decode())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return array
    if pa.types.is_null(kind):
        return pa.nulls(len(array), pa.large_string())
    if pa.types.is_integer(kind) or pa.types.is_decimal(kind) or pa.types.is_boolean(kind):
        return pc.cast(array, pa.large_string())
    if pa.types.is_floating(kind):
        return _floats_as_strings(array)
    if pa.types.is_timestamp(kind):
        # Whole seconds print as "YYYY-MM-DD HH:MM:SS", the file format's own; others keep fractions.
        try:
            array = pc.cast(array, pa.timestamp("s", kind.tz))
        except pa.ArrowInvalid:
            return pc.cast(array, pa.large_string())
        return pc.strftime(array, format="%Y-%m-%d %H:%M:%S")
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        try:
            return pc.cast(array, pa.large_string())
        except pa.ArrowInvalid:  # not UTF-8: read it the way CSV falls back, as Latin-1
            return pa.array(
                [None if v is None else v.decode("latin-1") for v in array.to_pylist()],
                pa.large_string(),
            )
    try:
        return pc.cast(array, pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Lists, structs and other nested values: their Python text, rare enough to be slow.
        return pa.array([None if v is None else str(v) for v in array.to_pylist()], pa.large_string())


def _floats_as_strings(array: pa.Array) -> pa.Array:
    """Floats as text; integral ones without ".0" (an int id column with nulls is stored as float)."""
    values = array.to_numpy(zero_copy_only=False).astype(np.float64)
    valid = np.isfinite(values)
    integral = valid & (np.floor(values) == values) & (np.abs(values) < 2**63)
    text = np.where(
        integral,
        np.where(integral, values, 0).astype(np.int64).astype(str),
        values.astype(str),
    ).astype(object)
    missing = ~valid & np.isnan(values)  # NaN and nulls are missing; +/-inf stay as text
    if array.null_count:
        missing |= array.is_null().to_numpy(zero_copy_only=False)
    text[missing] = None
    return pa.array(text, pa.large_string())


# -- Excel workbooks --------------------------------------------------------------------------


def _open_workbook(file: Path, batch_rows: int, sheet: str | None) -> _Opened:
    """Check the workbook and find the header now; the rows are read as the frames are taken."""
    try:
        opened = open_sheet(file, sheet)
    except UnreadableWorkbook as error:
        raise UnusableFile(file, str(error)) from None
    header_at, header = _guard(file, lambda: _header(opened.rows), _workbook_problem)
    if header_at < 0:
        raise UnusableFile(file, f"sheet '{opened.name}' is empty: no header row with column names")
    first = opened.first_column
    columns = _normalise_names(file, [_cell_text(value, False) for value in header])
    letters = [column_letters(first + position) for position in range(len(columns))]
    errors = sorted((key, text) for key, text in opened.error_cells.items() if key[0] > header_at)
    error_cells: list[ErrorCell] = []

    def batches() -> Iterator[tuple[list[pa.Array], np.ndarray]]:
        next_row = header_at + 2  # spreadsheet rows count from 1
        while True:
            with _collector_paused():
                block = list(itertools.islice(opened.rows, batch_rows))
                if not block:
                    return
                numbers = np.arange(next_row, next_row + len(block), dtype=np.int64)
                next_row += len(block)
                with_errors = (
                    _apply_errors(columns, block, numbers, first, errors, letters, error_cells) if errors else set()
                )
                arrays = _workbook_arrays(columns, block)
                del block
            keep = _not_blank(arrays, with_errors)
            if keep is not None:  # an empty row is not a row (trailing ones, or spacing between groups)
                arrays = [array.filter(keep) for array in arrays]
                numbers = numbers[keep.to_numpy(zero_copy_only=False)]
            if len(numbers):
                yield arrays, numbers

    def frames() -> Iterator[pd.DataFrame]:
        produced = False
        raw = batches()
        while (batch := _guard(file, lambda: next(raw, None), _workbook_problem)) is not None:
            produced = True
            yield _frame(columns, batch[0], 0, batch[1])
        if not produced:
            yield _frame(columns, [pa.array([], pa.string()) for _ in columns], 1)

    return _Opened(frames(), error_cells, opened.name)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a batch's million cell objects are made (none form cycles:
    it would only walk them again and again, a fifth of the reading time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _header(rows: Iterator[list]) -> tuple[int, list]:
    """(0-based row, values) of the first row that is not blank, the rows before it consumed."""
    for at, values in enumerate(rows):
        if any(value.__class__ is not str or value.strip() for value in values):
            return at, values
    return -1, []


def _workbook_problem(error: Exception) -> str:
    return f"not a readable Excel workbook ({one_line(error, 160)})"


def _workbook_arrays(columns: list[str], block: list[list]) -> list[pa.Array]:
    """One batch of sheet rows as text arrays, one per column (calamine gives every row the sheet's width)."""
    arrays = []
    for name, values in zip(columns, zip(*block, strict=True), strict=True):
        try:
            arrays.append(pa.array(values, type=pa.large_string()))  # all text: converted in C
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            full = name in DATE_TIME_COLUMNS
            texts = [value if value.__class__ is str else _cell_text(value, full) for value in values]
            arrays.append(pa.array(texts, type=pa.large_string()))
    return arrays


def _not_blank(arrays: list[pa.Array], with_errors: set[int]) -> pa.BooleanArray | None:
    """Which rows hold something (an error cell counts); None when all of them do."""
    blank = None
    for array in arrays:
        empty = pc.equal(pc.utf8_trim_whitespace(array), "")
        blank = empty if blank is None else pc.and_(blank, empty)
    if blank is None or not pc.any(blank).as_py():
        return None
    if with_errors:
        mask = blank.to_numpy(zero_copy_only=False).copy()
        mask[list(with_errors)] = False
        blank = pa.array(mask)
    return pc.invert(blank)


def _apply_errors(
    columns: list[str],
    block: list[list],
    numbers: np.ndarray,
    first: int,
    errors: list[tuple[tuple[int, int], str]],
    letters: list[str],
    found: list[ErrorCell],
) -> set[int]:
    """The error cells of this batch: missing (and listed) in a decision column, their text
    elsewhere. Returns the positions in the batch of the rows that hold one."""
    first_row, last_row = int(numbers[0]) - 1, int(numbers[-1]) - 1  # 0-based, as the keys
    held = set()
    for (row, column), error in errors[bisect.bisect_left(errors, ((first_row, -1), "")) :]:
        if row > last_row:
            break
        index, position = row - first_row, column - first
        if not 0 <= position < len(columns):
            continue
        held.add(index)
        name = columns[position]
        if name in DECISION_COLUMNS:
            block[index][position] = ""
            found.append(ErrorCell(row + 1, name, f"{letters[position]}{row + 1}", error))
        else:
            block[index][position] = error
    return held


def _cell_text(value: object, full_date_time: bool) -> str:
    """A workbook cell as the text Excel shows (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return ""
        if value.is_integer():
            return str(int(value))  # exact: a float holds every integer up to 2**53 exactly
        return f"{value:.15g}"  # what Excel shows: 15 significant digits, no 0.30000000000000004
    if isinstance(value, datetime):
        if value.microsecond >= 500_000:
            value += timedelta(seconds=1)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.strftime("%Y-%m-%d 00:00:00" if full_date_time else "%Y-%m-%d")
    if isinstance(value, time):
        return value.strftime("%H:%M:%S")
    if isinstance(value, timedelta):
        seconds = round(value.total_seconds())
        sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
        return f"{sign}{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return str(value)
