"""`invoice-sync`: run a decision file, validate one, serve the sandbox, or run the demo.

Exit codes: 0 every row succeeded or was skipped; 1 the run finished but some rows failed or
were rejected; 2 nothing was sent because the file itself (or the command line) is unusable;
130 / 143 the run was stopped by SIGINT (Ctrl-C) / SIGTERM (results written, the rest not sent).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, cast

if TYPE_CHECKING:
    from flows.pipeline.results import RunSummary

EXIT_OK, EXIT_ROWS_NOT_DONE, EXIT_UNUSABLE = 0, 1, 2
REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_FILE = REPO_ROOT / "data" / "sample" / "decisions.csv"
SAMPLE_SANDBOX_SEED = REPO_ROOT / "data" / "sample" / "sandbox_invoices.csv"


def _quiet_defaults(verbose: bool) -> None:
    """Offline and quiet by default; set before Prefect or GX are imported."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if not verbose:
        # Task-run chatter stays in the Prefect UI; the terminal gets warnings and our summary.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", "WARNING")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invoice-sync", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's run logs on the terminal")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="send the decisions in FILE and write the results")
    run.add_argument("file", help="decision file (.csv, .parquet, or an .xlsx/.xlsm workbook)")
    run.add_argument("--out", default="data/results", help="results folder (default: data/results)")
    run.add_argument("--dry-run", action="store_true", help="read, validate and plan; send nothing")
    run.add_argument(
        "--check-vendors",
        action="store_true",
        help="with --dry-run: read each invoice that would be sent at its vendor (would it change, is it known?)",
    )
    run.add_argument("--vendors", help="comma-separated vendors to include (default: all)")
    run.add_argument("--chunk-size", type=int, default=None, help="decisions per Prefect task")
    run.add_argument(
        "--retry-failed", action="store_true", help="send again the decisions an earlier run saw fail permanently"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--sheet", help="the workbook's sheet to read (default: the first)")
    run.add_argument("--submitted-by", help="who submitted the file (kept in the audit trail's run register)")

    validate = sub.add_parser("validate", help="check FILE without sending anything")
    validate.add_argument("file")
    validate.add_argument("--show", type=int, default=20, help="rejected rows to list (default 20)")
    validate.add_argument("--sheet", help="the workbook's sheet to read (default: the first)")

    sandbox = sub.add_parser("sandbox", help="serve the four simulated vendor APIs on 127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8765)
    sandbox.add_argument("--seed", default=str(SAMPLE_SANDBOX_SEED), help="CSV of invoices to create")
    sandbox.add_argument("--auto-create", action="store_true", help="unknown invoice ids exist as pending")

    demo = sub.add_parser("demo", help="run the sample file against a built-in sandbox")
    demo.add_argument("--out", default="data/results/demo")

    secrets = sub.add_parser("secrets", help="vendor settings as Prefect Secret blocks (alfred-api-key, ...)")
    secrets.add_argument(
        "action",
        choices=["push", "list"],
        help="push: save the settings set in this environment as blocks; list: where each is set",
    )
    secrets.add_argument("--vendors", help="comma-separated vendors (default: all)")

    alerts = sub.add_parser("alerts", help="Prefect automations that notify a person (Slack, Teams, a webhook)")
    alerts_sub = alerts.add_subparsers(dest="alerts_action", required=True)
    install = alerts_sub.add_parser("install", help="create or update the notification block and the automations")
    channel = install.add_mutually_exclusive_group(required=True)
    for name, what in (
        ("slack", "a Slack incoming webhook"),
        ("teams", "a Microsoft Teams webhook"),
        ("webhook", "any URL"),
    ):
        channel.add_argument(f"--{name}", metavar="URL", help=f"notify {what} (kept as a secret)")
    install.add_argument(
        "--failed-share", type=float, default=0.0, help="alert when a vendor's share of rows not done passes this (0)"
    )
    install.add_argument("--deadline", help="alert when a month-end run is not finished this long after due (e.g. 3h)")
    alerts_sub.add_parser("list", help="the automations installed and the channel (never its URL)")
    alerts_sub.add_parser("remove", help="delete the automations, the block and the threshold")
    from flows.cli import audit

    audit.add_parsers(sub)
    return parser


def console_main() -> NoReturn:
    """The `invoice-sync` command: `main`, then a quick exit once everything is written."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """Flush what is pending and leave without tearing the interpreter down.

    Unloading pandas, Great Expectations and Prefect module by module takes a second or more, after
    the results, the ledger and the temporary server are already closed; nothing in it is ours.
    """
    if "prefect" in sys.modules:  # logs and events still queued for the Prefect API go out first
        from flows.orchestration.temporary_server import send_queued_logs_and_events

        send_queued_logs_and_events()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_defaults(args.verbose)
    if args.command == "sandbox":
        import sandbox

        cmd = ["--port", str(args.port)] + (["--seed", args.seed] if args.seed else [])
        return sandbox.main(cmd + (["--auto-create"] if args.auto_create else []))
    if args.command in ("run", "validate") and args.sheet is not None and not _is_workbook(args.file):
        print(f"invoice-sync: --sheet is for Excel workbooks (.xlsx, .xlsm), not {args.file}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.command == "validate":
        return validate_command(args.file, args.show, sheet=args.sheet)
    if args.command == "demo":
        return demo_command(args.out)
    if args.command == "alerts":
        return alerts_command(args)
    if args.command in ("history", "audit"):
        from flows.cli import audit

        if args.command == "history":
            return audit.history_command(args.invoice_id, args.vendor, args.json)
        return audit.audit_command(args)
    from connectors.registry import UnknownVendor, parse_vendors

    try:
        vendors = parse_vendors(args.vendors)
    except UnknownVendor as error:
        print(f"invoice-sync: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.command == "secrets":
        return secrets_command(args.action, vendors)
    if args.check_vendors and not args.dry_run:
        print("invoice-sync: --check-vendors previews a dry run: add --dry-run (nothing is sent then)", file=sys.stderr)
        return EXIT_UNUSABLE
    return run_command(
        args.file,
        args.out,
        dry_run=args.dry_run,
        check_vendors=args.check_vendors,
        vendors=vendors,
        chunk_size=args.chunk_size,
        retry_failed=args.retry_failed,
        show_progress=False if args.no_progress else None,
        sheet=args.sheet,
        submitted_by=args.submitted_by,
    )


def _is_workbook(path: str) -> bool:
    from flows.pipeline.workbook_reader import WORKBOOK_SUFFIXES

    return Path(path).suffix.lower() in WORKBOOK_SUFFIXES


def run_command(
    path: str,
    out: str,
    *,
    dry_run: bool = False,
    vendors: list[str] | None = None,
    chunk_size: int | None = None,
    retry_failed: bool = False,
    show_progress: bool | None = None,
    check_vendors: bool = False,
    sheet: str | None = None,
    submitted_by: str | None = None,
) -> int:
    """Run the flow on one file (a workbook's `sheet`) and print what happened.

    SIGINT / SIGTERM stop it (`flows.orchestration.stopping`): no new request, the results
    written, one line on stderr, exit 130 / 143. Prefect's temporary server runs in a process
    group of its own, so a Ctrl-C to this one does not end it before the flow's last API call.
    """
    from connectors.redact import install_log_redaction
    from flows.orchestration.stopping import stop_on_signals
    from flows.orchestration.temporary_server import PrefectServerError, prefect_api

    with stop_on_signals() as stop:
        try:
            with prefect_api() as wait_for_api:  # Prefect's temporary server, if it needs one, boots from here on
                from prefect.exceptions import TerminationSignal

                from flows.orchestration.sync import DEFAULT_CHUNK_SIZE, NOTHING_SENT_STATES, sync_decisions

                if wait_for_api:
                    _import_great_expectations()
                    wait_for_api()
                install_log_redaction()
                if stop.is_set():
                    return _stopped_before_sending(stop.reason, stop.exit_code)
                try:
                    state = sync_decisions(
                        path,
                        out_dir=out,
                        dry_run=dry_run,
                        vendors=vendors,
                        chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
                        retry_failed=retry_failed,
                        show_progress=show_progress,
                        check_vendors=check_vendors,
                        sheet=sheet,
                        submitted_by=submitted_by,
                        return_state=True,
                    )
                except TerminationSignal:  # SIGTERM while Prefect's engine started the flow, before our handler
                    return _stopped_before_sending(stop.reason, stop.exit_code)
                if state.name in NOTHING_SENT_STATES:
                    print(f"invoice-sync: {state.message}", file=sys.stderr)
                    return EXIT_UNUSABLE
                # The flow returns a State carrying its RunSummary, which Prefect's types cannot say.
                summary = cast("RunSummary | BaseException | None", state.result(raise_on_failure=False))
        except PrefectServerError as exc:  # raised before the flow started: nothing was sent
            print(f"invoice-sync: {exc}", file=sys.stderr)
            return EXIT_UNUSABLE
    if not hasattr(summary, "counts"):  # the flow itself crashed: say so without a traceback
        print(f"invoice-sync: run failed: {state.message}", file=sys.stderr)
        return EXIT_UNUSABLE if summary is None else EXIT_ROWS_NOT_DONE
    summary = cast("RunSummary", summary)  # it has counts: the flow's own summary
    if summary.stopped_by:  # one line: what went out, what did not, where the results are
        print(f"invoice-sync: {summary.stop_text()}; results: {summary.results_path}", file=sys.stderr)
        return stop.exit_code
    print_summary(summary)
    return EXIT_OK if summary.all_done else EXIT_ROWS_NOT_DONE


def _stopped_before_sending(reason: str, code: int) -> int:
    print(f"invoice-sync: {reason} before the run started: nothing sent, no results written", file=sys.stderr)
    return code


def _import_great_expectations() -> None:
    """Import GX (by loading the suite) now, while Prefect's server boots, instead of in the validate task."""
    from flows.pipeline.validation import SuiteError, load_suite

    with contextlib.suppress(SuiteError):  # the flow reports an unusable suite itself
        load_suite()


def print_summary(summary: RunSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"invoice-sync {'dry run' if summary.dry_run else 'run'} {summary.run_id}")
    table.add_column("vendor")
    outcomes = list(summary.counts)
    for outcome in outcomes:
        table.add_column(outcome, justify="right")
    table.add_column("top errors")
    for vendor, counts in summary.by_vendor.items():
        errors = ", ".join(f"{code} ({n})" for code, n in summary.top_errors.get(vendor, []))
        table.add_row(vendor, *(str(counts[o]) for o in outcomes), errors)
    table.add_row("total", *(str(summary.counts[o]) for o in outcomes), "", style="bold")
    console = Console()
    console.print(table)
    if summary.checks:
        console.print(f"the vendors say: {summary.checks_text()}")
    console.print(f"{summary.rows} rows from {summary.source} in {summary.seconds:.1f} s")
    console.print(f"results: {summary.results_path}  (spreadsheet copy: {summary.csv_path})")
    if summary.workbook_path:
        console.print(f"workbook: {summary.workbook_path}")
    elif summary.no_workbook_because:
        console.print(f"no results.xlsx: {summary.no_workbook_because}")
    if summary.needs_attention_rows:
        console.print(f"[bold]{summary.attention_text()}[/bold] (fix them there and run it, or drop it into the inbox)")


def validate_command(path: str, show: int, *, sheet: str | None = None) -> int:
    """Read, validate and plan FILE (a workbook's `sheet`); list the rows that would not be sent."""
    import numpy as np

    from flows.pipeline.planning import plan_rows
    from flows.pipeline.reader import UnusableFile, read_decision_file
    from flows.pipeline.validation import SuiteError, ValidationError, validate_decisions

    try:
        decisions = read_decision_file(path, sheet=sheet)
    except UnusableFile as exc:
        print(f"invoice-sync: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    frame = decisions.frame
    try:
        report = validate_decisions(frame, error_cells=decisions.error_cells)
    except (SuiteError, ValidationError) as exc:
        print(f"invoice-sync: validation could not run: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    plan_ = plan_rows(frame, report.row_errors)
    rejected = np.flatnonzero(plan_.outcome == "rejected")
    held = list(zip(frame["row_number"].to_numpy()[rejected].tolist(), plan_.error_message[rejected], strict=True))
    skipped = int(np.count_nonzero(plan_.outcome == "skipped"))
    where = f"{path} (sheet '{decisions.sheet}', rows as Excel numbers them)" if decisions.sheet else path
    print(
        f"{where}: {len(frame)} rows, {plan_.send_count} would be sent, {len(held)} rejected, {skipped} skipped as duplicates"
    )
    for row, message in held[:show]:
        print(f"  row {row}: {message}")
    if len(held) > show:
        print(f"  … and {len(held) - show} more")
    return EXIT_OK if not held else EXIT_ROWS_NOT_DONE


def secrets_command(action: str, vendors: list[str] | None = None) -> int:
    """`invoice-sync secrets push|list`: exit 0, or 2 when the Prefect API cannot be reached."""
    from flows.orchestration.secrets import block_name, push_secrets, read_secret_blocks, setting_names
    from flows.pipeline.files import one_line

    try:
        if action == "push":
            saved, skipped = push_secrets(vendors)
            for name in saved:
                print(f"saved Secret block {name}")
            if skipped:
                print(f"not set in this environment, not saved: {', '.join(skipped)}")
            if not saved:
                print("nothing saved: no vendor setting is set in this environment")
            return 0
        names = setting_names(vendors)
        blocks = read_secret_blocks(names)
    except Exception as error:
        print(f"invoice-sync: cannot reach the Prefect API: {one_line(error, 300)}", file=sys.stderr)
        return 2
    width = max(len(n) for n in names)
    print(f"{'setting':<{width}}  {'environment':<11}  block")
    for name in names:
        in_env = "set" if os.environ.get(name, "").strip() else "-"
        in_block = block_name(name) if name in blocks else "-"
        print(f"{name:<{width}}  {in_env:<11}  {in_block}")
    return 0


def alerts_command(args: argparse.Namespace) -> int:
    """`invoice-sync alerts install|list|remove`: exit 0, 2 for bad options or an unreachable API."""
    from flows.orchestration import alerts
    from flows.pipeline.files import one_line

    try:
        if args.alerts_action == "install":
            channel = next(name for name in alerts.CHANNEL_BLOCK_TYPES if getattr(args, name))
            deadline = alerts.parse_duration(args.deadline) if args.deadline else None
            spec = alerts.AlertSpec(channel, str(getattr(args, channel)), args.failed_share, deadline)
    except ValueError as error:
        print(f"invoice-sync: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        if args.alerts_action == "install":
            lines = alerts.install(spec)
        elif args.alerts_action == "remove":
            lines = alerts.remove() or ["no alerts were installed"]
        else:
            found, block_channel = alerts.installed()
            lines = [f"channel: {block_channel or '(no notification block)'}"]
            lines += [f"{a.name}: {'on' if a.enabled else 'off'}, {a.trigger}" for a in found] or ["no automations"]
    except Exception as error:
        text = one_line(error, 300)
        if args.alerts_action == "install":  # an error that quotes the URL must not print it
            text = text.replace(spec.url, "<the URL>")
        print(f"invoice-sync: alerts {args.alerts_action} failed: {text}", file=sys.stderr)
        return EXIT_UNUSABLE
    for line in lines:
        print(line)
    return EXIT_OK


def demo_command(out: str) -> int:
    """Start the sandbox, point every vendor at it, run the sample file."""
    import tempfile

    from sandbox import Sandbox

    # A new sandbox knows nothing of earlier demos: give this demo a ledger of its own too.
    with Sandbox() as sandbox, tempfile.TemporaryDirectory(prefix="invoice-sync-demo-") as state:
        sandbox.seed_file(SAMPLE_SANDBOX_SEED)
        os.environ.update(sandbox.env())
        os.environ["INVOICE_SYNC_STATE_DIR"] = state
        os.environ.pop("INVOICE_SYNC_LEDGER_URL", None)
        print(f"sandbox serving the four vendor APIs at {sandbox.url}")
        code = run_command(str(SAMPLE_FILE), out, show_progress=False)
    if code == EXIT_ROWS_NOT_DONE:
        print("run exit code 1, as expected: the sample holds rows that must be rejected or fail")
    return EXIT_OK if code in (EXIT_OK, EXIT_ROWS_NOT_DONE) else code


if __name__ == "__main__":  # pragma: no cover
    console_main()
