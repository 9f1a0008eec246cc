"""``PromotionApprovalOperator``: Airflow's human-in-the-loop approval showing the decision.

Kept apart from :mod:`airflow_mlops.operators.registry` so that importing the registry
operators (every CT DAG does) does not import ``airflow.providers.standard.operators.hitl``;
:func:`~airflow_mlops.factories.promotion.promotion_tasks` imports this module only for
``approval="manual"``. The protocol both operators share (option names, XCom key, body text)
lives in :mod:`airflow_mlops.core.approval`, so neither operator module imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

from airflow_mlops.core.approval import APPROVAL_XCOM_KEY, APPROVE, REJECT, approval_body
from airflow_mlops.hooks.mlflow import DEFAULT_CONN_ID
from airflow_mlops.operators.base import as_mapping

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["PromotionApprovalOperator"]

# The promote task compares answers with APPROVE and the body names both options.
if (ApprovalOperator.APPROVE, ApprovalOperator.REJECT) != (APPROVE, REJECT):
    raise ImportError(
        f"ApprovalOperator's options are {ApprovalOperator.APPROVE!r}/"
        f"{ApprovalOperator.REJECT!r}, expected {APPROVE!r}/{REJECT!r}"
    )


class PromotionApprovalOperator(ApprovalOperator):
    """The standard provider's ``ApprovalOperator``, showing the decision record.

    The subject and the Markdown body are built from the evaluation and registration results
    when the task runs. When the policy already refused the challenger nobody is asked: the
    task is skipped.

    The answer is trusted only as Airflow hands it back to this task on resume (built by the
    API server from the authenticated response: chosen option and ``responded_by``). It is
    written as a tag on the model version (:mod:`airflow_mlops.core.approval`), where
    :class:`PromoteModelOperator` (``approval_task_id``) reads it; the XCom pushed for display
    is never trusted (Airflow's ``USER`` role may patch XCom) and a promote task refuses one
    that disagrees with the registry record.

    :param mlflow_conn_id: the MLflow connection of the registry holding the version.
    """

    template_fields: Sequence[str] = (
        *ApprovalOperator.template_fields,
        "evaluation",
        "registration",
    )

    def __init__(
        self,
        *,
        evaluation: Any,
        registration: Any,
        mlflow_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        # Without an explicit subject, one naming the model and version is built at run time.
        default_subject = "subject" not in kwargs
        kwargs.setdefault("subject", "Promote the challenger to @champion?")
        super().__init__(**kwargs)
        self._default_subject = default_subject
        self.evaluation = evaluation
        self.registration = registration
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Context) -> Any:
        from airflow.sdk.exceptions import AirflowSkipException

        evaluation = as_mapping(self.evaluation, "evaluation")
        registration = as_mapping(self.registration, "registration")
        if not evaluation.get("promote"):
            raise AirflowSkipException(
                f"No approval needed: the policy did not qualify the challenger ({evaluation.get('reason')})"
            )
        if self._default_subject:
            self.subject = (
                f"Promote {registration['model_name']} version {registration['version']} "
                "to @champion?"
            )
        self.body = approval_body(evaluation, registration)
        self._forget_earlier_answer(context, registration)
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        if "error" not in event:
            self.validate_chosen_options(list(event.get("chosen_options") or []))
            record = self._record_answer(context, event)
            # For display only (and so the promote task can spot a hand-written one): on
            # Reject the ApprovalOperator skips downstream and no return value is stored.
            context["ti"].xcom_push(
                key=APPROVAL_XCOM_KEY,
                value={
                    k: record[k] for k in ("chosen_options", "responded_by_user", "responded_at")
                },
            )
        return super().execute_complete(context, event)

    def _forget_earlier_answer(self, context: Context, registration: dict[str, Any]) -> None:
        """A cleared and re-run approval asks again: the answer of an earlier try no longer
        counts (Airflow likewise clears the response of its own record)."""
        from airflow_mlops.core.approval import ApprovalTask, forget_approval
        from airflow_mlops.hooks.mlflow import MlflowHook

        ti = context["ti"]
        task = ApprovalTask(ti.dag_id, ti.run_id, ti.task_id, _map_index(ti))
        with MlflowHook(mlflow_conn_id=self.mlflow_conn_id).session() as client:
            forget_approval(client, registration["model_name"], str(registration["version"]), task)

    def _record_answer(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Store the answer Airflow resumed us with on the model version being approved."""
        from airflow_mlops.core.approval import ApprovalTask, approval_record, store_approval
        from airflow_mlops.hooks.mlflow import MlflowHook

        ti = context["ti"]
        registration = as_mapping(self.registration, "registration")
        responded_at = event.get("responded_at")
        record = approval_record(
            ApprovalTask(ti.dag_id, ti.run_id, ti.task_id, _map_index(ti)),
            model_name=registration["model_name"],
            version=str(registration["version"]),
            chosen_options=list(event.get("chosen_options") or []),
            responded_by=event.get("responded_by_user"),
            responded_at=(
                responded_at.isoformat() if hasattr(responded_at, "isoformat") else responded_at
            ),
            try_number=getattr(ti, "try_number", None),
        )
        with MlflowHook(mlflow_conn_id=self.mlflow_conn_id).session() as client:
            key = store_approval(client, record)
        self.log.info(
            "Recorded the answer %s by %s as tag %s on %s v%s.",
            record["chosen_options"],
            record["responded_by_user"],
            key,
            record["model_name"],
            record["version"],
        )
        return record


def _map_index(ti: Any) -> int:
    map_index = getattr(ti, "map_index", -1)
    return -1 if map_index is None else int(map_index)
