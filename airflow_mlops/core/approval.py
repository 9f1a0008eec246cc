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

Three answers have no human behind them, and each is recorded as what it is, never as a
human *Reject*: a request left unanswered until ``promotion.timeout`` (``outcome:
"timed_out"``, the configured default applied, ``responded_by_user`` empty), and a request
**superseded** by a newer qualifying challenger of the same model (``outcome: "superseded"``).
Supersession is an MLflow tag (:data:`TAG_SUPERSEDED_BY`) the newer run writes on the older
version while that one waits (:data:`TAG_APPROVAL_PENDING`); the older approval's trigger
sees it and ends the request. A forged supersede tag can only stop a promotion, never cause
one, and the promote task refuses any version carrying it.

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
    "MAX_BODY_CHARS",
    "ON_TIMEOUT_CHOICES",
    "REJECT",
    "SUPERSEDED",
    "TAG_APPROVAL_PENDING",
    "TAG_APPROVAL_PREFIX",
    "TAG_SUPERSEDED_BY",
    "TIMED_OUT",
    "ApprovalError",
    "ApprovalTask",
    "approval_body",
    "approval_decision",
    "approval_evidence",
    "approval_record",
    "assigned_users",
    "check_xcom_agrees",
    "clear_pending",
    "escape_md",
    "forget_approval",
    "mark_pending",
    "newer_pending_version",
    "pending_summary",
    "read_approval",
    "read_superseded_by",
    "responder_name",
    "shadow_text",
    "store_approval",
    "supersede_older",
]

TAG_APPROVAL_PREFIX = "mlops.approval."
# The options of Airflow's ApprovalOperator (APPROVE / REJECT); operators/approval.py refuses
# to import if they ever differ, so that importing this module does not import Airflow's
# human-in-the-loop operator.
APPROVE = "Approve"
REJECT = "Reject"
# XCom key of the answer the approval task pushes for display; never trusted to decide.
APPROVAL_XCOM_KEY = "mlops_approval"
#: ``promotion.on_timeout``: the answer applied when nobody answered in time.
ON_TIMEOUT_CHOICES = {"reject": REJECT, "approve": APPROVE}
#: ``outcome`` of an approval record with no human answer.
TIMED_OUT = "timed_out"
SUPERSEDED = "superseded"
#: On a version whose approval task is waiting ("true"); removed when the request ends.
TAG_APPROVAL_PENDING = "mlops.approval.pending"
#: On an older waiting version, written by the run whose newer challenger qualified (JSON).
TAG_SUPERSEDED_BY = "mlops.approval.superseded_by"
#: Bodies are Markdown in a TEXT column; kept short enough to read (and to store anywhere).
MAX_BODY_CHARS = 12_000


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
    outcome: str = "answered",
    superseded_by: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The answer as stored on the version (JSON-safe).

    ``outcome``: ``answered`` (a human chose), ``timed_out`` (the default applied, nobody
    answered) or ``superseded`` (no option chosen; ``superseded_by`` names the newer version).
    """
    user = dict(responded_by) if responded_by else None
    return {
        "outcome": outcome,
        "superseded_by": dict(superseded_by) if superseded_by else None,
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
    client: MlflowClient,
    model_name: str,
    version: str,
    task: ApprovalTask,
    xcom: Any,
    on_timeout: str = "reject",
) -> dict[str, Any]:
    """What the promotion may do, from the answer ``task`` recorded on the version.

    Decided from the registry record only; ``xcom`` (what the approval task's XCom holds
    now) is checked against it and a disagreement raises :class:`ApprovalError`. A default
    applied at timeout has no responder: it approves only when the promote task itself is
    configured ``on_timeout="approve"`` (its DAG file, not the record, says so). A version
    carrying :data:`TAG_SUPERSEDED_BY` never promotes, whatever was answered: a newer
    challenger took its place. The result's ``outcome``/``reason`` name a superseded or
    timed-out request for the promotion gate.
    """
    record = read_approval(client, model_name, version, task)
    check_xcom_agrees(record, xcom, task)
    superseded = read_superseded_by(client, model_name, version)
    if superseded is None and record is not None and record.get("outcome") == SUPERSEDED:
        superseded = record.get("superseded_by") or {}
    if superseded is not None:
        newer = superseded.get("version")
        return {
            "required": True,
            "answered": True,
            "approved": False,
            "outcome": SUPERSEDED,
            "superseded_by": None if newer is None else str(newer),
            "reason": f"superseded by version {newer} (a newer qualifying challenger)",
            "by": None,
            "at": superseded.get("at"),
            "record": task.tag_key if record is not None else None,
        }
    if record is None or not record["chosen_options"]:
        return {"required": True, "approved": False, "answered": False, "by": None, "at": None}
    by = responder_name(record)
    chosen = list(record["chosen_options"])
    timed_out = record.get("outcome") == TIMED_OUT or by is None
    approved = chosen == [APPROVE] and (by is not None or on_timeout == "approve")
    decision = {
        "required": True,
        "answered": True,
        "approved": approved,
        "chosen_options": chosen,
        "by": by,
        "at": record.get("responded_at"),
        "record": task.tag_key,
    }
    if timed_out:
        decision["outcome"] = TIMED_OUT
        decision["reason"] = (
            f"approval timed out at {record.get('responded_at')}: nobody answered, the "
            f"default {chosen} applied"
        )
    return decision


def assigned_users(approvers: list[str] | tuple[str, ...]) -> list[dict[str, str]]:
    """Airflow's ``assigned_users`` for user ids ``approvers`` (the simple auth manager's id
    is the user name; other auth managers use their own ids)."""
    return [{"id": str(name), "name": str(name)} for name in approvers]


# -- waiting and superseding ----------------------------------------------------------------


def mark_pending(client: MlflowClient, model_name: str, version: str) -> None:
    """Say on the version that its approval is waiting, so a newer run can supersede it."""
    client.set_model_version_tag(model_name, str(version), TAG_APPROVAL_PENDING, "true")


def clear_pending(client: MlflowClient, model_name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_model_version_tag(model_name, str(version), TAG_APPROVAL_PENDING)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def _pending_versions(client: MlflowClient, model_name: str) -> list[int]:
    if "'" in model_name or "\\" in model_name:
        raise ApprovalError(f"model name {model_name!r} cannot be searched for")
    found = client.search_model_versions(
        f"name='{model_name}' and tags.`{TAG_APPROVAL_PENDING}` = 'true'"
    )
    return sorted(int(mv.version) for mv in found if str(mv.version).isdigit())


def newer_pending_version(client: MlflowClient, model_name: str, version: str) -> str | None:
    """The newest version above ``version`` whose approval is waiting, if any: a challenger
    that reaches its approval after a newer one did is superseded by it at once."""
    newer = [v for v in _pending_versions(client, model_name) if v > int(version)]
    return str(newer[-1]) if newer else None


def supersede_older(
    client: MlflowClient, model_name: str, version: str, by: Mapping[str, Any]
) -> list[str]:
    """Tag every older waiting version of the model as superseded by ``version``.

    ``by`` says which run did it (``dag_id``, ``run_id``, ``at``). Idempotent: a version
    already superseded keeps its first tag. Returns the versions tagged now.
    """
    tagged = []
    for older in _pending_versions(client, model_name):
        if older >= int(version) or read_superseded_by(client, model_name, str(older)):
            continue
        value = json.dumps({**dict(by), "version": str(version)}, separators=(",", ":"))
        client.set_model_version_tag(model_name, str(older), TAG_SUPERSEDED_BY, value)
        tagged.append(str(older))
    return tagged


def read_superseded_by(client: MlflowClient, model_name: str, version: str) -> dict | None:
    """The supersede tag of the version (``{"version", "dag_id", "run_id", "at"}``) or None.

    A tag that is not such a record still counts as superseded (fail closed), by "unknown".
    """
    tags = client.get_model_version(model_name, str(version)).tags or {}
    raw = tags.get(TAG_SUPERSEDED_BY)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {"version": "unknown"}


def approval_evidence(
    *,
    run_tags: Mapping[str, str] | None = None,
    validation: Mapping[str, Any] | None = None,
    retrain_signal: Mapping[str, Any] | None = None,
    links: Mapping[str, str | None] | None = None,
    approvers: list[str] | tuple[str, ...] = (),
    deadline: str | None = None,
    on_timeout: str = "reject",
    model_card: str | None = None,
    shadow: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What the approver should see besides the decision record, from plain values.

    ``run_tags``: the challenger's training run tags (``mlops.data.*``: window, files, manifest
    hash, rows); ``validation``: the validate task's summary; ``retrain_signal``: the extra of
    the retrain asset event that triggered the run (drift or decay verdict), if one did;
    ``links``: MLflow version/run pages and the Airflow run; ``deadline``: ISO time of the
    timeout, with ``on_timeout`` the answer then applied; ``model_card``: the address of the
    version's pending card on the MLOps page (or the reason it is missing); ``shadow``: the
    shadow record (:func:`airflow_mlops.core.shadow.shadow_summary`), when there is one.
    """
    from airflow_mlops.core.lineage import (
        TAG_DATA_FILES,
        TAG_DATA_MANIFEST_HASH,
        TAG_DATA_ROWS,
        TAG_DATA_SHA256,
        TAG_DATA_URI,
        TAG_DATA_WINDOW,
    )

    tags = run_tags or {}
    data = {
        "uri": tags.get(TAG_DATA_URI),
        "window": tags.get(TAG_DATA_WINDOW),
        "files": tags.get(TAG_DATA_FILES),
        "rows": tags.get(TAG_DATA_ROWS),
        "manifest_hash": tags.get(TAG_DATA_MANIFEST_HASH) or tags.get(TAG_DATA_SHA256),
    }
    checked = None
    if isinstance(validation, Mapping) and "success" in validation:
        checked = {
            k: validation.get(k)
            for k in ("success", "evaluated_expectations", "failed_expectations", "report_uri")
        }
        checked["suite"] = validation.get("suite_name")
    signal = None
    if isinstance(retrain_signal, Mapping) and retrain_signal:
        signal = {
            k: retrain_signal.get(k)
            for k in ("trigger", "reason", "report_uri", "champion_version")
        }
    return {
        "data": data,
        "validation": checked,
        "retrain_signal": signal,
        "links": dict(links or {}),
        "approvers": [str(a) for a in approvers],
        "deadline": deadline,
        "on_timeout": ON_TIMEOUT_CHOICES.get(on_timeout, REJECT),
        "model_card": model_card,
        "shadow": dict(shadow) if isinstance(shadow, Mapping) else None,
    }


def approval_body(
    evaluation: Mapping[str, Any],
    registration: Mapping[str, Any],
    evidence: Mapping[str, Any] | None = None,
) -> str:
    """Markdown shown to the approver: the decision and the evidence it rests on.

    Every value that comes from data, tags or configuration is escaped (:func:`escape_md`) or
    put in a code span, and only ``http(s)`` addresses become links, so a column or file name
    cannot format the page or add a link. At most :data:`MAX_BODY_CHARS` characters.
    """
    evidence = evidence or {}
    champion = evaluation.get("champion")
    champion_text = (
        f"version {escape_md(champion.get('version'))}"
        if isinstance(champion, Mapping)
        else "none (first model)"
    )
    links = evidence.get("links") or {}
    lines = [
        f"**Model:** {_code(registration.get('model_name'))} version "
        f"**{escape_md(registration.get('version'))}** ({_code(registration.get('model_uri', ''))})",
        f"**Current champion:** {champion_text}",
        f"**Policy verdict:** {escape_md(evaluation.get('reason'))}",
    ]
    lines += _evidence_lines(evaluation, evidence)
    lines += ["", "#### Metrics", *_metric_table(evaluation)]
    lines += _slice_lines(evaluation)
    lines += ["", "#### Rules", "", "| rule | verdict | detail |", "|---|---|---|"]
    for rule in (evaluation.get("rules") or [])[:30]:
        lines.append(
            f"| {escape_md(rule.get('rule'))} | {escape_md(rule.get('verdict'))} "
            f"| {escape_md(rule.get('detail'))} |"
        )
    lines += ["", "#### Links", ""]
    lines += [f"- {label}: {_link(url)}" for label, url in _link_items(evaluation, evidence, links)]
    lines += ["", _answer_line(evidence)]
    return _bounded("\n".join(lines))


def _evidence_lines(evaluation: Mapping[str, Any], evidence: Mapping[str, Any]) -> list[str]:
    holdout = evaluation.get("holdout") or {}
    comparison = evaluation.get("comparison") or {}
    data = evidence.get("data") or {}
    lines = ["", "#### Evidence", ""]
    if any(data.values()):
        lines.append(
            f"- **Data:** {_code(data.get('uri'))}, window {escape_md(data.get('window'))}, "
            f"{escape_md(data.get('files'))} file(s), {escape_md(data.get('rows') or '?')} rows, "
            f"manifest hash {_code(_short(data.get('manifest_hash')))}"
        )
    lines.append(
        f"- **Holdout:** {_code(holdout.get('uri'))} ({escape_md(holdout.get('rows'))} rows)"
    )
    if comparison:
        lines.append(
            f"- **Compared on:** {escape_md(comparison.get('rows_compared'))} rows, "
            f"{escape_md(comparison.get('rows_excluded'))} excluded "
            f"(basis {escape_md(comparison.get('basis'))})"
        )
    validation = evidence.get("validation")
    if validation:
        verdict = "passed" if validation.get("success") else "FAILED"
        lines.append(
            f"- **Validation:** {verdict}: {escape_md(validation.get('evaluated_expectations'))} "
            f"expectation(s), {escape_md(validation.get('failed_expectations'))} failed "
            f"(suite {_code(validation.get('suite'))})"
        )
    else:
        lines.append("- **Validation:** not run in this pipeline")
    signal = evidence.get("retrain_signal")
    if signal:
        lines.append(
            f"- **Retrain signal ({escape_md(signal.get('trigger'))}):** "
            f"{escape_md(signal.get('reason'))} (champion version "
            f"{escape_md(signal.get('champion_version'))})"
        )
    else:
        lines.append("- **Trigger:** not a drift or decay signal (schedule, new data or manual)")
    shadow = evidence.get("shadow")
    if shadow:
        lines.append(f"- **Shadow record:** {shadow_text(shadow)}")
    return lines


def shadow_text(shadow: Mapping[str, Any]) -> str:
    """One escaped line: partitions scored, the difference and its range, the rule."""
    if shadow.get("error"):
        return f"unreadable: {escape_md(shadow['error'])}"
    rng = shadow.get("difference_range") or [None, None]
    text = (
        f"{escape_md(shadow.get('partitions'))} partition(s) scored beside champion version "
        f"{escape_md(shadow.get('champion_version'))} ({escape_md(shadow.get('rows'))} rows); "
        f"{escape_md(shadow.get('metric'))} challenger - champion "
        f"{_signed(shadow.get('mean_difference'))} (mean; range over partitions "
        f"[{_signed(rng[0])}, {_signed(rng[1])}])"
    )
    rule = shadow.get("rule")
    if isinstance(rule, Mapping):
        met = "met" if rule.get("met") else "NOT met"
        text += (
            f"; require\\_shadow\\_partitions {escape_md(shadow.get('required_partitions'))}: "
            f"{met} ({escape_md(rule.get('detail'))})"
        )
    else:
        text += "; no shadow partitions required"
    return text


def _metric_table(evaluation: Mapping[str, Any]) -> list[str]:
    challenger_metrics = evaluation.get("challenger_metrics") or {}
    champion_metrics = evaluation.get("champion_metrics") or {}
    intervals = evaluation.get("intervals") or {}
    lines = [
        "",
        "| metric | challenger | champion | difference (interval) |",
        "|---|---|---|---|",
    ]
    for metric in sorted(set(challenger_metrics) | set(champion_metrics))[:40]:
        entry = intervals.get(metric) or {}
        lines.append(
            f"| {escape_md(metric)} | {_num(challenger_metrics.get(metric))}"
            f"{_interval(entry.get('challenger'))} | {_num(champion_metrics.get(metric))}"
            f"{_interval(entry.get('champion'))} | {_difference(entry)} |"
        )
    return lines


def _interval(value: Any) -> str:
    if not isinstance(value, Mapping) or value.get("low") is None:
        return ""
    return f" [{_num(value.get('low'))}, {_num(value.get('high'))}]"


def _difference(entry: Mapping[str, Any]) -> str:
    if entry.get("error"):
        return f"no interval: {escape_md(entry['error'])}"
    diff = entry.get("difference")
    if not isinstance(diff, Mapping):
        return "-"
    confidence = diff.get("confidence")
    level = f" ({confidence:.0%})" if isinstance(confidence, float) else ""
    return f"{_signed(diff.get('estimate'))} [{_signed(diff.get('low'))}, {_signed(diff.get('high'))}]{level}"


def _slice_lines(evaluation: Mapping[str, Any]) -> list[str]:
    slices = evaluation.get("slice_metrics") or {}
    if not isinstance(slices, Mapping) or not slices:
        return []
    lines = ["", "#### Slices", "", "| slice | rows | challenger | champion |", "|---|---|---|---|"]
    for name, entry in list(slices.items())[:30]:
        entry = entry if isinstance(entry, Mapping) else {}
        lines.append(
            f"| {escape_md(name)} | {escape_md(entry.get('rows'))} "
            f"| {_metrics_text(entry.get('challenger'))} | {_metrics_text(entry.get('champion'))} |"
        )
    if len(slices) > 30:
        lines.append(f"| ... {len(slices) - 30} more | | | |")
    return lines


def _metrics_text(metrics: Any) -> str:
    if not isinstance(metrics, Mapping):
        return "-"
    return ", ".join(f"{escape_md(k)} {_num(v)}" for k, v in sorted(metrics.items())[:6])


def _link_items(
    evaluation: Mapping[str, Any], evidence: Mapping[str, Any], links: Mapping[str, Any]
) -> list[tuple[str, Any]]:
    validation = evidence.get("validation") or {}
    signal = evidence.get("retrain_signal") or {}
    items = [
        ("Model card (before the decision)", evidence.get("model_card")),
        ("MLflow model version", links.get("mlflow_version")),
        ("MLflow training run", links.get("mlflow_run")),
        ("Airflow run", links.get("airflow_run")),
        ("Decision record", evaluation.get("decision_artifact_uri")),
        ("Validation report", validation.get("report_uri")),
        ("Drift/decay report", signal.get("report_uri")),
    ]
    return [(label, url) for label, url in items if url]


def _answer_line(evidence: Mapping[str, Any]) -> str:
    text = (
        f"**{APPROVE}** moves @champion (with a compare-and-set re-check); **{REJECT}** leaves "
        "it unchanged. A newer qualifying challenger supersedes this request."
    )
    approvers = evidence.get("approvers") or []
    if approvers:
        text += f" Approvers: {', '.join(escape_md(a) for a in approvers)}."
    if evidence.get("deadline"):
        text += (
            f" Unanswered by {escape_md(evidence['deadline'])}, the answer is "
            f"**{escape_md(evidence.get('on_timeout') or REJECT)}** (recorded as a timeout)."
        )
    return text


_MD_SPECIAL = set("\\`*_{}[]<>()#|!~")


def escape_md(value: Any) -> str:
    """``value`` as inert Markdown text on one line: special characters backslash-escaped,
    line breaks folded, so it cannot start a heading, a table row, a link or HTML."""
    text = " ".join(str("-" if value is None else value).split())
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)


def _code(value: Any) -> str:
    """``value`` in a code span (no backticks inside, one line, at most 300 characters)."""
    text = " ".join(str("" if value is None else value).replace("`", "'").split())[:300]
    return f"`{text}`" if text else "-"


def _link(url: Any) -> str:
    from urllib.parse import quote

    text = str(url)
    if text.startswith(("http://", "https://")):
        return f"[{escape_md(text[:200])}]({quote(text, safe=':/?#=&%.-_~+,@')})"
    return _code(text)


def _short(value: Any) -> Any:
    return value[:16] if isinstance(value, str) and len(value) > 16 else value


def _signed(value: Any) -> str:
    return f"{value:+.4g}" if isinstance(value, (int, float)) else "-"


def _bounded(text: str) -> str:
    if len(text) <= MAX_BODY_CHARS:
        return text
    return (
        text[: MAX_BODY_CHARS - 60].rsplit("\n", 1)[0] + "\n\n(cut: the decision record has it all)"
    )


def pending_summary(evaluation: Mapping[str, Any], registration: Mapping[str, Any]) -> str:
    """One line for the ``approval_pending`` notification: what waits, and why it qualified."""
    return (
        f"version {registration.get('version')} qualified and waits for approval: "
        f"{evaluation.get('reason')}"
    )


def _num(value: Any) -> str:
    return (
        "-" if value is None else f"{value:.6g}" if isinstance(value, float) else escape_md(value)
    )
