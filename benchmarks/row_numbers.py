"""How GX names a million rows' failures: by the frame's index or by unexpected_index_column_names.

    .venv/bin/python benchmarks/row_numbers.py                       # 1,000,000 rows; 1%, 30%, 100% failing
    .venv/bin/python benchmarks/row_numbers.py --rows 200000 --failing 0.5 --rounds 5

The suite runs, as `validate_decisions` runs it, on the same prepared frame in three shapes,
alternating, several rounds; the medians are printed with their ratio to the first:

* the frame indexed by row_number (what `flows.pipeline.validation` does): GX lists the failing
  rows by their index, the row numbers;
* a RangeIndex (what it did before): GX lists 0-based positions, turned into row numbers after;
* a RangeIndex and `unexpected_index_column_names=["row_number"]`: GX builds a dict per failing
  row from its cells.

"1% failing" is the generated file as it is (1% of its rows break a rule); the larger shares
give that share of the rows a typo in the vendor, as a file with a wrong vendor column would.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import generate_decisions, table
from flows.pipeline.reader import ROW_NUMBER
from flows.pipeline.validation import (
    NOW_PARAMETER,
    RESULT_FORMAT,
    _context,
    _prepare,
    gx_quietly,
    load_suite,
    suite_columns,
)

SHAPES = ("index = row_number", "RangeIndex", "unexpected_index_column_names")


def run_suite(frame, result_format, suite) -> float:
    """Seconds GX takes to run the suite over `frame` (a fresh ephemeral context, as validate_decisions)."""
    gx = gx_quietly()
    from great_expectations.validator.v1_validator import Validator as V1Validator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        batch = (
            _context(gx).data_sources.add_pandas("d").add_dataframe_asset("d").add_batch_definition_whole_dataframe("w")
        )
        validator = V1Validator(
            batch_definition=batch, batch_parameters={"dataframe": frame}, result_format=result_format
        )
        validator.validate_expectation_suite(suite, {NOW_PARAMETER: datetime.now()})
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--failing", type=float, action="append", help="share of rows with a vendor typo (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    suite = load_suite()
    generated = generate_decisions(args.rows, seed=7, duplicate_share=0.05, conflict_share=0.005, invalid_share=0.01)
    generated.insert(0, ROW_NUMBER, np.arange(1, len(generated) + 1))
    rows = []
    for share in args.failing or [0.0, 0.3, 1.0]:
        decisions = generated.copy()
        if share:
            decisions.loc[np.random.default_rng(1).random(len(decisions)) < share, "vendor"] = "alfredd"
        indexed = _prepare(decisions, suite_columns(suite))
        positional = indexed.reset_index(drop=True)
        shapes = {
            SHAPES[0]: (indexed, RESULT_FORMAT),
            SHAPES[1]: (positional, RESULT_FORMAT),
            SHAPES[2]: (positional, {**RESULT_FORMAT, "unexpected_index_column_names": [ROW_NUMBER]}),
        }
        seconds: dict[str, list[float]] = {shape: [] for shape in SHAPES}
        for round_ in range(args.rounds):
            for shape in SHAPES if round_ % 2 == 0 else reversed(SHAPES):
                seconds[shape].append(run_suite(*shapes[shape], suite))
                print(
                    f"  {share or 0.01:.0%} failing  {shape:30s} {seconds[shape][-1]:6.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
        first = statistics.median(seconds[SHAPES[0]])
        for shape in SHAPES:
            median = statistics.median(seconds[shape])
            rows.append([f"{share or 0.01:.0%}", shape, f"{median:.1f}", f"{median / first:.2f}"])
    print(
        table(
            f"\nGX over {args.rows:,} rows, median of {args.rounds} alternating rounds",
            ["failing", "failing rows named by", "s", "x first"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
