"""Registry operators: register a challenger, approve, promote it to @champion, roll back.

``RegisterModelOperator`` -> (optional ``PromotionApprovalOperator`` -> gate) ->
``PromoteModelOperator``; :func:`promotion_tasks` builds and wires them (with the
evaluation) in one call. ``RollbackModelOperator`` restores the previous champion.
All registry logic lives in :mod:`airflow_mlops.core.registry`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import AssetAlias

from airflow_mlops.core.errors import ConfigError, PromotionError
from airflow_mlops.links.mlflow import mlflow_links, persist_mlflow_links
from airflow_mlops.operators.base import MlopsBaseOperator, as_mapping
from airflow_mlops.operators.evaluation import EvaluateModelOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.registry import Actor
    from airflow_mlops.operators.approval import PromotionApprovalOperator

# Tasks that move @champion emit an event for champion_asset(<model>) through this alias,
# only when the alias actually moved (a rejected or tied challenger emits nothing).
CHAMPION_MOVES_ALIAS = "mlops_champion_moves"
PROMOTION_ARTIFACT = "mlops/promotion.json"
TAG_PROMOTION_OUTCOME = "mlops.promotion.outcome"
APPROVAL_XCOM_KEY = "mlops_approval"
# ApprovalOperator.APPROVE, kept here so that importing this module does not import the
# human-in-the-loop operator (its triggers and pydantic models cost ~30-60 ms per process);
# operators/approval.py refuses to import if the two ever differ.
APPROVE_OPTION = "Approve"


def _lock_options(ttl: Any, wait: Any) -> dict[str, float]:
    try:
        options = {"ttl_s": float(ttl), "wait_s": float(wait)}
    except (TypeError, ValueError):
        raise ConfigError(
            f"lock_ttl and lock_wait must be seconds, got {ttl!r}, {wait!r}"
        ) from None
    return {**options, "clock_skew_s": _lock_clock_skew()}


def _lock_clock_skew() -> float:
    """``[mlops] lock_clock_skew`` (seconds, default 60): the clock difference between
    workers that a promotion lock tolerates before another worker may break it."""
    from airflow.sdk import conf

    from airflow_mlops.core.registry import DEFAULT_LOCK_CLOCK_SKEW_S

    raw = conf.get("mlops", "lock_clock_skew", fallback=None)
    if raw in (None, ""):
        return DEFAULT_LOCK_CLOCK_SKEW_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ConfigError(f"[mlops] lock_clock_skew must be seconds >= 0, got {raw!r}")
    return value


def _emit_champion_moved(context: Context, model_name: str, extra: dict[str, Any]) -> None:
    from airflow_mlops.assets import champion_asset

    events = context["outlet_events"][AssetAlias(CHAMPION_MOVES_ALIAS)]
    events.add(champion_asset(model_name), extra=extra)


def _with_champion_alias_outlet(kwargs: dict[str, Any]) -> dict[str, Any]:
    outlets = list(kwargs.pop("outlets", None) or [])
    outlets.append(AssetAlias(CHAMPION_MOVES_ALIAS))
    return {**kwargs, "outlets": outlets}


class RegisterModelOperator(MlopsBaseOperator):
    """Register the trained challenger as a model version, once, and point @challenger at it.

    A retry of the task finds the version it created (tag ``mlops.idempotency_key``) instead
    of creating another; the version is returned only when READY. The ``@challenger`` move
    is recorded in the alias history. Returns (XCom) ``{model_name, version, model_uri,
    created, status, source_model_uri, run_id, idempotency_key, challenger_alias,
    challenger_move}``.

    :param training_result: the training task's result (templated; e.g. ``train.output``).
    :param model_name: registered model name (templated); default: the name training tagged.
    :param challenger_alias: alias set on the new version (templated); None to skip.
    :param ready_timeout: seconds to wait for the version to become READY (templated).
    """

    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "training_result",
        "model_name",
        "challenger_alias",
        "ready_timeout",
        "lock_ttl",
        "lock_wait",
    )
    operator_extra_links = mlflow_links()
    ui_color = "#f5e6d5"

    def __init__(
        self,
        *,
        training_result: Any,
        model_name: str | None = None,
        challenger_alias: str | None = "challenger",
        ready_timeout: float = 300.0,
        lock_ttl: float = 900.0,
        lock_wait: float = 1800.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.training_result = training_result
        self.model_name = model_name
        self.challenger_alias = challenger_alias
        self.ready_timeout = ready_timeout
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.evaluation import challenger_from_training
        from airflow_mlops.core.registry import Actor, register_version, set_challenger

        training_result = as_mapping(self.training_result, "training_result")
        run = self.run_context(context)
        hook = self.mlflow_hook
        with hook.session() as client:
            challenger = challenger_from_training(client, training_result)
            model_name = self.model_name or challenger.model_name
            if not model_name:
                raise ConfigError(
                    f"{self.task_id}: model_name is not set and training did not tag one"
                )
            registration = register_version(
                client,
                model_name,
                challenger.model_uri,
                context=run,
                run_id=challenger.run_id,
                ready_timeout_s=float(self.ready_timeout),
            )
            move = None
            if self.challenger_alias:
                actor = Actor(
                    reason=f"registered from training run {challenger.run_id}", context=run
                )
                move = set_challenger(
                    client,
                    model_name,
                    registration.version,
                    actor,
                    alias=self.challenger_alias,
                    lock_options=_lock_options(self.lock_ttl, self.lock_wait),
                )
            experiment_id = client.get_run(challenger.run_id).info.experiment_id
        self.log.info(
            "%s version %s of %s from %s.",
            "Registered" if registration.created else "Reusing (retry)",
            registration.version,
            model_name,
            challenger.model_uri,
        )
        persist_mlflow_links(
            context,
            tracking_uri=hook.tracking_uri,
            experiment_id=experiment_id,
            run_id=challenger.run_id,
            model_name=model_name,
            model_version=registration.version,
        )
        return {
            **registration.to_dict(),
            "challenger_alias": self.challenger_alias,
            "challenger_move": None if move is None else move.outcome,
        }


def run_serving_check(
    operator: MlopsBaseOperator,
    client: Any,
    run_id: str,
    model_name: str,
    version: str,
    *,
    rows: int,
    timeout_s: float,
) -> dict[str, Any]:
    """Load ``models:/<name>/<version>`` in a clean process and predict a holdout sample of
    its training run (``core.serving``); returns the check's result."""
    from airflow_mlops.core.evaluation import challenger_from_training, load_holdout
    from airflow_mlops.core.serving import serving_check, serving_sample

    challenger = challenger_from_training(client, {"run_id": run_id})
    holdout = load_holdout(operator.storage, challenger)
    model_uri = f"models:/{model_name}/{version}"
    sample = serving_sample(holdout.frame, model_uri, challenger.target, rows)
    from airflow_mlops.hooks.signing import model_trust

    result = serving_check(
        model_uri, sample, timeout_s=timeout_s, trust=model_trust(), client=client
    )
    operator.log.info("Serving check of %s: %s", model_uri, result)
    return result


def approval_body(evaluation: Mapping[str, Any], registration: Mapping[str, Any]) -> str:
    """Markdown shown to the approver: verdict, both models' metrics, every rule."""
    champion = evaluation.get("champion")
    champion_text = f"version {champion['version']}" if champion else "none (first model)"
    lines = [
        f"**Model:** `{registration['model_name']}` version **{registration['version']}** "
        f"(`{registration.get('model_uri', '')}`)",
        f"**Current champion:** {champion_text}",
        f"**Policy verdict:** {evaluation.get('reason')}",
        f"**Holdout:** `{(evaluation.get('holdout') or {}).get('uri')}` "
        f"({(evaluation.get('holdout') or {}).get('rows')} rows)",
        "",
        "| metric | challenger | champion |",
        "|---|---|---|",
    ]
    challenger_metrics = evaluation.get("challenger_metrics") or {}
    champion_metrics = evaluation.get("champion_metrics") or {}
    for metric in sorted(set(challenger_metrics) | set(champion_metrics)):
        lines.append(
            f"| {metric} | {_num(challenger_metrics.get(metric))} | {_num(champion_metrics.get(metric))} |"
        )
    lines += ["", "| rule | verdict | detail |", "|---|---|---|"]
    for rule in evaluation.get("rules") or []:
        lines.append(f"| {rule.get('rule')} | {rule.get('verdict')} | {rule.get('detail')} |")
    if evaluation.get("decision_artifact_uri"):
        lines += ["", f"Full decision record: `{evaluation['decision_artifact_uri']}`"]
    lines += [
        "",
        "**Approve** moves @champion (with a compare-and-set re-check); **Reject** leaves it unchanged.",
    ]
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


class PromoteModelOperator(MlopsBaseOperator):
    """Move ``@champion`` to the registered challenger when the decision (and approver) allow.

    Steps: refuse when the evaluation did not qualify the challenger (outcome
    ``not_promoted``) or a required approval is missing or negative (``rejected`` /
    ``not_approved``); run the **serving check** (the version is loaded from the registry by
    ``models:/<name>/<version>`` in a clean process, see ``core.serving``, and predicts a
    holdout sample matching its signature; a failure raises :class:`PromotionError` after
    storing the error in the record); then, under the per-model promotion lock, **compare-and-set**: the champion is
    re-read and, if it moved since evaluation, the challenger is re-scored against the new
    champion (``on_champion_changed="reevaluate"``, default) or the task fails
    (``"fail"``); the alias is set, read back and recorded in the alias history.

    The promotion record (decision, approval, serving check, re-evaluations, alias move) is
    logged as ``promotion_artifact`` on the challenger's run and returned (XCom):
    ``{model_name, version, outcome, promoted, champion_version, previous_champion_version,
    reason, approval, serving_check, reevaluations, history_event, promotion_artifact_uri}``.
    ``outcome`` is one of ``promoted``, ``already_champion``, ``not_promoted``,
    ``not_promoted_after_reevaluation``, ``rejected``, ``not_approved``.

    :param evaluation: ``EvaluateModelOperator``'s result (templated).
    :param registration: ``RegisterModelOperator``'s result (templated).
    :param approval_task_id: task id of a ``PromotionApprovalOperator`` in the same DAG run;
        when set, only an ``Approve`` answer from an authenticated Airflow user, as recorded
        by that task in the registry, lets the champion move; an approval XCom that disagrees
        with the record fails the task (``ApprovalError``) (templated).
    :param on_champion_changed: ``reevaluate`` or ``fail`` (templated).
    :param max_reevaluations: bound on re-scoring rounds under the lock.
    :param serving_check: run the clean-process serving check (templated).
    :param serving_sample_rows: holdout rows predicted by the serving check (templated).
    :param serving_timeout: seconds allowed to the serving check (templated).
    :param lock_ttl: promotion lock expiry in seconds; longer than the slowest re-evaluation.
    :param lock_wait: how long to wait for another promotion of the same model (seconds).
    """

    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "evaluation",
        "registration",
        "approval_task_id",
        "on_champion_changed",
        "max_reevaluations",
        "serving_check",
        "serving_sample_rows",
        "serving_timeout",
        "lock_ttl",
        "lock_wait",
        "promotion_artifact",
    )
    operator_extra_links = mlflow_links()
    ui_color = "#f5d5d5"

    def __init__(
        self,
        *,
        evaluation: Any,
        registration: Any,
        approval_task_id: str | None = None,
        on_champion_changed: str = "reevaluate",
        max_reevaluations: int = 3,
        serving_check: bool = True,
        serving_sample_rows: int = 100,
        serving_timeout: float = 600.0,
        lock_ttl: float = 900.0,
        lock_wait: float = 1800.0,
        promotion_artifact: str = PROMOTION_ARTIFACT,
        **kwargs: Any,
    ) -> None:
        super().__init__(**_with_champion_alias_outlet(kwargs))
        if on_champion_changed not in {"reevaluate", "fail"} and "{{" not in str(
            on_champion_changed
        ):
            raise ConfigError(
                f"{self.task_id}: on_champion_changed must be 'reevaluate' or 'fail', "
                f"got {on_champion_changed!r}"
            )
        self.evaluation = evaluation
        self.registration = registration
        self.approval_task_id = approval_task_id
        self.on_champion_changed = on_champion_changed
        self.max_reevaluations = max_reevaluations
        self.serving_check = serving_check
        self.serving_sample_rows = serving_sample_rows
        self.serving_timeout = serving_timeout
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        self.promotion_artifact = promotion_artifact

    # -- inputs ---------------------------------------------------------------------------

    def _inputs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        evaluation = as_mapping(self.evaluation, "evaluation")
        registration = as_mapping(self.registration, "registration")
        for key in ("promote", "reason", "challenger", "policy", "model_name"):
            if key not in evaluation:
                raise ConfigError(f"evaluation lacks {key!r}: pass EvaluateModelOperator's result")
        for key in ("model_name", "version", "run_id"):
            if key not in registration:
                raise ConfigError(
                    f"registration lacks {key!r}: pass RegisterModelOperator's result"
                )
        if evaluation["model_name"] != registration["model_name"]:
            raise ConfigError(
                f"evaluation is for model {evaluation['model_name']!r} but registration for "
                f"{registration['model_name']!r}"
            )
        if evaluation["challenger"]["run_id"] != registration["run_id"]:
            raise ConfigError(
                f"evaluation scored run {evaluation['challenger']['run_id']} but version "
                f"{registration['version']} comes from run {registration['run_id']}: they must match"
            )
        return evaluation, registration

    def _approval(
        self, context: Context, client: Any, model_name: str, version: str
    ) -> dict[str, Any] | None:
        """The human answer recorded by the approval task, or None when none is required.

        Read from the registry record the approval task wrote from Airflow's human-in-the-loop
        response (:mod:`airflow_mlops.core.approval`), never from XCom: an approval XCom that
        disagrees with that record (or exists without one) raises ``ApprovalError``.
        """
        from airflow_mlops.core.approval import (
            ApprovalTask,
            check_xcom_agrees,
            read_approval,
            responder_name,
        )

        if not self.approval_task_id:
            return None
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        task = ApprovalTask(
            ti.dag_id, ti.run_id, str(self.approval_task_id), -1 if map_index is None else map_index
        )
        record = read_approval(client, model_name, version, task)
        xcom = ti.xcom_pull(task_ids=task.task_id, key=APPROVAL_XCOM_KEY)
        if xcom is None:  # a plain ApprovalOperator's return value: checked the same way
            xcom = ti.xcom_pull(task_ids=task.task_id)
        check_xcom_agrees(record, xcom, task)
        if record is None or not record["chosen_options"]:
            return {"required": True, "approved": False, "answered": False, "by": None, "at": None}
        by = responder_name(record)
        return {
            "required": True,
            "answered": True,
            # A default applied at timeout has no responder: it is not a human approval.
            "approved": record["chosen_options"] == [APPROVE_OPTION] and by is not None,
            "chosen_options": list(record["chosen_options"]),
            "by": by,
            "at": record.get("responded_at"),
            "record": task.tag_key,
        }

    # -- execution ------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.evaluation import current_alias_version

        evaluation, registration = self._inputs()
        model_name, version = registration["model_name"], str(registration["version"])
        run_id = evaluation["challenger"]["run_id"]
        hook = self.mlflow_hook
        with hook.session() as client:
            approval = self._approval(context, client, model_name, version)
        record = {
            "decision": {k: v for k, v in evaluation.items() if k != "decision_artifact_uri"},
            "decision_artifact_uri": evaluation.get("decision_artifact_uri"),
            "model_name": model_name,
            "version": version,
            "approval": approval,
            "serving_check": None,
            "promotion": None,
        }
        with hook.session() as client:
            champion_before = current_alias_version(
                client, model_name, evaluation.get("champion_alias", "champion")
            )
            outcome, reason = self._gate(evaluation, approval, champion_before)
            if outcome is None:
                if _truthy(self.serving_check):
                    record["serving_check"] = self._serving_check(client, run_id, registration)
                    if not record["serving_check"]["ok"]:
                        record.update(
                            outcome="serving_check_failed", reason=record["serving_check"]["error"]
                        )
                        uri = self._store(client, run_id, record)
                        raise PromotionError(
                            f"serving check of models:/{model_name}/{version} failed: "
                            f"{record['serving_check']['error']}. @champion was not moved "
                            f"(still {_v(champion_before)}); record: {uri}"
                        )
                move = self._move(client, context, evaluation, approval, model_name, version)
                record["promotion"] = move.to_dict()
                outcome = move.outcome
                reason = self._reason_for(move, evaluation)
            record.update(outcome=outcome, reason=reason)
            artifact_uri = self._store(client, run_id, record)
            champion_after = current_alias_version(
                client, model_name, evaluation.get("champion_alias", "champion")
            )
            experiment_id = client.get_run(run_id).info.experiment_id
        self.log.info("%s v%s: %s (%s)", model_name, version, outcome, reason)
        promotion = record["promotion"] or {}
        # A retry that finds its own move in place ("already_champion") emits too: the try
        # that moved the alias failed afterwards, so its event was never emitted.
        if promotion.get("outcome") in {"promoted", "already_champion"}:
            _emit_champion_moved(
                context,
                model_name,
                {"version": version, "previous_version": promotion.get("previous_version")},
            )
        persist_mlflow_links(
            context,
            tracking_uri=hook.tracking_uri,
            experiment_id=experiment_id,
            run_id=run_id,
            model_name=model_name,
            model_version=version,
        )
        return {
            "model_name": model_name,
            "version": version,
            "outcome": outcome,
            "promoted": outcome in {"promoted", "already_champion"},
            "champion_version": champion_after,
            "previous_champion_version": promotion.get("previous_version", champion_before),
            "reason": reason,
            "approval": approval,
            "serving_check": record["serving_check"],
            "reevaluations": [
                {
                    k: r.get(k)
                    for k in (
                        "promote",
                        "reason",
                        "champion",
                        "challenger_metrics",
                        "champion_metrics",
                    )
                }
                for r in promotion.get("reevaluations") or []
            ],
            "history_event": promotion.get("event"),
            "promotion_artifact_uri": artifact_uri,
        }

    def _gate(
        self, evaluation: dict[str, Any], approval: dict[str, Any] | None, champion: str | None
    ) -> tuple[str | None, str | None]:
        """(outcome, reason) when nothing may move, else (None, None)."""
        unchanged = f"@champion unchanged ({_v(champion)})"
        if not evaluation["promote"]:
            return "not_promoted", f"{evaluation['reason']}; {unchanged}"
        if approval is not None and not approval["answered"]:
            return (
                "not_approved",
                f"no answer from approval task {self.approval_task_id!r}; {unchanged}",
            )
        if approval is not None and not approval["approved"]:
            if approval["by"] is None:
                return (
                    "not_approved",
                    f"no human answered approval task {self.approval_task_id!r} (the default "
                    f"{approval['chosen_options']} applied at {approval['at']}); {unchanged}",
                )
            return (
                "rejected",
                f"rejected by {approval['by']} at {approval['at']}; {unchanged}",
            )
        return None, None

    def _serving_check(
        self, client: Any, run_id: str, registration: dict[str, Any]
    ) -> dict[str, Any]:
        return run_serving_check(
            self,
            client,
            run_id,
            registration["model_name"],
            str(registration["version"]),
            rows=int(self.serving_sample_rows),
            timeout_s=float(self.serving_timeout),
        )

    def _move(
        self,
        client: Any,
        context: Context,
        evaluation: dict[str, Any],
        approval: dict[str, Any] | None,
        model_name: str,
        version: str,
    ) -> Any:
        from airflow_mlops.core.registry import Actor, promote_to_champion

        actor = Actor(
            reason=evaluation["reason"],
            context=self.run_context(context),
            user=(approval or {}).get("by"),
            decision_uri=evaluation.get("decision_artifact_uri"),
        )
        return promote_to_champion(
            client,
            model_name,
            version,
            evaluated_champion=(evaluation.get("champion") or {}).get("version"),
            actor=actor,
            reevaluate=self._reevaluator(client, evaluation, model_name),
            on_champion_changed=str(self.on_champion_changed),
            max_reevaluations=int(self.max_reevaluations),
            alias=evaluation.get("champion_alias", "champion"),
            lock_options=_lock_options(self.lock_ttl, self.lock_wait),
        )

    def _reevaluator(self, client: Any, evaluation: dict[str, Any], model_name: str) -> Any:
        """Re-score the same challenger, same holdout, same policy, against a new champion."""
        from airflow_mlops.core.evaluation import (
            Champion,
            challenger_from_training,
            evaluate_challenger,
        )
        from airflow_mlops.hooks.signing import model_trust

        def reevaluate(new_champion: str | None) -> dict[str, Any]:
            challenger = challenger_from_training(
                client, {"run_id": evaluation["challenger"]["run_id"]}
            )
            champion = None
            if new_champion is not None:
                mv = client.get_model_version(model_name, new_champion)
                champion = Champion(model_name, str(mv.version), mv.run_id or None)
            self.log.info(
                "@champion moved since evaluation: re-scoring against %s.", _v(new_champion)
            )
            return evaluate_challenger(
                client,
                self.storage,
                challenger,
                model_name=model_name,
                policy=evaluation["policy"],
                slices=evaluation.get("slices"),
                champion_alias=evaluation.get("champion_alias", "champion"),
                champion=champion,
                trust=model_trust(),
            ).record

        return reevaluate

    @staticmethod
    def _reason_for(move: Any, evaluation: dict[str, Any]) -> str:
        if move.outcome == "promoted":
            return f"@champion moved from {_v(move.previous_version)} to version {move.version}: {evaluation['reason']}"
        if move.outcome == "already_champion":
            return f"version {move.version} already holds @champion (retry)"
        last = move.reevaluations[-1] if move.reevaluations else {}
        return (
            f"@champion moved to {_v(move.current_version)} since evaluation; re-scored against it: "
            f"{last.get('reason')}; @champion unchanged"
        )

    def _store(self, client: Any, run_id: str, record: dict[str, Any]) -> str:
        from airflow_mlops.core.evaluation import log_record

        uri = log_record(client, run_id, record, str(self.promotion_artifact))
        client.set_tag(run_id, TAG_PROMOTION_OUTCOME, str(record.get("outcome")))
        return uri


class RollbackModelOperator(MlopsBaseOperator):
    """Point ``@champion`` back at a former champion, from the alias history, in one step.

    Meant to be triggered from the UI: the model is fixed in the DAG file, only the target
    version and the reason come from DAG params (see :func:`rollback_dag_params`). The target
    must be a version the alias history shows as a former ``@champion``
    (``RollbackRefused`` otherwise: a rejected challenger can never be rolled "back" to), and
    it must pass the clean-process **serving check** (like a promotion) before the alias
    moves. Idempotent on retry; recorded in the alias history with the reason and the
    triggering user. Returns (XCom) ``{model_name, outcome, champion_version,
    previous_champion_version, reason, serving_check, history_event}`` with ``outcome``
    ``rolled_back`` or ``already_rolled_back``.

    :param model_name: registered model name. Not templated: a trigger param must not be able
        to choose which model's champion moves.
    :param to_version: explicit target version (templated); default: the previous champion.
    :param reason: why, stored in the history (templated).
    :param serving_check: run the clean-process serving check before the move (templated).
    :param serving_sample_rows: holdout rows predicted by the serving check (templated).
    :param serving_timeout: seconds allowed to the serving check (templated).
    """

    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "to_version",
        "reason",
        "lock_ttl",
        "lock_wait",
        "serving_check",
        "serving_sample_rows",
        "serving_timeout",
    )
    operator_extra_links = mlflow_links()
    ui_color = "#f5d5e8"

    def __init__(
        self,
        *,
        model_name: str,
        to_version: str | int | None = None,
        reason: str = "rollback",
        lock_ttl: float = 900.0,
        lock_wait: float = 1800.0,
        serving_check: bool = True,
        serving_sample_rows: int = 100,
        serving_timeout: float = 600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**_with_champion_alias_outlet(kwargs))
        self.model_name = _pinned_model_name(model_name, kwargs.get("task_id"))
        self.to_version = to_version
        self.reason = reason
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        self.serving_check = serving_check
        self.serving_sample_rows = serving_sample_rows
        self.serving_timeout = serving_timeout

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.registry import rollback_champion

        to_version = None if self.to_version in (None, "", "None") else str(self.to_version)
        actor = self._actor(context)
        hook = self.mlflow_hook
        checks: list[dict[str, Any]] = []
        with hook.session() as client:
            move = rollback_champion(
                client,
                self.model_name,
                actor,
                to_version=to_version,
                lock_options=_lock_options(self.lock_ttl, self.lock_wait),
                serving_check=(
                    self._serving_checker(client, checks) if _truthy(self.serving_check) else None
                ),
            )
        self.log.info(
            "%s: @champion %s -> %s (%s)",
            self.model_name,
            _v(move.previous_version),
            _v(move.version),
            move.outcome,
        )
        if move.outcome == "rolled_back":
            _emit_champion_moved(
                context,
                self.model_name,
                {
                    "version": move.version,
                    "previous_version": move.previous_version,
                    "rollback": True,
                },
            )
        persist_mlflow_links(
            context,
            tracking_uri=hook.tracking_uri,
            model_name=self.model_name,
            model_version=move.version,
        )
        return {
            "model_name": self.model_name,
            "outcome": move.outcome,
            "champion_version": move.current_version,
            "previous_champion_version": move.previous_version,
            "reason": str(self.reason),
            "serving_check": checks[-1] if checks else None,
            "history_event": move.event,
        }

    def _serving_checker(self, client: Any, checks: list[dict[str, Any]]) -> Any:
        """The callback ``rollback_champion`` runs on the target before moving the alias."""

        def check(version: str) -> None:
            from airflow_mlops.core.registry import RollbackRefused

            mv = client.get_model_version(self.model_name, version)
            if not mv.run_id:
                raise RollbackRefused(
                    f"version {version} of {self.model_name} has no training run, so no holdout "
                    "to run the serving check on; @champion was not moved"
                )
            result = run_serving_check(
                self,
                client,
                mv.run_id,
                self.model_name,
                version,
                rows=int(self.serving_sample_rows),
                timeout_s=float(self.serving_timeout),
            )
            checks.append(result)
            if not result["ok"]:
                raise RollbackRefused(
                    f"serving check of models:/{self.model_name}/{version} failed: "
                    f"{result['error']}. @champion was not moved."
                )

        return check

    def _actor(self, context: Context) -> Actor:
        from airflow_mlops.core.registry import Actor

        dag_run = context.get("dag_run")
        user = getattr(dag_run, "triggering_user_name", None)
        return Actor(
            reason=str(self.reason or "rollback"), context=self.run_context(context), user=user
        )


def _pinned_model_name(model_name: Any, task_id: Any) -> str:
    """The rollback's model, fixed in the DAG file: refuse empty or templated names."""
    if not isinstance(model_name, str) or not model_name.strip():
        raise ConfigError(f"{task_id}: model_name is required, got {model_name!r}")
    if "{{" in model_name or "{%" in model_name:
        raise ConfigError(
            f"{task_id}: model_name {model_name!r} is templated; a rollback DAG must pin its "
            "model (a trigger param would let any user with trigger rights move another "
            "model's @champion)"
        )
    return model_name


def rollback_dag_params(model_name: str | None = None) -> dict[str, Any]:
    """DAG ``params`` for a rollback DAG triggered from the UI form: target version and reason.

    The model is not a param: pass it to :class:`RollbackModelOperator` in the DAG file.
    ``model_name`` only names it in the form's descriptions.
    """
    from airflow.sdk import Param

    of = f" of {model_name}" if model_name else ""
    return {
        "to_version": Param(
            None,
            type=["null", "string", "integer"],
            description=f"Former @champion version{of}; empty: the previous champion",
        ),
        "reason": Param(
            "rollback from the Airflow UI", type="string", minLength=1, description="Why (audited)"
        ),
    }


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
    approval: str = "auto",
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
    human-in-the-loop ``ApprovalOperator``) before the champion move. On *Reject* the
    approval skips the gate; the promote task still runs (``trigger_rule="none_failed"``),
    sees the rejection, leaves the champion unchanged and records who rejected it.
    """
    if approval not in {"auto", "manual"}:
        raise ConfigError(f"approval must be 'auto' or 'manual', got {approval!r}")
    conns = {"mlflow_conn_id": mlflow_conn_id, "aws_conn_id": aws_conn_id}
    p = task_id_prefix
    evaluate = EvaluateModelOperator(
        task_id=f"{p}evaluate",
        training_result=training_result,
        policy=policy,
        model_name=model_name,
        slices=slices,
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
    if approval == "manual":
        from airflow_mlops.operators.approval import PromotionApprovalOperator

        approval_task = PromotionApprovalOperator(
            task_id=f"{p}approve_promotion",
            evaluation=evaluate.output,
            registration=register.output,
            mlflow_conn_id=mlflow_conn_id,
            **dict(approval_kwargs or {}),
        )
        gate = EmptyOperator(task_id=f"{p}approval_gate")
        register >> approval_task >> gate
        promote_args.setdefault("approval_task_id", approval_task.task_id)
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


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in {"false", "0", "no", "off", ""}
    return bool(value)


def _v(version: str | None) -> str:
    return "none" if version is None else f"version {version}"


def __getattr__(name: str) -> Any:
    # PromotionApprovalOperator lives in operators/approval.py so that DAGs without a manual
    # approval do not import Airflow's human-in-the-loop operator; the old import path works.
    if name == "PromotionApprovalOperator":
        from airflow_mlops.operators.approval import PromotionApprovalOperator

        return PromotionApprovalOperator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
