"""Cancel through the Prefect API: a deployment run on a real local server and a process worker
stops as Ctrl-C does (no new request, results written) and ends `Cancelled` with its counts.

The server, the pool and `prefect deploy --all` are test_scale_out's fixtures (a server of
this module's own); the worker sends SIGTERM to the flow-run process when the run is cancelled.
"""

from __future__ import annotations

import shutil
import time
import uuid

import pandas as pd
import pytest

from connectors.vocabulary import ErrorCode
from sandbox import Sandbox
from tests.helpers import seed_approvals
from tests.test_scale_out import POOL, deployed, server, stop, wait_final  # noqa: F401 - fixtures, used by name

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROWS = 200  # alfred rows: 20 s at 10/s, cancelled after 30 requests
CONCURRENCY = 4


def _flow_runs(prefect, flow_name: str) -> list:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with prefect.client() as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))


def test_cancelling_a_deployment_run_through_the_api_stops_it_cleanly(server, deployed, tmp_path):  # noqa: F811
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    from flows.orchestration.secrets import push_secrets

    inbox = tmp_path / "data" / "inbox"
    inbox.mkdir(parents=True)
    worker = None
    with Sandbox() as sandbox:
        decisions = seed_approvals(sandbox, "alfred", range(ROWS))
        path = inbox / "month-end.csv"
        pd.DataFrame(decisions).to_csv(path, index=False)
        push_secrets(None, sandbox.env())
        job_env = {
            "INVOICE_SYNC_STATE_DIR": str(tmp_path / "state"),
            "INVOICE_SYNC_RATE_DIR": str(tmp_path / "rates"),
            "ALFRED_RATE_LIMIT": "10",
            "ALFRED_MAX_CONCURRENCY": str(CONCURRENCY),
        }
        parameters = {"inbox": str(inbox), "settle_seconds": 0}
        try:
            worker = server.start_worker(f"cancel-worker-{uuid.uuid4().hex[:6]}", POOL)

            def start_run(name: str):
                return run_deployment(
                    "process-inbox/decision-file-drop",
                    parameters=parameters,
                    job_variables={"env": job_env},
                    timeout=0,
                    flow_run_name=name,
                )

            run = start_run("cancel-me")
            deadline = time.monotonic() + 300
            while len(sandbox.request_log("alfred")) < 30:  # it is sending: cancel it now
                assert time.monotonic() < deadline, server.tail("server")
                time.sleep(0.1)
            with server.client() as client:
                client.set_flow_run_state(run.id, Cancelling(message="cancelled by the test"))
            cancelled_at = time.monotonic()
            (final,) = wait_final(server, [run.id], timeout=120)
            took = time.monotonic() - cancelled_at
            acknowledged_at_end = {d["invoice_id"] for d in decisions if sandbox.changes("alfred", d["invoice_id"])}
            sent_at_end = len(sandbox.request_log("alfred"))

            assert final.state.type.value == "CANCELLED", (final.state, [p.read_text()[-3000:] for p in server.logs])
            assert took < 45  # the worker's grace is 30 s; the run stops in a few
            with server.client() as client:
                history = [(st.type.value, st.message) for st in client.read_flow_run_states(run.id)]
            print("cancel took", round(took, 1), "s; parent states:", history)
            # The flow's own Cancelled state names each file and its counts (Prefect's runner writes one
            # more Cancelled, with its own message, once the process has exited: see docs/operations.md).
            assert any(t == "CANCELLED" and "stopped by SIGTERM" in (m or "") and "not sent" in m for t, m in history)
            (sync_run,) = [r for r in _flow_runs(server, "invoice-sync") if r.parent_task_run_id is not None]
            assert sync_run.state.type.value == "CANCELLED"
            assert "stopped by SIGTERM" in sync_run.state.message and "not sent" in sync_run.state.message

            # the results were written: one per row; reported successes acknowledged; the rest INTERRUPTED
            (results_file,) = (tmp_path / "data" / "results").rglob("results.parquet")
            results = pd.read_parquet(results_file)
            assert len(results) == ROWS
            succeeded = set(results.loc[results["outcome"] == "succeeded", "invoice_id"])
            assert succeeded <= acknowledged_at_end
            assert len(acknowledged_at_end - succeeded) <= CONCURRENCY
            assert set(results.loc[results["outcome"] == "failed", "error_code"]) == {ErrorCode.INTERRUPTED.value}
            assert sent_at_end < ROWS  # it stopped sending
            (rejected,) = (tmp_path / "data" / "rejected").glob("month-end*.csv")  # for a person to drop in again

            # dropped in again: the next run sends the rest, nothing twice
            shutil.move(str(rejected), inbox / "month-end.csv")
            again = start_run("after-cancel")
            (done,) = wait_final(server, [again.id], timeout=300)
            assert done.state.type.value == "COMPLETED", done.state
            for d in decisions:
                assert sandbox.changes("alfred", d["invoice_id"]) == 1
            with server.client() as client:  # long after the cancelled process exited
                print(
                    "parent states, later:",
                    [(st.type.value, st.message) for st in client.read_flow_run_states(run.id)][-2:],
                )
                assert client.read_flow_run(run.id).state.type.value == "CANCELLED"
        finally:
            if worker is not None:
                stop(worker)
