"""`invoice-sync`: run a decision file, validate one, serve the sandbox, or run the demo.

Exit codes: 0 every row succeeded or was skipped; 1 the run finished but some rows failed or
were rejected; 2 nothing was sent because the file itself (or the command line) is unusable.
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
    run.add_argument("file", help="decision file (.csv or .parquet)")
    run.add_argument("--out", default="data/results", help="results folder (default: data/results)")
    run.add_argument("--dry-run", action="store_true", help="read, validate and plan; send nothing")
    run.add_argument("--vendors", help="comma-separated vendors to include (default: all)")
    run.add_argument("--chunk-size", type=int, default=None, help="decisions per Prefect task")
    run.add_argument(
        "--retry-failed", action="store_true", help="send again the decisions an earlier run saw fail permanently"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    validate = sub.add_parser("validate", help="check FILE without sending anything")
    validate.add_argument("file")
    validate.add_argument("--show", type=int, default=20, help="rejected rows to list (default 20)")

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
    if args.command == "validate":
        return validate_command(args.file, args.show)
    if args.command == "demo":
        return demo_command(args.out)
    from connectors.registry import UnknownVendor, parse_vendors

    try:
        vendors = parse_vendors(args.vendors)
    except UnknownVendor as error:
        print(f"invoice-sync: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.command == "secrets":
        return secrets_command(args.action, vendors)
    return run_command(
        args.file,
        args.out,
        dry_run=args.dry_run,
        vendors=vendors,
        chunk_size=args.chunk_size,
        retry_failed=args.retry_failed,
        show_progress=False if args.no_progress else None,
    )


def run_command(
    path: str,
    out: str,
    *,
    dry_run: bool = False,
    vendors: list[str] | None = None,
    chunk_size: int | None = None,
    retry_failed: bool = False,
    show_progress: bool | None = None,
) -> int:
    """Run the flow on one file and print what happened."""
    from connectors.redact import install_log_redaction
    from flows.orchestration.temporary_server import PrefectServerError, prefect_api

    try:
        with prefect_api() as wait_for_api:  # Prefect's temporary server, if it needs one, boots from here on
            from flows.orchestration.final_states import detail_of
            from flows.orchestration.sync import DEFAULT_CHUNK_SIZE, NOTHING_SENT_STATES, sync_decisions

            if wait_for_api:
                _import_great_expectations()
                wait_for_api()
            install_log_redaction()
            state = sync_decisions(
                path,
                out_dir=out,
                dry_run=dry_run,
                vendors=vendors,
                chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
                retry_failed=retry_failed,
                show_progress=show_progress,
                return_state=True,
            )
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
    print_summary(summary)
    return EXIT_OK if summary.all_done else EXIT_ROWS_NOT_DONE


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
    print_needs_attention(summary)
    for position, note in enumerate(summary.notes()):
        print(("\n" if position == 0 else "") + note.replace("`", ""))
    print()
    files = [("results", summary.results_path), ("spreadsheet copy", summary.csv_path)]
    files += [("needs attention", summary.needs_attention_path)]
    files += [("validation report", summary.extra.get("validation_report"))]
    for label, path in files:
        if path:
            print(f"{label + ':':<19} {path}")


def print_needs_attention(summary: RunSummary) -> None:
    from flows.pipeline.results import rows_text

    total = summary.needs_attention_count
    if not total:
        return
    shown = summary.needs_attention[:NEEDS_ATTENTION_SHOWN]
    kinds = ", ".join(f"{summary.counts[o]:,} {o}" for o in ("failed", "rejected") if summary.counts.get(o))
    print(f"\n{rows_text(total, 'needs', 'need')} attention ({kinds}):")
    for row in shown:
        print(
            f"  row {row['row_number']}: {row['vendor'] or '(no vendor)'} invoice {row['invoice_id'] or '(none)'}"
            f" ({row['decision'] or 'no decision'}): {row['error_code']}: {row['error_message']}"
        )
    where = summary.needs_attention_path or f"{summary.csv_path} (outcome failed or rejected)"
    if total > len(shown):
        print(f"  … and {total - len(shown):,} more; all of them are in {where}")


def validate_command(path: str, show: int) -> int:
    """Read, validate and plan FILE; list the rows that would not be sent."""
    import numpy as np
    import pandas as pd

    from flows.pipeline.planning import plan_rows
    from flows.pipeline.reader import UnusableFile, read_decisions
    from flows.pipeline.validation import SuiteError, ValidationError, validate_decisions

    try:
        frame = read_decisions(path)
    except UnusableFile as exc:
        print(f"invoice-sync: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        report = validate_decisions(frame)
    except (SuiteError, ValidationError) as exc:
        print(f"invoice-sync: validation could not run: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    plan_ = plan_rows(frame, report.row_errors)
    rejected = np.flatnonzero(plan_.outcome == "rejected")
    held = list(zip(frame["row_number"].to_numpy()[rejected].tolist(), plan_.error_message[rejected], strict=True))
    ids = ["(none)" if pd.isna(i) else str(i) for i in frame["invoice_id"].iloc[rejected[:show]]]
    skipped = int(np.count_nonzero(plan_.outcome == "skipped"))
    print(
        f"{path}: {len(frame)} rows, {plan_.send_count} would be sent, {len(held)} rejected, {skipped} skipped as duplicates"
    )
    if held and show:
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
