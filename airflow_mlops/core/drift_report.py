"""The drift report's HTML: Evidently's page made safe to open, with a note on the sampling.

Evidently 0.7 embeds the data and the column names in a ``<script>`` block without escaping
``</script>``; :func:`sanitize_report_html` escapes ``<``, ``>`` and ``&`` inside that block so
no value can end it, and fails closed on a layout it does not know.
:func:`finalize_report_html` adds :func:`sampling_banner` (what the report was computed on)
at the top; :func:`no_report_html` is the page when Evidently had no column to test.
:func:`evidently_version` names the Evidently that made a report. No pandas or Evidently
import at module level (Evidently only to read its version): it works on the HTML text.
:mod:`airflow_mlops.core.drift` computes the drift and calls these.
"""

from __future__ import annotations

import html as html_lib
import json
import re
from collections.abc import Mapping
from typing import Any

from airflow_mlops.core.errors import MlopsError

__all__ = [
    "evidently_version",
    "finalize_report_html",
    "no_report_html",
    "sampling_banner",
    "sanitize_report_html",
]

_DRAW_CALL = re.compile(r"window\.drawDashboard\((metric_[0-9a-f]{32}),")
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


def sanitize_report_html(report_html: str) -> str:
    """Escape ``<``, ``>`` and ``&`` inside Evidently's embedded data ``<script>`` block.

    Evidently 0.7 writes ``var metric_<uuid> = {json};`` and the additional graphs as raw
    ``json.dumps`` output inside ``<script>``; a column name or value holding
    ``</script>`` or ``<!--`` would end or confuse that block. In JSON those characters
    only occur inside strings, where ``\\u003c`` is the same character to JavaScript: the
    report shows the original text and the HTML parser never sees a tag. The block is
    located by the dashboard id (a random uuid, which data cannot forge). An unexpected
    layout raises instead of writing unsafe HTML.
    """
    draws = _DRAW_CALL.findall(report_html)
    if not draws:
        raise MlopsError("Cannot sanitise the Evidently report: its dashboard call was not found.")
    dashboard_id = draws[-1]
    start_marker = f"<script>\n    var {dashboard_id} = "
    graphs_marker = f";\n    var additional_graphs_{dashboard_id} = "
    start = report_html.find(start_marker)
    graphs = report_html.find(graphs_marker, start)
    # json.dumps never emits a raw newline, so the first "\n</script>" after the second
    # variable is the real end of the block.
    end = report_html.find(";\n</script>", graphs)
    if start < 0 or graphs < 0 or end < 0:
        raise MlopsError(
            "Cannot sanitise the Evidently report: its data block has an unexpected layout "
            f"(evidently {evidently_version()})."
        )
    body_start = start + len("<script>")
    block = report_html[body_start:end]
    escaped = re.sub(r"[<>&]", lambda m: _SCRIPT_ESCAPES[m.group(0)], block)
    return report_html[:body_start] + escaped + report_html[end:]


def sampling_banner(summary: Mapping[str, Any]) -> str:
    """A short, escaped HTML note stating what the report was computed on."""
    sampling = summary["sampling"]
    parts = []
    for side in ("reference", "current"):
        s = sampling[side]
        if s["sampled"]:
            parts.append(
                f"{side}: {s['method']} sample of {s['sampled_rows']:,} of {s['rows']:,} rows"
            )
        else:
            parts.append(f"{side}: all {s['rows']:,} rows")
    policy = sampling["policy"]
    text = (
        "; ".join(parts)
        + f" (seed {policy['seed']}, cap {policy['max_rows_per_side']:,} rows per side"
        + (f", stratified by {policy['stratify_by']}" if policy.get("stratify_by") else "")
        + ")."
    )
    not_tested = summary.get("not_tested_columns") or {}
    missing = [n for n, c in summary["columns"].items() if c["outcome"] == "missing_one_side"]
    if missing:
        text += f" Drifted without a test (all values missing on one side): {missing}."
    if not_tested:
        text += f" Not tested: {dict(not_tested)}."
    return (
        '<div style="font-family:sans-serif;padding:8px 16px;background:#fff8e1;'
        'border-bottom:1px solid #e0c068">airflow-mlops drift report. '
        f"{html_lib.escape(text)}</div>"
    )


def finalize_report_html(report_html: str, summary: Mapping[str, Any]) -> str:
    """Sanitised Evidently HTML with the sampling banner at the top of the body."""
    safe = sanitize_report_html(report_html)
    marker = "<body>"
    at = safe.find(marker)
    if at < 0:
        raise MlopsError("Cannot place the sampling note: the report has no <body>.")
    at += len(marker)
    return safe[:at] + "\n" + sampling_banner(summary) + safe[at:]


def no_report_html(summary: Mapping[str, Any]) -> str:
    """The page when Evidently had nothing to run on (every testable column is missing on
    one side): the sampling note and the dataset verdict."""
    body = html_lib.escape(json.dumps(summary["dataset"]))
    return (
        "<!DOCTYPE html><html><head><meta charset='UTF-8'></head><body>"
        + sampling_banner(summary)
        + f"<pre>{body}</pre></body></html>"
    )


def evidently_version() -> str:
    """The installed Evidently's version; imports Evidently (seconds) on first use."""
    from evidently import __version__

    return str(__version__)
