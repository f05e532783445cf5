"""Four eyes: a deployment run pauses on its plan until a second person approves or rejects it.

Against the session's real Prefect server: a deployment of `process-inbox` is created through
the API, each flow run of it is executed the way a process worker does (`python -m
prefect.engine RUN_ID`, in its own process), the test waits for the `invoice-sync` subflow to
be Paused (read through the API), and approves or rejects it with `resume_flow_run(run_input=...)`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from flows.cli.main import EXIT_UNUSABLE, main
from flows.state import audit
from tests.helpers import seed_approvals
from tests.test_ledger import changing_requests

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600), pytest.mark.usefixtures("prefect_server")]

REPO_ROOT = Path(__file__).resolve().parents[1]
WAIT = 240  # seconds: a safety net on a loaded machine, not a measure


@pytest.fixture(scope="module")
def deployment_id(prefect_server):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("process-inbox")
        return client.create_deployment(
            flow_id,
            name="four-eyes-test",
            entrypoint="flows/orchestration/inbox.py:process_inbox",
            path=str(REPO_ROOT),
            enforce_parameter_schema=False,
        )


class InboxRun:
    """One deployment run of `process-inbox` on a folder of its own, executed as a worker would."""

    def __init__(self, deployment_id, tmp_path: Path, env: dict[str, str], submitted_by: str | None = None):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL

        self.root = tmp_path
        self.inbox = tmp_path / "inbox"
        self.inbox.mkdir()
        parameters = {
            "inbox": str(self.inbox),
            "settle_seconds": 0,
            "settings_from_blocks": False,
            "processed_dir": str(tmp_path / "processed"),
            "rejected_dir": str(tmp_path / "rejected"),
            "results_root": str(tmp_path / "results"),
            "submitted_by": submitted_by,
        }
        with get_client(sync_client=True) as client:
            self.run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
        self.env = {**env, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONUNBUFFERED": "1"}
        self.log = tmp_path / "engine.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prefect.engine", str(self.run.id)],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_paused(self, pause: int = 0):
        """The invoice-sync subflow, once it is Paused at its `pause`-th approval request."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        deadline = time.monotonic() + WAIT
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                children = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[self.run.id]))
                )
                for child in children:
                    state = child.state
                    if state and state.is_paused() and state.state_details.pause_key == f"approval-{pause}":
                        return child
                assert self.process is not None and self.process.poll() is None, self.log.read_text()[-4000:]
                time.sleep(0.2)
        pytest.fail(f"no paused invoice-sync run within {WAIT} s:\n{self.log.read_text()[-4000:]}")

    def wait_final(self):
        assert self.process is not None
        self.process.wait(WAIT)
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            parent = client.read_flow_run(self.run.id)
        return parent

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait()


def resume(child, **answer) -> None:
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(child.id, run_input=answer)


def audit_rows(state_dir: Path, table) -> pd.DataFrame:
    engine = sa.create_engine(f"sqlite:///{state_dir / 'ledger.sqlite'}")
    with engine.connect() as conn:
        rows = pd.DataFrame(conn.execute(sa.select(table).order_by(table.c.seq)).mappings().all())
    engine.dispose()
    return rows


@pytest.fixture
def approval_env(sandbox, state_dir):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")},
        "INVOICE_SYNC_APPROVAL": "all",
        "INVOICE_SYNC_APPROVAL_POLL": "1",
        "INVOICE_SYNC_STATE_DIR": str(state_dir),
    }
    return env


def drop_file(sandbox, run: InboxRun, decided_by: str = "m.ortiz") -> list[dict]:
    rows = seed_approvals(sandbox, "alfred", range(3))
    frame = pd.DataFrame(rows).assign(decided_by=decided_by)
    frame.loc[1, "decision"] = "cancel"
    frame.to_csv(run.inbox / "month-end.csv", index=False)
    then = time.time() - 60
    os.utime(run.inbox / "month-end.csv", (then, then))
    return rows


def test_a_paused_run_approved_through_the_api_sends(deployment_id, sandbox, tmp_path, approval_env, state_dir):
    run = InboxRun(deployment_id, tmp_path, approval_env, submitted_by="a.clerk")
    rows = drop_file(sandbox, run)
    run.start()
    try:
        child = run.wait_paused()
        assert changing_requests(sandbox, "alfred") == []  # paused on the plan: nothing went out
        from tests.helpers import artifacts_of

        keys = {a.key for a in artifacts_of(child.id)}
        assert {"invoice-sync-plan", "invoice-sync-plan-rows"} <= keys
        resume(child, approver="j.doe", decision="approve", reason="checked against the PO list")
        parent = run.wait_final()
    finally:
        run.stop()
    assert parent.state.is_completed(), parent.state.message
    for row in rows:
        assert sandbox.changes("alfred", row["invoice_id"]) == 1
    assert len(list((tmp_path / "processed").glob("month-end-*.csv"))) == 1
    plan = next((tmp_path / "results").glob("*/plan.csv"))
    assert sorted(pd.read_csv(plan)["decision"]) == ["approve", "approve", "cancel"]
    approvals = audit_rows(state_dir, audit.approvals_table)
    assert approvals[["outcome", "approver"]].values.tolist() == [["approved", "j.doe"]]
    (register,) = audit_rows(state_dir, audit.runs_table).to_dict("records")
    assert register["submitted_by"] == "a.clerk" and register["deployment"].startswith("four-eyes-test")
    assert register["approval_policy"] == "all (from 1 rows)"
    assert main(["audit", "verify"]) == 0


def test_a_rejected_run_sends_nothing_and_the_file_goes_to_rejected(
    deployment_id, sandbox, tmp_path, approval_env, state_dir
):
    run = InboxRun(deployment_id, tmp_path, approval_env)
    drop_file(sandbox, run)
    run.start()
    try:
        resume(run.wait_paused(), approver="j.doe", decision="reject", reason="the cancel is not agreed")
        parent = run.wait_final()
    finally:
        run.stop()
    assert parent.state.name == "FilesRejected", parent.state.message
    assert "nothing sent: rejected by j.doe: the cancel is not agreed" in parent.state.message
    assert changing_requests(sandbox, "alfred") == []
    (reason,) = (tmp_path / "rejected").glob("*.reason.txt")
    assert "not approved (Rejected)" in reason.read_text() and "the cancel is not agreed" in reason.read_text()
    assert audit_rows(state_dir, audit.attempts_table).empty
    ends = audit_rows(state_dir, audit.ends_table)
    assert ends["state"].tolist() == ["Rejected"]


def test_the_submitter_or_a_decider_cannot_approve_their_own(deployment_id, sandbox, tmp_path, approval_env, state_dir):
    run = InboxRun(deployment_id, tmp_path, approval_env, submitted_by="a.clerk")
    rows = drop_file(sandbox, run, decided_by="m.ortiz")
    run.start()
    try:
        resume(run.wait_paused(0), approver=" A.Clerk ", decision="approve")  # the submitter
        resume(run.wait_paused(1), approver="m.ortiz", decision="approve")  # made the decisions
        assert changing_requests(sandbox, "alfred") == []  # still waiting: nothing sent
        resume(run.wait_paused(2), approver="j.doe", decision="approve")
        parent = run.wait_final()
    finally:
        run.stop()
    assert parent.state.is_completed(), parent.state.message
    assert all(sandbox.changes("alfred", r["invoice_id"]) == 1 for r in rows)
    approvals = audit_rows(state_dir, audit.approvals_table)
    assert approvals[["outcome", "approver"]].values.tolist() == [
        ["refused", "A.Clerk"],
        ["refused", "m.ortiz"],
        ["approved", "j.doe"],
    ]
    assert "submitted this run" in approvals["reason"][0] and "decided_by" in approvals["reason"][1]


def test_no_approval_in_time_sends_nothing(deployment_id, sandbox, tmp_path, approval_env, state_dir):
    run = InboxRun(deployment_id, tmp_path, {**approval_env, "INVOICE_SYNC_APPROVAL_TIMEOUT": "3"})
    drop_file(sandbox, run)
    run.start()
    try:
        parent = run.wait_final()
    finally:
        run.stop()
    assert parent.state.name == "FilesRejected" and "no one approved within" in parent.state.message
    assert changing_requests(sandbox, "alfred") == []
    assert "not approved (ApprovalTimedOut)" in next((tmp_path / "rejected").glob("*.reason.txt")).read_text()
    assert audit_rows(state_dir, audit.approvals_table)["outcome"].tolist() == ["timed_out"]


def test_a_command_line_run_under_the_policy_refuses_to_send(sandbox, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INVOICE_SYNC_APPROVAL", "cancels")
    monkeypatch.setenv("INVOICE_SYNC_APPROVAL_MIN_ROWS", "1")
    rows = seed_approvals(sandbox, "alfred", range(2))
    path = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert main(["run", str(path), "--out", str(tmp_path / "a"), "--no-progress"]) == 0  # no cancel: no approval
    capsys.readouterr()
    rows[1]["decision"] = "cancel"
    rows.append({**seed_approvals(sandbox, "alfred", [7])[0]})
    pd.DataFrame(rows).to_csv(path, index=False)
    assert main(["run", str(path), "--out", str(tmp_path / "b"), "--no-progress"]) == EXIT_UNUSABLE
    err = capsys.readouterr().err
    assert "requires a second person to approve" in err and "through the deployment" in err and "--dry-run" in err
    assert sandbox.changes("alfred", rows[2]["invoice_id"]) == 0
    assert main(["run", str(path), "--out", str(tmp_path / "c"), "--no-progress", "--dry-run"]) in (0, 1)
    assert sandbox.changes("alfred", rows[2]["invoice_id"]) == 0
