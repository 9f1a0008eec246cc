"""Performance decay: the champion's metrics on newly labelled rows vs its metrics at promotion.

When labels arrive for recent predictions, :func:`score_labelled_batch` scores the current
champion on those rows with the same functions training used
(:func:`airflow_mlops.core.metrics.predict_for_metrics` and
:func:`~airflow_mlops.core.metrics.compute_metrics`), and :func:`check_decay` compares one
metric with the value recorded when the champion was trained and promoted (the
``holdout_<metric>`` metrics of its training run).

Decay is direction-aware: for metrics where higher is better (``f1``, ``accuracy``,
``roc_auc``, ``r2``, ...) the *degradation* is ``baseline - current``; for the others
(``rmse``, ``mae``, ``log_loss``) it is ``current - baseline``. The model has decayed when
the degradation exceeds the tolerance: in metric units (``absolute``) or as a share of
``|baseline|`` (``relative``).

:func:`check_champion_performance` is the whole check that ``ModelPerformanceOperator`` runs:
the champion's target and task, the baseline, the labelled rows, the model loaded after its
trust check (:mod:`airflow_mlops.core.provenance`), the score, the verdict and the
performance record, written to storage and to the champion's run. The operator reads what
only Airflow knows (the champion, the rendered parameters, the model trust, where reports
go), then applies ``on_decay`` to the outcome and sends the retrain signal.

With delayed labels (predictions written by partition, labels landing later as their own
dataset), :func:`check_partitioned_performance` is the check instead: it loads no model. It
joins the stored predictions with the labels by id (:mod:`airflow_mlops.core.delayed_labels`),
scores each partition whose label coverage reaches ``min_label_coverage`` and reports the
others as pending; the verdict compares the champion version's newest scored partitions
(pooled up to ``min_labelled_rows``) with the baseline, and each scored partition is logged
once to MLflow as a point of the model's metric history. When shadow predictions exist
(``<predictions_uri>/_shadow``, written with ``prediction.shadow``), the same check scores the
shadow challenger and the champion on the labelled rows both predicted, per partition, and
keeps those records on the challenger's run (:mod:`airflow_mlops.core.shadow`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from airflow_mlops.core.constants import (
    DEFAULT_MIN_LABELLED_ROWS,
    DEFAULT_TOLERANCE,
    TOLERANCE_MODES,
)
from airflow_mlops.core.errors import ConfigError, DataError, EmptyBatchError, MlopsError
from airflow_mlops.core.lineage import TAG_TARGET, TAG_TASK
from airflow_mlops.core.metrics import (
    HIGHER_IS_BETTER,
    compute_metrics,
    predict_for_metrics,
    validate_task,
)
from airflow_mlops.core.prediction_layout import DEFAULT_MIN_LABEL_COVERAGE

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.champion import ChampionFacts
    from airflow_mlops.core.data_window import DataWindow
    from airflow_mlops.core.fairness import FairnessSpec
    from airflow_mlops.core.promotion import TrustProvider
    from airflow_mlops.core.storage import Storage, TableRead

__all__ = [
    "BASELINE_METRIC_PREFIX",
    "DEFAULT_METRIC",
    "DecayCheck",
    "DecaySettings",
    "LabelledScore",
    "MlflowSession",
    "PerformanceOutcome",
    "baseline_metrics_from_run",
    "champion_target_and_task",
    "check_champion_performance",
    "check_decay",
    "check_partitioned_performance",
    "labelled_rows",
    "read_labelled_rows",
    "score_labelled_batch",
]

BASELINE_METRIC_PREFIX = "holdout_"  # training logs holdout metrics with this prefix
DEFAULT_METRIC = {"classification": "f1", "regression": "rmse"}
# Comparisons at the boundary are inclusive up to this, so that a tolerance of 0.05
# accepts a drop from 0.90 to 0.85 despite binary floating-point rounding.
FLOAT_TOLERANCE = 1e-9

ToleranceMode = Literal["absolute", "relative"]

#: Opens MLflow for a block and yields its client (``MlflowHook.session`` in a task): MLflow
#: is reached only inside it, so storage errors are never reported as MLflow errors.
MlflowSession = Callable[[], AbstractContextManager["MlflowClient"]]


@dataclass(frozen=True)
class DecaySettings:
    """How to judge decay.

    :param metric: the metric to watch; default ``f1`` (classification) / ``rmse`` (regression).
    :param tolerance: the largest accepted degradation (>= 0).
    :param tolerance_mode: ``absolute`` (metric units) or ``relative`` (share of the baseline).
    :param min_labelled_rows: fewer labelled rows than this is not enough evidence: no verdict.
    :param min_label_coverage: with delayed labels, the share of a partition's predictions
        that must have their label before the partition is scored (else it is pending).
    """

    metric: str | None = None
    tolerance: float = DEFAULT_TOLERANCE
    tolerance_mode: ToleranceMode = "absolute"
    min_labelled_rows: int = DEFAULT_MIN_LABELLED_ROWS
    min_label_coverage: float = DEFAULT_MIN_LABEL_COVERAGE

    def __post_init__(self) -> None:
        tol = self.tolerance
        if (
            isinstance(tol, bool)
            or not isinstance(tol, (int, float))
            or not math.isfinite(tol)
            or tol < 0
        ):
            raise ConfigError(f"tolerance must be a finite number >= 0, got {tol!r}")
        if self.tolerance_mode not in TOLERANCE_MODES:
            raise ConfigError(
                f"tolerance_mode must be one of {list(TOLERANCE_MODES)}, got {self.tolerance_mode!r}"
            )
        rows = self.min_labelled_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ConfigError(f"min_labelled_rows must be an integer >= 1, got {rows!r}")
        coverage = self.min_label_coverage
        if (
            isinstance(coverage, bool)
            or not isinstance(coverage, (int, float))
            or not 0 < coverage <= 1
        ):
            raise ConfigError(f"min_label_coverage must be in (0, 1], got {coverage!r}")
        if self.metric is not None and (not isinstance(self.metric, str) or not self.metric):
            raise ConfigError(f"metric must be a metric name, got {self.metric!r}")

    def metric_for(self, task: str) -> str:
        return self.metric or DEFAULT_METRIC[validate_task(task)]


@dataclass(frozen=True)
class LabelledScore:
    """The champion's metrics on the labelled rows (``metrics`` is None below ``min_rows``)."""

    rows: int
    labelled_rows: int
    metrics: dict[str, float] | None


@dataclass(frozen=True)
class DecayCheck:
    """The verdict on one metric, with every number that led to it."""

    metric: str
    higher_is_better: bool
    baseline: float
    current: float
    degradation: float
    tolerance: float
    tolerance_mode: str
    decayed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def baseline_metrics_from_run(
    run_metrics: Mapping[str, float], prefix: str = BASELINE_METRIC_PREFIX
) -> dict[str, float]:
    """``{metric: value}`` from a training run's ``holdout_<metric>`` entries."""
    return {
        key[len(prefix) :]: float(value)
        for key, value in run_metrics.items()
        if key.startswith(prefix)
    }


def labelled_rows(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    """Rows whose label has arrived (non-missing target); the others are not scored yet."""
    if target not in frame.columns:
        raise DataError(
            f"The labelled data has no target column {target!r} (columns: {list(frame.columns)})."
        )
    return frame[frame[target].notna()]


def score_labelled_batch(
    model: Any,
    frame: pd.DataFrame,
    features: Sequence[str] | None,
    target: str,
    task: str,
    min_rows: int = DEFAULT_MIN_LABELLED_ROWS,
) -> LabelledScore:
    """Predict the labelled rows with ``model`` and compute the metrics training computes."""
    validate_task(task)
    labelled = labelled_rows(frame, target)
    if len(labelled) < min_rows:
        return LabelledScore(rows=len(frame), labelled_rows=len(labelled), metrics=None)
    if features is None:
        X = labelled.drop(columns=[target])
    else:
        missing = [c for c in features if c not in labelled.columns]
        if missing:
            raise DataError(
                f"The labelled data lacks feature columns {missing} that the champion needs."
            )
        X = labelled[list(features)]
    y_pred, y_score = predict_for_metrics(model, X, task)
    metrics = compute_metrics(task, labelled[target].to_numpy(), y_pred, y_score)
    return LabelledScore(rows=len(frame), labelled_rows=len(labelled), metrics=metrics)


def check_decay(
    baseline: Mapping[str, float],
    current: Mapping[str, float],
    metric: str,
    tolerance: float,
    tolerance_mode: str = "absolute",
) -> DecayCheck:
    """Compare ``current[metric]`` with ``baseline[metric]``; fail closed on a missing value."""
    if metric not in baseline or not math.isfinite(float(baseline[metric])):
        raise MlopsError(
            f"The champion has no recorded {metric!r} at promotion (recorded: "
            f"{sorted(baseline)}); choose one of those or retrain to record it."
        )
    if metric not in current or not math.isfinite(float(current[metric])):
        raise DataError(
            f"{metric!r} cannot be computed on the labelled rows (computed: {sorted(current)}); "
            "e.g. roc_auc needs both classes and class probabilities."
        )
    base, now = float(baseline[metric]), float(current[metric])
    higher = metric in HIGHER_IS_BETTER
    degradation = base - now if higher else now - base
    mode = tolerance_mode
    if mode == "relative" and base == 0:
        # A share of zero is meaningless: judge the drop in metric units instead.
        mode = "absolute"
    allowed = tolerance * abs(base) if mode == "relative" else tolerance
    decayed = degradation > allowed + FLOAT_TOLERANCE
    direction = "higher is better" if higher else "lower is better"
    limit = f"{tolerance:.4g}" + (" of the baseline" if mode == "relative" else "")
    verdict = "performance decay" if decayed else "no performance decay"
    reason = (
        f"{verdict}: {metric} {now:.4f} vs {base:.4f} at promotion ({direction}; "
        f"degradation {degradation:.4f}, tolerance {limit})"
    )
    return DecayCheck(
        metric=metric,
        higher_is_better=higher,
        baseline=base,
        current=now,
        degradation=degradation,
        tolerance=float(tolerance),
        tolerance_mode=mode,
        decayed=decayed,
        reason=reason,
    )


# -- the whole check -------------------------------------------------------------------------


@dataclass(frozen=True)
class PerformanceOutcome:
    """The performance record (as written to ``report_uri``) and the metric watched."""

    record: dict[str, Any]
    metric: str
    report_uri: str
    #: The XCom form when the record is too large for XCom (per-partition history).
    summary: dict[str, Any] | None = None

    @property
    def decayed(self) -> bool:
        return bool(self.record["decayed"])

    @property
    def fairness_breached(self) -> bool:
        """A fairness bound crossed on the newest partition (delayed labels with fairness)."""
        return bool((self.record.get("fairness") or {}).get("breached"))

    @property
    def triggered(self) -> bool:
        """Decay or a fairness breach: either asks for the retrain signal."""
        return self.decayed or self.fairness_breached

    @property
    def reason(self) -> str:
        return str(self.record["reason"])

    def result(self) -> dict[str, Any]:
        """The task's JSON result: the record (or its summary) and where it was written."""
        return {**(self.summary or self.record), "report_uri": self.report_uri}


def champion_target_and_task(
    champion: ChampionFacts, target: str | None = None, task: str | None = None
) -> tuple[str, str]:
    """``target`` and ``task`` when given, else the champion run's training tags."""
    target = target or champion.tags.get(TAG_TARGET)
    task = task or champion.tags.get(TAG_TASK)
    if not target or not task:
        raise ConfigError(
            f"Pass target and task: the champion's run {champion.run_id} lacks "
            f"{TAG_TARGET!r} / {TAG_TASK!r} tags."
        )
    return target, task


def read_labelled_rows(
    storage: Storage, labels_uri: str, target: str, segment: tuple[str, str] | None = None
) -> tuple[TableRead, pd.DataFrame]:
    """The table at ``labels_uri`` and its labelled rows (of one ``(column, value)``
    segment when given); :class:`EmptyBatchError` if none."""
    table = storage.read_table(labels_uri)
    frame = table.frame
    if segment is not None:
        column, value = segment
        if column not in frame.columns:
            raise ConfigError(
                f"segments.column {column!r} is not a column of {table.uri} "
                f"(columns: {', '.join(map(str, frame.columns[:20]))})."
            )
        frame = frame[frame[column].astype(str) == str(value)]
    labelled = labelled_rows(frame, target)
    if labelled.empty:
        where = f" of segment {segment[0]}={segment[1]!r}" if segment is not None else ""
        raise EmptyBatchError(
            f"{table.uri} has no labelled rows{where} ({len(frame)} rows, none with {target!r})."
        )
    return table, labelled


def check_champion_performance(
    champion: ChampionFacts,
    storage: Storage,
    labels_uri: str,
    *,
    settings: DecaySettings,
    mlflow_session: MlflowSession,
    trust: TrustProvider,
    report_uri: str,
    mlflow_artifact: str,
    target: str | None = None,
    task: str | None = None,
    baseline_metrics: Mapping[str, float] | None = None,
    segment: tuple[str, str] | None = None,
) -> PerformanceOutcome:
    """Score ``champion`` on the labelled rows at ``labels_uri`` and judge decay.

    With ``segment`` (``(column, value)``), only that segment's rows are scored: the check
    of one segment model.

    ``target`` / ``task`` default to the champion run's tags and ``baseline_metrics`` (None)
    to its ``holdout_<metric>`` metrics. Fewer labelled rows than
    ``settings.min_labelled_rows`` give no verdict (``decayed`` False, ``check`` None). The
    model loads only after ``trust()`` accepts its downloaded files
    (:class:`~airflow_mlops.core.errors.UntrustedModelError` otherwise). The record is written
    to ``report_uri`` and, when the champion has a run, logged on it as ``mlflow_artifact``.
    No labelled row at all raises :class:`EmptyBatchError` before any model is loaded.
    """
    from airflow_mlops.core.evaluation import input_columns, load_model_for_scoring

    target, task = champion_target_and_task(champion, target, task)
    metric = settings.metric_for(task)
    baseline = (
        dict(baseline_metrics)
        if baseline_metrics is not None
        else baseline_metrics_from_run(champion.metrics)
    )
    table, labelled = read_labelled_rows(storage, labels_uri, target, segment)
    model_trust = trust()
    with mlflow_session() as client:
        model, info = load_model_for_scoring(champion.model_uri, client=client, trust=model_trust)
    features = input_columns(info, champion.features(storage))
    score = score_labelled_batch(
        model, labelled, features, target, task, min_rows=settings.min_labelled_rows
    )
    record: dict[str, Any] = {
        "model_name": champion.model_name,
        "champion_version": champion.version,
        "mlflow_run_id": champion.run_id,
        "labels_uri": table.uri,
        "labels_sha256": table.sha256,
        "rows": score.rows,
        "labelled_rows": score.labelled_rows,
        "task": task,
        "target": target,
        "metrics": score.metrics,
        "baseline_metrics": baseline,
        "check": None,
        "decayed": False,
    }
    if score.metrics is None:
        record["reason"] = (
            f"not enough labelled rows for a verdict: {score.labelled_rows} < "
            f"{settings.min_labelled_rows}"
        )
    else:
        check = check_decay(
            baseline, score.metrics, metric, settings.tolerance, settings.tolerance_mode
        )
        record.update(check=check.to_dict(), decayed=check.decayed, reason=check.reason)
    storage.write_json(report_uri, record)
    if champion.run_id:
        with mlflow_session() as client:
            client.log_dict(champion.run_id, record, mlflow_artifact)
    return PerformanceOutcome(record=record, metric=metric, report_uri=report_uri)


# -- delayed labels: predictions and labels by partition --------------------------------------

#: Partitions listed in the XCom (the newest); the report holds all of them.
XCOM_PARTITIONS = 5


def check_partitioned_performance(
    champion: ChampionFacts,
    fs_for: Callable[[str], AbstractFileSystem],
    storage: Storage,
    *,
    predictions_uri: str,
    labels_uri: str,
    id_columns: Sequence[str],
    settings: DecaySettings,
    mlflow_session: MlflowSession,
    report_uri: str,
    mlflow_artifact: str,
    target: str | None = None,
    task: str | None = None,
    baseline_metrics: Mapping[str, float] | None = None,
    window: DataWindow | None = None,
    fairness: FairnessSpec | None = None,
) -> PerformanceOutcome:
    """Judge decay from stored predictions by partition and labels that landed later.

    Partitions whose label coverage is below ``settings.min_label_coverage`` are pending
    (never counted as good). The verdict needs ``settings.min_labelled_rows`` labelled rows
    of the champion version in its newest scored partitions; with fewer there is no verdict
    (``decayed`` False, ``check`` None, the reason says why). The full record (every
    partition) goes to ``report_uri`` and the champion's run; the XCom summary keeps counts
    and the newest partitions. No model is loaded.

    With ``fairness``, each scored partition's labelled rows of the champion version are also
    measured for fairness (:mod:`airflow_mlops.core.fairness_monitoring`); the sensitive
    columns come from the predictions or the labels. The record's ``fairness`` is the newest
    partition's verdict; a crossed bound sets ``fairness.breached`` and leads the reason.
    """
    from airflow_mlops.core.delayed_labels import (
        join_labels,
        log_history,
        partition_metrics,
        score_partitions,
        verdict_rows,
    )

    target, task = champion_target_and_task(champion, target, task)
    metric = settings.metric_for(task)
    if fairness is not None and task != "classification":
        raise ConfigError(
            f"evaluation.fairness needs a classification model; {champion.model_name} "
            f"v{champion.version} is a {task} model"
        )
    baseline = (
        dict(baseline_metrics)
        if baseline_metrics is not None
        else baseline_metrics_from_run(champion.metrics)
    )
    joined = join_labels(
        fs_for,
        predictions_uri,
        labels_uri,
        id_columns,
        target,
        window=window,
        extra_columns=fairness.columns if fairness is not None else (),
    )
    scores = score_partitions(joined.frame, target, task, settings.min_label_coverage)
    version = int(champion.version)
    rows, chosen = verdict_rows(
        joined.frame, scores, target, (champion.model_name, version), settings.min_labelled_rows
    )
    pending = [s.partition for s in scores if s.status == "pending"]
    record: dict[str, Any] = {
        "mode": "partitions",
        "model_name": champion.model_name,
        "champion_version": champion.version,
        "mlflow_run_id": champion.run_id,
        "predictions_uri": predictions_uri,
        "labels_uri": labels_uri,
        "id_columns": list(id_columns),
        "min_label_coverage": settings.min_label_coverage,
        "rows": len(joined.frame),
        "labelled_rows": int(joined.frame[target].notna().sum()),
        "task": task,
        "target": target,
        "verdict_partitions": chosen,
        "verdict_rows": len(rows),
        "metrics": None,
        "baseline_metrics": baseline,
        "check": None,
        "decayed": False,
        "pending": pending,
        "partitions": [s.to_dict() for s in scores],
    }
    if len(rows) < settings.min_labelled_rows:
        record["reason"] = _no_verdict_reason(len(rows), chosen, pending, version, settings)
    else:
        current = partition_metrics(rows, target, task)
        check = check_decay(baseline, current, metric, settings.tolerance, settings.tolerance_mode)
        reason = f"{check.reason} on partitions {', '.join(sorted(chosen))}"
        record.update(metrics=current, check=check.to_dict(), decayed=check.decayed, reason=reason)
    shadow = _shadow_records(
        fs_for, predictions_uri, joined.frame, scores, id_columns, target, task, window
    )
    record["shadow"] = shadow
    fairness_records: list[dict[str, Any]] = []
    if fairness is not None:
        with mlflow_session() as client:
            fairness_records = _fairness_records(
                client, champion, fairness, joined.frame, scores, target
            )
        _add_fairness_verdict(record, fairness_records, fairness)
    storage.write_json(report_uri, record)
    with mlflow_session() as client:
        runs = _runs_of_versions(client, champion, scores)
        record_points = log_history(client, scores, runs)
        shadow_logged = _log_shadow(client, champion.model_name, shadow)
        fairness_points = _log_fairness(client, champion.run_id, fairness_records, scores)
        if champion.run_id:
            client.log_dict(champion.run_id, record, mlflow_artifact)
    summary = _partition_summary(record, scores, record_points)
    if fairness is not None:
        summary["fairness"]["history_points_logged"] = fairness_points
    if shadow is not None:
        summary["shadow"] = {
            "partitions": len(shadow),
            "records_logged": shadow_logged,
            "recent": shadow[-XCOM_PARTITIONS:],
        }
    return PerformanceOutcome(record=record, metric=metric, report_uri=report_uri, summary=summary)


def _fairness_records(
    client: MlflowClient,
    champion: ChampionFacts,
    spec: FairnessSpec,
    joined: pd.DataFrame,
    scores: Sequence[Any],
    target: str,
) -> list[dict[str, Any]]:
    """Each scored partition's fairness on the champion version's labelled rows, oldest
    first; a sensitive column in neither the predictions nor the labels is a DataError."""
    from airflow_mlops.core.delayed_labels import PARTITION_COLUMN
    from airflow_mlops.core.fairness_monitoring import (
        check_monitored_columns,
        measure_partition,
        promotion_fairness,
    )
    from airflow_mlops.core.prediction import (
        MODEL_NAME_COLUMN,
        MODEL_VERSION_COLUMN,
        PREDICTION_COLUMN,
    )

    check_monitored_columns(spec, list(joined.columns), "the predictions nor the labels")
    mask = joined[target].notna() & (joined[MODEL_VERSION_COLUMN] == int(champion.version))
    if MODEL_NAME_COLUMN in joined.columns:
        mask &= joined[MODEL_NAME_COLUMN].astype(str) == champion.model_name
    ours = dict(tuple(joined[mask].groupby(PARTITION_COLUMN, sort=False)))
    promotion = promotion_fairness(client, champion.run_id)
    return [
        measure_partition(
            spec, ours[s.partition], target, PREDICTION_COLUMN, s.partition, promotion
        )
        for s in scores
        if s.status == "scored" and s.partition in ours
    ]


def _add_fairness_verdict(
    record: dict[str, Any], records: Sequence[Mapping[str, Any]], spec: FairnessSpec
) -> None:
    """The newest partition's fairness verdict in ``record`` (a breach leads the reason);
    every partition's measurement in ``fairness_partitions`` (the report only)."""
    from airflow_mlops.core.fairness_monitoring import fairness_verdict

    verdict = fairness_verdict(records, spec)
    record["fairness"] = verdict
    record["fairness_partitions"] = list(records)
    if verdict["breached"]:
        record["reason"] = f"{verdict['reason']}; {record['reason']}"


def _log_fairness(
    client: MlflowClient,
    run_id: str | None,
    records: Sequence[Mapping[str, Any]],
    scores: Sequence[Any],
) -> int:
    from airflow_mlops.core.delayed_labels import partition_ordinal
    from airflow_mlops.core.fairness_monitoring import log_fairness_history

    if not records:
        return 0
    position = {s.partition: i for i, s in enumerate(scores)}
    return log_fairness_history(
        client, run_id, records, lambda p: partition_ordinal(p, position[p])
    )


def _shadow_records(
    fs_for: Callable[[str], AbstractFileSystem],
    predictions_uri: str,
    joined: pd.DataFrame,
    scores: Sequence[Any],
    id_columns: Sequence[str],
    target: str,
    task: str,
    window: DataWindow | None,
) -> list[dict[str, Any]] | None:
    """The shadow records of the scored partitions; None when nothing was scored in shadow."""
    from airflow_mlops.core.prediction_layout import is_partitioned_output
    from airflow_mlops.core.shadow import read_shadow_predictions, shadow_records

    if not is_partitioned_output(predictions_uri):
        return None
    shadow = read_shadow_predictions(fs_for, predictions_uri, window)
    if shadow is None:
        return None
    return shadow_records(joined, shadow, scores, id_columns=id_columns, target=target, task=task)


def _log_shadow(
    client: MlflowClient, model_name: str, shadow: Sequence[Mapping[str, Any]] | None
) -> int:
    from airflow_mlops.core.shadow import log_shadow_records

    return log_shadow_records(client, model_name, shadow) if shadow else 0


def _no_verdict_reason(
    rows: int, chosen: Sequence[str], pending: Sequence[str], version: int, settings: DecaySettings
) -> str:
    waiting = (
        f"; {len(pending)} partition(s) pending (label coverage below "
        f"{settings.min_label_coverage:g})"
        if pending
        else ""
    )
    if not chosen:
        return f"no verdict: no scored partition predicted by version {version}{waiting}"
    return (
        f"no verdict: not enough labelled rows: {rows} < {settings.min_labelled_rows} in "
        f"{len(chosen)} scored partition(s) of version {version}{waiting}"
    )


def _runs_of_versions(
    client: MlflowClient, champion: ChampionFacts, scores: Sequence[Any]
) -> dict[int, str]:
    """The training run of every version that predicted a scored partition."""
    from mlflow.exceptions import MlflowException

    runs: dict[int, str] = {}
    if champion.run_id:
        runs[int(champion.version)] = champion.run_id
    versions = {v for s in scores if s.status == "scored" for v in s.model_versions}
    for version in sorted(versions - set(runs)):
        try:
            run_id = client.get_model_version(champion.model_name, str(version)).run_id
        except MlflowException:  # a deleted version: its partitions stay in the report only
            continue
        if run_id:
            runs[version] = run_id
    return runs


def _partition_summary(
    record: Mapping[str, Any], scores: Sequence[Any], history_points: int
) -> dict[str, Any]:
    """The XCom: the record without the per-partition list, plus counts and the newest."""
    dropped = ("partitions", "pending", "shadow", "fairness_partitions")
    summary = {k: v for k, v in record.items() if k not in dropped}
    if "fairness" in record:
        summary["fairness"] = dict(record["fairness"])
    summary["partitions"] = {
        "total": len(scores),
        "scored": sum(s.status == "scored" for s in scores),
        "pending": sum(s.status == "pending" for s in scores),
    }
    summary["pending"] = list(record["pending"])[-XCOM_PARTITIONS:]
    summary["recent"] = [s.to_dict() for s in scores[-XCOM_PARTITIONS:]]
    summary["history_points_logged"] = history_points
    return summary
