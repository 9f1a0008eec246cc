"""ModelPerformanceOperator: the champion's performance on newly labelled rows (decay).

The check itself is :func:`airflow_mlops.core.performance.check_champion_performance`; the
retrain signal, its debounce and the ``on_decay``/``on_empty`` policies come from
:class:`~airflow_mlops.operators.monitoring.RetrainSignalOperator`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.constants import (
    DEFAULT_MIN_LABELLED_ROWS,
    DEFAULT_TOLERANCE,
    PERFORMANCE_REPORT_NAME,
    TOLERANCE_MODES,
)
from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.prediction_layout import DEFAULT_MIN_LABEL_COVERAGE
from airflow_mlops.core.values import is_templated
from airflow_mlops.operators.base import as_mapping, as_name_list, as_number, check_choice
from airflow_mlops.operators.monitoring import RetrainSignalOperator, TaskIds

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.data_window import DataWindow
    from airflow_mlops.core.performance import DecaySettings, PerformanceOutcome

__all__ = ["ModelPerformanceOperator"]


class ModelPerformanceOperator(RetrainSignalOperator):
    """Performance decay: score the champion on newly labelled rows, compare with promotion.

    ``labels_uri`` holds recent inference rows whose true labels have arrived (features
    plus the target column; rows whose label is still missing are ignored). The current
    champion predicts them, :func:`airflow_mlops.core.metrics.compute_metrics` scores them,
    and ``metric`` is compared with the ``holdout_<metric>`` value recorded on the
    champion's training run (or ``baseline_metrics``). A degradation beyond ``tolerance``
    is decay, handled by ``on_decay`` exactly like ``on_drift`` of
    :class:`DriftReportOperator` (``emit`` sends the same retrain signal, with the reason).

    Fewer labelled rows than ``min_labelled_rows`` give no verdict (logged, no signal).
    No champion yet: the task is skipped. The check is
    :func:`airflow_mlops.core.performance.check_champion_performance`; this operator reads
    the champion and its parameters, calls it, and applies ``on_decay``.

    XCom: ``{model_name, champion_version, labels_uri, report_uri, rows, labelled_rows,
    metrics, check, decayed, reason, retrain_signal}``.

    **Delayed labels** (``predictions_uri`` and ``id_columns`` set): ``predictions_uri`` is the
    folder :class:`~airflow_mlops.operators.prediction.BatchPredictionOperator` writes one
    partition per run into, and ``labels_uri`` a dataset (file, folder, Hive partitions or
    glob) of the id columns and the target, landing later. They are joined by id; a
    prediction partition whose label coverage (labelled / predicted rows) reaches
    ``min_label_coverage`` is scored from its stored predictions (no model is loaded), the
    others are ``pending``. The verdict compares the champion version's newest scored
    partitions (pooled up to ``min_labelled_rows`` labelled rows) with the baseline; each
    scored partition is logged once to its model version's MLflow run as metrics
    ``decay/<metric>``, ``decay/label_coverage``, ``decay/labelled_rows`` with ``step`` = its
    day number (one chart over time). The report holds every partition; the XCom adds
    ``mode: "partitions"``, ``partitions: {total, scored, pending}``, the newest ``pending``
    keys and ``recent`` partitions, ``verdict_partitions``. No label file yet is an empty
    input (``on_empty``).

    ``model_name``, ``debounce_seconds`` and ``ct_dag_id`` are
    :class:`~airflow_mlops.operators.monitoring.RetrainSignalOperator`'s; ``report_uri`` in the
    XCom is the ``performance.json`` file written to ``report_folder_uri``.

    :param labels_uri: labelled rows (templated).
    :param metric: metric to watch (templated); default ``f1`` / ``rmse`` by task.
    :param tolerance: largest accepted degradation (templated), default 0.05.
    :param tolerance_mode: ``absolute`` (metric units, default) or ``relative`` (templated).
    :param target: label column (templated); default: the champion run's ``mlops.target``.
    :param task: ``classification`` | ``regression`` (templated); default: ``mlops.task``.
    :param baseline_metrics: ``{metric: value}`` to compare with instead of the champion's
        recorded holdout metrics (templated).
    :param min_labelled_rows: minimum labelled rows for a verdict (templated), default 100.
    :param on_decay: ``emit`` | ``fail`` | ``skip`` | ``branch`` (templated).
    :param on_empty: no labelled rows at all: ``fail`` (default) or ``skip`` (templated).
    :param decay_task_ids / no_decay_task_ids: branches when ``on_decay="branch"``.
    :param report_folder_uri: folder for ``performance.json`` (templated).
    :param predictions_uri: folder of predictions by partition (templated); with
        ``id_columns``, switches to the delayed-labels check.
    :param id_columns: columns identifying a prediction in both datasets (templated).
    :param min_label_coverage: share of a partition's predictions that must be labelled
        before it is scored (templated), default 0.8.
    :param window: which prediction partitions to read (``"all"`` by default, or a
        :class:`~airflow_mlops.core.data_window.DataWindow` mapping).
    :param segment_column: with ``segment_value``, score only the ``labels_uri`` rows whose
        ``segment_column`` as text equals ``segment_value``: the check of one segment model.
    :param segment_value: the segment whose rows are scored.
    :param fairness: delayed labels only: an ``evaluation.fairness`` mapping
        (:class:`~airflow_mlops.core.fairness.FairnessSpec`). Each scored partition's labelled
        rows of the champion version are measured with the gate's metrics (the sensitive
        columns read from the predictions or the labels; missing ones are an error), each
        partition is logged once to the champion's run as ``fairness/<metric>/<column or
        class>``, and a bound crossed on the newest partition is a fairness breach: it
        triggers ``on_decay`` (the same retrain signal and debounce) and the XCom's
        ``fairness`` names the group, metric, value and bound.
    """

    policy_field = "on_decay"
    signal_trigger = "performance_decay"
    template_fields: Sequence[str] = (
        *RetrainSignalOperator.template_fields,
        "labels_uri",
        "metric",
        "tolerance",
        "tolerance_mode",
        "target",
        "task",
        "baseline_metrics",
        "min_labelled_rows",
        "on_decay",
        "predictions_uri",
        "id_columns",
        "min_label_coverage",
    )
    template_fields_renderers = {"baseline_metrics": "json"}

    def __init__(
        self,
        *,
        labels_uri: str,
        metric: str | None = None,
        tolerance: float | str = DEFAULT_TOLERANCE,
        tolerance_mode: str = "absolute",
        target: str | None = None,
        task: str | None = None,
        baseline_metrics: Mapping[str, float] | str | None = None,
        min_labelled_rows: int | str = DEFAULT_MIN_LABELLED_ROWS,
        on_decay: str = "emit",
        decay_task_ids: TaskIds = None,
        no_decay_task_ids: TaskIds = None,
        predictions_uri: str | None = None,
        id_columns: Sequence[str] | str | None = None,
        min_label_coverage: float | str = DEFAULT_MIN_LABEL_COVERAGE,
        window: Mapping[str, Any] | str | DataWindow | None = None,
        segment_column: str | None = None,
        segment_value: str | None = None,
        fairness: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        check_choice(tolerance_mode, TOLERANCE_MODES, "tolerance_mode")
        super().__init__(branches=(decay_task_ids, no_decay_task_ids), **kwargs)
        self.labels_uri = labels_uri
        self.metric = metric
        self.tolerance = tolerance
        self.tolerance_mode = tolerance_mode
        self.target = target
        self.task = task
        self.baseline_metrics = baseline_metrics
        self.min_labelled_rows = min_labelled_rows
        self.on_decay = on_decay
        self.predictions_uri = predictions_uri
        self.id_columns = list(id_columns) if isinstance(id_columns, (list, tuple)) else id_columns
        self.min_label_coverage = min_label_coverage
        self.window = window
        if (segment_column is None) != (segment_value is None):
            raise ConfigError("give both segment_column and segment_value, or neither")
        if segment_column is not None and predictions_uri:
            raise ConfigError("segment_column applies to labels_uri rows, not to predictions_uri")
        self.segment_column = segment_column
        self.segment_value = segment_value
        if fairness and not predictions_uri:
            raise ConfigError(
                f"{self.task_id}: fairness monitoring needs delayed labels by partition "
                "(predictions_uri and id_columns)."
            )
        self.fairness = dict(fairness) if fairness else None
        if not is_templated([predictions_uri, id_columns]) and bool(predictions_uri) != bool(
            id_columns
        ):
            raise ConfigError(
                f"{self.task_id}: give both predictions_uri and id_columns (delayed labels) "
                "or neither (labels_uri holds the labelled rows)."
            )
        self.check_policies()

    def decay_settings(self) -> DecaySettings:
        from airflow_mlops.core.performance import DecaySettings

        return DecaySettings(
            metric=self.metric or None,
            tolerance=as_number(self.tolerance, float, "tolerance"),
            tolerance_mode=self.tolerance_mode,
            min_labelled_rows=as_number(self.min_labelled_rows, int, "min_labelled_rows"),
            min_label_coverage=as_number(self.min_label_coverage, float, "min_label_coverage"),
        )

    def explicit_baseline(self) -> dict[str, float] | None:
        """``baseline_metrics`` as numbers (errors name the key); None: the champion's."""
        if not self.baseline_metrics:
            return None
        return {
            k: as_number(v, float, f"baseline_metrics[{k!r}]")
            for k, v in as_mapping(self.baseline_metrics, "baseline_metrics").items()
        }

    def _check_partitions(
        self, context: Context, champion: Any, settings: DecaySettings, folder: str
    ) -> PerformanceOutcome:
        """The delayed-labels check on predictions by partition."""
        from airflow_mlops.core.fairness import parse_fairness
        from airflow_mlops.core.performance import check_partitioned_performance
        from airflow_mlops.hooks.storage import StorageHook
        from airflow_mlops.operators.base import as_data_window

        id_columns = as_name_list(self.id_columns, "id_columns")
        if not id_columns:
            raise ConfigError("id_columns must name the columns that identify a prediction.")
        return check_partitioned_performance(
            champion,
            StorageHook(aws_conn_id=self.aws_conn_id).get_filesystem,
            self.storage,
            predictions_uri=str(self.predictions_uri).strip(),
            labels_uri=str(self.labels_uri).strip(),
            id_columns=id_columns,
            settings=settings,
            mlflow_session=self.mlflow_hook.session,
            report_uri=self.report_location(context, PERFORMANCE_REPORT_NAME),
            mlflow_artifact=f"{folder}/{PERFORMANCE_REPORT_NAME}",
            target=self.target,
            task=self.task,
            baseline_metrics=self.explicit_baseline(),
            window=as_data_window(self.window),
            fairness=parse_fairness(self.fairness),
        )

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops.core.performance import check_champion_performance
        from airflow_mlops.hooks.signing import model_trust

        policy = self.checked_policies()
        settings = self.decay_settings()
        champion = self.read_champion()
        if champion is None:
            raise AirflowSkipException(f"{self.model_name} has no champion yet: nothing to check.")
        folder = self.mlflow_artifact_folder(context, "performance")
        with self.empty_input_policy():
            if self.predictions_uri:
                outcome = self._check_partitions(context, champion, settings, folder)
            else:
                outcome = check_champion_performance(
                    champion,
                    self.storage,
                    str(self.labels_uri).strip(),
                    settings=settings,
                    mlflow_session=self.mlflow_hook.session,
                    trust=model_trust,
                    report_uri=self.report_location(context, PERFORMANCE_REPORT_NAME),
                    mlflow_artifact=f"{folder}/{PERFORMANCE_REPORT_NAME}",
                    target=self.target,
                    task=self.task,
                    baseline_metrics=self.explicit_baseline(),
                    segment=(
                        (str(self.segment_column), str(self.segment_value))
                        if self.segment_column is not None
                        else None
                    ),
                )
        self.log.info("%s", outcome.reason)
        if champion.run_id:
            self.link_champion(context, champion)
        return self.finish(
            context,
            policy=policy,
            triggered=outcome.triggered,
            result=outcome.result(),
            metric=outcome.metric,
            **({"fairness_breached": True} if outcome.fairness_breached else {}),
            **({"segment": str(self.segment_value)} if self.segment_column is not None else {}),
        )
