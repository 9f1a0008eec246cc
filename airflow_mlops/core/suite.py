"""Expectation suites as plain JSON: parse, check and load a GX 1.x suite.

:class:`SuiteDefinition` is a checked suite; :func:`parse_suite`, :func:`parse_suite_text`
and :func:`read_suite_file` build one from a suite object, a file's text or a local file,
refusing a bad suite with every problem listed (:func:`suite_problems`). Row conditions are
held to the parsers that cannot run code (:data:`SAFE_CONDITION_PARSERS`).

Great Expectations checks each expectation's kwargs, but it is imported only when a suite is
checked, not with this module: a :class:`SuiteDefinition` can be named and passed around
without GX's import cost. GX reads ``GX_ANALYTICS_ENABLED`` when a context starts, and only
:mod:`airflow_mlops.core.validation` starts one, after setting it. Running a suite is
:mod:`airflow_mlops.core.validation`; its summary is :mod:`airflow_mlops.core.validation_summary`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_mlops.core.errors import ConfigError

__all__ = [
    "ON_FAILURE_POLICIES",
    "RESULT_FORMATS",
    "SAFE_CONDITION_PARSERS",
    "SuiteDefinition",
    "check_on_failure",
    "check_result_format",
    "expectation_problem",
    "parse_suite",
    "parse_suite_text",
    "read_suite_file",
    "row_condition_problem",
    "suite_problems",
]

# Keys an expectation entry of a GX 1.x suite file may carry.
_EXPECTATION_KEYS = frozenset(
    {"type", "kwargs", "meta", "id", "notes", "severity", "description", "rendered_content"}
)
_SUITE_KEYS = frozenset({"name", "id", "expectations", "suite_parameters", "meta", "notes"})


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
    # Here rather than at the top: see the module docstring.
    from great_expectations.exceptions import ExpectationNotFoundError
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    try:
        config = ExpectationConfiguration(
            type=etype, kwargs=dict(kwargs), meta=dict(entry.get("meta") or {})
        )
        domain = config.to_domain_obj()
    except ExpectationNotFoundError:
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


RESULT_FORMATS = ("BOOLEAN_ONLY", "BASIC", "SUMMARY", "COMPLETE")
ON_FAILURE_POLICIES = ("fail", "skip", "warn")


# --------------------------------------------------------------------------------------
# Run options (checked by the operator at parse time too: this module is GX-free)
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
