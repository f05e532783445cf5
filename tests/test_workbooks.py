"""Excel in and out: workbooks as decision files, results.xlsx, a CSV safe to open, needs_attention.

Input workbooks are written the two ways analysts' files usually are made: by openpyxl (the
way Excel itself stores cells: shared strings, error cells with t="e") and by XlsxWriter.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest
import xlsxwriter

from connectors.vocabulary import ErrorCode
from flows.cli.main import EXIT_ROWS_NOT_DONE, EXIT_UNUSABLE, main
from flows.pipeline import workbook_reader, workbook_writer
from flows.pipeline.reader import UnusableFile, read_decision_file, read_decisions
from flows.pipeline.results import (
    NEEDS_ATTENTION_CODES,
    RunSummary,
    needs_attention,
    spreadsheet_safe,
    write_needs_attention,
    write_results,
    write_results_workbook,
)
from flows.pipeline.validation import validate_decisions
from flows.state.ledger import TRANSIENT_CODES
from tests.helpers import seed_approvals

REPO_ROOT = Path(__file__).resolve().parents[1]
HEADER = ["invoice_id", "vendor", "decision", "invoice_number", "void_date", "decided_by", "decided_at", "note"]
ERROR = object()  # in a row given to `workbook`: an Excel error cell (#N/A)
INJECTIONS = ['=HYPERLINK("http://example.invalid/?x=1","click")', "+SUM(1,2)", "-2+3", "@SUM(A1:A2)", "=1+1"]


def workbook(
    path: Path,
    rows: list[list],
    *,
    writer: str = "openpyxl",
    sheet: str = "Decisions",
    at: str = "A1",
    header: list[str] = HEADER,
    more_sheets: dict[str, list[list]] | None = None,
    hidden_first: bool = False,
) -> Path:
    """A workbook with `header` and `rows` starting at cell `at`. Strings are text cells (never
    formulas); numbers, dates and booleans are typed cells; ERROR is #N/A, ("#REF!",) another error."""
    start_col = ord(at[0]) - 65
    start_row = int(at[1:]) - 1
    sheets = {**({"Hidden": [["x"]]} if hidden_first else {}), sheet: [header, *rows], **(more_sheets or {})}
    if writer == "openpyxl":
        book = openpyxl.Workbook()
        book.remove(book.active)
        for name, content in sheets.items():
            ws = book.create_sheet(name)
            if name == "Hidden":
                ws.sheet_state = "hidden"
            offset = (start_row, start_col) if name == sheet else (0, 0)
            for r, values in enumerate(content):
                for c, value in enumerate(values):
                    if value is None:
                        continue
                    cell = ws.cell(row=offset[0] + r + 1, column=offset[1] + c + 1)
                    if value is ERROR or isinstance(value, tuple):
                        cell.value = "#N/A" if value is ERROR else value[0]
                        cell.data_type = "e"
                    elif isinstance(value, str):
                        cell.value = value
                        cell.data_type = "s"  # text, even when it starts with "="
                    else:
                        cell.value = value
        book.save(path)
        return path
    book = xlsxwriter.Workbook(path)
    stamp = book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
    day = book.add_format({"num_format": "yyyy-mm-dd"})
    for name, content in sheets.items():
        ws = book.add_worksheet(name)
        if name == "Hidden":
            ws.hide()
        offset = (start_row, start_col) if name == sheet else (0, 0)
        for r, values in enumerate(content):
            for c, value in enumerate(values):
                row, col = offset[0] + r, offset[1] + c
                if value is None:
                    continue
                if value is ERROR or isinstance(value, tuple):
                    ws.write_formula(
                        row, col, "=NA()" if value is ERROR else "=#REF!", None, "#N/A" if value is ERROR else value[0]
                    )
                elif isinstance(value, str):
                    ws.write_string(row, col, value)
                elif isinstance(value, dt.datetime):
                    ws.write_datetime(row, col, value, stamp)
                elif isinstance(value, dt.date):
                    ws.write_datetime(row, col, dt.datetime.combine(value, dt.time()), day)
                elif isinstance(value, bool):
                    ws.write_boolean(row, col, value)
                else:
                    ws.write_number(row, col, value)
    book.close()
    return path


def values(frame: pd.DataFrame, column: str) -> list:
    return [None if pd.isna(v) else v for v in frame[column].tolist()]


def unusable(path: Path, **kwargs) -> str:
    with pytest.raises(UnusableFile) as caught:
        read_decisions(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message.split(": ", 1)[1]


WRITERS = pytest.mark.parametrize("writer", ["openpyxl", "xlsxwriter"])


# -- reading ------------------------------------------------------------------------------------


@WRITERS
def test_cells_become_the_text_excel_shows(tmp_path, writer):
    rows = [
        ["00042", "Alfred ", " Approve", None, None, "m.ortiz", dt.datetime(2026, 11, 28, 9, 12), "Office, November"],
        [1001, "modulus", "cancel", 5505, dt.datetime(2026, 1, 14, 19, 59, 22), True, dt.date(2026, 11, 3), 2.5],
        [1234567890123456, "alfred", "approve", None, dt.date(2026, 1, 14), None, None, 0.1 + 0.2],
    ]
    frame = read_decisions(workbook(tmp_path / "d.xlsx", rows, writer=writer))
    assert values(frame, "invoice_id") == ["00042", "1001", "1234567890123456"]  # text stays, no ".0", exact
    assert values(frame, "vendor") == ["alfred", "modulus", "alfred"] and values(frame, "decision")[0] == "approve"
    assert values(frame, "invoice_number") == [None, "5505", None]
    assert values(frame, "void_date") == [None, "2026-01-14 19:59:22", "2026-01-14 00:00:00"]
    assert values(frame, "decided_at") == ["2026-11-28 09:12:00", "2026-11-03 00:00:00", None]
    assert values(frame, "decided_by") == ["m.ortiz", "TRUE", None]
    assert values(frame, "note") == ["Office, November", "2.5", "0.3"]
    assert all(frame[c].dtype == "string" for c in HEADER)


@WRITERS
def test_row_numbers_are_the_rows_excel_shows_and_empty_rows_are_not_rows(tmp_path, writer):
    rows = [["A1", "alfred", "approve"], [None] * 3, ["A2", "alfred", "approve"], ["  ", None, ""], [None] * 3]
    path = workbook(tmp_path / "d.xlsx", rows, writer=writer, at="C4", header=HEADER[:3])
    # trailing empty rows, formatted but empty cells far below: still not rows
    frame = read_decisions(path)
    assert values(frame, "invoice_id") == ["A1", "A2"]
    assert frame["row_number"].tolist() == [5, 7]  # header in row 4; row 6 is empty
    report = validate_decisions(read_decisions(path))
    assert report.row_errors == {}


@WRITERS
def test_an_excel_error_in_a_decision_column_rejects_its_row_naming_the_cell(tmp_path, writer):
    rows = [
        ["A1", "alfred", "approve", None, None, None, None, ERROR],  # in a note: just the text
        [ERROR, "alfred", "approve"],
        ["A2", "alfred", "approve", ("#REF!",)],  # alfred needs no invoice_number: only the error rejects it
        ["A3", "alfred", "approve"],
    ]
    path = workbook(tmp_path / "d.xlsx", rows, writer=writer, at="B1")
    decisions = read_decision_file(path)
    assert values(decisions.frame, "note")[0] == "#N/A"
    assert values(decisions.frame, "invoice_id") == ["A1", None, "A2", "A3"]  # an error is no value
    assert [(c.row_number, c.cell, c.error) for c in decisions.error_cells] == [(3, "B3", "#N/A"), (4, "E4", "#REF!")]
    report = validate_decisions(decisions.frame, error_cells=decisions.error_cells)
    assert set(report.row_errors) == {3, 4}
    assert report.row_errors[3][0] == "cell B3 (invoice_id) holds the Excel error #N/A, not a value"
    assert report.row_errors[4] == ["cell E4 (invoice_number) holds the Excel error #REF!, not a value"]


def test_the_sheet_by_name_or_the_first_visible_one(tmp_path):
    other = {"Notes": [HEADER[:3], ["N1", "alfred", "approve"]]}
    path = workbook(tmp_path / "d.xlsx", [["D1", "alfred", "approve"]], more_sheets=other, hidden_first=True)
    assert read_decision_file(path).sheet == "Decisions"  # the hidden first sheet is not the analyst's
    assert values(read_decisions(path, sheet="Notes"), "invoice_id") == ["N1"]
    assert values(read_decisions(path, sheet=" notes "), "invoice_id") == ["N1"]
    assert "no sheet named 'Totals' (the workbook has 'Hidden', 'Decisions', 'Notes')" in unusable(path, sheet="Totals")
    # CSV has no sheets: the parameter does not apply (the inbox passes it to workbooks only)
    csv = tmp_path / "d.csv"
    csv.write_text("invoice_id,vendor,decision\n1,alfred,approve\n")
    assert len(read_decisions(csv, sheet="Notes")) == 1


def test_macro_enabled_workbooks_are_read(tmp_path):
    path = workbook(tmp_path / "d.xlsx", [["A1", "alfred", "approve"]])
    macro = tmp_path / "d.xlsm"
    macro.write_bytes(path.read_bytes())
    assert values(read_decisions(macro), "invoice_id") == ["A1"]


def test_a_large_sheet_is_read_in_batches_with_its_row_numbers(tmp_path):
    rows = [[f"A{i}", "alfred", "approve"] if i % 7 else [None, None, None] for i in range(1, 2501)]
    path = workbook(tmp_path / "d.xlsx", rows, writer="xlsxwriter", header=HEADER[:3])
    from flows.pipeline.reader import iter_decision_batches

    batches = list(iter_decision_batches(path, batch_rows=1000))
    frame = pd.concat(batches, ignore_index=True)
    expected = [i + 1 for i in range(1, 2501) if i % 7]
    assert frame["row_number"].tolist() == expected and len(batches) == 3
    assert values(frame, "invoice_id")[-1] == "A2500"


# -- bad workbooks: one line, and nothing read --------------------------------------------------


def ole2(path: Path, encrypted: bool) -> Path:
    """An OLE2 compound file: an old .xls, or (with its EncryptedPackage stream) an encrypted .xlsx."""
    directory = "EncryptedPackage".encode("utf-16-le") if encrypted else "Workbook".encode("utf-16-le")
    path.write_bytes(workbook_reader.OLE2_MAGIC + bytes(504) + directory + bytes(4096))
    return path


def zipped(path: Path, parts: dict[str, bytes | str]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as package:
        for name, content in parts.items():
            package.writestr(name, content)
    return path


def test_refusals_of_files_that_are_not_usable_workbooks(tmp_path):
    assert "old Excel 97-2003 workbook (.xls)" in unusable(ole2(tmp_path / "d.xls", encrypted=False))
    assert "old Excel 97-2003 workbook (.xls format)" in unusable(ole2(tmp_path / "d.xlsx", encrypted=False))
    assert "password-protected" in unusable(ole2(tmp_path / "p.xlsx", encrypted=True))
    csv_named_xlsx = tmp_path / "c.xlsx"
    csv_named_xlsx.write_text("invoice_id,vendor,decision\n1,alfred,approve\n")
    assert "is a zip package, this one is not" in unusable(csv_named_xlsx)
    assert "a zip archive without a workbook" in unusable(zipped(tmp_path / "z.xlsx", {"notes.txt": "hello"}))
    word = zipped(tmp_path / "w.xlsx", {"word/document.xml": "<w/>"})
    assert "a Word document" in unusable(word)
    broken = tmp_path / "b.xlsx"
    broken.write_bytes(workbook(tmp_path / "ok.xlsx", [["A1", "alfred", "approve"]]).read_bytes()[:300])
    assert "not a readable Excel workbook" in unusable(broken)


def minimal_package(sheet_xml: str, sheets: str = '<sheet name="S" sheetId="1" r:id="rId1"/>') -> dict[str, str]:
    main = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    rel = 'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
    types = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    return {
        "[Content_Types].xml": '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="xml" ContentType="application/xml"/></Types>',
        "_rels/.rels": '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{types}/officeDocument" Target="xl/workbook.xml"/></Relationships>',
        "xl/workbook.xml": f"<workbook {main} {rel}><sheets>{sheets}</sheets></workbook>",
        "xl/_rels/workbook.xml.rels": '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{types}/worksheet" Target="worksheets/sheet1.xml"/></Relationships>',
        "xl/worksheets/sheet1.xml": f"<worksheet {main}><sheetData>{sheet_xml}</sheetData></worksheet>",
    }


def test_refusals_of_workbooks_without_a_sheet_or_a_header(tmp_path):
    assert "no worksheet" in unusable(zipped(tmp_path / "n.xlsx", minimal_package("", sheets="")))
    assert "sheet 'S' is empty: no header row" in unusable(zipped(tmp_path / "e.xlsx", minimal_package("")))
    header_only = workbook(tmp_path / "h.xlsx", [])
    assert len(read_decisions(header_only)) == 0
    no_ids = workbook(tmp_path / "m.xlsx", [["alfred"]], header=["vendor"])
    assert "required columns missing: invoice_id, decision" in unusable(no_ids)
    unpositioned = '<row r="1"><c t="inlineStr"><is><t>invoice_id</t></is></c></row>'
    assert "cells without a position" in unusable(zipped(tmp_path / "u.xlsx", minimal_package(unpositioned)))
    padded = '<row r="1"><c r="A01" t="inlineStr"><is><t>invoice_id</t></is></c></row>'  # no program writes A01
    assert "beyond Excel's sheet size" in unusable(zipped(tmp_path / "p.xlsx", minimal_package(padded)))


def test_a_package_without_relationships_and_a_giant_value(tmp_path):
    header = '<row r="1"><c r="A1" t="inlineStr"><is><t>invoice_id</t></is></c><c r="B1" t="inlineStr"><is><t>vendor'
    header += '</t></is></c><c r="C1" t="inlineStr"><is><t>decision</t></is></c></row>'
    parts = minimal_package(header)
    assert len(read_decisions(zipped(tmp_path / "ok.xlsx", parts))) == 0
    del parts["_rels/.rels"]  # the package's relationships lead to its workbook: without them there is none
    assert "a zip archive without a workbook inside" in unusable(zipped(tmp_path / "r.xlsx", parts))
    letters = bytes(os.urandom(40 << 20)).translate(bytes(97 + b % 26 for b in range(256)))  # hardly compressible
    giant = header + f'<row r="2"><c r="A2" t="inlineStr"><is><t>{letters.decode()}</t></is></c></row>'
    assert "a value far larger than a cell can" in unusable(zipped(tmp_path / "g.xlsx", minimal_package(giant)))


def bomb_files(folder: Path) -> dict[str, Path]:
    """Workbooks that would take far more memory than they take disk."""
    folder.mkdir(exist_ok=True)
    files = {}
    # 1. Two cells that ask calamine for a 1,048,576 x 16,384 grid (550 GB): a few kB on disk.
    book = openpyxl.Workbook()
    book.active.append(["invoice_id", "vendor", "decision"])
    book.active["XFD1048576"] = "x"
    book.save(files.setdefault("extent", folder / "extent.xlsx"))
    # 2. A sheet that inflates over a thousand times (20 MiB of nothing in 20 kB).
    parts = minimal_package(
        '<row r="1"><c r="A1" t="inlineStr"><is><t>invoice_id</t></is></c></row>' + " " * (20 << 20)
    )
    zipped(files.setdefault("ratio", folder / "ratio.xlsx"), parts)
    # 3. A central directory that declares a 4 GiB sheet (refused before anything is inflated).
    declared = folder / "declared.xlsx"
    zipped(declared, minimal_package('<row r="1"><c r="A1" t="inlineStr"><is><t>x</t></is></c></row>'))
    data = bytearray(declared.read_bytes())
    entry = data.rfind(b"xl/worksheets/sheet1.xml") - 46  # its central directory record
    assert data[entry : entry + 4] == b"PK\x01\x02"
    data[entry + 24 : entry + 28] = (0xFFFFFFF0).to_bytes(4, "little")  # the uncompressed size
    declared.write_bytes(bytes(data))
    files["declared"] = declared
    return files


def test_decompression_bombs_are_refused_before_they_are_inflated(tmp_path):
    files = bomb_files(tmp_path / "bombs")
    assert "spans A1:XFD1048576" in unusable(files["extent"])
    assert "a zip bomb?" in unusable(files["ratio"])
    assert "would inflate to" in unusable(files["declared"])


@pytest.mark.parametrize("name", ["extent", "ratio", "declared"])
def test_validate_refuses_a_bomb_with_one_line_and_little_memory(tmp_path, name):
    """The command as an analyst's colleague runs it: exit 2, one line, peak memory far from 2 GiB."""
    path = bomb_files(tmp_path / "bombs")[name]
    script = (
        "import resource, sys\nfrom flows.cli.main import main\ncode = main(['validate', sys.argv[1]])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stdout)\nsys.exit(code)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == EXIT_UNUSABLE, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert str(path) in done.stderr
    peak_mib = int(done.stdout.strip().splitlines()[-1]) / 1024
    assert peak_mib < 1024, f"{peak_mib:.0f} MiB"


def test_the_sheet_scan_finds_every_position_and_error_the_way_calamine_places_them(tmp_path):
    """The numpy scan of the sheet XML against openpyxl's own reading of the same cells."""
    book = openpyxl.Workbook()
    ws = book.active
    cells = {"B2": "x", "AA10": "y", "ZZ99": "z", "ABC7": "w", "C3": "#N/A", "AB12": "#DIV/0!"}
    for ref, value in cells.items():
        ws[ref] = value
    book.save(tmp_path / "s.xlsx")
    with zipfile.ZipFile(tmp_path / "s.xlsx") as package:
        scan = workbook_reader._Extent()
        errors: dict = {}
        text = package.read("xl/worksheets/sheet1.xml")
        scan.add(text)
        workbook_reader._collect_errors(text, errors)
    assert (scan.rows, scan.columns, scan.cells, scan.positioned) == ((2, 99), (2, 731), 6, 6)
    assert errors == {(2, 2): "#N/A", (11, 27): "#DIV/0!"}
    assert [workbook_reader.column_letters(i) for i in (0, 25, 26, 701, 702, 16383)] == [
        "A",
        "Z",
        "AA",
        "ZZ",
        "AAA",
        "XFD",
    ]


# -- results.xlsx ---------------------------------------------------------------------------------


def results_frame(n: int = 4) -> pd.DataFrame:
    outcomes = ["succeeded", "failed", "rejected", "skipped"]
    return pd.DataFrame(
        {
            "row_number": np.arange(2, n + 2, dtype=np.int64),
            "invoice_id": pd.array(["00042", "1234567890123456", "=1+1", "A&B <x>"][:n], dtype="string"),
            "vendor": pd.array(["alfred"] * n, dtype="string"),
            "decision": pd.array(["approve"] * n, dtype="string"),
            "outcome": pd.array([outcomes[i % 4] for i in range(n)], dtype="string"),
            "http_status": pd.array([200, 404, None, None][:n], dtype="Int64"),
            "error_code": pd.array([None, "NOT_FOUND", "INVALID_ROW", "DUPLICATE_ROW"][:n], dtype="string"),
            "error_message": pd.array(
                ["", "HTTP 404: Invoice not found", "=cmd|' /C calc'!A0", " lead"][:n], dtype="string"
            ),
            "attempts": np.array([1, 1, 0, 0][:n], dtype=np.int64),
            "finished_at": pd.to_datetime(["2026-11-30 18:00:01.250"] * n, utc=True),
            "run_id": pd.array(["r1"] * n, dtype="string"),
            "note": pd.array(["_x0041_", "ctrl\x01char", None, "-2.5"][:n], dtype="string"),
            "previous_run_id": pd.array([None] * n, dtype="string"),
        }
    )


def summary_of(results: pd.DataFrame) -> RunSummary:
    from flows.pipeline.results import summarize

    return summarize(results, "r1", "decisions.xlsx")


def test_results_workbook_keeps_ids_as_text_marks_rows_and_has_a_summary(tmp_path):
    results = results_frame()
    summary = summary_of(results)
    path = write_results_workbook(results, summary, tmp_path)
    assert path == tmp_path / "results.xlsx" and summary.workbook_path == str(path)
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["results", "summary"]
    sheet = book["results"]
    assert sheet.freeze_panes == "A2" and sheet.auto_filter.ref == "A1:M5"
    assert all(cell.font.b for cell in sheet[1]) and [c.value for c in sheet[1]] == list(results.columns)
    ids = [sheet.cell(row=r, column=2) for r in range(2, 6)]
    assert [c.value for c in ids] == ["00042", "1234567890123456", "=1+1", "A&B <x>"]
    assert all(c.data_type == "s" and c.number_format == "@" for c in ids)  # text: never a number, never a formula
    assert sheet["A2"].value == 2 and sheet["F3"].value == 404 and sheet["F4"].value is None
    assert sheet["J2"].value == dt.datetime(2026, 11, 30, 18, 0, 1, 250000)
    assert sheet["H4"].value == "=cmd|' /C calc'!A0" and sheet["H5"].value == " lead"
    assert sheet["L3"].value == "ctrl\ufffdchar"  # XML cannot carry a control character
    assert sheet["L2"].value == "_x005F_x0041_"  # openpyxl shows the stored text; Excel and calamine read it:
    fills = [
        sheet.cell(row=r, column=1).fill.fgColor.rgb if sheet.cell(row=r, column=1).fill.fill_type else None
        for r in range(2, 6)
    ]
    assert fills == [None, "FFFFC7CE", "FFFFEB9C", None]  # failed red, rejected amber
    rows = [[v for v in row if v is not None] for row in book["summary"].iter_rows(values_only=True)]
    assert ["vendor", "succeeded", "failed", "rejected", "skipped", "total"] in rows
    assert ["alfred", 1, 1, 1, 1, 4] in rows and ["total", 1, 1, 1, 1, 4] in rows
    assert ["alfred", "NOT_FOUND", 1] in rows
    again = pd.DataFrame(workbook_reader.open_sheet(path, None).rows)
    assert values(again, 1)[1] == "00042" and values(again, 11)[1] == "_x0041_"  # not "A"


def test_no_workbook_above_excels_row_limit_and_the_summary_says_why(tmp_path, monkeypatch):
    results = results_frame()
    (tmp_path / "results.xlsx").write_bytes(b"an earlier run's workbook")
    monkeypatch.setattr(workbook_writer, "EXCEL_MAX_ROWS", 4)  # a header and 3 rows
    summary = summary_of(results)
    assert write_results_workbook(results, summary, tmp_path) is None
    assert summary.no_workbook_because == "4 rows and a header are more than the 4 rows an Excel sheet holds"
    assert not (tmp_path / "results.xlsx").exists()


def test_a_big_results_workbook_is_read_back_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(workbook_writer, "SLICE_ROWS", 7)  # many slices
    n = 50
    results = pd.concat([results_frame()] * (n // 4 + 1), ignore_index=True).head(n)
    results["row_number"] = np.arange(2, n + 2)
    write_results_workbook(results, summary_of(results), tmp_path)
    back = pd.read_excel(tmp_path / "results.xlsx", sheet_name="results", dtype=str, engine="openpyxl")
    assert len(back) == n and back["row_number"].tolist() == [str(i) for i in range(2, n + 2)]
    assert back["invoice_id"].tolist() == results["invoice_id"].tolist()


# -- results.csv, safe to open --------------------------------------------------------------------


def test_csv_cells_that_would_start_a_formula_get_a_quote_and_numbers_stay(tmp_path):
    frame = pd.DataFrame(
        {
            "note": pd.array([*INJECTIONS, "-2.5", "+1", "\tx", "\rx", "ok", None, "1e5"], dtype="string"),
            "n": np.arange(12),
        }
    )
    safe = spreadsheet_safe(frame)
    assert values(safe, "note") == [*(f"'{v}" for v in INJECTIONS), "-2.5", "+1", "'\tx", "'\rx", "ok", None, "1e5"]
    assert values(frame, "note")[0] == INJECTIONS[0]  # the frame given is left alone
    assert spreadsheet_safe(frame[["n"]]) is not None and list(
        spreadsheet_safe(pd.DataFrame({"=x": ["a"]})).columns
    ) == ["'=x"]


def test_results_csv_is_safe_and_parquet_keeps_the_values(tmp_path):
    results = results_frame()
    write_results(results, tmp_path)
    csv = pd.read_csv(tmp_path / "results.csv", dtype=str, keep_default_na=False)
    assert csv["invoice_id"].tolist() == ["00042", "1234567890123456", "'=1+1", "A&B <x>"]
    assert csv["error_message"].tolist()[2] == "'=cmd|' /C calc'!A0" and csv["note"].tolist()[3] == "-2.5"
    parquet = pd.read_parquet(tmp_path / "results.parquet")
    assert parquet["invoice_id"].tolist()[2] == "=1+1" and parquet["error_message"].tolist()[2] == "=cmd|' /C calc'!A0"


# -- needs attention -----------------------------------------------------------------------------


def test_every_error_code_is_decided_for_needs_attention():
    """A new code must be placed: does a person fix the row, or does a later run send it by itself?"""
    by_itself = set(TRANSIENT_CODES) | {ErrorCode.CONFIG_MISSING}
    nothing_to_do = {
        ErrorCode.DUPLICATE_ROW,
        ErrorCode.ALREADY_DONE,
        ErrorCode.IN_PROGRESS,
        ErrorCode.VENDOR_NOT_INCLUDED,  # another run sends it
        ErrorCode.ALREADY_IN_STATE,  # succeeded
    }
    assert set(NEEDS_ATTENTION_CODES) | by_itself | nothing_to_do == set(ErrorCode)
    assert not set(NEEDS_ATTENTION_CODES) & (by_itself | nothing_to_do)


def test_needs_attention_has_the_input_columns_and_is_written_only_when_needed(tmp_path):
    frame = pd.DataFrame(
        {
            "row_number": np.arange(1, 6),
            "invoice_id": pd.array(["1", "2", "3", "4", "5"], dtype="string"),
            "cost_center": pd.array(["=1+1", "b", "c", "d", "e"], dtype="string"),
            "vendor": pd.array(["alfred"] * 5, dtype="string"),
            "decision": pd.array(["approve"] * 5, dtype="string"),
            "reason": pd.array(["old"] * 5, dtype="string"),  # a needs-attention file dropped back
        }
    )
    results = pd.DataFrame(
        {
            "outcome": ["rejected", "failed", "failed", "succeeded", "failed"],
            "error_code": pd.array(
                ["INVALID_ROW", "NOT_FOUND", "RETRIES_EXHAUSTED", None, "VENDOR_REJECTED"], dtype="string"
            ),
            "error_message": ["invoice_id is required", "HTTP 404", "HTTP 503", "", "HTTP 422"],
        }
    )
    attention = needs_attention(frame, results)
    assert list(attention.columns) == ["invoice_id", "cost_center", "vendor", "decision", "error_code", "reason"]
    assert attention["invoice_id"].tolist() == ["1", "2", "5"] and attention["reason"].tolist()[1] == "HTTP 404"
    summary = summary_of(results_frame())
    written = write_needs_attention(attention, summary, tmp_path)
    assert [p.name for p in written] == ["needs_attention.xlsx", "needs_attention.csv"]
    assert summary.needs_attention_paths == [str(p) for p in written] and summary.needs_attention_path == str(
        written[0]
    )
    assert pd.read_csv(tmp_path / "needs_attention.csv", dtype=str)["cost_center"].tolist()[0] == "'=1+1"
    back = read_decisions(tmp_path / "needs_attention.xlsx")
    assert values(back, "cost_center")[0] == "=1+1" and values(back, "error_code") == [
        "INVALID_ROW",
        "NOT_FOUND",
        "VENDOR_REJECTED",
    ]
    # a later run into the same folder with nothing to fix leaves no stale file behind
    assert write_needs_attention(attention.head(0), summary, tmp_path) == []
    assert not list(tmp_path.glob("needs_attention.*")) and summary.needs_attention_path is None


def test_validate_command_on_a_workbook(tmp_path, capsys):
    path = workbook(tmp_path / "d.xlsx", [["A1", "alfred", "approve"], [ERROR, "alfred", "approve"]])
    assert main(["validate", str(path)]) == EXIT_ROWS_NOT_DONE
    out = capsys.readouterr().out
    assert "(sheet 'Decisions', rows as Excel numbers them): 2 rows" in out
    assert "row 3 (invoice (none)): cell A3 (invoice_id) holds the Excel error #N/A, not a value" in out
    csv = tmp_path / "d.csv"
    csv.write_text("invoice_id,vendor,decision\n1,alfred,approve\n")
    assert main(["validate", str(csv), "--sheet", "Decisions"]) == EXIT_UNUSABLE
    assert "--sheet is for Excel workbooks" in capsys.readouterr().err


# -- through the flow: run and the inbox ----------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
@WRITERS
def test_run_a_workbook_injection_cells_come_out_safe(sandbox, tmp_path, capsys, writer):
    approvals = seed_approvals(sandbox, "alfred", range(5)) + seed_approvals(sandbox, "modulus", range(2))
    rows = [
        [r["invoice_id"], r["vendor"], r["decision"], r["invoice_number"], None, None, None, note]
        for r, note in zip(approvals, [*INJECTIONS, "-2.5"], strict=False)
    ]
    rows.append(["A00999", "alfred", "approve", None, None, None, None, "not in alfred"])  # NOT_FOUND
    rows.append([int(approvals[6]["invoice_id"]), "modulus", "approve"])  # a number cell; no invoice_number
    header = [*HEADER, "cost_center"]
    rows = [[*r, *([None] * (len(HEADER) - len(r))), "@SUM(A1:A2)"] for r in rows]
    path = workbook(tmp_path / "d.xlsx", rows, writer=writer, header=header)
    out = tmp_path / "out"

    code = main(["run", str(path), "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == EXIT_ROWS_NOT_DONE
    results = pd.read_parquet(out / "results.parquet")
    assert results["row_number"].tolist() == list(range(2, 10))
    assert results["outcome"].tolist() == ["succeeded"] * 6 + ["failed", "rejected"]
    assert results["note"].tolist()[:6] == [*INJECTIONS, "-2.5"]  # parquet: exactly as read
    csv = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
    assert csv["note"].tolist()[:6] == [*(f"'{v}" for v in INJECTIONS), "-2.5"]
    assert set(csv["cost_center"]) == {"'@SUM(A1:A2)"}
    book = openpyxl.load_workbook(out / "results.xlsx")
    note_col = [c.value for c in book["results"][1]].index("note") + 1  # after every result column
    notes = [row[0] for row in book["results"].iter_rows(min_row=2, min_col=note_col, max_col=note_col)]
    assert [c.value for c in notes[:6]] == [*INJECTIONS, "-2.5"] and all(c.data_type == "s" for c in notes[:6])
    attention = read_decisions(out / "needs_attention.xlsx")
    assert values(attention, "invoice_id") == ["A00999", approvals[6]["invoice_id"]]
    assert values(attention, "error_code") == ["NOT_FOUND", "INVALID_ROW"]
    flat = "".join(printed.split())  # the terminal wraps long paths anywhere
    assert "2rowsneedattention(1failed,1rejected):" in flat
    assert f"needsattention:{out / 'needs_attention.xlsx'}" in flat and f"workbook:{out / 'results.xlsx'}" in flat


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_run_refuses_a_bad_workbook_and_sends_nothing(sandbox, tmp_path, capsys):
    path = ole2(tmp_path / "d.xlsx", encrypted=True)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == EXIT_UNUSABLE
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "password-protected" in err
    assert all(sandbox.request_log(v) == [] for v in ("alfred", "accounteer", "appzen", "modulus"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_inbox_round_trip_a_corrected_needs_attention_workbook_is_accepted_and_sent(sandbox, tmp_path):
    from flows.orchestration import inbox as ib
    from flows.state.inbox_folder import InboxLayout

    layout = InboxLayout.of(tmp_path / "inbox")
    layout.create()
    good = seed_approvals(sandbox, "alfred", range(2))
    numbered = seed_approvals(sandbox, "modulus", range(1))[0]
    sandbox.seed("alfred", "A00777")
    rows = [
        [good[0]["invoice_id"], "alfred", "approve", None, None, None, None, INJECTIONS[0]],
        [good[1]["invoice_id"], "alfred", "approve"],
        ["A00778", "alfred", "approve", None, None, None, None, "a typo: A00777"],  # NOT_FOUND
        [numbered["invoice_id"], "modulus", "approve"],  # invoice_number missing: rejected
        [ERROR, "alfred", "approve"],  # an error cell
    ]
    path = workbook(layout.inbox / "decisions.xlsx", rows, sheet="November", more_sheets={"Notes": [["x"]]})
    os.utime(path, (0, 0))

    first = ib.process_inbox(str(layout.inbox), settle_seconds=0, sheet="November", return_state=True)
    assert first.name == "RowsNotDone", first.message
    (folder,) = layout.results.iterdir()
    results = pd.read_parquet(folder / "results.parquet")
    assert results["outcome"].tolist() == ["succeeded", "succeeded", "failed", "rejected", "rejected"]
    assert pd.read_csv(folder / "results.csv", dtype=str)["note"].tolist()[0] == f"'{INJECTIONS[0]}"
    (reason,) = layout.processed.glob("*.reason.txt")
    assert "rows need attention" in reason.read_text() and str(folder / "needs_attention.xlsx") in reason.read_text()

    # the analyst opens needs_attention.xlsx, fixes the three rows, saves, drops it back as it is
    fixed = tmp_path / "needs_attention.xlsx"
    book = openpyxl.load_workbook(folder / "needs_attention.xlsx")
    sheet = book.active
    columns = [c.value for c in sheet[1]]
    assert columns == [*HEADER, "error_code", "reason"] and sheet.max_row == 4
    ids, numbers = columns.index("invoice_id") + 1, columns.index("invoice_number") + 1
    assert [sheet.cell(row=r, column=ids).value for r in (2, 3, 4)] == ["A00778", numbered["invoice_id"], None]
    sheet.cell(row=2, column=ids).value = "A00777"
    sheet.cell(row=3, column=numbers).value = numbered["invoice_number"]
    sheet.cell(row=4, column=ids).value = "A00776"
    sandbox.seed("alfred", "A00776")
    book.save(fixed)
    dropped = layout.inbox / "needs_attention.xlsx"
    fixed.rename(dropped)
    os.utime(dropped, (0, 0))

    # the deployment still reads the sheet "November": needs_attention.xlsx names its sheet so too
    second = ib.process_inbox(str(layout.inbox), settle_seconds=0, sheet="November", return_state=True)
    assert second.is_completed(), second.message
    assert "needs_attention.xlsx: processed (3 succeeded)" in second.message
    again = pd.read_parquet(next(f for f in layout.results.iterdir() if f != folder) / "results.parquet")
    assert again["outcome"].tolist() == ["succeeded"] * 3 and again["row_number"].tolist() == [2, 3, 4]
    assert "input_error_code" in again.columns and "reason" in again.columns  # the old notes, beside the new
    assert sandbox.state("alfred", "A00777") == "approved" and sandbox.state("alfred", "A00776") == "approved"
    assert sandbox.state("modulus", numbered["invoice_id"]) == "STATUS_SENT"
    assert len(list(layout.processed.glob("*.reason.txt"))) == 1  # nothing left to attend to
