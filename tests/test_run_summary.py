"""What a person reads after a run, built without a server: the summary, the terminal, the UI's artifacts, the files."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from connectors.vocabulary import ErrorCode, Outcome, RowResult
from flows.cli.main import NEEDS_ATTENTION_SHOWN, print_summary
from flows.orchestration.artifacts import needs_attention_rows, needs_attention_title, outcome_rows, run_markdown
from flows.pipeline.planning import plan_rows
from flows.pipeline.results import NEEDS_ATTENTION_LISTED, assemble_results, summarize, write_results


def frame_of(n_alfred: int, n_modulus: int) -> pd.DataFrame:
    rows = [("alfred", f"A{i:04d}") for i in range(n_alfred)] + [("modulus", str(100 + i)) for i in range(n_modulus)]
    return pd.DataFrame(
        {
            "row_number": np.arange(1, len(rows) + 1, dtype=np.int64),
            "invoice_id": pd.array([i for _, i in rows], dtype="string"),
            "vendor": pd.array([v for v, _ in rows], dtype="string"),
            "decision": pd.array(["approve"] * len(rows), dtype="string"),
        }
    )


@pytest.fixture
def big_run() -> pd.DataFrame:
    """400 alfred rows that failed (NOT_FOUND), 5 modulus rows: 2 succeeded, 1 already in that state, 2 rejected."""
    frame = frame_of(400, 5)
    plan = plan_rows(
        frame, {404: ["modulus: invoice_number is required"], 405: ["modulus: invoice_number is required"]}
    )
    now = datetime.now(UTC)
    sent = [
        RowResult(r, Outcome.FAILED, 404, ErrorCode.NOT_FOUND, None, "HTTP 404: Invoice not found", 1, now)
        for r in range(1, 401)
    ]
    sent += [
        RowResult(401, Outcome.SUCCEEDED, 200, None, None, "", 1, now),
        RowResult(402, Outcome.SUCCEEDED, 200, None, None, "", 1, now),
        RowResult(403, Outcome.SUCCEEDED, 400, ErrorCode.ALREADY_IN_STATE, None, "already in that state: x", 1, now),
    ]
    return assemble_results(frame, plan, sent, "run-1")


def test_the_summary_counts_codes_and_lists_the_first_rows_that_need_a_person(big_run):
    summary = summarize(big_run, "run-1", "data/inbox/month-end.csv")
    assert summary.counts == {"succeeded": 3, "failed": 400, "rejected": 2, "skipped": 0}  # no would_send column
    assert summary.codes == {"NOT_FOUND": 400, "INVALID_ROW": 2, "ALREADY_IN_STATE": 1}
    assert summary.codes_by_vendor["modulus"] == {"INVALID_ROW": 2, "ALREADY_IN_STATE": 1}
    assert summary.needs_attention_count == 402 and len(summary.needs_attention) == NEEDS_ATTENTION_LISTED
    first = summary.needs_attention[0]
    assert first == {
        "row_number": 1,
        "invoice_id": "A0000",
        "vendor": "alfred",
        "decision": "approve",
        "outcome": "failed",
        "error_code": "NOT_FOUND",
        "error_message": "HTTP 404: Invoice not found",
    }
    assert type(first["row_number"]) is int  # plain JSON for the Prefect API
    assert summary.file_name == "month-end.csv"
    assert summary.notes() == [
        "1 row was already in that state at the vendor (`ALREADY_IN_STATE`): nothing changed there; counted as succeeded."
    ]


def test_the_artifacts_say_which_rows_need_a_person_and_keep_short_cells(big_run):
    summary = summarize(big_run, "run-1", "data/inbox/month-end.csv")
    summary.results_path, summary.csv_path = "out/results.parquet", "out/results.csv"
    summary.extra["validation_report"] = "out/validation.html"
    assert needs_attention_title(summary) == (
        "Rows that need attention (to fix or decide): 402; the first 300 of 402 are listed, all are in the results"
    )
    rows = needs_attention_rows(summary)
    assert len(rows) == 300 and set(rows[0]) == {
        "row",
        "invoice_id",
        "vendor",
        "decision",
        "outcome",
        "error_code",
        "message",
    }
    table = outcome_rows(summary)
    # one column per error code, a count in each cell: nothing to cut off in the UI
    assert table[-1] == {
        "vendor": "total",
        "succeeded": 3,
        "failed": 400,
        "rejected": 2,
        "skipped": 0,
        "NOT_FOUND": 400,
        "INVALID_ROW": 2,
        "ALREADY_IN_STATE": 1,
    }
    assert table[0]["vendor"] == "alfred" and table[0]["INVALID_ROW"] == 0
    assert all(len(str(cell)) <= 16 for row in table for cell in row.values())
    markdown = run_markdown(summary)
    assert markdown.startswith("# month-end.csv\n") and "`data/inbox/month-end.csv`" in markdown
    assert "**402 rows need attention**" in markdown and "validation report" in markdown
    assert "needs_attention" not in markdown  # no such file yet: not named
    summary.needs_attention_paths = ["out/needs_attention.xlsx", "out/needs_attention.csv"]
    assert (
        "- rows that need attention, to fix and drop into the inbox: `out/needs_attention.xlsx` and "
        "`out/needs_attention.csv`" in run_markdown(summary)
    )


def test_the_terminal_lists_the_first_rows_and_says_where_the_rest_are(big_run, capsys):
    summary = summarize(big_run, "run-1", "/data/month-end.csv")
    summary.results_path, summary.csv_path = "/out/results.parquet", "/out/results.csv"
    summary.needs_attention_paths = ["/out/needs_attention.csv"]
    print_summary(summary)
    out = capsys.readouterr().out.splitlines()
    assert out[0].strip() == "month-end.csv"
    start = out.index("402 rows need attention (400 failed, 2 rejected):")
    listed = out[start + 1 : start + 1 + NEEDS_ATTENTION_SHOWN]
    assert listed[0] == "  row 1: alfred invoice A0000 (approve): NOT_FOUND: HTTP 404: Invoice not found"
    assert out[start + 1 + NEEDS_ATTENTION_SHOWN] == "  … and 392 more; all of them are in /out/needs_attention.csv"
    assert "needs attention:    /out/needs_attention.csv" in out
    assert "codes: NOT_FOUND 400, INVALID_ROW 2, ALREADY_IN_STATE 1" in out


def test_a_rerun_says_what_an_earlier_run_did_and_how_to_send_it_again():
    frame = frame_of(3, 0)
    plan = plan_rows(frame, {})
    plan.outcome[:2] = Outcome.SKIPPED.value
    plan.error_code[:2] = ErrorCode.ALREADY_DONE.value
    plan.previous_run_id = np.array(["run-0", "run-0", "run-0"], dtype=object)
    plan.outcome[2] = Outcome.FAILED.value  # as apply_history reports a permanent failure again
    sent = [RowResult(3, Outcome.FAILED, 404, ErrorCode.NOT_FOUND, None, "reported again from run run-0", 0, None)]
    summary = summarize(assemble_results(frame, plan, sent, "run-1"), "run-1", "f.csv")
    summary.extra["ledger"] = "sqlite:////srv/state/ledger.sqlite"
    done, again = summary.notes()
    assert done.startswith("2 rows were already done by an earlier run (`ALREADY_DONE`) and not sent again")
    assert "`INVOICE_SYNC_STATE_DIR` set to another folder" in done and "sqlite:////srv/state/ledger.sqlite" in done
    assert again == (
        "1 row was refused for good in an earlier run and reported again without a call; "
        "`invoice-sync run --retry-failed` sends it again."
    )


def test_a_dry_run_counts_its_would_be_sends_apart():
    frame = frame_of(2, 0)
    results = assemble_results(frame, plan_rows(frame, {}), [], "run-1", dry_run=True)
    summary = summarize(results, "run-1", "f.csv", dry_run=True)
    assert summary.counts == {"succeeded": 0, "failed": 0, "rejected": 0, "skipped": 0, "would_send": 2}
    assert summary.counts_text() == "2 would send" and summary.all_done


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_results_files_get_the_permissions_the_umask_gives(tmp_path, big_run, umask, mode):
    before = os.umask(umask)
    try:
        paths = write_results(big_run, tmp_path / "out")
    finally:
        os.umask(before)
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [mode, mode]
