"""Plant known credentials, run through every kind of failure, scan every output for them."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from connectors.redact import RedactingFilter, redact, register_secret
from flows.cli.main import main
from sandbox import Sandbox

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_server")]


def test_redact_masks_registered_secrets_and_url_tokens():
    register_secret("planted-secret-4242")
    assert redact("key planted-secret-4242 leaked") == "key *** leaked"
    assert (
        redact("PATCH https://x/api/inv/v1/Invoice?token=abc123&y=1")
        == "PATCH https://x/api/inv/v1/Invoice?token=***&y=1"
    )
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "url %s", ("https://h/?token=zzz999",), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "url https://h/?token=***"


FINISHED = "Finished in state "  # the last line Prefect's engine logs for every flow run and task run


async def _all_logs(client, flow_run_ids: list[str]) -> list:
    """Every log stored for these runs, page by page (no cap on how many are scanned)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs: list = []
    while True:
        page = await client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)), limit=200, offset=len(logs)
        )
        logs += page
        if len(page) < 200:
            return logs


async def _flow_run_texts(flow_run_ids: list[str], timeout: float = 60.0) -> list[str]:
    """Everything Prefect kept about these runs: logs, artifacts, states, parameters.

    Logs reach the API in the background: this waits (up to `timeout`) until the closing
    "Finished in state" line of every flow run and of every one of its task runs is stored,
    the last thing each of them logs, and only then reads them all.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()
    texts: list[str] = []
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)))
        task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)))
        assert len(runs) == len(flow_run_ids) and task_runs, "expected the runs and their task runs in the API"
        expected = {(str(r.id), None) for r in runs} | {(str(t.flow_run_id), str(t.id)) for t in task_runs}
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            logs = await _all_logs(client, flow_run_ids)
            finished = {
                (str(log.flow_run_id), log.task_run_id and str(log.task_run_id))
                for log in logs
                if log.message.startswith(FINISHED)
            }
            if expected <= finished:
                break
            assert asyncio.get_running_loop().time() < deadline, (
                f"after {timeout} s, {len(expected - finished)} of {len(expected)} runs' closing log lines are not stored"
            )
            await asyncio.sleep(0.2)
        texts += [log.message for log in logs]
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids))
        )
        texts += [str(a.data) + str(a.description) for a in artifacts]
        texts += [f"{r.parameters} {r.state.message if r.state else ''}" for r in runs]
        assert logs and artifacts, "expected the runs to have logged and published something"
    return texts


def test_no_credential_or_token_appears_anywhere(sandbox, tmp_path, capfd, state_dir, monkeypatch):
    rows = []
    for i in range(8):
        sandbox.seed("alfred", f"A{i}")
        sandbox.seed("modulus", str(100 + i), invoice_number=f"N{i}")
        sandbox.seed("appzen", f"00000000-0000-4000-8000-{i:012x}")
        sandbox.seed("accounteer", f"{i:040x}")
        rows += [
            {"invoice_id": f"A{i}", "vendor": "alfred", "decision": "approve"},
            {"invoice_id": str(100 + i), "vendor": "modulus", "decision": "approve", "invoice_number": f"N{i}"},
            {
                "invoice_id": f"00000000-0000-4000-8000-{i:012x}",
                "vendor": "appzen",
                "decision": "approve",
                "invoice_number": f"E{i}",
            },
            {"invoice_id": f"{i:040x}", "vendor": "accounteer", "decision": "approve"},
        ]
    rows.append({"invoice_id": "A-missing", "vendor": "alfred", "decision": "approve"})
    path = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    # every kind of trouble that produces messages: retries, drops, token expiry, bad bodies
    sandbox.inject("modulus", "expire_token", times=1)
    sandbox.inject("modulus", "drop_before", times=1)
    sandbox.inject("modulus", "500", times=1)
    sandbox.inject("alfred", "429", times=1, retry_after=0.1)
    sandbox.inject("alfred", "bad_body", times=1)
    sandbox.inject("appzen", "drop_after", times=1)
    sandbox.inject("accounteer", "slow", times=1, delay=3)
    monkeypatch.setenv("ACCOUNTEER_TIMEOUT", "2")  # the 3 s slow answer times out: a timeout message too
    sandbox.inject("accounteer", "expire_token", times=1)  # its access token refused mid-run: renewed
    monkeypatch.setenv("APPZEN_CUSTOMER_KEY", "planted-wrong-customer-key-8181")  # refused: AUTH_FAILED messages
    # Accounteer through the OAuth refresh grant: access and rotated refresh tokens to leak, too.
    monkeypatch.delenv("ACCOUNTEER_ACCESS_TOKEN")
    for name, value in sandbox.env(refresh_grant=True).items():
        monkeypatch.setenv(name, value)

    # A handler of the user's own, at DEBUG: urllib3 logs every request line, modulus' ?token= included,
    # so the scan below has URL tokens to check (the run's own outputs carry none).
    wire_log = tmp_path / "urllib3-debug.log"
    wire_handler = logging.FileHandler(wire_log, encoding="utf-8")
    urllib3_logger = logging.getLogger("urllib3")
    old_level = urllib3_logger.level
    urllib3_logger.setLevel(logging.DEBUG)
    urllib3_logger.addHandler(wire_handler)
    try:
        code = main(["-v", "run", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    finally:
        urllib3_logger.removeHandler(wire_handler)
        urllib3_logger.setLevel(old_level)
        wire_handler.close()
    fd = capfd.readouterr()  # file-descriptor level: Prefect's console handler included
    assert code == 1
    results = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert (results.loc[results["vendor"] == "appzen", "error_code"] == "AUTH_FAILED").all()

    assert (results.loc[results["vendor"] == "accounteer", "outcome"] == "succeeded").all()
    secrets = [v for k, v in sandbox.env(refresh_grant=True).items() if not k.endswith("_URL")]
    secrets += [*Sandbox.CREDENTIALS.values(), "planted-wrong-customer-key-8181", *sandbox.issued_tokens()]
    issued = sandbox.issued_tokens()
    assert len([t for t in issued if t.startswith("sandbox-accounteer-refresh-")]) >= 2  # rotated at every grant
    assert len(issued) >= 6  # modulus and Accounteer tokens really were renewed mid-run
    texts = [fd.out, fd.err, wire_log.read_text(encoding="utf-8")]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in (tmp_path / "out").iterdir()]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in Path(state_dir).rglob("*") if p.is_file()]
    run_texts = asyncio.run(_flow_run_texts(results["run_id"].unique().tolist()))
    # The rotated refresh token came from the environment: the log says once that it must be updated.
    assert len([t for t in run_texts if "ACCOUNTEER_REFRESH_TOKEN during this run" in t]) == 1
    texts += run_texts
    everything = "\n".join(texts)
    leaked = [s for s in secrets if s in everything]
    assert not leaked, f"credentials found in outputs: {len(leaked)}"
    # Every token= anywhere is masked: one masked occurrence must not hide another that leaked.
    occurrences = [m.start() for m in re.finditer("token=", everything)]
    assert len(occurrences) >= 8, "expected modulus' request lines (token= in the URL) in the debug log"
    unmasked = [everything[max(0, i - 60) : i + 6] for i in occurrences if not everything.startswith("token=***", i)]
    assert not unmasked, f"{len(unmasked)} of {len(occurrences)} token= not masked, e.g. after {unmasked[0]!r}"
