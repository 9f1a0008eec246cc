"""Fairness as a promotion gate: disparities of the challenger and the champion, per group.

Measured on the comparison set (the rows neither model trained on, the same rows the
metrics use), from the predictions evaluation already made, for both models:

- ``demographic_parity_difference`` and ``equalized_odds_difference`` per sensitive column
  (fairlearn's definitions, ``between_groups``: largest minus smallest selection rate; the
  larger of the true- and false-positive-rate differences). A multiclass target is judged
  one class against the rest, and the worst class is reported.
- ``recall`` and ``precision`` per class, so a model that got worse on one class (the "30 %
  biased to detect dogs more than cats" case) is caught even when it is better overall.

Bounds (:class:`FairnessBound`): ``max`` is what the disparity (demographic parity,
equalized odds) or the per-class drop versus the champion (recall, precision) must stay
under; ``max_increase`` is the tolerance versus the champion (the disparity, or for the
per-class metrics the gap between the best and the worst class, may not grow by more).
Champion-relative checks are not applicable without a champion on the same rows.

A group (a sensitive value, or a class) with fewer than ``min_rows`` rows cannot support a
verdict: it is reported as "not enough rows (N)" and fails the gate unless
``small_groups: report`` (then the verdict is "not applicable", named in the reason). A
sensitive column missing from the comparison set is a :class:`~airflow_mlops.core.errors.
DataError`.

The spec models are in :mod:`~airflow_mlops.core.governance_spec` (import-light: the YAML
config validates with them); numpy and fairlearn are imported by the functions that measure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.errors import ConfigError, DataError

# The spec models live in the import-light module the pipeline config reads; re-exported here.
from airflow_mlops.core.governance_spec import (
    DEFAULT_MIN_GROUP_ROWS,
    DISPARITY_METRICS,
    FAIRNESS_METRICS,
    PER_CLASS_METRICS,
    FairnessBound,
    FairnessSpec,
    SensitiveColumn,
    parse_fairness,
)
from airflow_mlops.core.policy import FAIL, NOT_APPLICABLE, PASS, RuleResult

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = [
    "DEFAULT_MIN_GROUP_ROWS",
    "DISPARITY_METRICS",
    "FAIRNESS_ARTIFACT",
    "FAIRNESS_METRICS",
    "PER_CLASS_METRICS",
    "FairnessBound",
    "FairnessSpec",
    "SensitiveColumn",
    "check_sensitive_columns",
    "fairness_rules",
    "fairness_summary",
    "measure_fairness",
    "parse_fairness",
]

FAIRNESS_ARTIFACT = "mlops/fairness.json"
_MISSING = "<missing>"
_SUMMARY_LIMIT = 10


def check_sensitive_columns(
    spec: FairnessSpec, columns: Sequence[str], features: Sequence[str] | None
) -> None:
    """Every sensitive column is in the comparison set; excluded ones are no feature."""
    missing = [c for c in spec.columns if c not in columns]
    if missing:
        raise DataError(
            f"fairness: sensitive column(s) {missing} are not in the comparison set (holdout "
            f"columns: {list(columns)[:50]}); a sensitive column excluded from the features "
            "must still be in the holdout, or fairness cannot be measured"
        )
    used = [c for c in spec.excluded_features if features is not None and c in features]
    if used:
        raise DataError(
            f"fairness: sensitive column(s) {used} have exclude_from_features: true but the "
            "challenger was trained on them: add them to data.exclude"
        )


# -- measuring ------------------------------------------------------------------------------


def measure_fairness(
    spec: FairnessSpec,
    frame: pd.DataFrame,
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray | None,
) -> dict[str, Any]:
    """Per metric, per column/class: both models' values and every group's rows (JSON-safe)."""
    import numpy as np

    y_true = np.asarray(y_true)
    labels = sorted(set(y_true.tolist()) | set(np.asarray(challenger_pred).tolist()), key=str)
    report: dict[str, Any] = {"min_rows": spec.min_rows, "rows": len(y_true), "metrics": {}}
    for metric in spec.metrics:
        if metric in DISPARITY_METRICS:
            report["metrics"][metric] = {
                column: _disparity(
                    metric,
                    spec,
                    _groups(frame[column]),
                    y_true,
                    challenger_pred,
                    champion_pred,
                    labels,
                )
                for column in spec.columns
            }
        else:
            report["metrics"][metric] = _per_class(
                metric, spec, y_true, challenger_pred, champion_pred, labels
            )
    return report


def _groups(series: pd.Series) -> np.ndarray:
    """Group labels as text, missing values as their own group (fairlearn rejects NaN)."""
    return series.astype("object").where(series.notna(), _MISSING).astype(str).to_numpy()


def _positive_classes(spec: FairnessSpec, labels: list[Any]) -> list[Any]:
    """The classes judged one against the rest: the positive one of a binary target."""
    if len(labels) > 2:
        return labels
    if spec.positive_label is None:
        return [max(labels)] if _comparable(labels) else [labels[-1]]
    wanted = [
        lab for lab in labels if lab == spec.positive_label or str(lab) == str(spec.positive_label)
    ]
    if not wanted:
        raise ConfigError(
            f"fairness.positive_label {spec.positive_label!r} is not a class of the target "
            f"(classes: {labels})"
        )
    return wanted[:1]


def _comparable(labels: list[Any]) -> bool:
    try:
        max(labels)
    except TypeError:
        return False
    return True


def _disparity(
    metric: str,
    spec: FairnessSpec,
    groups: np.ndarray,
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray | None,
    labels: list[Any],
) -> dict[str, Any]:
    """The disparity over one column's groups, worst class first, for both models."""
    import numpy as np

    names, counts = np.unique(groups, return_counts=True)
    rows = {str(n): int(c) for n, c in zip(names, counts, strict=True)}
    small = {g: n for g, n in rows.items() if n < spec.min_rows}
    keep = ~np.isin(groups, list(small)) if small else np.ones(len(groups), dtype=bool)
    entry: dict[str, Any] = {"groups": rows, "small_groups": small}
    if len(rows) - len(small) < 2:
        entry["error"] = "fewer than two groups with enough rows"
        return entry
    for who, pred in (("challenger", challenger_pred), ("champion", champion_pred)):
        if pred is None:
            entry[who] = None
            continue
        worst = None
        for cls in _positive_classes(spec, labels):
            value = _fairlearn_disparity(
                metric, y_true[keep] == cls, np.asarray(pred)[keep] == cls, groups[keep]
            )
            if worst is None or value["value"] > worst["value"]:
                worst = {**value, "class": _json_label(cls)}
        entry[who] = worst
    return entry


def _fairlearn_disparity(
    metric: str, y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray
) -> dict[str, Any]:
    """fairlearn's value plus the per-group rates it comes from (to name the groups)."""
    import numpy as np

    try:
        from fairlearn.metrics import (
            MetricFrame,
            demographic_parity_difference,
            equalized_odds_difference,
            false_positive_rate,
            selection_rate,
            true_positive_rate,
        )
    except ImportError as err:  # an optional extra: say how to get it
        raise ConfigError(
            f"evaluation.fairness metric {metric!r} needs the fairlearn package: install "
            "airflow-provider-mlops[fairness]"
        ) from err

    y_true, y_pred = y_true.astype(int), y_pred.astype(int)
    if metric == "demographic_parity_difference":
        value = demographic_parity_difference(y_true, y_pred, sensitive_features=groups)
        rates = {"selection_rate": selection_rate}
    else:
        value = equalized_odds_difference(y_true, y_pred, sensitive_features=groups)
        rates = {
            "true_positive_rate": true_positive_rate,
            "false_positive_rate": false_positive_rate,
        }
    frame = MetricFrame(metrics=rates, y_true=y_true, y_pred=y_pred, sensitive_features=groups)
    by_group = frame.by_group
    # The rate whose spread is the disparity, and the groups at its two ends.
    spreads = {name: float(by_group[name].max() - by_group[name].min()) for name in rates}
    rate = max(spreads, key=lambda name: spreads[name])
    column = by_group[rate]
    return {
        "value": float(value) if np.isfinite(value) else None,
        "rate": rate,
        "highest": {"group": str(column.idxmax()), "rate": float(column.max())},
        "lowest": {"group": str(column.idxmin()), "rate": float(column.min())},
        "by_group": {
            name: {str(g): _finite(v) for g, v in by_group[name].items()} for name in rates
        },
    }


def _per_class(
    metric: str,
    spec: FairnessSpec,
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray | None,
    labels: list[Any],
) -> dict[str, Any]:
    """Recall (rows: true members) or precision (rows: predicted members) per class."""
    import numpy as np

    entry: dict[str, Any] = {"classes": {}}
    for cls in labels:
        key = str(_json_label(cls))
        item: dict[str, Any] = {}
        for who, pred in (("challenger", challenger_pred), ("champion", champion_pred)):
            if pred is None:
                item[who] = None
                continue
            pred = np.asarray(pred)
            base = (y_true == cls) if metric == "recall" else (pred == cls)
            rows = int(base.sum())
            hits = int(((y_true == cls) & (pred == cls)).sum())
            item[who] = {"rows": rows, "value": hits / rows if rows else None}
        entry["classes"][key] = item
    return entry


def _json_label(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


# -- gating ---------------------------------------------------------------------------------


def fairness_rules(report: Mapping[str, Any], spec: FairnessSpec) -> list[RuleResult]:
    """One rule per bound and column/class, named ``fairness.max`` / ``fairness.max_increase``."""
    rules: list[RuleResult] = []
    for metric, bound in spec.metrics.items():
        measured = report["metrics"][metric]
        if metric in DISPARITY_METRICS:
            for column, entry in measured.items():
                rules += _disparity_rules(metric, column, entry, bound, spec)
        else:
            rules += _class_rules(metric, measured["classes"], bound, spec)
    return rules


def _small(rule: str, metric: str, group: str, rows: int, spec: FairnessSpec) -> RuleResult:
    verdict = FAIL if spec.small_groups == "fail" else NOT_APPLICABLE
    detail = f"{metric} of {group}: not enough rows ({rows}) < fairness.min_rows {spec.min_rows}"
    return RuleResult(rule, metric, verdict, detail, observed=float(rows), slice=group)


def _disparity_rules(
    metric: str, column: str, entry: Mapping[str, Any], bound: FairnessBound, spec: FairnessSpec
) -> list[RuleResult]:
    rules = [
        _small("fairness.groups", metric, f"group {column}={g!r}", n, spec)
        for g, n in entry["small_groups"].items()
    ]
    challenger, champion = entry.get("challenger"), entry.get("champion")
    where = f"over {column!r}"
    if entry.get("error") or challenger is None or challenger.get("value") is None:
        why = entry.get("error") or "undefined for the challenger"
        detail = f"{metric} {where}: {why}: fail closed"
        return [*rules, RuleResult("fairness.max", metric, FAIL, detail, slice=column)]
    value = challenger["value"]
    ends = (
        f"{challenger['rate']} of group {challenger['highest']['group']!r} "
        f"{challenger['highest']['rate']:.3f} vs {challenger['lowest']['group']!r} "
        f"{challenger['lowest']['rate']:.3f}"
        + (f", class {challenger['class']!r}" if challenger.get("class") is not None else "")
    )
    if bound.max is not None:
        ok = value <= bound.max + 1e-9
        detail = f"{metric} {where} is {value:.3f} ({'<=' if ok else '>'} {bound.max:.3f}): {ends}"
        rules.append(
            RuleResult(
                "fairness.max",
                metric,
                PASS if ok else FAIL,
                detail,
                challenger=value,
                threshold=bound.max,
                observed=value,
                slice=column,
            )
        )
    if bound.max_increase is not None:
        rules.append(
            _increase_rule(metric, where, value, champion and champion.get("value"), bound, column)
        )
    return rules


def _increase_rule(
    metric: str,
    where: str,
    value: float,
    champion: float | None,
    bound: FairnessBound,
    group: str,
) -> RuleResult:
    assert bound.max_increase is not None
    if champion is None:
        detail = f"{metric} {where}: no champion value on the same rows to compare with"
        return RuleResult("fairness.max_increase", metric, NOT_APPLICABLE, detail, slice=group)
    increase = value - champion
    ok = increase <= bound.max_increase + 1e-9
    detail = (
        f"{metric} {where} grew by {increase:+.3f} (challenger {value:.3f}, champion "
        f"{champion:.3f}) ({'<=' if ok else '>'} {bound.max_increase:.3f})"
    )
    return RuleResult(
        "fairness.max_increase",
        metric,
        PASS if ok else FAIL,
        detail,
        challenger=value,
        champion=champion,
        threshold=bound.max_increase,
        observed=increase,
        slice=group,
    )


def _class_rules(
    metric: str, classes: Mapping[str, Any], bound: FairnessBound, spec: FairnessSpec
) -> list[RuleResult]:
    rules: list[RuleResult] = []
    gaps: dict[str, list[float]] = {"challenger": [], "champion": []}
    for cls, item in classes.items():
        c, b = item.get("challenger"), item.get("champion")
        group = f"class {cls!r}"
        if c["rows"] < spec.min_rows:
            rules.append(_small("fairness.groups", metric, group, c["rows"], spec))
            continue
        gaps["challenger"].append(c["value"])
        if b is not None and b["value"] is not None:
            gaps["champion"].append(b["value"])
        if bound.max is None:
            continue
        if b is None or b["value"] is None:
            detail = f"{metric} of {group}: no champion value on the same rows to compare with"
            rules.append(RuleResult("fairness.max", metric, NOT_APPLICABLE, detail, slice=group))
            continue
        drop = b["value"] - c["value"]
        ok = drop <= bound.max + 1e-9
        detail = (
            f"{metric} of {group} dropped by {drop:.2f} ({'<=' if ok else '>'} {bound.max:.2f}) "
            f"(challenger {c['value']:.3f}, champion {b['value']:.3f})"
            if drop > 0
            else f"{metric} of {group} did not drop (challenger {c['value']:.3f}, champion "
            f"{b['value']:.3f})"
        )
        rules.append(
            RuleResult(
                "fairness.max",
                metric,
                PASS if ok else FAIL,
                detail,
                challenger=c["value"],
                champion=b["value"],
                threshold=bound.max,
                observed=drop,
                slice=group,
            )
        )
    if bound.max_increase is not None and len(gaps["challenger"]) >= 2:
        gap = max(gaps["challenger"]) - min(gaps["challenger"])
        champion_gap = (
            max(gaps["champion"]) - min(gaps["champion"])
            if len(gaps["champion"]) == len(gaps["challenger"])
            else None
        )
        rules.append(
            _increase_rule(metric, "gap between classes", gap, champion_gap, bound, "classes")
        )
    return rules


def fairness_summary(rules: Sequence[RuleResult], artifact_path: str) -> dict[str, Any]:
    """The small part for XCom: counts of verdicts and the failed rules' details."""
    fairness = [r for r in rules if r.rule.startswith("fairness.")]
    failed = [r.detail for r in fairness if r.verdict == FAIL]
    skipped = [r.detail for r in fairness if r.verdict == NOT_APPLICABLE]
    # Many classes or groups would bloat XCom: the first few here, all in the artifact.
    return {
        "artifact_path": artifact_path,
        "passed": sum(r.verdict == PASS for r in fairness),
        "failed_count": len(failed),
        "failed": failed[:_SUMMARY_LIMIT],
        "not_applicable_count": len(skipped),
        "not_applicable": skipped[:_SUMMARY_LIMIT],
    }
