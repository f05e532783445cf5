"""Tests for flows.validation and expectations/decisions.json."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from flows.pipeline.reader import read_decisions
from flows.pipeline.validation import (
    DEFAULT_SUITE_PATH,
    SUITE_ENV,
    SuiteError,
    ValidationError,
    ValidationReport,
    load_suite,
    rule_texts,
    validate_decisions,
)

NOW = datetime(2024, 6, 1, 12, 0, 0)

RULES = [
    "invoice_id is required",
    "vendor is required",
    "vendor must be one of alfred, accounteer, appzen, modulus",
    "decision is required",
    "decision must be approve or cancel",
    "accounteer: decision must be approve (Accounteer has no cancel)",
    "accounteer: invoice_id must be a 40-character hex string",
    "modulus: invoice_number is required",
    "modulus: invoice_id must be a whole number",
    "appzen: invoice_id must be a UUID",
    "appzen: invoice_number is required (it is sent as the ERP invoice_id)",
    "void_date must be a date and time like 2023-01-14 19:59:22 (YYYY-MM-DD HH:MM:SS)",
    "void_date must not be in the future",
]

HEX_ID = "0123456789abcdefABCDEF0123456789abcdef01"
UUID_ID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"

GOOD = {
    "alfred": {"invoice_id": "inv-1", "vendor": "alfred", "decision": "cancel"},
    "accounteer": {"invoice_id": HEX_ID, "vendor": "accounteer", "decision": "approve"},
    "appzen": {"invoice_id": UUID_ID, "vendor": "appzen", "decision": "cancel", "invoice_number": "ERP-9"},
    "modulus": {
        "invoice_id": "35",
        "vendor": "modulus",
        "decision": "cancel",
        "invoice_number": "INV_35",
        "void_date": "2023-01-14 19:59:22",
    },
}

COLUMNS = ["invoice_id", "vendor", "decision", "invoice_number", "void_date", "note"]


def frame(*rows: dict) -> pd.DataFrame:
    """A frame shaped like read_decisions' output."""
    data = {"row_number": pd.Series(range(1, len(rows) + 1), dtype="int64")}
    for column in COLUMNS:
        data[column] = pd.array([row.get(column) for row in rows], dtype="string")
    return pd.DataFrame(data)


@pytest.fixture(scope="module")
def suite():
    return load_suite()


def good_rows() -> list[dict]:
    return [dict(row) for row in GOOD.values()]


def rules_broken(report: ValidationReport) -> dict[int, list[str]]:
    """row_errors without the value each message quotes (" (found 'acme')"): the rules alone."""
    return {row: [re.sub(r" \(found '.*$", "", text) for text in texts] for row, texts in report.row_errors.items()}


# -- the suite --------------------------------------------------------------------------------


def test_suite_file_loads_with_every_rule(suite) -> None:
    assert suite.name == "decisions"
    assert rule_texts(suite) == RULES
    raw = json.loads(DEFAULT_SUITE_PATH.read_text(encoding="utf-8"))
    assert len(raw["expectations"]) == len(suite.expectations)


def test_suite_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    custom = json.loads(DEFAULT_SUITE_PATH.read_text(encoding="utf-8"))
    custom["expectations"] = custom["expectations"][:1]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(custom), encoding="utf-8")
    monkeypatch.setenv(SUITE_ENV, str(path))
    assert rule_texts(load_suite()) == ["invoice_id is required"]


def test_suite_with_an_unknown_expectation_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"name": "x", "expectations": [{"type": "expect_nonsense", "kwargs": {}, "meta": {"rule": "r"}}]})
    )
    with pytest.raises(SuiteError, match="expectation 1 \\(expect_nonsense\\)"):
        load_suite(path)


def test_suite_rule_text_is_required(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps({"name": "x", "expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "a"}}]})
    )
    with pytest.raises(SuiteError, match=r"meta\.rule"):
        load_suite(path)


def test_missing_suite_file(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="not found"):
        load_suite(tmp_path / "none.json")


# -- good rows --------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", sorted(GOOD))
def test_one_good_row_per_vendor_passes(suite, vendor: str) -> None:
    report = validate_decisions(frame(GOOD[vendor]), now=NOW, suite=suite)
    assert isinstance(report, ValidationReport)
    assert rules_broken(report) == {}
    assert report.success
    assert report.rules_checked == len(RULES)
    assert report.rejected_rows() == set()


def test_all_good_rows_together_pass(suite) -> None:
    extra = [
        {"invoice_id": "36", "vendor": "modulus", "decision": "approve", "invoice_number": "INV_36"},
        {"invoice_id": UUID_ID.upper(), "vendor": "appzen", "decision": "approve", "invoice_number": "E"},
        {"invoice_id": "anything at all", "vendor": "alfred", "decision": "approve"},
    ]
    report = validate_decisions(frame(*good_rows(), *extra), now=NOW, suite=suite)
    assert rules_broken(report) == {} and report.success


# -- each rule rejects the right row ----------------------------------------------------------

BAD_CASES = [
    # (id, vendor the bad row starts from, changes, expected rules)
    ("no invoice_id", "alfred", {"invoice_id": None}, [RULES[0]]),
    ("unknown vendor", "alfred", {"vendor": "acme"}, [RULES[2]]),
    ("no decision", "alfred", {"decision": None}, [RULES[3]]),
    ("unknown decision", "alfred", {"decision": "maybe"}, [RULES[4]]),
    ("accounteer cancel", "accounteer", {"decision": "cancel"}, [RULES[5]]),
    ("accounteer short id", "accounteer", {"invoice_id": HEX_ID[:-1]}, [RULES[6]]),
    ("accounteer non-hex id", "accounteer", {"invoice_id": "g" * 40}, [RULES[6]]),
    ("modulus no invoice_number", "modulus", {"invoice_number": None}, [RULES[7]]),
    ("modulus non-numeric id", "modulus", {"invoice_id": "35a"}, [RULES[8]]),
    ("modulus negative id", "modulus", {"invoice_id": "-35"}, [RULES[8]]),
    ("appzen not a uuid", "appzen", {"invoice_id": "1234"}, [RULES[9]]),
    ("appzen no invoice_number", "appzen", {"invoice_number": None}, [RULES[10]]),
    ("void_date with T", "modulus", {"void_date": "2023-01-14T19:59:22"}, [RULES[11]]),
    ("void_date without time", "modulus", {"void_date": "2023-01-14"}, [RULES[11]]),
    ("void_date not padded", "modulus", {"void_date": "2023-1-14 19:59:22"}, [RULES[11]]),
    ("void_date impossible day", "modulus", {"void_date": "2023-02-30 10:00:00"}, [RULES[11]]),
    ("void_date in the future", "modulus", {"void_date": "2024-06-01 12:00:01"}, [RULES[12]]),
    ("void_date on another vendor", "alfred", {"void_date": "someday"}, [RULES[11]]),
    (
        "several rules, suite order",
        "accounteer",
        {"invoice_id": "nope", "decision": "cancel", "void_date": "2999-01-01 00:00:00"},
        [RULES[5], RULES[6], RULES[12]],
    ),
]


@pytest.mark.parametrize("vendor, changes, expected", [case[1:] for case in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_each_rule_rejects_the_right_row(suite, vendor: str, changes: dict, expected: list[str]) -> None:
    rows = good_rows()
    bad = {**GOOD[vendor], **changes}
    rows.insert(2, bad)  # row_number 3, among good rows of every vendor
    report = validate_decisions(frame(*rows), now=NOW, suite=suite)
    assert rules_broken(report) == {3: expected}
    assert report.rejected_rows() == {3}
    assert not report.success


def test_messages_quote_the_value_found_and_the_closest_known_one(suite) -> None:
    rows = [
        {**GOOD["alfred"], "vendor": "alfredd"},  # a typo of a vendor
        {**GOOD["alfred"], "decision": "aprove"},  # a typo of a decision
        {**GOOD["alfred"], "vendor": "sage"},  # not close to anything
        {**GOOD["modulus"], "void_date": "2023-1-14 19:59:22"},  # a derived column: shown as written
        {**GOOD["modulus"], "invoice_number": None},  # nothing there: the rule alone
        {**GOOD["accounteer"], "invoice_id": "x" * 60},  # long values are cut
    ]
    errors = validate_decisions(frame(*rows), now=NOW, suite=suite).row_errors
    assert errors[1] == [f"{RULES[2]} (found 'alfredd': did you mean 'alfred'?)"]
    assert errors[2] == [f"{RULES[4]} (found 'aprove': did you mean 'approve'?)"]
    assert errors[3] == [f"{RULES[2]} (found 'sage')"]
    assert errors[4] == [f"{RULES[11]} (found '2023-1-14 19:59:22')"]
    assert errors[5] == [RULES[7]]
    assert errors[6] == [f"{RULES[6]} (found '{'x' * 39}…')"]


def test_gx_and_the_report_name_failing_rows_by_row_number(suite, tmp_path) -> None:
    from flows.pipeline.datadocs import write_data_docs

    df = frame(GOOD["alfred"], {**GOOD["alfred"], "vendor": "acme"})
    df["row_number"] = [18, 19]
    report = validate_decisions(df, now=NOW, suite=suite)
    (failed,) = [r for r in report.result.results if not r.success]
    assert failed.result["unexpected_index_list"] == [19]  # the row_number, not GX's 0-based index 1
    page = write_data_docs(report, tmp_path).read_text(encoding="utf-8")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
    assert "Unexpected Value Count row_number acme 1 19" in text and ">Index<" not in page
    assert failed.result["unexpected_index_list"] == [19]  # the report's own result is left as it was


def test_na_vendor_is_rejected_without_crashing(suite) -> None:
    rows = [*good_rows(), {"invoice_id": "1", "vendor": None, "decision": "approve"}]
    report = validate_decisions(frame(*rows), now=NOW, suite=suite)
    assert rules_broken(report) == {5: ["vendor is required"]}


def test_na_everywhere(suite) -> None:
    report = validate_decisions(frame({}), now=NOW, suite=suite)
    assert rules_broken(report) == {1: ["invoice_id is required", "vendor is required", "decision is required"]}


def test_future_void_date_uses_the_clock_by_default(suite) -> None:
    soon = (datetime.now() + timedelta(days=2)).strftime("%Y-%m-%d %H:%M:%S")
    past = (datetime.now() - timedelta(days=2)).strftime("%Y-%m-%d %H:%M:%S")
    rows = [{**GOOD["modulus"], "void_date": soon}, {**GOOD["modulus"], "void_date": past}]
    assert rules_broken(validate_decisions(frame(*rows), suite=suite)) == {1: ["void_date must not be in the future"]}


def test_timezone_aware_now(suite) -> None:
    rows = [{**GOOD["modulus"], "void_date": "2999-01-01 00:00:00"}]
    report = validate_decisions(frame(*rows), now=datetime.now(UTC), suite=suite)
    assert report.rejected_rows() == {1}


def test_row_numbers_come_from_the_column_not_the_position(suite) -> None:
    df = frame(GOOD["alfred"], {**GOOD["alfred"], "vendor": "acme"})
    df["row_number"] = [41, 42]
    df.index = [7, 3]  # any index: rows are reported by row_number
    assert rules_broken(validate_decisions(df, now=NOW, suite=suite)) == {42: [RULES[2]]}


def test_empty_frame(suite) -> None:
    report = validate_decisions(frame(), now=NOW, suite=suite)
    assert rules_broken(report) == {} and report.success
    assert report.rules_checked == len(RULES)


def test_optional_columns_may_be_absent(suite) -> None:
    df = pd.DataFrame(
        {
            "row_number": [1, 2],
            "invoice_id": pd.array(["35", "inv"], dtype="string"),
            "vendor": pd.array(["modulus", "alfred"], dtype="string"),
            "decision": pd.array(["approve", "approve"], dtype="string"),
        }
    )
    assert rules_broken(validate_decisions(df, now=NOW, suite=suite)) == {1: [RULES[7]]}


def test_object_columns_with_none_are_treated_as_missing(suite) -> None:
    df = pd.DataFrame({"row_number": [1], "invoice_id": [None], "vendor": ["alfred"], "decision": ["approve"]})
    assert rules_broken(validate_decisions(df, now=NOW, suite=suite)) == {1: [RULES[0]]}


def test_caller_frame_is_not_changed(suite) -> None:
    df = frame(*good_rows())
    before = df.copy()
    validate_decisions(df, now=NOW, suite=suite)
    pd.testing.assert_frame_equal(df, before)


def test_raw_result_is_kept(suite) -> None:
    report = validate_decisions(frame(*good_rows()), now=NOW, suite=suite)
    assert report.result.success
    assert len(report.result.results) == len(RULES)


def test_a_rule_gx_cannot_evaluate_stops_validation(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {
                "name": "s",
                "expectations": [
                    {
                        "type": "expect_column_values_to_match_regex",
                        "kwargs": {"column": "invoice_id", "regex": "(unclosed"},
                        "meta": {"rule": "nope"},
                    }
                ],
            }
        )
    )
    with pytest.raises(ValidationError, match="rule 'nope' could not be checked"):
        validate_decisions(frame(GOOD["alfred"]), now=NOW, suite=load_suite(path))


def test_custom_suite_may_read_pass_through_and_absent_columns(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {
                "name": "s",
                "expectations": [
                    {
                        "type": "expect_column_values_to_not_be_null",
                        "kwargs": {"column": "note"},
                        "meta": {"rule": "note needed"},
                    },
                    {
                        "type": "expect_column_values_to_not_be_null",
                        "kwargs": {"column": "absent"},
                        "meta": {"rule": "absent"},
                    },
                ],
            }
        )
    )
    df = frame(GOOD["alfred"], {**GOOD["alfred"], "note": "ok"})
    report = validate_decisions(df, now=NOW, suite=load_suite(path))
    assert rules_broken(report) == {1: ["note needed", "absent"], 2: ["absent"]}


def test_from_file_to_report(tmp_path: Path, suite) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        "Invoice_ID;Vendor;Decision;Invoice_Number;Void_Date\n"
        f"35;MODULUS;Cancel;INV_35;2023-01-14 19:59:22\n"
        f"{HEX_ID};Accounteer;cancel;;\n"
        f"{UUID_ID};appzen;approve;ERP-1;\n",
        encoding="utf-8",
    )
    report = validate_decisions(read_decisions(path), now=NOW, suite=suite)
    assert rules_broken(report) == {2: [RULES[5]]}


def test_quiet_and_writes_nothing(tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch, suite) -> None:
    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    validate_decisions(frame(*good_rows(), {"vendor": "acme"}), now=NOW, suite=suite)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no progress bars, warnings or log lines
    assert list(tmp_path.iterdir()) == []  # ephemeral context: no gx/ folder


@pytest.mark.parametrize("setting", [None, "true"], ids=["unset", "true"])
def test_analytics_are_forced_off_whatever_the_environment_says(monkeypatch, suite, setting) -> None:
    """The code itself turns GX analytics off: conftest's own default must not be what makes it so."""
    import flows.pipeline.validation as validation

    if setting is None:
        monkeypatch.delenv("GX_ANALYTICS_ENABLED", raising=False)
    else:
        monkeypatch.setenv("GX_ANALYTICS_ENABLED", setting)
    contexts = []

    def recording(gx):
        # The variable is read by GX when a context is made: it must already be off by then.
        contexts.append((os.environ.get("GX_ANALYTICS_ENABLED"), made := make_context(gx)))
        return made

    make_context = validation._context
    monkeypatch.setattr(validation, "_context", recording)
    report = validate_decisions(frame(*good_rows()), now=NOW, suite=suite)
    assert report.success
    ((seen_by_gx, context),) = contexts  # one context per validation, the one GX validated with
    assert seen_by_gx == "false" and os.environ["GX_ANALYTICS_ENABLED"] == "false"
    assert context.config.analytics_enabled is False
    assert context.variables.analytics_enabled is False
