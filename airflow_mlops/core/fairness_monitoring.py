"""Fairness monitoring: the champion's disparities per labelled prediction partition.

With ``evaluation.fairness`` and delayed labels, the decay check
(:func:`airflow_mlops.core.performance.check_partitioned_performance`) also measures each
scored partition's labelled rows of the champion version with the gate's own functions
(:func:`~airflow_mlops.core.fairness.measure_fairness`,
:func:`~airflow_mlops.core.fairness.fairness_rules`), from the stored predictions (no model is
loaded). The bounds mean what they mean in the gate, with "the champion" read as "the
champion at promotion": ``max`` bounds a disparity, or the drop of a class's recall/precision
since promotion; ``max_increase`` bounds the growth since promotion. The values at promotion
are the champion's own gate record (``mlops/fairness.json`` on its run); without it the
promotion-relative bounds are "not applicable" (reported, never a pass).

The verdict is the newest measured partition's: a bound crossed there is a ``fairness``
breach (retrain signal and ``fairness`` notification). A group under ``min_rows`` is
reported "not enough rows" and decides nothing; a missing sensitive column is a
:class:`~airflow_mlops.core.errors.DataError`.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.errors import DataError
from airflow_mlops.core.fairness import (
    DISPARITY_METRICS,
    FAIRNESS_ARTIFACT,
    FairnessSpec,
    fairness_rules,
    measure_fairness,
)
from airflow_mlops.core.policy import FAIL, NOT_APPLICABLE, RuleResult

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.tracking import MlflowClient

__all__ = [
    "FAIRNESS_HISTORY_PREFIX",
    "check_monitored_columns",
    "fairness_verdict",
    "log_fairness_history",
    "measure_partition",
    "promotion_fairness",
]

#: MLflow metric keys of the history: ``fairness/<metric>/<column or class>``.
FAIRNESS_HISTORY_PREFIX = "fairness"
_BOUND_RULES = ("fairness.max", "fairness.max_increase")
_LIST_LIMIT = 5  # breaches / small groups listed in the XCom; the report has them all
_MAX_BATCH = 1000


def promotion_fairness(client: MlflowClient, run_id: str | None) -> dict[str, Any] | None:
    """The champion's gate record at promotion (``mlops/fairness.json``), None without one."""
    import json

    from airflow_mlops.core.mlflow_client import read_run_text

    if not run_id:
        return None
    text = read_run_text(client, run_id, FAIRNESS_ARTIFACT)
    return json.loads(text) if text else None


def check_monitored_columns(spec: FairnessSpec, columns: Sequence[str], where: str) -> None:
    """Every sensitive column is in the joined rows, or a :class:`DataError` naming it."""
    missing = [c for c in spec.columns if c not in columns]
    if missing:
        raise DataError(
            f"fairness monitoring: sensitive column(s) {missing} are in neither {where}; the "
            "labels (or the predictions) must carry them next to the id columns"
        )


def _with_promotion_values(
    measured: dict[str, Any], promotion: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``measured`` with the champion's values at promotion in the ``champion`` slots."""
    report = copy.deepcopy(measured)
    before = (promotion or {}).get("metrics") or {}
    for metric, entry in report["metrics"].items():
        old = before.get(metric) or {}
        if metric in DISPARITY_METRICS:
            for column, item in entry.items():
                item["champion"] = (old.get(column) or {}).get("challenger")
        else:
            old_classes = old.get("classes") or {}
            for cls, item in entry["classes"].items():
                item["champion"] = (old_classes.get(cls) or {}).get("challenger")
    return report


def _breach_text(rule: RuleResult) -> str:
    """What crossed which bound, in monitoring's words (now vs at promotion)."""
    metric, where, bound = rule.metric, rule.slice, rule.threshold
    if rule.rule == "fairness.max_increase":
        subject = "gap between classes" if where == "classes" else f"over {where!r}"
        return (
            f"{metric} {subject} grew by {rule.observed:+.3f} since promotion "
            f"({rule.champion:.3f} -> {rule.challenger:.3f}) (> {bound:.3f})"
        )
    if rule.metric in DISPARITY_METRICS:
        return f"{metric} over {where!r} is {rule.observed:.3f} (> {bound:.3f})"
    return (
        f"{metric} of {where} dropped by {rule.observed:.3f} since promotion "
        f"({rule.champion:.3f} -> {rule.challenger:.3f}) (> {bound:.3f})"
    )


def measure_partition(
    spec: FairnessSpec,
    rows: pd.DataFrame,
    target: str,
    prediction_column: str,
    partition: str,
    promotion: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """One partition's fairness record: values, breaches, groups with not enough rows."""
    measured = measure_fairness(
        spec, rows, rows[target].to_numpy(), rows[prediction_column].to_numpy(), None
    )
    rules = fairness_rules(_with_promotion_values(measured, promotion), spec)
    breaches = [
        r for r in rules if r.verdict == FAIL and r.rule in _BOUND_RULES and r.observed is not None
    ]
    # A group under min_rows (or a column left with fewer than two groups) is reported as
    # such: it decides nothing here, and it is never counted as a pass.
    small = [
        r.detail
        for r in rules
        if r.rule == "fairness.groups" or (r.verdict == FAIL and r.observed is None)
    ]
    unmeasured = [
        f"{r.metric} of {r.slice}: no value at promotion ({FAIRNESS_ARTIFACT} on the "
        "champion's run) to compare with"
        for r in rules
        if r.verdict == NOT_APPLICABLE and r.rule in _BOUND_RULES
    ]
    return {
        "partition": partition,
        "rows": len(rows),
        "breached": bool(breaches),
        "breaches": [_breach_text(r) for r in breaches],
        "not_enough_rows": small,
        "not_applicable": unmeasured,
        "values": _values(measured),
        "rules": [r.to_dict() for r in rules],
    }


def _values(measured: Mapping[str, Any]) -> dict[str, float]:
    """``{<metric>/<column or class>: value}`` of the champion now (the history's points)."""
    values: dict[str, float] = {}
    for metric, entry in measured["metrics"].items():
        if metric in DISPARITY_METRICS:
            for column, item in entry.items():
                value = (item.get("challenger") or {}).get("value")
                if value is not None:
                    values[f"{metric}/{column}"] = float(value)
        else:
            for cls, item in entry["classes"].items():
                value = (item.get("challenger") or {}).get("value")
                if value is not None:
                    values[f"{metric}/class_{cls}"] = float(value)
    return values


def fairness_verdict(records: Sequence[Mapping[str, Any]], spec: FairnessSpec) -> dict[str, Any]:
    """The verdict of the newest measured partition, small enough for XCom."""
    if not records:
        return {
            "breached": False,
            "partition": None,
            "reason": "fairness: no verdict: no scored partition of the champion version",
        }
    newest = records[-1]
    where = f"on partition {newest['partition']} [rows {newest['rows']}]"
    if newest["breached"]:
        reason = f"fairness: {'; '.join(newest['breaches'])} {where}"
    elif newest["not_enough_rows"]:
        reason = (
            f"fairness: no verdict for {len(newest['not_enough_rows'])} group(s) {where}: "
            f"{newest['not_enough_rows'][0]}"
        )
    else:
        reason = f"fairness: within bounds {where}"
    return {
        "breached": bool(newest["breached"]),
        "partition": newest["partition"],
        "rows": newest["rows"],
        "reason": reason,
        "breaches": newest["breaches"][:_LIST_LIMIT],
        "not_enough_rows": newest["not_enough_rows"][:_LIST_LIMIT],
        "not_applicable": newest["not_applicable"][:_LIST_LIMIT],
        "partitions_measured": len(records),
        "metrics": sorted(spec.metrics),
    }


def _metric_key(name: str) -> str:
    """An MLflow metric key (letters, digits, ``_-. /``) from a column or class name."""
    return re.sub(r"[^\w\-. /]", "_", f"{FAIRNESS_HISTORY_PREFIX}/{name}")


def log_fairness_history(
    client: MlflowClient, run_id: str | None, records: Sequence[Mapping[str, Any]], steps: Any
) -> int:
    """Log each partition's values once on the champion's run, ``step`` = ``steps(partition)``
    and the partition's date as timestamp; returns the number of partitions logged."""
    from mlflow.entities import Metric

    from airflow_mlops.core.delayed_labels import partition_date

    if not run_id or not records:
        return 0
    marker = _metric_key("labelled_rows")
    seen = {int(m.step) for m in client.get_metric_history(run_id, marker)}
    logged = 0
    for record in records:
        step = steps(record["partition"])
        if step in seen:
            continue
        day = partition_date(record["partition"]) or datetime.now(timezone.utc)
        stamp = int(day.timestamp() * 1000)
        values = {**record["values"], "labelled_rows": float(record["rows"])}
        metrics = [
            Metric(_metric_key(k), float(v), stamp, step)
            for k, v in values.items()
            if math.isfinite(float(v))
        ]
        for start in range(0, len(metrics), _MAX_BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + _MAX_BATCH])
        seen.add(step)
        logged += 1
    return logged
