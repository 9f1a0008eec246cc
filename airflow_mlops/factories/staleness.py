"""The ``stale_champion`` task of the monitoring DAG.

Added by :mod:`airflow_mlops.factories.monitoring` only when ``notifications.stale_after`` is
set (the config then also requires ``events.stale_champion`` and a scheduled monitoring DAG).
It needs no upstream task: a champion goes stale whether or not the drift check could run.

Why a task on the monitoring schedule and not an Airflow deadline alert: a ``DeadlineAlert``
is attached to a DAG run (its reference is the run's logical date, queue time, a fixed time or
the average runtime) and is created with that run. "No successful CT run for 14 days" is
exactly the case where the CT DAG makes no run to hang a deadline on, so something that runs
anyway has to look at the registry; the monitoring DAG already runs daily per pipeline.

Where a deadline alert does fit, a CT run that has not finished some time after it was queued
(stuck on a worker, a pool, a sensor), :func:`ct_run_deadline` builds one for the CT DAG:
``continuous_training_dag(config, deadline=ct_run_deadline(config, "6h"))``. Airflow's
scheduler notices the missed deadline and runs :func:`ct_run_overdue` through the executor,
which sends ``stale_champion`` to the same notifiers.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import task

from airflow_mlops.factories.config import PipelineConfig

__all__ = [
    "MAX_MESSAGES_PER_CHECK",
    "STALENESS_TASK_ID",
    "check_stale_champions",
    "ct_run_deadline",
    "ct_run_overdue",
    "staleness_task",
]

STALENESS_TASK_ID = "stale_champion"
#: More due models than this in one check (segments) are sent as one digest message.
MAX_MESSAGES_PER_CHECK = 5
#: Stale model names kept in the task's XCom (the counts are always complete).
_MAX_NAMES = 50


def staleness_task(config: PipelineConfig) -> Any:
    """The task that checks every champion of the pipeline and sends ``stale_champion``."""

    @task(task_id=STALENESS_TASK_ID, multiple_outputs=False)
    def stale_champion(**context: Any) -> dict[str, Any]:
        return check_stale_champions(config, context)

    return stale_champion()


def _model_names(config: PipelineConfig) -> list[str]:
    from airflow_mlops.core.segments import segment_models

    model = config.registered_model_name
    if config.segments is None:
        return [model]
    return [name for _, name in segment_models(model, config.segments.values)]


def check_stale_champions(config: PipelineConfig, context: dict[str, Any]) -> dict[str, Any]:
    """Assess each champion, send the due alerts, record what was delivered.

    A registry error fails the task (the monitoring ``notify`` task then reports ``failed``);
    a delivery failure does not: nothing is recorded and the next check tries again.
    """
    from datetime import datetime, timezone

    from airflow_mlops.core.staleness import read_staleness, record_check
    from airflow_mlops.hooks.mlflow import MlflowHook

    stale_after = config.notifications.stale_after_delta
    assert stale_after is not None  # the factory adds this task only when it is set
    now = datetime.now(timezone.utc)
    with MlflowHook(mlflow_conn_id=config.connections.mlflow_conn_id).client() as client:
        checks = [read_staleness(client, name, stale_after, now) for name in _model_names(config)]
        due = [c for c in checks if c.due]
        delivered, records = _send(config, context, due)
        for check in checks:
            record_check(client, check, alerted=check.model_name in delivered)
    stale = [c for c in checks if c.is_stale]
    outcome = {
        "stale_after": config.notifications.stale_after,
        "checked": len(checks),
        "stale": len(stale),
        "alerted": sorted(delivered)[:_MAX_NAMES],
        "stale_models": [c.to_dict() for c in stale[:_MAX_NAMES]],
        "notifications": records,
    }
    for check in checks:
        print(f"{check.model_name}: {'STALE' if check.is_stale else 'ok'}: {check.reason}")
    print(f"stale champions: {len(stale)} of {len(checks)}; alerted {sorted(delivered) or 'none'}")
    return outcome


def _send(
    config: PipelineConfig, context: dict[str, Any], due: list[Any]
) -> tuple[set[str], list[dict[str, Any]]]:
    """(models whose alert reached at least one notifier, delivery records). Never raises."""
    from airflow_mlops.core.staleness import stale_digest, stale_message
    from airflow_mlops.notifiers.dispatch import (
        airflow_run_url,
        mlflow_version_url,
        notify_events,
        unsent_record,
    )

    if not due:
        return set(), []
    delivered: set[str] = set()
    records: list[dict[str, Any]] = []
    try:
        dag_run = context["dag_run"]
        run_url = airflow_run_url(dag_run.dag_id, dag_run.run_id)
        batches: list[tuple[list[Any], Any]] = []
        if len(due) > MAX_MESSAGES_PER_CHECK:
            batches.append(
                (due, stale_digest(config.registered_model_name, due, {"airflow_run": run_url}))
            )
        for check in due if len(due) <= MAX_MESSAGES_PER_CHECK else []:
            last = check.last_ct
            links = {
                "airflow_run": run_url,
                "mlflow_version": mlflow_version_url(
                    config.connections.mlflow_conn_id, check.model_name, check.champion_version
                ),
                "last_ct_run": airflow_run_url(last.dag_id, last.run_id)
                if last is not None and last.dag_id and last.run_id
                else None,
            }
            batches.append(([check], stale_message(check, links)))
        for checks, message in batches:
            sent = notify_events(config.notifications, [message], context)
            records.extend(sent)
            if any(record.get("ok") for record in sent):
                delivered.update(check.model_name for check in checks)
    except Exception as err:  # a notification never fails the check
        records.append(unsent_record(err))
    return delivered, records


# -- the CT run deadline -----------------------------------------------------------------------


def ct_run_deadline(config: PipelineConfig, within: str | timedelta) -> Any:
    """An Airflow ``DeadlineAlert`` for ``ct__<name>``: a run not finished ``within`` (``'6h'``,
    ``'90m'``, or a ``timedelta``) after it was queued sends ``stale_champion``.

    The callback's arguments are stored in the serialized DAG, so they carry only the model,
    the MLflow connection id and the ``stale_champion`` notifiers (connection ids, never
    secrets: the YAML refuses URLs). Refused, naming the field, when the pipeline maps no
    notifier to ``stale_champion``.
    """
    from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback

    from airflow_mlops.core.errors import ConfigError

    delta = _duration(within)
    notifications = config.notifications
    targets = notifications.targets("stale_champion")
    if not targets:
        raise ConfigError(
            f"{config.name}: a CT run deadline sends stale_champion; map "
            "notifications.events.stale_champion to a notifier"
        )
    kwargs = {
        "model_name": config.registered_model_name,
        "within": _format(delta),
        "mlflow_conn_id": config.connections.mlflow_conn_id,
        "notifications": {
            "notifiers": {name: spec.model_dump(mode="json") for name, spec in targets},
            "events": {"stale_champion": [name for name, _ in targets]},
            "stale_after": notifications.stale_after,
        },
    }
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=delta,
        callback=SyncCallback(ct_run_overdue, kwargs=kwargs),
        name="ct_run_overdue",
    )


def ct_run_overdue(
    context: dict[str, Any],
    model_name: str,
    within: str,
    mlflow_conn_id: str,
    notifications: dict[str, Any],
) -> list[dict[str, Any]]:
    """The deadline callback: send ``stale_champion`` about the overdue CT run.

    ``context`` is what Airflow hands a deadline callback: ``dag_run`` (the run, as JSON) and
    ``deadline`` (``deadline_time``). Raises when no notifier delivered it, so the callback
    shows as failed in Airflow instead of passing silently.
    """
    from airflow_mlops.core.notifications import Notification
    from airflow_mlops.factories.notifications_config import NotificationsConfig
    from airflow_mlops.notifiers.dispatch import (
        airflow_run_url,
        mlflow_version_url,
        notify_events,
    )

    dag_run = context.get("dag_run") or {}
    dag_id, run_id = str(dag_run.get("dag_id") or ""), str(dag_run.get("run_id") or "")
    deadline = (context.get("deadline") or {}).get("deadline_time")
    champion = _champion_version(mlflow_conn_id, model_name)
    serving = f"v{champion}" if champion else "no champion"
    reason = (
        f"CT run {run_id} has not finished {within} after it was queued (deadline {deadline}); "
        f"@champion stays {serving} until a CT run succeeds"
    )
    links = {
        "airflow_run": airflow_run_url(dag_id, run_id) if dag_id and run_id else None,
        "mlflow_version": mlflow_version_url(mlflow_conn_id, model_name, champion),
    }
    message = Notification("stale_champion", model_name, reason, champion, links=links)
    config = NotificationsConfig.model_validate(notifications)
    records = notify_events(config, [message], context)
    print(f"{model_name}: {reason}; notifications {records}")
    if not any(record.get("ok") for record in records):
        raise RuntimeError(f"stale_champion about {run_id} not delivered: {records}")
    return records


def _champion_version(mlflow_conn_id: str, model_name: str) -> str | None:
    """The champion's version for the message; None (said in the message) when unreadable."""
    from airflow_mlops.core.registry import current_alias_version
    from airflow_mlops.hooks.mlflow import MlflowHook

    try:
        with MlflowHook(mlflow_conn_id=mlflow_conn_id).client() as client:
            version = current_alias_version(client, model_name, "champion")
    except Exception as err:  # the overdue run is the news; the version is a detail
        print(f"{model_name}: champion not read for the message: {type(err).__name__}")
        return None
    return None if version is None else str(version)


def _duration(value: str | timedelta) -> timedelta:
    from airflow_mlops.core.data_window import DURATION, DURATION_UNITS
    from airflow_mlops.core.errors import ConfigError

    if isinstance(value, timedelta):
        delta = value
    else:
        match = DURATION.match(str(value))
        if not match:
            raise ConfigError(f"within: {value!r} is not a duration; write e.g. '6h' or '90m'")
        delta = timedelta(**{DURATION_UNITS[match[2]]: int(match[1])})
    if delta <= timedelta(0):
        raise ConfigError(f"within: {value!r} must be longer than 0")
    return delta


def _format(delta: timedelta) -> str:
    from airflow_mlops.core.data_window import format_duration

    return format_duration(delta)
