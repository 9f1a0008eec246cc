"""``PromotionApprovalOperator``: Airflow's human-in-the-loop approval showing the decision.

Kept apart from :mod:`airflow_mlops.operators.registry` so that importing the registry
operators (every CT DAG does) does not import ``airflow.providers.standard.operators.hitl``;
:func:`~airflow_mlops.operators.registry.promotion_tasks` imports this module only for
``approval="manual"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

from airflow_mlops.operators.base import as_mapping
from airflow_mlops.operators.registry import APPROVAL_XCOM_KEY, APPROVE_OPTION, approval_body

if TYPE_CHECKING:
    from airflow.sdk import Context

if ApprovalOperator.APPROVE != APPROVE_OPTION:  # the promote task compares answers with it
    raise ImportError(
        f"ApprovalOperator.APPROVE is {ApprovalOperator.APPROVE!r}, expected {APPROVE_OPTION!r}"
    )


class PromotionApprovalOperator(ApprovalOperator):
    """The standard provider's ``ApprovalOperator``, showing the decision record.

    The subject and the Markdown body are built from the evaluation and registration results
    when the task runs. When the policy already refused the challenger nobody is asked: the
    task is skipped. Approve/Reject are read by :class:`PromoteModelOperator`
    (``approval_task_id``), which records the answer and the approver.
    """

    template_fields: Sequence[str] = (
        *ApprovalOperator.template_fields,
        "evaluation",
        "registration",
    )

    def __init__(self, *, evaluation: Any, registration: Any, **kwargs: Any) -> None:
        # Without an explicit subject, one naming the model and version is built at run time.
        default_subject = "subject" not in kwargs
        kwargs.setdefault("subject", "Promote the challenger to @champion?")
        super().__init__(**kwargs)
        self._default_subject = default_subject
        self.evaluation = evaluation
        self.registration = registration

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
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        # On Reject the ApprovalOperator skips its downstream tasks, and the task runner then
        # stores no return value: keep the answer under our own key so the promote task can
        # record who rejected.
        if "error" not in event:
            responded_at = event.get("responded_at")
            context["ti"].xcom_push(
                key=APPROVAL_XCOM_KEY,
                value={
                    "chosen_options": list(event.get("chosen_options") or []),
                    "responded_by_user": event.get("responded_by_user"),
                    "responded_at": (
                        responded_at.isoformat()
                        if hasattr(responded_at, "isoformat")
                        else responded_at
                    ),
                },
            )
        return super().execute_complete(context, event)
