"""The per-model CT chain and its summary task, shared by the plain and the segmented CT DAG.

Both :mod:`~airflow_mlops.factories.continuous_training` and
:mod:`~airflow_mlops.factories.segments` import from here, so neither imports the other.
Construction does no I/O and imports no ML library (operators are imported when wired).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, task

from airflow_mlops.core.lineage import TAG_PIPELINE, TAG_PIPELINE_CONFIG_HASH, TAG_TRIGGER
from airflow_mlops.core.values import is_templated
from airflow_mlops.factories.config import PipelineConfig

__all__ = [
    "CT_STEPS",
    "new_data_asset",
    "single_model_chain",
    "summary_task",
    "train_uri_field",
]

#: The steps of one model's CT chain, in order; the summary reports them (plus ``predict``).
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
FAILED_STATES = frozenset({"failed", "upstream_failed"})


def single_model_chain(
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
    from airflow_mlops.factories.promotion import promotion_tasks
    from airflow_mlops.operators.changes import (
        TRIGGER_TAG_XCOM_KEY,
        WINDOW_END_XCOM_KEY,
        DetectChangesOperator,
    )
    from airflow_mlops.operators.training import TrainModelOperator
    from airflow_mlops.operators.validation import DataValidationOperator

    fingerprint = config.fingerprint()
    asset = new_data_asset(config)
    detect = DetectChangesOperator(
        task_id="detect_changes",
        train_uri=train_uri,
        model_name=model,
        config_hash=fingerprint,
        window=config.data.window,
        new_data_asset_uri=asset.uri if asset is not None else None,
        allowed_data_prefixes=prefixes,
        **conns,
    )
    # The window ends with the partition a new-data event announced (else the newest);
    # detect_changes reads the event, validate and train read its XCom.
    window_end = _detect_xcom(detect.task_id, WINDOW_END_XCOM_KEY)
    chain: list[Any] = [detect]
    if config.validation.enabled and config.validation.suite:
        chain.append(
            DataValidationOperator(
                task_id="validate",
                data_uri=train_uri,
                window=config.data.window,
                window_end=window_end,
                suite=config.validation.suite,
                on_failure=config.validation.on_failure,
                allowed_data_prefixes=prefixes,
                **conns,
            )
        )
    train = TrainModelOperator(
        task_id="train",
        train_uri=train_uri,
        window=config.data.window,
        window_end=window_end,
        key=config.data.key,
        target=config.data.target,
        experiment_name=config.experiment_name,
        training=config.training,
        model_name=model,
        features=config.data.features,
        exclude=[*config.data.exclude, *_unlearned_sensitive(config)] or None,
        holdout_columns=_unlearned_sensitive(config) or None,
        extra_tags={
            TAG_PIPELINE_CONFIG_HASH: fingerprint,
            TAG_PIPELINE: config.name,
            TAG_TRIGGER: _detect_xcom(detect.task_id, TRIGGER_TAG_XCOM_KEY),
        },
        allowed_data_prefixes=prefixes,
        **conns,
    )
    chain.append(train)
    for upstream, downstream in itertools.pairwise(chain):
        upstream >> downstream
    promotion = promotion_tasks(
        training_result=train.output,
        policy=_policy_value(config),
        model_name=model,
        slices=config.evaluation.slices or None,
        evaluation_on=config.evaluation.on,
        min_rows=config.evaluation.min_rows,
        fairness=_model_json(config.evaluation.fairness),
        explain=_model_json(config.evaluation.explain),
        approval=config.promotion.approval,
        auto_confidence=config.promotion.auto_confidence,
        approval_kwargs=_approval_kwargs(config, chain),
        promote_kwargs={
            "serving_check": config.promotion.serving_check,
            "intended_use": config.description,
            "validation": _validate_output(chain),
            **_shadow_kwargs(config),
        },
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
            key_columns=config.data.id_columns,
            model_name=model,
            shadow=config.prediction.shadow,
            allowed_data_prefixes=prefixes,
            **conns,
        )
        last >> predict
        last = predict
    return last


def _shadow_kwargs(config: PipelineConfig) -> dict[str, Any]:
    """The promote task's shadow-evidence settings (``promotion.require_shadow_partitions``)."""
    promotion = config.promotion
    if promotion.require_shadow_partitions is None:
        return {}
    return {
        "require_shadow_partitions": promotion.require_shadow_partitions,
        "shadow_min_delta": promotion.shadow_min_delta or 0.0,
        "shadow_metric": promotion.shadow_metric,
    }


def _approval_kwargs(config: PipelineConfig, chain: list[Any]) -> dict[str, Any] | None:
    """The approval task's settings from ``promotion`` (approvers, timeout, on_timeout), the
    validate task's summary for its body, and the notifiers of ``approval_pending`` and
    ``approval_timed_out``."""
    promotion = config.promotion
    if promotion.approval not in ("manual", "auto_if_confident"):
        return None
    return {
        "approvers": list(promotion.approvers),
        "timeout_seconds": promotion.timeout,
        "on_timeout": promotion.on_timeout,
        "validation": _validate_output(chain),
        "notifications": config.notifications,
    }


def _unlearned_sensitive(config: PipelineConfig) -> list[str]:
    """Sensitive columns the model must not learn from: excluded from the features, kept in
    the holdout so the fairness gate can measure over them."""
    fairness = config.evaluation.fairness
    return [] if fairness is None else fairness.excluded_features


def _model_json(section: Any) -> Any:
    """An optional config section as the JSON its operator takes (``None`` stays ``None``)."""
    return None if section is None else section.model_dump(mode="json")


def _validate_output(chain: list[Any]) -> Any:
    """The validate task's summary (an XComArg), or ``None`` when the chain validates nothing."""
    validate = next((t for t in chain if t.task_id == "validate"), None)
    return None if validate is None else validate.output


def new_data_asset(config: PipelineConfig) -> Asset | None:
    """The Asset of ``data.new_data_uri`` (a local path becomes a ``file://`` URI), if set."""
    uri = config.data.new_data_uri
    if not uri:
        return None
    return Asset(uri=uri if "://" in uri else Path(uri).resolve().as_uri())


def train_uri_field(config: PipelineConfig) -> str:
    """The tasks' ``train_uri``: the run's ``train_uri`` param.

    Airflow renders a template field once and never renders params, so when
    ``data.train_uri`` is itself a template (``.../{{ ds }}/``), the param's default holds
    that text unrendered: the field renders it for the run unless a trigger overrode it.
    """
    raw = config.data.train_uri
    if not is_templated(raw):
        return "{{ params.train_uri }}"
    return (
        f"{{% if params.train_uri == {json.dumps(raw)} %}}{raw}"
        "{% else %}{{ params.train_uri }}{% endif %}"
    )


def _detect_xcom(task_id: str, key: str) -> str:
    """A template of a detect_changes XCom (the same map index inside a mapped group)."""
    return f"{{{{ ti.xcom_pull(task_ids={task_id!r}, key={key!r}) or '' }}}}"


def summary_task(config: PipelineConfig, prefix: str, model: Any) -> Any:
    """A final task that reports every step and fails the run if any step failed.

    ``model`` may be a mapped argument (one summary per segment).
    """
    steps = [*CT_STEPS, "predict"]

    @task(task_id="summary", trigger_rule="all_done", retries=0, multiple_outputs=False)
    def summary(model_name: str, **context: Any) -> dict[str, Any]:
        return _summarize(context, model_name, steps, prefix, config)

    return summary(model)


def _summarize(
    context: dict[str, Any],
    model: str,
    steps: list[str],
    prefix: str,
    config: PipelineConfig | None = None,
) -> dict[str, Any]:
    """Collect states, XComs and errors of the run's steps, send the run's notification
    events (``notifications`` in the result); fail if any step failed."""
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_mlops.core.summary import ERROR_XCOM_KEY, summarize_run

    ti = context["ti"]
    map_index = ti.map_index if ti.map_index is not None and ti.map_index >= 0 else None
    dag_run = context["dag_run"]
    states: dict[str, str] = {}
    results: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    task_ids = set(context["dag"].task_ids)
    for step in steps:
        task_id = f"{prefix}{step}"
        if task_id not in task_ids:
            continue
        state = ti.get_task_states(
            dag_id=ti.dag_id, task_ids=[task_id], run_ids=[dag_run.run_id], map_index=map_index
        )
        states[step] = str(_first_state(state) or "none")
        results[step] = _pull(ti, task_id, map_index)
        if states[step] == "failed":
            # Pushed by the operator's failure callback (MlopsBaseOperator.record_task_error).
            errors[step] = _pull(ti, task_id, map_index, key=ERROR_XCOM_KEY)
    summary = summarize_run(model, states, results, errors).to_dict()
    if config is not None and config.notifications.events:
        summary["notifications"] = _notify_ct_run(config, context, summary, results)
    if config is not None:
        _record_last_ct(config.connections.mlflow_conn_id, context, summary)
    print(_format_summary(summary))
    failed = [step for step, state in states.items() if state in FAILED_STATES]
    if failed:
        # Keep the summary inspectable even though the task fails.
        ti.xcom_push(key="return_value", value=summary)
        # The summary runs on all_done; without this the run would end green.
        raise AirflowFailException(
            f"{model}: {summary['outcome']} ({', '.join(failed)} failed): {summary['reason']}"
        )
    return summary


def _notify_ct_run(
    config: PipelineConfig, context: dict[str, Any], summary: dict[str, Any], results: dict
) -> list[dict[str, Any]]:
    """Send the run's events; the records go into the summary. Never raises."""
    from airflow_mlops.core.notifications import ct_events, ct_message, retrain_signal_of
    from airflow_mlops.notifiers.dispatch import (
        airflow_run_url,
        mlflow_version_url,
        notify_events,
        triggering_events,
        unsent_record,
    )

    try:
        model = summary["model_name"]
        signal = retrain_signal_of(triggering_events(context), model)
        events = ct_events(summary, signal)
        if not events:
            return []
        dag_run = context["dag_run"]
        version = summary["challenger_version"] or summary["champion_version"]
        links = {
            "airflow_run": airflow_run_url(dag_run.dag_id, dag_run.run_id),
            "mlflow_version": mlflow_version_url(config.connections.mlflow_conn_id, model, version),
        }
        messages = [ct_message(event, summary, results, links, signal) for event in events]
        return notify_events(config.notifications, messages, context)
    except Exception as err:  # a notification never changes the run's outcome
        return [unsent_record(err)]


def _record_last_ct(mlflow_conn_id: str, context: dict[str, Any], summary: dict[str, Any]) -> None:
    """Overwrite the model's ``mlops.last_ct`` tag (outcome, reason, notifications) for the
    MLOps page. Never raises: the summary and its XCom are the record, the tag a convenience.

    A run that skipped because nothing changed keeps the previous record: otherwise a quiet
    day would hide the last real outcome (and every such run would pay MLflow's import).
    """
    if summary.get("outcome") == "skipped":
        return
    from datetime import datetime, timezone

    from airflow_mlops.core.model_status import TAG_LAST_CT, last_ct_tag
    from airflow_mlops.hooks.mlflow import MlflowHook

    model, dag_run = summary["model_name"], context["dag_run"]
    try:
        value = last_ct_tag(
            summary,
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        with MlflowHook(mlflow_conn_id=mlflow_conn_id).client() as client:
            client.set_registered_model_tag(model, TAG_LAST_CT, value)
    except Exception as err:  # e.g. no registered model yet: the first run failed early
        from airflow_mlops.operators.base import mask_error

        print(f"{model}: last CT outcome not recorded in MLflow: {mask_error(str(err))[:300]}")


def _pull(ti: Any, task_id: str, map_index: int | None, key: str = "return_value") -> Any:
    if map_index is None:
        return ti.xcom_pull(task_ids=task_id, key=key)
    return ti.xcom_pull(task_ids=task_id, key=key, map_indexes=map_index)


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
    lines += [
        f"  notified {n['event']} -> {n['notifier']}: "
        + ("ok" if n["ok"] else f"FAILED after {n['attempts']} attempt(s): {n['error']}")
        for n in summary.get("notifications") or []
    ]
    return "\n".join(lines)


def _policy_value(config: PipelineConfig) -> dict[str, Any] | None:
    """The policy as JSON; ``None`` lets the evaluate task pick the trained task's default."""
    policy = config.promotion_policy
    return policy.model_dump(mode="json", exclude_none=True) if policy is not None else None
