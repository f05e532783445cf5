"""Hostile and sloppy files through the whole command: a clear message, the documented exit code,
nothing sent for an unusable file, and no row ever lost between reading and the results."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.registry import VENDORS as ALL_VENDORS
from flows.cli.main import EXIT_OK, EXIT_UNUSABLE, main
from flows.pipeline.planning import plan_rows
from flows.pipeline.reader import UnusableFile, read_decisions
from flows.pipeline.results import assemble_results
from flows.pipeline.validation import validate_decisions

GOOD = "invoice_id,vendor,decision\n000123,alfred,approve\n"


def _truncated_parquet(path: Path) -> None:
    pq.write_table(
        pa.table({"invoice_id": ["1"] * 100, "vendor": ["alfred"] * 100, "decision": ["approve"] * 100}), path
    )
    path.write_bytes(path.read_bytes()[:-40])


def _numeric_parquet(path: Path) -> None:
    pq.write_table(
        pa.table(
            {"invoice_id": pa.array([123, 7], pa.int64()), "vendor": ["alfred"] * 2, "decision": ["approve", "cancel"]}
        ),
        path,
    )


# name, how to make it, exit code of `run`, a fragment of the one-line message (for exit 2)
CASES = [
    ("empty.csv", lambda p: p.write_bytes(b""), EXIT_UNUSABLE, "empty"),
    ("header_only.csv", lambda p: p.write_text("invoice_id,vendor,decision\n"), EXIT_OK, None),
    ("missing_cols.csv", lambda p: p.write_text("invoice,vendor\n1,alfred\n"), EXIT_UNUSABLE, "invoice_id"),
    (
        "garbage.csv",
        lambda p: p.write_bytes(bytes(range(256)) * 50),
        EXIT_UNUSABLE,
        "not a text csv file (it contains nul bytes",
    ),
    ("truncated.parquet", _truncated_parquet, EXIT_UNUSABLE, "parquet"),
    (
        "latin1.csv",
        lambda p: p.write_bytes(
            "invoice_id,vendor,decision,note\n000123,alfred,approve,Café Müller\n".encode("latin-1")
        ),
        EXIT_OK,
        None,
    ),
    ("semicolon.csv", lambda p: p.write_text("invoice_id;vendor;decision\n000123;alfred;approve\n"), EXIT_OK, None),
    ("bom.csv", lambda p: p.write_bytes(b"\xef\xbb\xbf" + GOOD.encode()), EXIT_OK, None),
    (
        "quoted.csv",
        lambda p: p.write_text('invoice_id,vendor,decision,note\n000123,alfred,approve,"a, b\nand a new line"\n'),
        EXIT_OK,
        None,
    ),
    ("numeric_ids.parquet", _numeric_parquet, EXIT_OK, None),
    (
        "big_cell.csv",
        lambda p: p.write_text("invoice_id,vendor,decision,note\n000123,alfred,approve," + "x" * 10_000_000 + "\n"),
        EXIT_OK,
        None,
    ),
    ("a_directory.csv", lambda p: p.mkdir(), EXIT_UNUSABLE, "directory"),
    ("notes.xlsx", lambda p: p.write_bytes(b"PK\x03\x04 not really"), EXIT_UNUSABLE, "not a readable excel workbook"),
]


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("name, make, exit_code, fragment", CASES, ids=[c[0] for c in CASES])
def test_hostile_file_through_run(sandbox, tmp_path, capsys, name, make, exit_code, fragment):
    sandbox.seed("alfred", "000123")
    sandbox.seed("alfred", "123")
    sandbox.seed("alfred", "7")
    path = tmp_path / name
    make(path)
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == exit_code, err
    assert "Traceback" not in out + err
    if exit_code == EXIT_UNUSABLE:
        (line,) = err.strip().splitlines()  # exactly one line
        assert fragment, "every unusable case names the problem its message must state"
        assert str(path) in line and fragment in line.lower(), line
        assert all(sandbox.request_log(v) == [] for v in ALL_VENDORS)
        assert not (tmp_path / "out" / "results.parquet").exists()
    else:
        results = pd.read_parquet(tmp_path / "out" / "results.parquet")
        source_rows = len(read_decisions(path))
        assert len(results) == source_rows
        if name == "numeric_ids.parquet":
            assert results["invoice_id"].tolist() == ["123", "7"]
            assert sandbox.state("alfred", "123") == "approved" and sandbox.state("alfred", "7") == "cancelled"
        elif source_rows:
            assert results["invoice_id"].iloc[0] == "000123" and sandbox.state("alfred", "000123") == "approved"


@pytest.mark.parametrize("name, make, exit_code, fragment", CASES, ids=[c[0] for c in CASES])
def test_hostile_file_through_validate(tmp_path, capsys, name, make, exit_code, fragment):
    path = tmp_path / name
    make(path)
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert code == exit_code
    assert "Traceback" not in out + err


# -- property: whatever the rows, every one of them gets exactly one result -------------------

# Any text but NUL: a NUL byte makes the whole file unusable (it is binary, not a CSV), which
# the properties further down check on their own. Every file this strategy writes is usable.
cell = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "approve",
            " Approve ",
            "cancel",
            "CANCEL",
            "hold",
            "alfred",
            "accounteer",
            "appzen",
            "modulus",
            "sage",
            "000123",
            "35",
            "2026-11-01 10:00:00",
            "2099-01-01 00:00:00",
            "2026-02-30 00:00:00",
            "75823296-4af2-4475-aafd-461c60c284e7",
            "ba775d2a3f9612ab288489f20ceab582f7f62fd5",
            "INV_1",
        ]
    ),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)
COLUMNS = ["invoice_id", "vendor", "decision", "invoice_number", "void_date", "note"]
row = st.fixed_dictionaries({c: cell for c in COLUMNS})
NUL_MESSAGE = "not a text CSV file (it contains NUL bytes: binary data?)"


def write_csv(path: Path, rows: list[dict], delimiter: str) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(rows=st.lists(row, min_size=0, max_size=25), delimiter=st.sampled_from([",", ";"]))
def test_no_row_is_lost_from_file_to_results(tmp_path, rows, delimiter):
    path = write_csv(tmp_path / "prop.csv", rows, delimiter)
    frame = read_decisions(path)  # always usable: an UnusableFile here is a failure
    assert len(frame) == len(rows)
    report = validate_decisions(frame)
    plan = plan_rows(frame, report.row_errors)
    results = assemble_results(frame, plan, [], "prop-run", dry_run=True)
    assert results["row_number"].tolist() == list(range(1, len(rows) + 1))
    assert results["outcome"].isin(["rejected", "skipped", "would_send"]).all()  # a dry run: nothing sent
    # a row is sent only if it broke no rule: rejected rows are exactly the rule-breakers and conflicts
    rejected = set(results.loc[results["outcome"] == "rejected", "row_number"])
    assert set(report.row_errors) <= rejected
    would_send = results["outcome"] == "would_send"
    assert (results.loc[would_send, "error_message"] == "dry run: would be sent").all()
    assert not (would_send & results["row_number"].isin(list(report.row_errors))).any()
    assert np.all(results.loc[would_send, "vendor"].isin(ALL_VENDORS))


# -- property: a file made unusable by one NUL anywhere is refused whole, and nothing is sent ---

# The same rows with a NUL planted in one cell (row, column, position drawn too).
unusable_file = st.tuples(
    st.lists(row, min_size=1, max_size=25),
    st.integers(min_value=0),
    st.sampled_from(COLUMNS),
    st.integers(min_value=0, max_value=12),
    st.sampled_from([",", ";"]),
)


def with_a_nul(rows: list[dict], which: int, column: str, at: int) -> list[dict]:
    rows = [dict(r) for r in rows]
    target = rows[which % len(rows)]
    text = target[column]
    target[column] = text[:at] + "\x00" + text[at:]
    return rows


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(case=unusable_file)
def test_a_nul_anywhere_makes_the_file_unusable(tmp_path, capsys, case):
    rows, which, column, at, delimiter = case
    path = write_csv(tmp_path / "nul.csv", with_a_nul(rows, which, column, at), delimiter)
    with pytest.raises(UnusableFile, match=re.escape(NUL_MESSAGE)):
        read_decisions(path)
    capsys.readouterr()
    assert main(["validate", str(path)]) == EXIT_UNUSABLE
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines() == [f"invoice-sync: {path}: {NUL_MESSAGE}"]


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(case=unusable_file)
def test_an_unusable_file_through_run_exits_2_and_sends_nothing(sandbox, tmp_path_factory, capsys, case):
    rows, which, column, at, delimiter = case
    for r in rows:  # everything it names exists at the vendor: only the file's damage stops it
        if r["vendor"] in ALL_VENDORS and r["invoice_id"]:
            sandbox.seed(r["vendor"], r["invoice_id"].replace("\x00", ""))
    folder = tmp_path_factory.mktemp("nul")
    path = write_csv(folder / "nul.csv", with_a_nul(rows, which, column, at), delimiter)
    capsys.readouterr()
    code = main(["run", str(path), "--out", str(folder / "out"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == EXIT_UNUSABLE, err
    (line,) = err.strip().splitlines()
    assert str(path) in line and NUL_MESSAGE in line and "Traceback" not in out + err
    assert all(sandbox.request_log(v) == [] for v in ALL_VENDORS)
    assert not (folder / "out" / "results.parquet").exists()
