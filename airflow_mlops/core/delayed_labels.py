"""Delayed labels: predictions by partition joined with labels that land later, per partition.

Batch prediction writes one partition per run (:mod:`airflow_mlops.core.prediction_layout`)
with the id columns, the prediction (and ``score``/``score_<class>`` probabilities when the
model has them), ``model_name`` and ``model_version``. Labels land days later as their own
dataset (any layout: the rows are matched by id, not by the label's folder).

:func:`join_labels` reads both and gives each prediction row its label (or none yet);
:func:`score_partitions` scores each prediction partition on its own: its *label coverage*
is labelled rows / predicted rows, and only a partition whose coverage reaches
``min_label_coverage`` is ``scored`` (its metrics computed with
:func:`airflow_mlops.core.metrics.compute_metrics`); the others are ``pending``, never good.
:func:`verdict_rows` picks the evidence for the decay verdict: the rows the champion version
predicted in the newest scored partitions, as many partitions as it takes to reach
``min_rows`` labelled rows. :func:`log_history` logs each scored partition's metrics and
coverage to the MLflow run of the version that predicted it, once, with ``step`` = the
partition's day number and the partition date as timestamp: "accuracy over time" is one chart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from airflow_mlops.core.datasets import (
    SOURCE_FILE_COLUMN,
    open_dataset,
    read_files,
    resolve_files,
)
from airflow_mlops.core.errors import ConfigError, DataError, DataNotFoundError, EmptyBatchError
from airflow_mlops.core.metrics import compute_metrics
from airflow_mlops.core.prediction import (
    MODEL_NAME_COLUMN,
    MODEL_VERSION_COLUMN,
    PREDICTION_COLUMN,
    SCORE_COLUMN,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.data_window import DataWindow

__all__ = [
    "HISTORY_PREFIX",
    "PARTITION_COLUMN",
    "JoinedLabels",
    "PartitionScore",
    "join_labels",
    "log_history",
    "partition_date",
    "partition_metrics",
    "partition_ordinal",
    "read_prediction_partitions",
    "score_partitions",
    "verdict_rows",
]

#: Column of the joined frame naming each row's prediction partition (``dt=2026-12-01``).
PARTITION_COLUMN = "__mlops_partition"
#: MLflow metric keys of the history: ``decay/<metric>``, ``decay/label_coverage``, ...
HISTORY_PREFIX = "decay"
_FLOAT_TOLERANCE = 1e-9
_MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call


@dataclass(frozen=True)
class PartitionScore:
    """One prediction partition: its rows, label coverage and (when scored) metrics."""

    partition: str
    predicted_rows: int
    labelled_rows: int
    coverage: float
    status: Literal["scored", "pending"]
    model_versions: list[int]
    metrics: dict[str, float] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JoinedLabels:
    """Every prediction row with its label (NaN while it has not arrived)."""

    frame: pd.DataFrame
    prediction_files: int
    label_files: int


def _partition_label(file: Any) -> str:
    if file.partition:
        return "/".join(f"{k}={v}" for k, v in file.partition.items())
    return file.path.rsplit("/", 1)[-1]


def read_prediction_partitions(
    fs: AbstractFileSystem, uri: str, window: DataWindow | None
) -> tuple[pd.DataFrame, int]:
    """The prediction rows under ``uri`` (within ``window``), each with its partition label
    in :data:`PARTITION_COLUMN`, and the number of files read."""
    from airflow_mlops.core.data_window import select_window

    files = resolve_files(fs, uri)
    if window is not None:
        files = select_window(files, window)
    frame = read_files(fs, files, source_column=SOURCE_FILE_COLUMN)
    labels = {f.path: _partition_label(f) for f in files}
    frame[PARTITION_COLUMN] = frame.pop(SOURCE_FILE_COLUMN).astype(str).map(labels)
    # Hive keys are columns of the rows too; the partition label already names them.
    frame = frame.drop(columns=[k for k in files[0].partition if k in frame.columns])
    return frame, len(files)


def join_labels(
    fs_for: Any,
    predictions_uri: str,
    labels_uri: str,
    id_columns: Sequence[str],
    target: str,
    *,
    window: DataWindow | None = None,
    extra_columns: Sequence[str] = (),
) -> JoinedLabels:
    """Read the predictions (within ``window``) and the labels, and left-join them by id.

    ``fs_for(uri)`` gives each URI's filesystem. Only the id and target columns of the labels
    are read, plus those of ``extra_columns`` (e.g. fairness's sensitive columns) that the
    predictions lack and the labels hold; a label row without a target is not a label yet;
    when an id has several labels, the last file's wins (a correction lands later). An id
    predicted twice in one partition counts once. No label file at all raises
    :class:`EmptyBatchError` (``on_empty``).
    """
    ids = list(id_columns)
    if not ids:
        raise ConfigError("id_columns are required to join predictions and labels.")
    predictions, prediction_files = read_prediction_partitions(
        fs_for(predictions_uri), predictions_uri, window
    )
    missing = [c for c in [*ids, PREDICTION_COLUMN, MODEL_VERSION_COLUMN] if c not in predictions]
    if missing:
        raise DataError(
            f"The predictions at {predictions_uri} lack the columns {missing} (written with "
            "key_columns = data.id_columns by BatchPredictionOperator?)."
        )
    if target in predictions.columns:
        raise DataError(f"The predictions at {predictions_uri} already hold a {target!r} column.")
    label_fs = fs_for(labels_uri)
    try:
        label_files = resolve_files(label_fs, labels_uri)
    except DataNotFoundError as err:
        raise EmptyBatchError(f"No labels have landed yet: {err}") from err
    wanted = [c for c in extra_columns if c not in predictions.columns and c not in ids]
    if wanted:
        held = set(open_dataset(label_fs, label_files).schema.names)
        wanted = [c for c in wanted if c in held]
    labels = read_files(label_fs, label_files, columns=[*ids, target, *wanted])
    labels = labels[labels[target].notna()].drop_duplicates(subset=ids, keep="last")
    predictions = predictions.drop_duplicates(subset=[PARTITION_COLUMN, *ids], keep="last")
    try:
        joined = predictions.merge(labels, on=ids, how="left", validate="many_to_one")
    except ValueError as err:
        types = {c: (str(predictions[c].dtype), str(labels[c].dtype)) for c in ids}
        raise DataError(
            f"Cannot join predictions and labels by {ids} (prediction, label types: {types}): {err}"
        ) from err
    return JoinedLabels(joined, prediction_files, len(label_files))


def _score_matrix(frame: pd.DataFrame) -> np.ndarray | None:
    """``score`` (positive-class probability) or the ``score_<class>`` columns, else None."""
    if SCORE_COLUMN in frame.columns:
        return frame[SCORE_COLUMN].to_numpy(dtype=float)
    columns = [c for c in frame.columns if str(c).startswith(f"{SCORE_COLUMN}_")]
    return frame[columns].to_numpy(dtype=float) if columns else None


def partition_metrics(frame: pd.DataFrame, target: str, task: str) -> dict[str, float]:
    """The metrics of labelled rows from their stored predictions (no model is loaded)."""
    scores = _score_matrix(frame) if task == "classification" else None
    return compute_metrics(task, frame[target].to_numpy(), frame[PREDICTION_COLUMN], scores)


def partition_date(partition: str) -> datetime | None:
    """The date a partition label names (``dt=2026-12-01``, ``2026-12-01.parquet``), if any."""
    match = re.search(r"(\d{4}-\d{2}-\d{2})", partition)
    if not match:
        return None
    try:
        return datetime.combine(date.fromisoformat(match[1]), datetime.min.time(), timezone.utc)
    except ValueError:
        return None


def _order(partitions: Sequence[str]) -> list[str]:
    """Oldest first: by the date a partition names, then by its label."""
    far = datetime.max.replace(tzinfo=timezone.utc)
    return sorted(partitions, key=lambda p: (partition_date(p) or far, p))


def score_partitions(
    joined: pd.DataFrame, target: str, task: str, min_label_coverage: float
) -> list[PartitionScore]:
    """Each prediction partition, oldest first: coverage, status and metrics when scored."""
    if not 0 < min_label_coverage <= 1:
        raise ConfigError(f"min_label_coverage must be in (0, 1], got {min_label_coverage!r}")
    groups = dict(tuple(joined.groupby(PARTITION_COLUMN, sort=False)))
    scores = []
    for partition in _order(list(groups)):
        rows = groups[partition]
        labelled = rows[rows[target].notna()]
        coverage = len(labelled) / len(rows)
        scored = coverage + _FLOAT_TOLERANCE >= min_label_coverage
        scores.append(
            PartitionScore(
                partition=partition,
                predicted_rows=len(rows),
                labelled_rows=len(labelled),
                coverage=round(coverage, 6),
                status="scored" if scored else "pending",
                model_versions=sorted({int(v) for v in rows[MODEL_VERSION_COLUMN]}),
                metrics=partition_metrics(labelled, target, task) if scored else None,
            )
        )
    return scores


def verdict_rows(
    joined: pd.DataFrame,
    scores: Sequence[PartitionScore],
    target: str,
    model: tuple[str, int],
    min_rows: int,
) -> tuple[pd.DataFrame, list[str]]:
    """The labelled rows ``model`` (name, version) predicted in the newest scored partitions,
    newest first until they hold ``min_rows`` (all of them when fewer), and those partitions."""
    chosen: list[str] = []
    rows = 0
    name, version = model
    mask = joined[target].notna() & (joined[MODEL_VERSION_COLUMN] == version)
    if MODEL_NAME_COLUMN in joined.columns:
        mask &= joined[MODEL_NAME_COLUMN].astype(str) == name
    labelled = joined[mask]
    counts = labelled[PARTITION_COLUMN].value_counts()
    for score in reversed(scores):
        if score.status != "scored" or counts.get(score.partition, 0) == 0:
            continue
        chosen.append(score.partition)
        rows += int(counts[score.partition])
        if rows >= min_rows:
            break
    return labelled[labelled[PARTITION_COLUMN].isin(chosen)], chosen


def partition_ordinal(partition: str, position: int) -> int:
    """The history step of a partition: days since 1970-01-01 of its date, else ``position``."""
    day = partition_date(partition)
    return (day.date() - date(1970, 1, 1)).days if day else position


def log_history(
    client: MlflowClient,
    scores: Sequence[PartitionScore],
    run_for_version: dict[int, str],
) -> int:
    """Log each scored partition once on the run of the version that predicted it.

    Metrics ``decay/<metric>``, ``decay/label_coverage`` and ``decay/labelled_rows`` with
    ``step`` = :func:`partition_ordinal` and the partition's date as timestamp. A partition
    already in a run's history is not logged again (a retry or the next day's check), so each
    point is the partition as it was when it matured. Returns the number of points logged.
    """
    from mlflow.entities import Metric

    coverage_key = f"{HISTORY_PREFIX}/label_coverage"
    logged = 0
    seen: dict[str, set[int]] = {}
    for position, score in enumerate(scores):
        if score.status != "scored" or len(score.model_versions) != 1:
            continue
        run_id = run_for_version.get(score.model_versions[0])
        if not run_id:
            continue
        if run_id not in seen:
            history = client.get_metric_history(run_id, coverage_key)
            seen[run_id] = {int(m.step) for m in history}
        step = partition_ordinal(score.partition, position)
        if step in seen[run_id]:
            continue
        day = partition_date(score.partition)
        stamp = int((day or datetime.now(timezone.utc)).timestamp() * 1000)
        values = {
            **(score.metrics or {}),
            "label_coverage": score.coverage,
            "labelled_rows": float(score.labelled_rows),
        }
        metrics = [
            Metric(f"{HISTORY_PREFIX}/{name}", float(value), stamp, step)
            for name, value in values.items()
            if math.isfinite(float(value))
        ]
        for start in range(0, len(metrics), _MAX_BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + _MAX_BATCH])
        seen[run_id].add(step)
        logged += 1
    return logged
