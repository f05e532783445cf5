"""Check decision rows against the Great Expectations suite in `expectations/decisions.json`.

The rules live in the suite, not here: each expectation's `meta.rule` is the text a rejected
row is reported with. This module only prepares the frame (adds the columns the suite looks
at, and `void_date_parsed` for the "not in the future" rule), runs the suite on an ephemeral,
offline and quiet GX context, and turns the failing rows GX reports into `row_number -> rules`.

Great Expectations is imported lazily: it takes seconds to import, and `invoice-sync --help`
must stay fast.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from flows.pipeline.files import one_line
from flows.pipeline.reader import REQUIRED_COLUMNS, ROW_NUMBER, ErrorCell

if TYPE_CHECKING:
    import great_expectations as gx

SUITE_ENV = "INVOICE_SYNC_EXPECTATIONS"
DEFAULT_SUITE_PATH = Path(__file__).resolve().parents[2] / "expectations" / "decisions.json"
VOID_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
VOID_DATE_SHAPE = r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"
VOID_DATE_PARSED = "void_date_parsed"  # derived here; the suite's "not in the future" rule reads it
NOW_PARAMETER = "now"  # the suite parameter ({"$PARAMETER": "now"}) filled in at run time
# Columns always handed to GX (with row_number, void_date_parsed and any the suite names).
SUITE_COLUMNS = (*REQUIRED_COLUMNS, "invoice_number", "void_date")
STRING_DTYPE = pd.StringDtype()
CATEGORICAL_COLUMNS = ("vendor", "decision")

# The GX result shape that names the failing rows: by the frame's index, which `_prepare` makes
# the row_number (1 = the first data row), so GX reports the row numbers the results use. Asking
# GX for unexpected_index_column_names=["row_number"] instead makes it read each failing row's
# cells one by one (a dict per row): 3x the validation time with 30% of a million rows failing,
# 10x when all fail (docs/performance.md). The unexpected_index_query string (one
# "df.filter(items=[...])" over every failing row) is not wanted.
RESULT_FORMAT: dict[str, Any] = {
    "result_format": "COMPLETE",
    "return_unexpected_index_query": False,
}
FOUND_SHOWN = 40  # characters of a rejected value quoted in its message
SOURCE_COLUMN = {VOID_DATE_PARSED: "void_date"}  # a derived column's value is shown as the file has it

_GX_LOCK = threading.Lock()  # GX contexts are not thread-safe; one validation at a time


class SuiteError(Exception):
    """The expectation suite file is missing or not a usable suite."""


class ValidationError(Exception):
    """GX could not evaluate a rule: the result cannot be trusted, so nothing may be sent."""


@dataclass(frozen=True)
class ValidationReport:
    """Which rows broke which rules."""

    row_errors: dict[int, list[str]]  # row_number -> rule texts it broke (in suite order)
    rules_checked: int
    success: bool
    result: Any  # the raw GX ExpectationSuiteValidationResult (for Data Docs later)

    def rejected_rows(self) -> set[int]:
        """Row numbers that broke at least one rule."""
        return set(self.row_errors)


# -- GX, quietly ------------------------------------------------------------------------------


def gx_quietly():
    """Import Great Expectations with analytics off and its chatter silenced."""
    # Read by GX when a context is made; forced so no run ever phones home.
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import great_expectations as gx
    # GX logs through the root "great_expectations" logger; without handlers Python's
    # last-resort handler would print its warnings on stderr.
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    return gx


def _context(gx):
    """An ephemeral (in-memory, writes no files) context with analytics and progress bars off."""
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


# -- the suite --------------------------------------------------------------------------------


def suite_path(path: str | os.PathLike | None = None) -> Path:
    """The suite file: `path`, else $INVOICE_SYNC_EXPECTATIONS, else expectations/decisions.json."""
    if path is not None:
        return Path(path)
    configured = os.environ.get(SUITE_ENV, "").strip()
    return Path(configured) if configured else DEFAULT_SUITE_PATH


def load_suite(path: str | os.PathLike | None = None) -> gx.ExpectationSuite:
    """The expectation suite from its JSON file; every expectation must carry a `meta.rule`.

    GX's own constructor drops an invalid expectation with only a log line; here any problem
    raises SuiteError, so a typo in the file can never switch a rule off silently.
    """
    file = suite_path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(f"{file}: expectation suite file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SuiteError(f"{file}: not a readable JSON suite ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise SuiteError(f"{file}: not an expectation suite (no 'expectations' list)")

    gx = gx_quietly()
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    expectations = []
    for position, item in enumerate(data["expectations"], start=1):
        where = f"{file}: expectation {position}"
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise SuiteError(f"{where}: needs a 'type'")
        rule = (item.get("meta") or {}).get("rule")
        if not isinstance(rule, str) or not rule.strip():
            raise SuiteError(f"{where} ({item['type']}): needs a meta.rule text")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                configuration = ExpectationConfiguration(
                    type=item["type"],
                    kwargs=item.get("kwargs") or {},
                    meta=item.get("meta"),
                    notes=item.get("notes"),
                    description=item.get("description"),
                    severity=item.get("severity", "critical"),
                )
                expectations.append(configuration.to_domain_obj())
        except Exception as error:  # GX raises several kinds for a bad configuration
            raise SuiteError(f"{where} ({item['type']}): {one_line(error)}") from None
    try:
        return gx.ExpectationSuite(
            name=data.get("name") or "decisions",
            expectations=expectations,
            suite_parameters=data.get("suite_parameters") or {},
            meta=data.get("meta"),
            notes=data.get("notes"),
        )
    except Exception as error:
        raise SuiteError(f"{file}: {one_line(error)}") from None


def rule_texts(suite: gx.ExpectationSuite) -> list[str]:
    """The suite's rule texts, in suite order."""
    # GX types `meta` as optional; load_suite() refuses an expectation without meta.rule.
    return [cast("dict[str, Any]", expectation.meta)["rule"] for expectation in suite.expectations]


# -- validation -------------------------------------------------------------------------------


def validate_decisions(
    df: pd.DataFrame,
    *,
    now: datetime | None = None,
    suite: gx.ExpectationSuite | None = None,
    error_cells: Iterable[ErrorCell] = (),
) -> ValidationReport:
    """Run the suite over the decision rows and report the rules each row broke.

    `now` is the moment void_date may not lie after (default: this machine's local wall clock,
    since void_date is written without a time zone). `suite` defaults to `load_suite()`.
    `error_cells` (a workbook's Excel error cells in the columns a decision is made of, from
    `read_decision_file`) reject their rows too, each naming its cell, ahead of the rules.
    """
    if suite is None:
        suite = load_suite()
    frame = _prepare(df, suite_columns(suite))
    moment = _naive_local(now)
    gx = gx_quietly()
    from great_expectations.validator.v1_validator import Validator as V1Validator

    with _GX_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GX's deprecation and pandas' future warnings
        context = _context(gx)
        batch_definition = (
            context.data_sources.add_pandas("decisions")
            .add_dataframe_asset("decisions")
            .add_batch_definition_whole_dataframe("whole file")
        )
        # GX's own suite runner, as Batch.validate and ValidationDefinition.run use it. Called
        # directly because Batch.validate loads the batch a second time (GX fingerprints the
        # whole frame on every load) and ValidationDefinition.run also serialises the full
        # result into its results store (seconds when many of a million rows fail).
        validator = V1Validator(
            batch_definition=batch_definition,
            batch_parameters={"dataframe": frame},
            result_format=RESULT_FORMAT,
        )
        result = validator.validate_expectation_suite(suite, {NOW_PARAMETER: moment})
    row_errors = _row_errors(result, frame, rule_texts(suite))
    row_errors = _with_error_cells(row_errors, error_cells, set(frame[ROW_NUMBER].tolist()))
    return ValidationReport(
        row_errors=row_errors,
        rules_checked=len(result.results),
        success=bool(result.success) and not row_errors,
        result=result,
    )


def _prepare(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The frame the suite runs on: a new frame indexed by row_number, with only the columns it reads.

    Pass-through columns (notes and the like) are left out: GX fingerprints and re-slices the
    whole frame several times, so every extra column costs time on a million rows. A column
    the suite reads but the frame lacks is added as all-NA, so its rules reject rows instead
    of crashing.
    """
    length = len(df)
    data: dict[str, Any] = {}
    if ROW_NUMBER in df.columns:
        data[ROW_NUMBER] = df[ROW_NUMBER].to_numpy(dtype=np.int64)
    else:
        data[ROW_NUMBER] = np.arange(1, length + 1, dtype=np.int64)
    row_numbers = pd.Index(data[ROW_NUMBER])  # unnamed: GX lists failing rows by it, as plain values
    for column in columns:
        if column in (ROW_NUMBER, VOID_DATE_PARSED):
            continue
        if column in df.columns:
            # Conditions and regexes must see NA as missing, never as the text "nan"/"None".
            values = df[column].astype(STRING_DTYPE).array
        else:
            values = pd.array([pd.NA] * length, dtype=STRING_DTYPE)
        if column in CATEGORICAL_COLUMNS:
            # Few distinct values: as categories GX hashes and filters them several times faster.
            values = pd.Categorical(values)
        data[column] = values
    frame = pd.DataFrame(data, index=row_numbers)
    frame[VOID_DATE_PARSED] = parse_void_dates(frame["void_date"])
    return frame


def suite_columns(suite: gx.ExpectationSuite) -> list[str]:
    """The columns the suite reads (in its kwargs and row conditions), plus the base columns."""
    found: dict[str, None] = dict.fromkeys(SUITE_COLUMNS)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("column", "column_A", "column_B") and isinstance(value, str):
                    found[value] = None
                elif key == "column" and isinstance(value, dict) and isinstance(value.get("name"), str):
                    found[value["name"]] = None  # a row condition's Column
                elif key == "column_list" and isinstance(value, list):
                    found.update(dict.fromkeys(v for v in value if isinstance(v, str)))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for expectation in suite.expectations:
        walk(expectation.configuration.to_json_dict().get("kwargs", {}))
    return list(found)


def parse_void_dates(values: pd.Series) -> pd.Series:
    """void_date as datetimes; NaT where missing or not exactly `YYYY-MM-DD HH:MM:SS`.

    The shape is checked first because strptime-style parsing also takes "2023-1-5 1:2:3";
    the parse then rejects impossible dates such as 2023-02-30.
    """
    shaped = values.str.fullmatch(VOID_DATE_SHAPE).fillna(False).astype(bool)
    return pd.to_datetime(values.where(shaped), format=VOID_DATE_FORMAT, errors="coerce")


def _naive_local(now: datetime | None) -> datetime:
    """`now` as naive local time, comparable with the zone-less void_date."""
    if now is None:
        return datetime.now()
    if now.tzinfo is not None:
        return now.astimezone().replace(tzinfo=None)
    return now


def _row_errors(result: Any, frame: pd.DataFrame, rules: list[str]) -> dict[int, list[str]]:
    """row_number -> rules broken (each with the value found), from the rows GX reports per expectation."""
    order = {rule: position for position, rule in enumerate(rules)}
    failures: list[tuple[int, str, np.ndarray, list[str]]] = []
    for outcome in result.results:
        configuration = outcome.expectation_config
        rule = (configuration.meta or {}).get("rule") or configuration.type
        _raise_if_crashed(outcome, rule)
        if outcome.success:
            continue
        indexes = (outcome.result or {}).get("unexpected_index_list")
        if indexes is None:
            raise ValidationError(f"rule '{rule}' failed but GX did not say which rows")
        rows = np.asarray(indexes, dtype=np.int64)  # the frame's index: row numbers
        column = SOURCE_COLUMN.get(configuration.kwargs.get("column"), configuration.kwargs.get("column"))
        if isinstance(column, str) and column in frame.columns and len(rows):
            found = frame[column].loc[pd.Index(rows)].tolist()
            texts = _found_texts(rule, found, configuration.kwargs.get("value_set"))
        else:
            texts = [rule] * len(rows)
        failures.append((order.get(rule, len(order)), rule, rows, texts))
    failures.sort(key=lambda failure: failure[0])  # suite order, whatever order GX used
    row_errors: dict[int, list[str]] = {}
    for _, _, rows, texts in failures:
        for row, text in zip(rows.tolist(), texts, strict=True):
            row_errors.setdefault(row, []).append(text)
    return dict(sorted(row_errors.items()))


def _with_error_cells(
    row_errors: dict[int, list[str]], error_cells: Iterable[ErrorCell], rows: set[int]
) -> dict[int, list[str]]:
    """The rule errors with each error cell's reason first in its row (rows of this frame only)."""
    reasons: dict[int, list[str]] = {}
    for cell in error_cells:
        if cell.row_number in rows:
            reasons.setdefault(cell.row_number, []).append(cell.reason())
    if not reasons:
        return row_errors
    merged = {row: [*reasons.pop(row, []), *rules] for row, rules in row_errors.items()}
    merged.update(reasons)
    return dict(sorted(merged.items()))


def _found_texts(rule: str, found: list[Any], value_set: Any) -> list[str]:
    """Each failing row's message: the rule, the value that was there, and the closest allowed
    value when the rule names a set and the value looks like a typo of one of them."""
    known = [str(v) for v in value_set] if isinstance(value_set, (list, tuple)) else []
    said: dict[Any, str] = {}  # one text per distinct value: a million failing rows hold few

    def text(value: Any) -> str:
        if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
            return rule  # nothing was there: the rule says it all
        shown = str(value)
        shown = shown if len(shown) <= FOUND_SHOWN else shown[: FOUND_SHOWN - 1] + "…"
        close = difflib.get_close_matches(str(value).lower(), known, n=1, cutoff=0.6) if known else []
        return f"{rule} (found '{shown}'" + (f": did you mean '{close[0]}'?)" if close else ")")

    out = []
    for value in found:
        key = value if isinstance(value, (str, int, float)) else str(value)
        if key not in said:
            said[key] = text(value)
        out.append(said[key])
    return out


def _raise_if_crashed(outcome: Any, rule: str) -> None:
    """GX records a crashed expectation as a plain failure with no rows: never trust that."""
    info = outcome.exception_info or {}
    # One dict for the expectation, or one per metric keyed by metric id.
    entries = [info] if "raised_exception" in info else list(info.values())
    for entry in entries:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            message = entry.get("exception_message") or "unknown error"
            raise ValidationError(f"rule '{rule}' could not be checked: {one_line(message)}")
