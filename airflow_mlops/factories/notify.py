"""The ``notify`` tasks: a run's events → the pipeline's notifiers.

- :func:`monitoring_notify_task`: the monitoring DAG's drift/decay/failed events. Added by
  :mod:`airflow_mlops.factories.monitoring` only when the pipeline's ``notifications``
  section maps an event, so a pipeline without notifications keeps its DAG as it was.
- :func:`operations_notify_task`: ``rolled_back``/``frozen``/``unfrozen`` after the action
  task of ``rollback__<name>``/``freeze__<name>`` (:mod:`airflow_mlops.factories.rollback`),
  added only when one of those events is mapped.

The CT DAG sends its events from its ``summary`` task (:mod:`airflow_mlops.factories.chain`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import task

from airflow_mlops.factories.config import PipelineConfig

__all__ = ["NOTIFY_TASK_ID", "monitoring_notify_task", "operations_notify_task"]

NOTIFY_TASK_ID = "notify"
_FAILED_STATES = frozenset({"failed", "upstream_failed"})


def monitoring_notify_task(config: PipelineConfig) -> Any:
    """A final task downstream of every other task of the current DAG or TaskGroup.

    It runs whatever the checks ended with (``all_done``), sends the events, returns
    ``{"model_name", "events", "notifications", "states"}``, and fails when a check failed:
    as the only leaf it decides the run's state.
    """

    @task(task_id=NOTIFY_TASK_ID, trigger_rule="all_done", retries=0, multiple_outputs=False)
    def notify(**context: Any) -> dict[str, Any]:
        return _notify_monitoring_run(config, context)

    notify_task = notify()
    group = notify_task.operator.task_group
    for child in list(group.children.values()):
        if child is not notify_task.operator:
            child >> notify_task
    return notify_task


def _notify_monitoring_run(config: PipelineConfig, context: dict[str, Any]) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowFailException

    ti, dag_run = context["ti"], context["dag_run"]
    upstream = sorted(context["task"].upstream_task_ids)
    found = ti.get_task_states(dag_id=ti.dag_id, task_ids=upstream, run_ids=[dag_run.run_id])
    states = _step_states(found, upstream)
    by_model = _results_by_model(ti, upstream, config.registered_model_name)
    events, records = _send(config, context, states, by_model)
    model = config.registered_model_name
    outcome = {"model_name": model, "events": events, "notifications": records, "states": states}
    print(f"monitoring of {model}: events {events or 'none'}; notifications {records}")
    failed = [step for step, state in states.items() if state in _FAILED_STATES]
    if failed:
        ti.xcom_push(key="return_value", value=outcome)
        raise AirflowFailException(f"{model}: monitoring step(s) {', '.join(failed)} failed")
    return outcome


def _step_states(found: Any, task_ids: list[str]) -> dict[str, str]:
    """Step → state; a mapped step (keys ``<id>_<index>``) is failed if any instance failed."""
    states: dict[str, str] = {}
    for per_task in (found or {}).values():
        for key, state in per_task.items():
            task_id = key
            if key not in task_ids:
                task_id, _, index = key.rpartition("_")
                if task_id not in task_ids or not index.isdigit():
                    continue
            step = task_id.rsplit(".", 1)[-1]
            if step not in states or str(state) in _FAILED_STATES:
                states[step] = str(state)
    return states


def _results_by_model(ti: Any, task_ids: list[str], default: str) -> dict[str, dict[str, Any]]:
    """Model → step → result; a mapped check (segments) gives one result per segment model."""
    by_model: dict[str, dict[str, Any]] = {}
    for task_id in task_ids:
        step = task_id.rsplit(".", 1)[-1]
        value = ti.xcom_pull(task_ids=task_id)
        items = [value] if isinstance(value, Mapping) else _as_list(value)
        for item in items:
            if isinstance(item, Mapping):
                model = str(item.get("model_name") or default)
                by_model.setdefault(model, {})[step] = item
    return by_model


def _as_list(value: Any) -> list[Any]:
    if value is None or isinstance(value, (str, bytes)):
        return []
    try:
        return list(value)
    except TypeError:
        return []


def _failure_reason(states: dict[str, str], summary: Any) -> str:
    """Which steps failed, with the monitoring summary's detail when it has one."""
    failed = [step for step, state in states.items() if state in _FAILED_STATES]
    reason = f"monitoring step(s) {', '.join(failed)} failed"
    if not isinstance(summary, Mapping):
        return reason
    details = [f"{e.get('check')} of {e.get('model_name')}" for e in summary.get("failed") or []]
    if details:
        return f"{reason}: {', '.join(details)} failed"
    if not summary.get("checked"):
        missed = [
            f"{e.get('check')} of {e.get('model_name')}: {e.get('reason')}"
            for e in summary.get("not_checked") or []
        ]
        return f"{reason}: nothing was checked ({'; '.join(missed)})"
    return reason


def _send(
    config: PipelineConfig,
    context: dict[str, Any],
    states: dict[str, str],
    by_model: dict[str, dict[str, Any]],
) -> tuple[list[str], list[dict[str, Any]]]:
    """(events, delivery records). Never raises: a notification never changes the run."""
    from airflow_mlops.core.notifications import monitoring_events, monitoring_message
    from airflow_mlops.notifiers.dispatch import (
        airflow_run_url,
        mlflow_version_url,
        notify_events,
        unsent_record,
    )

    pipeline_model = config.registered_model_name
    events: list[str] = []
    try:
        dag_run = context["dag_run"]
        run_url = airflow_run_url(dag_run.dag_id, dag_run.run_id)
        wanted: list[tuple[str, str, str | None]] = [
            (event, model, None)
            for model, results in by_model.items()
            for event in monitoring_events(results)
        ]
        if "failed" in monitoring_events({}, states):
            summary = by_model.get(pipeline_model, {}).get("summary")
            wanted.append(("failed", pipeline_model, _failure_reason(states, summary)))
        messages = []
        for event, model, reason in wanted:
            results = by_model.get(model, {})
            draft = monitoring_message(event, model, results, {}, reason)
            links = {
                "airflow_run": run_url,
                "mlflow_version": mlflow_version_url(
                    config.connections.mlflow_conn_id, model, draft.champion_version
                ),
            }
            messages.append(monitoring_message(event, model, results, links, reason))
            events.append(event)
        return events, notify_events(config.notifications, messages, context)
    except Exception as err:
        return events, [unsent_record(err)]


# -- rollback and freeze -------------------------------------------------------------------


def operations_notify_task(config: PipelineConfig, action: Any) -> Any:
    """A task after ``action`` (the ``rollback`` or ``freeze`` operator) that sends its event.

    Runs only when the action succeeded (a refused rollback moved nothing). Never fails: it
    returns ``{"model_name", "events", "notifications"}`` with every delivery's record.
    """

    @task(task_id=NOTIFY_TASK_ID, retries=0, multiple_outputs=False)
    def notify(result: Any, **context: Any) -> dict[str, Any]:
        return _notify_operation(config, result, context)

    return notify(action.output)


def _notify_operation(config: PipelineConfig, result: Any, context: dict[str, Any]) -> dict:
    from airflow_mlops.core.notifications import operations_events, operations_message
    from airflow_mlops.notifiers.dispatch import (
        airflow_run_url,
        mlflow_version_url,
        notify_events,
        unsent_record,
    )

    result = result if isinstance(result, Mapping) else {}
    model = str(result.get("model_name") or config.registered_model_name)
    events = operations_events(result)
    try:
        dag_run = context["dag_run"]
        messages = []
        for event in events:
            draft = operations_message(event, result, {})
            links = {
                "airflow_run": airflow_run_url(dag_run.dag_id, dag_run.run_id),
                "mlflow_version": mlflow_version_url(
                    config.connections.mlflow_conn_id, model, draft.champion_version
                ),
            }
            messages.append(operations_message(event, result, links))
        records = notify_events(config.notifications, messages, context)
    except Exception as err:
        records = [unsent_record(err)]
    print(f"{model}: {result.get('outcome')}; events {events or 'none'}; notifications {records}")
    return {"model_name": model, "events": events, "notifications": records}
