"""Running Great Expectations Core 1.x on a pandas DataFrame: the one call operators make.

:func:`validate_frame` runs a checked suite (:class:`~airflow_mlops.core.suite.SuiteDefinition`)
on an in-memory DataFrame with an ephemeral GX context (nothing written to disk by GX,
analytics and progress bars off), adds the checks GX passes vacuously
(:func:`builtin_failures`) and returns a :class:`ValidationOutcome`: the bounded XCom summary
(:mod:`airflow_mlops.core.validation_summary`) and the full GX result, which the caller writes
to a report URI. :func:`run_suite` hands GX only the columns a suite reads when that provably
gives the same result (:func:`columns_to_validate`). The Airflow operator
(``airflow_mlops.operators.validation``) only reads the data, calls :func:`validate_frame`,
writes the report and applies the failure policy (:func:`check_on_failure`).

Parsing and checking suites is :mod:`airflow_mlops.core.suite`; drafting one from reference
data is :mod:`airflow_mlops.core.suite_inference`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Older GX 1.x releases read this at context creation; 1.24 has no analytics at all. Set it
# before the import so no version of GX 1.x phones home.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.execution_engine.pandas_execution_engine import (
    HASH_THRESHOLD as GX_FINGERPRINT_MAX_BYTES,
)
from great_expectations.execution_engine.pandas_execution_engine import (
    hash_pandas_dataframe as gx_data_fingerprint,
)
from great_expectations.expectations.expectation_configuration import (
    ExpectationConfiguration,
)
from great_expectations.expectations.registry import get_expectation_impl

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.jsonsafe import json_safe
from airflow_mlops.core.suite import SuiteDefinition, check_result_format
from airflow_mlops.core.validation_summary import failure_message, summarize

__all__ = [
    "BUILTIN_COLUMN_NOT_ALL_NULL",
    "BUILTIN_TABLE_NOT_EMPTY",
    "ValidationOutcome",
    "builtin_failures",
    "columns_to_validate",
    "quiet_great_expectations",
    "run_suite",
    "validate_frame",
]

log = logging.getLogger(__name__)


#: Names of the two checks airflow_mlops adds to every suite (see :func:`builtin_failures`).
BUILTIN_TABLE_NOT_EMPTY = "airflow_mlops.table_not_empty"
BUILTIN_COLUMN_NOT_ALL_NULL = "airflow_mlops.column_not_all_null"

_DATASOURCE = "airflow_mlops"
_ASSET = "frame"
_BATCH = "whole_frame"


# --------------------------------------------------------------------------------------
# Running GX
# --------------------------------------------------------------------------------------
def _build_gx_suite(suite: SuiteDefinition, name: str | None = None) -> gx.ExpectationSuite:
    expectations = [
        ExpectationConfiguration(type=e["type"], kwargs=e["kwargs"], meta=e["meta"]).to_domain_obj()
        for e in suite.expectations
    ]
    gx_suite = gx.ExpectationSuite(name=name or suite.name, expectations=expectations)
    # GX logs and drops expectations it cannot add; a smaller suite would fail open.
    if len(gx_suite.expectations) != len(expectations):
        raise ConfigError(
            f"Suite {suite.name!r}: GX accepted {len(gx_suite.expectations)} of "
            f"{len(expectations)} expectations."
        )
    return gx_suite


def quiet_great_expectations() -> None:
    """GX logs every registered function at INFO; keep task logs readable."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def _ephemeral_context() -> Any:
    config = DataContextConfig(
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


# --------------------------------------------------------------------------------------
# Validating only the columns a suite reads
# --------------------------------------------------------------------------------------
# GX's pandas engine works on the whole frame for many metric domains (``dropna`` over the
# frame, copies), so a validation costs expectations x frame width, not expectations alone
# (docs/operators/validation.md#performance has the figures). When every expectation provably reads only the columns it names (plus the row count), GX gets just
# those columns and the results are the same.

#: Families of GX expectations whose domain is the column(s) named in their kwargs.
_COLUMN_SCOPED_PREFIXES = (
    "expect_column_",
    "expect_multicolumn_",
    "expect_compound_columns_",
    "expect_select_column_values_",
    "expect_column_pair_",
)
#: Table expectations that only count rows: selecting columns keeps every row.
_ROW_COUNT_TYPES = frozenset(
    {"expect_table_row_count_to_be_between", "expect_table_row_count_to_equal"}
)
#: Kwargs that name the columns an expectation reads.
_COLUMN_KWARGS = ("column", "column_A", "column_B")
_COLUMN_LIST_KWARG = "column_list"
#: Kwargs of GX's own column and row-count expectations that carry expected values or run
#: options, never a column name. Anything else (``row_condition``, ``column_index`` of
#: expect_column_to_exist, ``windows``, a dict ``result_format`` that may name index
#: columns, ...) means "validate the whole frame": an unknown kwarg costs speed, not truth.
_VALUE_KWARGS = frozenset(
    {
        *("batch_id", "catch_exceptions", "condition_parser", "mostly"),
        *("min_value", "max_value", "strict_min", "strict_max", "value", "value_set"),
        *("value_pairs_set", "type_", "type_list", "regex", "regex_list", "match_on"),
        *("like_pattern", "like_pattern_list", "escape", "strftime_format", "json_schema"),
        *("strictly", "ignore_row_if", "or_equal", "sum_total", "ties_okay", "threshold"),
        *("double_sided", "method", "multiplier", "quantile_ranges", "allow_relative_error"),
        *("partition_object", "bucketize_data", "internal_weight_holdout"),
        "tail_weight_holdout",
    }
)
_GX_CORE_MODULE = "great_expectations.expectations.core."


def _is_core_gx_expectation(etype: str) -> bool:
    """A type implemented by GX itself: a custom expectation may read any column it likes."""
    try:
        implementation = get_expectation_impl(etype)
    except gx.exceptions.ExpectationNotFoundError:
        return False
    return implementation.__module__.startswith(_GX_CORE_MODULE)


def _columns_read_by(expectation: Mapping[str, Any]) -> list[str] | None:
    """The columns one expectation reads, or None when that cannot be proven from its config.

    An empty list means "no column, only the row count".
    """
    etype = expectation.get("type")
    kwargs = expectation.get("kwargs") or {}
    if not isinstance(etype, str) or not isinstance(kwargs, Mapping):
        return None
    row_count_only = etype in _ROW_COUNT_TYPES
    if not (row_count_only or etype.startswith(_COLUMN_SCOPED_PREFIXES)):
        return None  # table-level: column set, column count, ordered list, other tables...
    if not _is_core_gx_expectation(etype):
        return None
    if kwargs.get("row_condition") not in (None, ""):
        return None  # a condition may reference any column of the table
    columns: list[str] = []
    for key, value in kwargs.items():
        if key == "row_condition" or key in _VALUE_KWARGS:
            continue
        if key == "result_format" and isinstance(value, str):
            continue  # a format name; the dict form can name index columns
        if key in _COLUMN_KWARGS and isinstance(value, str) and not row_count_only:
            columns.append(value)
        elif (
            key == _COLUMN_LIST_KWARG
            and isinstance(value, list | tuple)
            and all(isinstance(c, str) for c in value)
            and not row_count_only
        ):
            columns.extend(value)
        else:
            return None  # unusual kwarg, or a column given as a suite parameter
    if not row_count_only and not columns:
        return None
    return columns


def columns_to_validate(suite: SuiteDefinition, frame_columns: Sequence[Any]) -> list[str] | None:
    """The frame columns GX needs for ``suite``, in frame order; None for "the whole frame".

    A subset is returned only when it provably yields the same results: every expectation is
    one of GX's own column-scoped expectations (or a row count), names its columns through
    ``column`` / ``column_A`` / ``column_B`` / ``column_list``, has no ``row_condition`` and
    no other column-naming kwarg. Referenced columns absent from the frame are left out, so
    GX reports them missing exactly as it does on the whole frame.

    None also when the subset would be every column (nothing to gain), no column at all (GX
    would get a frame without columns, which it never sees otherwise), or when the frame's labels
    are duplicated or not all strings (suite column names are strings).
    """
    labels = list(frame_columns)
    if len(set(labels)) != len(labels) or not all(isinstance(c, str) for c in labels):
        return None
    referenced: set[str] = set()
    for expectation in suite.expectations:
        columns = _columns_read_by(expectation)
        if columns is None:
            return None
        referenced.update(columns)
    selected = [c for c in labels if c in referenced]
    if not selected or len(selected) == len(labels):
        return None
    return selected


#: Table expectations that read only the column names (GX's ``table.columns`` metric), never a
#: value: a zero-row frame with every column gives GX the same answer as the data itself.
_COLUMN_NAME_TYPES = frozenset(
    {
        "expect_table_columns_to_match_set",
        "expect_table_columns_to_match_ordered_list",
        "expect_table_column_count_to_equal",
        "expect_table_column_count_to_be_between",
        "expect_column_to_exist",
    }
)


def _reads_only_column_names(expectation: Mapping[str, Any]) -> bool:
    """A column-name check that needs the whole table (``expect_column_to_exist`` without a
    ``column_index`` already works on the column subset, so it stays there). GX refuses a
    ``row_condition`` on these types, so no row filter can hide in them."""
    etype = expectation.get("type")
    return (
        etype in _COLUMN_NAME_TYPES
        and _columns_read_by(expectation) is None
        and _is_core_gx_expectation(etype)
    )


def _part_of(suite: SuiteDefinition, positions: Sequence[int]) -> SuiteDefinition:
    return SuiteDefinition(
        name=suite.name,
        expectations=[suite.expectations[i] for i in positions],
        meta=suite.meta,
        source=suite.source,
    )


def _gx_batches(
    frame: pd.DataFrame, suite: SuiteDefinition
) -> list[tuple[list[int], pd.DataFrame]]:
    """Which expectations (by suite position) GX checks on which frame.

    Everything on ``frame``, or on the columns the suite reads (see
    :func:`columns_to_validate`) when that drops at least half of them. A suite that also
    checks the table's schema (``expect_table_columns_to_match_set`` and the like, which every
    bundled and inferred suite has) would need every column; those expectations only read
    column names, so they get their own batch: a zero-row frame with every column.
    """
    everything = list(range(len(suite.expectations)))
    names_only = [i for i in everything if _reads_only_column_names(suite.expectations[i])]
    split = bool(names_only) and len(names_only) < len(everything)
    reads_values = [i for i in everything if i not in set(names_only)] if split else everything
    columns = columns_to_validate(_part_of(suite, reads_values), frame.columns)
    if columns is None or not _worth_a_subset(columns, frame):
        return [(everything, frame)]
    log.info(
        "Validating %d of %d columns: the suite reads no other column's values.",
        len(columns),
        frame.shape[1],
    )
    # pandas 2 copies the selected columns (lazily under copy-on-write): at most half the
    # frame, once, where GX would otherwise work on the whole frame per metric.
    subset = [(reads_values, frame[columns])]
    return [*subset, (names_only, frame.iloc[:0])] if split else subset


def _worth_a_subset(columns: list[str], frame: pd.DataFrame) -> bool:
    """A subset pays when it drops at least half the columns. Closer to the full width, GX's
    saving is lost in the copy of the selected columns and a second fingerprint (measured in
    docs/operators/validation.md#performance)."""
    return 2 * len(columns) <= frame.shape[1]


def _merged_results(payloads: list[dict[str, Any]], suite_name: str) -> dict[str, Any]:
    """One GX result from the results of several batches of one suite (the first one's meta)."""
    merged = payloads[0]
    for payload in payloads[1:]:
        merged["results"].extend(payload["results"])
    results = merged["results"]
    successful = sum(1 for r in results if r.get("success"))
    merged["success"] = all(p.get("success") for p in payloads)
    merged["suite_name"] = suite_name
    merged["statistics"] = {
        "evaluated_expectations": len(results),
        "successful_expectations": successful,
        "unsuccessful_expectations": len(results) - successful,
        # GX's own formula (validator.validation_statistics), to the last float bit.
        "success_percent": successful / len(results) * 100 if results else None,
    }
    return merged


def _keep_whole_frame_fingerprint(payload: dict[str, Any], frame: pd.DataFrame) -> None:
    """Put back the batch fingerprint GX writes for the whole frame, as without a subset.

    GX fingerprints the frame it is given (``batch_markers.pandas_data_fingerprint``) when
    it holds less than 1 GB; the report must describe the data, not our column selection.
    """
    markers = payload.get("meta", {}).get("batch_markers")
    if not isinstance(markers, dict):
        return
    if frame.memory_usage().sum() < GX_FINGERPRINT_MAX_BYTES:
        markers["pandas_data_fingerprint"] = gx_data_fingerprint(frame)
    else:
        markers.pop("pandas_data_fingerprint", None)


def run_suite(
    frame: pd.DataFrame,
    suite: SuiteDefinition,
    *,
    result_format: str = "SUMMARY",
    only_referenced_columns: bool = True,
) -> dict[str, Any]:
    """Run ``suite`` on ``frame`` with an ephemeral GX context; returns the GX result JSON.

    Results are put back in suite order (GX groups them by metric). The frame is passed as a
    batch parameter: GX does not copy it.

    :param only_referenced_columns: hand GX only the columns the suite reads when that
        provably gives the same result (see :func:`columns_to_validate`); GX's cost grows
        with the frame's width. False always passes the whole frame.
    """
    quiet_great_expectations()
    result_format = check_result_format(result_format)
    batches = (
        _gx_batches(frame, suite)
        if only_referenced_columns
        else [(list(range(len(suite.expectations))), frame)]
    )
    context = _ephemeral_context()
    batch_definition = (
        context.data_sources.add_pandas(_DATASOURCE)
        .add_dataframe_asset(_ASSET)
        .add_batch_definition_whole_dataframe(_BATCH)
    )
    order: dict[str, int] = {}
    payloads = []
    for number, (positions, gx_frame) in enumerate(batches):
        # Names are unique within a context; the merged result keeps the suite's own name.
        name = suite.name if number == 0 else f"{suite.name}.part{number}"
        gx_suite = context.suites.add(_build_gx_suite(_part_of(suite, positions), name=name))
        order.update(zip((e.id for e in gx_suite.expectations), positions, strict=True))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(
                name=f"{name}-validation", data=batch_definition, suite=gx_suite
            )
        )
        result = definition.run(
            batch_parameters={"dataframe": gx_frame}, result_format=result_format
        )
        payloads.append(result.to_json_dict())
    payload = _merged_results(payloads, suite.name) if len(payloads) > 1 else payloads[0]
    if batches[0][1] is not frame:
        _keep_whole_frame_fingerprint(payload, frame)
    payload["results"] = sorted(
        payload["results"],
        key=lambda r: order.get(r.get("expectation_config", {}).get("id"), len(order)),
    )
    return payload


def builtin_failures(frame: pd.DataFrame, suite: SuiteDefinition) -> list[dict[str, Any]]:
    """Checks GX passes vacuously, so a suite cannot silently accept useless data.

    * an empty table (a header-only csv): every column expectation passes on zero rows;
    * a column the suite names that is entirely null, when the suite does not already check
      it with ``expect_column_values_to_not_be_null`` (range and set checks ignore nulls).

    A column that the suite expects to be null (``expect_column_values_to_be_null``) is left
    alone. Returns failure entries in the summary's format.
    """
    failures: list[dict[str, Any]] = []
    rows = len(frame)
    if rows == 0:
        failures.append(
            _builtin_failure(
                BUILTIN_TABLE_NOT_EMPTY,
                column=None,
                observed=0,
                expected={"min_rows": 1},
                error="the data has a header but no rows",
            )
        )
        return failures
    checked_elsewhere = {
        e["kwargs"].get("column")
        for e in suite.expectations
        if e["type"] in ("expect_column_values_to_not_be_null", "expect_column_values_to_be_null")
    }
    for column in suite.referenced_columns():
        if column in checked_elsewhere or column not in frame.columns:
            continue  # missing columns are reported by GX itself
        data = frame[column]
        if isinstance(data, pd.DataFrame):  # duplicate column names
            continue
        if data.isna().all():
            failures.append(
                _builtin_failure(
                    BUILTIN_COLUMN_NOT_ALL_NULL,
                    column=column,
                    observed=f"{rows} of {rows} values are null",
                    expected={"non_null_values": ">= 1"},
                    unexpected_count=rows,
                    error=None,
                )
            )
    return failures


def _builtin_failure(
    expectation: str,
    *,
    column: str | None,
    observed: Any,
    expected: dict[str, Any],
    error: str | None,
    unexpected_count: int | None = None,
) -> dict[str, Any]:
    return {
        "expectation": expectation,
        "column": column,
        "expected": expected,
        "observed": observed,
        "unexpected_count": unexpected_count,
        "unexpected_percent": 100.0 if unexpected_count else None,
        "sample_values": [],
        "details": None,
        "error": error,
    }


# --------------------------------------------------------------------------------------
# The one call operators make
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ValidationOutcome:
    """What a validation produced: the XCom summary and the full GX result (for the report)."""

    summary: dict[str, Any]
    result: dict[str, Any]

    @property
    def success(self) -> bool:
        return bool(self.summary["success"])

    def report_json(self) -> str:
        """The full result as strict JSON text (NaN and numpy values made JSON-safe)."""
        return json.dumps(json_safe(self.result), indent=2, ensure_ascii=False, allow_nan=False)

    def failure_message(self) -> str:
        return failure_message(self.summary)


def validate_frame(
    frame: pd.DataFrame,
    suite: SuiteDefinition,
    *,
    result_format: str = "SUMMARY",
    data_uri: str | None = None,
    data_sha256: str | None = None,
    report_uri: str | None = None,
    builtin_checks: bool = True,
    only_referenced_columns: bool = True,
) -> ValidationOutcome:
    """Validate ``frame`` against ``suite``; never raises for bad data, only reports it.

    :param builtin_checks: also fail an empty table and all-null columns the suite names
        (see :func:`builtin_failures`); GX alone passes both.
    :param only_referenced_columns: let GX see only the columns the suite reads, when that
        is provably safe (:func:`columns_to_validate`); the outcome is the same either way.
        The summary always describes the whole frame (row and column counts, columns).
    """
    result = run_suite(
        frame,
        suite,
        result_format=result_format,
        only_referenced_columns=only_referenced_columns,
    )
    extra = builtin_failures(frame, suite) if builtin_checks else []
    result.setdefault("meta", {})["airflow_mlops"] = {
        "data_uri": data_uri,
        "data_sha256": data_sha256,
        "row_count": len(frame),
        "builtin_failures": extra,
    }
    if extra:
        # The report's verdict must match the summary's: GX alone passed what we failed.
        result["success"] = False
    summary = summarize(
        result,
        row_count=len(frame),
        column_count=frame.shape[1],
        data_uri=data_uri,
        data_sha256=data_sha256,
        report_uri=report_uri,
        extra_failures=extra,
        data_columns=frame.columns,
    )
    return ValidationOutcome(summary=summary, result=result)
