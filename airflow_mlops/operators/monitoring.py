"""Monitoring operators: Evidently drift reports and performance-decay checks that ask to retrain.

Both operators end the same way: when their check fires they send the model's retrain
signal, an Airflow Asset event on :func:`airflow_mlops.assets.retrain_asset` that the
continuous-training DAG is scheduled on. The event is emitted at run time through an
:class:`~airflow.sdk.AssetAlias` outlet, so a task that finds nothing emits nothing (a
plain Asset outlet would get an event on every successful run). The retrain asset is also
declared as an inlet: the debounce reads its last event through Airflow's Task SDK
(``inlet_events``), which works on every executor without database access from the task.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.standard.operators.branch import BranchMixIn
from airflow.sdk import AssetAlias

from airflow_mlops.assets import retrain_asset
from airflow_mlops.core.errors import ConfigError, EmptyBatchError
from airflow_mlops.core.retrain_signal import DEFAULT_DEBOUNCE_SECONDS, ON_TRIGGER_POLICIES
from airflow_mlops.core.values import is_templated
from airflow_mlops.links.mlflow import mlflow_links, persist_mlflow_links
from airflow_mlops.operators.base import MlopsBaseOperator, as_mapping

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context

    from airflow_mlops.core.champion import ChampionFacts
    from airflow_mlops.core.drift import DriftSettings
    from airflow_mlops.core.performance import DecaySettings

# Mirrors of airflow_mlops.core constants (core imports pandas, which must not load at
# DAG-parse time); tests/test_drift_operator.py checks they stay equal.
ON_EMPTY_POLICIES = ("fail", "skip")
TOLERANCE_MODES = ("absolute", "relative")
DEFAULT_SAMPLE_ROWS = 50_000
DRIFT_REPORT_NAME = "drift_report.html"
DRIFT_SUMMARY_NAME = "drift_summary.json"
PERFORMANCE_REPORT_NAME = "performance.json"
ACTIVE_RUN_STATES = ["queued", "running"]


def retrain_alias(model_name: str) -> AssetAlias:
    """The alias through which monitoring tasks emit ``retrain_asset(model_name)`` events."""
    return AssetAlias(name=f"mlops_retrain_alias__{model_name}")


def _path_safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", value)


def _check_choice(
    value: Any, choices: Sequence[str], field: str, *, rendered: bool = False
) -> None:
    """Catch a typo at parse time; templated values are checked after rendering."""
    if (rendered or not is_templated(value)) and value not in choices:
        raise ConfigError(f"{field} must be one of {list(choices)}, got {value!r}")


def _as_number(value: Any, kind: type, field: str) -> Any:
    """A rendered template is a string: convert it, naming the field when it cannot be."""
    if isinstance(value, bool):
        raise ConfigError(f"{field} must be a number, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field} must be a number, got {value!r}") from None


def _as_list(value: Any, field: str) -> list[str] | None:
    """``None``, a list of names, one name, or a JSON list rendered from a template."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{field} is not a JSON list: {err}") from err
        else:
            return [text]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{field} must be a list of names, got {value!r}")
    return list(value)


class RetrainSignalOperator(MlopsBaseOperator, BranchMixIn):
    """Base of the monitoring operators: the retrain signal, its debounce and the policies.

    A subclass names its trigger policy (``policy_field``, e.g. ``on_drift``), stores the
    policy under that attribute, then calls :meth:`check_policies`; its ``execute()`` starts
    with :meth:`checked_policies` and ends with :meth:`finish`.

    :param model_name: registered model name. Not templated: it names the retrain Asset,
        which Airflow must know when it parses the DAG.
    :param on_empty: no usable input rows: ``fail`` (default) or ``skip`` (templated).
    :param debounce_seconds: no second retrain signal within this many seconds of the last
        event of the retrain asset, whoever emitted it (templated; default 6 h).
    :param ct_dag_id: the continuous-training DAG; while it has a queued or running run no
        signal is sent (templated; ``None`` skips that check).
    :param report_uri: folder for the reports (templated); default: the run's artifacts folder.
    """

    #: The parameter holding the trigger policy, as users know it (``on_drift``, ``on_decay``).
    policy_field: ClassVar[str]
    #: ``trigger`` of the retrain asset event: which check asked to retrain.
    signal_trigger: ClassVar[str]

    inherits_from_skipmixin = True
    operator_extra_links = mlflow_links()
    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "debounce_seconds",
        "ct_dag_id",
        "report_uri",
        "on_empty",
    )
    ui_color = "#f7e3d5"

    def __init__(
        self,
        *,
        model_name: str,
        on_empty: str = "fail",
        debounce_seconds: float | str = DEFAULT_DEBOUNCE_SECONDS,
        ct_dag_id: str | None = None,
        report_uri: str | None = None,
        trigger_task_ids: str | Sequence[str] | None = None,
        no_trigger_task_ids: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model_name, str) or not model_name.strip():
            raise ConfigError(f"model_name must be a non-empty string, got {model_name!r}")
        if is_templated(model_name):
            raise ConfigError(
                "model_name cannot be a template: it names the retrain Asset, which Airflow "
                f"needs at DAG-parse time (got {model_name!r})"
            )
        asset, alias = retrain_asset(model_name), retrain_alias(model_name)
        kwargs["inlets"] = [*(kwargs.get("inlets") or []), asset]
        kwargs["outlets"] = [*(kwargs.get("outlets") or []), alias]
        super().__init__(**kwargs)
        self.model_name = model_name
        self.retrain_asset: Asset = asset
        self.retrain_alias = alias
        self.on_empty = on_empty
        self.debounce_seconds = debounce_seconds
        self.ct_dag_id = ct_dag_id
        self.report_uri = report_uri
        self.trigger_task_ids = trigger_task_ids
        self.no_trigger_task_ids = no_trigger_task_ids

    # -- the policies --------------------------------------------------------------------------
    @property
    def trigger_policy(self) -> Any:
        """The value of the trigger policy parameter (``on_drift``, ``on_decay``)."""
        return getattr(self, self.policy_field)

    def check_policies(self) -> None:
        """Parse-time checks of the policies; templated values wait for rendering."""
        policy = self.trigger_policy
        _check_choice(policy, ON_TRIGGER_POLICIES, self.policy_field)
        _check_choice(self.on_empty, ON_EMPTY_POLICIES, "on_empty")
        if not is_templated(policy):
            self.validate_policy_fields(policy, self.policy_field)

    def checked_policies(self) -> str:
        """Execute-time checks of the rendered policies and debounce; the trigger policy."""
        from airflow_mlops.core.retrain_signal import validate_debounce_seconds

        policy = self.trigger_policy
        _check_choice(policy, ON_TRIGGER_POLICIES, self.policy_field, rendered=True)
        self.validate_policy_fields(policy, self.policy_field)
        _check_choice(self.on_empty, ON_EMPTY_POLICIES, "on_empty", rendered=True)
        validate_debounce_seconds(self.debounce_seconds)
        return policy

    # -- reading the state of the retrain signal -----------------------------------------------
    def last_signal_at(self, context: Context) -> datetime | None:
        """Timestamp of the latest event of the retrain asset, from Airflow's metadata."""
        events = context["inlet_events"][self.retrain_asset].ascending(False).limit(1)
        latest = list(events)
        return latest[0].timestamp if latest else None

    def active_ct_runs(self, context: Context) -> int:
        """Queued or running runs of ``ct_dag_id`` (this task's own run excluded)."""
        if not self.ct_dag_id:
            return 0
        ti = context["ti"]
        count = int(ti.get_dr_count(dag_id=str(self.ct_dag_id), states=ACTIVE_RUN_STATES))
        if str(self.ct_dag_id) == ti.dag_id:
            count -= 1  # the monitoring step runs inside the CT DAG itself
        return max(count, 0)

    # -- acting on a verdict -------------------------------------------------------------------
    def finish(
        self,
        context: Context,
        *,
        policy: str,
        triggered: bool,
        result: dict[str, Any],
        **event_extra: Any,
    ) -> dict[str, Any]:
        """Apply ``policy`` to the verdict; returns the XCom result (or raises/branches).

        ``result`` holds the verdict's ``reason``, the ``champion_version`` and the
        ``report_uri``; they go into the retrain event with ``event_extra``.
        """
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from airflow_mlops.core.retrain_signal import (
            decide_retrain_signal,
            validate_debounce_seconds,
        )

        reason = result["reason"]
        if policy == "emit":
            decision = decide_retrain_signal(
                triggered=triggered,
                trigger_reason=reason,
                now=datetime.now(timezone.utc),
                last_signal_at=self.last_signal_at(context) if triggered else None,
                debounce_seconds=validate_debounce_seconds(self.debounce_seconds),
                active_ct_runs=self.active_ct_runs(context) if triggered else 0,
            )
            result["retrain_signal"] = decision.to_dict()
            if decision.emit:
                extra = {
                    "trigger": self.signal_trigger,
                    "model_name": self.model_name,
                    "champion_version": result["champion_version"],
                    **event_extra,
                    "report_uri": result["report_uri"],
                    "reason": reason,
                }
                context["outlet_events"][self.retrain_alias].add(self.retrain_asset, extra=extra)
                self.record_signal_in_mlflow(reason, context)
                self.log.warning("Retrain signal emitted for %s: %s", self.model_name, reason)
            else:
                self.log.info("No retrain signal: %s", decision.reason)
            return result
        result["retrain_signal"] = {"emit": False, "reason": f"policy {policy!r} never emits"}
        if policy == "branch":
            follow = self.trigger_task_ids if triggered else self.no_trigger_task_ids
            self.push_result(context, result)
            self.do_branch(context, follow)  # raises to skip the other branches
            return result
        if not triggered:
            return result
        self.push_result(context, result)
        if policy == "fail":
            raise AirflowFailException(reason)
        raise AirflowSkipException(reason)

    def push_result(self, context: Context, result: dict[str, Any]) -> None:
        """The task will not return normally: push the result so it stays inspectable."""
        if self.do_xcom_push:
            context["ti"].xcom_push(key="return_value", value=result)

    def record_signal_in_mlflow(self, reason: str, context: Context) -> None:
        """Tag the registered model with the last signal, for people looking at MLflow."""
        from mlflow.exceptions import MlflowException

        from airflow_mlops.core.retrain_signal import TAG_LAST_RETRAIN_SIGNAL

        run = self.run_context(context)
        value = json.dumps(
            {
                "at": datetime.now(timezone.utc).isoformat(),
                "reason": reason[:1000],
                "dag_id": run.dag_id,
                "run_id": run.run_id,
                "task_id": run.task_id,
            }
        )
        try:
            with self.mlflow_hook.session() as client:
                client.set_registered_model_tag(self.model_name, TAG_LAST_RETRAIN_SIGNAL, value)
        except MlflowException as err:
            # The Airflow event is the signal; the tag is a convenience for MLflow users.
            self.log.warning("Could not tag %s with the retrain signal: %s", self.model_name, err)

    def validate_policy_fields(self, policy: str, field: str) -> None:
        if policy == "branch" and not (self.trigger_task_ids or self.no_trigger_task_ids):
            raise ConfigError(
                f"{field}='branch' needs the task ids to follow (the *_task_ids parameters)"
            )

    def report_location(self, context: Context, name: str) -> str:
        """``report_uri/<name>`` when given, else the run's default report folder."""
        from airflow_mlops.core.storage import join_uri

        if self.report_uri:
            return join_uri(str(self.report_uri), name)
        return self.default_report_uri(context, name)

    def mlflow_artifact_folder(self, context: Context, kind: str) -> str:
        """Same folder on every try of a task instance: a retry overwrites, never duplicates."""
        run = self.run_context(context)
        parts = [
            "monitoring",
            kind,
            _path_safe(run.dag_id),
            _path_safe(run.run_id),
            _path_safe(run.task_id),
        ]
        if run.map_index >= 0:
            parts.append(str(run.map_index))
        return "/".join(parts)

    def read_champion(self) -> ChampionFacts | None:
        from airflow_mlops.core.champion import read_champion

        with self.mlflow_hook.session() as client:
            return read_champion(client, self.model_name)

    def link_champion(self, context: Context, champion: ChampionFacts) -> None:
        persist_mlflow_links(
            context,
            tracking_uri=self.mlflow_hook.tracking_uri,
            experiment_id=champion.experiment_id,
            run_id=champion.run_id,
            model_name=champion.model_name,
            model_version=champion.version,
        )


class DriftReportOperator(RetrainSignalOperator):
    """Compare new data with the champion's reference using Evidently 0.7's ``DataDriftPreset``.

    Inputs are read by URI (Parquet recommended for millions of rows; CSV is read whole),
    schema-checked, sampled per side with a seeded, documented policy, and given to
    Evidently (``Report``, ``Dataset``, ``DataDefinition``). The sanitised HTML report and a
    JSON summary are written to ``report_uri`` and attached to the champion's MLflow run.
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

    :param current_uri: the new data (templated).
    :param reference_uri: the reference data (templated); default: the ``mlops.reference.uri``
        tag of the champion's training run.
    :param columns: columns to compare (templated); default: the champion's features
        (``mlops.features``), else every column (both sides must then match exactly).
    :param column_methods: Evidently stat test per column, e.g. ``{"age": "psi"}`` (templated).
    :param column_thresholds: drift threshold per column (templated).
    :param drift_share: share of drifted columns at which the dataset drifts (templated).
    :param sample_rows: at most this many rows per side go to Evidently (templated).
    :param sample_seed: seed of the sample (templated).
    :param stratify_by: optional low-cardinality column whose mix the sample keeps exactly
        (templated).
    :param report_uri: folder (local or ``s3://``) for ``drift_report.html`` and
        ``drift_summary.json`` (templated); default: the run's artifacts folder.
    :param on_drift: ``emit`` | ``fail`` | ``skip`` | ``branch`` (templated).
    :param on_empty: an empty current batch ``fail``s (default) or ``skip``s the task (templated).
    :param drift_task_ids: task ids to follow on drift when ``on_drift="branch"``.
    :param no_drift_task_ids: task ids to follow without drift when ``on_drift="branch"``.
    :param attach_to_mlflow: log the report and summary on the champion's run (default True).
    """

    policy_field = "on_drift"
    signal_trigger = "drift"
    template_fields: Sequence[str] = (
        *RetrainSignalOperator.template_fields,
        "current_uri",
        "reference_uri",
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
        model_name: str,
        current_uri: str,
        reference_uri: str | None = None,
        columns: Sequence[str] | str | None = None,
        column_methods: Mapping[str, str] | str | None = None,
        column_thresholds: Mapping[str, float] | str | None = None,
        drift_share: float | str = 0.5,
        sample_rows: int | str = DEFAULT_SAMPLE_ROWS,
        sample_seed: int | str = 0,
        stratify_by: str | None = None,
        on_drift: str = "emit",
        drift_task_ids: str | Sequence[str] | None = None,
        no_drift_task_ids: str | Sequence[str] | None = None,
        attach_to_mlflow: bool = True,
        **kwargs: Any,
    ) -> None:
        # report_uri, on_empty, debounce_seconds, ct_dag_id: RetrainSignalOperator's.
        super().__init__(
            model_name=model_name,
            trigger_task_ids=drift_task_ids,
            no_trigger_task_ids=no_drift_task_ids,
            **kwargs,
        )
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
        self.check_policies()

    def drift_settings(self, default_columns: Sequence[str] | None) -> DriftSettings:
        """The typed core settings from the rendered fields (errors name the field)."""
        from airflow_mlops.core.drift import DriftSettings
        from airflow_mlops.core.drift_sampling import SamplingPolicy

        columns = _as_list(self.columns, "columns") or (
            list(default_columns) if default_columns else None
        )
        return DriftSettings(
            columns=tuple(columns) if columns else None,
            per_column_method=as_mapping(self.column_methods or {}, "column_methods"),
            per_column_threshold={
                k: _as_number(v, float, f"column_thresholds[{k!r}]")
                for k, v in as_mapping(self.column_thresholds or {}, "column_thresholds").items()
            },
            drift_share=_as_number(self.drift_share, float, "drift_share"),
            sampling=SamplingPolicy(
                max_rows_per_side=_as_number(self.sample_rows, int, "sample_rows"),
                seed=_as_number(self.sample_seed, int, "sample_seed"),
                stratify_by=self.stratify_by or None,
            ),
        )

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from airflow_mlops.core import drift as core
        from airflow_mlops.core.drift_verdict import drift_reason
        from airflow_mlops.core.lineage import TAG_REFERENCE_URI

        policy = self.checked_policies()
        if not isinstance(self.current_uri, str) or not self.current_uri.strip():
            raise ConfigError(f"current_uri must be a non-empty string, got {self.current_uri!r}")
        current_uri = self.current_uri.strip()

        champion = self.read_champion()
        reference_uri = (self.reference_uri or "").strip() or (
            champion.reference_uri if champion else None
        )
        if not reference_uri:
            if champion is None:
                raise AirflowSkipException(
                    f"{self.model_name} has no champion yet and no reference_uri was given: "
                    "there is nothing to compare the new data with."
                )
            raise ConfigError(
                f"No reference_uri given and the champion's run {champion.run_id} has no "
                f"{TAG_REFERENCE_URI} tag: pass reference_uri."
            )
        features = champion.features(self.storage) if champion else None
        settings = self.drift_settings(features)
        self.log.info(
            "Drift of %s vs %s on %s (sample cap %s rows per side, seed %s)",
            current_uri,
            reference_uri,
            list(settings.columns) if settings.columns else "all columns",
            settings.sampling.max_rows_per_side,
            settings.sampling.seed,
        )
        try:
            result = core.compute_drift(reference_uri, current_uri, self.storage, settings)
        except EmptyBatchError as err:
            if self.on_empty == "skip":
                raise AirflowSkipException(str(err)) from err
            raise

        summary = result.summary
        html_uri = self.report_location(context, DRIFT_REPORT_NAME)
        summary_uri = self.report_location(context, DRIFT_SUMMARY_NAME)
        self.storage.write_text(html_uri, result.html)
        # Not write_json: it sorts keys, and the columns' order is the data's order.
        self.storage.write_text(summary_uri, json.dumps(summary, indent=2, allow_nan=False))
        self.log.info("Drift report written to %s, summary to %s", html_uri, summary_uri)
        report_artifact = None
        if champion is not None and champion.run_id and self.attach_to_mlflow:
            folder = self.mlflow_artifact_folder(context, "drift")
            report_artifact = f"{folder}/{DRIFT_REPORT_NAME}"
            with self.mlflow_hook.session() as client:
                client.log_text(champion.run_id, result.html, report_artifact)
                client.log_dict(champion.run_id, summary, f"{folder}/{DRIFT_SUMMARY_NAME}")
            self.log.info("Report attached to MLflow run %s under %s/", champion.run_id, folder)
            self.link_champion(context, champion)
        if champion is not None:
            self.record_drift_in_mlflow(context, summary, champion, report_artifact, html_uri)

        reason = drift_reason(summary)
        self.log.info("%s", reason)
        xcom = {
            "model_name": self.model_name,
            "champion_version": champion.version if champion else None,
            "mlflow_run_id": champion.run_id if champion else None,
            "reference_uri": reference_uri,
            "current_uri": current_uri,
            "report_uri": html_uri,
            "summary_uri": summary_uri,
            **core.small_summary(summary),
            "reason": reason,
        }
        return self.finish(
            context,
            policy=policy,
            triggered=result.drifted,
            result=xcom,
            drifted_columns=xcom["drifted_columns"][:20],
            summary_uri=summary_uri,
        )

    def record_drift_in_mlflow(
        self,
        context: Context,
        summary: Mapping[str, Any],
        champion: ChampionFacts,
        report_artifact: str | None,
        report_uri: str,
    ) -> None:
        """Overwrite the model's ``mlops.last_drift`` tag with this verdict (a retry rewrites
        the same task's verdict), so the MLOps page reads it without listing artifacts."""
        from mlflow.exceptions import MlflowException

        from airflow_mlops.core.drift_verdict import TAG_LAST_DRIFT, last_drift_tag

        run = self.run_context(context)
        value = last_drift_tag(
            summary,
            at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            airflow_task={
                "dag_id": run.dag_id,
                "run_id": run.run_id,
                "task_id": run.task_id,
                "map_index": run.map_index,
            },
            mlflow_run_id=champion.run_id if report_artifact else None,
            report_artifact=report_artifact,
            report_uri=report_uri,
            champion_version=champion.version,
        )
        try:
            with self.mlflow_hook.session() as client:
                client.set_registered_model_tag(self.model_name, TAG_LAST_DRIFT, value)
        except MlflowException as err:
            # The XCom and the reports hold the verdict; the tag only speeds up the page.
            self.log.warning("Could not tag %s with the drift verdict: %s", self.model_name, err)


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
    :param report_uri: folder for ``performance.json`` (templated).
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
    )
    template_fields_renderers = {"baseline_metrics": "json"}

    def __init__(
        self,
        *,
        model_name: str,
        labels_uri: str,
        metric: str | None = None,
        tolerance: float | str = 0.05,
        tolerance_mode: str = "absolute",
        target: str | None = None,
        task: str | None = None,
        baseline_metrics: Mapping[str, float] | str | None = None,
        min_labelled_rows: int | str = 100,
        on_decay: str = "emit",
        decay_task_ids: str | Sequence[str] | None = None,
        no_decay_task_ids: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # report_uri, on_empty, debounce_seconds, ct_dag_id: RetrainSignalOperator's.
        super().__init__(
            model_name=model_name,
            trigger_task_ids=decay_task_ids,
            no_trigger_task_ids=no_decay_task_ids,
            **kwargs,
        )
        self.labels_uri = labels_uri
        self.metric = metric
        self.tolerance = tolerance
        self.tolerance_mode = tolerance_mode
        self.target = target
        self.task = task
        self.baseline_metrics = baseline_metrics
        self.min_labelled_rows = min_labelled_rows
        self.on_decay = on_decay
        _check_choice(tolerance_mode, TOLERANCE_MODES, "tolerance_mode")
        self.check_policies()

    def decay_settings(self) -> DecaySettings:
        from airflow_mlops.core.performance import DecaySettings

        return DecaySettings(
            metric=self.metric or None,
            tolerance=_as_number(self.tolerance, float, "tolerance"),
            tolerance_mode=self.tolerance_mode,
            min_labelled_rows=_as_number(self.min_labelled_rows, int, "min_labelled_rows"),
        )

    def explicit_baseline(self) -> dict[str, float] | None:
        """``baseline_metrics`` as numbers (errors name the key); None: the champion's."""
        if not self.baseline_metrics:
            return None
        return {
            k: _as_number(v, float, f"baseline_metrics[{k!r}]")
            for k, v in as_mapping(self.baseline_metrics, "baseline_metrics").items()
        }

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
        try:
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
            )
        except EmptyBatchError as err:
            if self.on_empty == "skip":
                raise AirflowSkipException(str(err)) from err
            raise
        self.log.info("%s", outcome.reason)
        if champion.run_id:
            self.link_champion(context, champion)
        return self.finish(
            context,
            policy=policy,
            triggered=outcome.decayed,
            result=outcome.result(),
            metric=outcome.metric,
        )
