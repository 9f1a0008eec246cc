"""DAG wiring of a promotion: evaluate -> register -> [approval -> gate] -> promote, and the
params of the rollback and freeze DAGs triggered from the UI (built in
:mod:`airflow_mlops.factories.rollback`).

The operators are imported when the tasks are built, like the other factories do, and the
human-in-the-loop operator only for ``approval="manual"`` or ``"auto_if_confident"`` (its
triggers and pydantic models cost tens of milliseconds per process).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_mlops.core.errors import ConfigError

if TYPE_CHECKING:
    from airflow.providers.standard.operators.empty import EmptyOperator

    from airflow_mlops.operators.approval import PromotionApprovalOperator
    from airflow_mlops.operators.evaluation import EvaluateModelOperator
    from airflow_mlops.operators.registry import PromoteModelOperator, RegisterModelOperator

__all__ = ["PromotionTasks", "freeze_dag_params", "promotion_tasks", "rollback_dag_params"]

APPROVAL_MODES = ("auto", "manual", "auto_if_confident")


class PromotionTasks(NamedTuple):
    evaluate: EvaluateModelOperator
    register: RegisterModelOperator
    approval: PromotionApprovalOperator | None
    gate: EmptyOperator | None
    promote: PromoteModelOperator


def promotion_tasks(
    *,
    training_result: Any,
    policy: Any,
    model_name: str | None = None,
    slices: Any = None,
    evaluation_on: str = "holdout",
    min_rows: int | None = None,
    fairness: Any = None,
    explain: Any = None,
    approval: str = "auto",
    auto_confidence: float | None = None,
    task_id_prefix: str = "",
    mlflow_conn_id: str = "mlflow_default",
    aws_conn_id: str | None = "aws_default",
    evaluate_kwargs: Mapping[str, Any] | None = None,
    register_kwargs: Mapping[str, Any] | None = None,
    approval_kwargs: Mapping[str, Any] | None = None,
    promote_kwargs: Mapping[str, Any] | None = None,
) -> PromotionTasks:
    """Create evaluate -> register -> [approval -> gate] -> promote in the current DAG.

    ``approval="manual"`` inserts a :class:`PromotionApprovalOperator` (Airflow's
    human-in-the-loop ``ApprovalOperator``) before the champion move. On *Reject*, a timeout
    answered *Reject* or a request superseded by a newer challenger the approval skips the
    gate; the promote task still runs (``trigger_rule="none_failed"``), reads the recorded
    answer, leaves the champion unchanged and says why (rejected by whom, timed out,
    superseded by which version). ``approval_kwargs`` carries ``approvers``,
    ``timeout_seconds``, ``on_timeout``, ``validation`` and ``notifications``; the promote
    task gets the same ``on_timeout``, so only its own DAG decides whether a timeout approves.
    ``fairness``/``explain`` go to the evaluate task (``evaluation.fairness``/``.explain``).

    ``approval="auto_if_confident"`` wires the same approval task, but it asks nobody (it is
    skipped) when :func:`~airflow_mlops.core.approval_policy.approval_outcome` finds every rule
    passed at the confidence bound (``auto_confidence``); the promote task recomputes that
    verdict from the evaluation and, when not confident, requires the approval record.
    """
    from airflow.providers.standard.operators.empty import EmptyOperator

    from airflow_mlops.operators.evaluation import EvaluateModelOperator
    from airflow_mlops.operators.registry import PromoteModelOperator, RegisterModelOperator

    if approval not in APPROVAL_MODES:
        raise ConfigError(
            f"approval must be 'auto' or 'manual' (or 'auto_if_confident'), got {approval!r}"
        )
    if auto_confidence is not None and approval != "auto_if_confident":
        raise ConfigError("auto_confidence needs approval='auto_if_confident'")
    conns = {"mlflow_conn_id": mlflow_conn_id, "aws_conn_id": aws_conn_id}
    p = task_id_prefix
    evaluate = EvaluateModelOperator(
        task_id=f"{p}evaluate",
        training_result=training_result,
        policy=policy,
        model_name=model_name,
        slices=slices,
        evaluation_on=evaluation_on,
        **({} if min_rows is None else {"min_rows": min_rows}),
        **({} if fairness is None else {"fairness": fairness}),
        **({} if explain is None else {"explain": explain}),
        **conns,
        **dict(evaluate_kwargs or {}),
    )
    register = RegisterModelOperator(
        task_id=f"{p}register",
        training_result=training_result,
        model_name=model_name,
        **conns,
        **dict(register_kwargs or {}),
    )
    evaluate >> register
    approval_task = gate = None
    promote_args: dict[str, Any] = dict(promote_kwargs or {})
    if approval in ("manual", "auto_if_confident"):
        from airflow_mlops.operators.approval import PromotionApprovalOperator

        approval_args = dict(approval_kwargs or {})
        # The pending model card and the body judge the shadow record as promote will.
        for key in _SHARED_WITH_APPROVAL:
            if key in promote_args:
                approval_args.setdefault(key, promote_args[key])
        if approval == "auto_if_confident":
            policy_args = {"approval_policy": approval, "auto_confidence": auto_confidence}
            approval_args.update(policy_args)
            promote_args.update(policy_args)
        approval_task = PromotionApprovalOperator(
            task_id=f"{p}approve_promotion",
            evaluation=evaluate.output,
            registration=register.output,
            mlflow_conn_id=mlflow_conn_id,
            **approval_args,
        )
        gate = EmptyOperator(task_id=f"{p}approval_gate")
        register >> approval_task >> gate
        promote_args.setdefault("approval_task_id", approval_task.task_id)
        promote_args.setdefault("approval_on_timeout", approval_args.get("on_timeout", "reject"))
        promote_args.setdefault("trigger_rule", "none_failed")
    promote = PromoteModelOperator(
        task_id=f"{p}promote",
        evaluation=evaluate.output,
        registration=register.output,
        **conns,
        **promote_args,
    )
    (gate or register) >> promote
    return PromotionTasks(evaluate, register, approval_task, gate, promote)


_SHARED_WITH_APPROVAL = (
    "model_card",
    "intended_use",
    "require_shadow_partitions",
    "shadow_min_delta",
    "shadow_metric",
)


def rollback_dag_params(model_name: str | None = None) -> dict[str, Any]:
    """DAG ``params`` for a rollback DAG triggered from the UI form: target, reason, who.

    ``to_version`` is a free field, not an enum: the former champions live in MLflow, and a
    DAG file must not call MLflow while Airflow parses it (every 30 s, in every parser). The
    rollback task checks the value against the alias history at run time (``RollbackRefused``
    for a version that never held ``@champion``); the generated rollback DAG lists the history
    in its first task's log and XCom. ``reason`` has no default: the form requires it.

    The model is not a param: pass it to
    :class:`~airflow_mlops.operators.registry.RollbackModelOperator` in the DAG file.
    ``model_name`` only names it in the form's descriptions.
    """
    from airflow.sdk import Param

    of = f" of {model_name}" if model_name else ""
    return {
        "to_version": Param(
            None,
            type=["null", "string", "integer"],
            title="Version to roll back to",
            description=(
                f"A former @champion version{of}. Empty: the one before the current champion "
                "(a second rollback goes further back, never to the version it left). The "
                "'champion_history' task lists the versions; any other is refused."
            ),
        ),
        "reason": Param(
            type="string",
            minLength=1,
            title="Reason",
            description="Why (required; stored in the alias history).",
        ),
        **_requested_by_param(),
    }


def freeze_dag_params(model_name: str | None = None) -> dict[str, Any]:
    """DAG ``params`` of a freeze DAG: ``action`` (freeze/unfreeze), a required ``reason``."""
    from airflow.sdk import Param

    of = f" {model_name}" if model_name else " the model"
    return {
        "action": Param(
            "freeze",
            type="string",
            enum=["freeze", "unfreeze"],
            title="Action",
            description=(
                f"freeze: CT runs of{of} still train and evaluate but never move @champion "
                "(their summary says 'frozen'); unfreeze: promotions resume with the next run."
            ),
        ),
        "reason": Param(
            type="string",
            minLength=1,
            title="Reason",
            description="Why (required; stored in the mlops.frozen tag and the alias history).",
        ),
        **_requested_by_param(),
    }


def _requested_by_param() -> dict[str, Any]:
    from airflow.sdk import Param

    return {
        "requested_by": Param(
            None,
            type=["null", "string"],
            title="Requested by",
            description=(
                "Optional: on whose behalf. Recorded next to the triggering Airflow user, "
                "which is always recorded when Airflow knows it."
            ),
        ),
    }
