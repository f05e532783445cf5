"""Writing Excel workbooks (.xlsx) for people: results.xlsx and needs_attention.xlsx.

A workbook is a zip package of XML parts. The big part, a sheet of up to a million rows, is
built column by column in Arrow, a slice of rows at a time (as results.csv is), and streamed
into the zip: a kept writer such as XlsxWriter builds each cell in Python, several minutes for
the results of a million-row run (docs/performance.md). The rest (styles, the workbook, its
relationships) is small fixed XML, laid out as XlsxWriter and Excel write it.

Cells are typed by column: `TEXT` cells are inline strings with the text format `@`, so Excel
never turns `00042` into 42 or a 16-digit id into 1.23457E+15, nor runs `=...` as a formula;
`NUMBER` cells hold integers; `DATETIME` cells hold UTC times (as Excel serial days) shown as
`yyyy-mm-dd hh:mm:ss`. The header row is bold, frozen and has filters. Each row can be marked
(`Mark.FAILED`, `Mark.REJECTED`): its cells get a fill.
"""

from __future__ import annotations

import enum
import os
import re
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flows.pipeline.workbook_reader import EXCEL_MAX_COLUMNS, EXCEL_MAX_ROWS, column_letters

MAX_TEXT = 32_767  # the most characters an Excel cell holds
SLICE_ROWS = 50_000  # rows built at a time: about 50 MB of XML for the results' 20 columns
MAIN_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
REL_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PACKAGE_REL_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
_INVALID_XML = "[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]"  # not allowed in XML 1.0 at all
_ESCAPED_LOOKALIKE = "_(x[0-9A-Fa-f]{4}_)"  # Excel reads "_x0041_" in a text as "A": keep it literal
_NEEDS_CARE = f"[&<>]|{_INVALID_XML}|{_ESCAPED_LOOKALIKE}|^\\s|\\s$"


class Kind(enum.IntEnum):
    """How a column's cells are written (the value is the style's offset, see `_STYLES`)."""

    TEXT = 0
    NUMBER = 1
    DATETIME = 2


class Mark(enum.IntEnum):
    """A row's fill."""

    NONE = 0
    FAILED = 1
    REJECTED = 2


_SELECTED = 'tabSelected="1" '
_HEADER_STYLE = 1
_FIRST_CELL_STYLE = 2  # cell styles: 2 + 3 * mark + kind


@dataclass
class DataSheet:
    """A frame written as a sheet: a bold, frozen header with filters, then one row per frame row."""

    name: str
    frame: pd.DataFrame
    kinds: dict[str, Kind] = field(default_factory=dict)  # columns not named here are TEXT
    marks: np.ndarray | None = None  # a Mark per row


@dataclass
class TableSheet:
    """A small sheet of rows of cells (text, numbers or empty); `bold` rows are headings."""

    name: str
    rows: list[list[str | int | float | None]]
    bold: set[int] = field(default_factory=set)  # 0-based row indexes
    widths: list[float] = field(default_factory=list)


def fits_in_a_sheet(rows: int, columns: int) -> str | None:
    """Why `rows` data rows (and a header) of `columns` cannot be one Excel sheet; None if they can."""
    if rows + 1 > EXCEL_MAX_ROWS:
        return f"{rows:,} rows and a header are more than the {EXCEL_MAX_ROWS:,} rows an Excel sheet holds"
    if columns > EXCEL_MAX_COLUMNS:
        return f"{columns:,} columns are more than the {EXCEL_MAX_COLUMNS:,} an Excel sheet holds"
    return None


def write_workbook(path: str | os.PathLike, sheets: Sequence[DataSheet | TableSheet]) -> None:
    """Write `sheets` as one .xlsx workbook at `path` (callers write to a temporary name and rename)."""
    big = any(isinstance(s, DataSheet) and len(s.frame) * max(1, s.frame.shape[1]) > 10_000_000 for s in sheets)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as package:
        package.writestr("[Content_Types].xml", _content_types(len(sheets)))
        package.writestr("_rels/.rels", _PACKAGE_RELS)
        package.writestr("xl/workbook.xml", _workbook_xml(sheets))
        package.writestr("xl/_rels/workbook.xml.rels", _workbook_rels(len(sheets)))
        package.writestr("xl/styles.xml", _STYLES)
        for number, sheet in enumerate(sheets, start=1):
            part = f"xl/worksheets/sheet{number}.xml"
            if isinstance(sheet, DataSheet):
                # Zip64 only when the part may pass 2 GiB: smaller packages stay readable everywhere.
                with package.open(part, "w", force_zip64=big) as stream:
                    _write_data_sheet(stream, sheet, tab_selected=number == 1)
            else:
                package.writestr(part, _table_sheet_xml(sheet, tab_selected=number == 1))


# -- a data sheet, in Arrow ------------------------------------------------------------------------


def _write_data_sheet(stream, sheet: DataSheet, *, tab_selected: bool) -> None:
    frame = sheet.frame
    rows, width = frame.shape
    problem = fits_in_a_sheet(rows, width)
    if problem:
        raise ValueError(problem)
    letters = [column_letters(i) for i in range(width)]
    last = f"{letters[-1]}{rows + 1}" if width else "A1"
    kinds = [sheet.kinds.get(str(name), Kind.TEXT) for name in frame.columns]
    stream.write(
        (
            f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<worksheet xmlns="{MAIN_NS}" '
            f'xmlns:r="{REL_NS}"><dimension ref="A1:{last}"/>'
            f'<sheetViews><sheetView {_SELECTED if tab_selected else ""}workbookViewId="0">'
            '<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>'
            '<selection pane="bottomLeft" activeCell="A2" sqref="A2"/></sheetView></sheetViews>'
            f'<sheetFormatPr defaultRowHeight="15"/>{_cols(_widths(frame, kinds))}<sheetData>'
        ).encode()
    )
    header = "".join(
        f'<c r="{letter}1" s="{_HEADER_STYLE}" t="inlineStr"><is><t>{_text(str(name))}</t></is></c>'
        for letter, name in zip(letters, frame.columns, strict=True)
    )
    stream.write(f'<row r="1">{header}</row>'.encode())
    marks = np.zeros(rows, dtype=np.int64) if sheet.marks is None else np.asarray(sheet.marks, dtype=np.int64)

    def rows_xml(start: int) -> pa.Array:
        stop = min(rows, start + SLICE_ROWS)
        numbers = pc.cast(pa.array(np.arange(start + 2, stop + 2, dtype=np.int64)), pa.large_string())
        styles = pa.array(marks[start:stop] * 3 + _FIRST_CELL_STYLE, pa.int64())
        cells = [
            _cells(frame.iloc[start:stop, position], kind, letter, numbers, styles)
            for position, (kind, letter) in enumerate(zip(kinds, letters, strict=True))
        ]
        return pc.binary_join_element_wise(
            _scalar('<row r="'),
            numbers,
            _scalar('">'),
            *cells,
            _scalar("</row>"),
            _scalar(""),
            null_handling="replace",
            null_replacement="",
        )

    # The next slice is built while this one is compressed: Arrow and zlib both let go of the GIL.
    with ThreadPoolExecutor(max_workers=1) as builder:
        pending = builder.submit(rows_xml, 0) if rows else None
        for start in range(0, rows, SLICE_ROWS):
            assert pending is not None
            xml = pending.result()
            pending = builder.submit(rows_xml, start + SLICE_ROWS) if start + SLICE_ROWS < rows else None
            stream.write(_joined_bytes(xml))
    filters = f'<autoFilter ref="A1:{last}"/>' if width else ""
    stream.write(
        f'</sheetData>{filters}<pageMargins left="0.7" right="0.7" top="0.75" bottom="0.75" header="0.3" '
        'footer="0.3"/></worksheet>'.encode()
    )


def _scalar(text: str) -> pa.Scalar:
    return pa.scalar(text, pa.large_string())


def _cells(column: pd.Series, kind: Kind, letter: str, numbers: pa.Array, styles: pa.Array) -> pa.Array:
    """One column's cells of a slice as XML (an empty string where the value is missing)."""
    if column.isna().all():
        return pa.nulls(len(column), pa.large_string())  # joined as nothing
    style = pc.cast(pc.add(styles, int(kind)), pa.large_string())
    if kind == Kind.TEXT:
        values, spaced = _text_values(column)
        opening: pa.Array | pa.Scalar = _scalar("<t>")
        if spaced is not None:
            opening = pc.if_else(spaced, _scalar('<t xml:space="preserve">'), opening)
        parts = [_scalar('" t="inlineStr"><is>'), opening, values, _scalar("</t></is></c>")]
    else:
        parts = [_scalar('"><v>'), _number_values(column, kind), _scalar("</v></c>")]
    cells = pc.binary_join_element_wise(
        _scalar(f'<c r="{letter}'), numbers, _scalar('" s="'), style, *parts, _scalar(""), null_handling="emit_null"
    )
    return cells


def _text_values(column: pd.Series) -> tuple[pa.Array, pa.Array | None]:
    """A column as XML-escaped text (missing stays missing), cut to what a cell holds, and which
    values start or end with a space (None: none does). One look finds the usual case, text that
    needs nothing done."""
    values = pa.array(column.astype("string"), from_pandas=True)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = pc.cast(values, pa.large_string())
    if pc.any(pc.greater(pc.utf8_length(values), MAX_TEXT)).as_py():
        values = pc.utf8_slice_codeunits(values, 0, MAX_TEXT)
    if not pc.any(pc.match_substring_regex(values, _NEEDS_CARE)).as_py():
        return values, None
    for pattern, replacement in ((_INVALID_XML, "\ufffd"), (_ESCAPED_LOOKALIKE, r"_x005F_\1")):
        if pc.any(pc.match_substring_regex(values, pattern)).as_py():
            values = pc.replace_substring_regex(values, pattern, replacement)
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):  # & first: it starts the others
        if pc.any(pc.match_substring(values, char)).as_py():
            values = pc.replace_substring(values, char, entity)
    spaced = pc.match_substring_regex(values, r"^\s|\s$")
    return values, spaced if pc.any(spaced).as_py() else None


def _number_values(column: pd.Series, kind: Kind) -> pa.Array:
    """Numbers as the text of a `<v>`: integers as they are, UTC times as Excel serial days."""
    if kind == Kind.DATETIME:
        stamps = pd.to_datetime(column, utc=True).dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
        missing = np.isnat(stamps)
        serial = np.where(missing, 0, stamps.view(np.int64)) / 86_400_000_000 + 25_569.0  # days since 1899-12-30
        return pc.cast(pa.array(serial, mask=missing), pa.large_string())
    return pc.cast(pa.array(column, from_pandas=True), pa.large_string())


def _joined_bytes(rows: pa.Array) -> memoryview:
    """The concatenated text of a large_string array, without copying it."""
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)[rows.offset : rows.offset + len(rows) + 1]
    return memoryview(rows.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


def _widths(frame: pd.DataFrame, kinds: list[Kind]) -> list[float]:
    """Column widths from the header and the first rows: readable, never wider than 60."""
    sample = frame.head(500)
    widths = []
    for (name, values), kind in zip(sample.items(), kinds, strict=True):
        if kind == Kind.DATETIME:
            longest = 19
        else:
            lengths = values.astype("string").str.len()
            longest = int(lengths.max()) if lengths.notna().any() else 0
        widths.append(float(min(60, max(len(str(name)) + 3, longest + 2, 8))))
    return widths


def _cols(widths: list[float]) -> str:
    if not widths:
        return ""
    cols = "".join(f'<col min="{i}" max="{i}" width="{w:g}" customWidth="1"/>' for i, w in enumerate(widths, start=1))
    return f"<cols>{cols}</cols>"


# -- a small table sheet, in Python ----------------------------------------------------------------


def _table_sheet_xml(sheet: TableSheet, *, tab_selected: bool) -> str:
    rows = []
    for index, values in enumerate(sheet.rows):
        cells = []
        for position, value in enumerate(values):
            if value is None or value == "":
                continue
            ref = f"{column_letters(position)}{index + 1}"
            bold = index in sheet.bold
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                style = _HEADER_STYLE if bold else _FIRST_CELL_STYLE + Kind.NUMBER
                cells.append(f'<c r="{ref}" s="{style}"><v>{value}</v></c>')
            else:
                style = _HEADER_STYLE if bold else _FIRST_CELL_STYLE + Kind.TEXT
                cells.append(f'<c r="{ref}" s="{style}" t="inlineStr"><is><t>{_text(str(value))}</t></is></c>')
        rows.append(f'<row r="{index + 1}">{"".join(cells)}</row>')
    width = max((len(r) for r in sheet.rows), default=1)
    last = f"{column_letters(max(width, 1) - 1)}{max(len(sheet.rows), 1)}"
    return (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<worksheet xmlns="{MAIN_NS}" '
        f'xmlns:r="{REL_NS}"><dimension ref="A1:{last}"/><sheetViews><sheetView '
        f'{_SELECTED if tab_selected else ""}workbookViewId="0"/></sheetViews>'
        f'<sheetFormatPr defaultRowHeight="15"/>{_cols(sheet.widths)}<sheetData>{"".join(rows)}</sheetData>'
        '<pageMargins left="0.7" right="0.7" top="0.75" bottom="0.75" header="0.3" footer="0.3"/></worksheet>'
    )


def _text(value: str) -> str:
    """One text for a cell: cut to what a cell holds, without characters XML cannot carry, escaped."""
    value = re.sub(_INVALID_XML, "\ufffd", value[:MAX_TEXT])
    return escape(re.sub(_ESCAPED_LOOKALIKE, r"_x005F_\1", value))


# -- the fixed parts -------------------------------------------------------------------------------


def _content_types(sheets: int) -> str:
    overrides = "".join(
        f'<Override PartName="/xl/worksheets/sheet{n}.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        for n in range(1, sheets + 1)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/styles.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
        f"{overrides}</Types>"
    )


_PACKAGE_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    f'<Relationships xmlns="{PACKAGE_REL_NS}"><Relationship Id="rId1" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
    'Target="xl/workbook.xml"/></Relationships>'
)


def _workbook_rels(sheets: int) -> str:
    links = "".join(
        f'<Relationship Id="rId{n}" Type="{REL_NS}/worksheet" Target="worksheets/sheet{n}.xml"/>'
        for n in range(1, sheets + 1)
    )
    styles = f'<Relationship Id="rId{sheets + 1}" Type="{REL_NS}/styles" Target="styles.xml"/>'
    return (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Relationships xmlns="{PACKAGE_REL_NS}">'
        f"{links}{styles}</Relationships>"
    )


def _workbook_xml(sheets: Sequence[DataSheet | TableSheet]) -> str:
    entries, filters = [], []
    for index, sheet in enumerate(sheets):
        entries.append(f'<sheet name={quoteattr(sheet.name)} sheetId="{index + 1}" r:id="rId{index + 1}"/>')
        if isinstance(sheet, DataSheet) and sheet.frame.shape[1]:
            last = f"${column_letters(sheet.frame.shape[1] - 1)}${len(sheet.frame) + 1}"
            quoted = "'" + sheet.name.replace("'", "''") + "'"
            filters.append(
                f'<definedName name="_xlnm._FilterDatabase" localSheetId="{index}" hidden="1">'
                f"{escape(quoted)}!$A$1:{last}</definedName>"
            )
    names = f"<definedNames>{''.join(filters)}</definedNames>" if filters else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<workbook xmlns="{MAIN_NS}" xmlns:r="{REL_NS}">'
        '<workbookPr/><bookViews><workbookView xWindow="240" yWindow="15" windowWidth="16095" windowHeight="9660"/>'
        f'</bookViews><sheets>{"".join(entries)}</sheets>{names}<calcPr calcId="124519"/></workbook>'
    )


def _style_xfs() -> str:
    """Default, header, then for each mark (none, failed, rejected) a text, a number and a date style."""
    xfs = [
        '<xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>',
        '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/>',
    ]
    for fill in (0, 2, 3):
        applied = ' applyFill="1"' if fill else ""
        for number_format in (49, 0, 164):  # 49 is Excel's built-in text format "@"
            xfs.append(
                f'<xf numFmtId="{number_format}" fontId="0" fillId="{fill}" borderId="0" xfId="0" '
                f'applyNumberFormat="1"{applied}/>'
            )
    return f'<cellXfs count="{len(xfs)}">{"".join(xfs)}</cellXfs>'


_STYLES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    f'<styleSheet xmlns="{MAIN_NS}">'
    '<numFmts count="1"><numFmt numFmtId="164" formatCode="yyyy\\-mm\\-dd\\ hh:mm:ss"/></numFmts>'
    '<fonts count="2"><font><sz val="11"/><color theme="1"/><name val="Calibri"/><family val="2"/>'
    '<scheme val="minor"/></font><font><b/><sz val="11"/><color theme="1"/><name val="Calibri"/>'
    '<family val="2"/><scheme val="minor"/></font></fonts>'
    '<fills count="4"><fill><patternFill patternType="none"/></fill><fill><patternFill patternType="gray125"/>'
    '</fill><fill><patternFill patternType="solid"><fgColor rgb="FFFFC7CE"/><bgColor indexed="64"/>'
    '</patternFill></fill><fill><patternFill patternType="solid"><fgColor rgb="FFFFEB9C"/>'
    '<bgColor indexed="64"/></patternFill></fill></fills>'
    '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
    '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    f"{_style_xfs()}"
    '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
    '<dxfs count="0"/><tableStyles count="0" defaultTableStyle="TableStyleMedium9" '
    'defaultPivotStyle="PivotStyleLight16"/></styleSheet>'
)
