"""Build the continuous-training DAG (or TaskGroup) and the monitoring DAG from a config.

Construction does no I/O and imports no ML library: Airflow re-parses DAG files every 30 s.
"""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, TaskGroup, task

from airflow_mlops.assets import retrain_asset
from airflow_mlops.core.lineage import TAG_PIPELINE, TAG_PIPELINE_CONFIG_HASH
from airflow_mlops.factories.config import PipelineConfig, load_config

CT_STEPS = (
    "detect_changes",
    "validate",
    "train",
    "evaluate",
    "register",
    "approve_promotion",
    "approval_gate",
    "promote",
)
MONITOR_STEPS = ("drift", "decay")


def _as_config(config: PipelineConfig | str | Path) -> PipelineConfig:
    return config if isinstance(config, PipelineConfig) else load_config(config)


def _default_args(config: PipelineConfig) -> dict[str, Any]:
    return {
        "owner": config.owner,
        "retries": config.retries,
        "retry_delay": dt.timedelta(seconds=30),
    }


def _ct_schedule(config: PipelineConfig) -> Any:
    """Cron (if any) OR retrain signal OR new data: the Level-1 triggers."""
    from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable

    assets = retrain_asset(config.registered_model_name)
    if config.data.new_data_uri:
        assets = assets | Asset(uri=_asset_uri(config.data.new_data_uri))
    if config.schedule:
        return AssetOrTimeSchedule(
            timetable=CronTriggerTimetable(config.schedule, timezone="UTC"), assets=assets
        )
    return assets


def _asset_uri(uri: str) -> str:
    return uri if "://" in uri else Path(uri).resolve().as_uri()


def continuous_training_group(
    config: PipelineConfig | str | Path, group_id: str = "continuous_training"
) -> TaskGroup:
    """The CT steps as a TaskGroup, for users who compose their own DAG.

    Must be called inside a ``with DAG(...)`` block whose params include ``train_uri`` (see
    :func:`ct_params`).
    """
    config = _as_config(config)
    with TaskGroup(group_id=group_id) as group:
        _ct_tasks(config, prefix=f"{group_id}.")
    return group


def ct_params(config: PipelineConfig) -> dict[str, Param]:
    return {
        "train_uri": Param(
            config.data.train_uri, type="string", description="Training data URI for this run."
        ),
    }


def continuous_training_dag(config: PipelineConfig | str | Path, **dag_kwargs: Any) -> DAG:
    """The CT DAG: detect changes → validate → train → evaluate → register → (approve) → promote
    → (batch predict) → summary. Scheduled by cron and/or the retrain and new-data Assets.
    """
    config = _as_config(config)
    kwargs: dict[str, Any] = {
        "dag_id": config.ct_dag_id,
        "description": config.description
        or f"Continuous training of {config.registered_model_name}",
        "schedule": _ct_schedule(config),
        "start_date": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        "catchup": False,
        "max_active_runs": 1,
        "default_args": _default_args(config),
        "params": ct_params(config),
        "tags": ["mlops", "continuous-training", *config.tags],
        "doc_md": _doc(config),
    }
    kwargs.update(dag_kwargs)
    with DAG(**kwargs) as dag:
        _ct_tasks(config, prefix="")
    return dag


def _ct_tasks(config: PipelineConfig, prefix: str) -> None:
    if config.segments:
        from airflow_mlops.factories.segments import segmented_ct_tasks

        segmented_ct_tasks(config, prefix)
        return
    model = config.registered_model_name
    conns = config.connections.model_dump()
    train_uri = "{{ params.train_uri }}"
    last = _single_model_chain(config, model, train_uri, conns)
    last >> _summary_task(config, prefix, model=model)


def _single_model_chain(
    config: PipelineConfig,
    model: str,
    train_uri: str,
    conns: dict[str, Any],
    data_prefixes: list[str] | None = None,
) -> Any:
    """Wire the per-model steps; returns the last task so callers can attach more.

    Every task that reads or writes data gets the pipeline's allowed data prefixes
    (``data_prefixes``, default :attr:`PipelineConfig.allowed_data_prefixes`): a trigger
    param such as ``train_uri`` is checked against them once rendered.
    """
    prefixes = data_prefixes if data_prefixes is not None else config.allowed_data_prefixes
    from airflow_mlops.operators.changes import DetectChangesOperator
    from airflow_mlops.operators.registry import promotion_tasks
    from airflow_mlops.operators.training import TrainModelOperator
    from airflow_mlops.operators.validation import DataValidationOperator

    fingerprint = config.fingerprint()
    detect = DetectChangesOperator(
        task_id="detect_changes",
        train_uri=train_uri,
        model_name=model,
        config_hash=fingerprint,
        allowed_data_prefixes=prefixes,
        **conns,
    )
    chain: list[Any] = [detect]
    if config.validation.enabled and config.validation.suite:
        chain.append(
            DataValidationOperator(
                task_id="validate",
                data_uri=train_uri,
                suite=config.validation.suite,
                on_failure=config.validation.on_failure,
                allowed_data_prefixes=prefixes,
                **conns,
            )
        )
    training = config.training
    train = TrainModelOperator(
        task_id="train",
        train_uri=train_uri,
        target=config.data.target,
        experiment_name=config.experiment_name,
        model_name=model,
        features=config.data.features,
        exclude=config.data.exclude or None,
        estimator=training.estimator,
        estimator_params=training.params,
        task=config.task,
        holdout_fraction=training.holdout_fraction,
        seed=training.seed,
        time_column=training.time_column,
        search=training.search.model_dump() if training.search else None,
        extra_tags={TAG_PIPELINE_CONFIG_HASH: fingerprint, TAG_PIPELINE: config.name},
        allowed_data_prefixes=prefixes,
        **conns,
    )
    chain.append(train)
    for upstream, downstream in itertools.pairwise(chain):
        upstream >> downstream
    promotion = promotion_tasks(
        training_result=train.output,
        policy=config.promotion_policy.model_dump(mode="json", exclude_none=True),
        model_name=model,
        slices=config.evaluation.slices or None,
        approval=config.promotion.approval,
        promote_kwargs={"serving_check": config.promotion.serving_check},
        **conns,
    )
    train >> promotion.evaluate
    last: Any = promotion.promote
    if config.data.inference_uri and config.data.predictions_uri:
        from airflow_mlops.operators.prediction import BatchPredictionOperator

        predict = BatchPredictionOperator(
            task_id="predict",
            input_uri=config.data.inference_uri,
            output_uri=config.data.predictions_uri,
            model_name=model,
            allowed_data_prefixes=prefixes,
            **conns,
        )
        last >> predict
        last = predict
    return last


def _summary_task(config: PipelineConfig, prefix: str, model: Any) -> Any:
    """A final task that reports every step and fails the run if any step failed.

    ``model`` may be a mapped argument (one summary per segment).
    """
    steps = [*CT_STEPS, "predict"]

    @task(task_id="summary", trigger_rule="all_done", retries=0, multiple_outputs=False)
    def summary(model_name: str, **context: Any) -> dict[str, Any]:
        return _summarize(context, model_name, steps, prefix)

    return summary(model)


def _summarize(
    context: dict[str, Any], model: str, steps: list[str], prefix: str
) -> dict[str, Any]:
    """Collect states and XComs of the run's steps; fail if any step failed (fail closed)."""
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.core.summary import summarize_run

    ti = context["ti"]
    map_index = ti.map_index if ti.map_index is not None and ti.map_index >= 0 else None
    dag_run = context["dag_run"]
    states: dict[str, str] = {}
    results: dict[str, Any] = {}
    task_ids = set(context["dag"].task_ids)
    for step in steps:
        task_id = f"{prefix}{step}"
        if task_id not in task_ids:
            continue
        state = ti.get_task_states(
            dag_id=ti.dag_id, task_ids=[task_id], run_ids=[dag_run.run_id], map_index=map_index
        )
        states[step] = str(_first_state(state) or "none")
        if map_index is None:
            results[step] = ti.xcom_pull(task_ids=task_id)
        else:
            results[step] = ti.xcom_pull(task_ids=task_id, map_indexes=map_index)
    summary = summarize_run(model, states, results).to_dict()
    print(_format_summary(summary))
    failed = [step for step, state in states.items() if state in {"failed", "upstream_failed"}]
    if failed:
        # Keep the summary inspectable even though the task fails.
        ti.xcom_push(key="return_value", value=summary)
        # The summary runs on all_done; without this the run would end green.
        raise AirflowFailException(
            f"{model}: {summary['outcome']} ({', '.join(failed)} failed): {summary['reason']}"
        )
    return summary


def _first_state(states: Any) -> str | None:
    """``get_task_states`` returns {run_id: {task_id: state}}."""
    for per_task in (states or {}).values():
        for value in per_task.values():
            return value
    return None


def _format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"model {summary['model_name']}: {summary['outcome']} "
        f"(champion v{summary['champion_version'] or '-'}) - {summary['reason']}"
    ]
    lines += [f"  {s['step']:<15} {s['state']:<16} {s['detail']}" for s in summary["steps"]]
    return "\n".join(lines)


def _doc(config: PipelineConfig) -> str:
    return (
        f"### Continuous training: `{config.registered_model_name}`\n\n"
        f"Generated by airflow-mlops from pipeline `{config.name}`. Triggers: "
        f"{config.schedule or 'no cron'}, the retrain signal of the monitoring DAG"
        f"{', new data at ' + config.data.new_data_uri if config.data.new_data_uri else ''}, "
        "or a manual run (override `train_uri` in the trigger form).\n"
    )
