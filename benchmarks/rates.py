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
* headers: the vendors announce their limit (IETF `RateLimit-*`), a fresh state folder;
* shared: two `invoice-sync run`s at once, each with its own state folder (two workers), share
  alfred's 20/s through one Prefect global concurrency limit (`ALFRED_GLOBAL_LIMIT`) on a
  `prefect server start` of their own, once with a burst of 5 slots and once of 20 (one second,
  what docs/performance.md recommends); `--shared-rows` alfred decisions per run.

Per vendor: the achieved rate at the sandbox (arrivals, first to last) over the limit, the
share of requests answered 429, the rows that failed, and the most arrivals in any 1 s
(strict: the sandbox runs in its own process here). The "no cost without a limit" and the
set-limit figures are `benchmarks/throughput.py`'s (dispatch ratio to the raw loop, rate phase).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    PYTHON,
    PrefectServer,
    SandboxProcess,
    generate_decisions,
    max_in_window,
    quiet_env,
    table,
    timed_command,
)

LIMITS = {"alfred": (25, "1"), "modulus": (25, ""), "appzen": (40, ""), "accounteer": (30, "")}
SHARED_RATE = 20  # alfred requests per second for the two runs together: the GCL's slot decay
SHARED_BURSTS = (5, 20)  # the GCL's limit: the slots one run takes per ask


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


def shared_phase(burst: int, rows: int, seed: int, work: Path) -> list[object]:
    """Two runs at once sharing one GCL for alfred; one table row for the two together."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    cli = str(Path(PYTHON).with_name("invoice-sync"))
    files = []
    for run in range(2):
        frame = generate_decisions(rows, seed=seed + run, vendors=("alfred",))
        frame["decision"] = "approve"
        frame["invoice_id"] = [f"S{burst}-{run}-{i:06d}" for i in range(len(frame))]  # the runs never share an invoice
        files.append(work / f"shared-{burst}-{run}.csv")
        frame.to_csv(files[-1], index=False)
    name = f"vendor-alfred-burst-{burst}"
    with PrefectServer(work / f"prefect-home-{burst}") as server, SandboxProcess() as sandbox:
        with temporary_settings(updates={PREFECT_API_URL: server.api}), get_client(sync_client=True) as client:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=burst, slot_decay_per_second=SHARED_RATE)
            )
        runs = []
        for run, path in enumerate(files):
            env = quiet_env(
                **sandbox.env,
                PREFECT_API_URL=server.api,
                ALFRED_GLOBAL_LIMIT=name,
                INVOICE_SYNC_STATE_DIR=str(work / f"state-shared-{burst}-{run}"),
            )
            out = work / f"out-shared-{burst}-{run}"
            cmd = [cli, "run", str(path), "--out", str(out), "--no-progress"]
            runs.append(
                (subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), out)
            )
        failed = 0
        for process, out in runs:
            _, err = process.communicate()
            if process.returncode not in (0, 1):
                raise SystemExit(f"shared run failed ({process.returncode}):\n{err[-3000:]}")
            failed += int((pd.read_parquet(out / "results.parquet")["outcome"] == "failed").sum())
        log = [(t, path) for t, _, path in sandbox.requests("alfred") if "Authenticate" not in path]
    arrivals = sorted(t for t, _ in log)
    achieved = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    by_run = [sorted(t for t, path in log if f"/S{burst}-{run}-" in path) for run in range(2)]
    together = min(r[-1] for r in by_run) - max(r[0] for r in by_run)
    return [
        f"burst {burst}",
        SHARED_RATE,
        len(arrivals),
        f"{achieved:.1f}",
        f"{achieved / SHARED_RATE:.2f}",
        max_in_window(arrivals),
        " / ".join(str(len(r)) for r in by_run),
        f"{max(0.0, together):.1f}",
        failed,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000, help="decisions per vendor per phase (default 1,000)")
    parser.add_argument(
        "--shared-rows", type=int, default=300, help="alfred decisions per run in the shared phase (default 300)"
    )
    parser.add_argument("--only", choices=("unpublished", "shared"), help="run one part only")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="invoice-sync-rates-"))
    try:
        if args.only != "shared":
            unpublished(args.rows, work)
        if args.only != "unpublished":
            shared(args.shared_rows, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def unpublished(rows_per_vendor: int, work: Path) -> None:
    """The four phases against vendors that do not publish their limit; prints their table."""
    rows: list[list[object]] = []
    learned = work / "state-learned"
    rows += phase("discover", rows_per_vendor, 101, work, learned)
    rows += phase("remembered", rows_per_vendor, 102, work, learned)
    rows += phase("set too high", rows_per_vendor, 103, work, work / "state-high", env={"ALFRED_RATE_LIMIT": "50"})
    rows += phase("headers", rows_per_vendor, 104, work, work / "state-headers", headers="ietf")
    header = ["phase", "vendor", "limit/s", "requests", "achieved/s", "ratio", "429s", "failed", "max in 1 s"]
    print(table("Unpublished limits (sliding 1 s, refused requests count)", header, rows))
    print("\ntargets: ratio >= 0.90, 429s <= 3%, failed 0 (discover, set too high, headers); remembered: 429s ~0")


def shared(rows_per_run: int, work: Path) -> None:
    """Two runs sharing one GCL, at each burst; prints their table."""
    rows = [shared_phase(burst, rows_per_run, 105, work) for burst in SHARED_BURSTS]
    header = ["GCL", "rate/s", "requests", "achieved/s", "ratio", "max in 1 s", "per run", "together s", "failed"]
    print("\n" + table(f"Two runs sharing alfred's {SHARED_RATE}/s through one Prefect GCL", header, rows))
    print(f"\ntargets: ratio >= 0.90, max in 1 s <= {SHARED_RATE}, failed 0")


if __name__ == "__main__":
    raise SystemExit(main())
