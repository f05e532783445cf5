"""Past one process: a real Prefect server, `prefect deploy --all`, two process workers, the UI.

One module-scoped Prefect server (`prefect server start` on 127.0.0.1, PREFECT_HOME in a
temporary folder) and one sandbox serve every test here; everything is stopped at the end.

* `prefect deploy --all` deploys prefect.yaml as it is (the work pool and the time zone are
  its only inputs), and the API shows what the YAML says.
* Two flow runs of `decision-file-drop` at once, on two workers (`--limit 1` each), against
  one inbox: each takes one file, vendor settings come from Secret blocks, and alfred's rate
  is shared through a Prefect global concurrency limit: every row has exactly one result and
  no 1-second window of arrivals at the sandbox holds more than the shared rate.
* Headless Chromium loads the run's page and its artifacts in the Prefect UI (skipped where
  no chromium is installed).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC
from pathlib import Path

import pandas as pd
import pytest
import requests

from flows.orchestration.temporary_server import free_port
from sandbox import Sandbox
from tests.helpers import grant_log_env, in_ci, max_arrivals_in_window, max_in_window, missing, read_grants

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "invoice-sync-test"
SHARED_RATE = 10  # alfred requests per second, for both workers together
BURST = 3
ROWS_PER_FILE = 50  # alfred rows per file: 5 s at the shared rate for one worker alone
VENDOR_PREFIXES = ("ALFRED_", "ACCOUNTEER_", "APPZEN_", "MODULUS_")
SCREENSHOT_DIR_ENV = "INVOICE_SYNC_UI_SCREENSHOTS"  # set it to keep the UI screenshots


def stop(process: subprocess.Popen, grace: float = 15) -> None:
    """SIGINT (a Prefect worker or server shuts down cleanly on it), then SIGKILL the group."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(grace)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


class PrefectServer:
    def __init__(self, home: Path):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/api"
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(VENDOR_PREFIXES) and not k.startswith("PREFECT_")
        }
        self.env = {
            **base,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": self.api,
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "5",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",  # a schedule's runs appear within seconds
            "GX_ANALYTICS_ENABLED": "false",
        }
        self.logs: list[Path] = []
        self.process: subprocess.Popen | None = None

    def spawn(self, name: str, *args: str, cwd: Path = REPO_ROOT, env: dict | None = None) -> subprocess.Popen:
        log = self.home / f"{name}.log"
        self.logs.append(log)
        with open(log, "w") as handle:  # the child writes through its own copy of the descriptor
            return subprocess.Popen(
                [PREFECT, *args],
                cwd=cwd,
                env=env or self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def start_worker(
        self, log_name: str, pool: str, *, name: str | None = None, limit: int | None = 1, env: dict | None = None
    ) -> subprocess.Popen:
        """`prefect worker start` on a process pool (at most `limit` runs at once; None: no limit)."""
        args = ["worker", "start", "--pool", pool, "--type", "process"]
        args += ["--name", name] if name else []
        args += ["--limit", str(limit)] if limit is not None else []
        return self.spawn(log_name, *args, env=env)

    def run(self, *args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PREFECT, *args],
            cwd=REPO_ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self, timeout: float = 180) -> None:
        self.process = self.spawn("server", "server", "start", "--host", "127.0.0.1", "--port", str(self.port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited: {self.tail('server')}")
            try:
                if requests.get(f"{self.api}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"prefect server did not start in {timeout} s: {self.tail('server')}")

    def tail(self, name: str, chars: int = 4000) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def client(self):
        from prefect.client.orchestration import get_client

        return get_client(sync_client=True)

    def close(self) -> None:
        """Stop the server (if it started) and remove its PREFECT_HOME."""
        if self.process is not None:
            stop(self.process, grace=20)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = Path(tempfile.mkdtemp(prefix="invoice-sync-prefect-"))
    srv = PrefectServer(home)
    try:
        srv.start()
        with temporary_settings(updates={PREFECT_API_URL: srv.api}):
            yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def deployed(server):
    """The work pool, then `prefect deploy --all` on the repository's prefect.yaml, unchanged."""
    before = hashlib.sha256((REPO_ROOT / "prefect.yaml").read_bytes()).hexdigest()
    created = server.run("work-pool", "create", POOL, "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    result = server.run(
        "--no-prompt",
        "deploy",
        "--all",
        env={
            "INVOICE_SYNC_POOL": POOL,
            "INVOICE_SYNC_TIMEZONE": "Europe/Amsterdam",
            "INVOICE_SYNC_HOME": str(REPO_ROOT),
        },
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert hashlib.sha256((REPO_ROOT / "prefect.yaml").read_bytes()).hexdigest() == before  # deploy wrote nothing back
    with server.client() as client:
        deployments = {
            name: client.read_deployment_by_name(f"process-inbox/{name}")
            for name in ("month-end-approvals", "decision-file-drop")
        }
        # The schedules stay in the deployments but are switched off here, and runs they already
        # made are deleted: a test must never poll the repository's own data/inbox.
        for found in deployments.values():
            for schedule in found.schedules:
                client.update_deployment_schedule(found.id, schedule.id, active=False)
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )

        scheduled = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id for d in deployments.values()])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["SCHEDULED"]))),
        )
        for run in scheduled:
            client.delete_flow_run(run.id)
    return deployments


def test_prefect_deploy_all_creates_both_deployments_as_written(server, deployed):
    from prefect.server.schemas.schedules import CronSchedule as ServerCron

    month_end, file_drop = deployed["month-end-approvals"], deployed["decision-file-drop"]
    assert month_end.entrypoint == file_drop.entrypoint == "flows/orchestration/inbox.py:process_inbox"
    assert month_end.work_pool_name == file_drop.work_pool_name == POOL
    assert month_end.parameters["inbox"] == "data/month-end" and file_drop.parameters["inbox"] == "data/inbox"
    assert month_end.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}]
    (cron,) = [s.schedule for s in month_end.schedules]
    assert (cron.cron, cron.timezone) == ("0 18 L * *", "Europe/Amsterdam")
    (interval,) = [s.schedule for s in file_drop.schedules]
    assert interval.interval.total_seconds() == 60
    assert file_drop.global_concurrency_limit is not None and file_drop.global_concurrency_limit.limit == 2
    assert str(file_drop.concurrency_options.collision_strategy).endswith("CANCEL_NEW")
    # what the server will schedule: 18:00 Amsterdam on the last day of each month
    import asyncio
    from datetime import datetime
    from zoneinfo import ZoneInfo

    dates = asyncio.run(
        ServerCron(cron=cron.cron, timezone=cron.timezone).get_dates(n=3, start=datetime(2027, 1, 10, tzinfo=UTC))
    )
    local = [d.astimezone(ZoneInfo("Europe/Amsterdam")) for d in dates]
    assert [(d.month, d.day, d.hour) for d in local] == [(1, 31, 18), (2, 28, 18), (3, 31, 18)]
    # the parameters the UI offers are the flow's
    schema = month_end.parameter_openapi_schema["properties"]
    assert {"inbox", "dry_run", "vendors", "chunk_size", "settle_seconds"} <= set(schema)


# -- two workers, one shared rate ---------------------------------------------------------------


def write_file(sandbox: Sandbox, path: Path, tag: str) -> None:
    rows = []
    for i in range(ROWS_PER_FILE):
        sandbox.seed("alfred", f"{tag}-{i:04d}")
        rows.append({"invoice_id": f"{tag}-{i:04d}", "vendor": "alfred", "decision": "approve"})
    for i in range(3):
        invoice_id, number = str(5000 + 10 * ord(tag[-1]) + i), f"N-{tag}-{i}"
        sandbox.seed("modulus", invoice_id, invoice_number=number)
        rows.append({"invoice_id": invoice_id, "vendor": "modulus", "decision": "approve", "invoice_number": number})
    rows.append({"invoice_id": f"{tag}-bad", "vendor": "accounteer", "decision": "cancel"})  # rejected by a rule
    pd.DataFrame(rows).to_csv(path, index=False)
    then = time.time() - 60
    os.utime(path, (then, then))


def wait_final(server: PrefectServer, run_ids: list, timeout: float = 420) -> list:
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while True:
            runs = [client.read_flow_run(run_id) for run_id in run_ids]
            if all(run.state and run.state.is_final() for run in runs):
                return runs
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in server.logs if p.exists()
                )
                pytest.fail(f"flow runs not finished: {[(r.name, r.state and r.state.name) for r in runs]}\n{logs}")
            time.sleep(1)


class BothFilesStarted:
    """Holds each file's alfred requests at the sandbox until both files' first requests arrived.

    The two flow runs are deployment runs on two process workers, which need not start within
    seconds of each other on a busy machine; the sandbox (in this process) is what both of them
    talk to, so the barrier is there: a run that starts first sends its first requests (their
    arrival is logged as usual) and waits for the answers until the other run's first request
    has arrived, and from then on both send at once. Requests are held, not refused, so nothing
    is retried and every row is still sent exactly once.
    """

    def __init__(self, sandbox: Sandbox, tags: str = "AB", vendor: str = "alfred", timeout: float = 240) -> None:
        self.tags, self.vendor, self.timeout = tags, vendor, timeout
        self.first: dict[str, float] = {}  # tag -> arrival of that file's first request
        self.held = 0  # requests that waited at the barrier
        self.timed_out: list[str] = []  # the files that had started when a wait at the barrier timed out
        self._released = threading.Condition()
        self._handle = sandbox._handle
        sandbox._handle = self  # the sandbox's handler threads call this for every request

    def __call__(self, api, arrived, method, path, *rest):
        tag = next((t for t in self.tags if f"/{t}-" in path), None) if api.name == self.vendor else None
        if tag is not None:
            with self._released:
                self.first.setdefault(tag, arrived)
                if len(self.first) == len(self.tags):
                    self._released.notify_all()
                else:
                    self.held += 1
                    if not self._released.wait_for(lambda: len(self.first) == len(self.tags), self.timeout):
                        self.timed_out = sorted(self.first)  # the test fails on this; the runs go on
        return self._handle(api, arrived, method, path, *rest)


@pytest.fixture(scope="module")
def scale_out_run(server, deployed, tmp_path_factory):
    """Two runs of decision-file-drop at once on two workers; returns what a test needs to check."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.deployments import run_deployment

    from flows.orchestration.secrets import push_secrets

    root = tmp_path_factory.mktemp("scale-out")
    inbox = root / "data" / "inbox"
    inbox.mkdir(parents=True)
    gcl = f"vendor-alfred-{uuid.uuid4().hex[:8]}"
    workers: list[subprocess.Popen] = []
    with Sandbox() as sandbox:
        barrier = BothFilesStarted(sandbox)
        write_file(sandbox, inbox / "batch-a.csv", "A")
        write_file(sandbox, inbox / "batch-b.csv", "B")
        with server.client() as client:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=gcl, limit=BURST, slot_decay_per_second=SHARED_RATE)
            )
        push_secrets(None, sandbox.env())  # URLs and credentials only in Secret blocks on this server
        try:
            for i in range(2):
                workers.append(server.start_worker(f"worker-{i}", POOL, name=f"worker-{i}"))
            job_env = {  # nothing secret: the flow reads vendor settings from the Secret blocks
                "ALFRED_GLOBAL_LIMIT": gcl,
                "INVOICE_SYNC_STATE_DIR": str(root / "state"),
                "ALFRED_BACKOFF_INITIAL": "0.05",
                # A request held at the barrier is waiting for its answer: it must not time out.
                "ALFRED_TIMEOUT": str(barrier.timeout + 60),
                **grant_log_env(root / "grants.log", server.env),  # both flow runs' grant times
            }
            parameters = {"inbox": str(inbox), "settle_seconds": 0, "max_files": 1}
            runs = [
                run_deployment(
                    "process-inbox/decision-file-drop",
                    parameters=parameters,
                    job_variables={"env": job_env},
                    timeout=0,
                    flow_run_name=f"scale-out-{i}",
                )
                for i in range(2)
            ]
            finished = wait_final(server, [run.id for run in runs])
        finally:
            for worker in workers:
                stop(worker)
        log = {vendor: sandbox.request_log(vendor) for vendor in ("alfred", "modulus", "accounteer")}
        changes = {f"A-{i:04d}": sandbox.changes("alfred", f"A-{i:04d}") for i in range(ROWS_PER_FILE)}
        changes.update({f"B-{i:04d}": sandbox.changes("alfred", f"B-{i:04d}") for i in range(ROWS_PER_FILE)})
    return {
        "root": root,
        "inbox": inbox,
        "runs": finished,
        "log": log,
        "changes": changes,
        "gcl": gcl,
        "barrier": barrier,
        "grants": read_grants(root / "grants.log"),
    }


def test_two_workers_two_runs_one_shared_rate(server, scale_out_run):
    root, runs = scale_out_run["root"], scale_out_run["runs"]
    for run in runs:
        assert run.state.name == "RowsNotDone"  # one row per file breaks a rule (accounteer has no cancel)
        assert f"processed ({ROWS_PER_FILE + 3} succeeded, 1 rejected)" in run.state.message, run.state.message
    # one file each: max_files=1 and the claim, never the same file twice
    assert {run.state.message.split(":")[0] for run in runs} == {"batch-a.csv", "batch-b.csv"}
    processed = sorted((root / "data" / "processed").iterdir())
    assert sorted(p.name.split("-2")[0] for p in processed if not p.name.endswith(".reason.txt")) == [
        "batch-a",
        "batch-b",
    ]
    assert sum(p.name.endswith(".reason.txt") for p in processed) == 2  # each names its rejected row's file
    assert [p.name for p in scale_out_run["inbox"].iterdir()] == [".claimed"]
    assert list((scale_out_run["inbox"] / ".claimed").iterdir()) == []
    # the two runs ran on the two workers
    with server.client() as client:
        assert all(client.read_flow_run(run.id).work_pool_name == POOL for run in runs)
    worker_logs = [server.tail(f"worker-{i}", 20000) for i in range(2)]
    assert all(str(run.id) in "".join(worker_logs) for run in runs)
    assert sum(any(str(run.id) in log for run in runs) for log in worker_logs) == 2

    # every row has exactly one result, and each invoice changed once
    results = [pd.read_parquet(folder / "results.parquet") for folder in sorted((root / "data" / "results").iterdir())]
    assert len(results) == 2
    for frame in results:
        assert frame["row_number"].tolist() == list(range(1, ROWS_PER_FILE + 5))
        assert frame["outcome"].value_counts().to_dict() == {"succeeded": ROWS_PER_FILE + 3, "rejected": 1}
        assert frame["run_id"].nunique() == 1
    assert results[0]["run_id"].iloc[0] != results[1]["run_id"].iloc[0]
    assert set(scale_out_run["changes"].values()) == {1}
    alfred = sorted(t for t, _, _ in scale_out_run["log"]["alfred"])
    assert len(alfred) == 2 * ROWS_PER_FILE  # one request per row: nothing sent twice
    assert scale_out_run["log"]["accounteer"] == []

    # the shared limit held: both workers together never went over it in any second ...
    # (10 in a second is what one worker's spacing allows by design: 1/(rate * HEADROOM) apart,
    # ten arrivals span 0.93 s and an eleventh would come 1.03 s after the first)
    by_file = {tag: sorted(t for t, _, path in scale_out_run["log"]["alfred"] if f"/{tag}-" in path) for tag in "AB"}
    overlap = min(by_file["A"][-1], by_file["B"][-1]) - max(by_file["A"][0], by_file["B"][0])
    barrier = scale_out_run["barrier"]
    spans = [b - a for a, b in zip(alfred, alfred[SHARED_RATE:], strict=False)]  # SHARED_RATE + 1 arrivals in a row
    print(
        f"scale-out: overlap {overlap:.2f} s, max {max_in_window(alfred)} arrivals "
        f"({max_in_window(scale_out_run['grants'])} grants) in 1 s, "
        f"shortest span of {SHARED_RATE + 1} arrivals {min(spans):.3f} s, "
        f"first requests {abs(barrier.first['A'] - barrier.first['B']):.2f} s apart, {barrier.held} held at the barrier"
    )
    grants = scale_out_run["grants"]
    assert len(grants) == len(alfred)  # every request took a slot where the limit is kept
    assert max_in_window(grants) <= SHARED_RATE, max_in_window(grants)  # exactly, at the send side
    assert max_arrivals_in_window(alfred) <= SHARED_RATE, max_in_window(alfred)  # at the vendor, but for jitter
    # ... while both really sent at the same time: both runs' first requests arrived before
    # either got an answer (the barrier), so each run still had nearly all its rows to send
    assert not barrier.timed_out, f"only {barrier.timed_out} had started sending after {barrier.timeout} s"
    assert overlap > 1.0, overlap


# -- the Prefect UI in a real browser -----------------------------------------------------------


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def browse(url: str, out: Path, *, dump_dom: bool = False, budget_ms: int = 15000) -> str:
    """A screenshot of `url` (or its DOM after scripts ran), by headless Chromium, offline."""
    profile = tempfile.mkdtemp(prefix="invoice-sync-chromium-")
    args = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        # Nothing but this machine: every other host name resolves to nowhere.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--window-size=1400,1000",
        f"--virtual-time-budget={budget_ms}",
    ]
    args += ["--dump-dom"] if dump_dom else [f"--screenshot={out}"]
    try:
        done = subprocess.run([*args, url], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return done.stdout


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    import struct

    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def keep(path: Path) -> None:
    target = os.environ.get(SCREENSHOT_DIR_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


NO_CHROMIUM = "chromium is not installed (apt-get install chromium): no UI check"


# Skipped before the (slow) fixtures where there is no Chromium; in CI, which installs it, a failure.
@pytest.mark.skipif(chromium() is None and not in_ci(), reason=NO_CHROMIUM)
def test_the_run_and_its_artifacts_render_in_the_prefect_ui(server, scale_out_run, tmp_path):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    if chromium() is None:
        missing(NO_CHROMIUM)
    root = scale_out_run["root"]
    folder = sorted((root / "data" / "results").iterdir())[0]
    sync_run_id = pd.read_parquet(folder / "results.parquet")["run_id"].iloc[0]  # the subflow that sent the file
    with server.client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[sync_run_id]))
        )
    table = next(a for a in artifacts if a.key == "invoice-sync-outcomes")  # one of two tables now

    page = tmp_path / "ui-flow-run.png"
    browse(f"{server.url}/runs/flow-run/{sync_run_id}", page)
    keep(page)
    artifact_page = tmp_path / "ui-artifact-table.png"
    browse(f"{server.url}/artifacts/artifact/{table.id}", artifact_page)
    keep(artifact_page)
    for png in (page, artifact_page):
        assert png_size(png) == (1400, 1000)
        # A blank or single-colour page compresses to a few kB; a rendered run page is far larger.
        assert png.stat().st_size > 30_000, (png, png.stat().st_size)

    run_dom = browse(f"{server.url}/runs/flow-run/{sync_run_id}", tmp_path / "x.png", dump_dom=True)
    assert "invoice-sync batch-" in run_dom  # the run's name
    assert "RowsNotDone" in run_dom or "Rows Not Done" in run_dom  # its state, by name
    table_dom = browse(f"{server.url}/artifacts/artifact/{table.id}", tmp_path / "y.png", dump_dom=True)
    assert "Outcomes per vendor" in table_dom
    assert "alfred" in table_dom and "modulus" in table_dom and "INVALID_ROW" in table_dom
    markdown = next(a for a in artifacts if a.type == "markdown")
    markdown_dom = browse(f"{server.url}/artifacts/artifact/{markdown.id}", tmp_path / "z.png", dump_dom=True)
    assert "validation report" in markdown_dom and str(folder / "validation.html") in markdown_dom
