"""``PromotionApprovalOperator``: Airflow's human-in-the-loop approval showing the decision.

Kept apart from :mod:`airflow_mlops.operators.registry` so that importing the registry
operators (every CT DAG does) does not import ``airflow.providers.standard.operators.hitl``;
:func:`~airflow_mlops.factories.promotion.promotion_tasks` imports this module only for
``approval="manual"`` or ``"auto_if_confident"``. The protocol both operators share (option
names, XCom key, body text) lives in :mod:`airflow_mlops.core.approval`, so neither operator
module imports the other.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

from airflow_mlops.core.approval import (
    APPROVAL_XCOM_KEY,
    APPROVE,
    ON_TIMEOUT_CHOICES,
    REJECT,
    SUPERSEDED,
    TIMED_OUT,
    ApprovalTask,
    assigned_users,
)
from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.values import parse_seconds
from airflow_mlops.hooks.mlflow import DEFAULT_CONN_ID
from airflow_mlops.operators.base import as_mapping

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["NOTIFICATIONS_XCOM_KEY", "PromotionApprovalOperator"]

#: XCom key of the approval task's notification delivery records (approval_pending/_timed_out).
NOTIFICATIONS_XCOM_KEY = "mlops_notifications"

# The promote task compares answers with APPROVE and the body names both options.
if (ApprovalOperator.APPROVE, ApprovalOperator.REJECT) != (APPROVE, REJECT):
    raise ImportError(
        f"ApprovalOperator's options are {ApprovalOperator.APPROVE!r}/"
        f"{ApprovalOperator.REJECT!r}, expected {APPROVE!r}/{REJECT!r}"
    )


class PromotionApprovalOperator(ApprovalOperator):
    """The standard provider's ``ApprovalOperator``, showing the decision and its evidence.

    The subject (``Promote <model> version <v> to @champion?``) and the Markdown body (data
    window and manifest, validation, the retrain signal, metrics with intervals, slices, rules,
    links; :func:`~airflow_mlops.core.approval.approval_body`) are built when the task runs.
    When the policy already refused the challenger nobody is asked: the task is skipped.

    The request goes to ``approvers`` (Airflow's ``assigned_users``: only they may answer) and
    waits at most ``timeout_seconds``; then the ``on_timeout`` answer (``reject`` unless
    configured ``approve``) is applied and recorded as a timeout, answered by nobody. While it
    waits, a newer challenger of the same model that qualifies *supersedes* it: the request
    ends without an answer and the promote task says "superseded by version N". The wait is a
    deferral to :class:`~airflow_mlops.triggers.approval.SupersedableApprovalTrigger` (it
    needs Airflow's triggerer), not Airflow 3.3's trigger-less ``awaiting_input``: only a
    trigger can notice the supersession. Under ``dag.test()`` (whose inline trigger runner
    cannot read answers) it parks in ``awaiting_input``; the promote task still refuses a
    superseded version.

    The answer is trusted only as Airflow hands it back to this task on resume (built by the
    API server from the authenticated response: chosen option and ``responded_by``). It is
    written as a tag on the model version (:mod:`airflow_mlops.core.approval`), where
    :class:`PromoteModelOperator` (``approval_task_id``) reads it; the XCom pushed for display
    is never trusted (Airflow's ``USER`` role may patch XCom) and a promote task refuses one
    that disagrees with the registry record.

    :param mlflow_conn_id: the MLflow connection of the registry holding the version.
    :param approvers: Airflow user ids allowed to answer (simple auth manager: user names).
    :param timeout_seconds: how long to wait for an answer; None waits until answered.
    :param on_timeout: ``reject`` (default) or ``approve``: the answer applied at the timeout.
    :param validation: the validate task's summary (templated), shown in the body.
    :param notifications: the pipeline's ``NotificationsConfig``: ``approval_pending`` is sent
        when the request starts waiting, ``approval_timed_out`` when the default applied.
    :param supersede_poll_seconds: how often the trigger reads the registry for a supersede
        tag (default ``[mlops] approval_supersede_poll_seconds``, else 30).
    :param approval_policy: ``manual`` (default: always ask) or ``auto_if_confident``: skip
        the question when :func:`~airflow_mlops.core.approval_policy.approval_outcome` finds
        the evidence confident; otherwise ask, with the reason at the top of the body.
    :param auto_confidence: ``promotion.auto_confidence`` (None: the policy's levels, 0.95).
    :param model_card: write the version's *pending* model card before asking
        (:func:`~airflow_mlops.core.model_card.write_pending_card`) and link it in the body
        through the MLOps page (default True).
    :param intended_use: the card's intended use (the pipeline's description).
    :param require_shadow_partitions: the promote task's shadow requirement, to say in the
        body and the card whether the shadow record meets it (with ``shadow_min_delta`` and
        ``shadow_metric``); a shadow record is shown whenever the challenger has one.
    """

    template_fields: Sequence[str] = (
        *ApprovalOperator.template_fields,
        "evaluation",
        "registration",
        "validation",
    )

    def __init__(
        self,
        *,
        evaluation: Any,
        registration: Any,
        mlflow_conn_id: str = DEFAULT_CONN_ID,
        approvers: Sequence[str] = (),
        timeout_seconds: float | None = None,
        on_timeout: str = "reject",
        validation: Any = None,
        notifications: Any = None,
        supersede_poll_seconds: float | None = None,
        approval_policy: str = "manual",
        auto_confidence: float | None = None,
        model_card: bool = True,
        intended_use: str = "",
        require_shadow_partitions: int | None = None,
        shadow_min_delta: float = 0.0,
        shadow_metric: str | None = None,
        **kwargs: Any,
    ) -> None:
        if approval_policy not in ("manual", "auto_if_confident"):
            raise ConfigError(
                f"approval_policy must be 'manual' or 'auto_if_confident', got {approval_policy!r}"
            )
        # Without an explicit subject, one naming the model and version is built at run time.
        default_subject = "subject" not in kwargs
        kwargs.setdefault("subject", "Promote the challenger to @champion?")
        if on_timeout not in ON_TIMEOUT_CHOICES:
            raise ConfigError(
                f"on_timeout must be one of {sorted(ON_TIMEOUT_CHOICES)}, got {on_timeout!r}"
            )
        if timeout_seconds is not None:
            seconds = parse_seconds(timeout_seconds, "timeout", positive=True)
            kwargs.setdefault("response_timeout", dt.timedelta(seconds=seconds))
            kwargs.setdefault("defaults", [ON_TIMEOUT_CHOICES[on_timeout]])
        if approvers:
            kwargs.setdefault("assigned_users", assigned_users(list(approvers)))
        super().__init__(**kwargs)
        self._default_subject = default_subject
        self.evaluation = evaluation
        self.registration = registration
        self.validation = validation
        self.mlflow_conn_id = mlflow_conn_id
        self.approvers = [str(a) for a in approvers]
        self.on_timeout = on_timeout
        self.notifications = notifications
        self.supersede_poll_seconds = supersede_poll_seconds
        self.approval_policy = approval_policy
        self.auto_confidence = auto_confidence
        self.model_card = model_card
        self.intended_use = intended_use
        self.require_shadow_partitions = require_shadow_partitions
        self.shadow_min_delta = shadow_min_delta
        self.shadow_metric = shadow_metric
        self._asked_because: str | None = None

    # -- asking --------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        from airflow.sdk.exceptions import AirflowSkipException
        from airflow.sdk.execution_time.hitl import upsert_hitl_detail
        from airflow.sdk.timezone import utcnow

        from airflow_mlops.triggers.approval import SupersedableApprovalTrigger

        evaluation = as_mapping(self.evaluation, "evaluation")
        registration = as_mapping(self.registration, "registration")
        if not evaluation.get("promote"):
            raise AirflowSkipException(
                f"No approval needed: the policy did not qualify the challenger ({evaluation.get('reason')})"
            )
        if self.approval_policy == "auto_if_confident":
            from airflow_mlops.core.approval_policy import approval_outcome

            # Decided at run time from the evaluation record; the promote task decides again
            # from the same record, so a skipped question is never taken as an approval.
            outcome = approval_outcome(evaluation, self.auto_confidence)
            if outcome["confident"]:
                raise AirflowSkipException(f"No approval needed: {outcome['reason']}")
            self._asked_because = outcome["reason"]
            self.log.info("auto_if_confident: %s", outcome["reason"])
        model, version = registration["model_name"], str(registration["version"])
        if self._default_subject:
            self.subject = f"Promote {model} version {version} to @champion?"
        deadline = utcnow() + self.response_timeout if self.response_timeout else None
        newer = self._start_waiting(context, evaluation, registration, deadline)
        if newer is not None:
            # A newer challenger already waits: this one is superseded before anyone is asked.
            return self._finish_superseded(context, registration, newer)
        ti = context["task_instance"]
        self.hitl_summary_extra["timeout_datetime"] = deadline.isoformat() if deadline else None
        upsert_hitl_detail(
            ti_id=ti.id,
            options=self.options,
            subject=self.subject,
            body=self.body,
            defaults=self.defaults,
            multiple=self.multiple,
            params=self.serialized_params,
            assigned_users=self.assigned_users,
        )
        self._notify(context, "approval_pending", evaluation, registration, deadline)
        self.log.info("Waiting for %s to answer: %s", self.approvers or "any user", self.subject)
        if _run_by_dag_test(context):
            # dag.test() runs a deferred task's trigger inline, in a supervisor that cannot
            # read human-in-the-loop answers (Airflow 3.3): park in awaiting_input as a plain
            # ApprovalOperator does. A supersede is then seen when the promote task runs.
            from airflow.sdk.exceptions import TaskAwaitingInput

            raise TaskAwaitingInput(method_name="execute_complete", timeout=self.response_timeout)
        self.defer(
            trigger=SupersedableApprovalTrigger(
                ti_id=ti.id,
                options=self.options,
                defaults=self.defaults,
                params=self.serialized_params,
                multiple=self.multiple,
                timeout_datetime=deadline,
                model_name=model,
                version=version,
                mlflow_conn_id=self.mlflow_conn_id,
                supersede_poll_interval=self._supersede_poll_seconds(),
            ),
            method_name="execute_complete",
        )

    def _start_waiting(
        self,
        context: Context,
        evaluation: Mapping[str, Any],
        registration: Mapping[str, Any],
        deadline: dt.datetime | None,
    ) -> dict[str, Any] | None:
        """Forget an earlier try's answer, build the body, mark the version as waiting and
        supersede older waiting versions; returns the supersede record if a newer one waits.

        A cleared and re-run approval asks again: the answer of an earlier try no longer
        counts (Airflow likewise clears the response of its own record).
        """
        from airflow_mlops.core import approval as core
        from airflow_mlops.hooks.mlflow import MlflowHook

        ti = context["ti"]
        model, version = registration["model_name"], str(registration["version"])
        task = ApprovalTask(ti.dag_id, ti.run_id, ti.task_id, _map_index(ti))
        hook = MlflowHook(mlflow_conn_id=self.mlflow_conn_id)
        with hook.client() as client:
            core.forget_approval(client, model, version, task)
            run_tags, experiment_id = _run_facts(client, registration.get("run_id"))
            shadow = self._shadow(client, evaluation, registration)
            card = self._pending_card(client, registration, shadow, deadline)
            self.body = core.approval_body(
                evaluation,
                registration,
                core.approval_evidence(
                    run_tags=run_tags,
                    validation=self.validation if isinstance(self.validation, Mapping) else None,
                    retrain_signal=_retrain_signal(context, model),
                    links=self._links(context, hook, registration, experiment_id),
                    approvers=self.approvers,
                    deadline=None if deadline is None else deadline.isoformat(timespec="seconds"),
                    on_timeout=self.on_timeout,
                    model_card=card,
                    shadow=(shadow or {}).get("summary"),
                ),
            )
            if self._asked_because:
                self.body = (
                    f"**Approval policy:** auto_if_confident: {self._asked_because}\n\n{self.body}"
                )
            superseded = core.read_superseded_by(client, model, version)
            if superseded is not None:
                return superseded
            core.mark_pending(client, model, version)
            by = {"dag_id": ti.dag_id, "run_id": ti.run_id, "at": _now_iso()}
            older = core.supersede_older(client, model, version, by)
            if older:
                self.log.info("Superseded the waiting approval(s) of version(s) %s.", older)
            newer = core.newer_pending_version(client, model, version)
            if newer is not None:
                return {"version": newer, "at": _now_iso()}
        return None

    def _shadow(
        self, client: Any, evaluation: Mapping[str, Any], registration: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The challenger's shadow record and the promote task's requirement, as the
        approval shows them (:func:`~airflow_mlops.core.shadow.shadow_for_approval`)."""
        from airflow_mlops.core.shadow import shadow_for_approval

        requirement = None
        if self.require_shadow_partitions is not None:
            from airflow_mlops.core.promotion import ShadowRequirement
            from airflow_mlops.operators.base import as_number

            wanted = ShadowRequirement(
                partitions=as_number(self.require_shadow_partitions, int, "shadow partitions"),
                min_delta=as_number(self.shadow_min_delta, float, "shadow_min_delta"),
                metric=self.shadow_metric or None,
            )
            requirement = {
                "required_partitions": wanted.partitions,
                "min_delta": wanted.min_delta,
                "metric": wanted.metric_for(evaluation.get("policy") or {}),
            }
        champion = (evaluation.get("champion") or {}).get("version")
        return shadow_for_approval(client, registration, champion, requirement)

    def _pending_card(
        self,
        client: Any,
        registration: Mapping[str, Any],
        shadow: Mapping[str, Any] | None,
        deadline: dt.datetime | None,
    ) -> str | None:
        """Write the version's pending card; its address on the MLOps page, or why not."""
        if not self.model_card:
            return None
        from airflow.sdk import conf

        from airflow_mlops.core.model_card import PENDING_CARD_HTML, card_route, write_pending_card
        from airflow_mlops.plugins.mlops_page import URL_PREFIX

        model, version = registration["model_name"], str(registration["version"])
        awaiting = {
            "approvers": self.approvers,
            "policy": self.approval_policy,
            "asked_because": self._asked_because,
            "deadline": None if deadline is None else deadline.isoformat(timespec="seconds"),
            "on_timeout": ON_TIMEOUT_CHOICES[self.on_timeout],
        }
        try:
            ref = write_pending_card(
                client,
                model,
                version,
                awaiting=awaiting,
                intended_use=str(self.intended_use or ""),
                validation=self.validation if isinstance(self.validation, Mapping) else None,
                shadow_requirement=(shadow or {}).get("requirement"),
            )
        except Exception as err:  # the question is still asked; the body says the card is missing
            self.log.warning("The pending model card could not be written: %s", err)
            return f"not written ({type(err).__name__}: {err})"
        self.log.info("Pending model card: %s", ref.html_uri)
        run_id = client.get_model_version(model, version).run_id
        base = (conf.get("api", "base_url", fallback="http://localhost:8080/") or "").rstrip("/")
        return f"{base}{URL_PREFIX}{card_route(run_id, PENDING_CARD_HTML)}"

    # -- the answer ----------------------------------------------------------------------------

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        registration = as_mapping(self.registration, "registration")
        if "superseded_by" in event:
            return self._finish_superseded(context, registration, event["superseded_by"])
        self._clear_pending(registration)
        if "error" not in event:
            self.validate_chosen_options(list(event.get("chosen_options") or []))
            timed_out = bool(event.get("timedout")) or not event.get("responded_by_user")
            record = self._record_answer(context, event, TIMED_OUT if timed_out else "answered")
            # For display only (and so the promote task can spot a hand-written one): on
            # Reject the ApprovalOperator skips downstream and no return value is stored.
            context["ti"].xcom_push(
                key=APPROVAL_XCOM_KEY,
                value={
                    k: record[k]
                    for k in ("outcome", "chosen_options", "responded_by_user", "responded_at")
                },
            )
            if timed_out:
                evaluation = as_mapping(self.evaluation, "evaluation")
                self._notify(context, "approval_timed_out", evaluation, registration, None, record)
        return super().execute_complete(context, event)

    def _finish_superseded(
        self, context: Context, registration: Mapping[str, Any], newer: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Record "superseded by version N" (no option chosen) and skip the gate."""
        self._clear_pending(registration)
        event = {"chosen_options": [], "responded_by_user": None, "responded_at": _now_iso()}
        record = self._record_answer(context, event, SUPERSEDED, superseded_by=newer)
        result = {
            k: record[k]
            for k in ("outcome", "superseded_by", "chosen_options", "responded_by_user")
        }
        context["ti"].xcom_push(key=APPROVAL_XCOM_KEY, value=result)
        self.log.info(
            "%s version %s: superseded by version %s; nobody needs to answer.",
            registration["model_name"],
            registration["version"],
            (newer or {}).get("version"),
        )
        downstream = [t for t in context["task"].get_direct_relatives(upstream=False)]
        if downstream:
            self.skip(ti=context["ti"], tasks=downstream)
        return result

    def _clear_pending(self, registration: Mapping[str, Any]) -> None:
        from airflow_mlops.core.approval import clear_pending
        from airflow_mlops.hooks.mlflow import MlflowHook

        with MlflowHook(mlflow_conn_id=self.mlflow_conn_id).client() as client:
            clear_pending(client, registration["model_name"], str(registration["version"]))

    def _record_answer(
        self,
        context: Context,
        event: Mapping[str, Any],
        outcome: str,
        superseded_by: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store the answer Airflow resumed us with on the model version being approved."""
        from airflow_mlops.core.approval import approval_record, store_approval
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
            outcome=outcome,
            superseded_by=superseded_by,
        )
        with MlflowHook(mlflow_conn_id=self.mlflow_conn_id).client() as client:
            key = store_approval(client, record)
        self.log.info(
            "Recorded %s %s by %s as tag %s on %s v%s.",
            outcome,
            record["chosen_options"],
            record["responded_by_user"],
            key,
            record["model_name"],
            record["version"],
        )
        return record

    # -- links and notifications ---------------------------------------------------------------

    def _links(
        self,
        context: Context,
        hook: Any,
        registration: Mapping[str, Any],
        experiment_id: str | None = None,
    ) -> dict[str, str | None]:
        from airflow_mlops.links.mlflow import mlflow_ui_url
        from airflow_mlops.links.urls import mlflow_page_url
        from airflow_mlops.notifiers.dispatch import airflow_run_url

        base = mlflow_ui_url(hook.tracking_uri)
        ti = context["ti"]
        return {
            "mlflow_version": mlflow_page_url(
                base, ("models", registration["model_name"]), ("versions", registration["version"])
            ),
            "mlflow_run": mlflow_page_url(
                base,
                ("experiments", experiment_id),
                ("runs", registration.get("run_id")),
            ),
            "airflow_run": airflow_run_url(ti.dag_id, ti.run_id),
        }

    def _notify(
        self,
        context: Context,
        event: str,
        evaluation: Mapping[str, Any],
        registration: Mapping[str, Any],
        deadline: dt.datetime | None,
        record: Mapping[str, Any] | None = None,
    ) -> None:
        """Send ``event`` to its notifiers; never raises (a notification decides nothing)."""
        notifications = self.notifications
        if notifications is None or not notifications.targets(event):
            return
        from airflow_mlops.core.approval import pending_summary
        from airflow_mlops.core.notifications import Notification
        from airflow_mlops.notifiers.dispatch import notify_events, unsent_record

        try:
            model, version = registration["model_name"], str(registration["version"])
            if event == "approval_pending":
                reason = pending_summary(evaluation, registration)
                reason += f"; approvers: {', '.join(self.approvers) or 'any user with access'}"
                if deadline is not None:
                    reason += (
                        f"; unanswered by {deadline.isoformat(timespec='seconds')} it is "
                        f"{ON_TIMEOUT_CHOICES[self.on_timeout]}"
                    )
            else:
                chosen = (record or {}).get("chosen_options")
                reason = (
                    f"nobody answered the approval of version {version} in time; the default "
                    f"{chosen} applied"
                )
            links = {
                "approval": self._answer_link(context),
                **{
                    k: v
                    for k, v in self._links(
                        context, _hook(self.mlflow_conn_id), registration
                    ).items()
                    if k != "mlflow_run"
                },
            }
            message = Notification(
                event=event,
                model_name=model,
                reason=reason,
                champion_version=(evaluation.get("champion") or {}).get("version"),
                challenger_version=version,
                links=links,
            )
            records = notify_events(notifications, [message], context)
        except Exception as err:
            records = [unsent_record(err)]
        self.log.info("Notification %s: %s", event, records)
        context["ti"].xcom_push(key=f"{NOTIFICATIONS_XCOM_KEY}_{event}", value=records)

    def _answer_link(self, context: Context) -> str | None:
        try:
            return self.generate_link_to_ui_from_context(context=context)
        except ValueError:  # no [api] base_url
            return None

    def _supersede_poll_seconds(self) -> float:
        if self.supersede_poll_seconds is not None:
            return parse_seconds(
                self.supersede_poll_seconds, "supersede_poll_seconds", positive=True
            )
        from airflow.sdk import conf

        value = conf.get("mlops", "approval_supersede_poll_seconds", fallback="30")
        return parse_seconds(value, "[mlops] approval_supersede_poll_seconds", positive=True)


def _hook(conn_id: str) -> Any:
    from airflow_mlops.hooks.mlflow import MlflowHook

    return MlflowHook(mlflow_conn_id=conn_id)


def _run_facts(client: Any, run_id: Any) -> tuple[dict[str, str], str | None]:
    """The challenger's training run tags (data window, manifest) and experiment id."""
    if not run_id:
        return {}, None
    try:
        run = client.get_run(str(run_id))
    except Exception:  # the body then says less; the decision does not depend on it
        return {}, None
    return dict(run.data.tags), run.info.experiment_id


def _retrain_signal(context: Context, model_name: str) -> dict[str, Any] | None:
    """The extra of the retrain event of ``model_name`` that triggered this run, if any."""
    from airflow_mlops.notifiers.dispatch import triggering_events

    uri = f"mlops://models/{model_name}/retrain"
    for event in triggering_events(context):
        if event.get("uri") == uri:
            return dict(event.get("extra") or {})
    return None


def _run_by_dag_test(context: Context) -> bool:
    """Whether ``dag.test()`` runs this task (it names its runs' user ``dag_test``)."""
    return getattr(context.get("dag_run"), "triggering_user_name", None) == "dag_test"


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _map_index(ti: Any) -> int:
    map_index = getattr(ti, "map_index", -1)
    return -1 if map_index is None else int(map_index)
