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
                *([f"- **{summary.quota_text()}**"] if summary.quota_exhausted else []),
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
