"""Four eyes before money moves: a deployment run waits for a second person to approve its plan.

`INVOICE_SYNC_APPROVAL` = `off` (default) | `cancels` (runs that would void invoices) | `all`
(every run that would send), applying once the rows to send reach `INVOICE_SYNC_APPROVAL_MIN_ROWS`
(default 1). When it applies, a deployment run validates and plans, publishes the plan as
artifacts (counts per vendor and decision; the rows that would be sent, and all of them in
`plan.csv` beside the results), then pauses with `pause_flow_run(wait_for_input=ApprovalInput)`
until a person approves or rejects in the Prefect UI, entering their name.

`pause_flow_run`, not `suspend_flow_run`: the flow that sends is a subflow of `process-inbox`, and
Prefect refuses to suspend subflows; a suspended run also starts again from the top when resumed
(reading, claiming the inbox file again), where a paused one goes on from the plan it showed. The
cost is that the worker's subprocess for the run waits (the worker itself takes other runs).

An approver whose name is one of the file's `decided_by` values, the submitter, or the file's
owner is refused, and the run pauses again for someone else. Prefect's open-source server has no
user accounts: the name is what the approver typed, so this control keeps honest people apart
and records who said they approved; it does not authenticate anyone. Where that matters, put
the Prefect UI behind an authenticating proxy (and use Prefect Cloud's accounts, where a resume
is attributed to a signed-in user).

A rejection or a timeout (`INVOICE_SYNC_APPROVAL_TIMEOUT`, default 24 h) sends nothing; the
run ends `Rejected` or `ApprovalTimedOut`, and the inbox moves the file to rejected/ with the
reason. A command-line run where the policy applies sends nothing either (`ApprovalRequired`):
it is run through the deployment, or as a dry run.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import numpy as np
import pandas as pd
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.states import State
from pydantic import Field

from flows.orchestration.audit_trail import RunTrail
from flows.orchestration.final_states import failed
from flows.pipeline.files import atomic_write
from flows.pipeline.planning import Plan
from flows.state.audit import ApprovalOutcome

APPROVAL_REQUIRED = "ApprovalRequired"
REJECTED = "Rejected"
APPROVAL_TIMED_OUT = "ApprovalTimedOut"
NOT_APPROVED_STATES = (REJECTED, APPROVAL_TIMED_OUT)
PLAN_FILE = "plan.csv"
PLAN_ROWS_SHOWN = 1000  # rows in the plan's table artifact; all of them are in plan.csv
PLAN_COLUMNS = ("row_number", "vendor", "invoice_id", "decision", "invoice_number", "void_date", "decided_by")
DEFAULT_TIMEOUT = 24 * 3600
POLL_SECONDS = 5  # how often the paused run asks the API whether it was resumed
PAUSE_GRACE = 600  # seconds the server's pause outlives the run's deadline (the run resumes itself at it)
UNANSWERED = "(no answer before the deadline)"


class ApprovalPolicy(enum.StrEnum):
    OFF = "off"
    CANCELS = "cancels"
    ALL = "all"


@dataclass(frozen=True)
class ApprovalSettings:
    policy: ApprovalPolicy = ApprovalPolicy.OFF
    min_rows: int = 1
    timeout: int = DEFAULT_TIMEOUT  # seconds a run waits for a decision
    poll: int = POLL_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApprovalSettings:
        env = os.environ if environ is None else environ
        raw = env.get("INVOICE_SYNC_APPROVAL", "").strip().lower() or ApprovalPolicy.OFF.value
        try:
            policy = ApprovalPolicy(raw)
        except ValueError:
            # A typo must not switch the control off: the strictest reading applies.
            policy = ApprovalPolicy.ALL
        return cls(
            policy,
            max(1, _integer(env, "INVOICE_SYNC_APPROVAL_MIN_ROWS", 1)),
            max(1, _integer(env, "INVOICE_SYNC_APPROVAL_TIMEOUT", DEFAULT_TIMEOUT)),
            max(1, _integer(env, "INVOICE_SYNC_APPROVAL_POLL", POLL_SECONDS)),
        )

    def applies(self, counts: Mapping[str, Mapping[str, int]]) -> bool:
        """Whether a plan with these counts (vendor -> decision -> rows to send) needs approval."""
        if self.policy is ApprovalPolicy.OFF:
            return False
        if self.policy is ApprovalPolicy.CANCELS:
            rows = sum(c.get("cancel", 0) for c in counts.values())
        else:
            rows = sum(sum(c.values()) for c in counts.values())
        return rows >= self.min_rows

    def describe(self) -> str:
        return f"{self.policy.value} (from {self.min_rows} rows)" if self.policy is not ApprovalPolicy.OFF else "off"


def _integer(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    try:
        return int(text) if text else default
    except ValueError:
        return default


class ApprovalInput(RunInput):
    """What the approver enters in the Prefect UI to resume the run."""

    approver: str = Field(description="Your name, as your colleagues know it (it goes into the audit trail)")
    decision: Literal["approve", "reject"] = Field(description="approve: send the plan; reject: send nothing")
    reason: str = Field(default="", description="Why (kept in the audit trail; shown in rejected/ for a rejection)")


def plan_counts(frame: pd.DataFrame, plan_: Plan) -> dict[str, dict[str, int]]:
    """vendor -> decision -> rows the plan would send."""
    decisions = frame["decision"].to_numpy(dtype=object)
    counts: dict[str, dict[str, int]] = {}
    for vendor, positions in sorted(plan_.to_send.items()):
        values, numbers = np.unique(decisions[positions].astype(str), return_counts=True)
        counts[vendor] = {str(v): int(n) for v, n in zip(values, numbers, strict=True)}
    return counts


def plan_rows_frame(frame: pd.DataFrame, plan_: Plan) -> pd.DataFrame:
    positions = np.sort(np.concatenate(list(plan_.to_send.values()))) if plan_.to_send else np.array([], dtype=int)
    columns = [c for c in PLAN_COLUMNS if c in frame]
    return frame.iloc[positions][columns].reset_index(drop=True)


def refusal(approver: str, trail: RunTrail) -> str | None:
    """Why this person may not approve this run (None: they may)."""
    name = approver.strip().casefold()
    if not name:
        return "no name was entered"
    if name in {v.casefold() for v in trail.decided_by}:
        return f"{approver} made decisions in this file (decided_by)"
    if trail.who.submitted_by and name == trail.who.submitted_by.casefold():
        return f"{approver} submitted this run"
    if trail.owner and name == trail.owner.casefold():
        return f"{approver} owns the file (put it in the inbox)"
    return None


def require_approval(
    frame: pd.DataFrame,
    plan_: Plan,
    trail: RunTrail,
    out_dir: str,
    settings: ApprovalSettings | None = None,
) -> State | None:
    """None when the run may send (no approval needed, or approved); otherwise the state it ends in."""
    settings = settings or ApprovalSettings.from_env()
    counts = plan_counts(frame, plan_)
    if not settings.applies(counts):
        return None
    logger = get_run_logger()
    if not trail.who.is_deployment_run:
        message = (
            f"nothing sent: INVOICE_SYNC_APPROVAL={settings.policy.value} requires a second person to approve "
            f"this run ({plan_.send_count} rows to send): run it through the deployment (drop the file into "
            "the inbox folder, or `prefect deployment run process-inbox/decision-file-drop`), where it waits "
            "for approval in the Prefect UI; or preview it with --dry-run"
        )
        trail.approval(ApprovalOutcome.REFUSED, None, "a command-line run cannot be approved", counts)
        return failed(APPROVAL_REQUIRED, message)

    plan_path = _publish_plan(frame, plan_, counts, trail, out_dir, settings)
    deadline = time.monotonic() + settings.timeout
    pauses = 0
    while True:
        left = int(deadline - time.monotonic())
        answer = None
        if left > 0:
            description = _form_text(counts, trail, plan_path, refused=pauses > 0)
            # The run's own deadline ends the wait: it resumes itself (an answer marked as no one's)
            # before the server's pause expires, since the server rewrites whatever state an
            # expired pause goes to into a plain Failed ("never resumed"), losing why.
            deadline_timer = threading.Timer(left, _resume_unanswered, args=(flow_run.get_id(), pauses))
            deadline_timer.daemon = True
            deadline_timer.start()
            try:
                answer = pause_flow_run(
                    wait_for_input=ApprovalInput.with_initial_data(description=description),
                    timeout=left + PAUSE_GRACE,
                    poll_interval=min(settings.poll, left),
                    key=f"approval-{pauses}",
                )
            except FlowPauseTimeout:
                answer = None
            finally:
                deadline_timer.cancel()
            if answer is not None and answer.reason == UNANSWERED and not answer.approver:
                answer = None
        if answer is None:
            hours = settings.timeout / 3600
            reason = f"nothing sent: no one approved within {hours:g} h (INVOICE_SYNC_APPROVAL_TIMEOUT)"
            trail.approval(ApprovalOutcome.TIMED_OUT, None, reason, counts)
            return failed(APPROVAL_TIMED_OUT, reason)
        pauses += 1
        approver = answer.approver.strip()
        why_not = refusal(approver, trail)
        if why_not is not None:
            logger.warning("approval refused: %s; waiting for another person", why_not)
            trail.approval(ApprovalOutcome.REFUSED, approver or None, why_not, counts)
            continue
        if answer.decision == "reject":
            reason = answer.reason.strip() or "no reason given"
            trail.approval(ApprovalOutcome.REJECTED, approver, reason, counts)
            return failed(REJECTED, f"nothing sent: rejected by {approver}: {reason}")
        trail.approval(ApprovalOutcome.APPROVED, approver, answer.reason.strip(), counts)
        logger.info("approved by %s: sending %d rows", approver, plan_.send_count)
        return None


def _resume_unanswered(run_id: str | None, pause: int) -> None:
    """At the approval's deadline: resume the paused run with an answer that says no one answered."""
    if run_id is None:
        return
    from prefect.flow_runs import resume_flow_run

    try:
        resume_flow_run(UUID(run_id), run_input={"approver": "", "decision": "reject", "reason": UNANSWERED})
    except Exception as exc:  # resumed by a person meanwhile, or the API is away: the pause's own timeout ends it
        get_run_logger().warning("approval %d: the deadline could not resume the run: %s", pause, exc)


def _publish_plan(
    frame: pd.DataFrame,
    plan_: Plan,
    counts: Mapping[str, Mapping[str, int]],
    trail: RunTrail,
    out_dir: str,
    settings: ApprovalSettings,
) -> Path | None:
    """The plan as artifacts (counts; the first rows) and as plan.csv beside the results (every row)."""
    rows = plan_rows_frame(frame, plan_)
    path: Path | None = Path(out_dir) / PLAN_FILE
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(out_dir) / PLAN_FILE, lambda p: rows.to_csv(p, index=False))
    except OSError as exc:
        get_run_logger().warning("%s not written: %s", path, exc)
        path = None
    table = ["| vendor | decision | rows |", "|---|---|---:|"]
    table += [f"| {v} | {d} | {n} |" for v, by in counts.items() for d, n in by.items()]
    create_markdown_artifact(
        "\n".join(
            [
                f"# Waiting for approval: {trail.name}",
                f"- file SHA-256: `{trail.sha256}`",
                f"- started by: {trail.who.line()}",
                f"- decided_by in the file: {', '.join(trail.decided_by) or '(none)'}",
                f"- policy: INVOICE_SYNC_APPROVAL={settings.describe()}; waits {settings.timeout / 3600:g} h",
                f"- every row that would be sent: `{path}`" if path else "- plan.csv could not be written",
                "",
                *table,
                "",
                "Resume the run in the Prefect UI, enter your name and approve or reject. A person named in",
                "decided_by, the submitter or the file's owner cannot approve it.",
            ]
        ),
        key="invoice-sync-plan",
        description="The plan waiting for approval",
    )
    first = rows.head(PLAN_ROWS_SHOWN)
    shown: list[dict[str, Any]] = [
        {str(k): v for k, v in r.items()} for r in first.astype(object).where(first.notna(), None).to_dict("records")
    ]
    create_table_artifact(
        shown,
        key="invoice-sync-plan-rows",
        description=f"Rows that would be sent (first {min(len(rows), PLAN_ROWS_SHOWN)} of {len(rows)})",
    )
    return path


def _form_text(counts: Mapping[str, Mapping[str, int]], trail: RunTrail, plan_path: Path | None, refused: bool) -> str:
    total = sum(sum(c.values()) for c in counts.values())
    lines = [
        f"**{total} rows** of `{trail.name}` (SHA-256 `{trail.sha256}`) wait to be sent: "
        + "; ".join(f"{v}: " + ", ".join(f"{n} {d}" for d, n in by.items()) for v, by in counts.items()),
        f"Every row: `{plan_path}` (and the run's artifacts).",
        "You may not approve a file you decided in, submitted or own.",
    ]
    if refused:
        lines.insert(0, "**The last approver was refused** (see the run's logs): another person must decide.")
    return "\n\n".join(lines)
