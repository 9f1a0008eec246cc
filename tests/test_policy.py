"""Promotion policy: every rule and edge case, each with the decision record's reason checked."""

from __future__ import annotations

import json

import pytest

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.policy import (
    KNOWN_HIGHER_IS_BETTER,
    KNOWN_LOWER_IS_BETTER,
    Direction,
    PromotionPolicy,
    decide,
    parse_policy,
)

ACCURACY_FLOOR_AND_NO_REGRESSION = {
    "value_thresholds": {"accuracy": {"lower": 0.8}},
    "change_thresholds": {"accuracy": {"direction": "higher", "min_delta": 0.0}},
}


def rule(decision, kind: str, metric: str, slice_name: str | None = None):
    matches = [
        r
        for r in decision.rules
        if r.rule == kind and r.metric == metric and (slice_name is None or r.slice == slice_name)
    ]
    assert len(matches) == 1, (kind, metric, decision.rules)
    return matches[0]


# -- value thresholds -----------------------------------------------------------------------


def test_value_lower_bound_is_inclusive():
    policy = {"value_thresholds": {"accuracy": {"lower": 0.8}}}
    decision = decide({"accuracy": 0.8}, None, policy)
    assert decision.promote
    assert rule(decision, "value.lower", "accuracy").verdict == "pass"
    assert decision.reason.startswith("promoted: first model")


def test_value_lower_bound_fails_below():
    decision = decide({"accuracy": 0.79}, None, {"value_thresholds": {"accuracy": {"lower": 0.8}}})
    assert not decision.promote
    assert rule(decision, "value.lower", "accuracy").verdict == "fail"
    assert "not promoted" in decision.reason
    assert "accuracy 0.79 < lower bound 0.8" in decision.reason


def test_value_upper_bound_is_inclusive_and_fails_above():
    policy = {"value_thresholds": {"rmse": {"upper": 2.0}}}
    assert decide({"rmse": 2.0}, None, policy).promote
    decision = decide({"rmse": 2.5}, None, policy)
    assert not decision.promote
    assert "rmse 2.5 > upper bound 2" in decision.reason


def test_value_bounds_both_sides():
    policy = {"value_thresholds": {"r2": {"lower": 0.1, "upper": 0.99}}}
    assert decide({"r2": 0.5}, None, policy).promote
    suspicious = decide({"r2": 0.999}, None, policy)  # too good: leakage guard
    assert not suspicious.promote
    assert "r2 0.999 > upper bound 0.99" in suspicious.reason


def test_value_thresholds_apply_when_a_champion_exists():
    policy = ACCURACY_FLOOR_AND_NO_REGRESSION
    decision = decide({"accuracy": 0.75}, {"accuracy": 0.70}, policy)
    assert not decision.promote
    assert rule(decision, "value.lower", "accuracy").verdict == "fail"
    assert rule(decision, "change.absolute", "accuracy").verdict == "pass"
    assert "1 rule(s) failed" in decision.reason


# -- change thresholds ----------------------------------------------------------------------


def test_better_challenger_is_promoted():
    decision = decide({"accuracy": 0.9}, {"accuracy": 0.85}, ACCURACY_FLOOR_AND_NO_REGRESSION)
    assert decision.promote
    assert not decision.first_model and not decision.tie
    change = rule(decision, "change.absolute", "accuracy")
    assert change.observed == pytest.approx(0.05)
    assert decision.reason == "promoted: all 2 applicable rule(s) passed"


def test_worse_challenger_is_not_promoted():
    decision = decide({"accuracy": 0.84}, {"accuracy": 0.85}, ACCURACY_FLOOR_AND_NO_REGRESSION)
    assert not decision.promote
    assert "not promoted: 1 rule(s) failed" in decision.reason
    assert "improvement -0.01" in decision.reason and "min_delta 0" in decision.reason


def test_regression_within_tolerance_is_promoted_even_at_the_float_boundary():
    policy = {"change_thresholds": {"accuracy": {"direction": "higher", "min_delta": -0.01}}}
    # 0.85 - 0.86 == -0.010000000000000009 in binary floating point: still inclusive.
    decision = decide({"accuracy": 0.85}, {"accuracy": 0.86}, policy)
    assert decision.promote, decision.reason
    assert decision.reason == "promoted: all 1 applicable rule(s) passed"


def test_regression_beyond_tolerance_is_not_promoted():
    policy = {"change_thresholds": {"accuracy": {"direction": "higher", "min_delta": -0.01}}}
    decision = decide({"accuracy": 0.84}, {"accuracy": 0.86}, policy)
    assert not decision.promote
    assert "min_delta -0.01" in decision.reason


def test_required_improvement_positive_delta():
    policy = {"change_thresholds": {"f1": {"min_delta": 0.02}}}  # direction from the name
    assert not decide({"f1": 0.71}, {"f1": 0.70}, policy).promote
    assert decide({"f1": 0.72}, {"f1": 0.70}, policy).promote


def test_lower_is_better_direction():
    policy = {"change_thresholds": {"rmse": {"direction": "lower", "min_delta": 0.0}}}
    better = decide({"rmse": 1.0}, {"rmse": 1.2}, policy)
    assert better.promote
    assert rule(better, "change.absolute", "rmse").observed == pytest.approx(0.2)
    worse = decide({"rmse": 1.3}, {"rmse": 1.2}, policy)
    assert not worse.promote
    assert "lower is better" in worse.reason


def test_direction_defaults_from_standard_metric_names():
    policy = parse_policy({"change_thresholds": {"mae": {"min_delta": 0.0}}})
    assert policy.direction_of("mae") == Direction.LOWER
    assert decide({"mae": 0.5}, {"mae": 0.6}, policy).promote


def test_relative_delta():
    policy = {"change_thresholds": {"rmse": {"direction": "lower", "min_relative_delta": 0.05}}}
    # (1.0 - 0.95) / |1.0| = 0.05 improvement: inclusive
    decision = decide({"rmse": 0.95}, {"rmse": 1.0}, policy)
    assert decision.promote
    assert rule(decision, "change.relative", "rmse").observed == pytest.approx(0.05)
    decision = decide({"rmse": 0.96}, {"rmse": 1.0}, policy)
    assert not decision.promote
    assert "relative improvement 0.04" in decision.reason


def test_relative_delta_uses_absolute_value_of_a_negative_baseline():
    policy = {"change_thresholds": {"r2": {"direction": "higher", "min_relative_delta": 0.5}}}
    # champion r2 = -0.2, challenger -0.1: improvement 0.1 / |-0.2| = 0.5
    decision = decide({"r2": -0.1}, {"r2": -0.2}, policy)
    assert decision.promote
    assert rule(decision, "change.relative", "r2").observed == pytest.approx(0.5)


def test_zero_baseline_makes_relative_rule_not_applicable_and_says_so():
    policy = {
        "change_thresholds": {
            "mae": {"direction": "lower", "min_delta": 0.0, "min_relative_delta": 0.1}
        }
    }
    decision = decide({"mae": 0.0}, {"mae": 0.0}, policy | {"promote_on_tie": True})
    relative = rule(decision, "change.relative", "mae")
    assert relative.verdict == "not_applicable"
    assert "champion's value is exactly 0" in relative.detail
    assert "not applicable: mae: relative change not applicable" in decision.reason
    # A zero baseline with a worse challenger still fails on the absolute rule.
    worse = decide({"mae": 0.1}, {"mae": 0.0}, policy)
    assert not worse.promote
    assert rule(worse, "change.relative", "mae").verdict == "not_applicable"
    assert "champion's value is exactly 0" in worse.reason


def test_zero_baseline_relative_only_policy_promotes_on_value_rules_alone():
    policy = {
        "value_thresholds": {"mae": {"upper": 1.0}},
        "change_thresholds": {"mae": {"direction": "lower", "min_relative_delta": 0.1}},
    }
    decision = decide({"mae": 0.5}, {"mae": 0.0}, policy)
    # The only comparison rule is not applicable; value rules pass. The record says so.
    assert decision.promote
    assert "not applicable" in decision.reason


# -- first model ----------------------------------------------------------------------------


def test_first_model_skips_change_rules_and_says_first_model():
    policy = ACCURACY_FLOOR_AND_NO_REGRESSION
    decision = decide({"accuracy": 0.81}, None, policy)
    assert decision.promote and decision.first_model
    assert rule(decision, "change.absolute", "accuracy").verdict == "not_applicable"
    assert decision.reason == (
        "promoted: first model (no champion): 1 value rule(s) passed; change and slice rules skipped"
    )
    record = decision.to_record()
    assert record["first_model"] is True and record["champion_metrics"] is None


def test_first_model_still_fails_value_thresholds():
    decision = decide({"accuracy": 0.5}, None, ACCURACY_FLOOR_AND_NO_REGRESSION)
    assert not decision.promote
    assert decision.reason.startswith("not promoted: first model (no champion): 1 rule(s) failed")


def test_first_model_with_only_change_rules_is_promoted():
    decision = decide({"f1": 0.1}, None, {"change_thresholds": {"f1": {"min_delta": 0.0}}})
    assert decision.promote
    assert "first model" in decision.reason


def test_first_model_ignores_slices():
    slices = {"g=a": {"rows": 10, "challenger": {"accuracy": 0.1}, "champion": None}}
    decision = decide({"accuracy": 0.9}, None, ACCURACY_FLOOR_AND_NO_REGRESSION, slices)
    assert decision.promote
    assert not [r for r in decision.rules if r.rule == "slice"]


# -- missing metrics: fail closed -----------------------------------------------------------


def test_missing_challenger_metric_fails_closed():
    decision = decide({"f1": 0.9}, None, {"value_thresholds": {"roc_auc": {"lower": 0.5}}})
    assert not decision.promote
    assert "metric 'roc_auc' is missing from the challenger metrics: fail closed" in decision.reason


def test_missing_champion_metric_fails_closed():
    decision = decide(
        {"roc_auc": 0.9}, {"f1": 0.5}, {"change_thresholds": {"roc_auc": {"min_delta": 0}}}
    )
    assert not decision.promote
    assert "metric 'roc_auc' is missing from the champion metrics: fail closed" in decision.reason


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None, "n/a"])
def test_non_finite_metric_fails_closed(bad):
    decision = decide({"accuracy": bad}, None, {"value_thresholds": {"accuracy": {"lower": 0.0}}})
    assert not decision.promote
    assert "fail closed" in decision.reason
    json.dumps(decision.to_record(), allow_nan=False)  # still JSON-safe


# -- ties -----------------------------------------------------------------------------------


def test_exact_tie_is_not_promoted_by_default():
    metrics = {"accuracy": 0.9, "f1": 0.8}
    policy = {
        "value_thresholds": {"accuracy": {"lower": 0.5}},
        "change_thresholds": {"f1": {"min_delta": 0.0}},
    }
    decision = decide(metrics, dict(metrics), policy)
    assert not decision.promote and decision.tie
    assert decision.reason == (
        "not promoted: exact tie with the champion on accuracy, f1 (promote_on_tie=False)"
    )
    assert rule(decision, "tie", "accuracy, f1").verdict == "fail"


def test_exact_tie_promoted_with_promote_on_tie():
    metrics = {"accuracy": 0.9}
    decision = decide(
        metrics, dict(metrics), ACCURACY_FLOOR_AND_NO_REGRESSION | {"promote_on_tie": True}
    )
    assert decision.promote and decision.tie
    assert decision.reason.startswith("promoted: exact tie with the champion on accuracy")


def test_near_tie_is_not_a_tie():
    decision = decide({"accuracy": 0.9000001}, {"accuracy": 0.9}, ACCURACY_FLOOR_AND_NO_REGRESSION)
    assert decision.promote and not decision.tie


def test_tie_on_named_metrics_only():
    # Metrics the policy does not name may differ: the policy cannot tell the models apart.
    decision = decide(
        {"accuracy": 0.9, "recall": 0.1},
        {"accuracy": 0.9, "recall": 0.7},
        ACCURACY_FLOOR_AND_NO_REGRESSION,
    )
    assert decision.tie and not decision.promote


def test_tie_with_failing_rule_reports_both():
    policy = {"change_thresholds": {"accuracy": {"min_delta": 0.01}}}
    decision = decide({"accuracy": 0.9}, {"accuracy": 0.9}, policy)
    assert not decision.promote and decision.tie
    assert "1 rule(s) failed" in decision.reason and "exact tie" in decision.reason


# -- slices ---------------------------------------------------------------------------------


def _slices(challenger_b: float, champion_b: float, rows_b: int = 50):
    return {
        "group=a": {"rows": 50, "challenger": {"accuracy": 0.9}, "champion": {"accuracy": 0.9}},
        "group=b": {
            "rows": rows_b,
            "challenger": {"accuracy": challenger_b},
            "champion": {"accuracy": champion_b},
        },
    }


def test_slice_regression_blocks_promotion_even_when_overall_improves():
    decision = decide(
        {"accuracy": 0.92}, {"accuracy": 0.90}, ACCURACY_FLOOR_AND_NO_REGRESSION, _slices(0.6, 0.8)
    )
    assert not decision.promote
    failed = rule(decision, "slice", "accuracy", "group=b")
    assert failed.verdict == "fail"
    assert "slice group=b: accuracy challenger 0.6 vs champion 0.8" in decision.reason
    assert rule(decision, "slice", "accuracy", "group=a").verdict == "pass"


def test_slice_regression_within_max_regression_passes():
    policy = ACCURACY_FLOOR_AND_NO_REGRESSION | {"slice_rule": {"max_regression": 0.05}}
    decision = decide({"accuracy": 0.92}, {"accuracy": 0.90}, policy, _slices(0.76, 0.8))
    assert decision.promote, decision.reason


def test_small_slice_is_not_applicable():
    policy = ACCURACY_FLOOR_AND_NO_REGRESSION | {"slice_rule": {"min_rows": 30}}
    decision = decide({"accuracy": 0.92}, {"accuracy": 0.90}, policy, _slices(0.1, 0.9, rows_b=5))
    assert decision.promote
    assert rule(decision, "slice", "accuracy", "group=b").verdict == "not_applicable"
    assert "slice group=b: 5 holdout rows < min_rows 30" in decision.reason


def test_slice_metric_undefined_for_both_is_not_applicable_but_one_sided_fails():
    policy = {"change_thresholds": {"roc_auc": {"min_delta": 0.0}}}
    both = {"g=x": {"rows": 5, "challenger": {"accuracy": 1.0}, "champion": {"accuracy": 1.0}}}
    decision = decide({"roc_auc": 0.9}, {"roc_auc": 0.8}, policy, both)
    assert decision.promote
    assert "undefined for both models" in decision.reason
    one = {"g=x": {"rows": 5, "challenger": {"accuracy": 1.0}, "champion": {"roc_auc": 0.7}}}
    decision = decide({"roc_auc": 0.9}, {"roc_auc": 0.8}, policy, one)
    assert not decision.promote
    assert "slice g=x: metric 'roc_auc' is missing from the challenger metrics" in decision.reason


def test_slice_rule_can_be_disabled_and_can_name_other_metrics():
    disabled = ACCURACY_FLOOR_AND_NO_REGRESSION | {"slice_rule": {"enabled": False}}
    assert decide({"accuracy": 0.92}, {"accuracy": 0.9}, disabled, _slices(0.1, 0.9)).promote
    recall_slices = {
        "g=a": {"rows": 9, "challenger": {"recall": 0.5}, "champion": {"recall": 0.6}},
    }
    policy = ACCURACY_FLOOR_AND_NO_REGRESSION | {"slice_rule": {"metrics": ["recall"]}}
    decision = decide({"accuracy": 0.92}, {"accuracy": 0.9}, policy, recall_slices)
    assert not decision.promote
    assert rule(decision, "slice", "recall", "g=a").verdict == "fail"


# -- policy validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({}, "the policy has no rule"),
        ({"value_thresholds": {"accuracy": {}}}, "policy.value_thresholds.accuracy"),
        ({"value_thresholds": {"accuracy": {"lower": 0.9, "upper": 0.1}}}, "greater than 'upper'"),
        ({"change_thresholds": {"accuracy": {"direction": "higher"}}}, "min_delta"),
        (
            {"change_thresholds": {"my_score": {"min_delta": 0}}},
            "change_thresholds.my_score.direction",
        ),
        ({"change_thresholds": {"f1": {"direction": "up", "min_delta": 0}}}, "direction"),
        ({"value_thresholds": {"f1": {"lower": 0}}, "typo_field": 1}, "typo_field"),
        (
            {"value_thresholds": {"f1": {"lower": 0}}, "slice_rule": {"metrics": ["my_score"]}},
            "direction of 'my_score' is unknown",
        ),
        (
            {"value_thresholds": {"f1": {"lower": 0}}, "slice_rule": {"max_regression": -1}},
            "max_regression",
        ),
        ("{not json", "not valid JSON"),
        (["accuracy"], "must be a mapping"),
    ],
)
def test_invalid_policies_name_the_field(policy, message):
    with pytest.raises(ConfigError) as info:
        parse_policy(policy)
    assert message in str(info.value)


def test_policy_from_json_string_and_custom_direction():
    policy = parse_policy(
        json.dumps(
            {
                "change_thresholds": {"my_score": {"direction": "lower", "min_delta": 0}},
                "directions": {"other": "higher"},
                "slice_rule": {"metrics": ["my_score", "other"]},
            }
        )
    )
    assert isinstance(policy, PromotionPolicy)
    assert policy.direction_of("my_score") == Direction.LOWER
    assert policy.direction_of("other") == Direction.HIGHER


def test_known_directions_match_core_metrics():
    from airflow_mlops.core import metrics

    assert frozenset(metrics.HIGHER_IS_BETTER) == KNOWN_HIGHER_IS_BETTER
    all_metrics = set(metrics.CLASSIFICATION_METRICS) | set(metrics.REGRESSION_METRICS)
    assert all_metrics - KNOWN_HIGHER_IS_BETTER == KNOWN_LOWER_IS_BETTER


# -- the record -----------------------------------------------------------------------------


def test_record_is_json_safe_and_complete():
    import numpy as np

    slices = {
        "g=a": {
            "rows": np.int64(3),
            "challenger": {"accuracy": np.float64(0.9)},
            "champion": {"accuracy": float("nan")},
        }
    }
    decision = decide(
        {"accuracy": np.float64(0.91), "f1": 0.5},
        {"accuracy": 0.9, "f1": 0.4},
        ACCURACY_FLOOR_AND_NO_REGRESSION,
        slices,
    )
    record = decision.to_record()
    text = json.dumps(record, allow_nan=False)
    loaded = json.loads(text)
    assert loaded["schema_version"] == 1
    assert loaded["outcome"] == ("promote" if decision.promote else "reject")
    assert loaded["challenger_metrics"] == {"accuracy": 0.91, "f1": 0.5}
    assert loaded["slice_metrics"]["g=a"]["champion"]["accuracy"] is None
    assert loaded["policy"]["change_thresholds"]["accuracy"]["direction"] == "higher"
    for entry in loaded["rules"]:
        assert {"rule", "metric", "verdict", "detail"} <= set(entry)
    # NaN champion slice metric: fail closed on that slice.
    assert not decision.promote
    assert "slice g=a: accuracy of the champion is not a finite number" in decision.reason


def test_decision_is_deterministic():
    a = decide({"accuracy": 0.9}, {"accuracy": 0.85}, ACCURACY_FLOOR_AND_NO_REGRESSION).to_record()
    b = decide({"accuracy": 0.9}, {"accuracy": 0.85}, ACCURACY_FLOOR_AND_NO_REGRESSION).to_record()
    assert a == b
    assert KNOWN_LOWER_IS_BETTER.isdisjoint(KNOWN_HIGHER_IS_BETTER)


# -- one change-rule evaluator: first model, comparison, missing value, zero baseline ----------

BOTH_CHANGE_CHECKS = {
    "change_thresholds": {
        "f1": {"min_delta": -0.01, "min_relative_delta": 0.05},
        "rmse": {"min_delta": 0.0},
    }
}


def _change_records(challenger, champion):
    from airflow_mlops.core.policy import _change_rules, parse_policy

    rules = _change_rules(challenger, champion, parse_policy(BOTH_CHANGE_CHECKS))
    return [(r.rule, r.metric, r.verdict, r.detail) for r in rules]


def test_one_change_evaluator_serves_the_first_model_and_the_comparison():
    """First model or not, the same evaluator, the same order: per metric, absolute first."""
    first = "first model: no champion to compare with"
    assert _change_records({"f1": 0.8, "rmse": 2.0}, None) == [
        ("change.absolute", "f1", "not_applicable", first),
        ("change.relative", "f1", "not_applicable", first),
        ("change.absolute", "rmse", "not_applicable", first),
    ]
    assert _change_records({"f1": 0.85, "rmse": 2.5}, {"f1": 0.86, "rmse": 2.0}) == [
        (
            "change.absolute",
            "f1",
            "pass",
            "f1: improvement -0.01 (higher is better; challenger 0.85, champion 0.86) "
            ">= min_delta -0.01",
        ),
        (
            "change.relative",
            "f1",
            "fail",
            "f1: relative improvement -0.0116279 (higher is better; challenger 0.85, champion "
            "0.86) < min_relative_delta 0.05",
        ),
        (
            "change.absolute",
            "rmse",
            "fail",
            "rmse: improvement -0.5 (lower is better; challenger 2.5, champion 2) < min_delta 0",
        ),
    ]
    assert _change_records({"f1": 0.8}, {"f1": 0.0, "rmse": 2.0}) == [
        (
            "change.absolute",
            "f1",
            "pass",
            "f1: improvement 0.8 (higher is better; challenger 0.8, champion 0) >= min_delta -0.01",
        ),
        (
            "change.relative",
            "f1",
            "not_applicable",
            "f1: relative change not applicable: the champion's value is exactly 0",
        ),
        (
            "change.absolute",
            "rmse",
            "fail",
            "metric 'rmse' is missing from the challenger metrics: fail closed",
        ),
    ]


def test_change_rule_records_keep_their_numbers():
    """The record fields of both checks, as before the evaluators were merged."""
    decision = decide({"f1": 0.9, "rmse": 1.5}, {"f1": 0.8, "rmse": 2.0}, BOTH_CHANGE_CHECKS)
    records = [r.to_dict() for r in decision.rules]
    assert [(r["challenger"], r["champion"], r["threshold"]) for r in records] == [
        (0.9, 0.8, -0.01),
        (0.9, 0.8, 0.05),
        (1.5, 2.0, 0.0),
    ]
    assert [r["observed"] for r in records] == pytest.approx([0.1, 0.125, 0.5])
    missing = decide({"f1": 0.9}, {"rmse": 2.0}, BOTH_CHANGE_CHECKS).to_record()["rules"]
    assert missing[0] == {
        "rule": "change.absolute",
        "metric": "f1",
        "verdict": "fail",
        "detail": "metric 'f1' is missing from the champion metrics: fail closed",
        "challenger": 0.9,
        "threshold": -0.01,
    }


# -- evidence and confidence ----------------------------------------------------------------

CONFIDENT = {"change_thresholds": {"f1": {"min_delta": 0.0, "min_confidence": 0.9}}}


def _evidence(rows: int = 200, low: float = 0.01, high: float = 0.08, level: float = 0.9):
    from airflow_mlops.core.policy import Evidence

    bounds = {"f1": {"confidence": level, "low": low, "high": high}}
    return Evidence(rows_compared=rows, min_rows=50, rows_excluded=7, difference_bounds=bounds)


def test_min_confidence_needs_the_difference_low_bound_to_clear_the_threshold():
    better = decide({"f1": 0.9}, {"f1": 0.85}, CONFIDENT, evidence=_evidence(low=0.01))
    assert better.promote, better.reason
    assert [r.rule for r in better.rules] == ["change.absolute", "change.absolute.confidence"]
    assert better.rules[1].observed == pytest.approx(0.01)

    unsure = decide({"f1": 0.9}, {"f1": 0.85}, CONFIDENT, evidence=_evidence(low=-0.02))
    assert not unsure.promote
    assert unsure.reason == (
        "not promoted: 1 rule(s) failed: f1: improvement at the low end of the 0.9 interval "
        "-0.02 (higher is better; difference interval [-0.02, 0.08]) < min_delta 0"
    )


def test_min_confidence_reads_the_high_end_for_lower_is_better_metrics():
    policy = {"change_thresholds": {"rmse": {"min_delta": 0.0, "min_confidence": 0.95}}}
    from airflow_mlops.core.policy import Evidence

    def with_bounds(low: float, high: float) -> Evidence:
        bounds = {"rmse": {"confidence": 0.95, "low": low, "high": high}}
        return Evidence(200, 50, difference_bounds=bounds)

    assert decide({"rmse": 1.0}, {"rmse": 1.2}, policy, evidence=with_bounds(-0.3, -0.1)).promote
    crossing = decide({"rmse": 1.0}, {"rmse": 1.2}, policy, evidence=with_bounds(-0.3, 0.05))
    assert not crossing.promote and "at the high end of the 0.95 interval -0.05" in crossing.reason


def test_min_confidence_without_an_interval_at_that_level_fails_closed():
    no_evidence = decide({"f1": 0.9}, {"f1": 0.85}, CONFIDENT)
    assert not no_evidence.promote and "no 0.9 interval of the difference" in no_evidence.reason
    other_level = decide({"f1": 0.9}, {"f1": 0.85}, CONFIDENT, evidence=_evidence(level=0.95))
    assert not other_level.promote
    with pytest.raises(ConfigError, match="min_confidence"):
        parse_policy({"change_thresholds": {"f1": {"min_delta": 0, "min_confidence": 1.0}}})


def test_too_few_comparable_rows_is_insufficient_evidence_not_a_pass():
    decision = decide({"f1": 0.99}, None, CONFIDENT, evidence=_evidence(rows=12))
    assert decision.promote is False and decision.first_model is False
    assert decision.reason == (
        "not promoted: insufficient evidence (12 rows): 12 comparable row(s) < min_rows 50 "
        "(7 excluded because a model trained on them or their membership is unknown)"
    )
    verdicts = {(r.rule, r.verdict) for r in decision.rules}
    assert ("evidence", "fail") in verdicts
    assert ("change.absolute", "not_applicable") in verdicts
    # Enough rows: no evidence rule at all, the other rules decide.
    enough = decide({"f1": 0.9}, {"f1": 0.85}, CONFIDENT, evidence=_evidence(rows=50))
    assert "evidence" not in {r.rule for r in enough.rules} and enough.promote
