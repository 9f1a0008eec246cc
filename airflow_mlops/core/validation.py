"""Data validation with Great Expectations Core 1.x: suites, runs, summaries, messages.

Everything here works on an in-memory pandas DataFrame and plain JSON-like suites, with an
ephemeral GX context (nothing written to disk by GX, analytics and progress bars off). The
Airflow operator (``airflow_mlops.operators.validation``) only reads the data, calls
:func:`validate_frame`, writes the report and applies the failure policy.

Three kinds of output, from small to large:

* the **summary** (:func:`summarize`): bounded JSON for XCom, never any data beyond a few
  sample values per failed expectation;
* the **failure message** (:func:`failure_message`): one readable line per failed
  expectation, for the task log and :class:`~airflow_mlops.core.errors.DataValidationFailed`;
* the **full result**: the GX validation result JSON, written to a report URI by the caller.

Drafting a suite from reference data is :mod:`airflow_mlops.core.suite_inference`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
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
from airflow_mlops.core.jsonsafe import MAX_LIST_ITEMS, MAX_TEXT_CHARS, _truncate_text, json_safe

__all__ = [
    "BUILTIN_COLUMN_NOT_ALL_NULL",
    "BUILTIN_TABLE_NOT_EMPTY",
    "MAX_FAILURES_IN_SUMMARY",
    "MAX_LIST_ITEMS",
    "MAX_SAMPLE_VALUES",
    "MAX_TEXT_CHARS",
    "ON_FAILURE_POLICIES",
    "RESULT_FORMATS",
    "SAFE_CONDITION_PARSERS",
    "SUMMARY_BUDGET_BYTES",
    "SUMMARY_SCHEMA_VERSION",
    "SuiteDefinition",
    "ValidationOutcome",
    "builtin_failures",
    "check_on_failure",
    "check_result_format",
    "columns_to_validate",
    "expectation_problem",
    "failure_lines",
    "failure_message",
    "json_safe",
    "parse_suite",
    "parse_suite_text",
    "quiet_great_expectations",
    "read_suite_file",
    "row_condition_problem",
    "run_suite",
    "suite_problems",
    "summarize",
    "summary_json",
    "validate_frame",
]

log = logging.getLogger(__name__)

RESULT_FORMATS = ("BOOLEAN_ONLY", "BASIC", "SUMMARY", "COMPLETE")
ON_FAILURE_POLICIES = ("fail", "skip", "warn")
SUMMARY_SCHEMA_VERSION = 1

#: Bounds that keep the XCom summary small whatever the data or the suite look like.
MAX_FAILURES_IN_SUMMARY = 20
MAX_SAMPLE_VALUES = 5
SUMMARY_BUDGET_BYTES = 32_000

#: Names of the two checks airflow_mlops adds to every suite (see :func:`builtin_failures`).
BUILTIN_TABLE_NOT_EMPTY = "airflow_mlops.table_not_empty"
BUILTIN_COLUMN_NOT_ALL_NULL = "airflow_mlops.column_not_all_null"

# kwargs that describe how GX runs rather than what is expected: left out of summaries.
_RUNTIME_KWARGS = frozenset(
    {"batch_id", "column", "result_format", "catch_exceptions", "include_config", "row_condition"}
)
# Keys an expectation entry of a GX 1.x suite file may carry.
_EXPECTATION_KEYS = frozenset(
    {"type", "kwargs", "meta", "id", "notes", "severity", "description", "rendered_content"}
)
_SUITE_KEYS = frozenset({"name", "id", "expectations", "suite_parameters", "meta", "notes"})

_DATASOURCE = "airflow_mlops"
_ASSET = "frame"
_BATCH = "whole_frame"


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------
def check_result_format(value: str) -> str:
    """Upper-cased GX result format, or :class:`ConfigError` naming ``result_format``."""
    normalised = str(value).strip().upper()
    if normalised not in RESULT_FORMATS:
        raise ConfigError(f"result_format={value!r} is not one of {', '.join(RESULT_FORMATS)}.")
    return normalised


def check_on_failure(value: str) -> str:
    """Lower-cased failure policy, or :class:`ConfigError` naming ``on_failure``."""
    normalised = str(value).strip().lower()
    if normalised not in ON_FAILURE_POLICIES:
        raise ConfigError(f"on_failure={value!r} is not one of {', '.join(ON_FAILURE_POLICIES)}.")
    return normalised


# --------------------------------------------------------------------------------------
# Suites: load, check, build
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SuiteDefinition:
    """A checked GX 1.x suite as plain JSON: every expectation is known and well-formed."""

    name: str
    expectations: list[dict[str, Any]]
    meta: dict[str, Any]
    source: str

    def to_json_dict(self) -> dict[str, Any]:
        return {"name": self.name, "expectations": self.expectations, "meta": self.meta}

    def referenced_columns(self) -> list[str]:
        """Columns named by a ``column`` kwarg, in suite order, without repeats."""
        seen: dict[str, None] = {}
        for expectation in self.expectations:
            column = expectation.get("kwargs", {}).get("column")
            if isinstance(column, str):
                seen.setdefault(column, None)
        return list(seen)


def _one_line(text: str) -> str:
    """Pydantic and GX messages span lines; a failure list wants one line per problem."""
    return re.sub(r"\s+", " ", str(text)).strip()


def expectation_problem(entry: Any) -> str | None:
    """Why ``entry`` is not a valid GX 1.x expectation configuration, or None if it is."""
    if not isinstance(entry, Mapping):
        return f"must be an object with 'type' and 'kwargs', got {type(entry).__name__}"
    if "expectation_type" in entry:
        return (
            "uses the GX 0.x key 'expectation_type'; GX 1.x suites name it 'type' (rename the key)"
        )
    unknown = sorted(set(entry) - _EXPECTATION_KEYS)
    if unknown:
        return f"has unknown keys {unknown}; allowed: {sorted(_EXPECTATION_KEYS)}"
    etype = entry.get("type")
    if not isinstance(etype, str) or not etype:
        return "has no 'type' (for example 'expect_column_values_to_not_be_null')"
    kwargs = entry.get("kwargs", {})
    if not isinstance(kwargs, Mapping):
        return f"'kwargs' must be an object, got {type(kwargs).__name__}"
    try:
        config = ExpectationConfiguration(
            type=etype, kwargs=dict(kwargs), meta=dict(entry.get("meta") or {})
        )
        domain = config.to_domain_obj()
    except gx.exceptions.ExpectationNotFoundError:
        return f"unknown expectation type {etype!r}"
    except Exception as err:  # pydantic / GX configuration errors of every flavour
        return f"invalid kwargs for {etype}: {_one_line(err)}"
    return row_condition_problem(kwargs, getattr(domain, "row_condition", None))


#: ``condition_parser`` values accepted: GX parses these into condition objects itself.
#: ``pandas`` (and ``spark``) hand the raw string to ``DataFrame.query``, which evaluates
#: attribute and method calls: a suite file would run code on the worker.
SAFE_CONDITION_PARSERS = ("great_expectations", "great_expectations__experimental__")
_SCALARS = (str, int, float, bool, type(None))


def row_condition_problem(kwargs: Mapping[str, Any], condition: Any) -> str | None:
    """Why a row condition is refused, or None. ``condition`` is GX's parsed form."""
    parser = kwargs.get("condition_parser")
    if parser is not None and parser not in SAFE_CONDITION_PARSERS:
        return (
            f"uses condition_parser {parser!r}, which is refused: pandas' query() evaluates "
            f"attribute calls in the condition; use one of {list(SAFE_CONDITION_PARSERS)} "
            '(row_condition like col("segment")=="a")'
        )
    if condition is None or (isinstance(condition, str) and not condition.strip()):
        return None
    if isinstance(condition, str):
        return "has a row_condition GX did not parse: set condition_parser: great_expectations"
    return _condition_node_problem(condition)


def _condition_node_problem(condition: Any) -> str | None:
    from great_expectations.expectations import row_conditions as rc

    stack = [condition]
    while stack:
        node = stack.pop()
        if isinstance(node, (rc.AndCondition, rc.OrCondition)):
            stack.extend(node.conditions)
        elif isinstance(node, (rc.ComparisonCondition, rc.NullityCondition)):
            if "`" in node.column.name:
                return f"row_condition column {node.column.name!r} contains a backtick"
            value = getattr(node, "parameter", None)
            values = value if isinstance(value, (list, tuple)) else [value]
            if not all(isinstance(v, _SCALARS) for v in values):
                return f"row_condition parameter {value!r} must be a scalar or a list of scalars"
        else:  # PassThroughCondition hands its string to DataFrame.query, like pandas.
            return f"row_condition of type {type(node).__name__} is refused"
    return None


def suite_problems(suite: Any) -> list[str]:
    """Every problem of a suite object (dict or list of expectations); empty when valid.

    Used both to refuse a bad suite before any data is read and by a future ``lint`` CLI.
    """
    if isinstance(suite, Mapping):
        problems = []
        unknown = sorted(set(suite) - _SUITE_KEYS)
        if "expectation_suite_name" in suite:
            problems.append(
                "uses the GX 0.x key 'expectation_suite_name'; GX 1.x suites use 'name'"
            )
        elif unknown:
            problems.append(f"suite has unknown keys {unknown}; allowed: {sorted(_SUITE_KEYS)}")
        name = suite.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            problems.append("'name' must be a non-empty string")
        expectations = suite.get("expectations")
        if not isinstance(expectations, list):
            problems.append("suite has no 'expectations' list")
            return problems
    elif isinstance(suite, list):
        problems, expectations = [], suite
    else:
        return [f"a suite must be an object or a list of expectations, got {type(suite).__name__}"]
    if not expectations:
        problems.append("suite has no expectations: an empty suite would pass any data")
    for index, entry in enumerate(expectations):
        problem = expectation_problem(entry)
        if problem:
            label = entry.get("type") if isinstance(entry, Mapping) else None
            where = f"expectations[{index}]" + (f" ({label})" if isinstance(label, str) else "")
            problems.append(f"{where} {problem}")
    return problems


def parse_suite(
    suite: Any, *, source: str = "suite", default_name: str = "suite"
) -> SuiteDefinition:
    """Check a suite object and return it as a :class:`SuiteDefinition`.

    :param suite: a GX 1.x suite dict (``{"name", "expectations", ...}``) or a list of
        expectation configs (``[{"type": ..., "kwargs": {...}}, ...]``).
    :param source: where it came from, for error messages (a file path, "suite parameter").
    :raises ConfigError: listing every problem found, one per line.
    """
    problems = suite_problems(suite)
    if problems:
        raise ConfigError(
            f"Invalid expectation suite ({source}):\n" + "\n".join(f"- {p}" for p in problems)
        )
    if isinstance(suite, Mapping):
        name = suite.get("name") or default_name
        entries = suite["expectations"]
        meta = dict(suite.get("meta") or {})
    else:
        name, entries, meta = default_name, suite, {}
    expectations = [
        {
            "type": entry["type"],
            "kwargs": dict(entry.get("kwargs") or {}),
            "meta": dict(entry.get("meta") or {}),
        }
        for entry in entries
    ]
    return SuiteDefinition(name=str(name), expectations=expectations, meta=meta, source=source)


def parse_suite_text(text: str | bytes, *, source: str) -> SuiteDefinition:
    """Parse a suite file's content; :class:`ConfigError` names the file and the JSON error."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"Suite file {source} is not valid JSON: {err}") from err
    return parse_suite(obj, source=source, default_name=_suite_name_from_path(source))


def read_suite_file(path: str | os.PathLike[str]) -> SuiteDefinition:
    """Load and check a GX 1.x suite JSON file from a local path."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"Suite file {str(file)!r} does not exist.")
    return parse_suite_text(file.read_bytes(), source=str(file))


def _suite_name_from_path(source: str) -> str:
    stem = Path(source.rstrip("/")).name
    for suffix in (".json", ".suite"):
        stem = stem.removesuffix(suffix)
    return stem or "suite"


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


# --------------------------------------------------------------------------------------
# Running GX
# --------------------------------------------------------------------------------------
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
# frame, copies), so a validation costs expectations x frame width, not expectations alone:
# 40 expectations on 100,000 rows took 0.6 s on 20 columns and 3.2-3.6 s on 80. When every
# expectation provably reads only the columns it names (plus the row count), GX gets just
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
    would get a frame without columns, which it never sees today), or when the frame's labels
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
    saving is lost in the copy of the selected columns and a second fingerprint (1M x 20,
    16 columns read: 2.71 s and 1128 MB with the subset, 2.60 s and 1011 MB without)."""
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
# Summary and failure message
# --------------------------------------------------------------------------------------
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
            message = _one_line(info.get("exception_message") or "GX raised an exception")
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
        "great_expectations_version": gx.__version__,
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
