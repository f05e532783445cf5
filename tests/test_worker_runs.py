"""A deployment run by a real process worker, as the month-end run is: its log, its names, its page.

One module-scoped `prefect server start` (its own PREFECT_HOME, a free port on 127.0.0.1), a
process work pool, a deployment of `process-inbox` made from this checkout (no schedule), one
worker and one sandbox; everything is stopped at the end. The server, worker and browser
helpers are those of tests/test_scale_out.py.

* A run that ends `RowsNotDone` is logged by the worker as finished in that state, without a
  traceback (Prefect raises a failed run's state at its end and logs it as an unexpected
  exception; a `list` as its data made that a TypeError).
* The runs are named after what ran: the inbox and how many files; the file and the time.
* Headless Chromium shows a failed invoice's id and error code on the run's artifacts.
* The server's scheduler creates the runs of a deployment's schedule (the month end's cron):
  the thing a Prefect, SQLAlchemy or server upgrade can break without any run failing.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from sandbox import Sandbox
from tests.test_scale_out import REPO_ROOT, PrefectServer, browse, chromium, keep, stop, wait_final

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

POOL = "invoice-sync-worker-test"
DEPLOYMENT = "worker-runs"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One process-inbox run of one file (rows that succeed, fail and are rejected) on a real worker."""
    from prefect import flow
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = Path(tempfile.mkdtemp(prefix="invoice-sync-worker-"))
    root = tmp_path_factory.mktemp("worker-runs")
    inbox = root / "inbox"
    inbox.mkdir()
    server = PrefectServer(home)
    worker = None
    try:
        server.start()
        created = server.run("work-pool", "create", POOL, "--type", "process")
        assert created.returncode == 0, created.stdout + created.stderr
        with temporary_settings(updates={PREFECT_API_URL: server.api}), Sandbox() as sandbox:
            flow.from_source(source=str(REPO_ROOT), entrypoint="flows/orchestration/inbox.py:process_inbox").deploy(
                name=DEPLOYMENT,
                work_pool_name=POOL,
                build=False,
                push=False,
                print_next_steps=False,
                ignore_warnings=True,
            )
            for invoice_id in ("A-0001", "A-0002"):
                sandbox.seed("alfred", invoice_id)
            rows = [
                {"invoice_id": "A-0001", "vendor": "alfred", "decision": "approve"},
                {"invoice_id": "A-MISSING", "vendor": "alfred", "decision": "approve"},  # failed: NOT_FOUND
                {"invoice_id": "A-0002", "vendor": "alfred", "decision": "cancel"},
                {"invoice_id": "not-hex", "vendor": "accounteer", "decision": "approve"},  # rejected: INVALID_ROW
            ]
            pd.DataFrame(rows).to_csv(inbox / "month-end.csv", index=False)
            then = time.time() - 60
            os.utime(inbox / "month-end.csv", (then, then))
            # The vendor settings of the sandbox, in the worker's environment (no Secret blocks here).
            worker_env = {**server.env, **sandbox.env(), "INVOICE_SYNC_STATE_DIR": str(root / "state")}
            worker = server.start_worker("worker", POOL, name="worker-runs", env=worker_env)
            run = run_deployment(
                f"process-inbox/{DEPLOYMENT}",
                timeout=0,
                parameters={"inbox": str(inbox), "settle_seconds": 0, "settings_from_blocks": False},
            )
            (parent,) = wait_final(server, [run.id])
            stop(worker)  # the worker's log is complete once it stopped
            worker = None
            with server.client() as client:
                from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

                (child,) = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id]))
                )
                from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

                artifacts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[child.id]))
                )
            yield {
                "server": server,
                "parent": parent,
                "child": child,
                "artifacts": artifacts,
                "worker_log": server.tail("worker", 200_000),
                "inbox": inbox,
            }
    finally:
        if worker is not None:
            stop(worker)
        server.close()


def test_a_run_ending_rows_not_done_leaves_no_traceback_in_the_worker_log(finished_run):
    parent, log = finished_run["parent"], finished_run["worker_log"]
    assert parent.state.name == "RowsNotDone" and parent.state.is_failed()  # what automations see
    assert "month-end.csv: processed (2 succeeded, 1 failed, 1 rejected)" in parent.state.message
    assert "Finished in state RowsNotDone(" in log, log[-3000:]  # the worker did run it, and says so
    for noise in ("Traceback", "Engine execution exited with unexpected exception", "Unexpected result", "TypeError"):
        assert noise not in log, log[-3000:]


def test_runs_are_named_after_what_ran(finished_run):
    assert finished_run["parent"].name == f"inbox {finished_run['inbox']}: 1 file"
    assert re.fullmatch(r"invoice-sync month-end\.csv \d{4}-\d\d-\d\d \d\d:\d\d UTC", finished_run["child"].name)


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install chromium): no UI check")
def test_a_failed_invoice_and_its_error_code_show_on_the_runs_artifacts(finished_run, tmp_path):
    server, artifacts = finished_run["server"], finished_run["artifacts"]
    by_key = {a.key: a for a in artifacts}
    attention = by_key["invoice-sync-needs-attention"]
    page = tmp_path / "ui-needs-attention.png"
    browse(f"{server.url}/artifacts/artifact/{attention.id}", page)
    keep(page)
    dom = browse(f"{server.url}/artifacts/artifact/{attention.id}", tmp_path / "x.png", dump_dom=True)
    assert "Rows that need attention" in dom
    assert "A-MISSING" in dom and "NOT_FOUND" in dom  # the failed invoice and why
    assert "not-hex" in dom and "INVALID_ROW" in dom  # the rejected one too
    assert "A-0001" not in dom  # only the rows that need a person

    outcomes = by_key["invoice-sync-outcomes"]
    page = tmp_path / "ui-outcomes.png"
    browse(f"{server.url}/artifacts/artifact/{outcomes.id}", page)
    keep(page)
    markdown = by_key["invoice-sync-run"]
    dom = browse(f"{server.url}/artifacts/artifact/{markdown.id}", tmp_path / "y.png", dump_dom=True)
    assert "month-end.csv" in dom and ".claimed" not in dom and "2 rows need attention" in dom


def test_the_scheduler_creates_the_month_end_runs(finished_run):
    """A deployment with prefect.yaml's month-end schedule gets its next runs `Scheduled` by the server."""
    import yaml
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = finished_run["server"]
    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    (spec,) = [d for d in config["deployments"] if d["name"] == "month-end-approvals"]
    (schedule,) = spec["schedules"]
    with temporary_settings(updates={PREFECT_API_URL: server.api}), server.client() as client:
        from prefect import flow

        flow.from_source(source=str(REPO_ROOT), entrypoint="flows/orchestration/inbox.py:process_inbox").deploy(
            name="scheduled-month-end",
            work_pool_name=POOL,
            schedule=CronSchedule(cron=schedule["cron"], timezone="UTC"),
            parameters={"inbox": str(finished_run["inbox"])},
            build=False,
            push=False,
            print_next_steps=False,
            ignore_warnings=True,
        )
        runs: list = []
        deadline = time.monotonic() + 120  # the scheduler's loop runs every 2 s here
        while time.monotonic() < deadline and not runs:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["scheduled-month-end"])),
                flow_run_filter=FlowRunFilter(),
            )
            if not runs:
                time.sleep(1)
    assert runs, "the scheduler created no run for the month-end schedule: " + server.tail("server")
    assert {r.state.name for r in runs} == {"Scheduled"}
    times = sorted(r.expected_start_time for r in runs)
    assert all(t.hour == 18 and (t + timedelta(days=1)).day == 1 for t in times)  # 18:00 on a month's last day
