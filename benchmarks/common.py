"""Shared by the benchmarks: synthetic decision files, a sandbox in its own process, timing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from flows.orchestration.temporary_server import end_process, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
VENDORS = ("alfred", "accounteer", "appzen", "modulus")
WORK_DIR = Path(os.environ.get("INVOICE_SYNC_BENCH_DIR", Path(tempfile.gettempdir()) / "invoice-sync-bench"))

# Loopback only: the benchmark never talks to anything but 127.0.0.1.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def quiet_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: offline, quiet, repo on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(f"{v.upper()}_" for v in VENDORS))}
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        GX_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING",
        PYTHONPATH=str(REPO_ROOT),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        # The ledger of a benchmark run lives in the work folder, never in the repo's data/state.
        INVOICE_SYNC_STATE_DIR=str(WORK_DIR / "state"),
    )
    env.update(extra)
    return env


def generate_decisions(
    n: int,
    *,
    seed: int = 7,
    vendors: tuple[str, ...] = VENDORS,
    duplicate_share: float = 0.0,
    conflict_share: float = 0.0,
    invalid_share: float = 0.0,
) -> pd.DataFrame:
    """`n` decision rows, valid for their vendor unless made invalid on purpose.

    Ids are unique per row (so every valid row is one request) except for the requested
    shares of repeated rows (same decision again) and conflicting rows (opposite decision).
    """
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    vendor = np.asarray(vendors, dtype=object)[rng.integers(0, len(vendors), n)]
    decision = np.where(rng.random(n) < 0.7, "approve", "cancel").astype(object)
    decision[vendor == "accounteer"] = "approve"
    ids = np.empty(n, dtype=object)  # unique per (seed, row): each phase of a run uses its own seed
    for name in vendors:
        rows = np.flatnonzero(vendor == name)
        if name == "alfred":
            ids[rows] = [f"S{seed}A{i:09d}" for i in rows]
        elif name == "accounteer":
            ids[rows] = [f"{seed:016x}{i:024x}" for i in rows]
        elif name == "appzen":
            ids[rows] = [f"{seed:08x}-0000-4000-8000-{i:012x}" for i in rows]
        else:
            ids[rows] = [f"{seed}{i:010d}" for i in rows]
    number = np.full(n, None, dtype=object)
    needs_number = (vendor == "appzen") | (vendor == "modulus")
    number[needs_number] = [f"INV-{i}" for i in idx[needs_number]]
    void = np.full(n, None, dtype=object)
    void[(vendor == "modulus") & (decision == "cancel")] = "2026-01-14 19:59:22"

    def pick(share: float) -> np.ndarray:
        k = int(n * share)
        return rng.choice(np.arange(1, n), size=k, replace=False) if k else np.empty(0, dtype=np.int64)

    later = pick(duplicate_share + conflict_share)
    if len(later):
        earlier = (rng.random(len(later)) * later).astype(np.int64)  # an earlier row
        ids[later], vendor[later], number[later], void[later] = (
            ids[earlier],
            vendor[earlier],
            number[earlier],
            void[earlier],
        )
        decision[later] = decision[earlier]
        conflicting = later[: int(n * conflict_share)]
        flip = decision[conflicting] == "approve"
        decision[conflicting] = np.where(flip, "cancel", "approve")
    bad = pick(invalid_share)
    if len(bad):
        decision[bad[0::2]] = "maybe"
        vendor[bad[1::2]] = "unknown-vendor"

    return pd.DataFrame(
        {
            "invoice_id": ids,
            "vendor": vendor,
            "decision": decision,
            "invoice_number": number,
            "void_date": void,
            "decided_by": np.asarray(["m.ortiz", "j.lee", "a.novak"], dtype=object)[idx % 3],
            "decided_at": "2026-11-28 09:12:00",
            "note": np.where(idx % 5 == 0, "Office supplies, November", ""),
        }
    )


class SandboxProcess:
    """`python -m sandbox` in its own process (server and client do not share a GIL)."""

    def __init__(self, *, latency: float = 0.0) -> None:
        self.latency = latency
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}
        self.url = ""

    def __enter__(self) -> SandboxProcess:
        cmd = [PYTHON, "-m", "sandbox", "--port", "0", "--auto-create", "--latency", str(self.latency)]
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=quiet_env(), stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("# invoice-sync sandbox listening on "):
                self.url = line.rsplit(" ", 1)[1].strip()
            match = re.match(r"export (\w+)=(.*)$", line.strip())
            if match:
                self.env[match.group(1)] = match.group(2).strip("'")
            if line.startswith("# Ctrl-C"):
                break
        if not self.url.startswith("http://127.0.0.1:"):
            raise RuntimeError("the sandbox did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            end_process(self.proc, grace=10)

    def requests(self, vendor: str) -> list[tuple[float, str, str]]:
        """(arrival time, method, path) per request the vendor received, in arrival order."""
        with _NO_PROXY.open(f"{self.url}/_sandbox/requests/{vendor}", timeout=30) as answer:
            return [tuple(entry) for entry in json.load(answer)["requests"]]


def max_in_window(times: list[float], width: float = 1.0) -> int:
    """The most arrivals within any `width`-second window."""
    times = sorted(times)
    best, first = 0, 0
    for i, t in enumerate(times):
        while t - times[first] >= width:
            first += 1
        best = max(best, i - first + 1)
    return best


def timed_command(cmd: list[str], env: dict[str, str]) -> dict[str, float | int | str]:
    """Run `cmd` under /usr/bin/time -v: wall seconds, peak RSS (MiB), exit code, output tail."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    # CPU seconds too: on a machine shared with other work they move far less than wall time.
    cpu = sum(
        float(re.search(rf"{kind} time \(seconds\): ([0-9.]+)", done.stderr).group(1)) for kind in ("User", "System")
    )
    return {
        "seconds": wall,
        "cpu": cpu,
        "peak_mib": rss_kb / 1024,
        "exit": done.returncode,
        "out": done.stdout[-20000:],
        "err": done.stderr[-3000:],
    }


def table(title: str, header: list[str], rows: list[list[object]]) -> str:
    """A compact fixed-width table."""
    cells = [[str(c) for c in header]] + [
        [f"{c:,.1f}" if isinstance(c, float) else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))  # noqa: E731
    out = [title, line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
    return "\n".join(out)


class PrefectServer:
    """`prefect server start` on a free 127.0.0.1 port, its own PREFECT_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.proc: subprocess.Popen | None = None
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"

    def __enter__(self) -> PrefectServer:
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        env = quiet_env(PREFECT_HOME=str(self.home), PREFECT_UI_ENABLED="false")
        self.proc = subprocess.Popen(
            [
                str(Path(PYTHON).with_name("prefect")),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with _NO_PROXY.open(f"{self.api}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        raise SystemExit("the Prefect server did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            end_process(self.proc, grace=20)
