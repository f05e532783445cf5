"""A run's place in the audit trail: who started it, on which file, what was approved, how it ended.

The entries go through the run's ledger (`Ledger.append_audit`), so they join the same hash chain as the
run's attempts, which the ledger's group commit writes (`flows/state/audit.py`).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from prefect import get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.states import State

from flows.pipeline.files import atomic_write
from flows.state import audit
from flows.state.ledger import Ledger

AUDIT_FILE = "audit.json"  # beside the results: the run's chain head, a copy kept outside the database
MAX_DECIDED_BY = 200  # distinct decided_by values kept in the register


@dataclass
class Who:
    """Who started a run: the OS user and host, the deployment and flow run, and who says they submitted it."""

    os_user: str | None
    host: str
    deployment: str | None
    flow_run_id: str | None
    root_flow_run_id: str | None
    submitted_by: str | None = None

    @property
    def is_deployment_run(self) -> bool:
        return self.deployment is not None

    def line(self) -> str:
        if self.deployment:
            text = f"deployment {self.deployment}, flow run {self.root_flow_run_id or self.flow_run_id}"
        else:
            text = f"{self.os_user or 'unknown user'}@{self.host}"
        return text + (f", submitted by {self.submitted_by}" if self.submitted_by else "")


def who_started(submitted_by: str | None) -> Who:
    """The OS user and host for a command-line run; the deployment and its flow run for a Prefect run."""
    try:
        user: str | None = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = None
    deployment_id = deployment.get_id()
    name = None
    if deployment_id:
        name = f"{deployment.get_name() or 'unnamed'} ({deployment_id})"
    run_id = flow_run.get_id()
    root = flow_run.get_root_flow_run_id() if run_id else None
    return Who(user, socket.gethostname(), name, run_id, root, (submitted_by or "").strip() or None)


def file_owner(path: str) -> str | None:
    """The OS account owning the file (who put it into an inbox folder, on most file servers)."""
    try:
        import pwd

        return pwd.getpwuid(os.stat(path).st_uid).pw_name
    except (ImportError, KeyError, OSError):
        return None


def decided_by_values(frame: pd.DataFrame | None) -> list[str]:
    if frame is None or "decided_by" not in frame:
        return []
    values = frame["decided_by"].dropna().astype(str).str.strip()
    return sorted(v for v in values.unique() if v)[:MAX_DECIDED_BY]


@dataclass
class RunTrail:
    """One run's audit entries, written through its ledger as the run goes."""

    ledger: Ledger
    run_id: str
    path: str
    who: Who
    dry_run: bool
    source_name: str | None = None  # the file as a person knows it (the inbox reads it from a claim folder)
    sheet: str | None = None
    vendors: list[str] | None = None
    out_dir: str | None = None
    approval_policy: str | None = None
    fingerprint: tuple[int, str] | None = None
    owner: str | None = None
    decided_by: list[str] = field(default_factory=list)
    head: str | None = None
    registered: bool = False

    def register(self, frame: pd.DataFrame | None) -> None:
        """The run's register row, once its file is read (or found unusable)."""
        self.fingerprint = audit.fingerprint(self.path)
        self.owner = file_owner(self.path)
        self.decided_by = decided_by_values(frame)
        registration = audit.RunRegistration(
            run_id=self.run_id,
            started_by=self.who.line(),
            dry_run=self.dry_run,
            source_path=self.path,
            source_name=self.name,
            source_bytes=self.fingerprint[0] if self.fingerprint else None,
            source_sha256=self.fingerprint[1] if self.fingerprint else None,
            sheet=self.sheet,
            rows=None if frame is None else len(frame),
            vendors=self.vendors,
            out_dir=self.out_dir,
            os_user=self.who.os_user,
            host=self.who.host,
            deployment=self.who.deployment,
            flow_run_id=self.who.flow_run_id,
            root_flow_run_id=self.who.root_flow_run_id,
            submitted_by=self.who.submitted_by,
            file_owner=self.owner,
            decided_by=self.decided_by,
            approval_policy=self.approval_policy,
        )
        self.ledger.append_audit(registration.entry())
        self.registered = True

    @property
    def name(self) -> str:
        return Path(self.source_name or self.path).name

    @property
    def sha256(self) -> str | None:
        return self.fingerprint[1] if self.fingerprint else None

    def approval(self, outcome: str, approver: str | None, reason: str = "", plan: Mapping | None = None) -> None:
        self.ledger.append_audit(audit.approval_entry(self.run_id, outcome, approver, reason, plan))

    def finish(self, state: State, rows: int | None, counts: Mapping[str, int] | None, results: str | None) -> str:
        """The run's end entry, the chain's head; returns the head."""
        attempts = self.ledger.audit_attempts(self.run_id)
        entry = audit.end_entry(self.run_id, state.name or "", state.message or "", rows, counts, results, attempts)
        try:
            self.head = self.ledger.append_audit(entry)
        except Exception as exc:  # the results are written already: say it loudly, never lose the run
            get_run_logger().error("the run's end was not recorded in the audit trail: %s", exc)
            return ""
        return self.head

    def summary_lines(self) -> dict[str, str]:
        """What the run's artifact and results name: the file's SHA-256, who submitted and started it."""
        lines = {"source_sha256": self.sha256 or "(the file could not be read)", "started_by": self.who.line()}
        if self.who.submitted_by:
            lines["submitted_by"] = self.who.submitted_by
        return lines

    def write_copy(self, out_dir: str | None) -> None:
        """audit.json beside the results: the chain head, kept outside the database."""
        if not out_dir or self.head is None or not Path(out_dir).is_dir():
            return
        facts = {
            "run_id": self.run_id,
            "chain_head": self.head,
            "source": self.source_name or self.path,
            "source_sha256": self.sha256,
            "started_by": self.who.line(),
            "submitted_by": self.who.submitted_by,
        }
        target = Path(out_dir) / AUDIT_FILE
        try:
            atomic_write(target, lambda p: Path(p).write_text(json.dumps(facts, indent=2) + "\n"))
        except OSError as exc:
            get_run_logger().warning("%s not written: %s", target, exc)
