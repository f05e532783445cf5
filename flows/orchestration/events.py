"""The event a finished `invoice-sync` run emits: its counts, and whether a person should hear of it.

One `invoice-sync.run.finished` event per run that reached its results (`emit_run_finished`,
called by the flow at the end). Prefect triggers match labels, not numbers, so the decisions are
made here and put on the event's resource as labels the automations (`flows.orchestration.alerts`)
and the `retry-failed` deployment's triggers (prefect.yaml) match:

invoice-sync.failed-share-exceeded  "true" when a vendor's share of rows not done (failed or
                                    rejected) passes the threshold `invoice-sync alerts install
                                    --failed-share` saved as a Prefect Variable (default 0)
invoice-sync.notify                 "true" when the alert should go out: the share is exceeded,
                                    and this is not a retry round whose only failures are
                                    transient ones the next round sends again
invoice-sync.transient-left         "true" when rows failed for a reason worth sending again
                                    (the ledger's TRANSIENT_CODES); never for a run stopped by
                                    SIGINT/SIGTERM: a stop is not undone by a retry
invoice-sync.retry-round            "0" for a run of a file, k for the k-th retry round

The payload holds the counts and the text a person reads (`alert_text`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from connectors.vocabulary import Outcome
from flows.pipeline.results import RunSummary
from flows.state.ledger import TRANSIENT_CODES

RUN_FINISHED = "invoice-sync.run.finished"
RUN_RESOURCE_PREFIX = "invoice-sync.run."
FAILED_SHARE_VARIABLE = "invoice-sync-alert-failed-share"  # set by `invoice-sync alerts install`
LABEL_SHARE_EXCEEDED = "invoice-sync.failed-share-exceeded"
LABEL_NOTIFY = "invoice-sync.notify"
LABEL_TRANSIENT_LEFT = "invoice-sync.transient-left"
LABEL_RETRY_ROUND = "invoice-sync.retry-round"
NOT_DONE = (Outcome.FAILED.value, Outcome.REJECTED.value)


@dataclass(frozen=True)
class RetryRound:
    """Which retry round a run is (0: not a retry), of how many, and the run it retries."""

    number: int = 0
    of: int = 0
    retries_run: str | None = None

    @property
    def last(self) -> bool:
        return self.number > 0 and self.number >= self.of


@dataclass(frozen=True)
class RunOutcome:
    """What the event says about a run, computed from its results."""

    shares: dict[str, float]  # vendor -> share of its rows not done
    transient: dict[str, int]  # vendor -> rows failed with a transient code
    permanent: dict[str, int]  # vendor -> rows failed otherwise, or rejected
    threshold: float
    retry: RetryRound
    stopped: bool = False  # by SIGINT/SIGTERM: what it did not send waits for a person, not for a retry

    @property
    def share_exceeded(self) -> bool:
        return any(share > self.threshold for share in self.shares.values())

    @property
    def transient_left(self) -> bool:
        return not self.stopped and sum(self.transient.values()) > 0

    @property
    def notify(self) -> bool:
        """Tell a person, unless the only news is transient failures the next retry round resends."""
        if self.stopped:  # the run's `Cancelled` state alerts: one problem, one message
            return False
        if not self.share_exceeded:
            return False
        if self.retry.number == 0 or self.retry.last or not self.transient_left:
            return True
        return sum(self.permanent.values()) > 0


def run_outcome(
    results: pd.DataFrame, threshold: float, retry: RetryRound = RetryRound(), stopped: bool = False
) -> RunOutcome:
    """Per vendor: the share of rows not done, and the failures split into transient and permanent."""
    transient_codes = {code.value for code in TRANSIENT_CODES}
    vendor = results["vendor"].fillna("(none)").astype(str)
    outcome = results["outcome"].astype(str)
    not_done = outcome.isin(NOT_DONE)
    transient = (outcome == Outcome.FAILED.value) & results["error_code"].isin(transient_codes).fillna(False)
    shares = not_done.groupby(vendor).mean()
    return RunOutcome(
        shares={str(v): float(s) for v, s in shares.items()},
        transient={str(v): int(n) for v, n in transient.groupby(vendor).sum().items() if n},
        permanent={str(v): int(n) for v, n in (not_done & ~transient).groupby(vendor).sum().items() if n},
        threshold=threshold,
        retry=retry,
        stopped=stopped,
    )


def alert_text(summary: RunSummary, outcome: RunOutcome, deployment: str | None) -> tuple[str, str]:
    """(subject, body) of the alert a person reads: never a credential, only counts, codes and paths."""
    source = Path(summary.source).name
    if outcome.retry.number:
        subject = f"invoice-sync: retry round {outcome.retry.number} of {outcome.retry.of}: {summary.counts_text()}"
    else:
        subject = f"invoice-sync: {source}: {summary.counts_text()}"
    lines = [
        f"deployment: {deployment or '(none: run by hand)'}",
        f"file: {summary.source}",
        f"rows: {summary.rows} ({summary.counts_text()})",
    ]
    if outcome.retry.number:
        lines.append(f"retry round {outcome.retry.number} of {outcome.retry.of}, of run {outcome.retry.retries_run}")
    lines.append("per vendor (share not done, top error codes):")
    for vendor, counts in summary.by_vendor.items():
        errors = ", ".join(f"{code} ({n})" for code, n in summary.top_codes(vendor)) or "-"
        shown = ", ".join(f"{n} {o}" for o, n in counts.items() if n)
        lines.append(f"  {vendor}: {shown}; {outcome.shares.get(vendor, 0.0):.1%} not done; {errors}")
    if summary.stopped_by:
        lines.append(f"{summary.stop_text()}: run the file again to send the rest")
    if outcome.transient_left:
        waiting = sum(outcome.transient.values())
        if outcome.retry.last:
            lines.append(f"still failing after the last retry round: {waiting} rows with transient errors")
        else:
            lines.append(f"{waiting} rows failed for a transient reason: the retry-failed deployment sends them again")
    if summary.results_path:
        lines.append(f"results: {Path(summary.results_path).parent}")
    attention = _needs_attention(summary)
    if attention:
        lines.append(f"needs attention: {attention}")
    return subject, "\n".join(lines)


def _needs_attention(summary: RunSummary) -> str:
    """Where the summary says the rows needing a person are, when the run wrote them."""
    found: Any = getattr(summary, "needs_attention", None) or summary.extra.get("needs_attention")
    if not found:
        return ""
    if isinstance(found, (list, tuple)):
        return ", ".join(str(item) for item in found)
    return str(found)


def failed_share_threshold() -> float:
    """The threshold `alerts install` saved on the server (0 when none is: any row not done)."""
    from prefect.variables import Variable

    try:
        value = Variable.get(FAILED_SHARE_VARIABLE, default=None)
    except Exception:  # no API to ask: the strictest rule
        return 0.0
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def _deployment_name() -> str | None:
    """The deployment this run belongs to: its own, or the one of the run that started it."""
    from prefect.runtime import deployment, flow_run

    name = deployment.name
    if name:
        return str(name)
    parent = flow_run.parent_deployment_id
    if not parent:
        return None
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            return client.read_deployment(parent).name
    except Exception:
        return None


def emit_run_finished(summary: RunSummary, results: pd.DataFrame, retry: RetryRound = RetryRound()) -> RunOutcome:
    """Emit `invoice-sync.run.finished` for this flow run, labelled for the automations."""
    from prefect.events import emit_event
    from prefect.runtime import flow_run

    outcome = run_outcome(results, failed_share_threshold(), retry, stopped=summary.stopped_by is not None)
    subject, body = alert_text(summary, outcome, _deployment_name())
    run_id = str(flow_run.get_id() or summary.run_id)

    def flag(value: bool) -> str:
        return "true" if value else "false"

    emit_event(
        event=RUN_FINISHED,
        resource={
            "prefect.resource.id": f"{RUN_RESOURCE_PREFIX}{run_id}",
            "prefect.resource.name": Path(summary.source).name,
            LABEL_SHARE_EXCEEDED: flag(outcome.share_exceeded),
            LABEL_NOTIFY: flag(outcome.notify),
            LABEL_TRANSIENT_LEFT: flag(outcome.transient_left),
            LABEL_RETRY_ROUND: str(retry.number),
        },
        related=[{"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run"}],
        payload={
            "flow_run_id": run_id,
            "source": summary.source,
            "results_dir": str(Path(summary.results_path).parent) if summary.results_path else None,
            "counts": summary.counts,
            "by_vendor": summary.by_vendor,
            "top_errors": {v: [[c, n] for c, n in summary.top_codes(v)] for v in summary.codes_by_vendor},
            "shares": outcome.shares,
            "transient": outcome.transient,
            "threshold": outcome.threshold,
            "retry_round": retry.number,
            "retries_run": retry.retries_run,
            "subject": subject,
            "text": body,
        },
    )
    return outcome
