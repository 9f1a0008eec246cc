"""The operations DAGs of a pipeline: ``rollback__<name>`` and ``freeze__<name>``.

Both are triggered from the Airflow UI's trigger form, pin their model in the DAG file and
record who (the triggering user) and why (a required ``reason``).

- ``rollback__<name>``: ``champion_history`` (lists the former champions, newest first, in its
  log and XCom) -> ``rollback`` (serving check, compare-and-set move of ``@champion`` under
  the promotion lock). The version is a free field checked at run time against the history,
  because the history lives in MLflow and a DAG file must not call MLflow while it is parsed.
- ``freeze__<name>``: one task; ``action`` is ``freeze`` or ``unfreeze``. A separate DAG, not
  an action on the rollback DAG: in the UI's DAG list an operator looks for "freeze", and a
  rollback form with a freeze switch would let one run do two different things.

When the pipeline's ``notifications`` map ``rolled_back`` (rollback DAG) or ``frozen`` /
``unfrozen`` (freeze DAG), a ``notify`` task follows the action task
(:func:`airflow_mlops.factories.notify.operations_notify_task`); otherwise the DAGs have no
such task.

A segmented pipeline's forms add ``segment``, an enum of the YAML's ``segments.values``
(known when the file is parsed); the operators map it to ``<model>__<segment>`` through a
mapping pinned in the DAG file, so the form can only choose among this pipeline's models.

Construction does no I/O and imports no ML library.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

from airflow_mlops.factories.config import PipelineConfig, load_config
from airflow_mlops.factories.notify import operations_notify_task
from airflow_mlops.factories.promotion import freeze_dag_params, rollback_dag_params

__all__ = ["freeze_dag", "operations_dags", "rollback_dag"]

_START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def _as_config(config: PipelineConfig | str | Path) -> PipelineConfig:
    return config if isinstance(config, PipelineConfig) else load_config(config)


def _dag_kwargs(config: PipelineConfig, dag_id: str, what: str, doc: str) -> dict[str, Any]:
    return {
        "dag_id": dag_id,
        "description": f"{what} {config.registered_model_name} (operations, manual trigger)",
        "schedule": None,
        "start_date": _START,
        "catchup": False,
        # Two rollbacks at once would both read the same champion; the lock serialises
        # them anyway, one run at a time keeps the form's result readable.
        "max_active_runs": 1,
        "default_args": {"owner": config.owner, "retries": 0},
        "tags": ["mlops", "operations", *config.tags],
        "doc_md": doc,
    }


def _segments(config: PipelineConfig) -> dict[str, str] | None:
    """Segment value -> model name, or None for a pipeline without segments."""
    if not config.segments:
        return None
    from airflow_mlops.core.segments import segment_model_name

    model = config.registered_model_name
    return {str(v): segment_model_name(model, v) for v in config.segments.values}


def _segment_param(segments: dict[str, str] | None) -> dict[str, Any]:
    from airflow.sdk import Param

    if segments is None:
        return {}
    return {
        "segment": Param(
            type="string",
            enum=list(segments),
            title="Segment",
            description="Which segment's model (required).",
        )
    }


_SEGMENT = "{{ params.segment | default('', true) }}"


def rollback_dag(config: PipelineConfig | str | Path, **dag_kwargs: Any) -> DAG:
    """``rollback__<name>``: champion_history -> rollback (-> notify), for the pipeline's model."""
    from airflow_mlops.operators.registry import RollbackModelOperator

    config = _as_config(config)
    model = config.registered_model_name
    conns = config.connections.model_dump()
    segments = _segments(config)
    kwargs = _dag_kwargs(config, config.rollback_dag_id, "Roll back", _rollback_doc(config))
    kwargs["params"] = {**_segment_param(segments), **rollback_dag_params(model)}
    kwargs.update(dag_kwargs)
    with DAG(**kwargs) as dag:
        history = _champion_history_task(model, segments, conns["mlflow_conn_id"])
        rollback = RollbackModelOperator(
            task_id="rollback",
            model_name=model,
            segments=segments,
            segment=_SEGMENT if segments else None,
            to_version="{{ params.to_version if params.to_version is not none else '' }}",
            reason="{{ params.reason or '' }}",
            requested_by="{{ params.requested_by or '' }}",
            serving_check=config.promotion.serving_check,
            **conns,
        )
        history >> rollback
        if _notifies(config, "rolled_back"):
            operations_notify_task(config, rollback)
    return dag


def freeze_dag(config: PipelineConfig | str | Path, **dag_kwargs: Any) -> DAG:
    """``freeze__<name>``: freeze or unfreeze the pipeline's model (-> notify)."""
    from airflow_mlops.operators.registry import FreezeModelOperator

    config = _as_config(config)
    model = config.registered_model_name
    segments = _segments(config)
    kwargs = _dag_kwargs(config, config.freeze_dag_id, "Freeze or unfreeze", _freeze_doc(config))
    kwargs["params"] = {**_segment_param(segments), **freeze_dag_params(model)}
    kwargs.update(dag_kwargs)
    with DAG(**kwargs) as dag:
        freeze = FreezeModelOperator(
            task_id="freeze",
            model_name=model,
            segments=segments,
            segment=_SEGMENT if segments else None,
            action="{{ params.action }}",
            reason="{{ params.reason or '' }}",
            requested_by="{{ params.requested_by or '' }}",
            **config.connections.model_dump(),
        )
        if _notifies(config, "frozen", "unfrozen"):
            operations_notify_task(config, freeze)
    return dag


def _notifies(config: PipelineConfig, *events: str) -> bool:
    return any(config.notifications.targets(event) for event in events)


def operations_dags(config: PipelineConfig) -> list[DAG]:
    """The rollback and freeze DAGs of a pipeline."""
    return [rollback_dag(config), freeze_dag(config)]


def _champion_history_task(
    base_model: str, segments: dict[str, str] | None, mlflow_conn_id: str
) -> Any:
    @task(task_id="champion_history", retries=0)
    def champion_history(segment: str | None = None) -> list[dict[str, Any]]:
        """The former champions the rollback may choose from, newest first (log and XCom)."""
        from airflow_mlops.core.alias_history import freeze_state, frozen_reason
        from airflow_mlops.core.alias_moves import rollback_candidates
        from airflow_mlops.core.errors import ConfigError
        from airflow_mlops.hooks.mlflow import MlflowHook

        model = base_model
        if segments is not None:
            if segment not in segments:
                raise ConfigError(f"segment {segment!r} is not one of {sorted(segments)[:20]}")
            model = segments[segment]

        with MlflowHook(mlflow_conn_id=mlflow_conn_id).session() as client:
            rows = rollback_candidates(client, model)
            frozen = freeze_state(client, model)
        print(f"@champion history of {model} (newest first):")
        for row in rows:
            print(
                f"  v{row['version']:<6} {row['status']:<17} {row['action']:<9} {row['at']} "
                f"by {row['by']}: {row['reason']}"
            )
        if frozen is not None:
            print(f"{model} is {frozen_reason(frozen)}; a rollback is allowed while frozen.")
        return rows[:50]

    return champion_history(_SEGMENT if segments else None)


def _rollback_doc(config: PipelineConfig) -> str:
    model = config.registered_model_name
    return (
        f"### Roll back `{model}`\n\n"
        "Trigger with a **reason**. Leave **to_version** empty to go back one step in the "
        "champion history (a second rollback goes further back; it never returns to the version "
        "the last rollback left), or name a former champion. The `champion_history` task's log "
        "lists them. The target must pass the serving check before `@champion` moves. Allowed "
        f"while the model is frozen (see `{config.freeze_dag_id}`): the freeze stays."
        + (" Choose the **segment** first." if config.segments else "")
        + "\n"
    )


def _freeze_doc(config: PipelineConfig) -> str:
    model = config.registered_model_name
    return (
        f"### Freeze or unfreeze `{model}`\n\n"
        f"While frozen, `{config.ct_dag_id}` trains and evaluates but never moves `@champion`; "
        "its summary says `frozen: <reason> (by <who>)`. Stored as the registered-model tag "
        "`mlops.frozen` and in the alias history. Unfreeze with the same form.\n"
    )
