"""Alerts, the Prefect way: one notification block and the automations that use it.

`install(AlertSpec(...))` creates or updates, by name, on the server at PREFECT_API_URL:

- the notification block `invoice-sync-alerts` (Slack, Microsoft Teams or a generic webhook;
  the URL is kept in the block's secret field and never read back);
- `invoice-sync: run did not finish`: a run of `invoice-sync`, `process-inbox` or `retry-failed`
  ended in a failed state other than `RowsNotDone` (`UnusableFile`, `FilesRejected`, ...: Prefect
  names each state event after its state). Subflows of the inbox and of retries are left to the
  run that started them, which names the file and why, so one problem sends one message;
- `invoice-sync: rows not done`: the run-finished event (`flows.orchestration.events`) says so
  (`invoice-sync.notify`): a vendor's share of rows not done passed `failed_share`. `RowsNotDone`
  runs alert through it, since only the event carries the counts the threshold needs;
- `invoice-sync: month end past its deadline` (with a deadline): a run of `month-end-approvals`
  not final within `deadline` of the first sign of it (Late, Pending or Running).

and saves `failed_share` as the Prefect Variable the flow reads when it labels its event, so the
threshold given here is the one that decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flows.orchestration.events import FAILED_SHARE_VARIABLE, LABEL_NOTIFY, RUN_FINISHED, RUN_RESOURCE_PREFIX

BLOCK_NAME = "invoice-sync-alerts"
CHANNEL_BLOCK_TYPES = {"slack": "slack-webhook", "teams": "ms-teams-webhook", "webhook": "custom-webhook"}
FLOWS = ("invoice-sync", "process-inbox", "retry-failed")
MONTH_END_DEPLOYMENT = "month-end-approvals"
# States a run of these flows ends in when it did not finish its work (sync.py, inbox.py, Prefect's own).
FAILED_STATES = (
    "UnusableFile",
    "FilesRejected",
    "ValidationUnavailable",
    "BadParameters",
    "ApprovalRequired",  # four eyes (approval.py): a run the policy holds, refused or not approved in time
    "Rejected",
    "ApprovalTimedOut",
    "Failed",
    "Crashed",
    "Cancelled",
    "TimedOut",
)
FINAL_STATES = ("Completed", "RowsNotDone", *FAILED_STATES)
DEADLINE_STARTS = ("Late", "Pending", "Running")
# The inbox and the retry rounds name their `invoice-sync` subflows so; the run above them alerts.
SUBFLOW_RUN_NAMES = "invoice-sync *"
STATE_AUTOMATION = "invoice-sync: run did not finish"
ROWS_AUTOMATION = "invoice-sync: rows not done"
DEADLINE_AUTOMATION = "invoice-sync: month end past its deadline"
AUTOMATIONS = (STATE_AUTOMATION, ROWS_AUTOMATION, DEADLINE_AUTOMATION)


@dataclass(frozen=True)
class AlertSpec:
    """Where alerts go and when: everything `alerts install` takes."""

    channel: str  # slack | teams | webhook
    url: str
    failed_share: float = 0.0
    deadline: timedelta | None = None

    def __post_init__(self) -> None:
        if self.channel not in CHANNEL_BLOCK_TYPES:
            raise ValueError(f"unknown alert channel {self.channel!r}: use one of {', '.join(CHANNEL_BLOCK_TYPES)}")
        if not self.url.startswith(("https://", "http://")):
            raise ValueError("the alert URL must be an http(s) URL")
        if not 0.0 <= self.failed_share < 1.0:
            raise ValueError("the failed share is a fraction: at least 0, below 1 (0.02 = 2%)")
        if self.deadline is not None and self.deadline < timedelta(seconds=10):
            raise ValueError("the deadline must be at least 10 seconds (Prefect's least for a proactive trigger)")


def parse_duration(text: str) -> timedelta:
    """`3h`, `90m`, `45s`, `1h30m` -> a timedelta."""
    parts = re.fullmatch(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*", text.lower())
    if not parts or not any(parts.groups()):
        raise ValueError(f"not a duration: {text!r} (e.g. 3h, 90m, 1h30m)")
    hours, minutes, seconds = (int(g or 0) for g in parts.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def notification_block(spec: AlertSpec) -> Any:
    """The block for the channel; the URL in its secret field."""
    from prefect.blocks.notifications import (
        CustomWebhookNotificationBlock,
        MicrosoftTeamsWebhook,
        SlackWebhook,
    )

    if spec.channel == "slack":
        return SlackWebhook(url=spec.url)  # type: ignore[arg-type]
    if spec.channel == "teams":
        return MicrosoftTeamsWebhook(url=spec.url)  # type: ignore[arg-type]
    # A plain webhook's `url` field is text: the URL itself is one of the block's secret values.
    return CustomWebhookNotificationBlock(
        name=BLOCK_NAME,
        url="{{alert_url}}",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        headers=None,
        cookies=None,
        secrets={"alert_url": spec.url},  # type: ignore[arg-type]
    )


STATE_BODY = """\
{{ flow_run.name }} ({{ flow.name }}{% if deployment.name %}, deployment {{ deployment.name }}{% endif %}) \
ended {{ flow_run.state.name }}.
{{ flow_run.state.message }}
run: {{ flow_run|ui_url }}"""
ROWS_BODY = """\
{{ event.payload.text }}
run: {{ flow_run|ui_url }}"""
DEADLINE_BODY = """\
{{ flow_run.name }} (deployment {{ deployment.name }}) is not finished {{ automation.trigger.within }} after it \
was due: it is {{ flow_run.state.name }}{% if flow_run.state.message %} ({{ flow_run.state.message }}){% endif %}.
run: {{ flow_run|ui_url }}"""


def automations(spec: AlertSpec, block_id: Any) -> list[Any]:
    """The automations for `spec`, notifying through the block `block_id`."""
    from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification

    project_flows = {"prefect.resource.role": "flow", "prefect.resource.name": list(FLOWS)}
    found = [
        AutomationCore(
            name=STATE_AUTOMATION,
            description="A run of invoice-sync ended without finishing its work (not RowsNotDone: see rows not done).",
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*", "prefect.resource.name": f"!{SUBFLOW_RUN_NAMES}"},
                match_related=project_flows,  # type: ignore[arg-type]
                expect={f"prefect.flow-run.{state}" for state in FAILED_STATES},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[
                SendNotification(
                    block_document_id=block_id,
                    subject="invoice-sync: {{ flow_run.name }} ended {{ flow_run.state.name }}",
                    body=STATE_BODY,
                )
            ],
        ),
        AutomationCore(
            name=ROWS_AUTOMATION,
            description=f"A vendor's share of rows failed or rejected passed {spec.failed_share:g}.",
            trigger=EventTrigger(
                match={"prefect.resource.id": f"{RUN_RESOURCE_PREFIX}*", LABEL_NOTIFY: "true"},
                expect={RUN_FINISHED},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[
                SendNotification(block_document_id=block_id, subject="{{ event.payload.subject }}", body=ROWS_BODY)
            ],
        ),
    ]
    if spec.deadline is not None:
        found.append(
            AutomationCore(
                name=DEADLINE_AUTOMATION,
                description=f"A month-end run not finished within {spec.deadline} of being due.",
                trigger=EventTrigger(
                    match={"prefect.resource.id": "prefect.flow-run.*"},
                    match_related={
                        "prefect.resource.role": "deployment",
                        "prefect.resource.name": MONTH_END_DEPLOYMENT,
                    },
                    after={f"prefect.flow-run.{state}" for state in DEADLINE_STARTS},
                    expect={f"prefect.flow-run.{state}" for state in FINAL_STATES},
                    for_each={"prefect.resource.id"},
                    posture=Posture.Proactive,
                    threshold=1,
                    within=spec.deadline,
                ),
                actions=[
                    SendNotification(
                        block_document_id=block_id,
                        subject="invoice-sync: month end not finished: {{ flow_run.name }}",
                        body=DEADLINE_BODY,
                    )
                ],
            )
        )
    return found


@dataclass(frozen=True)
class InstalledAlert:
    """One automation of ours on the server, as `alerts list` shows it."""

    name: str
    enabled: bool
    trigger: str


def install(spec: AlertSpec) -> list[str]:
    """Create or update the block, the automations and the threshold; returns what was written."""
    from prefect.client.orchestration import get_client
    from prefect.variables import Variable

    block_id = notification_block(spec).save(BLOCK_NAME, overwrite=True)
    written = [f"notification block {BLOCK_NAME} ({spec.channel})"]
    with get_client(sync_client=True) as client:
        for channel, block_type in CHANNEL_BLOCK_TYPES.items():  # one channel at a time: drop the others
            if channel != spec.channel:
                _delete_block(client, block_type)
        wanted = automations(spec, block_id)
        for automation in wanted:
            existing = client.read_automations_by_name(automation.name)
            if existing:
                client.update_automation(existing[0].id, automation)
                for extra in existing[1:]:  # an earlier race left two: keep one
                    client.delete_automation(extra.id)
            else:
                client.create_automation(automation)
            written.append(f"automation {automation.name!r}")
        if spec.deadline is None:
            for stale in client.read_automations_by_name(DEADLINE_AUTOMATION):
                client.delete_automation(stale.id)
    Variable.set(FAILED_SHARE_VARIABLE, str(spec.failed_share), overwrite=True)
    written.append(f"variable {FAILED_SHARE_VARIABLE} = {spec.failed_share:g}")
    return written


def installed() -> tuple[list[InstalledAlert], str | None]:
    """Our automations on the server, and the channel of the block (never its URL)."""
    from prefect.client.orchestration import get_client

    found: list[InstalledAlert] = []
    channel = None
    with get_client(sync_client=True) as client:
        for name in AUTOMATIONS:
            for automation in client.read_automations_by_name(name):
                found.append(InstalledAlert(automation.name, automation.enabled, _describe(automation.trigger)))
        for kind, block_type in CHANNEL_BLOCK_TYPES.items():
            if _read_block(client, block_type) is not None:
                channel = kind
    return found, channel


def remove() -> list[str]:
    """Delete the automations, the block and the threshold; returns what was deleted."""
    from prefect.client.orchestration import get_client
    from prefect.variables import Variable

    removed: list[str] = []
    with get_client(sync_client=True) as client:
        for name in AUTOMATIONS:
            for automation in client.read_automations_by_name(name):
                client.delete_automation(automation.id)
                removed.append(f"automation {name!r}")
        for block_type in CHANNEL_BLOCK_TYPES.values():
            if _delete_block(client, block_type):
                removed.append(f"notification block {BLOCK_NAME}")
    if Variable.unset(FAILED_SHARE_VARIABLE):
        removed.append(f"variable {FAILED_SHARE_VARIABLE}")
    return removed


def _read_block(client: Any, block_type: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_block_document_by_name(BLOCK_NAME, block_type, include_secrets=False)
    except ObjectNotFound:
        return None


def _delete_block(client: Any, block_type: str) -> bool:
    document = _read_block(client, block_type)
    if document is None:
        return False
    client.delete_block_document(document.id)
    return True


def _describe(trigger: Any) -> str:
    """A trigger in one line: what it waits for."""
    expect = sorted(getattr(trigger, "expect", ()) or ())
    states = [e.rsplit(".", 1)[-1] for e in expect]
    if getattr(trigger, "posture", None) == "Proactive" or str(getattr(trigger, "posture", "")).endswith("Proactive"):
        return f"not final within {trigger.within}"
    if expect == [RUN_FINISHED]:
        return "a vendor's share of rows not done passed the threshold"
    return "ended " + ", ".join(states)
