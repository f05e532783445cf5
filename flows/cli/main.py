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
        # Prefect's log lines stay in the Prefect UI (and on the terminal with -v): what they say
        # that matters (rows rejected, a vendor not configured) is in our summary and the results.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", "CRITICAL")


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
        from flows.orchestration.temporary_server import send_queued_logs_and_events, stop_prefects_own_servers

        send_queued_logs_and_events()
        stop_prefects_own_servers()  # os._exit skips the atexit hook that would stop them
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

                from flows.orchestration.final_states import detail_of
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
                summary = cast("RunSummary | BaseException | None", detail_of(state.result(raise_on_failure=False)))
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


NEEDS_ATTENTION_SHOWN = 10  # rows listed on the terminal; the results hold them all


def print_summary(summary: RunSummary) -> None:
    """The run on the terminal: outcomes per vendor, the codes, the rows that need a person, the files."""
    from rich.console import Console
    from rich.table import Table

    from flows.pipeline.results import outcome_label

    table = Table(title=summary.file_name + (" (dry run: nothing sent)" if summary.dry_run else ""))
    table.add_column("vendor")
    outcomes = list(summary.counts)
    for outcome in outcomes:
        table.add_column(outcome_label(outcome), justify="right")
    for vendor, counts in summary.by_vendor.items():
        table.add_row(vendor, *(f"{counts[o]:,}" for o in outcomes))
    table.add_row("total", *(f"{summary.counts[o]:,}" for o in outcomes), style="bold")
    Console().print(table)
    # Our own lines are printed as they are: the terminal may wrap them, nothing breaks a path.
    print(f"{summary.rows:,} rows from {summary.source} in {summary.seconds:.1f} s")
    if summary.codes:
        print("codes: " + ", ".join(f"{code} {n:,}" for code, n in summary.codes.items()))
    if summary.checks:
        print(f"the vendors say: {summary.checks_text()}")
    print_needs_attention(summary)
    for position, note in enumerate(summary.notes()):
        print(("\n" if position == 0 else "") + note.replace("`", ""))
    print()
    files = [("results", summary.results_path), ("spreadsheet copy", summary.csv_path)]
    files += [("workbook", summary.workbook_path)]
    files += [("needs attention", summary.needs_attention_path)]
    files += [("validation report", summary.extra.get("validation_report"))]
    for label, path in files:
        if path:
            print(f"{label + ':':<19} {path}")
    if summary.no_workbook_because:
        print(f"no results.xlsx: {summary.no_workbook_because}")


def print_needs_attention(summary: RunSummary) -> None:
    from flows.pipeline.results import rows_text

    total = summary.needs_attention_count
    if not total:
        return
    shown = summary.needs_attention[:NEEDS_ATTENTION_SHOWN]
    kinds = ", ".join(f"{n:,} {outcome}" for outcome, n in summary.needs_attention_counts.items())
    print(f"\n{rows_text(total, 'needs', 'need')} attention ({kinds}):")
    for row in shown:
        print(
            f"  row {row['row_number']}: {row['vendor'] or '(no vendor)'} invoice {row['invoice_id'] or '(none)'}"
            f" ({row['decision'] or 'no decision'}): {row['error_code']}: {row['error_message']}"
        )
    where = summary.needs_attention_path or f"{summary.csv_path} (outcome failed or rejected)"
    if total > len(shown):
        print(f"  … and {total - len(shown):,} more; all of them are in {where}")
    if summary.needs_attention_path:
        print(f"  fix them in {summary.needs_attention_path} and run it, or drop it into the inbox")


def validate_command(path: str, show: int, *, sheet: str | None = None) -> int:
    """Read, validate and plan FILE (a workbook's `sheet`); list the rows that would not be sent."""
    import numpy as np
    import pandas as pd

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
    ids = ["(none)" if pd.isna(i) else str(i) for i in frame["invoice_id"].iloc[rejected[:show]]]
    skipped = int(np.count_nonzero(plan_.outcome == "skipped"))
    where = f"{path} (sheet '{decisions.sheet}', rows as Excel numbers them)" if decisions.sheet else path
    print(
        f"{where}: {len(frame)} rows, {plan_.send_count} would be sent, {len(held)} rejected, {skipped} skipped as duplicates"
    )
    if held and show and not decisions.sheet:  # a workbook's rows are as Excel numbers them (said above)
        print("row numbers count data rows (row 1 is the first row under the header, spreadsheet row 2):")
    for (row, message), invoice_id in zip(held[:show], ids[:show], strict=False):
        print(f"  row {row} (invoice {invoice_id}): {message}")
    if len(held) > show:
        print(f"  … and {len(held) - show} more")
    return EXIT_OK if not held else EXIT_ROWS_NOT_DONE


def secrets_command(action: str, vendors: list[str] | None = None) -> int:
    """`invoice-sync secrets push|list`: exit 0, or 2 when no Prefect server is set or it cannot be reached.

    Secret blocks belong to the Prefect server the workers use: without PREFECT_API_URL (or a
    profile naming one) `push` refuses rather than write into a temporary API of this machine,
    and `list` shows the environment only.
    """
    from prefect.settings import get_current_settings

    from flows.orchestration.secrets import block_name, push_secrets, read_secret_blocks, setting_names
    from flows.pipeline.files import one_line

    api_url = get_current_settings().api.url
    if not api_url and action == "push":
        print(
            "invoice-sync: secrets push saves Secret blocks on the Prefect server the workers use, and no "
            "PREFECT_API_URL is set: nothing saved. Set it first, e.g. "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api (the server of `make server`)",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    names = setting_names(vendors)
    try:
        if action == "push":
            saved, skipped = push_secrets(vendors)
            print(f"Prefect server: {api_url}")
            for name in saved:
                print(f"saved Secret block {name}")
            if skipped:
                print(f"not set in this environment, not saved: {', '.join(skipped)}")
            if not saved:
                print("nothing saved: no vendor setting is set in this environment")
            return EXIT_OK
        blocks = read_secret_blocks(names) if api_url else {}
    except Exception as error:
        print(f"invoice-sync: cannot reach the Prefect API at {api_url}: {one_line(error, 300)}", file=sys.stderr)
        return EXIT_UNUSABLE
    if not api_url:
        print(
            "no PREFECT_API_URL set: Secret blocks not read (set it to the server's API to see them)", file=sys.stderr
        )
    width = max(len(n) for n in names)
    print(f"{'setting':<{width}}  {'environment':<11}  block")
    for name in names:
        in_env = "set" if os.environ.get(name, "").strip() else "-"
        in_block = block_name(name) if name in blocks else ("-" if api_url else "?")
        print(f"{name:<{width}}  {in_env:<11}  {in_block}")
    return EXIT_OK


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
