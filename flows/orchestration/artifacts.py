"""What a finished run shows in the Prefect UI: outcomes per vendor, and what ran where."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.pipeline.results import RunSummary


def publish(summary: RunSummary) -> None:
    """Table and markdown artifacts for the Prefect UI."""
    rows = [
        {
            "vendor": v,
            **counts,
            "top errors": ", ".join(f"{c} ({n})" for c, n in summary.top_errors.get(v, [])),
            **({"vendors say": summary.checks_text(v)} if summary.checks else {}),
        }
        for v, counts in summary.by_vendor.items()
    ]
    create_table_artifact(rows, key="invoice-sync-outcomes", description="Outcomes per vendor")
    create_markdown_artifact(
        "\n".join(
            [
                f"# invoice-sync run {summary.run_id}",
                f"- file: `{summary.source}`",
                *_audit_lines(summary),
                f"- rows: {summary.rows} ({summary.counts_text()})"
                + (" — dry run, nothing sent" if summary.dry_run else ""),
                *([f"- the vendors say: {summary.checks_text()}"] if summary.checks else []),
                f"- took: {summary.seconds:.1f} s",
                f"- results: `{summary.results_path}` (and `{summary.csv_path}`)",
                (
                    f"- workbook for people: `{summary.workbook_path}`"
                    if summary.workbook_path
                    else f"- no results.xlsx: {summary.no_workbook_because}"
                ),
                *(
                    [
                        f"- **needs attention: {summary.needs_attention_rows} rows** (rejected, or refused by the "
                        f"vendor: fix them and drop the file into the inbox): "
                        + " and ".join(f"`{p}`" for p in summary.needs_attention_paths)
                    ]
                    if summary.needs_attention_rows
                    else []
                ),
                *(
                    [f"- validation report (Great Expectations Data Docs): `{summary.extra['validation_report']}`"]
                    if summary.extra.get("validation_report")
                    else []
                ),
            ]
        ),
        key="invoice-sync-run",
        description="What ran",
    )


def _audit_lines(summary: RunSummary) -> list[str]:
    """The audit trail's facts of the run (flows/orchestration/audit_trail.py): file hash, who, chain head."""
    extra = summary.extra
    lines = [f"- file SHA-256: `{extra['source_sha256']}`"] if extra.get("source_sha256") else []
    lines += [
        f"- submitted by: {extra.get('submitted_by') or '(not given)'}; started by: {extra.get('started_by', '')}"
    ]
    if extra.get("audit_chain_head"):
        lines.append(f"- audit chain head: `{extra['audit_chain_head']}` (`invoice-sync audit verify`)")
    return lines if extra.get("started_by") else []
