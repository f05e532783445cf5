"""prefect.yaml: it parses, its deployments fit the flow, the schedules mean what they say.

`prefect deploy --all` against a real local Prefect server, workers and the UI are in
tests/test_scale_out.py.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO_ROOT / "prefect.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))


def deployment(config: dict, name: str) -> dict:
    (found,) = [d for d in config["deployments"] if d["name"] == name]
    return found


def rendered(value, env: dict[str, str]):
    """The value as `prefect deploy` sees it with `env` (its `{{ $VAR }}` placeholders filled)."""
    import os
    from unittest import mock

    from prefect.utilities.templating import apply_values

    with mock.patch.dict(os.environ, env):
        return apply_values(value, dict(os.environ), remove_notset=False)


def test_prefect_yaml_is_a_valid_project_file(config):
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(config)
    assert {d.name for d in model.deployments} == {"month-end-approvals", "decision-file-drop", "retry-failed"}
    from importlib.metadata import version

    assert config["prefect-version"] == version("prefect")  # the Prefect this project runs with


@pytest.mark.parametrize("name", ["month-end-approvals", "decision-file-drop"])
def test_each_deployment_runs_the_inbox_flow_with_parameters_it_accepts(config, name):
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    spec = deployment(config, name)
    flow = load_flow_from_entrypoint(str(REPO_ROOT / spec["entrypoint"]))
    assert flow.name == "process-inbox"
    schema = parameter_schema(flow)
    assert set(spec["parameters"]) <= set(schema.properties)  # every parameter is the flow's
    assert {"inbox", "dry_run", "vendors", "chunk_size", "sheet"} <= set(spec["parameters"])  # editable in the UI
    flow.validate_parameters(spec["parameters"])
    assert rendered(spec["work_pool"]["name"], {"INVOICE_SYNC_POOL": "pool-x"}) == "pool-x"


def test_no_credentials_in_prefect_yaml():
    from connectors.registry import CONNECTORS
    from sandbox import Sandbox

    text = PREFECT_YAML.read_text(encoding="utf-8")
    for vendor, connector in CONNECTORS.items():
        for credential in connector.credential_names:
            assert f"{vendor.upper()}_{credential}" not in text
    assert not any(value in text for value in Sandbox.CREDENTIALS.values())
    assert not re.search(r"(?i)(api[_-]?key|secret|token|password)\s*:", text)


def month_end_dates(schedule_spec: dict, timezone: str, start: datetime, n: int) -> list[datetime]:
    """The next `n` run times of the schedule, computed by Prefect's server-side schedule model."""
    from prefect.server.schemas.schedules import CronSchedule

    schedule = CronSchedule(cron=schedule_spec["cron"], timezone=timezone)
    return asyncio.run(schedule.get_dates(n=n, start=start))


def test_month_end_runs_at_18_on_the_last_day_of_every_month_in_the_chosen_zone(config):
    spec = deployment(config, "month-end-approvals")
    (schedule,) = spec["schedules"]
    assert rendered(schedule["timezone"], {"INVOICE_SYNC_TIMEZONE": "Europe/Amsterdam"}) == "Europe/Amsterdam"
    zone = ZoneInfo("America/New_York")
    dates = month_end_dates(schedule, "America/New_York", datetime(2027, 12, 15, tzinfo=zone), 14)
    local = [d.astimezone(zone) for d in dates]
    assert [(d.month, d.day) for d in local][:4] == [(12, 31), (1, 31), (2, 29), (3, 31)]  # 2028 is a leap year
    for d in local:
        assert (d.hour, d.minute) == (18, 0)
        assert (d + timedelta(days=1)).month != d.month  # the last day, whatever the month's length
    # DST: 18:00 local both in winter (UTC-5) and in summer (UTC-4)
    assert {d.utcoffset() for d in local} == {timedelta(hours=-5), timedelta(hours=-4)}


def test_month_end_schedule_agrees_with_the_rrule_form(config):
    """`0 18 L * *` and RRULE BYMONTHDAY=-1;BYHOUR=18 are the same schedule."""
    from prefect.server.schemas.schedules import RRuleSchedule

    (schedule,) = deployment(config, "month-end-approvals")["schedules"]
    start = datetime(2026, 1, 1, tzinfo=ZoneInfo("UTC"))
    rrule = RRuleSchedule(
        rrule="FREQ=MONTHLY;BYMONTHDAY=-1;BYHOUR=18;BYMINUTE=0;BYSECOND=0", timezone="Europe/Amsterdam"
    )
    expected = asyncio.run(rrule.get_dates(n=24, start=start))
    assert month_end_dates(schedule, "Europe/Amsterdam", start, 24) == expected


def test_file_drop_polls_every_minute_without_piling_up(config):
    spec = deployment(config, "decision-file-drop")
    (schedule,) = spec["schedules"]
    assert schedule["interval"] == 60 and schedule.get("active", True)
    assert spec["parameters"]["inbox"] == "data/inbox"
    assert spec["concurrency_limit"] == {"limit": 2, "collision_strategy": "CANCEL_NEW"}
    assert deployment(config, "month-end-approvals")["parameters"]["inbox"] != spec["parameters"]["inbox"]


def test_retry_failed_runs_three_rounds_with_growing_delays_on_transient_failures_only(config):
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint

    from flows.orchestration.events import LABEL_RETRY_ROUND, LABEL_TRANSIENT_LEFT, RUN_FINISHED

    spec = deployment(config, "retry-failed")
    flow = load_flow_from_entrypoint(str(REPO_ROOT / spec["entrypoint"]))
    assert flow.name == "retry-failed"
    triggers = [DeploymentEventTrigger.model_validate(t) for t in spec["triggers"]]
    assert [t.schedule_after for t in triggers] == [timedelta(minutes=15), timedelta(hours=1), timedelta(hours=4)]
    for round_, trigger in enumerate(triggers, start=1):
        assert trigger.expect == {RUN_FINISHED}
        assert trigger.match[LABEL_TRANSIENT_LEFT] == ["true"]
        assert trigger.match[LABEL_RETRY_ROUND] == [str(round_ - 1)]  # round k follows round k-1
        assert trigger.parameters["round"] == round_ and trigger.parameters["rounds"] == len(triggers)
        assert trigger.parameters["run_id"] == "{{ event.payload.flow_run_id }}"
        flow.validate_parameters({**trigger.parameters, "run_id": "r", "results_dir": "d"})


def test_make_targets_for_the_prefect_way():
    out = subprocess.run(
        ["make", "-n", "server", "pool", "deploy", "worker"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "prefect server start --host 127.0.0.1" in out
    assert "work-pool create invoice-sync --type process" in out
    assert "deploy --all" in out
    assert "worker start --pool invoice-sync --type process" in out
