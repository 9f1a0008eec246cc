"""One boolean parser, one duration parser and one "is this a template" rule (core/values.py),
and their callers."""

from __future__ import annotations

import pytest

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.values import is_templated, parse_bool, parse_seconds
from airflow_mlops.operators.drift import DriftReportOperator
from airflow_mlops.operators.registry import PromoteModelOperator, _serving_options
from airflow_mlops.plugins.model_overview import verdict_from_tags


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), (1, True), (0, False), (" Yes ", True), ("OFF", False)],
)
def test_parse_bool_known_values(value, expected):
    assert parse_bool(value, "flag") is expected


@pytest.mark.parametrize("value", ["flase", "", "maybe", None, 2])
def test_parse_bool_refuses_unknown_values_naming_the_field(value):
    with pytest.raises(ConfigError, match="flag must be true or false"):
        parse_bool(value, "flag")
    assert parse_bool(value, "flag", default=None) is None  # tri-state on request


def test_a_mistyped_serving_check_is_refused_not_taken_as_true():
    # The old registry `_truthy` read any unknown string ("flase") as true.
    op = PromoteModelOperator(
        task_id="promote", evaluation={}, registration={}, serving_check="flase"
    )
    with pytest.raises(ConfigError, match="promote: serving_check must be true or false"):
        _serving_options(op)
    op.serving_check = "false"  # a rendered template is text
    assert _serving_options(op) is None


@pytest.mark.parametrize(("value", "expected"), [(0, 0.0), (900, 900.0), (" 2.5 ", 2.5)])
def test_parse_seconds_known_values(value, expected):
    assert parse_seconds(value, "wait_seconds") == expected


@pytest.mark.parametrize("value", [-1, "ten", None, True, float("nan"), float("inf")])
def test_parse_seconds_refuses_what_is_not_a_duration_naming_the_field(value):
    with pytest.raises(ConfigError, match="wait_seconds must be seconds >= 0"):
        parse_seconds(value, "wait_seconds")


def test_a_mistyped_serving_timeout_names_the_parameter():
    # float() alone raised a bare ValueError that named neither the task nor the parameter.
    op = PromoteModelOperator(
        task_id="promote", evaluation={}, registration={}, serving_timeout_seconds="10m"
    )
    with pytest.raises(ConfigError, match="promote: serving_timeout_seconds must be seconds"):
        _serving_options(op)


def test_verdict_tags_stay_tri_state():
    assert verdict_from_tags("validation", {"mlops.validation.success": "passed"}).ok is True
    assert verdict_from_tags("drift", {"mlops.drift.detected": "true"}).ok is False
    # An unknown tag value is "no colour", never an error: the page must still render.
    assert verdict_from_tags("validation", {"mlops.validation.success": "later"}) is None


@pytest.mark.parametrize(
    "value",
    [
        "{{ ds }}",
        "{% if x %}a{% endif %}",
        "{# note #}",
        {"k": ["x", "{{ params.p }}"]},
        ("a", "{%- raw %}"),
    ],
)
def test_every_jinja_marker_counts_as_a_template(value):
    assert is_templated(value)


@pytest.mark.parametrize("value", ["plain", "{ not jinja }", {"k": [1, "x"]}, None, 3])
def test_literals_are_not_templates(value):
    assert not is_templated(value)


def test_a_statement_template_model_name_is_refused_too():
    # Monitoring counted only "{{": a "{% ... %}" model_name slipped through the refusal.
    with pytest.raises(ConfigError, match="model_name cannot be a template"):
        DriftReportOperator(
            task_id="d", model_name="{% if params.m %}m{% endif %}", current_uri="x"
        )
