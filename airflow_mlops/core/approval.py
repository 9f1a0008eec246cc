"""The answer to a manual promotion approval, kept where an Airflow user cannot rewrite it.

An XCom is not a trustworthy record of a human decision: Airflow's ``USER`` role may create
and patch XCom entries through the REST API. Airflow's own human-in-the-loop record
(``hitl_detail``: the chosen option and the *authenticated* responder, written by the API
server) is, but a task process cannot read another task's record: the Execution API's
``/hitlDetails/{ti_id}`` route only answers a task about itself.

So the approval task copies its own answer, as Airflow hands it back (the resume event the
API server builds from the authenticated response), to a tag on the model version being
approved. Only MLflow writers can change that tag, and they are trusted anyway: they can move
``@champion`` directly. The promote task reads the tag, checks it names the same DAG run,
approval task, model and version, and refuses an approval XCom that disagrees with it.

This module is also the protocol both operators share (option names, the display XCom key,
the text shown to the approver), so it stays import-light: MLflow is imported by the
functions that call it, and ``operators/approval.py`` and ``operators/registry.py`` import
this module instead of each other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.errors import PromotionError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "APPROVAL_XCOM_KEY",
    "APPROVE",
    "REJECT",
    "TAG_APPROVAL_PREFIX",
    "ApprovalError",
    "ApprovalTask",
    "approval_body",
    "approval_decision",
    "approval_record",
    "check_xcom_agrees",
    "forget_approval",
    "read_approval",
    "responder_name",
    "store_approval",
]

TAG_APPROVAL_PREFIX = "mlops.approval."
# The options of Airflow's ApprovalOperator (APPROVE / REJECT); operators/approval.py refuses
# to import if they ever differ, so that importing this module does not import Airflow's
# human-in-the-loop operator.
APPROVE = "Approve"
REJECT = "Reject"
# XCom key of the answer the approval task pushes for display; never trusted to decide.
APPROVAL_XCOM_KEY = "mlops_approval"


class ApprovalError(PromotionError):
    """An approval is unreadable, names another run or model, or its XCom was forged."""


@dataclass(frozen=True)
class ApprovalTask:
    """The approval task instance whose answer a promotion needs."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1

    @property
    def tag_key(self) -> str:
        """Model-version tag holding this task instance's answer (fixed length, any ids)."""
        identity = json.dumps([self.dag_id, self.run_id, self.task_id, self.map_index])
        return TAG_APPROVAL_PREFIX + hashlib.sha256(identity.encode()).hexdigest()[:32]

    def matches(self, record: Mapping[str, Any]) -> bool:
        return (
            record.get("dag_id") == self.dag_id
            and record.get("run_id") == self.run_id
            and record.get("task_id") == self.task_id
            and record.get("map_index", -1) == self.map_index
        )


def approval_record(
    task: ApprovalTask,
    *,
    model_name: str,
    version: str,
    chosen_options: list[str],
    responded_by: Mapping[str, Any] | None,
    responded_at: str | None,
    try_number: int | None = None,
) -> dict[str, Any]:
    """The answer as stored on the version (JSON-safe)."""
    user = dict(responded_by) if responded_by else None
    return {
        "dag_id": task.dag_id,
        "run_id": task.run_id,
        "task_id": task.task_id,
        "map_index": task.map_index,
        "try_number": try_number,
        "model_name": model_name,
        "version": str(version),
        "chosen_options": list(chosen_options),
        "responded_by_user": (
            None if user is None else {"id": str(user.get("id")), "name": user.get("name")}
        ),
        "responded_at": responded_at,
    }


def store_approval(client: MlflowClient, record: Mapping[str, Any]) -> str:
    """Write ``record`` on its model version; returns the tag key."""
    task = ApprovalTask(record["dag_id"], record["run_id"], record["task_id"], record["map_index"])
    key = task.tag_key
    client.set_model_version_tag(
        record["model_name"], record["version"], key, json.dumps(record, separators=(",", ":"))
    )
    return key


def forget_approval(
    client: MlflowClient, model_name: str, version: str, task: ApprovalTask
) -> None:
    """Delete the answer ``task`` recorded on the version, if any."""
    from mlflow.exceptions import MlflowException

    try:
        client.delete_model_version_tag(model_name, str(version), task.tag_key)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def read_approval(
    client: MlflowClient, model_name: str, version: str, task: ApprovalTask
) -> dict[str, Any] | None:
    """The answer ``task`` recorded on the version, or None when it recorded none."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(model_name, str(version))
    except MlflowException as err:
        raise ApprovalError(
            f"cannot read the approval of version {version} of {model_name}: {err}"
        ) from err
    raw = (mv.tags or {}).get(task.tag_key)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("chosen_options"), list):
        raise ApprovalError(
            f"approval tag {task.tag_key} on version {version} of {model_name} is not an "
            "approval record"
        )
    if not task.matches(record) or (record.get("model_name"), record.get("version")) != (
        model_name,
        str(version),
    ):
        raise ApprovalError(
            f"approval tag {task.tag_key} on version {version} of {model_name} belongs to "
            f"{record.get('dag_id')}/{record.get('run_id')}/{record.get('task_id')} for "
            f"{record.get('model_name')} v{record.get('version')}, not to this promotion"
        )
    return record


def responder_name(record: Mapping[str, Any]) -> str | None:
    user = record.get("responded_by_user") or {}
    return user.get("name") or user.get("id") or None


def check_xcom_agrees(record: Mapping[str, Any] | None, xcom: Any, task: ApprovalTask) -> None:
    """Refuse an approval XCom that claims an answer the registry record does not hold.

    The XCom is never used to decide; a disagreement means someone wrote it by hand.
    """
    if not isinstance(xcom, Mapping) or not xcom.get("chosen_options"):
        return
    where = f"XCom of approval task {task.task_id!r} (run {task.run_id})"
    if record is None:
        raise ApprovalError(
            f"the {where} claims the answer {list(xcom['chosen_options'])!r} but the task "
            "recorded no human-in-the-loop answer in the registry: the XCom was written by "
            "hand (forged). @champion was not moved."
        )
    claimed = (list(xcom["chosen_options"]), _user_id(xcom.get("responded_by_user")))
    recorded = (list(record["chosen_options"]), _user_id(record.get("responded_by_user")))
    if claimed != recorded:
        raise ApprovalError(
            f"the {where} says {claimed[0]!r} by {claimed[1]!r} but Airflow's "
            f"human-in-the-loop answer was {recorded[0]!r} by {recorded[1]!r}: the XCom was "
            "changed after the fact. @champion was not moved."
        )


def _user_id(user: Any) -> str | None:
    if not isinstance(user, Mapping) or user.get("id") is None:
        return None
    return str(user["id"])


def approval_decision(
    client: MlflowClient, model_name: str, version: str, task: ApprovalTask, xcom: Any
) -> dict[str, Any]:
    """What the promotion may do, from the answer ``task`` recorded on the version.

    Decided from the registry record only; ``xcom`` (what the approval task's XCom holds
    now) is checked against it and a disagreement raises :class:`ApprovalError`. A default
    applied at timeout has no responder: it is not a human approval.
    """
    record = read_approval(client, model_name, version, task)
    check_xcom_agrees(record, xcom, task)
    if record is None or not record["chosen_options"]:
        return {"required": True, "approved": False, "answered": False, "by": None, "at": None}
    by = responder_name(record)
    return {
        "required": True,
        "answered": True,
        "approved": record["chosen_options"] == [APPROVE] and by is not None,
        "chosen_options": list(record["chosen_options"]),
        "by": by,
        "at": record.get("responded_at"),
        "record": task.tag_key,
    }


def approval_body(evaluation: Mapping[str, Any], registration: Mapping[str, Any]) -> str:
    """Markdown shown to the approver: verdict, both models' metrics, every rule."""
    champion = evaluation.get("champion")
    champion_text = f"version {champion['version']}" if champion else "none (first model)"
    holdout = evaluation.get("holdout") or {}
    lines = [
        f"**Model:** `{registration['model_name']}` version **{registration['version']}** "
        f"(`{registration.get('model_uri', '')}`)",
        f"**Current champion:** {champion_text}",
        f"**Policy verdict:** {evaluation.get('reason')}",
        f"**Holdout:** `{holdout.get('uri')}` ({holdout.get('rows')} rows)",
        "",
        "| metric | challenger | champion |",
        "|---|---|---|",
    ]
    challenger_metrics = evaluation.get("challenger_metrics") or {}
    champion_metrics = evaluation.get("champion_metrics") or {}
    for metric in sorted(set(challenger_metrics) | set(champion_metrics)):
        lines.append(
            f"| {metric} | {_num(challenger_metrics.get(metric))} "
            f"| {_num(champion_metrics.get(metric))} |"
        )
    lines += ["", "| rule | verdict | detail |", "|---|---|---|"]
    for rule in evaluation.get("rules") or []:
        lines.append(f"| {rule.get('rule')} | {rule.get('verdict')} | {rule.get('detail')} |")
    if evaluation.get("decision_artifact_uri"):
        lines += ["", f"Full decision record: `{evaluation['decision_artifact_uri']}`"]
    lines += [
        "",
        f"**{APPROVE}** moves @champion (with a compare-and-set re-check); **{REJECT}** leaves "
        "it unchanged.",
    ]
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
