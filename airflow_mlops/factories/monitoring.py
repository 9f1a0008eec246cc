"""Build the monitoring DAG: drift (and decay) checks that emit the model's retrain signal.

With ``segments``, each segment model (``<model>__<segment>``) gets its own drift check on
its segment's rows, as a mapped task, with its own retrain Asset and debounce. Every run ends
with a ``summary`` task listing what was checked, what could not be and why; it fails the run
when a check failed or when nothing was checked (no champion of any model it watches), so a
run never ends green having checked nothing. A configuration whose checks could not run is
refused when the DAG is built (:func:`check_monitorable`). With ``notifications.stale_after``,
a ``stale_champion`` task checks how old each champion is
(:mod:`airflow_mlops.factories.staleness`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, TaskGroup, task

from airflow_mlops.factories.config import PipelineConfig, load_config

__all__ = [
    "check_monitorable",
    "monitoring_dag",
    "monitoring_group",
    "monitoring_params",
    "summarize_checks",
]


def _as_config(config: PipelineConfig | str | Path) -> PipelineConfig:
    return config if isinstance(config, PipelineConfig) else load_config(config)


def monitoring_params(config: PipelineConfig) -> dict[str, Param]:
    current = config.monitoring.current_uri or config.data.inference_uri or ""
    return {
        "current_uri": Param(current, type="string", description="New data to check for drift."),
    }


def monitoring_group(
    config: PipelineConfig | str | Path, group_id: str = "monitoring"
) -> TaskGroup:
    """The monitoring steps as a TaskGroup (inside a DAG whose params include ``current_uri``)."""
    config = _as_config(config)
    with TaskGroup(group_id=group_id) as group:
        _monitoring_tasks(config)
        _staleness_task(config)
        _notify_task(config)
    return group


def monitoring_dag(config: PipelineConfig | str | Path, **dag_kwargs: Any) -> DAG:
    """Drift on new data (and decay when labels arrive) → the retrain Asset of the CT DAG."""
    config = _as_config(config)
    kwargs: dict[str, Any] = {
        "dag_id": config.monitoring_dag_id,
        "description": f"Drift and decay monitoring of {config.registered_model_name}",
        "schedule": config.monitoring.schedule,
        "start_date": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        "catchup": False,
        "max_active_runs": 1,
        "default_args": {"owner": config.owner, "retries": config.retries},
        "params": monitoring_params(config),
        "tags": ["mlops", "monitoring", *config.tags],
    }
    kwargs.update(dag_kwargs)
    with DAG(**kwargs) as dag:
        _monitoring_tasks(config)
        _staleness_task(config)
        _notify_task(config)
    return dag


def _staleness_task(config: PipelineConfig) -> None:
    """The ``stale_champion`` check, only when ``notifications.stale_after`` is set; before
    :func:`_notify_task`, which puts every task of the group upstream of ``notify``."""
    if config.notifications.stale_after is not None:
        from airflow_mlops.factories.staleness import staleness_task

        staleness_task(config)


def _notify_task(config: PipelineConfig) -> None:
    """The final ``notify`` task, only when ``notifications`` maps an event to a notifier."""
    if config.notifications.events:
        from airflow_mlops.factories.notify import monitoring_notify_task

        monitoring_notify_task(config)


def _monitoring_tasks(config: PipelineConfig) -> None:
    """The checks and the ``summary`` task that reports them (and fails a run that checked
    nothing). With ``segments``, each check is mapped over the segment models."""
    from airflow_mlops.core.segments import segment_models

    check_monitorable(config)
    model = config.registered_model_name
    if config.segments is not None:
        pairs = segment_models(model, config.segments.values)
        checks = [_segment_task(config, pairs, _drift_operator(config))]
        if config.monitoring.decay:
            checks.append(_segment_task(config, pairs, _decay_operator(config)))
        watched = [m for _, m in pairs]
    else:
        checks = [_drift_operator(config)(model_name=model)]
        if config.monitoring.decay:
            checks.append(_decay_operator(config)(model_name=model))
        watched = [model]
    named = [(check.task_id, check.task_id.rsplit(".", 1)[-1]) for check in checks]
    summary = _summary_task(config, named)(watched, config.segments is not None)
    for check in checks:
        check >> summary


def check_monitorable(config: PipelineConfig) -> None:
    """Refuse, when the DAG is built, a configuration whose checks could not run; the
    :class:`~airflow_mlops.core.errors.ConfigError` names the field."""
    from airflow_mlops.core.errors import ConfigError
    from airflow_mlops.core.segments import segment_models

    if config.segments is None:
        return
    segments = config.segments
    segment_models(config.registered_model_name, segments.values)  # distinct model names
    if config.monitoring.columns and segments.column in config.monitoring.columns:
        raise ConfigError(
            f"{config.name}: monitoring.columns lists segments.column {segments.column!r}: "
            "within one segment it holds a single value, so it cannot drift."
        )


def _drift_operator(config: PipelineConfig) -> Any:
    """``DriftReportOperator`` with the pipeline's settings (call, or ``.partial``, with the
    model name)."""
    from functools import partial

    from airflow_mlops.operators.drift import DriftReportOperator

    monitoring = config.monitoring
    return partial(
        DriftReportOperator.partial if config.segments else DriftReportOperator,
        task_id="drift",
        current_uri="{{ params.current_uri }}",
        reference_uri=monitoring.reference_uri,
        columns=monitoring.columns,
        column_methods=monitoring.column_methods or None,
        column_thresholds=monitoring.column_thresholds or None,
        drift_share=monitoring.drift_share,
        sample_rows=monitoring.sample_rows,
        debounce_seconds=int(monitoring.debounce_hours * 3600),
        ct_dag_id=config.ct_dag_id,
        on_drift="emit",
        allowed_data_prefixes=config.allowed_data_prefixes,
        **config.connections.model_dump(),
    )


def _decay_operator(config: PipelineConfig) -> Any:
    """``ModelPerformanceOperator`` with the pipeline's settings (as :func:`_drift_operator`)."""
    from functools import partial

    from airflow_mlops.core.prediction_layout import is_partitioned_output
    from airflow_mlops.operators.performance import ModelPerformanceOperator

    monitoring = config.monitoring
    assert monitoring.decay is not None
    predictions = config.data.predictions_uri
    delayed = bool(config.data.id_columns and predictions)
    delayed = delayed and is_partitioned_output(str(predictions))
    return partial(
        ModelPerformanceOperator.partial if config.segments else ModelPerformanceOperator,
        task_id="decay",
        labels_uri=monitoring.decay.labels_uri,
        predictions_uri=predictions if delayed else None,
        id_columns=config.data.id_columns if delayed else None,
        min_label_coverage=monitoring.decay.min_label_coverage,
        tolerance=monitoring.decay.tolerance,
        metric=monitoring.decay.metric,
        on_empty=monitoring.decay.on_empty,
        fairness=_fairness_to_monitor(config) if delayed else None,
        debounce_seconds=int(monitoring.debounce_hours * 3600),
        ct_dag_id=config.ct_dag_id,
        allowed_data_prefixes=config.allowed_data_prefixes,
        **config.connections.model_dump(),
    )


def _fairness_to_monitor(config: PipelineConfig) -> dict[str, Any] | None:
    """``evaluation.fairness`` as a plain mapping for the decay task (delayed labels only:
    fairness is measured per labelled prediction partition)."""
    spec = config.evaluation.fairness
    return None if spec is None else spec.model_dump(mode="json")


def _segment_task(config: PipelineConfig, pairs: list[tuple[str, str]], check: Any) -> Any:
    """One check per segment model (a mapped task) on that segment's rows.

    Each segment model has its own retrain Asset, alias and debounce, exactly as a plain
    model: the segmented CT DAG is scheduled on every segment's retrain Asset too. The
    mapped task's Assets are declared here because Airflow registers a mapped task's
    inlets and outlets from its ``partial`` arguments when it parses the DAG.
    """
    from airflow_mlops.assets import retrain_asset
    from airflow_mlops.operators.monitoring import retrain_alias

    assert config.segments is not None
    return check(
        segment_column=config.segments.column,
        inlets=[retrain_asset(m) for _, m in pairs],
        outlets=[retrain_alias(m) for _, m in pairs],
        map_index_template="{{ task.segment_value }}",
    ).expand_kwargs([{"model_name": m, "segment_value": v} for v, m in pairs])


def _summary_task(config: PipelineConfig, checks: list[tuple[str, str]]) -> Any:
    """``summary``: what each check found, what it could not check; fails the run when a
    check failed or when nothing was checked at all."""

    @task(task_id="summary", trigger_rule="all_done", retries=0, multiple_outputs=False)
    def summary(models: list[str], mapped: bool, **context: Any) -> dict[str, Any]:
        return summarize_checks(config, checks, models, mapped, context)

    return summary


def summarize_checks(
    config: PipelineConfig,
    checks: list[tuple[str, str]],
    models: list[str],
    mapped: bool,
    context: dict[str, Any],
) -> dict[str, Any]:
    """Each ``(task id, check)`` per model: checked (with its verdict), not checked (why) or
    failed. Raises when a check failed, and :class:`NothingCheckedError` when none ran."""
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.core.drift_check import NothingCheckedError

    ti, dag_run = context["ti"], context["dag_run"]
    task_ids = [task_id for task_id, _ in checks]
    found = ti.get_task_states(dag_id=ti.dag_id, task_ids=task_ids, run_ids=[dag_run.run_id])
    states = _states_by_index(found, task_ids)
    outcome: dict[str, Any] = {
        "pipeline": config.name,
        "checked": [],
        "not_checked": [],
        "failed": [],
        "retrain_signals": [],
    }
    for task_id, check in checks:
        for index, model in enumerate(models):
            map_index = index if mapped else -1
            state = states.get((task_id, map_index), "none")
            entry = {"check": check, "model_name": model, "state": state}
            if state == "success":
                result = _pull(ti, task_id, map_index) or {}
                signal = result.get("retrain_signal") or {}
                entry["reason"] = str(result.get("reason", ""))[:300]
                if signal.get("emit"):
                    outcome["retrain_signals"].append(model)
                outcome["checked"].append(entry)
            elif state in ("failed", "upstream_failed"):
                outcome["failed"].append(entry)
            else:
                entry["reason"] = (
                    f"no champion of {model} yet" if state == "skipped" else f"state {state}"
                )
                outcome["not_checked"].append(entry)
    print(_format(outcome))
    if outcome["failed"]:
        ti.xcom_push(key="return_value", value=outcome)
        failed = ", ".join(f"{e['check']} of {e['model_name']}" for e in outcome["failed"])
        raise AirflowFailException(f"{config.monitoring_dag_id}: {failed} failed")
    if not outcome["checked"]:
        ti.xcom_push(key="return_value", value=outcome)
        missed = "; ".join(
            f"{e['check']} of {e['model_name']}: {e['reason']}" for e in outcome["not_checked"]
        )
        raise NothingCheckedError(
            f"{config.monitoring_dag_id} checked nothing ({missed}); train the models first "
            f"({config.ct_dag_id})."
        )
    return outcome


def _states_by_index(found: Any, task_ids: list[str]) -> dict[tuple[str, int], str]:
    """``get_task_states`` keys an unmapped task by its id, a mapped one ``<id>_<index>``."""
    states: dict[tuple[str, int], str] = {}
    for per_task in (found or {}).values():
        for key, state in per_task.items():
            if key in task_ids:
                states[(key, -1)] = str(state)
                continue
            task_id, _, index = key.rpartition("_")
            if task_id in task_ids and index.isdigit():
                states[(task_id, int(index))] = str(state)
    return states


def _pull(ti: Any, task_id: str, map_index: int) -> Any:
    if map_index < 0:
        return ti.xcom_pull(task_ids=task_id)
    return ti.xcom_pull(task_ids=task_id, map_indexes=map_index)


def _format(outcome: dict[str, Any]) -> str:
    lines = [
        f"monitoring of {outcome['pipeline']}: {len(outcome['checked'])} checked, "
        f"{len(outcome['not_checked'])} not checked, {len(outcome['failed'])} failed; "
        f"retrain signals: {', '.join(outcome['retrain_signals']) or 'none'}"
    ]
    for kind in ("checked", "not_checked", "failed"):
        for entry in outcome[kind]:
            lines.append(
                f"  {kind.replace('_', ' ')}: {entry['check']} of {entry['model_name']} "
                f"({entry['state']}) {entry.get('reason', '')}".rstrip()
            )
    return "\n".join(lines)
