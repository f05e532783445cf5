"""Dispatch throughput against the sandbox, side by side with a plain threaded `requests` loop.

    .venv/bin/python benchmarks/throughput.py            # `make bench`
    .venv/bin/python benchmarks/throughput.py --rows 5000 --repeat 1 --no-naive

One run, one sandbox (`python -m sandbox --auto-create`, its own process, on
127.0.0.1), every shape in its own fresh process, each on its own new invoice ids:

* raw: a plain threaded `requests` loop making the same calls (same paths, bodies and headers,
  built by the connectors beforehand), 8 threads and one pooled session per vendor, the four
  vendors at once, as the pipeline runs them (`<VENDOR>_MAX_CONCURRENCY` = 8), one future per
  call: what a user writes first, and the baseline the pipeline is held to;
* limit: the same calls over urllib3 (the pool the pipeline sends through), 8 threads per vendor
  each looping over its share of the calls, no futures, nothing else: as close to what this
  machine can send from one Python process as plain code gets. The pipeline's ratio to it says
  what its own work costs per request;
* pipeline: `invoice-sync run FILE` (read, validate, plan, send, write the results), timed
  under /usr/bin/time -v for its peak memory; with Prefect's embedded API (the default) and,
  with --prefect-server, against a `prefect server start` started here;
* naive: the usual first Prefect shape, one task run per invoice with `send_one.map(...)`, on
  fewer rows (it is the peer to beat, not a candidate);
* rate: the pipeline again with `<VENDOR>_RATE_LIMIT` set, showing the achieved rate per
  vendor against the limit and the most requests in any 1-second window.

requests/s is measured at the sandbox: arrivals of one shape, first to last. A pipeline run's
fixed overhead is its wall time minus that sending window (Prefect start, reading,
validation, planning, writing the results, exit). raw and pipeline alternate (--repeat
rounds) so a noisy machine hurts both alike; the table shows the median round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    PYTHON,
    REPO_ROOT,
    VENDORS,
    WORK_DIR,
    PrefectServer,
    SandboxProcess,
    generate_decisions,
    max_in_window,
    quiet_env,
    table,
    timed_command,
)

CONCURRENCY = 8  # the default <VENDOR>_MAX_CONCURRENCY, for the pipeline and the raw loop alike


# -- the shapes, each run as `python benchmarks/throughput.py --shape NAME FILE` ---------------


def _decisions(path: str):
    import pandas as pd

    from connectors.vocabulary import Decision

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    out = []
    for i, row in enumerate(frame.itertuples(index=False), start=1):
        out.append(
            Decision(i, row.invoice_id, row.vendor, row.decision, row.invoice_number or None, row.void_date or None)
        )
    return out


def shape_raw(path: str) -> dict:
    """Plain threads and `requests`: the same calls, prepared before the clock starts."""
    from concurrent.futures import ThreadPoolExecutor

    import requests
    from requests.adapters import HTTPAdapter

    from connectors.registry import CONNECTORS

    by_vendor: dict[str, list] = {v: [] for v in VENDORS}
    for d in _decisions(path):
        by_vendor[d.vendor].append(d)
    plans = {}
    for vendor, decisions in by_vendor.items():
        connector = CONNECTORS[vendor](CONNECTORS[vendor].settings_from_env())
        session = requests.Session()
        session.trust_env = False
        session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=CONCURRENCY))
        base = connector.settings.base_url

        def send(request, session=session, base=base):
            return session.request(
                request.method,
                base + request.path,
                params=request.params or None,
                json=request.json,
                data=request.form,
                headers=request.headers or None,
                timeout=30,
            )

        auth = connector.make_auth()
        calls = [auth.apply(connector.build_request(d), send) for d in decisions]
        plans[vendor] = (
            session,
            [(c.method, base + c.path, c.params or None, c.json, c.form, c.headers or None) for c in calls],
        )

    def run_vendor(vendor: str) -> int:
        session, calls = plans[vendor]

        def one(call) -> int:
            method, url, params, body, form, headers = call
            return session.request(
                method, url, params=params, json=body, data=form, headers=headers, timeout=30
            ).status_code

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            return sum(1 for status in pool.map(one, calls) if status < 500)

    started = time.monotonic()
    with ThreadPoolExecutor(len(VENDORS)) as vendors:
        answered = sum(vendors.map(run_vendor, VENDORS))
    return {"seconds": time.monotonic() - started, "answered": answered}


def shape_naive(path: str) -> dict:
    """One Prefect task run per invoice, mapped: the shape the pipeline replaces."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    from connectors.registry import CONNECTORS
    from connectors.sending.client import VendorClient

    decisions = _decisions(path)
    clients = {v: VendorClient(CONNECTORS[v](CONNECTORS[v].settings_from_env())) for v in VENDORS}

    @task(cache_policy=NO_CACHE)
    def send_one(decision):
        return clients[decision.vendor].send(decision).outcome.value

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=CONCURRENCY * len(VENDORS)))
    def naive(decisions):
        return send_one.map(decisions).result()

    started = time.monotonic()
    outcomes = naive(decisions)
    return {"seconds": time.monotonic() - started, "answered": len(outcomes)}


def _wire(request, base: str) -> tuple[str, str, bytes | None, dict[str, str]]:
    """(method, url, body, headers) of a plain Request, encoded as the pipeline's Http does it."""
    import json as jsonlib
    from urllib.parse import urlencode

    url = base + request.path + (f"?{urlencode(request.params)}" if request.params else "")
    headers = dict(request.headers or {})
    body = None
    if request.json is not None:
        headers["Content-Type"] = "application/json"
        body = jsonlib.dumps(request.json).encode()
    elif request.form is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = urlencode(request.form).encode()
    return request.method, url, body, headers


def shape_limit(path: str) -> dict:
    """urllib3, one loop per thread: the same calls, prepared before the clock starts."""
    import threading

    import urllib3

    from connectors.registry import CONNECTORS
    from connectors.settings import VendorSettings
    from connectors.wire import Response

    by_vendor: dict[str, list] = {v: [] for v in VENDORS}
    for d in _decisions(path):
        by_vendor[d.vendor].append(d)
    loops = []
    for vendor, decisions in by_vendor.items():
        connector = CONNECTORS[vendor](VendorSettings.from_env(vendor, CONNECTORS[vendor].credential_names))
        pool = urllib3.PoolManager(maxsize=CONCURRENCY, retries=False)
        base = connector.settings.base_url or ""

        def send(request, pool=pool, base=base) -> Response:  # modulus' token fetch, before the clock
            method, url, body, headers = _wire(request, base)
            answer = pool.request(method, url, body=body, headers=headers, timeout=30, redirect=False)
            return Response(answer.status, answer.headers, answer.data)

        auth = connector.make_auth()
        calls = [_wire(auth.apply(connector.build_request(d), send), base) for d in decisions]
        loops += [(pool, calls[part::CONCURRENCY]) for part in range(CONCURRENCY)]
    answered = [0] * len(loops)

    def run(i: int) -> None:
        pool, calls = loops[i]
        for method, url, body, headers in calls:
            if pool.request(method, url, body=body, headers=headers, timeout=30, redirect=False).status < 500:
                answered[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(loops))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"seconds": time.monotonic() - started, "answered": sum(answered)}


SHAPES = {"raw": shape_raw, "limit": shape_limit, "naive": shape_naive}


# -- the driver ----------------------------------------------------------------------------------


class Arrivals:
    """Per-shape slices of the sandbox's arrival log (one list per vendor, in arrival order)."""

    def __init__(self, sandbox: SandboxProcess) -> None:
        self.sandbox = sandbox
        self.seen = {v: 0 for v in VENDORS}

    def take(self, *, token_fetches: bool = True) -> dict[str, list[float]]:
        """Arrival times since the last take, per vendor (modulus' token fetches optional)."""
        new = {}
        for vendor in VENDORS:
            log = self.sandbox.requests(vendor)
            fresh = log[self.seen[vendor] :]
            self.seen[vendor] = len(log)
            new[vendor] = sorted(t for t, _, path in fresh if token_fetches or not path.endswith("/Authenticate"))
        return new


def sending(arrivals: dict[str, list[float]]) -> tuple[int, float]:
    """(requests, seconds from the first arrival to the last): token fetches left out, since
    the raw loop makes its one fetch while preparing its calls, before its clock starts."""
    times = sorted(t for ts in arrivals.values() for t in ts)
    if len(times) < 2:
        raise SystemExit("the sandbox saw (almost) no requests from this shape: see its output above")
    return len(times), times[-1] - times[0]


def write_file(rows: int, seed: int, folder: Path) -> Path:
    path = folder / f"decisions-{seed}.csv"
    generate_decisions(rows, seed=seed).to_csv(path, index=False)
    return path


def run_shape(name: str, path: Path, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [PYTHON, __file__, "--shape", name, str(path)], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_pipeline(path: Path, env: dict[str, str], out: Path) -> dict:
    """`invoice-sync run`, its own fresh ledger (like a first run) in the work folder."""
    cmd = [str(Path(PYTHON).with_name("invoice-sync")), "run", str(path), "--out", str(out), "--no-progress"]
    result = timed_command(cmd, {**env, "INVOICE_SYNC_STATE_DIR": str(out / "state")})
    if result["exit"] not in (0, 1):
        raise SystemExit(f"pipeline failed ({result['exit']}):\n{result['err']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="decisions per raw/pipeline round (default 20,000)")
    parser.add_argument("--repeat", type=int, default=3, help="raw/pipeline rounds, alternating (default 3)")
    parser.add_argument(
        "--naive-rows", type=int, default=2_000, help="decisions for the naive .map shape (default 2,000)"
    )
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument(
        "--rate",
        type=float,
        action="append",
        help="<VENDOR>_RATE_LIMIT for a rate phase, repeatable (default: 200 and 100)",
    )
    parser.add_argument("--rate-rows", type=int, default=4_000, help="decisions per rate phase (default 4,000)")
    parser.add_argument(
        "--prefect-server",
        action="store_true",
        help="also run the pipeline against a running Prefect server (not the embedded one)",
    )
    parser.add_argument(
        "--pipeline-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the pipeline runs (e.g. a ledger URL), repeatable",
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("file", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.shape:
        print(json.dumps(SHAPES[args.shape](args.file)))
        return 0

    work = WORK_DIR / f"throughput-{os.getpid()}"  # its own folder: two runs at once do not collide
    work.mkdir(parents=True)
    try:
        return _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path) -> int:
    rows: list[list[object]] = []
    runs: list[list[object]] = []
    with SandboxProcess() as sandbox:
        arrivals = Arrivals(sandbox)
        env = quiet_env(**sandbox.env)
        pipeline_env = {**env, **dict(item.split("=", 1) for item in args.pipeline_env)}
        seed = 100
        raw_rates, limit_rates, pipe_rates, overheads = [], [], [], []
        for round_ in range(args.repeat):
            seed += 1
            run_shape("raw", write_file(args.rows, seed, work), env)
            n, window = sending(arrivals.take(token_fetches=False))
            raw_rates.append(n / window)
            seed += 1
            run_shape("limit", write_file(args.rows, seed, work), env)
            n, window = sending(arrivals.take(token_fetches=False))
            limit_rates.append(n / window)
            seed += 1
            pipe = run_pipeline(write_file(args.rows, seed, work), pipeline_env, work / f"out-{seed}")
            n_pipe, window_pipe = sending(arrivals.take(token_fetches=False))
            pipe_rates.append(n_pipe / window_pipe)
            overheads.append(pipe["seconds"] - window_pipe)
            runs.append(
                [
                    "embedded API",
                    round_ + 1,
                    pipe["seconds"],
                    window_pipe,
                    pipe["seconds"] - window_pipe,
                    pipe["peak_mib"],
                    f"{raw_rates[-1]:,.0f}",
                    f"{limit_rates[-1]:,.0f}",
                    f"{pipe_rates[-1]:,.0f}",
                    f"{pipe_rates[-1] / raw_rates[-1]:.2f}",
                    f"{pipe_rates[-1] / limit_rates[-1]:.2f}",
                ]
            )
            print(
                f"  round {round_ + 1}: raw {raw_rates[-1]:,.0f} req/s, limit {limit_rates[-1]:,.0f} req/s, "
                f"pipeline {pipe_rates[-1]:,.0f} req/s, pipeline wall {pipe['seconds']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        raw_rate, pipe_rate = statistics.median(raw_rates), statistics.median(pipe_rates)
        limit_rate = statistics.median(limit_rates)
        pipe_vs_raw = statistics.median(p / r for p, r in zip(pipe_rates, raw_rates, strict=False))
        pipe_vs_limit = statistics.median(p / m for p, m in zip(pipe_rates, limit_rates, strict=False))
        rows.append(
            [
                "raw: threaded requests loop, a future per call",
                args.rows,
                f"{raw_rate:,.0f}",
                "1.00",
                f"{raw_rate / limit_rate:.2f}",
            ]
        )
        rows.append(
            [
                "limit: urllib3, one loop per thread",
                args.rows,
                f"{limit_rate:,.0f}",
                f"{limit_rate / raw_rate:.2f}",
                "1.00",
            ]
        )
        rows.append(
            ["invoice-sync pipeline", args.rows, f"{pipe_rate:,.0f}", f"{pipe_vs_raw:.2f}", f"{pipe_vs_limit:.2f}"]
        )

        if args.prefect_server:
            with PrefectServer(work / "prefect-home") as server:
                server_env = {**pipeline_env, "PREFECT_API_URL": server.api}
                for round_ in range(args.repeat):
                    seed += 1
                    run_shape("raw", write_file(args.rows, seed, work), env)
                    n, window = sending(arrivals.take(token_fetches=False))
                    seed += 1
                    run_shape("limit", write_file(args.rows, seed, work), env)
                    n_limit, window_limit = sending(arrivals.take(token_fetches=False))
                    seed += 1
                    pipe = run_pipeline(write_file(args.rows, seed, work), server_env, work / f"out-{seed}")
                    n_pipe, window_pipe = sending(arrivals.take(token_fetches=False))
                    pipe_rate_here = n_pipe / window_pipe
                    runs.append(
                        [
                            "Prefect server",
                            round_ + 1,
                            pipe["seconds"],
                            window_pipe,
                            pipe["seconds"] - window_pipe,
                            pipe["peak_mib"],
                            f"{n / window:,.0f}",
                            f"{n_limit / window_limit:,.0f}",
                            f"{pipe_rate_here:,.0f}",
                            f"{pipe_rate_here / (n / window):.2f}",
                            f"{pipe_rate_here / (n_limit / window_limit):.2f}",
                        ]
                    )

        if not args.no_naive:
            seed += 1
            run_shape("naive", write_file(args.naive_rows, seed, work), env)
            n, window = sending(arrivals.take(token_fetches=False))
            rows.append(
                [
                    "naive Prefect: a task per invoice (.map)",
                    args.naive_rows,
                    f"{n / window:,.0f}",
                    f"{(n / window) / raw_rate:.2f}",
                    f"{(n / window) / limit_rate:.2f}",
                ]
            )

        rate_rows = []
        for rate in args.rate or [200.0, 100.0]:
            seed += 1
            rate_env = {**pipeline_env, **{f"{v.upper()}_RATE_LIMIT": str(rate) for v in VENDORS}}
            run_pipeline(write_file(args.rate_rows, seed, work), rate_env, work / f"out-{seed}")
            for vendor, times in arrivals.take().items():  # token fetches included: they take slots too
                achieved = (len(times) - 1) / (times[-1] - times[0])
                rate_rows.append(
                    [vendor, rate, len(times), f"{achieved:,.1f}", f"{achieved / rate:.3f}", max_in_window(times)]
                )

    print(
        table(
            f"\nDispatch, no rate limit: {args.rows:,} decisions, 4 vendors, {CONCURRENCY} in flight per vendor, "
            f"sandbox in its own process (median of {args.repeat} alternating rounds)",
            ["shape", "requests", "req/s", "vs raw", "vs limit"],
            rows,
        )
    )
    print(
        "  vs raw: against the loop a user writes (the target: 1.2 or more);"
        " vs limit: against what plain code reaches on this machine (the pipeline's own cost per request)"
    )
    print(
        table(
            "\nPipeline runs (fixed overhead = wall - sending window)",
            [
                "Prefect API",
                "round",
                "wall s",
                "sending s",
                "overhead s",
                "peak MiB",
                "raw req/s",
                "limit req/s",
                "pipeline req/s",
                "vs raw",
                "vs limit",
            ],
            runs,
        )
    )
    print(
        table(
            f"\nRate limit: <VENDOR>_RATE_LIMIT set for every vendor, {args.rate_rows:,} decisions per phase",
            ["vendor", "limit/s", "requests", "achieved/s", "achieved/limit", "max in any 1 s"],
            rate_rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
