"""What the MLOps page reads from Airflow itself: the last data validation of a model's DAGs.

The data-validation operator runs before training, so its verdict lives in Airflow (the
task's XCom: the summary with ``success`` and ``report_uri``), not in MLflow. The page finds
the DAGs that trained a model from the lineage tag ``mlops.airflow.dag_id`` of its versions
and reads the newest validation task of those DAGs that really ran, for the DAGs the user may
read: runs that skipped validation (nothing changed since the champion) are passed over.

It also reads, for the DAGs the user may read: the newest result of each model's decay task
(:func:`latest_decays`, the ``ModelPerformanceOperator`` XCom: verdict, reason, pending
partitions) and the promotion approvals still waiting for an answer (:func:`pending_approvals`,
Airflow's human-in-the-loop records of ``approve_promotion`` tasks).

It also answers the page's authorization questions that need the metadata database: the
team owning each DAG (its bundle's team, as Airflow's API resolves it), every DAG id, and
whether a task instance ran the provider's own validation operator (only those tasks'
reports are served).

Runs in the API server only (it reads the metadata database); imports happen per call.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from airflow_mlops.plugins.model_overview import PendingApproval, Verdict, iso_from_millis

__all__ = [
    "APPROVAL_TASK_ID",
    "DECAY_OPERATORS",
    "RAN_STATES",
    "SKIPPED",
    "VALIDATION_MODULES",
    "VALIDATION_OPERATORS",
    "all_dag_ids",
    "dag_teams",
    "is_provider_validation_task",
    "latest_decays",
    "latest_validation",
    "pending_approvals",
    "rendered_report_uri",
    "report_uri_of_task",
    "verdict_from_summary",
]

log = logging.getLogger(__name__)

VALIDATION_OPERATORS: tuple[str, ...] = ("DataValidationOperator",)
#: Where the provider's validation operator lives (the serialized task records its module).
VALIDATION_MODULES: tuple[str, ...] = ("airflow_mlops.operators.validation",)
# A validation task in these states ran; a skipped one ran only if it pushed its summary
# (on_failure="skip" validates, pushes, then skips). A task skipped without a summary never
# ran: in a CT DAG, detect_changes skips everything downstream when nothing changed.
RAN_STATES: tuple[str, ...] = ("success", "failed")
SKIPPED = "skipped"
DECAY_OPERATORS: tuple[str, ...] = ("ModelPerformanceOperator",)
#: Decay task instances read per watched model (newest first): a daily monitoring DAG with
#: one mapped decay task per segment keeps each model's newest result well inside this.
DECAY_ROWS_PER_MODEL = 20
MAX_DECAY_ROWS = 5000
#: The approval task of the CT DAGs (``factories.promotion``), also under a group prefix.
APPROVAL_TASK_ID = "approve_promotion"
REGISTER_TASK_ID = "register"
MAX_APPROVALS = 200
_APPROVAL_SUBJECT = re.compile(r"^Promote (\S+) version (\S+) to @champion")


def latest_validation(dag_ids: Iterable[str], may_read: Callable[[str], bool]) -> Verdict | None:
    """The newest data validation that really ran in ``dag_ids``, as a :class:`Verdict`.

    Runs that skipped validation (the "no change" skip) are passed over, so the page keeps
    showing the last real verdict; its ``airflow_task`` names the run it comes from, and
    ``note`` says how many newer runs skipped validation.
    """
    allowed = [d for d in dict.fromkeys(dag_ids) if may_read(d)]
    if not allowed:
        return None
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import and_, func, not_, or_, select

    validations = (
        TaskInstance.dag_id.in_(allowed),
        TaskInstance.operator.in_(VALIDATION_OPERATORS),
        TaskInstance.end_date.is_not(None),
    )
    has_summary = _summary_query(
        TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id, TaskInstance.map_index
    ).exists()
    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance)
            .where(
                *validations,
                or_(
                    TaskInstance.state.in_(RAN_STATES),
                    and_(TaskInstance.state == SKIPPED, has_summary),
                ),
            )
            .order_by(TaskInstance.end_date.desc())
            .limit(1)
        ).first()
        if ti is None:
            return None
        skipped_since = session.scalar(
            select(func.count()).where(
                *validations,
                TaskInstance.state == SKIPPED,
                not_(has_summary),
                TaskInstance.end_date > ti.end_date,
            )
        )
        raw = session.scalars(
            _summary_query(ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
        ).first()
        task = {
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "task_id": ti.task_id,
            "map_index": ti.map_index,
        }
        state, ended = str(ti.state), ti.end_date
    summary = _deserialize(raw)
    verdict = verdict_from_summary(summary, state=state, ended=ended, task=task)
    if skipped_since:
        verdict.note = f"{skipped_since} newer run(s) skipped validation"
    return verdict


def _summary_query(dag_id: Any, run_id: Any, task_id: Any, map_index: Any) -> Any:
    """The validation summary a task pushed (its ``return_value`` XCom): values or columns."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    return select(XComModel.value).where(
        XComModel.dag_id == dag_id,
        XComModel.run_id == run_id,
        XComModel.task_id == task_id,
        XComModel.map_index == map_index,
        XComModel.key == "return_value",
    )


def _deserialize(raw: Any) -> Any:
    """A value read by :func:`_summary_query`, as the task pushed it (``None`` when absent)."""
    from airflow.models.xcom import XComModel

    return XComModel.deserialize_value(_Row(raw)) if raw is not None else None


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
    from airflow.utils.session import create_session

    with create_session() as session:
        raw = session.scalars(_summary_query(dag_id, run_id, task_id, map_index)).first()
    summary = _deserialize(raw)
    return summary.get("report_uri") if isinstance(summary, dict) else None


def rendered_report_uri(dag_id: str, run_id: str, task_id: str, map_index: int) -> str | None:
    """The ``report_uri`` the task was configured with, as it rendered it (None: the default).

    Read from Airflow's rendered-fields record, which the task writes and no REST API edits:
    unlike the XCom, a user cannot point it at another DAG's report.
    """
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as Rendered
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        fields = session.scalars(
            select(Rendered.rendered_fields).where(
                Rendered.dag_id == dag_id,
                Rendered.run_id == run_id,
                Rendered.task_id == task_id,
                Rendered.map_index == map_index,
            )
        ).first()
    value = fields.get("report_uri") if isinstance(fields, dict) else None
    return value if isinstance(value, str) and value else None


def is_provider_validation_task(dag_id: str, run_id: str, task_id: str, map_index: int) -> bool:
    """Whether this task instance ran the provider's own ``DataValidationOperator``.

    Its class name is not enough (any DAG may define a class of that name): the serialized
    DAG version the task ran with must name the provider's module for that task.
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == task_id,
                TaskInstance.map_index == map_index,
            )
        ).first()
        if ti is None or ti.operator not in VALIDATION_OPERATORS or ti.dag_version is None:
            return False
        serialized = ti.dag_version.serialized_dag
        data = serialized.data if serialized is not None else None
    return _task_module(data, task_id) in VALIDATION_MODULES


def _task_module(data: Any, task_id: str) -> str | None:
    """``_task_module`` of ``task_id`` in a serialized DAG (``None`` when not found)."""
    dag = data.get("dag") if isinstance(data, dict) else None
    for entry in (dag or {}).get("tasks") or []:
        task = entry.get("__var", entry) if isinstance(entry, dict) else None
        if isinstance(task, dict) and task.get("task_id") == task_id:
            return task.get("_task_module")
    return None


def dag_teams(dag_ids: Iterable[str]) -> dict[str, str | None]:
    """The team owning each DAG (its bundle's team), as Airflow's API resolves it; None: no team."""
    from airflow.models.dag import DagModel

    wanted = list(dict.fromkeys(dag_ids))
    if not wanted:
        return {}
    teams = DagModel.get_dag_id_to_team_name_mapping(wanted)
    return {dag_id: teams.get(dag_id) for dag_id in wanted}


def all_dag_ids() -> set[str]:
    """Every DAG in a bundle, as the auth manager's ``get_authorized_dag_ids`` lists them."""
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return set(
            session.scalars(
                select(DagModel.dag_id).join(
                    DagBundleModel, DagModel.bundle_name == DagBundleModel.name
                )
            )
        )


# -- decay results and pending approvals -----------------------------------------------------


def latest_decays(
    wanted: Mapping[str, Iterable[str]], may_read_xcom: Callable[[str], bool]
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """``{model: (result, task)}``: the newest decay task result for each model of ``wanted``
    (``{model name: DAG ids allowed to judge it}``), read from DAGs whose task results the
    user may read.

    Only a result naming the model itself (``model_name`` in the XCom) from one of that
    model's own DAGs counts, so another DAG's XCom cannot speak for it.
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    allowed_for = {m: set(dags) for m, dags in wanted.items()}
    dag_ids = sorted({d for dags in allowed_for.values() for d in dags})
    dag_ids = [d for d in dag_ids if may_read_xcom(d)]
    if not dag_ids:
        return {}
    limit = min(MAX_DECAY_ROWS, DECAY_ROWS_PER_MODEL * max(len(wanted), 1))
    query = (
        select(
            TaskInstance.dag_id,
            TaskInstance.run_id,
            TaskInstance.task_id,
            TaskInstance.map_index,
            TaskInstance.end_date,
            XComModel.value,
        )
        .join(
            XComModel,
            (XComModel.dag_id == TaskInstance.dag_id)
            & (XComModel.run_id == TaskInstance.run_id)
            & (XComModel.task_id == TaskInstance.task_id)
            & (XComModel.map_index == TaskInstance.map_index)
            & (XComModel.key == "return_value"),
        )
        .where(
            TaskInstance.dag_id.in_(dag_ids),
            TaskInstance.operator.in_(DECAY_OPERATORS),
            TaskInstance.end_date.is_not(None),
        )
        .order_by(TaskInstance.end_date.desc())
        .limit(limit)
    )
    found: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    with create_session() as session:
        rows = session.execute(query).all()
    for dag_id, run_id, task_id, map_index, ended, raw in rows:
        try:
            result = _deserialize(raw)
        except Exception:  # a value this page cannot read is no verdict
            continue
        model = result.get("model_name") if isinstance(result, dict) else None
        if not isinstance(model, str) or model in found or dag_id not in allowed_for.get(model, ()):
            continue
        task = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index}
        task["at"] = ended.isoformat(timespec="seconds") if hasattr(ended, "isoformat") else None
        found[model] = (result, task)
        if len(found) == len(allowed_for):
            break
    return found


def pending_approvals(
    dag_ids: Iterable[str], may_read_xcom: Callable[[str], bool]
) -> list[PendingApproval]:
    """Promotion approvals of ``dag_ids`` still waiting for an answer, newest first.

    Airflow's human-in-the-loop records (``HITLDetail``) of task instances named
    ``approve_promotion`` (or ``<group>.approve_promotion``) with no response yet whose task
    has not finished. The model and version come from the run's registration result (the
    ``register`` task's XCom, when the user may read it), else from the request's subject.
    """
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import State
    from sqlalchemy import or_, select

    wanted = sorted(set(dag_ids))
    if not wanted:
        return []
    waiting = [str(s) for s in State.unfinished if s is not None]
    query = (
        select(
            TaskInstance.dag_id,
            TaskInstance.run_id,
            TaskInstance.task_id,
            TaskInstance.map_index,
            HITLDetail.subject,
            HITLDetail.created_at,
            HITLDetail.assignees,
        )
        .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
        .where(
            TaskInstance.dag_id.in_(wanted),
            or_(
                TaskInstance.task_id == APPROVAL_TASK_ID,
                TaskInstance.task_id.like(f"%.{APPROVAL_TASK_ID}"),
            ),
            HITLDetail.responded_at.is_(None),
            TaskInstance.state.in_(waiting),
        )
        .order_by(HITLDetail.created_at.desc())
        .limit(MAX_APPROVALS)
    )
    approvals = []
    with create_session() as session:
        for dag_id, run_id, task_id, map_index, subject, created, assignees in session.execute(
            query
        ).all():
            approval = PendingApproval(
                dag_id=dag_id,
                run_id=run_id,
                task_id=task_id,
                map_index=map_index,
                subject=_cut(subject, 300),
                created_at=created.isoformat(timespec="seconds") if created else None,
                assignees=[
                    _cut(a.get("name") or a.get("id"), 80) or "?"
                    for a in (assignees or [])[:10]
                    if isinstance(a, dict)
                ],
            )
            registered = None
            if may_read_xcom(dag_id):
                register = task_id[: -len(APPROVAL_TASK_ID)] + REGISTER_TASK_ID
                raw = session.scalars(_summary_query(dag_id, run_id, register, map_index)).first()
                registered = _registration(raw)
            if registered is None:
                match = _APPROVAL_SUBJECT.match(subject or "")
                registered = (match[1], match[2].rstrip("?")) if match else None
            if registered is not None:
                approval.model_name, approval.version = (_cut(v, 256) for v in registered)
            approvals.append(approval)
    return approvals


def _registration(raw: Any) -> tuple[str, str] | None:
    """``(model_name, version)`` of a registration result, or None."""
    try:
        value = _deserialize(raw)
    except Exception:
        return None
    if not isinstance(value, dict):
        return None
    name, version = value.get("model_name"), value.get("version")
    if isinstance(name, str) and name and isinstance(version, str | int) and str(version):
        return name, str(version)
    return None


def _cut(value: Any, limit: int) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    text = " ".join(value.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
