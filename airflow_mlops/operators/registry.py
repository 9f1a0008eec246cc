"""Registry operators: register a challenger, promote it to @champion, roll back.

``RegisterModelOperator`` -> (optional ``PromotionApprovalOperator`` -> gate) ->
``PromoteModelOperator``; :func:`airflow_mlops.factories.promotion.promotion_tasks` builds
and wires them (with the evaluation) in one call. ``RollbackModelOperator`` restores a former
champion; ``FreezeModelOperator`` freezes or unfreezes a model (no promotion moves its
``@champion`` while frozen). The workflows live in :mod:`airflow_mlops.core.promotion`, the registry writes in
:mod:`airflow_mlops.core.registry`, the approval protocol in :mod:`airflow_mlops.core.approval`.

Over 600 lines on purpose: the four operators that write registry aliases or their freeze
share the lock, who/why and model-pinning helpers below, and keeping them in one module keeps
those rules in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import AssetAlias

from airflow_mlops.core.approval import APPROVAL_XCOM_KEY
from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.promotion import CHAMPION_CHANGED_ACTIONS, PROMOTION_ARTIFACT
from airflow_mlops.core.values import is_templated, parse_bool, parse_seconds
from airflow_mlops.links.mlflow import mlflow_links, persist_mlflow_links
from airflow_mlops.operators.base import MlopsBaseOperator, as_mapping

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.alias_history import Actor
    from airflow_mlops.core.promotion import ServingCheckOptions

__all__ = [
    "CHAMPION_MOVES_ALIAS",
    "FreezeModelOperator",
    "PromoteModelOperator",
    "RegisterModelOperator",
    "RollbackModelOperator",
]

# Tasks that move @champion emit an event for champion_asset(<model>) through this alias,
# only when the alias actually moved (a rejected or tied challenger emits nothing).
CHAMPION_MOVES_ALIAS = "mlops_champion_moves"


def _lock_options(ttl_seconds: Any, wait_seconds: Any) -> dict[str, float]:
    return {
        "ttl_seconds": parse_seconds(ttl_seconds, "lock_ttl_seconds", positive=True),
        "wait_seconds": parse_seconds(wait_seconds, "lock_wait_seconds"),
        "clock_skew_seconds": _lock_clock_skew(),
    }


def _lock_clock_skew() -> float:
    """``[mlops] lock_clock_skew_seconds`` (default 60): the clock difference between
    workers that a promotion lock tolerates before another worker may break it."""
    from airflow.sdk import conf

    from airflow_mlops.core.promotion_lock import DEFAULT_LOCK_CLOCK_SKEW_SECONDS

    raw = conf.get("mlops", "lock_clock_skew_seconds", fallback=None)
    if raw in (None, ""):
        return DEFAULT_LOCK_CLOCK_SKEW_SECONDS
    return parse_seconds(raw, "[mlops] lock_clock_skew_seconds")


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
    :param ready_timeout_seconds: seconds to wait for the version to become READY (templated).
    """

    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "training_result",
        "model_name",
        "challenger_alias",
        "ready_timeout_seconds",
        "lock_ttl_seconds",
        "lock_wait_seconds",
    )
    operator_extra_links = mlflow_links()
    ui_color = "#f5e6d5"

    def __init__(
        self,
        *,
        training_result: Any,
        model_name: str | None = None,
        challenger_alias: str | None = "challenger",
        ready_timeout_seconds: float = 300.0,
        lock_ttl_seconds: float = 900.0,
        lock_wait_seconds: float = 1800.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.training_result = training_result
        self.model_name = model_name
        self.challenger_alias = challenger_alias
        self.ready_timeout_seconds = ready_timeout_seconds
        self.lock_ttl_seconds = lock_ttl_seconds
        self.lock_wait_seconds = lock_wait_seconds

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.alias_history import Actor
        from airflow_mlops.core.alias_moves import set_challenger
        from airflow_mlops.core.evaluation import challenger_from_training
        from airflow_mlops.core.registry import register_version

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
                ready_timeout_seconds=parse_seconds(
                    self.ready_timeout_seconds, f"{self.task_id}: ready_timeout_seconds"
                ),
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
                    lock_options=_lock_options(self.lock_ttl_seconds, self.lock_wait_seconds),
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
        result = {
            **registration.to_dict(),
            "challenger_alias": self.challenger_alias,
            "challenger_move": None if move is None else move.outcome,
        }
        self._openlineage_facts = {"result": result, "tracking_uri": hook.tracking_uri}
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (called by the provider's listener): the logged model -> the
        registered version ``models/<name>/<version>`` (see ``airflow_mlops.openlineage``)."""
        from airflow_mlops.openlineage import registration_lineage

        facts = getattr(self, "_openlineage_facts", None) or {}
        return registration_lineage(facts.get("result"), facts.get("tracking_uri", ""))


class PromoteModelOperator(MlopsBaseOperator):
    """Move ``@champion`` to the registered challenger when the decision (and approver) allow.

    Steps: refuse when the evaluation did not qualify the challenger (outcome
    ``not_promoted``) or a required approval is missing or negative (``rejected`` /
    ``not_approved``); run the **serving check** (the version is loaded from the registry by
    ``models:/<name>/<version>`` in a clean process, see ``core.serving``, and predicts a
    holdout sample matching its signature; a failure raises :class:`PromotionError` after
    storing the error in the record); then, under the per-model promotion lock,
    **compare-and-set**: the champion is re-read and, if it moved since evaluation, the challenger is re-scored against the new
    champion (``on_champion_changed="reevaluate"``, default) or the task fails
    (``"fail"``); the alias is set, read back and recorded in the alias history.

    The promotion record (decision, approval, serving check, re-evaluations, alias move) is
    logged as ``promotion_artifact`` on the challenger's run and returned (XCom):
    ``{model_name, version, outcome, promoted, champion_version, previous_champion_version,
    reason, approval, serving_check, reevaluations, history_event, promotion_artifact_uri,
    model_card}``. Once the outcome is final the version's model card
    (:mod:`airflow_mlops.core.model_card`) is written on its run; ``model_card`` holds its
    URIs and sha256.
    ``outcome`` is one of ``promoted``, ``already_champion``, ``not_promoted``,
    ``not_promoted_after_reevaluation``, ``rejected``, ``not_approved``, ``timed_out`` (nobody
    answered the approval in time and the default rejected), ``superseded`` (a newer
    qualifying challenger replaced this one while it waited for approval; the reason names
    it), ``frozen`` (the model is frozen: the task succeeds, @champion unchanged).

    :param evaluation: ``EvaluateModelOperator``'s result (templated).
    :param registration: ``RegisterModelOperator``'s result (templated).
    :param approval_task_id: task id of a ``PromotionApprovalOperator`` in the same DAG run;
        when set, only an ``Approve`` answer from an authenticated Airflow user, as recorded
        by that task in the registry, lets the champion move; an approval XCom that disagrees
        with the record fails the task (``ApprovalError``) (templated).
    :param approval_on_timeout: ``reject`` (default) or ``approve``: whether the default
        answer applied at the approval's timeout (no responder) may move the champion.
    :param approval_policy: None (the approval task, if any, is always required) or
        ``auto_if_confident``: the confidence verdict is recomputed here from the evaluation
        (:func:`~airflow_mlops.core.approval_policy.approval_outcome`, never from an XCom);
        confident promotes without an approval record, otherwise ``approval_task_id``'s
        authenticated answer is required as for manual. Policy and outcome go to the
        promotion record, the card and the alias history reason.
    :param auto_confidence: ``promotion.auto_confidence`` (None: the policy's levels, 0.95).
    :param on_champion_changed: ``reevaluate`` or ``fail`` (templated).
    :param max_reevaluations: bound on re-scoring rounds under the lock.
    :param serving_check: run the clean-process serving check (templated).
    :param serving_sample_rows: holdout rows predicted by the serving check (templated).
    :param serving_timeout_seconds: seconds allowed to the serving check (templated).
    :param lock_ttl_seconds: promotion lock expiry; longer than the slowest re-evaluation.
    :param lock_wait_seconds: how long to wait for another promotion of the same model.
    :param model_card: write the version's model card once the outcome is final.
    :param intended_use: the card's intended use (the pipeline's description).
    :param validation: the validate task's summary, for the card (templated); ``None`` when
        the pipeline validates nothing.
    :param require_shadow_partitions: require shadow evidence (``shadow_evidence`` rule,
        :mod:`airflow_mlops.core.shadow`): the challenger scored in shadow beside the current
        champion on this many labelled partitions; fewer is ``not_promoted`` ("shadow
        evidence from K of N partitions"). None: no shadow evidence required.
    :param shadow_min_delta: smallest mean improvement of the challenger over the champion
        on the shadow metric over those partitions (metric units; negative tolerates a drop).
    :param shadow_metric: the shadow metric; default: the policy's first change metric.
    """

    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "evaluation",
        "registration",
        "validation",
        "approval_task_id",
        "on_champion_changed",
        "max_reevaluations",
        "serving_check",
        "serving_sample_rows",
        "serving_timeout_seconds",
        "lock_ttl_seconds",
        "lock_wait_seconds",
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
        approval_on_timeout: str = "reject",
        on_champion_changed: str = "reevaluate",
        max_reevaluations: int = 3,
        serving_check: bool = True,
        serving_sample_rows: int = 100,
        serving_timeout_seconds: float = 600.0,
        lock_ttl_seconds: float = 900.0,
        lock_wait_seconds: float = 1800.0,
        promotion_artifact: str = PROMOTION_ARTIFACT,
        model_card: bool = True,
        intended_use: str = "",
        validation: Any = None,
        require_shadow_partitions: int | None = None,
        shadow_min_delta: float = 0.0,
        shadow_metric: str | None = None,
        approval_policy: str | None = None,
        auto_confidence: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**_with_champion_alias_outlet(kwargs))
        if approval_policy not in (None, "auto_if_confident"):
            raise ConfigError(
                f"{self.task_id}: approval_policy must be None or 'auto_if_confident', "
                f"got {approval_policy!r}"
            )
        if approval_policy and not approval_task_id:
            # Not confident must mean "ask": without an approval task nobody could answer.
            raise ConfigError(
                f"{self.task_id}: approval_policy={approval_policy!r} needs approval_task_id"
            )
        self.approval_policy = approval_policy
        self.auto_confidence = auto_confidence
        self.require_shadow_partitions = require_shadow_partitions
        self.shadow_min_delta = shadow_min_delta
        self.shadow_metric = shadow_metric
        if on_champion_changed not in CHAMPION_CHANGED_ACTIONS and not is_templated(
            on_champion_changed
        ):
            raise ConfigError(
                f"{self.task_id}: on_champion_changed must be 'reevaluate' or 'fail', "
                f"got {on_champion_changed!r}"
            )
        self.evaluation = evaluation
        self.registration = registration
        self.approval_task_id = approval_task_id
        # From the DAG file, never from the record: whether a timeout's default may approve.
        self.approval_on_timeout = approval_on_timeout
        self.on_champion_changed = on_champion_changed
        self.max_reevaluations = max_reevaluations
        self.serving_check = serving_check
        self.serving_sample_rows = serving_sample_rows
        self.serving_timeout_seconds = serving_timeout_seconds
        self.lock_ttl_seconds = lock_ttl_seconds
        self.lock_wait_seconds = lock_wait_seconds
        self.promotion_artifact = promotion_artifact
        self.model_card = model_card
        self.intended_use = intended_use
        self.validation = validation

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.promotion import (
            PromotionOptions,
            check_promotion_inputs,
            promote_challenger,
        )
        from airflow_mlops.hooks.signing import model_trust

        evaluation = as_mapping(self.evaluation, "evaluation")
        registration = as_mapping(self.registration, "registration")
        check_promotion_inputs(evaluation, registration)
        policy_outcome = None
        if self.approval_policy:
            from airflow_mlops.core.approval_policy import approval_outcome

            # Recomputed from the evaluation itself: no XCom saying "confident" is read.
            policy_outcome = approval_outcome(evaluation, self.auto_confidence)
            self.log.info("%s: %s", self.approval_policy, policy_outcome["reason"])
        hook = self.mlflow_hook
        with hook.session() as client:
            confident = policy_outcome is not None and policy_outcome["confident"]
            promotion = promote_challenger(
                client,
                self.storage,
                evaluation,
                registration,
                approval=None if confident else self._approval(context, client, registration),
                approval_policy=policy_outcome,
                context=self.run_context(context),
                trust=model_trust,
                options=PromotionOptions(
                    serving=_serving_options(self),
                    on_champion_changed=str(self.on_champion_changed),
                    max_reevaluations=int(self.max_reevaluations),
                    lock_options=_lock_options(self.lock_ttl_seconds, self.lock_wait_seconds),
                    artifact=str(self.promotion_artifact),
                    approval_task_id=self.approval_task_id,
                    model_card=bool(self.model_card),
                    shadow=self._shadow_requirement(),
                    intended_use=str(self.intended_use or ""),
                    validation=(
                        None
                        if self.validation is None
                        else as_mapping(self.validation, "validation")
                    ),
                ),
            )
        result = promotion.result
        self.log.info(
            "%s v%s: %s (%s)",
            result["model_name"],
            result["version"],
            result["outcome"],
            result["reason"],
        )
        # A retry that finds its own move in place ("already_champion") emits too: the try
        # that moved the alias failed afterwards, so its event was never emitted.
        if promotion.champion_moved:
            _emit_champion_moved(
                context,
                result["model_name"],
                {
                    "version": result["version"],
                    "previous_version": result["previous_champion_version"],
                },
            )
        persist_mlflow_links(
            context,
            tracking_uri=hook.tracking_uri,
            experiment_id=promotion.experiment_id,
            run_id=registration["run_id"],
            model_name=result["model_name"],
            model_version=result["version"],
        )
        return result

    def _shadow_requirement(self) -> Any:
        """``ShadowRequirement`` from the parameters, or None when none is required."""
        from airflow_mlops.core.promotion import ShadowRequirement
        from airflow_mlops.operators.base import as_number

        if self.require_shadow_partitions is None:
            return None
        return ShadowRequirement(
            partitions=as_number(self.require_shadow_partitions, int, "require_shadow_partitions"),
            min_delta=as_number(self.shadow_min_delta, float, "shadow_min_delta"),
            metric=self.shadow_metric or None,
        )

    def _approval(
        self, context: Context, client: Any, registration: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The human answer recorded by the approval task, or None when none is required.

        Read from the registry record the approval task wrote from Airflow's human-in-the-loop
        response, never from XCom: an approval XCom that disagrees with that record (or exists
        without one) raises ``ApprovalError`` (:mod:`airflow_mlops.core.approval`).
        """
        from airflow_mlops.core.approval import ApprovalTask, approval_decision

        if not self.approval_task_id:
            return None
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        task = ApprovalTask(
            ti.dag_id, ti.run_id, str(self.approval_task_id), -1 if map_index is None else map_index
        )
        xcom = ti.xcom_pull(task_ids=task.task_id, key=APPROVAL_XCOM_KEY)
        if xcom is None:  # a plain ApprovalOperator's return value: checked the same way
            xcom = ti.xcom_pull(task_ids=task.task_id)
        return approval_decision(
            client,
            registration["model_name"],
            str(registration["version"]),
            task,
            xcom,
            on_timeout=str(self.approval_on_timeout),
        )


class RollbackModelOperator(MlopsBaseOperator):
    """Point ``@champion`` back at a former champion, from the alias history, in one step.

    Meant to be triggered from the UI: the model is fixed in the DAG file, only the target
    version and the reason come from DAG params (see
    :func:`airflow_mlops.factories.promotion.rollback_dag_params`). The target
    must be a version the alias history shows as a former ``@champion``
    (``RollbackRefused`` otherwise: a rejected challenger can never be rolled "back" to), and
    it must pass the clean-process **serving check** (like a promotion) before the alias
    moves. Without ``to_version`` it goes one step back on the champion history; a second
    rollback goes further back, never to the version the first one left. Allowed while the
    model is frozen (the result carries ``frozen``). Idempotent on retry; recorded in the alias
    history with the reason and the user (``dag_run.triggering_user_name``, else
    ``requested_by``). Returns (XCom) ``{model_name, outcome, champion_version,
    previous_champion_version, reason, user, serving_check, history_event, frozen}`` with
    ``outcome`` ``rolled_back`` or ``already_rolled_back``.

    :param model_name: registered model name. Not templated: a trigger param must not be able
        to choose which model's champion moves.
    :param to_version: explicit target version (templated); default: the previous champion.
    :param reason: why, stored in the history (templated); required, non-empty.
    :param requested_by: who asked, recorded beside the triggering user (templated).
    :param segments: segment value -> model name, pinned in the DAG file (a segmented
        pipeline's models); then ``segment`` chooses one of them and ``model_name`` is the base.
    :param segment: the segment to roll back (templated; only with ``segments``).
    :param serving_check: run the clean-process serving check before the move (templated).
    :param serving_sample_rows: holdout rows predicted by the serving check (templated).
    :param serving_timeout_seconds: seconds allowed to the serving check (templated).
    """

    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "to_version",
        "reason",
        "requested_by",
        "segment",
        "lock_ttl_seconds",
        "lock_wait_seconds",
        "serving_check",
        "serving_sample_rows",
        "serving_timeout_seconds",
    )
    operator_extra_links = mlflow_links()
    ui_color = "#f5d5e8"

    def __init__(
        self,
        *,
        model_name: str,
        to_version: str | int | None = None,
        reason: str = "rollback",
        requested_by: str | None = None,
        segment: str | None = None,
        segments: Mapping[str, str] | None = None,
        lock_ttl_seconds: float = 900.0,
        lock_wait_seconds: float = 1800.0,
        serving_check: bool = True,
        serving_sample_rows: int = 100,
        serving_timeout_seconds: float = 600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**_with_champion_alias_outlet(kwargs))
        self.model_name = _pinned_model_name(model_name, kwargs.get("task_id"))
        self.to_version = to_version
        self.reason = reason
        self.requested_by = requested_by
        self.segment = segment
        self.segments = _pinned_segments(segments, self.task_id)
        self.lock_ttl_seconds = lock_ttl_seconds
        self.lock_wait_seconds = lock_wait_seconds
        self.serving_check = serving_check
        self.serving_sample_rows = serving_sample_rows
        self.serving_timeout_seconds = serving_timeout_seconds

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.promotion import rollback_to_former_champion
        from airflow_mlops.core.registry import version_label
        from airflow_mlops.hooks.signing import model_trust

        to_version = None if self.to_version in (None, "", "None") else str(self.to_version)
        model_name = _chosen_model(self)
        actor = _operator_actor(self, context)
        hook = self.mlflow_hook
        with hook.session() as client:
            rollback = rollback_to_former_champion(
                client,
                self.storage,
                model_name,
                actor,
                to_version=to_version,
                lock_options=_lock_options(self.lock_ttl_seconds, self.lock_wait_seconds),
                serving=_serving_options(self),
                trust=model_trust,
            )
        move = rollback.move
        self.log.info(
            "%s: @champion %s -> %s (%s)",
            model_name,
            version_label(move.previous_version),
            version_label(move.version),
            move.outcome,
        )
        if move.outcome == "rolled_back":
            _emit_champion_moved(
                context,
                model_name,
                {
                    "version": move.version,
                    "previous_version": move.previous_version,
                    "rollback": True,
                },
            )
        persist_mlflow_links(
            context,
            tracking_uri=hook.tracking_uri,
            model_name=model_name,
            model_version=move.version,
        )
        return rollback.result(actor.reason)


class FreezeModelOperator(MlopsBaseOperator):
    """Freeze or unfreeze a model: while frozen, promotions end ``frozen`` and leave
    ``@champion`` where it is (training and evaluation still run).

    The freeze record ``{by, user, reason, at, dag_id, run_id}`` is the registered-model tag
    ``mlops.frozen``, written under the promotion lock, and the ``freeze``/``unfreeze`` event
    goes to the alias history. Returns (XCom) ``{model_name, action, outcome, frozen,
    reason, user, event}``; ``outcome`` is ``frozen``, ``already_frozen``, ``unfrozen`` or
    ``not_frozen``.

    :param model_name: registered model name, pinned like ``RollbackModelOperator``'s.
    :param action: ``freeze`` or ``unfreeze`` (templated).
    :param reason: why, required (templated).
    :param requested_by: who asked, recorded beside the triggering user (templated).
    :param segments: segment value -> model name, pinned (see ``RollbackModelOperator``).
    :param segment: the segment to freeze or unfreeze (templated; only with ``segments``).
    """

    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "action",
        "reason",
        "requested_by",
        "segment",
        "lock_ttl_seconds",
        "lock_wait_seconds",
    )
    ui_color = "#d5e3f5"

    def __init__(
        self,
        *,
        model_name: str,
        action: str = "freeze",
        reason: str,
        requested_by: str | None = None,
        segment: str | None = None,
        segments: Mapping[str, str] | None = None,
        lock_ttl_seconds: float = 900.0,
        lock_wait_seconds: float = 1800.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = _pinned_model_name(model_name, kwargs.get("task_id"))
        if action not in ("freeze", "unfreeze") and not is_templated(action):
            raise ConfigError(
                f"{self.task_id}: action must be 'freeze' or 'unfreeze', got {action!r}"
            )
        self.action = action
        self.reason = reason
        self.requested_by = requested_by
        self.segment = segment
        self.segments = _pinned_segments(segments, self.task_id)
        self.lock_ttl_seconds = lock_ttl_seconds
        self.lock_wait_seconds = lock_wait_seconds

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.promotion import freeze_or_unfreeze

        model_name = _chosen_model(self)
        actor = _operator_actor(self, context)
        with self.mlflow_hook.session() as client:
            result = freeze_or_unfreeze(
                client,
                model_name,
                actor,
                action=str(self.action),
                lock_options=_lock_options(self.lock_ttl_seconds, self.lock_wait_seconds),
            )
        self.log.info("%s: %s by %s: %s", model_name, result["outcome"], actor.user, actor.reason)
        return result


def _operator_actor(operator: Any, context: Context) -> Actor:
    """Who (the triggering user, else ``requested_by``) and why (a required reason)."""
    from airflow_mlops.core.alias_history import Actor

    reason = str(operator.reason or "").strip()
    if not reason or reason == "None":
        raise ConfigError(f"{operator.task_id}: reason is required (it goes to the audit trail)")
    dag_run = context.get("dag_run")
    user = getattr(dag_run, "triggering_user_name", None)
    requested = str(operator.requested_by or "").strip()
    if requested and requested != "None":
        # The conf is the trigger's claim; the authenticated name stays first when known.
        user = f"{user} (for {requested})" if user else f"{requested} (from conf)"
    return Actor(reason=reason, context=operator.run_context(context), user=user or None)


def _pinned_segments(segments: Mapping[str, str] | None, task_id: Any) -> dict[str, str] | None:
    """A segmented pipeline's models, fixed in the DAG file: the trigger form only picks one."""
    if segments is None:
        return None
    pinned = {str(k): _pinned_model_name(v, task_id) for k, v in dict(segments).items()}
    if not pinned:
        raise ConfigError(f"{task_id}: segments is empty")
    return pinned


def _chosen_model(operator: Any) -> str:
    """The model this run acts on: the pinned one, or the pinned model of the chosen segment."""
    if operator.segments is None:
        return operator.model_name
    segment = str(operator.segment or "").strip()
    if segment not in operator.segments:
        raise ConfigError(
            f"{operator.task_id}: segment {segment!r} is not one of this pipeline's segments "
            f"({sorted(operator.segments)[:20]})"
        )
    return operator.segments[segment]


def _pinned_model_name(model_name: Any, task_id: Any) -> str:
    """The rollback's model, fixed in the DAG file: refuse empty or templated names."""
    if not isinstance(model_name, str) or not model_name.strip():
        raise ConfigError(f"{task_id}: model_name is required, got {model_name!r}")
    if is_templated(model_name):
        raise ConfigError(
            f"{task_id}: model_name {model_name!r} is templated; a rollback DAG must pin its "
            "model (a trigger param would let any user with trigger rights move another "
            "model's @champion)"
        )
    return model_name


def _serving_options(operator: Any) -> ServingCheckOptions | None:
    """The serving check an operator's ``serving_*`` parameters ask for (None: skipped)."""
    from airflow_mlops.core.promotion import ServingCheckOptions

    if not parse_bool(operator.serving_check, f"{operator.task_id}: serving_check"):
        return None
    return ServingCheckOptions(
        rows=int(operator.serving_sample_rows),
        timeout_seconds=parse_seconds(
            operator.serving_timeout_seconds, f"{operator.task_id}: serving_timeout_seconds"
        ),
    )
