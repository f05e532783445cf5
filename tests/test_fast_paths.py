"""The speed-ups of the million-row path change nothing that can be seen.

* results.csv is written by Arrow, byte for byte what `DataFrame.to_csv(index=False)` writes
  for the frame with its UTC times cut to whole seconds (quoting, NA, the timestamps' format),
  and pandas still writes what the fast path does not know, times cut the same way;
* the planner's vectorised repeat/conflict marking gives the same outcomes and messages as
  the straightforward loop over duplicate groups it replaced;
* the transport sends a row that needs no retry without tenacity, and one that does with it;
* the ledger's SQLite timestamps are SQLAlchemy's text, made faster;
* what sending freezes for the garbage collector is collectable again once sending ends.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.vocabulary import ErrorCode, Outcome, RowResult
from flows.pipeline.planning import KEY, Plan, plan_rows
from flows.pipeline.results import _in_seconds, _write_csv, assemble_results, summarize

NASTY = [
    "plain",
    "",
    None,
    "comma, inside",
    'quote " inside',
    '"',
    '""',
    "new\nline",
    "carriage\rreturn",
    "tab\there",
    " lead",
    "trail ",
    "semi;colon",
    "é ü ß",
    'x,"y"\nz',
    "=1+2",
    "a'b",
]


def same_csv(frame: pd.DataFrame, tmp_path, **kwargs) -> None:
    expected, actual = tmp_path / "pandas.csv", tmp_path / "fast.csv"
    _in_seconds(frame).to_csv(expected, index=False)
    _write_csv(frame, actual, **kwargs)
    assert actual.read_bytes() == expected.read_bytes()


def utc(values) -> pd.Series:
    return pd.Series(pd.DatetimeIndex(np.asarray(values, dtype="datetime64[us]")).tz_localize("UTC"))


def test_csv_matches_pandas_byte_for_byte(tmp_path):
    n = len(NASTY)
    base = np.datetime64("2026-11-22T03:18:47", "us")
    frame = pd.DataFrame(
        {
            "text": pd.array(NASTY, dtype="string"),
            "python_text": pd.array(NASTY[::-1], dtype="string[python]"),
            "n": np.arange(n),
            "maybe": pd.array([None if i % 3 else i for i in range(n)], dtype="Int64"),
            "at": utc(base + np.arange(n).astype("timedelta64[ms]") * 37),
            'odd, "name"': pd.array(NASTY, dtype="string"),
        }
    )
    same_csv(frame, tmp_path)
    same_csv(frame, tmp_path, rows_per_write=4)  # written a slice at a time
    same_csv(frame.iloc[:0], tmp_path)
    same_csv(frame[["text"]], tmp_path)  # one column: pandas quotes an empty field
    same_csv(frame.assign(f=np.linspace(0, 1, n), b=True), tmp_path)  # dtypes left to pandas


@pytest.mark.parametrize(
    "stamps",
    [
        ["2026-11-22T03:18:47.062306", "2026-11-22T03:18:47", "2026-11-22T03:18:47.999"],  # microseconds
        ["2026-11-22T03:18:47.062", "2026-11-22T03:18:48"],  # milliseconds only
        ["2026-11-22T03:18:47", "2026-12-01T00:00:00"],  # whole seconds
        ["2026-11-22T03:18:47.5", "NaT"],
        ["NaT", "NaT"],
        ["1969-12-31T23:59:59.5", "9999-12-31T23:59:59"],
    ],
)
def test_utc_timestamps_are_formatted_like_pandas(tmp_path, stamps):
    frame = pd.DataFrame({"i": range(len(stamps)), "finished_at": utc(stamps)})
    same_csv(frame, tmp_path)
    written = pd.read_csv(tmp_path / "fast.csv", dtype=str, keep_default_na=False)["finished_at"]
    # whole seconds for people, the fraction cut (never rounded up into the next second)
    assert all(cell == "" or (len(cell) == 25 and cell.endswith("+00:00")) for cell in written)
    assert written.tolist() == [s[:19].replace("T", " ") + "+00:00" if s != "NaT" else "" for s in stamps]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.text(alphabet=',"\n\r ab\tü', max_size=6)), st.integers(-5, 10**6)),
        min_size=1,
        max_size=25,
    )
)
def test_csv_matches_pandas_for_any_text(tmp_path_factory, cells):
    frame = pd.DataFrame(
        {"s": pd.array([c for c, _ in cells], dtype="string"), "n": np.array([k for _, k in cells], dtype=np.int64)}
    )
    same_csv(frame, tmp_path_factory.mktemp("csv"))


def test_results_csv_of_a_run_matches_pandas(tmp_path):
    frame = frame_of(
        [
            ("alfred", "A1", "approve"),
            ("alfred", "A1", "approve"),
            ("modulus", "7", "cancel"),
            ("appzen", "u-1", "approve"),
            ("appzen", "u-1", "cancel"),
            ("accounteer", "ab", "approve"),
        ]
    )
    plan = plan_rows(frame, {6: ["accounteer: invoice_id must be a 40-character hex string"]})
    now = datetime.now(UTC)
    sent = [
        RowResult(1, Outcome.SUCCEEDED, 202, None, None, "update Invoice", 1, now),
        RowResult(
            3,
            Outcome.FAILED,
            400,
            ErrorCode.VENDOR_REJECTED,
            "5505",
            'HTTP 400: "Invalid status", sorry',
            2,
            now - timedelta(microseconds=1500),
        ),
    ]
    results = assemble_results(frame, plan, sent, "run-1")
    same_csv(results, tmp_path)
    assert summarize(results, "run-1", "f.csv").counts == {"succeeded": 1, "failed": 1, "rejected": 3, "skipped": 1}


# -- planning ---------------------------------------------------------------------------------


def frame_of(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["vendor", "invoice_id", "decision"]).astype("string")
    frame.insert(0, "row_number", np.arange(1, len(frame) + 1, dtype=np.int64))
    return frame


def reference_repeats(frame: pd.DataFrame, row_errors) -> Plan:
    """The loop over duplicate groups that `_mark_repeats` replaced, as the reference."""
    plan = plan_rows(frame.assign(invoice_id=[f"unique-{i}" for i in range(len(frame))]), row_errors)
    outcome, code, message = plan.outcome, plan.error_code, plan.error_message
    open_ = outcome == None  # noqa: E711
    rows = frame["row_number"].to_numpy()
    candidates = frame.loc[open_, [*KEY, "decision"]]
    repeated = candidates.duplicated(KEY, keep=False)
    groups = candidates[repeated].assign(position=np.flatnonzero(open_)[repeated.to_numpy()])
    for _, group in groups.groupby(KEY, sort=False):
        positions = group["position"].to_numpy()
        if group["decision"].nunique() > 1:
            said = ", ".join(f"row {r} says {d}" for r, d in zip(rows[positions], group["decision"], strict=False))
            outcome[positions], code[positions] = Outcome.REJECTED.value, ErrorCode.CONFLICTING_ROWS.value
            message[positions] = f"conflicting decisions for this invoice ({said}): none sent"
        else:
            later = positions[1:]
            outcome[later], code[later] = Outcome.SKIPPED.value, ErrorCode.DUPLICATE_ROW.value
            message[later] = f"same decision as row {rows[positions[0]]}: sent once"
    return plan


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["alfred", "modulus", None]),
            st.sampled_from(["1", "2", "3", None]),
            st.sampled_from(["approve", "cancel", None]),
        ),
        min_size=1,
        max_size=30,
    ),
    st.sets(st.integers(1, 30), max_size=5),
)
def test_repeats_and_conflicts_match_the_group_loop(rows, broken):
    frame = frame_of(rows)
    errors = {r: ["broken"] for r in broken if r <= len(rows)}
    errors.update({i: ["vendor is required"] for i, (vendor, _, _) in enumerate(rows, start=1) if vendor is None})
    got, want = plan_rows(frame, errors), reference_repeats(frame, errors)
    assert got.outcome.tolist() == want.outcome.tolist()
    assert got.error_code.tolist() == want.error_code.tolist()
    assert got.error_message.tolist() == want.error_message.tolist()


def test_a_file_of_repeats_is_planned_in_one_pass():
    n = 20_000  # 500 invoices, 40 rows each; invoice 499 also has cancels (rows 1000, 2000, ...)
    rows = [("alfred", str(i % 500), "cancel" if i % 1000 == 999 else "approve") for i in range(n)]
    plan = plan_rows(frame_of(rows), {})
    assert plan.send_count == 499
    assert int((plan.outcome == "rejected").sum()) == 40
    assert int((plan.outcome == "skipped").sum()) == n - 499 - 40
    assert plan.error_message[500] == "same decision as row 1: sent once"


# -- transport --------------------------------------------------------------------------------


def test_tenacity_only_for_rows_that_need_another_try(monkeypatch):
    from tenacity import BaseRetrying

    from tests.test_transport import OK, client_for, decision

    # Every run of a tenacity retry loop starts with begin(), however the loop is driven
    # (a Retrying object called or iterated, a copy of one, a decorator): count those runs.
    loops = []
    original = BaseRetrying.begin
    monkeypatch.setattr(BaseRetrying, "begin", lambda self: loops.append(1) or original(self))
    c, http, sleeps = client_for("alfred", [OK, (503, None), OK, (404, {"message": "Invoice not found"})])
    first = c.send(decision(1))
    assert (first.outcome, first.attempts, loops) == (Outcome.SUCCEEDED, 1, [])
    second = c.send(decision(2))
    assert (second.outcome, second.attempts, len(loops)) == (Outcome.SUCCEEDED, 2, 1)
    third = c.send(decision(3))
    assert (third.outcome, third.error_code, third.attempts, len(loops)) == (Outcome.FAILED, ErrorCode.NOT_FOUND, 1, 1)
    assert len(http.calls) == 4 and len(sleeps) == 1  # one backoff, before the retry


@given(st.datetimes(min_value=datetime(1, 1, 1), timezones=st.just(UTC) | st.none()))
def test_sqlite_timestamps_are_what_sqlalchemy_writes(when):
    import sqlalchemy as sa

    from flows.state.ledger import decisions_table, timestamp_binder

    dialect = sa.create_engine("sqlite://").dialect
    sqlalchemys = decisions_table.c.updated_at.type.dialect_impl(dialect).bind_processor(dialect)
    assert timestamp_binder(dialect)(when) == sqlalchemys(when)


def test_what_sending_freezes_is_collectable_again_afterwards():
    import gc

    from flows.orchestration.dispatch import spared_from_collection

    with spared_from_collection():
        assert gc.get_freeze_count() > 0  # what was alive is out of the collections
        cycle: list = []
        cycle.append(cycle)
        gc.freeze()  # as sending does after every chunk and progress tick
    del cycle
    assert gc.get_freeze_count() == 0
    assert gc.collect() >= 1  # the frozen cycle, garbage now, is found
