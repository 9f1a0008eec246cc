"""Promotion policy: readable rules that decide whether a challenger replaces the champion.

The policy is data (a pydantic model a user writes in YAML or a DAG), and :func:`decide`
is a pure function of two metric dictionaries and that policy. Nothing here touches
MLflow, files or Airflow, so every rule is unit-testable and the same inputs always give
the same decision record.

Semantics (also in ``docs/operators/evaluation-and-promotion.md``):

- **Value thresholds** ``{metric: {lower, upper}}``: the challenger's value must lie in
  ``[lower, upper]`` (inclusive; either bound may be omitted).
- **Change thresholds** ``{metric: {direction, min_delta, min_relative_delta}}`` compare
  the challenger ``c`` with the champion ``b`` on the same rows. ``direction`` says which
  way is better. The *improvement* is ``c - b`` when higher is better, ``b - c`` when lower
  is better. ``min_delta`` is the smallest accepted improvement: negative tolerates a
  regression of that size, positive requires an improvement. ``min_relative_delta`` does the
  same with ``improvement / |b|``; when ``b`` is exactly 0 that rule is *not applicable*.
- **Slices**: when per-slice metrics are given, no slice may regress by more than
  ``slice_rule.max_regression`` on the slice metrics (default: the change-threshold
  metrics).
- **Fairness** (``extra_rules``, from :mod:`airflow_mlops.core.fairness`): disparity and
  per-class bounds measured on the same rows; a failed one refuses the challenger.
- **First model** (no champion): change and slice rules are skipped; value thresholds
  still apply.
- **Missing metric**: any metric the policy names that is missing (or not finite) fails
  closed.
- **Exact tie**: when every metric the policy names is exactly equal for both models, the
  challenger is not promoted unless ``promote_on_tie`` is true.
- **Evidence** (:class:`Evidence`, given by evaluation when a champion exists): with fewer
  comparable rows than ``min_rows`` (rows neither model trained on) the ``evidence`` rule
  fails and the reason reads ``not promoted: insufficient evidence (N rows)``; change and
  slice rules are then not applicable (too few rows to mean anything), never passed.
- **Confidence** ``min_confidence`` on a change threshold (``L`` in [0.5, 1)): besides the
  point estimate, the bound of the two-sided bootstrap interval at level ``L`` of the
  difference challenger - champion must clear the threshold: its low end when higher is
  better, its high end (negated) when lower is better; the relative check divides that
  bound by ``|champion|``. The bound of a two-sided ``L`` interval is a one-sided
  ``(1 + L) / 2`` bound (0.95 -> 97.5 %). No interval for the metric at that level (too few
  rows, a degenerate resample) fails closed.
- **Shadow evidence** (:func:`shadow_evidence_rule`, ``promotion.require_shadow_partitions``,
  applied by the promote step): the challenger must have been scored in shadow beside the
  current champion on ``N`` labelled partitions, and its mean improvement on the gated metric
  over the newest ``N`` must reach ``shadow_min_delta``; fewer partitions fail as
  ``shadow evidence from K of N partitions``, never pass.

Over 600 lines on purpose: the policy model, its rules and the reason text are read together
when a decision is questioned, and every rule is a few lines of the same shape.

Boundaries are inclusive up to ``float_tolerance`` (1e-9 by default) so that a tolerance of
``-0.01`` accepts a drop from 0.86 to 0.85 despite binary floating-point rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.jsonsafe import json_safe, parse_json_mapping

__all__ = [
    "DEFAULT_MIN_ROWS",
    "EVALUATION_ON",
    "FAIL",
    "KNOWN_HIGHER_IS_BETTER",
    "KNOWN_LOWER_IS_BETTER",
    "NOT_APPLICABLE",
    "PASS",
    "RECORD_SCHEMA_VERSION",
    "ChangeThreshold",
    "Decision",
    "Direction",
    "Evidence",
    "PromotionPolicy",
    "RuleResult",
    "SliceRule",
    "ValueThreshold",
    "Verdict",
    "decide",
    "default_direction",
    "default_policy",
    "parse_policy",
    "shadow_evidence_rule",
]

RECORD_SCHEMA_VERSION = 1

#: ``evaluation.on`` values: the challenger's holdout minus the champion's training rows, or
#: only the partitions after the champion's window (forward evaluation). Kept here, with the
#: evidence rule, because operators and the YAML config validate them at DAG-parse time.
EVALUATION_ON = ("holdout", "newest")
#: Fewer comparable rows than this and the decision is "insufficient evidence". At 50 rows a
#: 95 % interval of an accuracy near 0.85 is about +/- 0.10 wide: a smaller floor lets noise
#: decide.
DEFAULT_MIN_ROWS = 50

PASS = "pass"
FAIL = "fail"
NOT_APPLICABLE = "not_applicable"
Verdict = Literal["pass", "fail", "not_applicable"]

# Which way is better for the metrics that core.metrics computes. Kept here (and checked
# against core.metrics.HIGHER_IS_BETTER by a test) so that this module stays free of
# numpy/sklearn and can validate a policy at DAG-parse time.
KNOWN_HIGHER_IS_BETTER = frozenset({"accuracy", "precision", "recall", "f1", "roc_auc", "r2"})
KNOWN_LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})


class Direction(str, Enum):
    """Which way a metric improves."""

    HIGHER = "higher"
    LOWER = "lower"


def default_direction(metric: str) -> Direction | None:
    """The usual direction of a standard metric name, or None when unknown."""
    if metric in KNOWN_HIGHER_IS_BETTER:
        return Direction.HIGHER
    if metric in KNOWN_LOWER_IS_BETTER:
        return Direction.LOWER
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_one_or_both(model: BaseModel, first: str, second: str) -> None:
    """At least one of the two fields is set, and each one set is a finite number."""
    values = {name: getattr(model, name) for name in (first, second)}
    if all(value is None for value in values.values()):
        raise ValueError(f"give at least one of '{first}' or '{second}'")
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"'{name}' must be a finite number, got {value}")


class ValueThreshold(_Strict):
    """Absolute bounds on the challenger's value, both inclusive."""

    lower: float | None = Field(default=None, description="Smallest accepted value.")
    upper: float | None = Field(default=None, description="Largest accepted value.")

    @model_validator(mode="after")
    def _check_bounds(self) -> ValueThreshold:
        _check_one_or_both(self, "lower", "upper")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"'lower' ({self.lower}) is greater than 'upper' ({self.upper})")
        return self


class ChangeThreshold(_Strict):
    """How the challenger must compare with the champion on one metric.

    ``min_delta``: smallest accepted improvement in the metric's own units (negative = a
    tolerated regression, positive = a required improvement). ``min_relative_delta``: the
    same as a fraction of ``|champion|``.
    """

    direction: Direction | None = Field(
        default=None,
        description="'higher' or 'lower' is better; defaults for standard metric names.",
    )
    min_delta: float | None = None
    min_relative_delta: float | None = None
    min_confidence: float | None = Field(
        default=None,
        ge=0.5,
        lt=1.0,
        description="Also require the bound of the difference's bootstrap interval at this "
        "level to clear the threshold (see the module docstring).",
    )

    @model_validator(mode="after")
    def _check_deltas(self) -> ChangeThreshold:
        _check_one_or_both(self, "min_delta", "min_relative_delta")
        return self


class SliceRule(_Strict):
    """Per-slice no-regression, applied when slices are evaluated and a champion exists."""

    enabled: bool = True
    metrics: list[str] | None = Field(
        default=None,
        description="Metrics checked per slice; default: the change-threshold metrics.",
    )
    max_regression: float = Field(
        default=0.0, ge=0.0, description="Largest accepted per-slice regression (metric units)."
    )
    min_rows: int = Field(
        default=1, ge=1, description="Slices with fewer holdout rows are not applicable."
    )


class PromotionPolicy(_Strict):
    """The full promotion policy. At least one value or change threshold is required."""

    value_thresholds: dict[str, ValueThreshold] = Field(default_factory=dict)
    change_thresholds: dict[str, ChangeThreshold] = Field(default_factory=dict)
    slice_rule: SliceRule = Field(default_factory=SliceRule)
    promote_on_tie: bool = False
    float_tolerance: float = Field(default=1e-9, ge=0.0, le=1e-3)
    directions: dict[str, Direction] = Field(
        default_factory=dict,
        description="Direction of custom metrics used by slice rules (standard names are known).",
    )

    @model_validator(mode="after")
    def _check_policy(self) -> PromotionPolicy:
        if not self.value_thresholds and not self.change_thresholds:
            # An empty policy would promote anything that loads: refuse it (fail closed).
            raise ValueError(
                "the policy has no rule: give at least one entry in 'value_thresholds' or "
                "'change_thresholds'"
            )
        for metric, rule in self.change_thresholds.items():
            if rule.direction is None and self._direction_or_none(metric) is None:
                raise ValueError(
                    f"change_thresholds.{metric}.direction is required: {metric!r} is not a "
                    "standard metric name, say 'higher' or 'lower'"
                )
        for metric in self.slice_metrics():
            if self.direction_of(metric, required=False) is None:
                raise ValueError(
                    f"slice_rule.metrics: direction of {metric!r} is unknown; add it to "
                    "'directions' or to 'change_thresholds'"
                )
        return self

    def _direction_or_none(self, metric: str) -> Direction | None:
        return self.directions.get(metric) or default_direction(metric)

    def direction_of(self, metric: str, *, required: bool = True) -> Direction | None:
        """Direction of ``metric``: the change threshold's, else ``directions``, else standard."""
        rule = self.change_thresholds.get(metric)
        direction = (rule.direction if rule else None) or self._direction_or_none(metric)
        if direction is None and required:
            raise ConfigError(f"direction of metric {metric!r} is unknown")
        return direction

    def slice_metrics(self) -> list[str]:
        if self.slice_rule.metrics is not None:
            return list(self.slice_rule.metrics)
        return list(self.change_thresholds)

    def confidence_levels(self) -> dict[str, float]:
        """``{metric: min_confidence}`` of the change thresholds that set one."""
        return {
            metric: rule.min_confidence
            for metric, rule in self.change_thresholds.items()
            if rule.min_confidence is not None
        }

    def named_metrics(self) -> list[str]:
        """Every metric the policy looks at, in a stable order (value rules first)."""
        seen = dict.fromkeys([*self.value_thresholds, *self.change_thresholds])
        return list(seen)


def parse_policy(policy: PromotionPolicy | Mapping[str, Any] | str) -> PromotionPolicy:
    """Build a policy from a model, a mapping or a JSON string; errors name the field."""
    if isinstance(policy, PromotionPolicy):
        return policy
    fields = parse_json_mapping(policy, "policy")
    try:
        return PromotionPolicy.model_validate(fields)
    except ValidationError as err:
        problems = "; ".join(
            f"policy.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
            for e in err.errors()
        )
        raise ConfigError(f"invalid promotion policy: {problems}") from err


def default_policy(task: str) -> PromotionPolicy:
    """At least as good as the champion on f1 (classification) or rmse (regression)."""
    metric = "rmse" if task == "regression" else "f1"
    return PromotionPolicy.model_validate({"change_thresholds": {metric: {"min_delta": 0.0}}})


# -- decision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleResult:
    """One rule applied to one metric (and optionally one slice), with its verdict."""

    # "value.lower", "value.upper", "change.absolute", "change.relative" (each optionally
    # followed by its ".confidence" check), "slice", "tie", "evidence", and the fairness
    # gate's "fairness.max", "fairness.max_increase", "fairness.groups", and the promote
    # step's "shadow_evidence"
    rule: str
    metric: str
    verdict: Verdict
    detail: str
    challenger: float | None = None
    champion: float | None = None
    threshold: float | None = None
    observed: float | None = None  # the improvement or relative improvement compared
    slice: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k in _ALWAYS_KEYS}


_ALWAYS_KEYS = frozenset({"rule", "metric", "verdict", "detail"})


@dataclass(frozen=True)
class Evidence:
    """How much the comparison rests on: rows neither model trained on, and intervals.

    ``difference_bounds`` maps a metric to the bootstrap interval of challenger - champion
    at the level its ``min_confidence`` asks for: ``{"confidence", "low", "high"}``.
    ``interval_error`` says why an interval could not be computed (rules needing one fail).
    """

    rows_compared: int
    min_rows: int
    rows_excluded: int = 0
    difference_bounds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    interval_error: str | None = None

    @property
    def sufficient(self) -> bool:
        return self.rows_compared >= self.min_rows


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide` and everything needed to explain it."""

    promote: bool
    reason: str
    first_model: bool
    tie: bool
    rules: tuple[RuleResult, ...]
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    policy: dict[str, Any]
    slice_metrics: dict[str, Any] | None = field(default=None)

    @property
    def failed_rules(self) -> list[RuleResult]:
        return [r for r in self.rules if r.verdict == FAIL]

    def to_record(self) -> dict[str, Any]:
        """JSON-safe decision record (``json.dumps`` works on it without ``default=``)."""
        record = {
            "schema_version": RECORD_SCHEMA_VERSION,
            "promote": self.promote,
            "outcome": "promote" if self.promote else "reject",
            "reason": self.reason,
            "first_model": self.first_model,
            "tie": self.tie,
            "challenger_metrics": _json_metrics(self.challenger_metrics),
            "champion_metrics": (
                None if self.champion_metrics is None else _json_metrics(self.champion_metrics)
            ),
            "rules": [r.to_dict() for r in self.rules],
            "policy": self.policy,
        }
        if self.slice_metrics is not None:
            record["slice_metrics"] = json_safe(self.slice_metrics)
        return record


def decide(
    challenger_metrics: Mapping[str, Any],
    champion_metrics: Mapping[str, Any] | None,
    policy: PromotionPolicy | Mapping[str, Any],
    slice_metrics: Mapping[str, Mapping[str, Any]] | None = None,
    evidence: Evidence | None = None,
    extra_rules: Sequence[RuleResult] = (),
) -> Decision:
    """Apply ``policy`` to the challenger's and champion's metrics on the same holdout.

    ``champion_metrics`` is None when there is no champion yet (first model), or when there
    is one but no row to score it on (then ``evidence`` says so).
    ``slice_metrics`` maps a slice name (``"column=value"``) to
    ``{"rows": int, "challenger": {metric: value}, "champion": {metric: value} | None}``.
    ``evidence``: the comparable rows and intervals (see :class:`Evidence`); None when the
    caller has no such facts (no evidence rule, and ``min_confidence`` rules fail closed).
    ``extra_rules``: verdicts computed elsewhere on the same rows (the fairness gate,
    :mod:`airflow_mlops.core.fairness`); any of them failing refuses the challenger.
    """
    policy = parse_policy(policy)
    challenger = dict(challenger_metrics)
    champion = None if champion_metrics is None else dict(champion_metrics)
    first_model = champion is None and evidence is None
    insufficient = evidence is not None and not evidence.sufficient

    rules: list[RuleResult] = []
    rules += _value_rules(challenger, policy)
    if insufficient:
        assert evidence is not None
        rules.append(_evidence_rule(evidence))
        rules += _skipped_for_evidence(policy, evidence)
    else:
        rules += _change_rules(challenger, champion, policy, evidence)
        if not first_model and slice_metrics and policy.slice_rule.enabled:
            rules += _slice_rules(slice_metrics, policy)
    rules += list(extra_rules)

    tie = not first_model and not insufficient and _is_exact_tie(challenger, champion, policy)
    failed = [r for r in rules if r.verdict == FAIL]
    if tie:
        rules.append(_tie_rule(challenger, policy))
    promote = not failed and (not tie or policy.promote_on_tie)
    reason = _reason(promote, first_model, tie, rules, policy)
    return Decision(
        promote=promote,
        reason=reason,
        first_model=first_model,
        tie=tie,
        rules=tuple(rules),
        challenger_metrics=challenger,
        champion_metrics=champion,
        policy=policy.model_dump(mode="json"),
        slice_metrics=None if slice_metrics is None else dict(slice_metrics),
    )


def _number(metrics: Mapping[str, Any] | None, metric: str) -> float | None:
    """The metric as a finite float, or None when missing or not a finite number."""
    if metrics is None or metric not in metrics or metrics[metric] is None:
        return None
    try:
        value = float(metrics[metric])
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _missing(metric: str, who: str, metrics: Mapping[str, Any] | None) -> str:
    if metrics is not None and metrics.get(metric) is not None:
        return f"{metric} of the {who} is not a finite number ({metrics[metric]!r}): fail closed"
    return f"metric {metric!r} is missing from the {who} metrics: fail closed"


def _value_rules(challenger: dict[str, Any], policy: PromotionPolicy) -> list[RuleResult]:
    results = []
    tol = policy.float_tolerance
    for metric, bounds in policy.value_thresholds.items():
        value = _number(challenger, metric)
        for bound_name, bound in (("lower", bounds.lower), ("upper", bounds.upper)):
            if bound is None:
                continue
            rule = f"value.{bound_name}"
            if value is None:
                results.append(
                    RuleResult(
                        rule,
                        metric,
                        FAIL,
                        _missing(metric, "challenger", challenger),
                        threshold=bound,
                    )
                )
                continue
            ok = value >= bound - tol if bound_name == "lower" else value <= bound + tol
            relation = (">=" if ok else "<") if bound_name == "lower" else ("<=" if ok else ">")
            detail = f"{metric} {_fmt(value)} {relation} {bound_name} bound {_fmt(bound)}"
            results.append(
                RuleResult(
                    rule, metric, PASS if ok else FAIL, detail, challenger=value, threshold=bound
                )
            )
    return results


def _improvement(challenger: float, champion: float, direction: Direction) -> float:
    return challenger - champion if direction == Direction.HIGHER else champion - challenger


class _ChangeCheck(NamedTuple):
    """One of the two checks a change threshold may set."""

    kind: str  # the rule's name in the decision record
    threshold_name: str  # the ChangeThreshold field holding the threshold
    measure: str  # what is compared with the threshold, as the detail says it


_CHANGE_CHECKS = (
    _ChangeCheck("change.absolute", "min_delta", "improvement"),
    _ChangeCheck("change.relative", "min_relative_delta", "relative improvement"),
)


def _evidence_rule(evidence: Evidence) -> RuleResult:
    detail = (
        f"insufficient evidence ({evidence.rows_compared} rows): {evidence.rows_compared} "
        f"comparable row(s) < min_rows {evidence.min_rows} "
        f"({evidence.rows_excluded} excluded because a model trained on them or their "
        "membership is unknown)"
    )
    return RuleResult(
        "evidence",
        "rows_compared",
        FAIL,
        detail,
        threshold=float(evidence.min_rows),
        observed=float(evidence.rows_compared),
    )


def _skipped_for_evidence(policy: PromotionPolicy, evidence: Evidence) -> list[RuleResult]:
    detail = f"skipped: insufficient evidence ({evidence.rows_compared} rows)"
    return [
        RuleResult(check.kind, metric, NOT_APPLICABLE, detail)
        for metric, rule in policy.change_thresholds.items()
        for check in _CHANGE_CHECKS
        if getattr(rule, check.threshold_name) is not None
    ]


def _change_rules(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    policy: PromotionPolicy,
    evidence: Evidence | None = None,
) -> list[RuleResult]:
    """Every change threshold of the policy, per metric: absolute first, then relative, each
    followed by its confidence check when ``min_confidence`` is set."""
    results = []
    for metric, rule in policy.change_thresholds.items():
        for check in _CHANGE_CHECKS:
            threshold = getattr(rule, check.threshold_name)
            if threshold is None:
                continue
            result = _change_rule(check, threshold, metric, challenger, champion, policy)
            results.append(result)
            if rule.min_confidence is not None and result.verdict != NOT_APPLICABLE:
                results.append(
                    _confidence_rule(
                        check, threshold, metric, rule.min_confidence, result, policy, evidence
                    )
                )
    return results


def _confidence_rule(
    check: _ChangeCheck,
    threshold: float,
    metric: str,
    level: float,
    point: RuleResult,
    policy: PromotionPolicy,
    evidence: Evidence | None,
) -> RuleResult:
    """The improvement's bound from the difference interval at ``level`` vs the threshold."""
    kind = f"{check.kind}.confidence"
    bounds = None if evidence is None else evidence.difference_bounds.get(metric)
    if bounds is None or abs(float(bounds.get("confidence", -1)) - level) > 1e-12:
        why = (evidence.interval_error if evidence is not None else None) or "none was computed"
        detail = f"{metric}: no {level:g} interval of the difference ({why}): fail closed"
        return RuleResult(kind, metric, FAIL, detail, threshold=threshold)
    direction = policy.direction_of(metric)
    if direction == Direction.HIGHER:
        bound, side = float(bounds["low"]), "low"
    else:
        bound, side = -float(bounds["high"]), "high"
    if check.kind == "change.relative":
        if point.champion is None or point.champion == 0.0:
            detail = f"{metric}: relative confidence check not applicable (champion value 0)"
            return RuleResult(kind, metric, NOT_APPLICABLE, detail, threshold=threshold)
        bound /= abs(point.champion)
    ok = bound >= threshold - policy.float_tolerance
    detail = (
        f"{metric}: {check.measure} at the {side} end of the {level:g} interval "
        f"{_fmt(bound)} ({direction.value} is better; difference interval "
        f"[{_fmt(float(bounds['low']))}, {_fmt(float(bounds['high']))}]) "
        f"{'>=' if ok else '<'} {check.threshold_name} {_fmt(threshold)}"
    )
    return RuleResult(
        kind,
        metric,
        PASS if ok else FAIL,
        detail,
        point.challenger,
        point.champion,
        threshold,
        observed=bound,
    )


def _change_rule(
    check: _ChangeCheck,
    threshold: float,
    metric: str,
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    policy: PromotionPolicy,
) -> RuleResult:
    """One change check of one metric: the improvement, absolute or relative to ``|b|``."""
    kind = check.kind
    if champion is None:
        detail = "first model: no champion to compare with"
        return RuleResult(kind, metric, NOT_APPLICABLE, detail, threshold=threshold)
    direction = policy.direction_of(metric)
    c_value, b_value = _number(challenger, metric), _number(champion, metric)
    if c_value is None or b_value is None:
        who, metrics = ("challenger", challenger) if c_value is None else ("champion", champion)
        detail = _missing(metric, who, metrics)
        return RuleResult(
            kind, metric, FAIL, detail, challenger=c_value, champion=b_value, threshold=threshold
        )
    observed = _improvement(c_value, b_value, direction)
    if kind == "change.relative":
        if b_value == 0.0:
            detail = f"{metric}: relative change not applicable: the champion's value is exactly 0"
            return RuleResult(kind, metric, NOT_APPLICABLE, detail, c_value, b_value, threshold)
        observed /= abs(b_value)
    ok = observed >= threshold - policy.float_tolerance
    detail = (
        f"{metric}: {check.measure} {_fmt(observed)} ({direction.value} is better; challenger "
        f"{_fmt(c_value)}, champion {_fmt(b_value)}) {'>=' if ok else '<'} "
        f"{check.threshold_name} {_fmt(threshold)}"
    )
    verdict = PASS if ok else FAIL
    return RuleResult(kind, metric, verdict, detail, c_value, b_value, threshold, observed=observed)


def _slice_rules(
    slice_metrics: Mapping[str, Mapping[str, Any]], policy: PromotionPolicy
) -> list[RuleResult]:
    results = []
    rule = policy.slice_rule
    tol = policy.float_tolerance
    for name, entry in slice_metrics.items():
        rows = int(entry.get("rows") or 0)
        c_metrics, b_metrics = entry.get("challenger"), entry.get("champion")
        for metric in policy.slice_metrics():
            if rows < rule.min_rows:
                detail = f"slice {name}: {rows} holdout rows < min_rows {rule.min_rows}"
                results.append(RuleResult("slice", metric, NOT_APPLICABLE, detail, slice=name))
                continue
            c_value, b_value = _number(c_metrics, metric), _number(b_metrics, metric)
            if c_value is None and b_value is None:
                # e.g. roc_auc on a slice holding a single class: undefined for both models.
                detail = f"slice {name}: {metric} is undefined for both models on this slice"
                results.append(RuleResult("slice", metric, NOT_APPLICABLE, detail, slice=name))
                continue
            if c_value is None or b_value is None:
                who, metrics = (
                    ("challenger", c_metrics) if c_value is None else ("champion", b_metrics)
                )
                detail = f"slice {name}: {_missing(metric, who, metrics)}"
                results.append(
                    RuleResult("slice", metric, FAIL, detail, c_value, b_value, slice=name)
                )
                continue
            direction = policy.direction_of(metric)
            improvement = _improvement(c_value, b_value, direction)
            ok = improvement >= -rule.max_regression - tol
            detail = (
                f"slice {name}: {metric} challenger {_fmt(c_value)} vs champion "
                f"{_fmt(b_value)} ({direction.value} is better): "
                f"{'within' if ok else 'exceeds'} max_regression {_fmt(rule.max_regression)}"
            )
            results.append(
                RuleResult(
                    "slice",
                    metric,
                    PASS if ok else FAIL,
                    detail,
                    c_value,
                    b_value,
                    rule.max_regression,
                    observed=improvement,
                    slice=name,
                )
            )
    return results


def _is_exact_tie(
    challenger: dict[str, Any], champion: dict[str, Any] | None, policy: PromotionPolicy
) -> bool:
    """Every metric the policy names is present and exactly equal for both models."""
    if champion is None:
        return False
    names = policy.named_metrics()
    pairs = [(_number(challenger, m), _number(champion, m)) for m in names]
    return bool(pairs) and all(c is not None and c == b for c, b in pairs)


def _tie_rule(challenger: dict[str, Any], policy: PromotionPolicy) -> RuleResult:
    names = ", ".join(policy.named_metrics())
    if policy.promote_on_tie:
        return RuleResult(
            "tie", names, PASS, f"exact tie with the champion on {names}; promote_on_tie=True"
        )
    return RuleResult(
        "tie", names, FAIL, f"exact tie with the champion on {names}; promote_on_tie=False"
    )


def _reason(
    promote: bool, first_model: bool, tie: bool, rules: list[RuleResult], policy: PromotionPolicy
) -> str:
    failed = [r for r in rules if r.verdict == FAIL and r.rule != "tie"]
    passed = [r for r in rules if r.verdict == PASS and r.rule != "tie"]
    not_applicable = [
        r
        for r in rules
        if r.verdict == NOT_APPLICABLE
        and not r.detail.startswith(("first model", "skipped: insufficient evidence"))
    ]
    prefix = "first model (no champion): " if first_model else ""
    evidence = next((r for r in failed if r.rule == "evidence"), None)
    if evidence is not None:
        others = dict.fromkeys(r.detail for r in failed if r is not evidence)
        text = "not promoted: " + evidence.detail
        if others:
            text += "; also failed: " + "; ".join(others)
    elif failed:
        details = dict.fromkeys(r.detail for r in failed)  # one line per distinct problem
        text = f"not promoted: {prefix}{len(failed)} rule(s) failed: " + "; ".join(details)
        if tie:
            text += (
                f"; also an exact tie with the champion (promote_on_tie={policy.promote_on_tie})"
            )
    elif tie and not policy.promote_on_tie:
        text = (
            f"not promoted: exact tie with the champion on {', '.join(policy.named_metrics())} "
            "(promote_on_tie=False)"
        )
    elif tie:
        text = (
            f"promoted: exact tie with the champion on {', '.join(policy.named_metrics())} "
            f"and promote_on_tie=True; {len(passed)} rule(s) passed"
        )
    elif first_model:
        skipped = "; change and slice rules skipped" if policy.change_thresholds else ""
        text = f"promoted: {prefix}{len(passed)} value rule(s) passed{skipped}"
    else:
        text = f"promoted: all {len(passed)} applicable rule(s) passed"
    if not_applicable:
        text += "; not applicable: " + "; ".join(r.detail for r in not_applicable)
    if promote != text.startswith("promoted"):  # the reason and the verdict never disagree
        raise AssertionError(f"internal error: promote={promote} but reason {text!r}")
    return text


def shadow_evidence_rule(
    records: Sequence[Mapping[str, Any]],
    *,
    required: int,
    metric: str,
    min_delta: float,
    champion_version: str | None,
    direction: Direction | None = None,
    float_tolerance: float = 1e-9,
) -> RuleResult:
    """The ``shadow_evidence`` rule: enough shadow partitions against this champion, and the
    challenger's mean improvement on ``metric`` over the newest ``required`` of them.

    ``records`` are the challenger's per-partition shadow records (oldest first), each
    ``{"partition", "champion_version", "rows", "champion": {metric: v}, "challenger": {...}}``
    (:mod:`airflow_mlops.core.shadow`). Only records against ``champion_version`` count: a
    comparison with a former champion says nothing about this one.
    """
    rule = "shadow_evidence"
    if champion_version is None:
        detail = "first model: no champion to score beside in shadow"
        return RuleResult(rule, metric, NOT_APPLICABLE, detail, threshold=float(required))
    direction = direction or default_direction(metric)
    if direction is None:
        raise ConfigError(f"shadow metric {metric!r} has no known direction")
    relevant = [r for r in records if str(r.get("champion_version")) == str(champion_version)]
    count = len(relevant)
    if count < required:
        detail = (
            f"shadow evidence from {count} of {required} partitions (beside champion "
            f"version {champion_version})"
        )
        return RuleResult(
            rule, metric, FAIL, detail, threshold=float(required), observed=float(count)
        )
    newest = relevant[-required:]
    improvements = []
    for record in newest:
        c_value = _number(record.get("challenger"), metric)
        b_value = _number(record.get("champion"), metric)
        if c_value is None or b_value is None:
            detail = (
                f"shadow partition {record.get('partition')}: {metric} missing or not finite "
                "for a model: fail closed"
            )
            return RuleResult(rule, metric, FAIL, detail, threshold=min_delta)
        improvements.append(_improvement(c_value, b_value, direction))
    mean = sum(improvements) / len(improvements)
    ok = mean >= min_delta - float_tolerance
    detail = (
        f"shadow {metric}: mean improvement {_fmt(mean)} over {required} partition(s) "
        f"({direction.value} is better; per partition "
        f"{', '.join(_fmt(v) for v in improvements)}) {'>=' if ok else '<'} shadow_min_delta "
        f"{_fmt(min_delta)}"
    )
    return RuleResult(
        rule, metric, PASS if ok else FAIL, detail, threshold=min_delta, observed=mean
    )


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _json_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    return {str(k): _json_number(v) for k, v in metrics.items()}


def _json_number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
