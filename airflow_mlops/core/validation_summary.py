"""The summary of a GX validation result and the failure message built from it.

:func:`summarize` turns a GX result into bounded JSON for XCom (counts and at most
:data:`MAX_FAILURES_IN_SUMMARY` failures, each with a few sample values, never the data, the
whole within :data:`SUMMARY_BUDGET_BYTES`); :func:`failure_lines` and :func:`failure_message`
make it one readable line per failed expectation, for the task log and
:class:`~airflow_mlops.core.errors.DataValidationFailed`. No GX import at module level: it
reads GX's result JSON, not GX objects. Running GX is :mod:`airflow_mlops.core.validation`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from airflow_mlops.core.jsonsafe import _truncate_text, json_safe

__all__ = [
    "MAX_FAILURES_IN_SUMMARY",
    "MAX_SAMPLE_VALUES",
    "SUMMARY_BUDGET_BYTES",
    "SUMMARY_SCHEMA_VERSION",
    "failure_lines",
    "failure_message",
    "summarize",
    "summary_json",
]

SUMMARY_SCHEMA_VERSION = 1

#: Bounds that keep the XCom summary small whatever the data or the suite look like.
MAX_FAILURES_IN_SUMMARY = 20
MAX_SAMPLE_VALUES = 5
SUMMARY_BUDGET_BYTES = 32_000

# kwargs that describe how GX runs rather than what is expected: left out of summaries.
_RUNTIME_KWARGS = frozenset(
    {"batch_id", "column", "result_format", "catch_exceptions", "include_config", "row_condition"}
)


def _exception_messages(exception_info: Any) -> list[str]:
    """GX puts one ``exception_info`` per metric (keyed by metric id) or one flat dict."""
    if not isinstance(exception_info, Mapping):
        return []
    if "raised_exception" in exception_info:
        infos: Iterable[Any] = [exception_info]
    else:
        infos = exception_info.values()
    messages = []
    for info in infos:
        if isinstance(info, Mapping) and info.get("raised_exception"):
            text = str(info.get("exception_message") or "GX raised an exception")
            message = " ".join(text.split())  # one line per failure, whatever GX wrote
            message = message.removeprefix("Error: ")  # GX's own prefix; we say "error:"
            if message not in messages:
                messages.append(message)
    return messages


def _distinct_samples(details: Mapping[str, Any]) -> list[Any]:
    """A few distinct unexpected values, most frequent first when GX counted them."""
    counted = details.get("partial_unexpected_counts")
    if counted:
        values = [item.get("value") for item in counted if isinstance(item, Mapping)]
    else:
        values = list(
            details.get("partial_unexpected_list") or details.get("unexpected_list") or []
        )
    distinct: list[Any] = []
    for value in values:
        if value not in distinct:
            distinct.append(value)
        if len(distinct) == MAX_SAMPLE_VALUES:
            break
    return distinct


def _failure_column(kwargs: Mapping[str, Any]) -> Any:
    if "column" in kwargs:
        return kwargs["column"]
    if "column_list" in kwargs:
        return list(kwargs["column_list"])
    pair = [kwargs[k] for k in ("column_A", "column_B") if k in kwargs]
    return pair or None


def _failure_entry(result: Mapping[str, Any]) -> dict[str, Any]:
    config = result.get("expectation_config") or {}
    kwargs = config.get("kwargs") or {}
    details = result.get("result") or {}
    errors = _exception_messages(result.get("exception_info"))
    samples = _distinct_samples(details)
    return {
        "expectation": config.get("type"),
        "column": json_safe(_failure_column(kwargs), bounded=True),
        "expected": json_safe(
            {k: v for k, v in kwargs.items() if k not in _RUNTIME_KWARGS}, bounded=True
        ),
        "observed": json_safe(details.get("observed_value"), bounded=True),
        "unexpected_count": json_safe(details.get("unexpected_count")),
        "unexpected_percent": json_safe(details.get("unexpected_percent")),
        "sample_values": json_safe(samples, bounded=True),
        "details": json_safe(details.get("details"), bounded=True),
        "error": _truncate_text("; ".join(errors), 500) if errors else None,
    }


def summarize(
    result: Mapping[str, Any],
    *,
    row_count: int,
    column_count: int,
    data_uri: str | None = None,
    data_sha256: str | None = None,
    report_uri: str | None = None,
    extra_failures: Sequence[Mapping[str, Any]] = (),
    data_columns: Collection[Any] | None = None,
    max_failures: int = MAX_FAILURES_IN_SUMMARY,
    budget_bytes: int = SUMMARY_BUDGET_BYTES,
) -> dict[str, Any]:
    """The small JSON summary of a GX result (for XCom): counts, failures, never the data.

    At most ``max_failures`` failures are listed (the rest are counted in
    ``failures_not_listed``), each with at most MAX_SAMPLE_VALUES sample values; if the JSON
    still exceeds ``budget_bytes``, failures are dropped from the end until it fits. With
    ``data_columns``, an expectation on a column the data lacks says so plainly (GX's own
    errors for that case range from clear to "list index out of range").
    """
    from great_expectations import __version__ as gx_version  # loaded already: GX made result

    gx_failures = [_failure_entry(r) for r in result.get("results", []) if not r.get("success")]
    if data_columns is not None:
        present = set(data_columns)
        for failure in gx_failures:
            column = failure["column"]
            if isinstance(column, str) and column not in present:
                failure["error"] = f"column {_quote(column)} is not in the data"
    failures = [*[dict(f) for f in extra_failures], *gx_failures]
    statistics = result.get("statistics") or {}
    evaluated = int(statistics.get("evaluated_expectations") or 0) + len(extra_failures)
    listed = failures[:max_failures]
    summary: dict[str, Any] = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "success": bool(result.get("success")) and not extra_failures,
        "suite_name": json_safe(result.get("suite_name"), bounded=True),
        "data_uri": data_uri,
        "data_sha256": data_sha256,
        "row_count": int(row_count),
        "column_count": int(column_count),
        "evaluated_expectations": evaluated,
        "successful_expectations": evaluated - len(failures),
        "failed_expectations": len(failures),
        "failures": listed,
        "failures_not_listed": len(failures) - len(listed),
        "report_uri": report_uri,
        "great_expectations_version": gx_version,
    }
    while len(summary_json(summary).encode()) > budget_bytes and summary["failures"]:
        summary["failures"].pop()
        summary["failures_not_listed"] += 1
    return summary


def summary_json(summary: Mapping[str, Any]) -> str:
    return json.dumps(summary, sort_keys=True, allow_nan=False)


def _quote(value: Any) -> str:
    """Column names may hold spaces, quotes, newlines or markup: JSON-quote them."""
    return json.dumps(value, ensure_ascii=False)


def _describe_expected(expected: Any) -> str:
    if isinstance(expected, Mapping):
        return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in expected.items())
    return json.dumps(expected, ensure_ascii=False)


def _describe_observed(failure: Mapping[str, Any]) -> str:
    if failure.get("error"):
        return f"error: {failure['error']}"
    count = failure.get("unexpected_count")
    if count is not None and failure.get("observed") is None:
        percent = failure.get("unexpected_percent")
        share = f" ({percent:.4g}%)" if isinstance(percent, int | float) else ""
        samples = failure.get("sample_values") or []
        example = f", e.g. {json.dumps(samples, ensure_ascii=False)}" if samples else ""
        return f"{count} unexpected values{share}{example}"
    observed = json.dumps(failure.get("observed"), ensure_ascii=False)
    details = failure.get("details")
    if isinstance(details, Mapping) and isinstance(details.get("mismatched"), Mapping):
        observed += f" (mismatched: {json.dumps(details['mismatched'], ensure_ascii=False)})"
    return observed


def failure_lines(summary: Mapping[str, Any]) -> list[str]:
    """One readable line per listed failure: where, which expectation, expected vs observed."""
    lines = []
    for failure in summary.get("failures", []):
        column = failure.get("column")
        where = "table" if column is None else f"column {_quote(column)}"
        expected = failure.get("expected")
        expected_text = f" expected {_describe_expected(expected)}" if expected else ""
        lines.append(
            f"{where}: {failure.get('expectation')}{expected_text}; "
            f"observed {_describe_observed(failure)}"
        )
    return lines


def failure_message(summary: Mapping[str, Any]) -> str:
    """The message of :class:`DataValidationFailed`: a headline, then one line per failure."""
    failed = summary.get("failed_expectations", 0)
    headline = (
        f"Data validation failed for {summary.get('data_uri') or 'the data'}: {failed} of "
        f"{summary.get('evaluated_expectations', 0)} expectations failed "
        f"(suite {_quote(summary.get('suite_name'))}, {summary.get('row_count')} rows)."
    )
    lines = [headline, *(f"- {line}" for line in failure_lines(summary))]
    hidden = summary.get("failures_not_listed", 0)
    if hidden:
        lines.append(f"- … and {hidden} more failed expectations")
    if summary.get("report_uri"):
        lines.append(f"Full result: {summary['report_uri']}")
    return "\n".join(lines)
