"""Excel workbooks: which reader, which writer, and how long the results of a big run take to write.

    .venv/bin/python benchmarks/workbooks.py                  # `make bench-workbooks`
    .venv/bin/python benchmarks/workbooks.py --sheet-rows 100000 --results-rows 200000

Reading: python-calamine and openpyxl (read-only mode, the fastest it has) each read the same
sheet in a fresh process, alternating: the 22-row sample as a workbook, and a sheet of Excel's
largest size (1,048,576 rows with the header). Wall time includes starting Python and
importing the reader, as `invoice-sync` pays it.

Writing: the results of a dry run of `--results-rows` decisions (1,000,000), as the flow writes
them: results.parquet and results.csv (`write_results`), results.xlsx (`write_results_workbook`)
and needs_attention.xlsx/.csv (`write_needs_attention`). Then the same first `--baseline-rows`
(100,000) results written as results.xlsx by this project's writer and by XlsxWriter in
constant-memory mode, side by side.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PYTHON, REPO_ROOT, WORK_DIR, generate_decisions, quiet_env, table, timed_command

EXCEL_DATA_ROWS = 1_048_575
READERS = {
    "python-calamine": (
        "import sys\nfrom python_calamine import CalamineWorkbook\n"
        "n = sum(1 for _ in CalamineWorkbook.from_path(sys.argv[1]).get_sheet_by_index(0).iter_rows())\nprint(n)"
    ),
    "openpyxl read-only": (
        "import sys, openpyxl\nbook = openpyxl.load_workbook(sys.argv[1], read_only=True, data_only=True)\n"
        "n = sum(1 for _ in book.worksheets[0].iter_rows(values_only=True))\nprint(n)"
    ),
}


def sheets(folder: Path, rows: int) -> dict[str, Path]:
    """The sample as a workbook, and a sheet of `rows` decisions (cached)."""
    import pandas as pd

    from flows.pipeline.workbook_writer import DataSheet, write_workbook

    folder.mkdir(parents=True, exist_ok=True)
    small, big = folder / "sample.xlsx", folder / f"decisions-{rows}.xlsx"
    if not small.exists():
        sample = pd.read_csv(REPO_ROOT / "data" / "sample" / "decisions.csv", dtype=str, keep_default_na=False)
        write_workbook(small, [DataSheet("decisions", sample)])
    if not big.exists():
        frame = generate_decisions(rows, seed=9, duplicate_share=0.05, conflict_share=0.005, invalid_share=0.01)
        temporary = big.with_name(f".{big.stem}.tmp.xlsx")
        write_workbook(temporary, [DataSheet("decisions", frame)])
        temporary.replace(big)
    return {"23 rows (the sample)": small, f"{rows + 1:,} rows": big}


def reading(folder: Path, rows: int, repeat: int) -> list[list[object]]:
    out = []
    for label, path in sheets(folder, rows).items():
        for round_ in range(repeat):
            for reader, script in READERS.items():
                result = timed_command([PYTHON, "-c", script, str(path)], quiet_env())
                out.append(
                    [
                        label,
                        reader,
                        round_ + 1,
                        f"{result['seconds']:.1f}",
                        f"{result['cpu']:.1f}",
                        f"{result['peak_mib']:,.0f}",
                    ]
                )
                print(
                    f"  read {label:24s} {reader:20s} {result['seconds']:7.1f} s {result['peak_mib']:7,.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
    return out


def dry_run_results(rows: int):
    """The results frame of a dry run of `rows` generated decisions, as the flow assembles it."""
    from flows.pipeline.planning import plan_rows
    from flows.pipeline.reader import read_decisions
    from flows.pipeline.results import assemble_results
    from flows.pipeline.validation import validate_decisions

    source = WORK_DIR / "workbooks" / f"decisions-{rows}.parquet"
    if not source.exists():
        generate_decisions(rows, seed=7, duplicate_share=0.05, conflict_share=0.005, invalid_share=0.01).to_parquet(
            source, index=False
        )
    frame = read_decisions(source)
    plan = plan_rows(frame, validate_decisions(frame).row_errors)
    return frame, assemble_results(frame, plan, [], "00000000-0000-4000-8000-000000000000", dry_run=True)


def writing(folder: Path, rows: int, baseline_rows: int) -> list[list[object]]:
    from flows.pipeline.results import (
        needs_attention,
        summarize,
        write_needs_attention,
        write_results,
        write_results_workbook,
    )

    frame, results = dry_run_results(rows)
    summary = summarize(results, "r", "decisions", dry_run=True)
    out = folder / "results"
    shutil.rmtree(out, ignore_errors=True)
    figures = []

    def timed(label: str, action) -> float:
        started, cpu = time.perf_counter(), time.process_time()
        action()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        figures.append([f"{rows:,}", label, f"{seconds:.1f}", f"{cpu:.1f}", "-"])
        print(f"  write {label:44s} {seconds:7.1f} s {cpu:7.1f} s cpu", file=sys.stderr, flush=True)
        return cpu  # what the comparison uses: wall time on a shared machine says more about the others

    timed("results.parquet + results.csv", lambda: write_results(results, out))
    attention = needs_attention(frame, results)
    timed(
        f"needs_attention.xlsx + .csv ({len(attention):,} rows)", lambda: write_needs_attention(attention, summary, out)
    )
    timed("results.xlsx (this project's writer)", lambda: write_results_workbook(results, summary, out))

    part = results.head(baseline_rows)
    ours = timed(
        f"results.xlsx, first {baseline_rows:,} rows (this project's writer)",
        lambda: write_results_workbook(part, summary, out),
    )
    theirs = timed(
        f"results.xlsx, first {baseline_rows:,} rows (XlsxWriter constant_memory)",
        lambda: xlsxwriter_results(part, out / "xlsxwriter.xlsx"),
    )
    figures[-1][4] = f"{theirs / ours:.1f}x the cpu"
    return figures


def xlsxwriter_results(results, path: Path) -> None:
    """results.xlsx as XlsxWriter writes it with the same cell types, fills and header (no summary)."""
    import numpy as np
    import xlsxwriter

    book = xlsxwriter.Workbook(path, {"constant_memory": True})
    sheet = book.add_worksheet("results")
    bold = book.add_format({"bold": True})
    fills = {"failed": {"bg_color": "#FFC7CE"}, "rejected": {"bg_color": "#FFEB9C"}, None: {}}
    formats = {
        (key, kind): book.add_format(
            {
                **fill,
                **(
                    {"num_format": "@"}
                    if kind == "text"
                    else {"num_format": "yyyy-mm-dd hh:mm:ss"}
                    if kind == "date"
                    else {}
                ),
            }
        )
        for key, fill in fills.items()
        for kind in ("text", "number", "date")
    }
    sheet.write_row(0, 0, list(results.columns), bold)
    sheet.freeze_panes(1, 0)
    sheet.autofilter(0, 0, len(results), results.shape[1] - 1)
    kinds = [
        "number" if c in ("row_number", "http_status", "attempts") else "date" if c == "finished_at" else "text"
        for c in results.columns
    ]
    columns = []
    for name, kind in zip(results.columns, kinds, strict=True):
        column = results[name]
        if kind == "date":
            stamps = column.dt.tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.int64)
            columns.append((stamps / 86_400e6 + 25_569.0).tolist())
        else:
            columns.append(column.astype(object).where(column.notna(), None).tolist())
    outcome = results["outcome"].astype(object)
    marks = outcome.where(outcome.isin(["failed", "rejected"]), None).tolist()
    for row, values in enumerate(zip(*columns, strict=True), start=1):
        mark = marks[row - 1]
        for col, value in enumerate(values):
            if value is None:
                continue
            kind = kinds[col]
            if kind == "text":
                sheet.write_string(row, col, value, formats[(mark, kind)])
            else:
                sheet.write_number(row, col, value, formats[(mark, kind)])
    book.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sheet-rows", type=int, default=EXCEL_DATA_ROWS, help="data rows of the big sheet")
    parser.add_argument("--results-rows", type=int, default=1_000_000)
    parser.add_argument("--baseline-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the reading comparison")
    parser.add_argument("--no-reading", action="store_true")
    args = parser.parse_args(argv)
    folder = WORK_DIR / "workbooks"
    folder.mkdir(parents=True, exist_ok=True)
    if not args.no_reading:
        print(
            table(
                "\nReading one sheet, in a fresh process each (wall time includes Python and the import)",
                ["sheet", "reader", "round", "wall s", "cpu s", "peak MiB"],
                reading(folder, args.sheet_rows, args.repeat),
            )
        )
    print(
        table(
            "\nWriting the results of a dry run",
            ["decisions", "what", "wall s", "cpu s", "vs this writer"],
            writing(folder, args.results_rows, args.baseline_rows),
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
