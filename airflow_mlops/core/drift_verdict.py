"""The drift verdict in one line and as a registered-model tag; standard library only.

The operator writes :data:`TAG_LAST_DRIFT` after each check and the MLOps page reads it,
so both import this module, not :mod:`airflow_mlops.core.drift` (which loads pandas and
Evidently).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from airflow_mlops.core.errors import MlopsError

__all__ = ["MAX_MODEL_TAG_CHARS", "TAG_LAST_DRIFT", "drift_reason", "last_drift_tag"]

#: Registered-model tag holding the newest drift verdict (read by the MLOps page).
TAG_LAST_DRIFT = "mlops.last_drift"
#: Registered-model tag values are VARCHAR(5000) on MLflow's SQL stores.
MAX_MODEL_TAG_CHARS = 5000


def last_drift_tag(
    summary: Mapping[str, Any],
    *,
    at: str,
    airflow_task: Mapping[str, Any],
    mlflow_run_id: str | None = None,
    report_artifact: str | None = None,
    report_uri: str | None = None,
    champion_version: str | None = None,
    max_chars: int = MAX_MODEL_TAG_CHARS,
) -> str:
    """The value of :data:`TAG_LAST_DRIFT`: the verdict, where its report is, who made it.

    JSON that fits a registered-model tag (``max_chars``): drifted column names are dropped
    first, then the URIs, when the value would be too long. The page reads it with one
    registry call instead of listing the report folders of every monitoring run.
    """
    dataset = summary["dataset"]
    record: dict[str, Any] = {
        "detected": bool(dataset["drifted"]),
        "drifted_columns": int(dataset["drifted_columns"]),
        "tested_columns": int(dataset["tested_columns"]),
        "drifted_share": float(dataset["drifted_share"]),
        "drift_share": float(dataset["drift_share"]),
        "at": at,
        "champion_version": champion_version,
        "mlflow_run_id": mlflow_run_id,
        "report_artifact": report_artifact,
        "report_uri": report_uri,
        "airflow": {k: airflow_task.get(k) for k in ("dag_id", "run_id", "task_id", "map_index")},
        "columns": list(summary.get("drifted_columns", []))[:20],
    }
    for optional in ("columns", "report_uri", "report_artifact"):
        value = json.dumps(record, allow_nan=False)
        if len(value) <= max_chars:
            return value
        record.pop(optional)
    value = json.dumps(record, allow_nan=False)
    if len(value) > max_chars:
        raise MlopsError(f"The drift verdict does not fit a {max_chars}-character tag: {value!r}")
    return value


def drift_reason(summary: Mapping[str, Any]) -> str:
    """One line for logs, the asset event and the MLflow tag."""
    ds = summary["dataset"]
    cols = summary["drifted_columns"]
    shown = ", ".join(cols[:10]) + (f" (+{len(cols) - 10} more)" if len(cols) > 10 else "")
    verdict = "data drift" if ds["drifted"] else "no dataset drift"
    return (
        f"{verdict}: {ds['drifted_columns']}/{ds['tested_columns']} columns drifted "
        f"(share {ds['drifted_share']:.2f}, threshold {ds['drift_share']:.2f})"
        + (f": {shown}" if cols else "")
    )
