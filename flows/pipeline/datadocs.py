"""The validation result as one standalone Great Expectations Data Docs page.

GX's own renderer classes build the page (the same ones a Data Docs site builder uses),
without a data context, a site or any store. The page needs no network and no other file.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from pathlib import Path
from typing import Any

from flows.pipeline.files import atomic_write
from flows.pipeline.reader import ROW_NUMBER
from flows.pipeline.validation import ValidationReport, gx_quietly

DATA_DOCS_FILE = "validation.html"

# GX's page links Bootstrap, jQuery, fonts and its logo from public CDNs and links back into a
# Data Docs site that does not exist here. The report is made standalone instead: external
# resources and scripts are dropped (opening it fetches nothing) and this small stylesheet
# stands in for the Bootstrap classes the page uses (GX's own styles are inlined already).
_DATA_DOCS_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;font-size:14px;color:#212529;margin:0}
.navbar{display:flex;align-items:center;padding:0 1.5rem;border-bottom:1px solid #dee2e6;height:auto!important}
.ge-breadcrumbs{list-style:none;display:flex;margin:.75rem 0;padding:0}
.container-fluid{padding:1rem 2rem}
.row{display:flex;flex-wrap:wrap}
.col-lg-2{flex:0 0 16%;max-width:16%}.col-md-10,.col-lg-10{flex:1 1 0;min-width:0}
.col-12{flex:0 0 100%;max-width:100%}.col-6{flex:0 0 50%;max-width:50%}
.sticky{position:sticky;top:1rem}
.nav{list-style:none;padding:0;margin:0}.nav-link{display:block;padding:.2rem .4rem;text-decoration:none}
.card{border:1px solid #dee2e6;border-radius:.25rem;margin-bottom:1rem}
.card-header{background:#f7f7f9;border-bottom:1px solid #dee2e6;padding:.5rem}.card-body{padding:.75rem}
table{border-collapse:collapse;margin:.5rem 0}
.table{width:100%}
th,td{border:1px solid #dee2e6;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f1f3f5}
.badge{display:inline-block;padding:.15em .45em;border-radius:.25rem;background:#6c757d;color:#fff;font-size:85%}
.alert{padding:.5rem .75rem;border:1px solid #d6d8db;background:#e2e3e5;border-radius:.25rem}
.text-danger{color:#dc3545}.text-success{color:#28a745}
.fa-check-circle:before{content:"\\2714"}.fa-times:before{content:"\\2718"}
.btn-group,.d-none,.ge-walkthrough-modal{display:none!important}
.ge-standalone-note{color:#6c757d;margin:.5rem 2rem}
"""
_EXTERNAL_LINK = re.compile(r"<link\b[^>]*\bhref=\"https?://[^\"]*\"[^>]*>\s*", re.IGNORECASE)
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>\s*", re.IGNORECASE | re.DOTALL)
_EXTERNAL_IMG = re.compile(r"<img\b[^>]*\bsrc=\"https?://[^\"]*\"[^>]*/?>", re.IGNORECASE | re.DOTALL)
_SITE_LINK = re.compile(r"(href|src)=\"(?:\.\./)+[^\"]*\"", re.IGNORECASE)
_CSS_URL = re.compile(r"url\(\s*['\"]?https?://[^)]*\)", re.IGNORECASE)
_FOOTER = re.compile(r"<footer\b.*?</footer>\s*", re.IGNORECASE | re.DOTALL)  # GX's newsletter box


def write_data_docs(report: ValidationReport, out_dir: str | os.PathLike, *, source: str | None = None) -> Path:
    """Render the validation result as `out_dir/validation.html`, written atomically."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gx_quietly()
        from great_expectations.render.renderer import ValidationResultsPageRenderer
        from great_expectations.render.view import DefaultJinjaPageView

        document = ValidationResultsPageRenderer().render(_by_row_number(report.result))
        html = DefaultJinjaPageView().render(document)
    html = _standalone(html, source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / DATA_DOCS_FILE
    atomic_write(target, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    return target


def _by_row_number(result: Any) -> Any:
    """The result with its failing rows under a `row_number` heading instead of GX's "Index".

    The validation ran on a frame indexed by row_number, so GX listed the failing rows by their
    row numbers already; this puts them in the shape GX gives for unexpected_index_column_names
    (one {column: value, "row_number": n} per row), which its renderer heads with the column's
    name. Copies: the report's own result is left as GX made it.
    """
    relabelled = copy.copy(result)
    relabelled.results = []
    for outcome in result.results:
        found = outcome.result or {}
        column = (outcome.expectation_config.kwargs or {}).get("column")
        rows, values = found.get("unexpected_index_list"), found.get("unexpected_list")
        if isinstance(column, str) and rows and values is not None and len(rows) == len(values):
            outcome = copy.copy(outcome)
            outcome.result = {
                **found,
                "unexpected_index_list": [{column: v, ROW_NUMBER: r} for v, r in zip(values, rows, strict=True)],
                "unexpected_index_column_names": [ROW_NUMBER],
            }
        relabelled.results.append(outcome)
    return relabelled


def _standalone(html: str, source: str | None) -> str:
    """Drop CDN resources, scripts and links into a missing site; add the fallback styles."""
    html = _SCRIPT.sub("", html)
    html = _EXTERNAL_LINK.sub("", html)
    html = _EXTERNAL_IMG.sub("", html)
    html = _FOOTER.sub("", html)
    html = _CSS_URL.sub("none", html)
    html = _SITE_LINK.sub(lambda m: f'{m.group(1)}="#"', html)
    title = "invoice-sync validation" + (f": {source}" if source else "")
    html = html.replace("<title>Data documentation compiled by Great Expectations</title>", "", 1)
    html = html.replace("<title></title>", f"<title>{_escape(title)}</title>", 1)
    html = html.replace("</head>", f"<style>{_DATA_DOCS_STYLE}</style>\n</head>", 1)
    note = (
        f'<p class="ge-standalone-note">{_escape(title)} — Great Expectations validation result, '
        "rendered standalone by invoice-sync.</p>"
    )
    return html.replace("<body>", "<body>\n" + note, 1)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
