"""A million decisions: `invoice-sync validate` and `invoice-sync run --dry-run`, timed, peak RSS.

    .venv/bin/python benchmarks/scale.py                    # `make bench-scale`
    .venv/bin/python benchmarks/scale.py --rows 200000 --prefect-server

Generates (once, cached in the work folder) a 1,000,000-row Parquet file and the same rows as
CSV: the four vendors, 5% repeated rows, 0.5% conflicting ones and 1% that break a rule; and a
Parquet file where half the rows repeat an earlier one (the planner's worst case). Each
command runs in a fresh process under /usr/bin/time -v: wall seconds and peak resident memory.
`run --dry-run` also reads, validates and plans, then writes the full results (Parquet and
CSV, a million rows each); its flow time is what the run itself reports, the rest is starting
Python and Prefect (its embedded API, unless --prefect-server) and exiting.

Targets: under 30 s and under 2 GiB peak for each command on the million-row files. The
workbook is Excel's largest sheet, a header and 1,048,575 rows (written once by the project's
own workbook writer, inline strings); its target is under 60 s and 2 GiB.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    PYTHON,
    WORK_DIR,
    PrefectServer,
    generate_decisions,
    quiet_env,
    table,
    timed_command,
)

TARGET_SECONDS = 30.0
TARGET_MIB = 2048.0
WORKBOOK_TARGET_SECONDS = 60.0
EXCEL_DATA_ROWS = 1_048_575  # with the header, the 1,048,576 rows of Excel's largest sheet


def files(rows: int, folder: Path) -> dict[str, Path]:
    """The benchmark's input files, generated once per row count."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {
        "parquet": folder / f"decisions-{rows}.parquet",
        "csv": folder / f"decisions-{rows}.csv",
        "parquet, 50% repeats": folder / f"decisions-{rows}-repeats.parquet",
    }
    if not (out["parquet"].exists() and out["csv"].exists()):
        frame = generate_decisions(rows, seed=7, duplicate_share=0.05, conflict_share=0.005, invalid_share=0.01)
        _atomic(out["parquet"], lambda p: frame.to_parquet(p, index=False))
        _atomic(out["csv"], lambda p: frame.to_csv(p, index=False))
    if not out["parquet, 50% repeats"].exists():
        frame = generate_decisions(rows, seed=8, duplicate_share=0.45, conflict_share=0.05, invalid_share=0.01)
        _atomic(out["parquet, 50% repeats"], lambda p: frame.to_parquet(p, index=False))
    sheet_rows = EXCEL_DATA_ROWS if rows >= 1_000_000 else rows  # Excel's largest sheet, or the smaller run
    out["xlsx, largest sheet"] = folder / f"decisions-{sheet_rows}.xlsx"
    if not out["xlsx, largest sheet"].exists():
        from flows.pipeline.workbook_writer import DataSheet, write_workbook

        frame = generate_decisions(sheet_rows, seed=9, duplicate_share=0.05, conflict_share=0.005, invalid_share=0.01)
        _atomic(out["xlsx, largest sheet"], lambda p: write_workbook(p, [DataSheet("decisions", frame)]))
    return out


def _atomic(target: Path, write) -> None:
    """Cached inputs appear whole or not at all, even with two benchmark runs at once."""
    temporary = target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")
    write(temporary)
    os.replace(temporary, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--prefect-server", action="store_true", help="also run `run --dry-run` against a running Prefect server"
    )
    parser.add_argument("--only", help="comma-separated file kinds to measure (parquet, csv, repeats, xlsx)")
    args = parser.parse_args(argv)

    work = WORK_DIR / "scale"
    inputs = files(args.rows, work)  # cached between runs
    mine = work / f"run-{os.getpid()}"  # results and ledger of this run only
    cli = str(Path(PYTHON).with_name("invoice-sync"))
    env = quiet_env(INVOICE_SYNC_STATE_DIR=str(mine / "state"), COLUMNS="250")  # one summary line per row
    try:
        return _measure(args, inputs, mine, cli, env)
    finally:
        shutil.rmtree(mine, ignore_errors=True)


def _measure(args: argparse.Namespace, inputs: dict[str, Path], work: Path, cli: str, env: dict[str, str]) -> int:
    rows = []

    def measure(label: str, kind: str, cmd: list[str], run_env: dict[str, str]) -> None:
        result = timed_command(cmd, run_env)
        found = re.search(r"rows from .* in ([0-9.]+) s", result["out"])
        flow = f"{float(found.group(1)):.1f}" if found else "-"
        target = WORKBOOK_TARGET_SECONDS if label.startswith("xlsx") else TARGET_SECONDS
        ok = result["seconds"] < target and result["peak_mib"] < TARGET_MIB
        rows.append(
            [
                label,
                kind,
                f"{result['seconds']:.1f}",
                f"{result['cpu']:.1f}",
                flow,
                f"{result['peak_mib']:,.0f}",
                result["exit"],
                "yes" if ok else "NO",
            ]
        )
        print(
            f"  {label:22s} {kind:28s} {result['seconds']:6.1f} s {result['peak_mib']:7,.0f} MiB",
            file=sys.stderr,
            flush=True,
        )
        if result["exit"] not in (0, 1):
            print(result["err"], file=sys.stderr)

    wanted = {kind.strip() for kind in args.only.split(",")} if args.only else None
    for label, path in inputs.items():
        kind = "repeats" if "repeats" in label else label.split(",")[0]
        if wanted is not None and kind not in wanted:
            continue
        measure(label, "validate", [cli, "validate", str(path), "--show", "0"], env)
        out = work / "results"
        shutil.rmtree(out, ignore_errors=True)
        measure(label, "run --dry-run", [cli, "run", str(path), "--dry-run", "--no-progress", "--out", str(out)], env)
    if args.prefect_server:
        with PrefectServer(work / "prefect-home") as server:
            for label in ("parquet", "csv"):
                measure(
                    label,
                    "run --dry-run (Prefect server)",
                    [cli, "run", str(inputs[label]), "--dry-run", "--no-progress", "--out", str(work / "results")],
                    {**env, "PREFECT_API_URL": server.api},
                )

    print(
        table(
            f"\nScale: {args.rows:,} decisions per file, Excel's largest sheet for the workbook (targets: "
            f"< {TARGET_SECONDS:g} s wall, < {WORKBOOK_TARGET_SECONDS:g} s for the workbook, < 2 GiB peak RSS)",
            ["file", "command", "wall s", "cpu s", "flow s", "peak MiB", "exit", "target met"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
