"""One sheet of an Excel workbook (.xlsx, .xlsm), checked before it is read, as rows of Python values.

A workbook is a zip package. Before python-calamine (the Rust calamine reader) sees it:

- the file must be a zip package holding a spreadsheet; an old `.xls` (an OLE2 compound file), a
  password-protected workbook (also OLE2: its package is encrypted inside), a Word document or
  an OpenDocument file get a message saying what they are;
- the sizes its central directory declares must be plausible: no part over `MAX_PART_BYTES`
  uncompressed, none expanding more than `MAX_RATIO` times, shared strings (held in memory)
  under `MAX_SHARED_STRINGS_BYTES`: a decompression bomb is refused before anything inflates;
- the chosen sheet's XML is streamed once: every cell must carry its position (`r="C7"`) and
  the used range (rows x columns, which calamine allocates densely, 32 bytes a cell) must stay
  under `MAX_SHEET_CELLS`, so two cells at A1 and XFD1048576 cannot ask for 550 GB; cells
  holding an Excel error (`t="e"`: #N/A, #REF!, ...) are collected here, because calamine
  reads them as empty.

Problems raise `UnreadableWorkbook` with a one-line message for people (the reader turns it into
`UnusableFile`). python-calamine is imported lazily (it is only needed for workbooks).
"""

from __future__ import annotations

import posixpath
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

WORKBOOK_SUFFIXES = (".xlsx", ".xlsm")
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # compound files: .xls, and encrypted .xlsx
ENCRYPTED_STREAM = "EncryptedPackage".encode("utf-16-le")  # the stream name of an encrypted package
EXCEL_MAX_ROWS = 1_048_576
EXCEL_MAX_COLUMNS = 16_384

MAX_PART_BYTES = 3 << 30  # a million rows of 30 text columns is about 2 GiB of sheet XML
MAX_RATIO = 250  # real sheets inflate 5-30 times; deflate's ceiling is about 1,030
RATIO_CHECKED_FROM = 16 << 20  # small parts may inflate far more (repeated styles) and cost nothing
MAX_SHARED_STRINGS_BYTES = 768 << 20
MAX_SHEET_CELLS = 1 << 25  # 33.5 million cells = 1 GiB in calamine: 32 columns of 1,048,576 rows
MAX_SMALL_PART_BYTES = 64 << 20  # workbook.xml and the relationships, parsed whole

_SCAN_CHUNK = 16 << 20
_MAIN_NS = re.compile(r"^\{[^}]*\}")
_OFFICE_DOCUMENT = "/officeDocument"  # relationship types end so (transitional and strict)
_WORKSHEET = "/worksheet"
_CELL_START = re.compile(rb"<(?:[A-Za-z_][\w.\-]*:)?c[\s/>]")  # <c ...>, <c/>, <x:c ...>
_ERROR_TYPE = re.compile(rb"\st\s*=\s*[\"']e[\"']")
_POSITION = re.compile(rb"\sr\s*=\s*[\"']([A-Za-z]+)([0-9]+)[\"']")
_VALUE = re.compile(rb"<(?:[A-Za-z_][\w.\-]*:)?v>([^<]*)</")
_ROW_END = b"</row>"


class UnreadableWorkbook(Exception):
    """The workbook cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class SheetRows:
    """The chosen sheet: its name, where its used range starts, its rows, and its error cells."""

    name: str
    first_column: int  # 0-based column of the first value in each row
    rows: Iterator[list]  # each row from spreadsheet row 1 on, as calamine gives it
    error_cells: dict[tuple[int, int], str] = field(default_factory=dict)  # (row, column), 0-based -> "#N/A"


def column_letters(index: int) -> str:
    """A 0-based column index as Excel names it: 0 -> A, 26 -> AA."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def open_sheet(file: Path, sheet: str | None) -> SheetRows:
    """The rows of `sheet` (default: the first visible worksheet), once the workbook passed its checks."""
    with file.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(OLE2_MAGIC):
        raise UnreadableWorkbook(_ole2_problem(file))
    if not head.startswith(b"PK"):
        raise UnreadableWorkbook(
            "not an Excel workbook: an .xlsx/.xlsm file is a zip package, this one is not (a CSV saved under an Excel name?)"
        )
    try:
        package = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise UnreadableWorkbook(f"not a readable Excel workbook (a damaged zip package: {error})") from None
    with package:
        _check_sizes(package)
        name, part = _choose_sheet(package, sheet)
        error_cells = _scan_sheet(package, part, name)
    rows, first_column = _calamine_rows(file, name)
    return SheetRows(name=name, first_column=first_column, rows=rows, error_cells=error_cells)


# -- what kind of file it is ----------------------------------------------------------------------


def _ole2_problem(file: Path) -> str:
    """What an OLE2 compound file with an Excel name is: encrypted, or an old .xls."""
    tail = b""
    with file.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            if ENCRYPTED_STREAM in tail + chunk:
                return (
                    "the workbook is password-protected (encrypted): remove the password in Excel "
                    "(File > Info > Protect Workbook > Encrypt with Password) and save it again"
                )
            tail = chunk[-len(ENCRYPTED_STREAM) :]
    return "an old Excel 97-2003 workbook (.xls format): save it as an Excel Workbook (.xlsx) or as CSV"


def _package_kind(names: set[str]) -> str:
    if "word/document.xml" in names:
        return "a Word document"
    if "ppt/presentation.xml" in names:
        return "a PowerPoint presentation"
    if "content.xml" in names and "mimetype" in names:
        return "an OpenDocument file (save it as .xlsx)"
    return "a zip archive"


# -- sizes ---------------------------------------------------------------------------------------


def _check_sizes(package: zipfile.ZipFile) -> None:
    """Refuse what the central directory says would inflate too far, before anything is inflated."""
    total = 0
    for info in package.infolist():
        size, packed = info.file_size, max(info.compress_size, 1)
        total += size
        shown = f"{info.filename} would inflate to {_mib(size)}"
        if size > MAX_PART_BYTES:
            raise UnreadableWorkbook(f"refused: {shown} (more than {_mib(MAX_PART_BYTES)}; a zip bomb?)")
        if size >= RATIO_CHECKED_FROM and size / packed > MAX_RATIO:
            raise UnreadableWorkbook(f"refused: {shown}, {size // packed:,} times its packed size (a zip bomb?)")
        if info.filename.lower().endswith("sharedstrings.xml") and size > MAX_SHARED_STRINGS_BYTES:
            raise UnreadableWorkbook(f"refused: {shown} of shared text (more than {_mib(MAX_SHARED_STRINGS_BYTES)})")
    if total > 2 * MAX_PART_BYTES:
        raise UnreadableWorkbook(f"refused: the workbook would inflate to {_mib(total)} (a zip bomb?)")


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.0f} MiB"


# -- which sheet ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sheet:
    name: str
    part: str  # path of its XML inside the package
    visible: bool


def _read_xml(package: zipfile.ZipFile, name: str) -> ElementTree.Element:
    info = package.getinfo(name)
    if info.file_size > MAX_SMALL_PART_BYTES:
        raise UnreadableWorkbook(f"refused: {name} would inflate to {_mib(info.file_size)}")
    try:
        return ElementTree.fromstring(package.read(name))
    except (ElementTree.ParseError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise UnreadableWorkbook(f"not a readable Excel workbook ({name}: {error})") from None


def _local(tag: str) -> str:
    return _MAIN_NS.sub("", tag)


def _relationships(package: zipfile.ZipFile, part: str) -> dict[str, tuple[str, str]]:
    """Id -> (type, target path) of a part's relationships."""
    folder, base = posixpath.split(part)
    rels = posixpath.join(folder, "_rels", base + ".rels")
    if rels not in set(package.namelist()):
        return {}
    found = {}
    for item in _read_xml(package, rels):
        if _local(item.tag) == "Relationship" and item.get("TargetMode") != "External":
            target = item.get("Target", "")
            path = target.lstrip("/") if target.startswith("/") else posixpath.normpath(posixpath.join(folder, target))
            found[item.get("Id", "")] = (item.get("Type", ""), path)
    return found


def _sheets(package: zipfile.ZipFile) -> list[_Sheet]:
    """The workbook's worksheets, in workbook order (chart and dialog sheets left out)."""
    names = set(package.namelist())
    main = [path for kind, path in _relationships(package, "").values() if kind.endswith(_OFFICE_DOCUMENT)]
    if not main or main[0] not in names:
        raise UnreadableWorkbook(f"not an Excel workbook: {_package_kind(names)} without a workbook inside")
    workbook = main[0]
    rels = _relationships(package, workbook)
    sheets = []
    for element in _read_xml(package, workbook).iter():
        if _local(element.tag) != "sheet":
            continue
        rid = next((value for key, value in element.attrib.items() if _local(key) == "id"), "")
        kind, part = rels.get(rid, ("", ""))
        if kind.endswith(_WORKSHEET) and part in names:
            state = element.get("state", "visible")
            sheets.append(_Sheet(element.get("name", ""), part, state == "visible"))
    return sheets


def _choose_sheet(package: zipfile.ZipFile, wanted: str | None) -> tuple[str, str]:
    """(name, part) of the sheet asked for, or of the first visible worksheet."""
    sheets = _sheets(package)
    if not sheets:
        raise UnreadableWorkbook("the workbook has no worksheet")
    if wanted is None:
        chosen = next((s for s in sheets if s.visible), sheets[0])
        return chosen.name, chosen.part
    exact = [s for s in sheets if s.name == wanted]
    loose = [s for s in sheets if s.name.strip().casefold() == wanted.strip().casefold()]
    if exact or len(loose) == 1:
        chosen = (exact or loose)[0]
        return chosen.name, chosen.part
    shown = ", ".join(f"'{s.name}'" for s in sheets[:12]) + (" and more" if len(sheets) > 12 else "")
    raise UnreadableWorkbook(f"no sheet named '{wanted}' (the workbook has {shown})")


# -- the sheet's XML, streamed once ----------------------------------------------------------------


def _scan_sheet(package: zipfile.ZipFile, part: str, name: str) -> dict[tuple[int, int], str]:
    """Check the sheet's used range and collect its error cells, streaming its XML once."""
    scan = _Extent()
    errors: dict[tuple[int, int], str] = {}
    tail = b""
    try:
        with package.open(part) as stream:
            while True:
                chunk = stream.read(_SCAN_CHUNK)
                buffer = tail + chunk
                if chunk:
                    cut = buffer.rfind(_ROW_END)  # whole rows, so an error cell's value is in the same piece
                    cut = cut + len(_ROW_END) if cut >= 0 else buffer.rfind(b"<")
                    body, tail = (buffer[:cut], buffer[cut:]) if cut > 0 else (b"", buffer)
                    if len(tail) > _SCAN_CHUNK:  # no tag in 16 MiB: no cell holds that much (32,767 characters)
                        raise UnreadableWorkbook(f"refused: sheet '{name}' holds a value far larger than a cell can")
                else:
                    body, tail = buffer, b""
                scan.add(body)
                _collect_errors(body, errors)
                scan.check(name)
                if not chunk:
                    break
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:  # a bad CRC, a truncated stream
        raise UnreadableWorkbook(f"not a readable Excel workbook ({part}: {error})") from None
    if scan.cells != scan.positioned:
        raise UnreadableWorkbook(
            f"sheet '{name}' has cells without a position (written by an unusual program): "
            "open it in Excel and save it again"
        )
    return errors


class _Extent:
    """The used range of a sheet from its cells' positions, found with numpy (millions of cells)."""

    def __init__(self) -> None:
        self.cells = 0  # cell elements seen
        self.positioned = 0  # of them with a position r="C7" written the usual way
        self.rows: tuple[int, int] = (1 << 62, 0)  # smallest and largest 1-based row
        self.columns: tuple[int, int] = (1 << 62, 0)  # smallest and largest 1-based column

    def add(self, body: bytes) -> None:
        if not body:
            return
        data = np.frombuffer(body + bytes(16), dtype=np.uint8)  # padded: reads may run past the end
        self.cells += len(_CELL_START.findall(body)) if b":c" in body else _count_cells(data, len(body))
        hits = _word_positions(data, len(body), b' r="') + 4  # where each position's text starts
        if not len(hits):
            return
        letters = np.zeros(len(hits), dtype=np.int64)
        run = np.ones(len(hits), dtype=bool)
        for place in range(4):  # how many letters lead (a cell's column; none for a row's number)
            upper = data[hits + place] & 0xDF
            run &= (upper >= 65) & (upper <= 90)
            letters += run
        cell = letters > 0
        hits, letters = hits[cell], letters[cell]
        if not len(hits):
            return  # only rows' numbers (`<row r="5">`)
        starts = hits + letters
        digits = np.zeros(len(hits), dtype=np.int64)
        run = np.ones(len(hits), dtype=bool)
        for place in range(8):
            byte = data[starts + place]
            run &= (byte >= 48) & (byte <= 57)
            digits += run
        closed = data[starts + digits] == 34
        if (letters > 3).any() or (digits > 7).any() or (digits == 0).any() or (data[starts] == 48).any():
            # beyond XFD1048576, or written as no program writes it (A0, A007): never read on trust
            raise UnreadableWorkbook("refused: a cell position beyond Excel's sheet size (a crafted file?)")
        hits, letters, digits, starts = hits[closed], letters[closed], digits[closed], starts[closed]
        self.positioned += len(hits)
        if not len(hits):
            return
        # Only the smallest and largest matter. Without leading zeros, a longer number is larger,
        # and numbers of one length compare as their text: compare packed bytes, not values.
        rows = (_extreme(data, starts, digits, False), _extreme(data, starts, digits, True))
        columns = (_extreme(data, hits, letters, False, 0xDF), _extreme(data, hits, letters, True, 0xDF))
        self.rows = (min(self.rows[0], int(rows[0])), max(self.rows[1], int(rows[1])))
        self.columns = (
            min(self.columns[0], _column_number(columns[0])),
            max(self.columns[1], _column_number(columns[1])),
        )

    def check(self, name: str) -> None:
        if not self.rows[1]:
            return
        if self.rows[1] > EXCEL_MAX_ROWS or self.columns[1] > EXCEL_MAX_COLUMNS:
            raise UnreadableWorkbook("refused: a cell position beyond Excel's sheet size (a crafted file?)")
        height = self.rows[1] - self.rows[0] + 1
        width = self.columns[1] - self.columns[0] + 1
        if height * width > MAX_SHEET_CELLS:
            first = f"{column_letters(self.columns[0] - 1)}{self.rows[0]}"
            last = f"{column_letters(self.columns[1] - 1)}{self.rows[1]}"
            raise UnreadableWorkbook(
                f"refused: sheet '{name}' spans {first}:{last}, {height:,} rows by {width:,} columns, "
                f"more than {MAX_SHEET_CELLS:,} cells (delete what lies outside the decisions, or a crafted file?)"
            )


def _word_positions(data: np.ndarray, length: int, word: bytes) -> np.ndarray:
    """Where a 2- or 4-byte `word` starts in data[:length], in order, as whole-word comparisons
    at each alignment: a fraction of the work of a byte-wise search, and no Python per match."""
    size = len(word)
    kind = {2: "<u2", 4: "<u4"}[size]
    mark = int.from_bytes(word, "little")
    found = []
    for offset in range(size):
        count = (length - offset) // size
        if count > 0:
            words = np.frombuffer(data, dtype=kind, count=count, offset=offset)
            found.append(np.flatnonzero(words == mark) * size + offset)
    return np.sort(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)


def _extreme(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, largest: bool, mask: int = 0xFF) -> bytes:
    """The smallest or largest of the texts data[start : start + length], by length then bytes
    (each byte `& mask` first: 0xDF upper-cases letters)."""
    length = int(lengths.max() if largest else lengths.min())
    chosen = starts[lengths == length]
    text = data[chosen[:, None] + np.arange(length)] & mask
    keys = np.zeros((len(chosen), 8), dtype=np.uint8)
    keys[:, 8 - length :] = text  # right-aligned in 8 bytes: one big-endian number per text
    packed = keys.view(">u8").ravel()
    return bytes(keys[int(packed.argmax() if largest else packed.argmin()), 8 - length :])


def _column_number(letters: bytes) -> int:
    number = 0
    for letter in letters.decode("ascii"):
        number = number * 26 + ord(letter) - 64
    return number


def _count_cells(data: np.ndarray, length: int) -> int:
    """Cell elements without a namespace prefix: `<c` followed by a space, tab, line break, `>` or `/`."""
    starts = _word_positions(data, length, b"<c")
    return int(np.isin(data[starts + 2], np.frombuffer(b" \t\n\r>/", dtype=np.uint8)).sum())


def _collect_errors(body: bytes, errors: dict[tuple[int, int], str]) -> None:
    """(row, column) -> error text of the cells whose type is `e` (an Excel error)."""
    if b'"e"' not in body and b"'e'" not in body:
        return  # the usual case: no error cell at all (a quick look before the regex)
    for match in _ERROR_TYPE.finditer(body):
        start = body.rfind(b"<", 0, match.start())
        end = body.find(b">", match.end())
        if start < 0 or end < 0 or not _CELL_START.match(body, start):
            continue
        position = _POSITION.search(body, start, end)
        if position is None:
            continue  # counted as a cell without a position: the whole sheet is refused
        following = _CELL_START.search(body, end)
        stop = following.start() if following else len(body)
        value = None if body[end - 1 : end] == b"/" else _VALUE.search(body, end, stop)
        text = value.group(1).decode("utf-8", "replace").strip() if value else ""
        letters, digits = position.group(1).upper().decode(), int(position.group(2))
        column = 0
        for letter in letters:
            column = column * 26 + ord(letter) - 64
        errors[(digits - 1, column - 1)] = text or "#ERROR"


# -- reading with calamine ------------------------------------------------------------------------


def _calamine_rows(file: Path, name: str) -> tuple[Iterator[list], int]:
    """calamine's rows of the sheet and the 0-based column its rows start at."""
    import python_calamine

    try:
        workbook = python_calamine.CalamineWorkbook.from_path(str(file))
        sheet = workbook.get_sheet_by_name(name)
    except python_calamine.PasswordError:
        raise UnreadableWorkbook(
            "the workbook is password-protected: remove the password in Excel and save it again"
        ) from None
    except (python_calamine.CalamineError, OSError, ValueError) as error:
        raise UnreadableWorkbook(f"not a readable Excel workbook ({error})") from None
    start = sheet.start
    # calamine's rows start at spreadsheet row 1 and at the first used column (`start`).
    return iter(sheet.iter_rows()), (start[1] if start else 0)
