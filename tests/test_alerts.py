"""Unattended month end: alerts, the retry-failed deployment and a deadline, on a real Prefect server.

One module-scoped stack: PostgreSQL (started here, when its binaries are installed) holding both
the Prefect server's database and the ledger, the configuration an operator deploys past one
machine (SQLite for both otherwise); `prefect server start` on 127.0.0.1; `prefect deploy --all`
of prefect.yaml (schedules off, the retry delays cut to a second); one process worker; the
sandbox; and a webhook receiver on 127.0.0.1 that `invoice-sync alerts install --webhook` points
the notification block at.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.orchestration.temporary_server import free_port
from sandbox import Sandbox
from tests.helpers import invoice_id_for, seed_approvals
from tests.test_ledger import _postgres_binaries
from tests.test_ledger import postgres_url as postgres_server  # noqa: F401 - a fixture
from tests.test_scale_out import REPO_ROOT, PrefectServer, stop, wait_final

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

POOL = "invoice-sync-alerts-test"
DEADLINE_SECONDS = 12
NOTIFY_WITHIN = 60  # seconds: "within a minute"


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records each POST and lets a test wait for the n-th."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(8)  # in the URL only: it must never come back in a message
        self.requests: list[dict] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.arrived:
                    receiver.requests.append({"path": self.path, "json": json.loads(body or b"{}"), "raw": body})
                    receiver.arrived.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/{self.token}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, count: int, timeout: float) -> list[dict]:
        """Block until `count` requests arrived (or fail after `timeout` seconds)."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                pytest.fail(f"{len(self.requests)} notifications after {timeout} s, expected {count}: {self.requests}")
            return list(self.requests)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _test_prefect_yaml(target: Path) -> Path:
    """prefect.yaml as written, with schedules off and every retry round one second after the last."""
    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    for deployment in config["deployments"]:
        deployment.pop("schedules", None)
        for trigger in deployment.get("triggers", []):
            trigger["schedule_after"] = 1
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


@pytest.fixture(scope="module")
def databases(request):
    """(Prefect database URL, ledger URL): both on one PostgreSQL when it is installed, else None."""
    if _postgres_binaries() is None:
        yield None, None
        return
    psycopg_url = request.getfixturevalue("postgres_server")
    import psycopg

    plain = psycopg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS prefect")
        conn.execute("CREATE DATABASE prefect")
        conn.execute("DROP DATABASE IF EXISTS ledger")
        conn.execute("CREATE DATABASE ledger")
    base = psycopg_url.rsplit("/", 1)[0]
    yield f"{base.replace('+psycopg', '+asyncpg')}/prefect", f"{base}/ledger"


@pytest.fixture(scope="module")
def stack(databases, tmp_path_factory):
    """Server, deployments, worker, sandbox and receiver; alerts installed with a short deadline."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli.main import main
    from flows.orchestration.secrets import push_secrets

    prefect_db, ledger_db = databases
    root = tmp_path_factory.mktemp("alerts")
    home = Path(tempfile.mkdtemp(prefix="invoice-sync-prefect-alerts-"))
    server = PrefectServer(home)
    server.env["PREFECT_UI_URL"] = server.url
    if prefect_db:
        server.env["PREFECT_API_DATABASE_CONNECTION_URL"] = prefect_db
    worker = None
    try:
        server.start()
        with temporary_settings(updates={PREFECT_API_URL: server.api}), Sandbox() as sandbox, WebhookReceiver() as hook:
            created = server.run("work-pool", "create", POOL, "--type", "process")
            assert created.returncode == 0, created.stdout + created.stderr
            deployed = server.run(
                "--no-prompt",
                "deploy",
                "--all",
                "--prefect-file",
                str(_test_prefect_yaml(root / "prefect.yaml")),
                env={"INVOICE_SYNC_POOL": POOL, "INVOICE_SYNC_TIMEZONE": "UTC", "INVOICE_SYNC_HOME": str(REPO_ROOT)},
            )
            assert deployed.returncode == 0, (deployed.stdout + deployed.stderr)[-4000:]
            push_secrets(None, sandbox.env())  # vendor URLs and credentials only in Secret blocks
            job_env = {"INVOICE_SYNC_STATE_DIR": str(root / "state"), "APPZEN_MAX_ATTEMPTS": "2"}
            if ledger_db:
                job_env["INVOICE_SYNC_LEDGER_URL"] = ledger_db
            for prefix in ("ALFRED", "ACCOUNTEER", "APPZEN", "MODULUS"):  # quick retries, nothing secret
                job_env.update(
                    {
                        f"{prefix}_BACKOFF_INITIAL": "0.02",
                        f"{prefix}_BACKOFF_MAX": "0.2",
                        f"{prefix}_RETRY_AFTER_MAX": "1",
                        f"{prefix}_TIMEOUT": "60",
                    }
                )
            worker = server.start_worker(
                "worker", POOL, name="alerts-worker", limit=None, env={**server.env, **job_env}
            )
            for _ in range(2):  # installing twice leaves one set
                assert main(["alerts", "install", "--webhook", hook.url, "--deadline", f"{DEADLINE_SECONDS}s"]) == 0
            yield {
                "server": server,
                "sandbox": sandbox,
                "hook": hook,
                "root": root,
                "ledger": ledger_db,
                "prefect_db": prefect_db,
                "env": job_env,
            }
    finally:
        if worker is not None:
            stop(worker)
        server.close()


def run_inbox(stack, deployment: str, rows: list[dict], name: str):
    """Drop one file into a fresh inbox and run `deployment` on it; returns the finished parent run."""
    from prefect.deployments import run_deployment

    inbox = stack["root"] / f"inbox-{name}"
    inbox.mkdir()
    pd.DataFrame(rows).to_csv(inbox / f"{name}.csv", index=False)
    run = run_deployment(
        f"process-inbox/{deployment}",
        parameters={"inbox": str(inbox), "settle_seconds": 0},
        timeout=0,
        flow_run_name=f"alerts-{name}",
    )
    (finished,) = wait_final(stack["server"], [run.id], timeout=240)
    return finished, inbox


def assert_no_secret(stack, text: str) -> None:
    for value in stack["sandbox"].env().values():
        if not value.startswith("http"):  # every credential; the sandbox URLs are not secret
            assert value not in text
    assert stack["hook"].token not in text and stack["hook"].url not in text


def test_alerts_install_twice_leaves_one_set_and_list_hides_the_url(stack, capsys):
    from prefect.client.orchestration import get_client

    from flows.cli.main import main
    from flows.orchestration.alerts import AUTOMATIONS, BLOCK_NAME

    with get_client(sync_client=True) as client:
        ours = [a for a in client.read_automations() if a.name in AUTOMATIONS]
        assert sorted(a.name for a in ours) == sorted(AUTOMATIONS)  # three, each once
        block = client.read_block_document_by_name(BLOCK_NAME, "custom-webhook", include_secrets=False)
        assert stack["hook"].token not in json.dumps(block.data, default=str)  # stored as a secret
    capsys.readouterr()
    assert main(["alerts", "list"]) == 0
    listed = capsys.readouterr().out
    assert "channel: webhook" in listed and "not final within" in listed
    assert stack["hook"].token not in listed


def test_transient_and_permanent_failures_notify_once_and_the_retry_round_resends_only_the_transient(stack):
    sandbox, hook = stack["sandbox"], stack["hook"]
    before = len(hook.requests)
    rows = seed_approvals(sandbox, "alfred", range(1, 4))
    transient = seed_approvals(sandbox, "appzen", range(1, 3))
    for row in transient:  # two attempts each (APPZEN_MAX_ATTEMPTS): both answered 503, then it lets them
        sandbox.inject("appzen", "503", times=2, invoice_id=row["invoice_id"])
    missing = {
        "invoice_id": invoice_id_for("modulus", 77),
        "vendor": "modulus",
        "decision": "approve",
        "invoice_number": "N-missing",
    }  # never seeded: NOT_FOUND, a permanent failure
    run, _ = run_inbox(stack, "decision-file-drop", rows + transient + [missing], "mixed")
    assert run.state.name == "RowsNotDone"

    (notification,) = hook.wait_for(before + 1, NOTIFY_WITHIN)[before:]
    subject, body = notification["json"]["subject"], notification["json"]["body"]
    assert "mixed.csv" in subject and "3 succeeded, 3 failed" in subject
    assert "deployment: decision-file-drop" in body
    assert "appzen: 2 failed; 100.0% not done; RETRIES_EXHAUSTED (2)" in body
    assert "modulus: 1 failed; 100.0% not done; NOT_FOUND (1)" in body
    assert "alfred: 3 succeeded; 0.0% not done" in body
    assert "results: " in body and f"{stack['server'].url}/runs/flow-run/" in body
    assert_no_secret(stack, notification["raw"].decode())

    # the retry round: started by the run-finished event, it sends only the two transient rows
    retry_run = wait_for_retry(stack)
    assert retry_run.state.name == "Completed", retry_run.state.message
    folder = Path(retry_run.state.message.rsplit("(", 1)[1].rstrip(")"))
    assert folder.name.startswith("mixed-") and folder.name.endswith("-retry-1")
    assert json.loads((folder / "retry.json").read_text())["round"] == 1
    results = pd.read_parquet(folder / "results.parquet")
    assert sorted(results["invoice_id"]) == sorted(r["invoice_id"] for r in transient)
    assert set(results["outcome"]) == {"succeeded"}
    assert all(sandbox.changes("appzen", r["invoice_id"]) == 1 for r in transient)
    assert all(sandbox.changes("alfred", r["invoice_id"]) == 1 for r in rows)
    sent_to_modulus = [path for _, _, path in sandbox.request_log("modulus") if "Authenticate" not in path]
    assert len(sent_to_modulus) == 1  # the permanent failure was not sent again
    assert len(hook.requests) == before + 1  # the retry succeeded: nothing more to say, no further round


def wait_for_retry(stack, timeout: float = 180):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    deadline = time.monotonic() + timeout
    with stack["server"].client() as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["retry-failed"]))
            )
            if runs:
                (run,) = runs
                return wait_final(stack["server"], [run.id], timeout=deadline - time.monotonic())[0]
            time.sleep(0.5)
    pytest.fail(f"no retry-failed run within {timeout} s:\n{stack['server'].tail('worker')}")


def test_a_completed_run_sends_nothing_and_a_rejected_file_sends_one(stack):
    sandbox, hook = stack["sandbox"], stack["hook"]
    before = len(hook.requests)
    run, _ = run_inbox(stack, "decision-file-drop", seed_approvals(sandbox, "alfred", range(10, 13)), "clean")
    assert run.state.name == "Completed"
    # a barrier: a rejected file after it alerts; the clean run, processed before it, must not have
    bad, _ = run_inbox(stack, "decision-file-drop", [{"what": "not a decision file"}], "broken")
    assert bad.state.name == "FilesRejected"
    (notification,) = hook.wait_for(before + 1, NOTIFY_WITHIN)[before:]
    assert "FilesRejected" in notification["json"]["subject"]
    assert "broken.csv" in notification["json"]["body"] and "clean" not in notification["json"]["body"]
    assert_no_secret(stack, notification["raw"].decode())
    assert len(hook.requests) == before + 1


def test_a_month_end_run_past_its_deadline_alerts(stack):
    from prefect.deployments import run_deployment

    sandbox, hook = stack["sandbox"], stack["hook"]
    before = len(hook.requests)
    inbox = stack["root"] / "month-end"
    inbox.mkdir()
    (row,) = seed_approvals(sandbox, "accounteer", [5])
    pd.DataFrame([row]).to_csv(inbox / "held.csv", index=False)
    sandbox.inject("accounteer", "slow", delay=DEADLINE_SECONDS + 15, invoice_id=row["invoice_id"])  # holds the run
    run = run_deployment(
        "process-inbox/month-end-approvals",
        parameters={"inbox": str(inbox), "settle_seconds": 0},
        timeout=0,
        flow_run_name="alerts-month-end",
    )
    (notification,) = hook.wait_for(before + 1, DEADLINE_SECONDS + NOTIFY_WITHIN)[before:]
    # the run names itself after what it does once it has claimed its files (docs/results.md)
    assert f"month end not finished: inbox {inbox}: 1 file" in notification["json"]["subject"]
    assert "deployment month-end-approvals" in notification["json"]["body"]
    assert f"/runs/flow-run/{run.id}" in notification["json"]["body"]
    (finished,) = wait_final(stack["server"], [run.id], timeout=120)
    assert finished.state.name == "Completed"  # it finished in the end: late, and a person was told


def test_the_stack_runs_on_postgresql(stack):
    if stack["prefect_db"] is None:
        pytest.skip("no PostgreSQL server binaries: the stack ran on SQLite")
    import psycopg

    from flows.state.ledger import Ledger

    ledger = Ledger(stack["ledger"])
    try:
        assert len(ledger.lookup(["alfred", "appzen"])) >= 5  # the deployment runs wrote here
    finally:
        ledger.close()
    plain = stack["ledger"].replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/prefect"
    with psycopg.connect(plain) as conn:
        assert conn.execute("SELECT count(*) FROM automation WHERE name LIKE 'invoice-sync: %'").fetchone()[0] == 3
        assert conn.execute("SELECT count(*) FROM flow_run").fetchone()[0] >= 4


def test_parse_duration_and_spec_checks():
    from flows.orchestration.alerts import AlertSpec, parse_duration

    assert parse_duration("3h") == timedelta(hours=3) and parse_duration("1h30m") == timedelta(minutes=90)
    for bad in ("", "3 hours", "h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        AlertSpec("webhook", "http://127.0.0.1/x", failed_share=1.5)
    with pytest.raises(ValueError):
        AlertSpec("pager", "http://127.0.0.1/x")


def test_the_threshold_and_the_retry_round_decide_who_is_told():
    from flows.orchestration.events import RetryRound, run_outcome

    results = pd.DataFrame(
        {
            "vendor": ["alfred"] * 98 + ["alfred", "appzen"],
            "outcome": ["succeeded"] * 98 + ["failed", "failed"],
            "error_code": [None] * 98 + ["RETRIES_EXHAUSTED", "NOT_FOUND"],
        }
    )
    strict = run_outcome(results, 0.0)
    assert strict.notify and strict.transient == {"alfred": 1} and strict.permanent == {"appzen": 1}
    assert not run_outcome(results[results["vendor"] == "alfred"], 0.02).notify  # 1 of 99: under 2%
    only_transient = results[results["vendor"] == "alfred"]
    assert not run_outcome(only_transient, 0.0, RetryRound(1, 3, "r")).notify  # round 2 sends it again
    assert run_outcome(only_transient, 0.0, RetryRound(3, 3, "r")).notify  # the last round says so
    assert run_outcome(results, 0.0, RetryRound(1, 3, "r")).notify  # a permanent failure is news


def test_a_stopped_run_is_not_retried_behind_its_back_and_alerts_by_its_state():
    from flows.orchestration.events import run_outcome

    results = pd.DataFrame(
        {
            "vendor": ["alfred"] * 3,
            "outcome": ["succeeded", "failed", "failed"],
            "error_code": [None, "INTERRUPTED", "INTERRUPTED"],
        }
    )
    unstopped = run_outcome(results, 0.0)
    assert unstopped.transient_left and unstopped.notify  # INTERRUPTED is transient: a crash is retried
    stopped = run_outcome(results, 0.0, stopped=True)
    assert not stopped.transient_left  # no retry-failed round resends what a person stopped
    assert not stopped.notify  # the run's Cancelled state alerts: one message
