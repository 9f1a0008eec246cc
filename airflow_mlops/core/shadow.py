"""Batch shadow scoring: ``@challenger`` scored beside ``@champion``, judged on the same rows.

With ``prediction.shadow: true`` the batch prediction of a partition also scores the
``@challenger`` version when it differs from ``@champion`` (:func:`shadow_challenger`) and
writes its rows to ``<predictions_uri>/_shadow/`` (same id columns, ``model_name`` and
``model_version``; :func:`airflow_mlops.core.prediction_layout.shadow_predictions_uri`).
Readers skip ``_``-folders, so consumers of the predictions see only the champion's rows.

When labels land, the decay check (:func:`airflow_mlops.core.performance.check_partitioned_performance`)
calls :func:`shadow_records`: for each partition whose label coverage was reached, the rows
*both* models scored and that have their label are joined on the ids, and each model's
metrics are computed from its stored predictions. :func:`log_shadow_records` keeps one record
per (partition, champion version) in ``mlops/shadow.json`` on the challenger version's run
(and the count in tag ``mlops.shadow.partitions``), so the promote step can read them
(:func:`shadow_evidence`, the ``shadow_evidence`` rule of :mod:`airflow_mlops.core.policy`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.errors import DataNotFoundError, MlopsError

if TYPE_CHECKING:
    import pandas as pd
    from fsspec import AbstractFileSystem
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.data_window import DataWindow
    from airflow_mlops.core.delayed_labels import PartitionScore
    from airflow_mlops.core.policy import RuleResult
    from airflow_mlops.core.prediction import ResolvedModel

__all__ = [
    "SHADOW_ARTIFACT",
    "SHADOW_SCHEMA_VERSION",
    "TAG_SHADOW_PARTITIONS",
    "TAG_SHADOW_REQUIREMENT",
    "log_shadow_records",
    "read_requirement",
    "read_shadow_predictions",
    "read_shadow_records",
    "shadow_challenger",
    "shadow_evidence",
    "shadow_for_approval",
    "shadow_records",
    "shadow_summary",
]

SHADOW_ARTIFACT = "mlops/shadow.json"
SHADOW_SCHEMA_VERSION = 1
TAG_SHADOW_PARTITIONS = "mlops.shadow.partitions"
# On the version an approval asks about: the promote task's shadow requirement as JSON
# (required_partitions, metric, min_delta), so the MLOps page can say whether it is met.
TAG_SHADOW_REQUIREMENT = "mlops.shadow.requirement"
_SHADOW_PREFIX = "__shadow__"


def shadow_challenger(
    client: MlflowClient,
    model_name: str,
    champion_version: int,
    *,
    alias: str = "challenger",
    allowed_registry_uri: str | None = None,
) -> ResolvedModel | None:
    """The ``@challenger`` version to score in shadow, or None when there is none or it is
    the champion itself (nothing to compare)."""
    from airflow_mlops.core.model_uri import model_uri_for
    from airflow_mlops.core.prediction import resolve_model_version
    from airflow_mlops.core.registry import current_alias_version

    number = current_alias_version(client, model_name, alias)
    if number is None or int(number) == int(champion_version):
        return None
    return resolve_model_version(
        client, model_uri_for(model_name, alias=alias), allowed_registry_uri=allowed_registry_uri
    )


def read_shadow_predictions(
    fs_for: Callable[[str], AbstractFileSystem],
    predictions_uri: str,
    window: DataWindow | None = None,
) -> pd.DataFrame | None:
    """The shadow predictions under ``<predictions_uri>/_shadow`` (None when none exist)."""
    from airflow_mlops.core.delayed_labels import read_prediction_partitions
    from airflow_mlops.core.prediction_layout import shadow_predictions_uri

    uri = shadow_predictions_uri(predictions_uri)
    try:
        frame, _ = read_prediction_partitions(fs_for(uri), uri, window)
    except DataNotFoundError:
        return None
    return frame


def _with_label(frame: pd.DataFrame, target: str, columns: Sequence[str]) -> pd.DataFrame:
    return frame[[target, *columns]]


def shadow_records(
    joined: pd.DataFrame,
    shadow: pd.DataFrame,
    scores: Sequence[PartitionScore],
    *,
    id_columns: Sequence[str],
    target: str,
    task: str,
) -> list[dict[str, Any]]:
    """One record per scored partition and challenger version: the labelled rows both the
    champion (``joined``: the predictions with their labels) and the challenger (``shadow``)
    predicted, and each model's metrics on exactly those rows (oldest partition first)."""
    from airflow_mlops.core.delayed_labels import PARTITION_COLUMN, partition_metrics
    from airflow_mlops.core.jsonsafe import json_safe
    from airflow_mlops.core.prediction import MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN

    keys = [PARTITION_COLUMN, *id_columns]
    missing = [c for c in [*keys, MODEL_VERSION_COLUMN] if c not in shadow.columns]
    if missing:
        raise MlopsError(f"The shadow predictions lack the columns {missing}.")
    outputs = [c for c in shadow.columns if c not in {*keys, MODEL_NAME_COLUMN}]
    shadow = shadow.drop_duplicates(subset=keys, keep="last").rename(
        columns={c: f"{_SHADOW_PREFIX}{c}" for c in outputs}
    )
    labelled = joined[joined[target].notna()]
    records = []
    for score in scores:
        if score.status != "scored" or len(score.model_versions) != 1:
            continue
        champion_rows = labelled[labelled[PARTITION_COLUMN] == score.partition]
        pair = champion_rows.merge(
            shadow[shadow[PARTITION_COLUMN] == score.partition], on=keys, how="inner"
        )
        version_column = f"{_SHADOW_PREFIX}{MODEL_VERSION_COLUMN}"
        for version, rows in pair.groupby(version_column, sort=True):
            champion_cols = [c for c in outputs if c in rows.columns and c != MODEL_VERSION_COLUMN]
            challenger = rows[[target, *(f"{_SHADOW_PREFIX}{c}" for c in champion_cols)]]
            challenger = challenger.rename(columns=lambda c: c.removeprefix(_SHADOW_PREFIX))
            champion_metrics = partition_metrics(
                _with_label(rows, target, champion_cols), target, task
            )
            challenger_metrics = partition_metrics(challenger, target, task)
            records.append(
                json_safe(
                    {
                        "partition": score.partition,
                        "champion_version": int(score.model_versions[0]),
                        "challenger_version": int(version),
                        "rows": len(rows),
                        "champion": champion_metrics,
                        "challenger": challenger_metrics,
                        "difference": {
                            m: challenger_metrics[m] - champion_metrics[m]
                            for m in champion_metrics
                            if m in challenger_metrics
                        },
                    }
                )
            )
    return records


def read_shadow_records(client: MlflowClient, run_id: str) -> list[dict[str, Any]]:
    """The shadow records on a challenger's run, oldest partition first ([] when none)."""
    from airflow_mlops.core.delayed_labels import partition_ordinal
    from airflow_mlops.core.mlflow_client import read_run_text

    text = read_run_text(client, run_id, SHADOW_ARTIFACT)
    if text is None:
        return []
    try:
        payload = json.loads(text)
        records = payload["partitions"]
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise TypeError("partitions is not a list of records")
    except (ValueError, KeyError, TypeError) as err:
        raise MlopsError(
            f"{SHADOW_ARTIFACT} of run {run_id} is not a shadow record: {err}"
        ) from err
    return sorted(
        records, key=lambda r: (partition_ordinal(str(r.get("partition")), 0), r.get("partition"))
    )


def log_shadow_records(
    client: MlflowClient, model_name: str, records: Sequence[Mapping[str, Any]]
) -> int:
    """Merge ``records`` into ``mlops/shadow.json`` of each challenger version's run, keyed by
    (partition, champion version): a retry or the next day's check rewrites the same entry.
    Returns how many records were new or changed."""
    from mlflow.exceptions import MlflowException

    changed = 0
    by_version: dict[int, list[Mapping[str, Any]]] = {}
    for record in records:
        by_version.setdefault(int(record["challenger_version"]), []).append(record)
    for version, new in sorted(by_version.items()):
        try:
            run_id = client.get_model_version(model_name, str(version)).run_id
        except MlflowException:  # a deleted version: its records stay in the report only
            continue
        if not run_id:
            continue
        merged = {
            (r["partition"], str(r["champion_version"])): r
            for r in read_shadow_records(client, run_id)
        }
        before = dict(merged)
        for record in new:
            merged[(record["partition"], str(record["champion_version"]))] = dict(record)
        changed += sum(before.get(k) != v for k, v in merged.items())
        if merged == before:
            continue
        payload = {
            "schema_version": SHADOW_SCHEMA_VERSION,
            "model_name": model_name,
            "challenger_version": version,
            "partitions": list(merged.values()),
        }
        client.log_dict(run_id, payload, SHADOW_ARTIFACT)
        client.set_tag(run_id, TAG_SHADOW_PARTITIONS, str(len(merged)))
    return changed


def shadow_evidence(
    client: MlflowClient,
    run_id: str,
    *,
    champion_version: str | None,
    required: int,
    metric: str,
    min_delta: float,
) -> tuple[RuleResult, list[dict[str, Any]]]:
    """The ``shadow_evidence`` rule on the challenger run's records, and the records used."""
    from airflow_mlops.core.policy import shadow_evidence_rule

    records = read_shadow_records(client, run_id) if champion_version is not None else []
    rule = shadow_evidence_rule(
        records,
        required=required,
        metric=metric,
        min_delta=min_delta,
        champion_version=champion_version,
    )
    relevant = [r for r in records if str(r.get("champion_version")) == str(champion_version)]
    return rule, relevant[-required:]


def shadow_summary(
    records: Sequence[Mapping[str, Any]],
    *,
    champion_version: str | None,
    metric: str | None = None,
    required: int | None = None,
    min_delta: float = 0.0,
) -> dict[str, Any] | None:
    """What a reviewer sees of the shadow record (card, approval body, page), or None when
    the challenger has none: partitions scored beside ``champion_version``, the
    challenger-minus-champion difference on ``metric`` (mean, and its range over the
    partitions: the records hold per-partition metrics, not rows, so no sampling interval),
    and the ``shadow_evidence`` rule's verdict when ``required`` partitions are required."""
    import math

    from airflow_mlops.core.policy import shadow_evidence_rule

    if not records:
        return None
    relevant = [r for r in records if str(r.get("champion_version")) == str(champion_version)]
    if metric is None:
        names = [m for r in relevant[-1:] for m in (r.get("difference") or {})]
        metric = names[0] if names else None
    differences = [
        float(d)
        for r in relevant
        for d in [(r.get("difference") or {}).get(metric)]
        if isinstance(d, (int, float)) and math.isfinite(d)
    ]
    summary: dict[str, Any] = {
        "champion_version": champion_version,
        "partitions": len(relevant),
        "partitions_other_champions": len(records) - len(relevant),
        "rows": sum(int(r.get("rows") or 0) for r in relevant),
        "metric": metric,
        "mean_difference": sum(differences) / len(differences) if differences else None,
        "difference_range": [min(differences), max(differences)] if differences else None,
        "newest_partition": relevant[-1].get("partition") if relevant else None,
        "required_partitions": required,
        "rule": None,
    }
    if required and metric:
        rule = shadow_evidence_rule(
            records,
            required=int(required),
            metric=metric,
            min_delta=min_delta,
            champion_version=champion_version,
        )
        summary["rule"] = {"verdict": rule.verdict, "met": rule.verdict == "pass"}
        summary["rule"]["detail"] = rule.detail
    return summary


def read_requirement(raw: str | None) -> dict[str, Any]:
    """The :data:`TAG_SHADOW_REQUIREMENT` tag's requirement; {} when absent or unusable."""
    try:
        value = json.loads(raw or "")
        required = int(value["required_partitions"])
        metric = value.get("metric")
        min_delta = float(value.get("min_delta") or 0.0)
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}
    if required < 1 or not (metric is None or isinstance(metric, str)):
        return {}
    return {"required_partitions": required, "metric": metric, "min_delta": min_delta}


def shadow_for_approval(
    client: MlflowClient,
    registration: Mapping[str, Any],
    champion_version: str | None,
    requirement: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """What an approval shows of the shadow evidence: ``{requirement, summary}``, or None
    when there is neither a requirement nor a record.

    ``requirement`` (``required_partitions``, ``metric``, ``min_delta``: the promote task's,
    as it will judge it) is tagged on the version (:data:`TAG_SHADOW_REQUIREMENT`) so the
    MLOps page can say whether it is met. An unreadable record is shown as such; the promote
    step judges the evidence again.
    """
    from airflow_mlops.core.errors import MlopsError

    requirement = dict(requirement or {})
    if requirement:
        client.set_model_version_tag(
            registration["model_name"],
            str(registration["version"]),
            TAG_SHADOW_REQUIREMENT,
            json.dumps(requirement),
        )
    run_id = registration.get("run_id")
    try:
        records = read_shadow_records(client, str(run_id)) if run_id else []
    except MlopsError as err:
        return {"requirement": requirement or None, "summary": {"error": str(err)}}
    summary = shadow_summary(
        records,
        champion_version=None if champion_version is None else str(champion_version),
        metric=requirement.get("metric"),
        required=requirement.get("required_partitions"),
        min_delta=requirement.get("min_delta", 0.0),
    )
    if summary is None and not requirement:
        return None
    return {"requirement": requirement or None, "summary": summary}
