"""Rates: vendors that never said their limit, found, kept to and remembered; ratios in one run.

    .venv/bin/python benchmarks/rates.py                 # `make bench-rates`
    .venv/bin/python benchmarks/rates.py --rows 1000

Each phase is one `invoice-sync run` of `--rows` decisions per vendor, the four vendors at
once, against `python -m sandbox` in its own process whose vendors enforce a sliding 1-second
limit they do not publish and that counts refused requests too (the issue's vendors: alfred
25/s with `Retry-After: 1`, modulus 25/s and AppZen 40/s without, Accounteer 30/s without):

* discover: no `<VENDOR>_RATE_LIMIT`, a fresh state folder: the controller finds each limit;
* remembered: the same state folder, new invoices: the next run starts at the kept rates;
* set too high: `ALFRED_RATE_LIMIT=50` against alfred's 25, a fresh state folder;
* headers: the vendors announce their limit (IETF `RateLimit-*`), a fresh state folder.

Per vendor: the achieved rate at the sandbox (arrivals, first to last) over the limit, the
share of requests answered 429, the rows that failed, and the most arrivals in any 1 s
(strict: the sandbox runs in its own process here). The "no cost without a limit" and the
set-limit figures are `benchmarks/throughput.py`'s (dispatch ratio to the raw loop, rate phase).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PYTHON, SandboxProcess, generate_decisions, max_in_window, quiet_env, table, timed_command

LIMITS = {"alfred": (25, "1"), "modulus": (25, ""), "appzen": (40, ""), "accounteer": (30, "")}


def sandbox_limits(headers: str = "") -> tuple[str, ...]:
    return tuple(
        f"{vendor}={rate}:{retry_after}" + (f":{headers}" if headers else "")
        for vendor, (rate, retry_after) in LIMITS.items()
    )


def decisions_file(rows_per_vendor: int, seed: int, folder: Path) -> Path:
    frames = [generate_decisions(rows_per_vendor, seed=seed, vendors=(vendor,)) for vendor in LIMITS]
    frame = pd.concat(frames, ignore_index=True)
    frame["decision"] = "approve"  # every row one request (a cancel is one too; approve keeps it simple)
    path = folder / f"rates-{seed}.csv"
    frame.to_csv(path, index=False)
    return path


def phase(name: str, rows: int, seed: int, work: Path, state: Path, *, headers: str = "", env: dict | None = None):
    """One `invoice-sync run` against limited vendors; one table row per vendor."""
    path = decisions_file(rows, seed, work)
    with SandboxProcess(limits=sandbox_limits(headers)) as sandbox:
        run_env = quiet_env(**sandbox.env, INVOICE_SYNC_STATE_DIR=str(state), **(env or {}))
        for vendor in LIMITS:  # patience for the vendors without Retry-After: no row may fail for a 429
            run_env[f"{vendor.upper()}_MAX_ATTEMPTS"] = "10"
        out = work / f"out-{name}"
        cmd = [str(Path(PYTHON).with_name("invoice-sync")), "run", str(path), "--out", str(out), "--no-progress"]
        result = timed_command(cmd, run_env)
        if result["exit"] not in (0, 1):
            raise SystemExit(f"{name} failed ({result['exit']}):\n{result['err']}")
        results = pd.read_parquet(out / "results.parquet")
        table_rows = []
        for vendor, (limit, _) in LIMITS.items():
            arrivals = sorted(t for t, _, path in sandbox.requests(vendor) if "Authenticate" not in path)
            achieved = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0
            refused = sandbox.refused_by_limit(vendor)
            mine = results[results["vendor"] == vendor]
            table_rows.append(
                [
                    name,
                    vendor,
                    limit,
                    len(arrivals),
                    f"{achieved:.1f}",
                    f"{achieved / limit:.2f}",
                    f"{refused / max(1, len(arrivals)):.1%}",
                    int((mine["outcome"] == "failed").sum()),
                    max_in_window(arrivals),
                ]
            )
    return table_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000, help="decisions per vendor per phase (default 1,000)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="invoice-sync-rates-"))
    try:
        rows: list[list[object]] = []
        learned = work / "state-learned"
        rows += phase("discover", args.rows, 101, work, learned)
        rows += phase("remembered", args.rows, 102, work, learned)
        rows += phase("set too high", args.rows, 103, work, work / "state-high", env={"ALFRED_RATE_LIMIT": "50"})
        rows += phase("headers", args.rows, 104, work, work / "state-headers", headers="ietf")
        header = ["phase", "vendor", "limit/s", "requests", "achieved/s", "ratio", "429s", "failed", "max in 1 s"]
        print(table("Unpublished limits (sliding 1 s, refused requests count)", header, rows))
        print("\ntargets: ratio >= 0.90, 429s <= 3%, failed 0 (discover, set too high, headers); remembered: 429s ~0")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
