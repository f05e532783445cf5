"""What a finished run shows in the Prefect UI: what ran where, the rows that need a person, outcomes per vendor."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.pipeline.results import NEEDS_ATTENTION_LISTED, RunSummary, outcome_label, rows_text

OUTCOMES_KEY = "invoice-sync-outcomes"
NEEDS_ATTENTION_KEY = "invoice-sync-needs-attention"
RUN_KEY = "invoice-sync-run"


def publish(summary: RunSummary) -> None:
    """Markdown, needs-attention and per-vendor table artifacts for the Prefect UI."""
    create_markdown_artifact(run_markdown(summary), key=RUN_KEY, description=f"What ran: {summary.file_name}")
    if summary.needs_attention:
        create_table_artifact(
            needs_attention_rows(summary), key=NEEDS_ATTENTION_KEY, description=needs_attention_title(summary)
        )
    create_table_artifact(outcome_rows(summary), key=OUTCOMES_KEY, description="Outcomes per vendor")


def outcome_rows(summary: RunSummary) -> list[dict[str, object]]:
    """One row per vendor and a total: the outcomes, then one column per error code (short cells)."""
    codes = list(summary.codes)  # most frequent first
    rows: list[dict[str, object]] = []
    for vendor, counts in summary.by_vendor.items():
        by_code = summary.codes_by_vendor.get(vendor, {})
        rows.append(
            {
                "vendor": vendor,
                **{outcome_label(o): n for o, n in counts.items()},
                **{c: by_code.get(c, 0) for c in codes},
                **({"vendors say": summary.checks_text(vendor)} if summary.checks else {}),
            }
        )
    total: dict[str, object] = {"vendor": "total", **{outcome_label(o): n for o, n in summary.counts.items()}}
    rows.append({**total, **summary.codes, **({"vendors say": summary.checks_text()} if summary.checks else {})})
    return rows


def needs_attention_title(summary: RunSummary) -> str:
    total, listed = summary.needs_attention_count, len(summary.needs_attention)
    more = f"; the first {listed} of {total:,} are listed, all are in the results" if total > listed else ""
    return f"Rows that need attention (to fix or decide): {total:,}{more}"


def needs_attention_rows(summary: RunSummary) -> list[dict[str, object]]:
    """The first rows that failed or were rejected, with what a person needs to act on them."""
    return [
        {
            "row": r["row_number"],
            "invoice_id": r["invoice_id"],
            "vendor": r["vendor"],
            "decision": r["decision"],
            "outcome": r["outcome"],
            "error_code": r["error_code"],
            "message": r["error_message"],
        }
        for r in summary.needs_attention
    ]


def run_markdown(summary: RunSummary) -> str:
    """The run's card: the file, the counts, what needs a person, and where everything is."""
    counts = {outcome_label(o): n for o, n in summary.counts.items()}
    lines = [
        f"# {summary.file_name}",
        "",
        f"invoice-sync {'dry run (nothing sent)' if summary.dry_run else 'run'}, finished "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {summary.rows:,} rows in {summary.seconds:.1f} s",
        "",
        "| " + " | ".join(counts) + " |",
        "|" + "---|" * len(counts),
        "| " + " | ".join(f"{n:,}" for n in counts.values()) + " |",
        "",
    ]
    for line in notes(summary):
        lines.append(f"- {line}")
    lines += [
        "",
        f"- file: `{summary.source}`",
        *_audit_lines(summary),
        f"- results: `{summary.results_path}` (spreadsheet copy: `{summary.csv_path}`)",
    ]
    if summary.workbook_path:
        lines.append(f"- workbook for people: `{summary.workbook_path}`")
    elif summary.no_workbook_because:
        lines.append(f"- no results.xlsx: {summary.no_workbook_because}")
    if summary.needs_attention_paths:
        lines.append(
            "- rows that need attention, to fix and drop into the inbox: "
            + " and ".join(f"`{p}`" for p in summary.needs_attention_paths)
        )
    if summary.extra.get("validation_report"):
        lines.append(f"- validation report (Great Expectations Data Docs): `{summary.extra['validation_report']}`")
    lines.append(f"- flow run id: `{summary.run_id}`")
    return "\n".join(lines)


def notes(summary: RunSummary) -> list[str]:
    """What a person should know beyond the counts: needs attention, already done, already in that state."""
    said: list[str] = []
    if summary.stopped_by:
        said.append(f"**{summary.stop_text()}**: run the file again to send the rest.")
    if summary.checks:
        said.append(f"Preview: the vendors say: {summary.checks_text()}.")
    total = summary.needs_attention_count
    if total:
        where = (
            f"`{summary.needs_attention_path}`"
            if summary.needs_attention_path
            else "the results (outcome `failed` or `rejected`)"
        )
        listed = (
            f" The first {min(total, NEEDS_ATTENTION_LISTED)} are in the table *Rows that need attention*."
            if summary.needs_attention
            else ""
        )
        said.append(
            f"**{rows_text(total, 'needs', 'need')} attention** (to fix or decide): all of them in {where}.{listed}"
        )
    else:
        said.append("No row needs attention.")
    said += summary.notes()
    return said


def _audit_lines(summary: RunSummary) -> list[str]:
    """The audit trail's facts of the run (flows/orchestration/audit_trail.py): file hash, who, chain head."""
    extra = summary.extra
    if not extra.get("started_by"):
        return []
    lines = [f"- file SHA-256: `{extra['source_sha256']}`"] if extra.get("source_sha256") else []
    lines.append(f"- submitted by: {extra.get('submitted_by') or '(not given)'}; started by: {extra['started_by']}")
    if extra.get("audit_chain_head"):
        lines.append(f"- audit chain head: `{extra['audit_chain_head']}` (`invoice-sync audit verify`)")
    return lines
