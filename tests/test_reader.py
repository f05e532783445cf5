"""Tests for flows.reader: tolerant reading, normalisation, and clear refusals."""

from __future__ import annotations

import contextlib
import csv
import io
import warnings
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.pipeline.reader import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    UnusableFile,
    iter_decision_batches,
    read_decisions,
)

HEADER = "invoice_id,vendor,decision\n"


def write(tmp_path: Path, name: str, content: str | bytes, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


def values(frame: pd.DataFrame, column: str) -> list:
    """A column as a list, with NA as None (pd.NA does not compare with ==)."""
    return [None if pd.isna(v) else v for v in frame[column].tolist()]


def assert_normal_shape(frame: pd.DataFrame) -> None:
    """The contract every frame meets: row_number first (int64, 1..n), strings, RangeIndex."""
    assert frame.columns[0] == "row_number"
    assert frame["row_number"].dtype == np.int64
    assert frame["row_number"].tolist() == list(range(1, len(frame) + 1))
    assert isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0
    for column in frame.columns[1:]:
        assert frame[column].dtype == "string", column
        assert frame[column].dtype.na_value is pd.NA


# -- CSV --------------------------------------------------------------------------------------


def test_csv_basic(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", HEADER + "1,alfred,approve\n2,modulus,cancel\n")
    frame = read_decisions(path)
    assert_normal_shape(frame)
    assert list(frame.columns) == ["row_number", *REQUIRED_COLUMNS]
    assert values(frame, "invoice_id") == ["1", "2"]
    assert values(frame, "vendor") == ["alfred", "modulus"]
    assert values(frame, "decision") == ["approve", "cancel"]


def test_accepts_str_and_pathlike(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", HEADER + "1,alfred,approve\n")
    assert read_decisions(str(path)).equals(read_decisions(path))


def test_upper_case_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "D.CSV", HEADER + "1,alfred,approve\n")
    assert len(read_decisions(path)) == 1


def test_utf8_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "bom.csv", b"\xef\xbb\xbf" + (HEADER + "1,alfred,approve\n").encode())
    frame = read_decisions(path)
    assert list(frame.columns) == ["row_number", *REQUIRED_COLUMNS]
    assert values(frame, "invoice_id") == ["1"]


def test_latin1_cp1252(tmp_path: Path) -> None:
    # é and € in Windows-1252: not valid UTF-8, must be read, not crash
    path = write(tmp_path, "l.csv", b"invoice_id,vendor,decision,note\n1,alfred,approve,caf\xe9 \x80 5\n")
    assert values(read_decisions(path), "note") == ["café € 5"]


def test_latin1_bytes_cp1252_cannot_decode(tmp_path: Path) -> None:
    # 0x81 is undefined in cp1252: the reader falls back to Latin-1, which decodes any byte
    path = write(tmp_path, "l.csv", b"invoice_id,vendor,decision,note\n1,alfred,approve,a\x81\xe9\n")
    assert values(read_decisions(path), "note") == ["a\x81é"]


def test_utf16_with_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "u.csv", "invoice_id\tvendor\tdecision\n1\talfred\tapprove\n", "utf-16")
    assert values(read_decisions(path), "vendor") == ["alfred"]


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_other_delimiters(tmp_path: Path, delimiter: str) -> None:
    text = delimiter.join(["invoice_id", "vendor", "decision", "note"]) + "\n"
    text += delimiter.join(["1", "alfred", "approve", "a, b"]) + "\n"
    frame = read_decisions(write(tmp_path, "d.csv", text))
    assert values(frame, "note") == ["a, b"]
    assert values(frame, "decision") == ["approve"]


def test_semicolon_header_with_comma_in_a_name(tmp_path: Path) -> None:
    # a comma split gives 2 columns without the required ones; the semicolon split wins
    text = "invoice_id;vendor;decision;note, free text\n1;alfred;approve;x\n"
    frame = read_decisions(write(tmp_path, "d.csv", text))
    assert list(frame.columns) == ["row_number", *REQUIRED_COLUMNS, "note, free text"]


def test_excel_sep_hint_line(tmp_path: Path) -> None:
    text = "sep=;\r\ninvoice_id;vendor;decision\r\n1;alfred;approve\r\n"
    frame = read_decisions(write(tmp_path, "d.csv", text))
    assert values(frame, "invoice_id") == ["1"]


def test_quoted_commas_quotes_and_newlines(tmp_path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["invoice_id", "vendor", "decision", "note"])
    writer.writerow(["1", "alfred", "approve", 'line one,\nline "two"\r\nthree'])
    writer.writerow(["2", "appzen", "cancel", "plain"])
    frame = read_decisions(write(tmp_path, "d.csv", buffer.getvalue()))
    assert values(frame, "note") == ['line one,\nline "two"\r\nthree', "plain"]
    assert frame["row_number"].tolist() == [1, 2]


def test_leading_zeros_kept(tmp_path: Path) -> None:
    frame = read_decisions(write(tmp_path, "d.csv", HEADER + "000123,modulus,approve\n0,alfred,cancel\n"))
    assert values(frame, "invoice_id") == ["000123", "0"]


def test_case_and_space_normalisation(tmp_path: Path) -> None:
    text = " Invoice_ID , VENDOR ,Decision, Note \n  42 ,  AppZen ,  APPROVE ,  Keep Case  \n"
    frame = read_decisions(write(tmp_path, "d.csv", text))
    assert list(frame.columns) == ["row_number", "invoice_id", "vendor", "decision", "note"]
    assert values(frame, "invoice_id") == ["42"]
    assert values(frame, "vendor") == ["appzen"]
    assert values(frame, "decision") == ["approve"]
    assert values(frame, "note") == ["Keep Case"]  # only vendor and decision are lower-cased


def test_empty_and_blank_cells_become_na_but_na_text_is_kept(tmp_path: Path) -> None:
    text = "invoice_id,vendor,decision,note\n1,,   ,NA\n"
    frame = read_decisions(write(tmp_path, "d.csv", text))
    assert values(frame, "vendor") == [None]
    assert values(frame, "decision") == [None]
    assert values(frame, "note") == ["NA"]


def test_short_rows_are_padded_with_na(tmp_path: Path) -> None:
    frame = read_decisions(write(tmp_path, "d.csv", "invoice_id,vendor,decision,note\n1,alfred\n"))
    assert values(frame, "decision") == [None] and values(frame, "note") == [None]


def test_extra_and_optional_columns_pass_through(tmp_path: Path) -> None:
    columns = [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, "cost_center", "Batch Ref"]
    row = ["1", "modulus", "cancel", "INV_1", "2023-01-14 19:59:22", "ann", "2023-01-15", "ok", "CC-7", "B 1"]
    text = ",".join(columns) + "\n" + ",".join(row) + "\n"
    frame = read_decisions(write(tmp_path, "d.csv", text))
    assert list(frame.columns) == ["row_number", *[c.lower() for c in columns]]
    assert frame.iloc[0, 1:].tolist() == row


def test_unnamed_trailing_column(tmp_path: Path) -> None:
    frame = read_decisions(write(tmp_path, "d.csv", "invoice_id,vendor,decision,\n1,alfred,approve,\n"))
    assert list(frame.columns) == ["row_number", *REQUIRED_COLUMNS, "unnamed_4"]


def test_file_row_number_column_is_replaced(tmp_path: Path) -> None:
    text = "row_number,invoice_id,vendor,decision\n17,1,alfred,approve\n18,2,alfred,approve\n"
    frame = read_decisions(write(tmp_path, "d.csv", text))
    assert list(frame.columns) == ["row_number", *REQUIRED_COLUMNS]
    assert frame["row_number"].tolist() == [1, 2]


def test_blank_lines_are_not_rows(tmp_path: Path) -> None:
    text = "\n" + HEADER + "1,alfred,approve\n\n2,alfred,approve\n\n"
    assert read_decisions(write(tmp_path, "d.csv", text))["row_number"].tolist() == [1, 2]


def test_header_only_gives_an_empty_frame(tmp_path: Path) -> None:
    frame = read_decisions(write(tmp_path, "d.csv", "invoice_id,vendor,decision,note\n"))
    assert len(frame) == 0
    assert list(frame.columns) == ["row_number", *REQUIRED_COLUMNS, "note"]
    assert_normal_shape(frame)


def test_ten_megabyte_cell(tmp_path: Path) -> None:
    big = "x" * (10 * 1024 * 1024)
    frame = read_decisions(write(tmp_path, "d.csv", f'invoice_id,vendor,decision,note\n1,alfred,approve,"{big}"\n'))
    assert len(frame.loc[0, "note"]) == len(big)


def test_batches_number_rows_across_batches(tmp_path: Path) -> None:
    rows = "".join(f"{i},alfred,approve\n" for i in range(1, 26))
    path = write(tmp_path, "d.csv", HEADER + rows)
    batches = list(iter_decision_batches(path, batch_rows=10))
    assert all(0 < len(batch) <= 10 for batch in batches)
    assert len(batches) >= 3  # 25 rows in batches of at most 10
    # row_number continues across batches: each batch starts right after the previous one ended
    numbers = [batch["row_number"].tolist() for batch in batches]
    for earlier, later in pairwise(numbers):
        assert later[0] == earlier[-1] + 1
    assert [n for batch in numbers for n in batch] == list(range(1, 26))
    for batch in batches:
        assert_normal_shape(batch.assign(row_number=range(1, len(batch) + 1)))
    whole = pd.concat(batches, ignore_index=True)
    assert whole.equals(read_decisions(path))
    assert whole["invoice_id"].tolist() == [str(i) for i in range(1, 26)]


def test_header_only_yields_one_empty_batch(tmp_path: Path) -> None:
    batches = list(iter_decision_batches(write(tmp_path, "d.csv", HEADER)))
    assert len(batches) == 1 and len(batches[0]) == 0
    assert list(batches[0].columns) == ["row_number", *REQUIRED_COLUMNS]


# -- Parquet ----------------------------------------------------------------------------------


def test_parquet_basic_and_numeric_ids(tmp_path: Path) -> None:
    table = pa.table(
        {
            "Invoice_ID": pa.array([123, 4, None], pa.int64()),
            " Vendor ": ["Modulus ", "alfred", None],
            "decision": pa.array(["CANCEL", "approve", "approve"]).dictionary_encode(),
            "invoice_number": pa.array([7.0, None, 2.5]),  # ints with nulls, as pandas stores them
            "void_date": pa.array([pd.Timestamp("2023-01-14 19:59:22"), None, None], pa.timestamp("us")),
            "amount": pa.array([1.5, 2.0, None]),
            "flag": [True, False, None],
        }
    )
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    frame = read_decisions(path)
    assert_normal_shape(frame)
    assert values(frame, "invoice_id") == ["123", "4", None]
    assert values(frame, "vendor") == ["modulus", "alfred", None]
    assert values(frame, "decision") == ["cancel", "approve", "approve"]
    assert values(frame, "invoice_number") == ["7", None, "2.5"]
    assert values(frame, "void_date") == ["2023-01-14 19:59:22", None, None]
    assert values(frame, "amount") == ["1.5", "2", None]
    assert values(frame, "flag") == ["true", "false", None]


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet_from_pandas_keeps_string_ids(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame(
        {"invoice_id": ["007", "a1"], "vendor": ["alfred", "appzen"], "decision": ["approve", "cancel"]},
        index=[10, 20],  # a non-default index is stored as a column: it must not appear
    )
    path = tmp_path / f"d{suffix}"
    df.to_parquet(path)
    frame = read_decisions(path)
    assert list(frame.columns) == ["row_number", *REQUIRED_COLUMNS]
    assert values(frame, "invoice_id") == ["007", "a1"]


def test_parquet_batches(tmp_path: Path) -> None:
    n = 25
    df = pd.DataFrame({"invoice_id": range(n), "vendor": ["alfred"] * n, "decision": ["approve"] * n})
    path = tmp_path / "d.parquet"
    df.to_parquet(path, row_group_size=7)
    batches = list(iter_decision_batches(path, batch_rows=10))
    whole = pd.concat(batches, ignore_index=True)
    assert whole["row_number"].tolist() == list(range(1, n + 1))
    assert whole["invoice_id"].tolist() == [str(i) for i in range(n)]


def test_parquet_header_only(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pd.DataFrame({c: pd.Series([], dtype="string") for c in REQUIRED_COLUMNS}).to_parquet(path)
    frame = read_decisions(path)
    assert len(frame) == 0 and list(frame.columns) == ["row_number", *REQUIRED_COLUMNS]


# -- refusals ---------------------------------------------------------------------------------


def unusable(path: Path) -> str:
    with pytest.raises(UnusableFile) as caught:
        read_decisions(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message and "Traceback" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in unusable(tmp_path / "nope.csv")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    assert "directory" in unusable(folder)


def test_empty_file(tmp_path: Path) -> None:
    assert "empty" in unusable(write(tmp_path, "d.csv", b""))


def test_whitespace_only_file(tmp_path: Path) -> None:
    assert "no header" in unusable(write(tmp_path, "d.csv", "\n \r\n"))


@pytest.mark.parametrize("name", ["d.txt", "d.json", "d", "d.csv.gz"])  # workbooks: tests/test_workbooks.py
def test_wrong_extension(tmp_path: Path, name: str) -> None:
    assert "unsupported file type" in unusable(write(tmp_path, name, HEADER + "1,alfred,approve\n"))


def test_binary_garbage_named_csv(tmp_path: Path) -> None:
    garbage = bytes(range(256)) * 40
    assert "NUL" in unusable(write(tmp_path, "d.csv", garbage))


def test_garbage_text_without_header(tmp_path: Path) -> None:
    message = unusable(write(tmp_path, "d.csv", b"\x89PNG\r\n\x1a\n\xff\xfe\xfd junk \x9d more"))
    assert "required columns missing" in message


def test_a_parquet_file_named_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({c: ["x"] for c in REQUIRED_COLUMNS}).to_parquet(path)
    unusable(path)


def test_truncated_parquet(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pd.DataFrame({c: ["x"] * 100 for c in REQUIRED_COLUMNS}).to_parquet(good)
    data = good.read_bytes()
    assert "not a readable Parquet file" in unusable(write(tmp_path, "d.parquet", data[: len(data) // 2]))


def test_text_named_parquet(tmp_path: Path) -> None:
    assert "Parquet" in unusable(write(tmp_path, "d.parquet", HEADER))


def test_missing_required_columns_named(tmp_path: Path) -> None:
    message = unusable(write(tmp_path, "d.csv", "invoice_id,supplier,note\n1,x,y\n"))
    assert "required columns missing: vendor, decision" in message
    assert "found: invoice_id, supplier, note" in message


def test_missing_required_columns_parquet(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pd.DataFrame({"invoice_id": ["1"], "vendor": ["alfred"]}).to_parquet(path)
    assert "required column missing: decision" in unusable(path)


def test_duplicate_columns(tmp_path: Path) -> None:
    message = unusable(write(tmp_path, "d.csv", "invoice_id,vendor,decision,Vendor\n1,a,approve,b\n"))
    assert "duplicate column names: vendor" in message


def test_row_with_more_fields_than_header(tmp_path: Path) -> None:
    message = unusable(write(tmp_path, "d.csv", HEADER + "1,alfred,approve\n2,alfred,approve,oops\n"))
    assert "line 3 has 4 fields but the header has 3" in message


def test_refusals_and_odd_files_emit_no_warnings(tmp_path: Path) -> None:
    odd = [
        write(tmp_path, "a.csv", "invoice_id,vendor,decision,\n1,alfred,approve,\n"),
        write(tmp_path, "b.csv", HEADER + "1,alfred\n"),
        write(tmp_path, "c.csv", HEADER + "1,alfred,approve,x\n"),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in odd:
            with contextlib.suppress(UnusableFile):
                read_decisions(path)
    assert [str(w.message) for w in caught] == []


# -- properties -------------------------------------------------------------------------------

cell_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=20,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.binary(max_size=400).map(lambda tail: HEADER.encode() + tail),
    )
)
def test_arbitrary_bytes_never_crash(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_bytes(data)
    try:
        frame = read_decisions(path)
    except UnusableFile as error:
        assert "\n" not in str(error)
    else:
        assert isinstance(frame, pd.DataFrame)
        assert frame.columns[0] == "row_number"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.lists(cell_text, min_size=4, max_size=4), max_size=15),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig"]),
)
def test_valid_csv_loses_no_row(tmp_path: Path, rows: list[list[str]], delimiter: str, encoding: str) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter)
    writer.writerow(["invoice_id", "vendor", "decision", "note"])
    writer.writerows(rows)
    path = tmp_path / "valid.csv"
    path.write_bytes(buffer.getvalue().encode(encoding))
    frame = read_decisions(path)
    assert len(frame) == len(rows)
    assert frame["row_number"].tolist() == list(range(1, len(rows) + 1))
    # The free-text column comes back as written, trimmed, with blank cells as NA.
    assert values(frame, "note") == [row[3].strip() or None for row in rows]
