"""Small value rules shared by core, operators, factories and plugins (standard library only).

Booleans, durations and "is this a template": one parser each, so an operator parameter,
a YAML key and an ``[mlops]`` setting are read the same way. Imported at DAG-parse time: it
must stay free of Airflow and of heavy libraries.

Durations are numbers of seconds, named ``<what>_seconds`` (parameters, YAML keys,
settings, fields), except where Airflow names them (``timeout``, ``poke_interval``,
``poll_interval``, ``execution_timeout``) and the YAML ``monitoring.debounce_hours``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from airflow_mlops.core.errors import ConfigError

__all__ = [
    "FALSE_WORDS",
    "TEMPLATE_MARKERS",
    "TRUE_WORDS",
    "is_templated",
    "parse_bool",
    "parse_seconds",
]

#: What Jinja (and so Airflow's template rendering) acts on: expressions, statements, comments.
TEMPLATE_MARKERS = ("{{", "{%", "{#")
TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})

_REFUSE: Any = object()


def parse_bool(
    value: Any,
    field: str,
    *,
    default: Any = _REFUSE,
    true_words: frozenset[str] | set[str] = TRUE_WORDS,
    false_words: frozenset[str] | set[str] = FALSE_WORDS,
) -> Any:
    """``value`` as a bool: a bool, 0/1, or a known word (case and spaces ignored).

    Anything else raises :class:`ConfigError` naming ``field``, since a typo such as
    ``"flase"`` must not switch a check on or off. Pass ``default`` (e.g. None) when the
    caller deliberately wants a third answer for unknown values instead.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in true_words:
            return True
        if text in false_words:
            return False
    if default is not _REFUSE:
        return default
    raise ConfigError(f"{field} must be true or false, got {value!r}.")


def parse_seconds(value: Any, field: str, *, positive: bool = False) -> float:
    """``value`` (a number or numeric text) as a finite number of seconds, >= 0.

    With ``positive``, 0 is refused too. Anything else (a bool, NaN, inf, a negative
    number, text that is not a number) raises :class:`ConfigError` naming ``field``.
    """
    number: float | None = None
    if not isinstance(value, bool):
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            number = None
    if number is None or not math.isfinite(number) or number < 0 or (positive and number == 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"{field} must be seconds {bound}, got {value!r}.")
    return number


def is_templated(value: Any) -> bool:
    """True when ``value`` is only known at run time.

    That is a string holding any Jinja marker (``{{``, ``{%`` or ``{#``), anywhere inside a
    mapping, list or tuple too, or an XComArg / MappedArgument (Airflow's ResolveMixin, told
    by duck typing to avoid importing Airflow here).
    """
    if isinstance(value, str):
        return any(marker in value for marker in TEMPLATE_MARKERS)
    if isinstance(value, Mapping):
        return any(is_templated(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(is_templated(item) for item in value)
    return hasattr(value, "resolve") and hasattr(value, "iter_references")
