"""Evidence-based approval: promote without asking only when the evidence is confident.

``promotion.approval: auto_if_confident`` asks nobody when every rule of the evaluation
record passed *and* each change threshold still holds at the confidence bound of the
bootstrap interval of the difference challenger - champion (the low end when higher is
better, the high end when lower is better), on at least ``min_rows`` compared rows.
Otherwise the assigned approvers are asked, as with ``approval: manual``.

:func:`approval_outcome` is a pure function of the evaluation record (no Airflow, no
MLflow): the approval task calls it to decide whether to ask, and the promote task calls it
again on the evaluation result to decide whether an approval record is required, so no
"confident" flag travels between tasks. It fails toward asking: a missing interval, a rule
that is not a pass, no champion (nothing to compare with) all ask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.policy import PASS, Direction, parse_policy

__all__ = [
    "APPROVAL_POLICIES",
    "ASK",
    "AUTO_APPROVED",
    "AUTO_IF_CONFIDENT",
    "DEFAULT_AUTO_CONFIDENCE",
    "approval_outcome",
]

AUTO_IF_CONFIDENT = "auto_if_confident"
#: ``promotion.approval`` values.
APPROVAL_POLICIES = ("auto", "manual", AUTO_IF_CONFIDENT)
DEFAULT_AUTO_CONFIDENCE = 0.95
AUTO_APPROVED = "auto_approved"
ASK = "ask"
NOT_PROMOTED = "not_promoted"
_TOLERANCE = 1e-9


def approval_outcome(
    evaluation: Mapping[str, Any], confidence: float | None = None
) -> dict[str, Any]:
    """Whether ``auto_if_confident`` promotes without asking, from the evaluation record.

    ``confidence``: ``promotion.auto_confidence``; None uses each change threshold's
    ``min_confidence``, else 0.95. Returns a JSON-safe record ``{policy, outcome
    (auto_approved | ask | not_promoted), confident, confidence, reason, checks}``; the
    reason reads ``auto-approved: every rule passed at 95% confidence`` or ``asked reviewers:
    <why>``.
    """
    if confidence is not None and not 0.5 <= float(confidence) < 1.0:
        raise ConfigError(f"promotion.auto_confidence must be in [0.5, 1), got {confidence!r}")
    base = {"policy": AUTO_IF_CONFIDENT, "confidence": confidence}
    if not evaluation.get("promote"):
        return {
            **base,
            "outcome": NOT_PROMOTED,
            "confident": False,
            "reason": "not asked: the policy refused the challenger",
            "checks": [],
        }
    policy = parse_policy(evaluation["policy"])
    first_model = evaluation.get("champion") is None
    problems = []
    if first_model:
        problems.append("first model: no champion, so no difference to be confident about")
    problems += [
        _rule_problem(r)
        for r in evaluation.get("rules") or []
        if r["verdict"] != PASS and not (first_model and _skipped_as_first(r))
    ]
    rows, min_rows = evaluation.get("rows_compared"), evaluation.get("min_rows")
    if rows is None or min_rows is None or int(rows) < int(min_rows):
        problems.append(f"{rows} rows compared < min_rows {min_rows}")
    checks: list[dict[str, Any]] = []
    if not first_model and not policy.change_thresholds:
        problems.append("the policy has no change threshold: no difference to be confident about")
    elif not first_model:
        for metric, rule in policy.change_thresholds.items():
            level = confidence or rule.min_confidence or DEFAULT_AUTO_CONFIDENCE
            for kind, threshold in (
                ("absolute", rule.min_delta),
                ("relative", rule.min_relative_delta),
            ):
                if threshold is None:
                    continue
                check = _bound_check(
                    evaluation, metric, policy.direction_of(metric), kind, threshold, level
                )
                checks.append(check)
                if not check["ok"]:
                    problems.append(check["detail"])
    levels = sorted({c["confidence"] for c in checks})
    confident = not problems
    if confident:
        at = " and ".join(f"{_pct(level)} confidence" for level in levels)
        reason = f"auto-approved: every rule passed at {at}"
    else:
        reason = "asked reviewers: " + "; ".join(dict.fromkeys(problems))
    return {
        **base,
        "confidence": levels[0] if len(levels) == 1 else confidence,
        "outcome": AUTO_APPROVED if confident else ASK,
        "confident": confident,
        "reason": reason,
        "checks": checks,
    }


def _skipped_as_first(rule: Mapping[str, Any]) -> bool:
    return str(rule.get("detail") or "").startswith("first model")


def _rule_problem(rule: Mapping[str, Any]) -> str:
    name, metric, verdict = rule.get("rule"), rule.get("metric"), rule["verdict"]
    return f"rule {name} on {metric} is {verdict} ({rule.get('detail')})"


def _bound_check(
    evaluation: Mapping[str, Any],
    metric: str,
    direction: Direction,
    kind: str,
    threshold: float,
    level: float,
) -> dict[str, Any]:
    """The improvement at the interval's pessimistic end compared with the threshold."""
    base = {"metric": metric, "check": kind, "confidence": level, "threshold": threshold}
    interval = ((evaluation.get("intervals") or {}).get(metric) or {}).get("difference")
    if not interval or abs(float(interval.get("confidence", -1)) - level) > 1e-12:
        gated = _confidence_rule_check(evaluation, metric, kind, threshold, level)
        if gated is not None:
            return {**base, **gated}
        recorded = None if not interval else interval.get("confidence")
        why = (evaluation.get("intervals") or {}).get(metric, {}).get("error") or (
            f"the record holds the {recorded:g} interval" if recorded else "none was recorded"
        )
        detail = f"{metric} difference: no {_pct(level)} interval ({why})"
        return {**base, "ok": False, "bound": None, "detail": detail}
    low, high = float(interval["low"]), float(interval["high"])
    higher = direction == Direction.HIGHER
    improvement = low if higher else -high
    side, end = ("lower", low) if higher else ("upper", high)
    if kind == "relative":
        champion = ((evaluation.get("champion_metrics") or {}).get(metric)) or 0.0
        if not champion or not math.isfinite(float(champion)):
            detail = f"{metric} relative difference: champion value {champion!r}, not applicable"
            return {**base, "ok": False, "bound": None, "detail": detail}
        improvement /= abs(float(champion))
    ok = improvement >= threshold - _TOLERANCE
    # Said in the difference's own units: higher is better needs low >= t, lower needs high <= -t.
    # The relative check is said as the improvement (its threshold's own terms).
    relative = kind == "relative"
    up = higher or relative
    limit = threshold if up else 0.0 - threshold
    what = f"{metric} {'relative improvement at the' if relative else 'difference'} {side} bound"
    value = improvement if relative else end
    relation = ("at or above" if up else "at or below") if ok else ("below" if up else "above")
    interval_text = f"{_pct(level)} interval [{low:.4g}, {high:.4g}]"
    detail = f"{what} {value:.4g} {relation} threshold {limit:g} ({interval_text})"
    return {**base, "ok": ok, "bound": value, "detail": detail}


def _confidence_rule_check(
    evaluation: Mapping[str, Any], metric: str, kind: str, threshold: float, level: float
) -> dict[str, Any] | None:
    """The bound from the policy's own ``min_confidence`` rule at ``level``, if it has one.

    Evaluation records intervals at 0.95; a threshold's ``min_confidence`` interval is only
    in its ``change.<kind>.confidence`` rule, whose ``observed`` is the improvement at the
    pessimistic end (already divided by ``|champion|`` for the relative check).
    """
    wanted = ((evaluation.get("policy") or {}).get("change_thresholds") or {}).get(metric) or {}
    if wanted.get("min_confidence") is None or abs(float(wanted["min_confidence"]) - level) > 1e-12:
        return None
    for rule in evaluation.get("rules") or []:
        if rule.get("rule") == f"change.{kind}.confidence" and rule.get("metric") == metric:
            if rule.get("observed") is None:
                return None
            improvement = float(rule["observed"])
            ok = improvement >= threshold - _TOLERANCE
            detail = (
                f"{metric} improvement at the {_pct(level)} bound {improvement:.4g} "
                f"{'at or above' if ok else 'below'} threshold {threshold:g} ({rule.get('detail')})"
            )
            return {"ok": ok, "bound": improvement, "detail": detail}
    return None


def _pct(level: float) -> str:
    return f"{level * 100:g}%"
