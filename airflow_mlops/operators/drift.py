"""DriftReportOperator: Evidently drift reports on new data that may ask to retrain.

The retrain signal, its debounce and the ``on_drift``/``on_empty`` policies come from
:class:`~airflow_mlops.operators.monitoring.RetrainSignalOperator`; the drift itself is
:func:`airflow_mlops.core.drift_check.check_champion_drift`, called inside ``execute()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.constants import (
    DEFAULT_DRIFT_SHARE,
    DEFAULT_MAX_ROWS_PER_SIDE,
    DRIFT_REPORT_NAME,
    DRIFT_SUMMARY_NAME,
)
from airflow_mlops.core.errors import ConfigError
from airflow_mlops.operators.base import as_data_window, as_mapping, as_name_list, as_number
from airflow_mlops.operators.monitoring import RetrainSignalOperator, TaskIds

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.data_window import DataWindow
    from airflow_mlops.core.drift import DriftSettings

__all__ = ["DriftReportOperator"]


class DriftReportOperator(RetrainSignalOperator):
    """Compare new data with the champion's reference using Evidently 0.7's ``DataDriftPreset``.

    Inputs are read by URI (Parquet recommended for millions of rows; CSV is read whole),
    schema-checked, sampled per side with a seeded, documented policy, and given to
    Evidently (``Report``, ``Dataset``, ``DataDefinition``). The sanitised HTML report and a
    JSON summary are written to ``report_folder_uri`` and attached to the champion's MLflow
    run.
    See ``docs/operators/monitoring.md`` for the summary schema, the policies and the
    sampling error bounds.

    When the dataset drifts, ``on_drift`` decides:

    * ``emit`` (default): send the retrain signal (an event on ``retrain_asset(model_name)``)
      unless debounced (``debounce_seconds``) or a CT run is active (``ct_dag_id``);
    * ``fail``: fail the task (no retries: the data will not change);
    * ``skip``: mark the task skipped, so downstream tasks with the default trigger rule skip;
    * ``branch``: follow ``drift_task_ids`` (drift) or ``no_drift_task_ids`` (no drift) and
      skip the other direct downstream tasks; no signal is sent.

    XCom (``return_value``): ``{model_name, champion_version, reference_uri, current_uri,
    report_uri, summary_uri, mlflow_run_id, dataset, drifted_columns, sampled, reason,
    retrain_signal}``.

    ``model_name``, ``debounce_seconds`` and ``ct_dag_id`` are
    :class:`~airflow_mlops.operators.monitoring.RetrainSignalOperator`'s. ``report_uri`` in the
    XCom is the HTML report file, ``summary_uri`` the JSON summary file.

    :param current_uri: the new data (templated): a file, a folder or prefix of parquet/csv
        files (Hive partitions included) or a glob, local or ``s3://`` (read through
        ``StorageHook.get_filesystem``, streamed file by file).
    :param reference_uri: the reference data (templated), in any of the same forms; default:
        the ``mlops.reference.uri`` tag of the champion's training run.
    :param window: which partitions of ``current_uri`` are compared (a ``DataWindow``, its
        mapping, e.g. ``{"last_partitions": 1}``, or ``"all"``, the default).
    :param window_end: the partition the window ends with (templated; empty: the newest).
    :param columns: columns to compare (templated); default: the champion's features
        (``mlops.features``), else every column (both sides must then match exactly).
    :param column_methods: Evidently stat test per column, e.g. ``{"age": "psi"}`` (templated).
    :param column_thresholds: drift threshold per column (templated).
    :param drift_share: share of drifted columns at which the dataset drifts (templated).
    :param sample_rows: at most this many rows per side go to Evidently (templated).
    :param sample_seed: seed of the sample (templated).
    :param stratify_by: optional low-cardinality column whose mix the sample keeps exactly
        (templated).
    :param report_folder_uri: folder (local or ``s3://``) for ``drift_report.html`` and
        ``drift_summary.json`` (templated); default: the run's artifacts folder.
    :param on_drift: ``emit`` | ``fail`` | ``skip`` | ``branch`` (templated).
    :param on_empty: an empty current batch ``fail``s (default) or ``skip``s the task (templated).
    :param drift_task_ids: task ids to follow on drift when ``on_drift="branch"``.
    :param no_drift_task_ids: task ids to follow without drift when ``on_drift="branch"``.
    :param attach_to_mlflow: log the report and summary on the champion's run (default True).
    :param segment_column: with ``segment_value``, compare only that segment's rows (those
        whose ``segment_column`` as text equals ``segment_value``) of the current data, and of
        an explicit ``reference_uri``: the check of one segment model (``segments`` in a
        pipeline), whose own recorded reference already holds its segment's rows only.
    :param segment_value: the segment whose rows are compared.
    """

    policy_field = "on_drift"
    signal_trigger = "drift"
    template_fields: Sequence[str] = (
        *RetrainSignalOperator.template_fields,
        "current_uri",
        "reference_uri",
        "window_end",
        "columns",
        "column_methods",
        "column_thresholds",
        "drift_share",
        "sample_rows",
        "sample_seed",
        "stratify_by",
        "on_drift",
    )
    template_fields_renderers = {"column_methods": "json", "column_thresholds": "json"}

    def __init__(
        self,
        *,
        current_uri: str,
        reference_uri: str | None = None,
        columns: Sequence[str] | str | None = None,
        column_methods: Mapping[str, str] | str | None = None,
        column_thresholds: Mapping[str, float] | str | None = None,
        drift_share: float | str = DEFAULT_DRIFT_SHARE,
        sample_rows: int | str = DEFAULT_MAX_ROWS_PER_SIDE,
        sample_seed: int | str = 0,
        stratify_by: str | None = None,
        on_drift: str = "emit",
        drift_task_ids: TaskIds = None,
        no_drift_task_ids: TaskIds = None,
        attach_to_mlflow: bool = True,
        window: DataWindow | Mapping[str, Any] | str | None = None,
        window_end: str | None = None,
        segment_column: str | None = None,
        segment_value: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(branches=(drift_task_ids, no_drift_task_ids), **kwargs)
        if (segment_column is None) != (segment_value is None):
            raise ConfigError("give both segment_column and segment_value, or neither")
        self.segment_column = segment_column
        self.segment_value = segment_value
        self.current_uri = current_uri
        self.reference_uri = reference_uri
        self.columns = columns
        self.column_methods = column_methods
        self.column_thresholds = column_thresholds
        self.drift_share = drift_share
        self.sample_rows = sample_rows
        self.sample_seed = sample_seed
        self.stratify_by = stratify_by
        self.on_drift = on_drift
        self.attach_to_mlflow = attach_to_mlflow
        self.window = window
        self.window_end = window_end
        self.check_policies()

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (called by the provider's listener): reference, current data and
        champion version -> the report and summary (see ``airflow_mlops.openlineage``)."""
        from airflow_mlops.openlineage import drift_lineage

        facts = getattr(self, "_openlineage_facts", None) or {}
        return drift_lineage(facts.get("result"), facts.get("tracking_uri", ""))

    def current_window(self) -> DataWindow | None:
        """The ``window`` setting, checked (errors name the field); ``None`` for all data."""
        return None if self.window is None else as_data_window(self.window)

    def drift_settings(self, default_columns: Sequence[str] | None) -> DriftSettings:
        """The typed core settings from the rendered fields (errors name the field)."""
        from airflow_mlops.core.drift import DriftSettings
        from airflow_mlops.core.drift_sampling import SamplingPolicy

        columns = as_name_list(self.columns, "columns") or (
            list(default_columns) if default_columns else None
        )
        return DriftSettings(
            columns=tuple(columns) if columns else None,
            per_column_method=as_mapping(self.column_methods or {}, "column_methods"),
            per_column_threshold={
                k: as_number(v, float, f"column_thresholds[{k!r}]")
                for k, v in as_mapping(self.column_thresholds or {}, "column_thresholds").items()
            },
            drift_share=as_number(self.drift_share, float, "drift_share"),
            sampling=SamplingPolicy(
                max_rows_per_side=as_number(self.sample_rows, int, "sample_rows"),
                seed=as_number(self.sample_seed, int, "sample_seed"),
                stratify_by=self.stratify_by or None,
            ),
        )

    def segment_filter(self) -> Any:
        """The row filter of ``segment_column == segment_value``; ``None`` without a segment."""
        from airflow_mlops.core.segments import segment_row_filter

        if self.segment_column is None:
            return None
        return segment_row_filter(str(self.segment_column), str(self.segment_value))

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops.core.drift_check import (
            NothingToCompareError,
            check_champion_drift,
            reference_for,
        )
        from airflow_mlops.hooks.storage import StorageHook

        policy = self.checked_policies()
        window = self.current_window()
        if not isinstance(self.current_uri, str) or not self.current_uri.strip():
            raise ConfigError(f"current_uri must be a non-empty string, got {self.current_uri!r}")
        champion = self.read_champion()
        try:
            reference_uri = reference_for(champion, self.reference_uri, self.model_name)
        except NothingToCompareError as err:
            raise AirflowSkipException(str(err)) from err
        attach = champion is not None and bool(champion.run_id) and self.attach_to_mlflow
        segment = self.segment_filter()
        # A champion's own reference holds its segment's rows only (without the segment
        # column); an explicit reference_uri holds every segment.
        explicit_reference = bool((self.reference_uri or "").strip())
        with self.empty_input_policy():
            outcome = check_champion_drift(
                champion,
                self.storage,
                self.current_uri.strip(),
                model_name=self.model_name,
                reference_uri=reference_uri,
                settings=self.drift_settings(champion.features(self.storage) if champion else None),
                html_uri=self.report_location(context, DRIFT_REPORT_NAME),
                summary_uri=self.report_location(context, DRIFT_SUMMARY_NAME),
                mlflow_session=self.mlflow_hook.session,
                mlflow_folder=self.mlflow_artifact_folder(context, "drift") if attach else None,
                airflow_task=self.airflow_task(context),
                filesystem=StorageHook(aws_conn_id=self.aws_conn_id).get_filesystem,
                window=window,
                window_end=None if self.window_end in (None, "", "None") else self.window_end,
                row_filter=segment,
                reference_filter=segment if explicit_reference else None,
            )
        if outcome.attached and champion is not None:
            self.link_champion(context, champion)
        # For OpenLineage (get_openlineage_facets_on_complete): what was compared and written.
        self._openlineage_facts = {
            "result": outcome.result,
            "tracking_uri": self.mlflow_hook.tracking_uri,
        }
        return self.finish(
            context,
            policy=policy,
            triggered=outcome.drifted,
            result=outcome.result,
            drifted_columns=outcome.result["drifted_columns"][:20],
            summary_uri=outcome.summary_uri,
            **({"segment": str(self.segment_value)} if self.segment_column else {}),
        )
