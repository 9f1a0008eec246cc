"""The promotion workflow, and the checks a rollback runs before moving ``@champion`` back.

Promotion: check the evaluation and registration agree, **gate** (the policy qualified the
challenger; a required human approval said *Approve*), **serving check** (the version loads
from the registry in a clean process and predicts a holdout sample), **compare-and-set** move
of ``@champion`` under the promotion lock (re-scoring the challenger if the champion moved
since evaluation), and the **promotion record** logged on the challenger's run. A **frozen**
model (tag ``mlops.frozen``, see :func:`airflow_mlops.core.alias_moves.set_frozen`) stops a
qualified challenger before the serving check, and again under the lock: outcome ``frozen``,
reason ``frozen: <reason> (by <who>)``, not a failure. Rollback: the target must be a former
champion (:func:`airflow_mlops.core.alias_moves.rollback_champion`) and pass the same serving
check; it is allowed while frozen (an operator's action) and says so in its result.

With ``PromotionOptions.shadow`` (``promotion.require_shadow_partitions``), a qualified
challenger must also pass the ``shadow_evidence`` rule (:mod:`airflow_mlops.core.shadow`)
against the current champion before the serving check; its verdict is kept in the record
(``shadow``) and a failure is outcome ``not_promoted`` with reason ``not promoted: shadow
evidence from K of N partitions``.

``PromoteModelOperator`` and ``RollbackModelOperator`` read what only Airflow knows (the run,
the approval XCom, the ``[mlops]`` settings, the model trust) and call
:func:`promote_challenger` / :func:`rollback_to_former_champion`.

Import-light at module level, like :mod:`airflow_mlops.core.approval`: operators use the
constants below as parameter defaults and a DAG file must not import MLflow, so the registry,
evaluation and serving modules are imported by the functions that use them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.errors import ConfigError, PromotionError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_history import Actor
    from airflow_mlops.core.alias_moves import AliasMove
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.provenance import ModelTrust
    from airflow_mlops.core.storage import Storage

__all__ = [
    "CHAMPION_CHANGED_ACTIONS",
    "PROMOTED_OUTCOMES",
    "PROMOTION_ARTIFACT",
    "TAG_PROMOTION_OUTCOME",
    "PromotionOptions",
    "PromotionOutcome",
    "RollbackOutcome",
    "ServingCheckOptions",
    "ShadowRequirement",
    "TrustProvider",
    "check_promotion_inputs",
    "freeze_or_unfreeze",
    "promote_challenger",
    "promotion_gate",
    "promotion_reason",
    "reevaluator",
    "rollback_to_former_champion",
    "serving_check_of_version",
    "store_promotion_record",
]

log = logging.getLogger(__name__)

PROMOTION_ARTIFACT = "mlops/promotion.json"
TAG_PROMOTION_OUTCOME = "mlops.promotion.outcome"
CHAMPION_CHANGED_ACTIONS = ("reevaluate", "fail")
# Outcomes after which the version holds @champion (a retry that finds its own move in place
# reports "already_champion").
PROMOTED_OUTCOMES = frozenset({"promoted", "already_champion"})
_REEVALUATION_FIELDS = ("promote", "reason", "champion", "challenger_metrics", "champion_metrics")

# Called before every model load, so each load is checked with the trust in force then.
TrustProvider = Callable[[], "ModelTrust"]


@dataclass(frozen=True)
class ServingCheckOptions:
    """How the clean-process serving check runs: holdout rows predicted, seconds allowed."""

    rows: int = 100
    timeout_seconds: float = 600.0


@dataclass(frozen=True)
class ShadowRequirement:
    """``promotion.require_shadow_partitions``/``shadow_min_delta``/``shadow_metric``;
    ``metric`` None: the policy's first change-threshold metric (else its first metric)."""

    partitions: int
    min_delta: float = 0.0
    metric: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.partitions, bool) or int(self.partitions) < 1:
            raise ConfigError(
                f"require_shadow_partitions must be an integer >= 1, got {self.partitions!r}"
            )

    def metric_for(self, policy: Mapping[str, Any]) -> str:
        """The gated metric: explicit, else the policy's first change (then value) metric."""
        names = [*(policy.get("change_thresholds") or {}), *(policy.get("value_thresholds") or {})]
        if self.metric:
            return self.metric
        if not names:
            raise ConfigError("shadow evidence needs shadow_metric: the policy names no metric")
        return str(names[0])


@dataclass(frozen=True)
class PromotionOptions:
    """How a promotion runs; ``serving=None`` skips the serving check."""

    serving: ServingCheckOptions | None = field(default_factory=ServingCheckOptions)
    on_champion_changed: str = "reevaluate"
    max_reevaluations: int = 3
    lock_options: Mapping[str, Any] | None = None
    artifact: str = PROMOTION_ARTIFACT
    approval_task_id: str | None = None  # named in the reasons of an unapproved promotion
    # The version's model card (core.model_card), written once the decision is final.
    model_card: bool = True
    intended_use: str = ""
    validation: Mapping[str, Any] | None = None
    shadow: ShadowRequirement | None = None  # shadow evidence required before @champion moves


@dataclass(frozen=True)
class PromotionOutcome:
    """The task's JSON result and the challenger run's experiment (for links)."""

    result: dict[str, Any]
    experiment_id: str

    @property
    def champion_moved(self) -> bool:
        """Whether the version holds @champion after this promotion (or its retry)."""
        return bool(self.result["promoted"])


@dataclass(frozen=True)
class RollbackOutcome:
    """The alias move and the serving check of its target (None when none ran)."""

    move: AliasMove
    serving_check: dict[str, Any] | None
    frozen: dict[str, Any] | None = None  # the model's freeze record, if it is frozen

    def result(self, reason: str) -> dict[str, Any]:
        """The rollback task's JSON result."""
        event = self.move.event or {}
        return {
            "model_name": self.move.model_name,
            "outcome": self.move.outcome,
            "champion_version": self.move.current_version,
            "previous_champion_version": self.move.previous_version,
            "reason": reason,
            "user": event.get("user"),
            "serving_check": self.serving_check,
            "history_event": self.move.event,
            "frozen": self.frozen,
        }


# -- inputs and gate ------------------------------------------------------------------------


def check_promotion_inputs(evaluation: Mapping[str, Any], registration: Mapping[str, Any]) -> None:
    """Refuse an evaluation and a registration that are incomplete or about different runs."""
    for key in ("promote", "reason", "challenger", "policy", "model_name"):
        if key not in evaluation:
            raise ConfigError(f"evaluation lacks {key!r}: pass EvaluateModelOperator's result")
    for key in ("model_name", "version", "run_id"):
        if key not in registration:
            raise ConfigError(f"registration lacks {key!r}: pass RegisterModelOperator's result")
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


def promotion_gate(
    evaluation: Mapping[str, Any],
    approval: Mapping[str, Any] | None,
    champion: str | None,
    approval_task_id: str | None = None,
    approval_policy: Mapping[str, Any] | None = None,
) -> tuple[str | None, str | None]:
    """``(outcome, reason)`` when nothing may move, else ``(None, None)``.

    ``approval`` is :func:`airflow_mlops.core.approval.approval_decision`'s answer, or None
    when no approval is required. ``approval_policy``: the ``auto_if_confident`` outcome
    (:func:`airflow_mlops.core.approval_policy.approval_outcome`); when it asked reviewers,
    no approval record means no move.
    """
    from airflow_mlops.core.registry import version_label

    unchanged = f"@champion unchanged ({version_label(champion)})"
    if not evaluation["promote"]:
        return "not_promoted", f"{evaluation['reason']}; {unchanged}"
    if approval is None and approval_policy is not None and not approval_policy["confident"]:
        return (
            "not_approved",
            f"{approval_policy['reason']}, but no approval record was given; {unchanged}",
        )
    # A request superseded by a newer challenger, or timed out to a rejection (no human).
    if approval is not None and not approval["approved"] and approval.get("outcome"):
        return str(approval["outcome"]), f"{approval['reason']}; {unchanged}"
    if approval is not None and not approval["answered"]:
        asked = f"{approval_policy['reason']}; " if approval_policy is not None else ""
        return (
            "not_approved",
            f"{asked}no answer from approval task {approval_task_id!r}; {unchanged}",
        )
    if approval is not None and not approval["approved"]:
        if approval["by"] is None:
            return (
                "not_approved",
                f"no human answered approval task {approval_task_id!r} (the default "
                f"{approval['chosen_options']} applied at {approval['at']}); {unchanged}",
            )
        return "rejected", f"rejected by {approval['by']} at {approval['at']}; {unchanged}"
    return None, None


# -- serving check and re-evaluation --------------------------------------------------------


def serving_check_of_version(
    client: MlflowClient,
    storage: Storage,
    run_id: str,
    model_name: str,
    version: str,
    *,
    options: ServingCheckOptions,
    trust: TrustProvider,
) -> dict[str, Any]:
    """Load ``models:/<name>/<version>`` in a clean process and predict a holdout sample of
    its training run (:mod:`airflow_mlops.core.serving`); returns the check's result."""
    from airflow_mlops.core.evaluation import challenger_from_training, load_holdout
    from airflow_mlops.core.serving import serving_check

    challenger = challenger_from_training(client, {"run_id": run_id})
    holdout = load_holdout(storage, challenger)
    model_uri = f"models:/{model_name}/{version}"
    result = serving_check(
        model_uri,
        holdout.frame,
        target=challenger.target,
        sample_rows=options.rows,
        timeout_seconds=options.timeout_seconds,
        trust=trust(),
        client=client,
    )
    log.info("Serving check of %s: %s", model_uri, result)
    return result


def reevaluator(
    client: MlflowClient,
    storage: Storage,
    evaluation: Mapping[str, Any],
    model_name: str,
    trust: TrustProvider,
) -> Callable[[str | None], dict[str, Any]]:
    """Re-score the same challenger, same holdout, same policy, against a new champion."""

    def reevaluate(new_champion: str | None) -> dict[str, Any]:
        from airflow_mlops.core.evaluation import challenger_from_training, evaluate_challenger
        from airflow_mlops.core.registry import Champion, version_label

        challenger = challenger_from_training(
            client, {"run_id": evaluation["challenger"]["run_id"]}
        )
        champion = None
        if new_champion is not None:
            mv = client.get_model_version(model_name, new_champion)
            champion = Champion(model_name, str(mv.version), mv.run_id or None)
        log.info(
            "@champion moved since evaluation: re-scoring against %s.", version_label(new_champion)
        )
        return evaluate_challenger(
            client,
            storage,
            challenger,
            model_name=model_name,
            policy=evaluation["policy"],
            slices=evaluation.get("slices"),
            champion_alias=evaluation.get("champion_alias", "champion"),
            champion=champion,
            trust=trust(),
            **_comparison_settings(evaluation),
        ).record

    return reevaluate


def _comparison_settings(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """The ``evaluation.on``/``min_rows`` the first evaluation used (absent: the defaults)."""
    on = (evaluation.get("comparison") or {}).get("on")
    settings = {"on": on, "min_rows": evaluation.get("min_rows")}
    return {k: v for k, v in settings.items() if v is not None}


# -- record ---------------------------------------------------------------------------------


def promotion_reason(move: AliasMove, evaluation: Mapping[str, Any]) -> str:
    """The one-line reason of a promotion that reached the compare-and-set."""
    from airflow_mlops.core.registry import version_label

    if move.outcome == "promoted":
        return (
            f"@champion moved from {version_label(move.previous_version)} to version "
            f"{move.version}: {evaluation['reason']}"
        )
    if move.outcome == "already_champion":
        return f"version {move.version} already holds @champion (retry)"
    if move.outcome == "frozen":
        from airflow_mlops.core.alias_history import frozen_reason

        return (
            f"{frozen_reason(move.frozen or {})}; version {move.version} qualified but "
            f"@champion unchanged ({version_label(move.current_version)})"
        )
    last = move.reevaluations[-1] if move.reevaluations else {}
    return (
        f"@champion moved to {version_label(move.current_version)} since evaluation; re-scored "
        f"against it: {last.get('reason')}; @champion unchanged"
    )


def store_promotion_record(
    client: MlflowClient, run_id: str, record: Mapping[str, Any], artifact: str
) -> str:
    """Log the promotion record on the challenger's run and tag the run with its outcome."""
    from airflow_mlops.core.evaluation import log_record

    uri = log_record(client, run_id, dict(record), artifact)
    client.set_tag(run_id, TAG_PROMOTION_OUTCOME, str(record.get("outcome")))
    return uri


# -- the workflows --------------------------------------------------------------------------


def promote_challenger(
    client: MlflowClient,
    storage: Storage,
    evaluation: Mapping[str, Any],
    registration: Mapping[str, Any],
    *,
    approval: Mapping[str, Any] | None,
    context: RunContext,
    trust: TrustProvider,
    options: PromotionOptions,
    approval_policy: Mapping[str, Any] | None = None,
) -> PromotionOutcome:
    """Gate, serving check, compare-and-set move, record; see the module docstring.

    A failed serving check stores the record (outcome ``serving_check_failed``) and raises
    :class:`PromotionError`. The result's ``outcome`` is one of ``promoted``,
    ``already_champion``, ``not_promoted``, ``not_promoted_after_reevaluation``,
    ``rejected``, ``not_approved``, ``frozen``.
    """
    from airflow_mlops.core.alias_history import frozen_of
    from airflow_mlops.core.registry import read_model_state, version_label

    check_promotion_inputs(evaluation, registration)
    model_name, version = registration["model_name"], str(registration["version"])
    run_id = evaluation["challenger"]["run_id"]
    alias = evaluation.get("champion_alias", "champion")
    record: dict[str, Any] = {
        "decision": {k: v for k, v in evaluation.items() if k != "decision_artifact_uri"},
        "decision_artifact_uri": evaluation.get("decision_artifact_uri"),
        "model_name": model_name,
        "version": version,
        "approval": approval,
        "approval_policy": None if approval_policy is None else dict(approval_policy),
        "serving_check": None,
        "promotion": None,
    }
    state = read_model_state(client, model_name)
    champion_before = state.alias_version(alias)
    outcome, reason = promotion_gate(
        evaluation, approval, champion_before, options.approval_task_id, approval_policy
    )
    if outcome is None and options.shadow is not None:
        record["shadow"] = _shadow_gate(client, run_id, evaluation, champion_before, options.shadow)
        if record["shadow"]["verdict"] == "fail":
            outcome = "not_promoted"
            reason = (
                f"not promoted: {record['shadow']['detail']}; @champion unchanged "
                f"({version_label(champion_before)})"
            )
    frozen = frozen_of(state) if outcome is None else None
    if frozen is not None:
        # Checked again under the lock by promote_to_champion; this early exit spares the
        # serving check of a version that cannot move.
        from airflow_mlops.core.alias_moves import AliasMove

        move = AliasMove(
            "frozen", model_name, alias, version, champion_before, champion_before, frozen=frozen
        )
        record["promotion"] = move.to_dict()
        outcome, reason = move.outcome, promotion_reason(move, evaluation)
    elif outcome is None:
        if options.serving is not None:
            check = serving_check_of_version(
                client, storage, run_id, model_name, version, options=options.serving, trust=trust
            )
            record["serving_check"] = check
            if not check["ok"]:
                record.update(outcome="serving_check_failed", reason=check["error"])
                uri = store_promotion_record(client, run_id, record, options.artifact)
                raise PromotionError(
                    f"serving check of models:/{model_name}/{version} failed: "
                    f"{check['error']}. @champion was not moved "
                    f"(still {version_label(champion_before)}); record: {uri}"
                )
        move = _move_champion(
            client, storage, evaluation, approval, version, context, trust, options, approval_policy
        )
        record["promotion"] = move.to_dict()
        outcome, reason = move.outcome, promotion_reason(move, evaluation)
    record.update(outcome=outcome, reason=reason)
    artifact_uri = store_promotion_record(client, run_id, record, options.artifact)
    promotion = record["promotion"] or {}
    result = {
        "model_name": model_name,
        "version": version,
        "outcome": outcome,
        "promoted": outcome in PROMOTED_OUTCOMES,
        "champion_version": _champion_after(record["promotion"], champion_before),
        "previous_champion_version": promotion.get("previous_version", champion_before),
        "reason": reason,
        "approval": approval,
        "approval_policy": record["approval_policy"],
        "serving_check": record["serving_check"],
        # The shadow_evidence verdict (its records stay in the promotion record).
        "shadow": {k: v for k, v in (record.get("shadow") or {}).items() if k != "records"} or None,
        "reevaluations": [
            {k: r.get(k) for k in _REEVALUATION_FIELDS}
            for r in promotion.get("reevaluations") or []
        ],
        "history_event": promotion.get("event"),
        "promotion_artifact_uri": artifact_uri,
        "model_card": _model_card(client, model_name, version, record, options),
    }
    from airflow_mlops.core.mlflow_client import run_location

    return PromotionOutcome(result, run_location(client, run_id).experiment_id)


def _champion_after(move: Mapping[str, Any] | None, champion_before: str | None) -> str | None:
    """Where ``@champion`` points after this promotion: the move read it under the lock;
    without a move nothing was written, so it is where it was."""
    return champion_before if move is None else move.get("current_version")


def _shadow_gate(
    client: MlflowClient,
    run_id: str,
    evaluation: Mapping[str, Any],
    champion: str | None,
    requirement: ShadowRequirement,
) -> dict[str, Any]:
    """The ``shadow_evidence`` rule's result and the shadow records it used."""
    from airflow_mlops.core.shadow import shadow_evidence

    rule, records = shadow_evidence(
        client,
        run_id,
        champion_version=champion,
        required=requirement.partitions,
        metric=requirement.metric_for(evaluation.get("policy") or {}),
        min_delta=requirement.min_delta,
    )
    log.info("Shadow evidence: %s (%s)", rule.verdict, rule.detail)
    return {**rule.to_dict(), "required_partitions": requirement.partitions, "records": records}


def _model_card(
    client: MlflowClient,
    model_name: str,
    version: str,
    record: Mapping[str, Any],
    options: PromotionOptions,
) -> dict[str, Any] | None:
    if not options.model_card:
        return None
    if (record.get("shadow") or {}).get("verdict") == "fail":
        # Waiting for shadow evidence is not a final decision: the card (written once) waits
        # for the promote step that finds the evidence, so it shows the decision that counted.
        return None
    from airflow_mlops.core.model_card import write_model_card

    card = write_model_card(
        client,
        model_name,
        version,
        intended_use=options.intended_use,
        validation=options.validation,
        promotion=record,
    )
    return card.to_dict()


def _move_champion(
    client: MlflowClient,
    storage: Storage,
    evaluation: Mapping[str, Any],
    approval: Mapping[str, Any] | None,
    version: str,
    context: RunContext,
    trust: TrustProvider,
    options: PromotionOptions,
    approval_policy: Mapping[str, Any] | None = None,
) -> AliasMove:
    from airflow_mlops.core.alias_history import Actor
    from airflow_mlops.core.alias_moves import promote_to_champion

    model_name = evaluation["model_name"]
    reason = evaluation["reason"]
    if approval_policy is not None:  # the history says whether a human was asked, and why
        reason = f"{approval_policy['reason']}; {reason}"
    actor = Actor(
        reason=reason,
        context=context,
        user=(approval or {}).get("by"),
        decision_uri=evaluation.get("decision_artifact_uri"),
    )
    return promote_to_champion(
        client,
        model_name,
        version,
        evaluated_champion=(evaluation.get("champion") or {}).get("version"),
        actor=actor,
        reevaluate=reevaluator(client, storage, evaluation, model_name, trust),
        on_champion_changed=options.on_champion_changed,
        max_reevaluations=options.max_reevaluations,
        alias=evaluation.get("champion_alias", "champion"),
        lock_options=options.lock_options,
    )


def rollback_to_former_champion(
    client: MlflowClient,
    storage: Storage,
    model_name: str,
    actor: Actor,
    *,
    to_version: str | None,
    lock_options: Mapping[str, Any] | None,
    serving: ServingCheckOptions | None,
    trust: TrustProvider,
) -> RollbackOutcome:
    """Point ``@champion`` back at a former champion (default: the previous one).

    Allowed while the model is frozen (the freeze stops automatic promotions, not an
    operator); the result carries the freeze record so the run says the model stays frozen.
    The target must be a version the alias history shows as a former champion
    (:class:`~airflow_mlops.core.alias_moves.RollbackRefused` otherwise) and, unless
    ``serving`` is None, pass the serving check before the alias moves.
    """
    from airflow_mlops.core.alias_history import freeze_state
    from airflow_mlops.core.alias_moves import rollback_champion

    checks: list[dict[str, Any]] = []
    move = rollback_champion(
        client,
        model_name,
        actor,
        to_version=to_version,
        lock_options=lock_options,
        serving_check=(
            None
            if serving is None
            else _rollback_serving_check(client, storage, model_name, serving, trust, checks)
        ),
    )
    return RollbackOutcome(move, checks[-1] if checks else None, freeze_state(client, model_name))


def _rollback_serving_check(
    client: MlflowClient,
    storage: Storage,
    model_name: str,
    options: ServingCheckOptions,
    trust: TrustProvider,
    checks: list[dict[str, Any]],
) -> Callable[[str], None]:
    """The callback ``rollback_champion`` runs on the target before moving the alias."""

    def check(version: str) -> None:
        from airflow_mlops.core.alias_moves import RollbackRefused

        mv = client.get_model_version(model_name, version)
        if not mv.run_id:
            raise RollbackRefused(
                f"version {version} of {model_name} has no training run, so no holdout "
                "to run the serving check on; @champion was not moved"
            )
        result = serving_check_of_version(
            client, storage, mv.run_id, model_name, version, options=options, trust=trust
        )
        checks.append(result)
        if not result["ok"]:
            raise RollbackRefused(
                f"serving check of models:/{model_name}/{version} failed: "
                f"{result['error']}. @champion was not moved."
            )

    return check


def freeze_or_unfreeze(
    client: MlflowClient,
    model_name: str,
    actor: Actor,
    *,
    action: str,
    lock_options: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """``action`` is ``freeze`` or ``unfreeze``; see :func:`~airflow_mlops.core.alias_moves.set_frozen`."""
    from airflow_mlops.core.alias_moves import set_frozen

    if action not in ("freeze", "unfreeze"):
        raise ConfigError(f"action must be 'freeze' or 'unfreeze', got {action!r}")
    result = set_frozen(
        client, model_name, actor, frozen=action == "freeze", lock_options=lock_options
    )
    log.info("%s: %s (%s)", model_name, result["outcome"], actor.reason)
    return {**result, "action": action, "reason": actor.reason, "user": actor.user}
