"""Alias moves that are safe to retry, to race and to audit (MLflow 3 aliases).

``@challenger``, ``@champion`` and rollbacks move under a per-model *promotion lock* and
with compare-and-set:

- The lock (:class:`~airflow_mlops.core.promotion_lock.PromotionLock`) is a registered
  model ``<model>.mlops-lock`` created and deleted atomically by MLflow; see
  :mod:`airflow_mlops.core.promotion_lock`.
- Inside the lock, the champion is re-read just before the move. If it differs from the
  version the challenger was evaluated against, the challenger is re-scored against the
  new champion (``reevaluate`` callback, bounded) or the move stops with
  :class:`~airflow_mlops.core.errors.PromotionError` (``on_champion_changed="fail"``).
  After the move the alias is read back. Two promotions that race therefore serialise, and
  the second one is judged against whatever the first one installed: the better model ends
  as champion.

Every move is recorded in the alias history (:mod:`airflow_mlops.core.alias_history`); a
retry finds the event its dead try wrote, or records the move that try made without one.
A rollback only returns to a version the history shows as a former holder of the alias.
Without an explicit target it goes one step further back each time: the champion history is
read as a stack (a promotion pushes, a rollback pops back to its target), so the version a
rollback moved away from is never chosen again by default (:func:`champion_stack`).

A frozen model (:func:`set_frozen`, tag ``mlops.frozen``) keeps its ``@champion``: the freeze is
read under the promotion lock, so a promotion racing a freeze either moved before it or
ends ``frozen``. A rollback is an operator's action and is allowed while frozen.
The serving check (:mod:`airflow_mlops.core.serving`) is passed in by the caller
(``core.promotion``) as a callback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from airflow_mlops.core.alias_history import (
    MOVE_ACTIONS,
    TAG_ALIAS_EVENT_PREFIX,
    TAG_ALIAS_HISTORY,
    TAG_FROZEN,
    Actor,
    alias_history,
    ensure_in_summary,
    find_event_by_key,
    freeze_state,
    frozen_of,
    latest_alias_event,
    make_event,
    recent_alias_history,
    record_alias_event,
)
from airflow_mlops.core.errors import ConfigError, PromotionError
from airflow_mlops.core.promotion_lock import PromotionLock
from airflow_mlops.core.registry import (
    CHALLENGER,
    CHAMPION,
    current_alias_version,
    read_model_state,
    version_label,
)

__all__ = [
    "AliasMove",
    "Reevaluate",
    "RollbackRefused",
    "ServingCheck",
    "champion_stack",
    "promote_to_champion",
    "promotion_lock",
    "rollback_candidates",
    "rollback_champion",
    "set_alias_checked",
    "set_challenger",
    "set_frozen",
    "was_champion",
]

log = logging.getLogger(__name__)


@dataclass
class AliasMove:
    """What a promotion, challenger update or rollback did (JSON via :meth:`to_dict`)."""

    outcome: str  # promoted | already_champion | not_promoted_after_reevaluation | frozen |
    #               set | already_set | rolled_back | already_rolled_back
    model_name: str
    alias: str
    version: str | None
    previous_version: str | None
    current_version: str | None
    event: dict[str, Any] | None = None
    reevaluations: list[dict[str, Any]] = field(default_factory=list)
    frozen: dict[str, Any] | None = None  # the freeze record that stopped a promotion

    @property
    def moved(self) -> bool:
        return self.outcome in {"promoted", "set", "rolled_back"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def promotion_lock(
    client: MlflowClient,
    model_name: str,
    actor: Actor,
    lock_options: Mapping[str, Any] | None = None,
) -> PromotionLock:
    """The promotion lock of ``model_name`` taken by ``actor`` (a later try of the same task
    may reclaim it). Moves made inside ``with promotion_lock(...)`` re-enter it: one lock
    cycle for several moves of one model."""
    return PromotionLock(
        client,
        model_name,
        holder=actor.description,
        reclaim_key=actor.context.idempotency_key,
        try_number=actor.context.try_number,
        **dict(lock_options or {}),
    )


def set_alias_checked(client: MlflowClient, model_name: str, alias: str, version: str) -> None:
    """Set the alias and read it back; anything else than ``version`` is an error."""
    client.set_registered_model_alias(model_name, alias, str(version))
    seen = current_alias_version(client, model_name, alias)
    if seen != str(version):
        raise PromotionError(
            f"@{alias} of {model_name} reads back as {seen!r} right after setting it to "
            f"{version!r}: another writer bypassed the promotion lock"
        )


def set_challenger(
    client: MlflowClient,
    model_name: str,
    version: str,
    actor: Actor,
    *,
    alias: str = CHALLENGER,
    lock_options: Mapping[str, Any] | None = None,
) -> AliasMove:
    """Point ``@challenger`` at ``version`` and record the move (idempotent on retry)."""
    with promotion_lock(client, model_name, actor, lock_options) as lock:
        state = read_model_state(client, model_name)
        current = state.alias_version(alias)
        if current == str(version):
            lock.verify()
            event = _retry_event(client, model_name, alias, str(version), actor, action="set")
            return AliasMove(
                "already_set", model_name, alias, str(version), current, current, event
            )
        lock.verify()
        set_alias_checked(client, model_name, alias, str(version))
        event = record_alias_event(
            client, model_name, make_event(alias, "set", str(version), current, actor), state
        )
        return AliasMove("set", model_name, alias, str(version), current, str(version), event)


Reevaluate = Callable[[str | None], Mapping[str, Any]]


def promote_to_champion(
    client: MlflowClient,
    model_name: str,
    version: str,
    *,
    evaluated_champion: str | None,
    actor: Actor,
    reevaluate: Reevaluate | None = None,
    on_champion_changed: str = "reevaluate",
    max_reevaluations: int = 3,
    alias: str = CHAMPION,
    lock_options: Mapping[str, Any] | None = None,
    respect_freeze: bool = True,
) -> AliasMove:
    """Move ``@champion`` to ``version`` with compare-and-set under the promotion lock.

    ``evaluated_champion`` is the version the decision was made against (None: no champion).
    If the alias moved since, ``reevaluate(new_champion_version)`` must return a fresh
    decision record (``{"promote": bool, ...}``) before anything is written, or, with
    ``on_champion_changed="fail"``, :class:`PromotionError` stops the move. A frozen model
    (read under the lock) ends with outcome ``frozen`` and nothing written.
    """
    if on_champion_changed not in {"reevaluate", "fail"}:
        raise ConfigError(
            f"on_champion_changed must be 'reevaluate' or 'fail', got {on_champion_changed!r}"
        )
    version = str(version)
    expected = None if evaluated_champion is None else str(evaluated_champion)
    reevaluations: list[dict[str, Any]] = []
    with promotion_lock(client, model_name, actor, lock_options) as lock:
        while True:
            state = read_model_state(client, model_name)
            current = state.alias_version(alias)
            if current == version:
                # A retry after a successful move, or someone else promoted it already.
                lock.verify()
                event = _retry_event(client, model_name, alias, version, actor, action="promote")
                return AliasMove(
                    "already_champion",
                    model_name,
                    alias,
                    version,
                    None if event is None else event.get("previous_version"),
                    current,
                    event,
                    reevaluations,
                )
            frozen = frozen_of(state) if respect_freeze else None
            if frozen is not None:
                return AliasMove(
                    "frozen",
                    model_name,
                    alias,
                    version,
                    current,
                    current,
                    None,
                    reevaluations,
                    frozen,
                )
            if current != expected:
                moved = (
                    f"@{alias} of {model_name} moved from {version_label(expected)} to "
                    f"{version_label(current)} since the challenger was evaluated"
                )
                if on_champion_changed == "fail" or reevaluate is None:
                    raise PromotionError(
                        f"{moved}; not overwriting it blindly. Re-run the evaluation against "
                        f"the new champion. Version {version} was not promoted."
                    )
                if len(reevaluations) >= max_reevaluations:
                    raise PromotionError(
                        f"{moved} {len(reevaluations)} times while holding the promotion lock "
                        "(someone writes the alias without the lock); giving up."
                    )
                log.info(
                    "%s: re-evaluating version %s against %s.",
                    moved,
                    version,
                    version_label(current),
                )
                record = dict(reevaluate(current))
                reevaluations.append(record)
                expected = current
                if not record.get("promote"):
                    return AliasMove(
                        "not_promoted_after_reevaluation",
                        model_name,
                        alias,
                        version,
                        current,
                        current,
                        None,
                        reevaluations,
                    )
                continue
            lock.verify()
            set_alias_checked(client, model_name, alias, version)
            event = record_alias_event(
                client, model_name, make_event(alias, "promote", version, current, actor), state
            )
            return AliasMove(
                "promoted", model_name, alias, version, current, version, event, reevaluations
            )


def _retry_event(
    client: MlflowClient, model_name: str, alias: str, version: str, actor: Actor, *, action: str
) -> dict[str, Any] | None:
    """The alias already points at ``version``: complete the history an earlier try left.

    The earlier try may have died after the alias write (no event: record it now) or between
    the per-version event and the summary (event found: put it in the summary).
    """
    event = find_event_by_key(client, model_name, version, alias, actor.context.idempotency_key)
    if event is None:
        return _record_unrecorded_move(client, model_name, alias, version, actor, action=action)
    ensure_in_summary(client, model_name, event)
    return event


def _record_unrecorded_move(
    client: MlflowClient,
    model_name: str,
    alias: str,
    version: str,
    actor: Actor,
    action: str = "promote",
) -> dict[str, Any] | None:
    """The alias already points at ``version`` but no history event says how.

    Happens when a try set the alias and died before writing its event. Record the move now,
    so the history (and rollback) stay complete; the previous version is the one the last
    recorded move installed. Nothing is written when the last event already explains it.
    """
    last = latest_alias_event(client, model_name, alias)
    if last is not None and last.get("version") == version:
        return None
    previous = None if last is None else last.get("version")
    note = Actor(
        reason=f"(recorded on retry: @{alias} already pointed at version {version}) {actor.reason}",
        context=actor.context,
        user=actor.user,
        decision_uri=actor.decision_uri,
    )
    return record_alias_event(
        client, model_name, make_event(alias, action, version, previous, note)
    )


class RollbackRefused(PromotionError):
    """The rollback target never held the alias (per the history), or cannot serve."""


def was_champion(
    client: MlflowClient, model_name: str, version: str, alias: str = CHAMPION
) -> bool:
    """Whether the alias history records a move of ``alias`` to ``version``.

    The summary (``mlops.alias_history``) is read first; the per-version events, which are
    never trimmed, decide when the summary does not mention the version.
    """
    for source in (recent_alias_history, alias_history):
        if any(
            e.get("alias") == alias
            and e.get("action", "promote") in MOVE_ACTIONS
            and str(e.get("version")) == str(version)
            for e in source(client, model_name)
        ):
            return True
    return False


def champion_stack(events: list[Mapping[str, Any]], alias: str = CHAMPION) -> list[str]:
    """The versions a default rollback walks back through, oldest first (top: the holder).

    A promotion pushes its version; a rollback pops back to its target (pushing it when an
    explicit target is not on the stack). The versions a rollback moved away from are thus
    gone, and rolling back again goes further back instead of toggling.
    """
    stack: list[str] = []
    for event in events:
        if event.get("alias") != alias or event.get("version") is None:
            continue
        action, version = event.get("action", "promote"), str(event["version"])
        if action == "rollback" and version in stack:
            del stack[stack.index(version) + 1 :]
        elif action in ("promote", "rollback") and (not stack or stack[-1] != version):
            stack.append(version)
    return stack


def _rollback_target(
    client: MlflowClient,
    model_name: str,
    alias: str,
    current: str | None,
    to_version: str | None,
) -> str:
    """The version to roll back to: ``to_version``, else the one below the holder on the
    :func:`champion_stack`."""
    if to_version is not None:
        return str(to_version)
    if current is None:
        raise PromotionError(f"{model_name} has no @{alias}: nothing to roll back")
    stack = champion_stack(alias_history(client, model_name), alias)
    below = [v for v in stack[:-1] if v != (stack[-1] if stack else None)]
    if stack and stack[-1] != current and below and below[-1] == current:
        # An earlier try set @alias back and died before recording it.
        return current
    if not stack or stack[-1] != current:
        raise PromotionError(
            f"the alias history of {model_name} does not say how @{alias} reached "
            f"version {current} (moved outside airflow-mlops?); pass to_version "
            "explicitly to roll back"
        )
    if not below:
        raise PromotionError(
            f"version {current} was the first @{alias} of {model_name} (or every earlier one "
            "was rolled away from): there is no previous champion to roll back to; pass "
            "to_version to choose a former champion"
        )
    return below[-1]


def rollback_candidates(
    client: MlflowClient, model_name: str, alias: str = CHAMPION
) -> list[dict[str, Any]]:
    """The former holders of ``alias``, newest first, as a rollback form would list them.

    Each row: ``version``, ``status`` (``current``, ``default target``, ``on the stack``,
    ``rolled away from``), and the ``at``/``by``/``reason`` of the move that last installed it.
    """
    events = [
        e
        for e in alias_history(client, model_name)
        if e.get("alias") == alias and e.get("action", "promote") in MOVE_ACTIONS
    ]
    stack = champion_stack(events, alias)
    current = current_alias_version(client, model_name, alias)
    below = [v for v in stack if v != current]
    default = below[-1] if below else None
    rows: dict[str, dict[str, Any]] = {}
    for event in events:
        rows[str(event["version"])] = {
            "version": str(event["version"]),
            "at": event.get("at"),
            "action": event.get("action"),
            "by": event.get("user") or event.get("by"),
            "reason": str(event.get("reason") or "")[:160],
        }
    for version, row in rows.items():
        row["status"] = (
            "current"
            if version == current
            else "default target"
            if version == default
            else "on the stack"
            if version in stack
            else "rolled away from"
        )
    return sorted(rows.values(), key=lambda r: str(r["at"]), reverse=True)


def _check_rollback_target(
    client: MlflowClient, model_name: str, alias: str, target: str
) -> ModelVersion:
    """Refuse a target that never held ``alias`` or is not READY."""
    if not was_champion(client, model_name, target, alias):
        raise RollbackRefused(
            f"version {target} of {model_name} never held @{alias} according to its alias "
            f"history ({TAG_ALIAS_HISTORY} and the {TAG_ALIAS_EVENT_PREFIX}* events): a rollback "
            "may only return to a former champion. @champion was not moved."
        )
    try:
        mv = client.get_model_version(model_name, target)
    except MlflowException as err:
        raise PromotionError(
            f"cannot roll back @{alias} of {model_name} to version {target}: {err}"
        ) from err
    if str(mv.status) != "READY":
        raise PromotionError(f"version {target} of {model_name} is {mv.status}, not READY")
    return mv


ServingCheck = Callable[[str], None]


def rollback_champion(
    client: MlflowClient,
    model_name: str,
    actor: Actor,
    *,
    to_version: str | None = None,
    alias: str = CHAMPION,
    lock_options: Mapping[str, Any] | None = None,
    serving_check: ServingCheck | None = None,
) -> AliasMove:
    """Point ``@champion`` back at a former champion (default: the previous one) in one step.

    Without ``to_version`` the target is the version below the current champion on the
    :func:`champion_stack`: a second rollback goes further back, never to the version the
    first one moved away from. Only versions the alias history shows as former holders of
    the alias are accepted (:class:`RollbackRefused` otherwise). ``serving_check(version)``
    runs before the move and must raise to stop it. Idempotent: a retry of the same task
    finds its own event and completes the history a dead try left half-written.
    """
    with promotion_lock(client, model_name, actor, lock_options) as lock:
        current = current_alias_version(client, model_name, alias)
        key = actor.context.idempotency_key
        own = (
            None if current is None else find_event_by_key(client, model_name, current, alias, key)
        )
        if own is not None and own.get("action") == "rollback":
            lock.verify()
            ensure_in_summary(client, model_name, own)
            return AliasMove(
                "already_rolled_back",
                model_name,
                alias,
                current,
                own.get("previous_version"),
                current,
                own,
            )
        last = latest_alias_event(client, model_name, alias)
        target = _rollback_target(client, model_name, alias, current, to_version)
        _check_rollback_target(client, model_name, alias, target)
        if current == target:
            if last is not None and last.get("version") != current:
                lock.verify()
                event = _record_unrecorded_move(
                    client, model_name, alias, current, actor, action="rollback"
                )
                return AliasMove(
                    "rolled_back", model_name, alias, current, last.get("version"), current, event
                )
            return AliasMove("already_rolled_back", model_name, alias, target, current, current)
        if serving_check is not None:
            serving_check(target)
        lock.verify()
        set_alias_checked(client, model_name, alias, target)
        event = record_alias_event(
            client, model_name, make_event(alias, "rollback", target, current, actor)
        )
        return AliasMove("rolled_back", model_name, alias, target, current, target, event)


def set_frozen(
    client: MlflowClient,
    model_name: str,
    actor: Actor,
    *,
    frozen: bool,
    alias: str = CHAMPION,
    lock_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Freeze (``frozen=True``) or unfreeze a model, under the promotion lock, and record it.

    The freeze record ``{by, user, reason, at, dag_id, run_id}`` goes to the registered-model
    tag ``mlops.frozen``; the event (``freeze``/``unfreeze``) to the alias history. Asking for
    the state the model is already in writes nothing (outcome ``already_frozen`` /
    ``not_frozen``), so a retried task does not stack events.
    """
    with promotion_lock(client, model_name, actor, lock_options) as lock:
        state = freeze_state(client, model_name)
        if frozen == (state is not None):
            outcome = "already_frozen" if frozen else "not_frozen"
            return {"model_name": model_name, "outcome": outcome, "frozen": state, "event": None}
        current = current_alias_version(client, model_name, alias)
        action = "freeze" if frozen else "unfreeze"
        event = make_event(alias, action, current, current, actor)
        lock.verify()
        if frozen:
            record = {k: event[k] for k in ("by", "user", "reason", "at", "dag_id", "run_id", "id")}
            client.set_registered_model_tag(
                model_name, TAG_FROZEN, json.dumps(record, separators=(",", ":"))
            )
            state = record
        else:
            client.delete_registered_model_tag(model_name, TAG_FROZEN)
        record_alias_event(client, model_name, event)
        outcome = "frozen" if frozen else "unfrozen"
        return {
            "model_name": model_name,
            "outcome": outcome,
            "frozen": state if frozen else None,
            "previous_freeze": None if frozen else state,
            "event": event,
        }
