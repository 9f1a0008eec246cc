"""What the MLOps page reads from Airflow itself: the last data validation of a model's DAGs.

The data-validation operator runs before training, so its verdict lives in Airflow (the
task's XCom: the summary with ``success`` and ``report_uri``), not in MLflow. The page finds
the DAGs that trained a model from the lineage tag ``mlops.airflow.dag_id`` of its versions
and reads the newest finished validation task of those DAGs, for the DAGs the user may read.

Runs in the API server only (it reads the metadata database); imports happen per call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from airflow_mlops.plugins.model_overview import Verdict, iso_from_millis

log = logging.getLogger(__name__)

VALIDATION_OPERATORS: tuple[str, ...] = ("DataValidationOperator",)
FINISHED_STATES: tuple[str, ...] = ("success", "failed", "skipped")


def latest_validation(dag_ids: Iterable[str], may_read: Callable[[str], bool]) -> Verdict | None:
    """The newest finished data-validation task of ``dag_ids`` as a :class:`Verdict`."""
    allowed = [d for d in dict.fromkeys(dag_ids) if may_read(d)]
    if not allowed:
        return None
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance)
            .where(
                TaskInstance.dag_id.in_(allowed),
                TaskInstance.operator.in_(VALIDATION_OPERATORS),
                TaskInstance.state.in_(FINISHED_STATES),
                TaskInstance.end_date.is_not(None),
            )
            .order_by(TaskInstance.end_date.desc())
            .limit(1)
        ).first()
        if ti is None:
            return None
        raw = session.scalars(
            select(XComModel.value).where(
                XComModel.dag_id == ti.dag_id,
                XComModel.run_id == ti.run_id,
                XComModel.task_id == ti.task_id,
                XComModel.map_index == ti.map_index,
                XComModel.key == "return_value",
            )
        ).first()
        task = {
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "task_id": ti.task_id,
            "map_index": ti.map_index,
        }
        state, ended = str(ti.state), ti.end_date
    summary = XComModel.deserialize_value(_Row(raw)) if raw is not None else None
    return verdict_from_summary(summary, state=state, ended=ended, task=task)


class _Row:
    """``XComModel.deserialize_value`` reads ``.value`` from a result row."""

    def __init__(self, value: Any) -> None:
        self.value = value


def verdict_from_summary(summary: Any, *, state: str, ended: Any, task: dict[str, Any]) -> Verdict:
    """A validation :class:`Verdict` from the operator's summary (or the task state alone)."""
    verdict = Verdict(kind="validation", airflow_task=task)
    verdict.at = (
        ended.isoformat(timespec="seconds")
        if hasattr(ended, "isoformat")
        else iso_from_millis(ended)
    )
    if isinstance(summary, dict) and isinstance(summary.get("success"), bool):
        verdict.ok = summary["success"]
        verdict.verdict = "passed" if verdict.ok else "failed"
        evaluated = summary.get("evaluated_expectations")
        failed = summary.get("failed_expectations")
        if evaluated is not None:
            verdict.detail = f"{failed or 0} of {evaluated} expectations failed"
        verdict.report_uri = summary.get("report_uri") or None
    elif state == "failed":
        verdict.ok, verdict.verdict = False, "failed"
    elif state == "success":
        verdict.ok, verdict.verdict = True, "passed"
    else:
        verdict.verdict = state
    return verdict


def report_uri_of_task(dag_id: str, run_id: str, task_id: str, map_index: int) -> str | None:
    """The ``report_uri`` a validation task pushed to XCom (read server-side, never sent)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        raw = session.scalars(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.map_index == map_index,
                XComModel.key == "return_value",
            )
        ).first()
    summary = XComModel.deserialize_value(_Row(raw)) if raw is not None else None
    return summary.get("report_uri") if isinstance(summary, dict) else None
