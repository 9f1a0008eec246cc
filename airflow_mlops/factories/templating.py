"""Jinja in pipeline YAML: refused, except a few documented keys and variables.

Pipeline values reach operator template fields, which Airflow renders with the whole task
context: ``{{ conn.x.password }}``, ``{{ var.value.x }}`` or ``{{ ti... }}`` in a YAML
would read secrets or run code on a worker. The YAML is configuration, not code, so a value
may carry Jinja only under :data:`TEMPLATED_KEYS`, and then only output expressions over
:data:`TEMPLATE_VARIABLES`. The check parses with Jinja's own parser and walks its AST: a
regex could be fooled by whitespace control, comments or string concatenation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from airflow_mlops.core.errors import TemplateNotAllowedError
from airflow_mlops.core.values import is_templated

__all__ = [
    "TEMPLATED_KEYS",
    "TEMPLATE_VARIABLES",
    "check_config_templates",
    "check_template",
    "has_template_markers",
]

#: Dotted config keys whose values Airflow renders at run time (date-partitioned data).
TEMPLATED_KEYS = frozenset(
    {
        "data.train_uri",
        "data.inference_uri",
        "data.predictions_uri",
        "monitoring.decay.labels_uri",
    }
)
#: Names those values may use: the run's dates and ``params.<name>``. Never ``conn``,
#: ``var``, ``macros``, ``ti``, ``dag_run`` or anything else of the task context.
TEMPLATE_VARIABLES = frozenset(
    {"ds", "ds_nodash", "logical_date", "data_interval_start", "data_interval_end", "params"}
)


def has_template_markers(text: str) -> bool:
    return is_templated(text)


def check_config_templates(raw: Any) -> None:
    """Raise :class:`TemplateNotAllowedError` for Jinja anywhere it is not allowed."""
    for where, text in _strings(raw, ()):
        if not has_template_markers(text):
            continue
        key = ".".join(where)
        if key not in TEMPLATED_KEYS:
            raise TemplateNotAllowedError(
                f"{key or '(root)'}: Jinja ('{{{{', '{{%', '{{#') is not allowed here, got "
                f"{text[:80]!r}; only {sorted(TEMPLATED_KEYS)} may be templated"
            )
        check_template(text, key)


def check_template(text: str, key: str) -> None:
    """Only ``{{ name }}`` / ``{{ params.name }}`` expressions over the allowed variables."""
    import jinja2
    from jinja2 import meta, nodes

    try:
        tree = jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as err:
        raise TemplateNotAllowedError(f"{key}: invalid template {text[:80]!r}: {err}") from None
    unknown = sorted(meta.find_undeclared_variables(tree) - TEMPLATE_VARIABLES)
    if unknown:
        raise TemplateNotAllowedError(
            f"{key}: template variables {unknown} are not allowed; use only "
            f"{sorted(TEMPLATE_VARIABLES)}"
        )
    for output in tree.body:
        if not isinstance(output, nodes.Output):
            raise TemplateNotAllowedError(
                f"{key}: template statements ({{% ... %}}) are not allowed in {text[:80]!r}"
            )
        for node in output.nodes:
            if not isinstance(node, nodes.TemplateData) and not _allowed_expression(node):
                raise TemplateNotAllowedError(
                    f"{key}: only {{{{ name }}}} and {{{{ params.name }}}} expressions over "
                    f"{sorted(TEMPLATE_VARIABLES)} are allowed, got {text[:80]!r}"
                )


def _allowed_expression(node: Any) -> bool:
    from jinja2 import nodes

    if isinstance(node, nodes.Name):
        return node.name in TEMPLATE_VARIABLES and node.name != "params"
    return (
        isinstance(node, nodes.Getattr)
        and isinstance(node.node, nodes.Name)
        and node.node.name == "params"
        and not node.attr.startswith("_")
    )


def _as_text(value: Any) -> str | None:
    """``value`` as the string pydantic would make of it, or None for a non-string.

    YAML ``!!binary`` scalars load as bytes, which pydantic's lax ``str`` fields decode: a
    template hidden that way must be seen by the check too.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return None


def _strings(value: Any, where: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every string of the config (mapping keys, bytes, sets and tuples included) with its
    dotted location."""
    stack: list[tuple[tuple[str, ...], Any]] = [(where, value)]
    while stack:
        path, node = stack.pop()
        if (text := _as_text(node)) is not None:
            yield path, text
        elif isinstance(node, dict):
            for key, child in node.items():
                name = _as_text(key)
                if name is not None:
                    yield (*path, name), name
                stack.append(((*path, name if name is not None else str(key)), child))
        elif isinstance(node, (list, tuple, set, frozenset)):
            # YAML's !!set, !!omap and !!pairs load as sets and tuples, which pydantic turns
            # into lists and Airflow renders inside template fields all the same.
            stack.extend(((*path, str(i)), child) for i, child in enumerate(node))
