"""`invoice-sync history` and `invoice-sync audit verify|export`: the audit trail, read (never changed).

Exit codes: `history` 0 (1 when the invoice has no history); `audit verify` 0 every chain intact,
1 a row was edited, removed or inserted; `audit export` 0; 2 for unusable options.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_FOUND_NOTHING_OR_BROKEN, EXIT_UNUSABLE = 0, 1, 2
EXPORT_SUFFIXES = (".parquet", ".csv", ".xlsx")


def add_parsers(sub) -> None:
    """The `history` and `audit` subcommands."""
    history = sub.add_parser("history", help="every run and attempt for one invoice, newest first")
    history.add_argument("invoice_id")
    history.add_argument("--vendor", help="only this vendor's invoice of that id")
    history.add_argument("--json", action="store_true", help="machine-readable: a JSON list of runs with attempts")

    audit = sub.add_parser("audit", help="the audit trail: verify its hash chains, export a period")
    audit_sub = audit.add_subparsers(dest="audit_action", required=True)
    verify = audit_sub.add_parser("verify", help="check every run's hash chain; name the first bad row (exit 1)")
    verify.add_argument("--run", action="append", help="only this run id (repeatable)")
    export = audit_sub.add_parser("export", help="the attempts and runs of a period, for an auditor")
    export.add_argument("--since", required=True, help="first day (YYYY-MM-DD, UTC) or an ISO time")
    export.add_argument("--until", help="last day, included (YYYY-MM-DD), or an ISO time, excluded")
    export.add_argument("--out", required=True, help="FILE.parquet, FILE.csv or FILE.xlsx")


def _engine():
    import sqlalchemy as sa

    from flows.state.ledger import ledger_url

    return sa.create_engine(ledger_url())


def history_command(invoice_id: str, vendor: str | None, as_json: bool) -> int:
    from flows.state.audit import history

    engine = _engine()
    try:
        runs = history(engine, invoice_id, vendor)
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps(runs, indent=2, default=str))
        return EXIT_OK if runs else EXIT_FOUND_NOTHING_OR_BROKEN
    if not runs:
        print(f"no attempt recorded for invoice {invoice_id}" + (f" at {vendor}" if vendor else ""))
        return EXIT_FOUND_NOTHING_OR_BROKEN
    for run in runs:
        print(_run_line(run))
        for a in run["attempts_made"]:
            print("  " + _attempt_line(a))
    return EXIT_OK


def _run_line(run: dict) -> str:
    parts = [f"run {run['run_id']}", f"started {run['started_at']}", f"by {run['started_by']}"]
    if run.get("source_name"):
        parts.append(f"file {run['source_name']} (sha256 {(run.get('source_sha256') or '?')[:16]}…)")
    if run.get("decided_by"):
        parts.append(f"decided by {', '.join(run['decided_by'])}")
    if run.get("approval"):
        parts.append(f"approval: {run['approval']} by {run.get('approver') or '-'} at {run.get('approval_at')}")
    if run.get("ended_at"):
        parts.append(f"ended {run['ended_at']}: {run['state']}")
    else:
        parts.append("never finished (crashed, or still running)")
    return "; ".join(parts)


def _attempt_line(a: dict) -> str:
    number = a["attempt"]
    what = {"decision": f"attempt {number}", "read": f"preview read {number}"}.get(
        a["kind"], f"{a['kind']} for attempt {number}"
    )
    status = f"HTTP {a['http_status']}" if a.get("http_status") is not None else "no answer"
    reading = " ".join(str(x) for x in (a.get("action"), a.get("error_code"), a.get("vendor_error_code")) if x)
    latency = f"{a['latency_us'] / 1000:.1f} ms" if a.get("latency_us") is not None else ""
    parts = [a["at"], a["vendor"], what, a.get("decision") or "", status, reading, latency]
    if a.get("vendor_reference"):
        parts.append(f"ref {a['vendor_reference']}")
    if a.get("message"):
        parts.append(a["message"])
    return "  ".join(p for p in parts if p)


def audit_command(args: argparse.Namespace) -> int:
    if args.audit_action == "verify":
        return verify_command(args.run)
    return export_command(args.since, args.until, args.out)


def verify_command(runs: list[str] | None) -> int:
    from flows.state.audit import verify

    engine = _engine()
    try:
        report = verify(engine, runs)
    finally:
        engine.dispose()
    for finding in report.findings:
        print(f"invoice-sync: audit verify: {finding}", file=sys.stderr)
    if report.unfinished:
        print(
            f"{len(report.unfinished)} runs never finished (crashed, or still running): their chains hold, "
            "but their last rows have no end entry to be checked against: " + ", ".join(report.unfinished[:10])
        )
    state = "intact" if report.intact else f"{len(report.findings)} broken"
    print(f"audit verify: {report.runs} runs, {report.entries} entries: {state}")
    return EXIT_OK if report.intact else EXIT_FOUND_NOTHING_OR_BROKEN


def _period_bound(text: str, *, end: bool) -> str:
    """A --since/--until value as the audit's UTC text; a plain date as --until means through that day."""
    import pandas as pd

    from flows.state.audit import utc_text

    stamp = pd.Timestamp(text)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    if end and len(text.strip()) == 10:  # YYYY-MM-DD: the whole day is included
        stamp += pd.Timedelta(days=1)
    return utc_text(stamp.to_pydatetime())


def export_command(since: str, until: str | None, out: str) -> int:
    from flows.pipeline.files import atomic_write
    from flows.pipeline.results import spreadsheet_safe
    from flows.pipeline.workbook_writer import DataSheet, Kind, fits_in_a_sheet, write_workbook
    from flows.state.audit import export_frames

    target = Path(out)
    if target.suffix.lower() not in EXPORT_SUFFIXES:
        print(f"invoice-sync: audit export writes {', '.join(EXPORT_SUFFIXES)}, not {out}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        start, stop = _period_bound(since, end=False), _period_bound(until, end=True) if until else None
    except ValueError as exc:
        print(f"invoice-sync: not a date: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    engine = _engine()
    try:
        attempts, runs = export_frames(engine, start, stop)
    finally:
        engine.dispose()
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = target.suffix.lower()
    runs_target = target.with_name(f"{target.stem}_runs{target.suffix}")
    if suffix == ".xlsx":
        too_big = fits_in_a_sheet(len(attempts), attempts.shape[1])
        if too_big:
            print(f"invoice-sync: {too_big}: export to .parquet or .csv", file=sys.stderr)
            return EXIT_UNUSABLE
        numbers = {c: Kind.NUMBER for c in ("seq", "row_number", "attempt", "http_status", "latency_us", "rows")}
        sheets = [
            DataSheet("attempts", spreadsheet_safe(attempts), {c: k for c, k in numbers.items() if c in attempts}),
            DataSheet("runs", spreadsheet_safe(runs), {c: k for c, k in numbers.items() if c in runs}),
        ]
        atomic_write(target, lambda p: write_workbook(p, sheets))
        written = [target]
    elif suffix == ".csv":
        atomic_write(target, lambda p: spreadsheet_safe(attempts).to_csv(p, index=False))
        atomic_write(runs_target, lambda p: spreadsheet_safe(runs).to_csv(p, index=False))
        written = [target, runs_target]
    else:
        atomic_write(target, lambda p: attempts.to_parquet(p, index=False))
        atomic_write(runs_target, lambda p: runs.to_parquet(p, index=False))
        written = [target, runs_target]
    print(
        f"{len(attempts)} attempts and {len(runs)} runs from {start}"
        + (f" to {stop}" if stop else "")
        + ": "
        + ", ".join(str(p) for p in written)
    )
    return EXIT_OK
