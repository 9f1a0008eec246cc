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
The serving check (:mod:`airflow_mlops.core.serving`) is passed in by the caller
(``core.promotion``) as a callback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from airflow_mlops.core.alias_history import (
    TAG_ALIAS_EVENT_PREFIX,
    TAG_ALIAS_HISTORY,
    Actor,
    alias_history,
    ensure_in_summary,
    find_event_by_key,
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
    version_label,
)

__all__ = [
    "AliasMove",
    "Reevaluate",
    "RollbackRefused",
    "ServingCheck",
    "promote_to_champion",
    "rollback_champion",
    "set_alias_checked",
    "set_challenger",
    "was_champion",
]

log = logging.getLogger(__name__)


@dataclass
class AliasMove:
    """What a promotion, challenger update or rollback did (JSON via :meth:`to_dict`)."""

    outcome: str  # promoted | already_champion | not_promoted_after_reevaluation | set |
    #               already_set | rolled_back | already_rolled_back
    model_name: str
    alias: str
    version: str | None
    previous_version: str | None
    current_version: str | None
    event: dict[str, Any] | None = None
    reevaluations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def moved(self) -> bool:
        return self.outcome in {"promoted", "set", "rolled_back"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lock_identity(actor: Actor) -> dict[str, Any]:
    """Who takes the promotion lock: a later try of the same task may reclaim it."""
    return {
        "holder": actor.description,
        "reclaim_key": actor.context.idempotency_key,
        "try_number": actor.context.try_number,
    }


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
    with PromotionLock(
        client,
        model_name,
        **_lock_identity(actor),
        **dict(lock_options or {}),
    ) as lock:
        current = current_alias_version(client, model_name, alias)
        if current == str(version):
            lock.verify()
            event = _retry_event(client, model_name, alias, str(version), actor, action="set")
            return AliasMove(
                "already_set", model_name, alias, str(version), current, current, event
            )
        lock.verify()
        set_alias_checked(client, model_name, alias, str(version))
        event = record_alias_event(
            client, model_name, make_event(alias, "set", str(version), current, actor)
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
) -> AliasMove:
    """Move ``@champion`` to ``version`` with compare-and-set under the promotion lock.

    ``evaluated_champion`` is the version the decision was made against (None: no champion).
    If the alias moved since, ``reevaluate(new_champion_version)`` must return a fresh
    decision record (``{"promote": bool, ...}``) before anything is written, or, with
    ``on_champion_changed="fail"``, :class:`PromotionError` stops the move.
    """
    if on_champion_changed not in {"reevaluate", "fail"}:
        raise ConfigError(
            f"on_champion_changed must be 'reevaluate' or 'fail', got {on_champion_changed!r}"
        )
    version = str(version)
    expected = None if evaluated_champion is None else str(evaluated_champion)
    reevaluations: list[dict[str, Any]] = []
    with PromotionLock(
        client,
        model_name,
        **_lock_identity(actor),
        **dict(lock_options or {}),
    ) as lock:
        while True:
            current = current_alias_version(client, model_name, alias)
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
                client, model_name, make_event(alias, "promote", version, current, actor)
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
            e.get("alias") == alias and str(e.get("version")) == str(version)
            for e in source(client, model_name)
        ):
            return True
    return False


def _rollback_target(
    model_name: str,
    alias: str,
    current: str | None,
    last: Mapping[str, Any] | None,
    to_version: str | None,
) -> str:
    """The version to roll back to: ``to_version``, else the previous champion."""
    if to_version is not None:
        return str(to_version)
    if current is None:
        raise PromotionError(f"{model_name} has no @{alias}: nothing to roll back")
    if (
        last is not None
        and last.get("version") != current
        and last.get("previous_version") == current
    ):
        # An earlier try set @alias back and died before recording it.
        return current
    if last is None or last.get("version") != current:
        raise PromotionError(
            f"the alias history of {model_name} does not say how @{alias} reached "
            f"version {current} (moved outside airflow-mlops?); pass to_version "
            "explicitly to roll back"
        )
    target = last.get("previous_version")
    if target is None:
        raise PromotionError(
            f"version {current} was the first @{alias} of {model_name}: there is no "
            "previous champion to roll back to"
        )
    return str(target)


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

    Without ``to_version`` the target is the ``previous_version`` of the move that put the
    current champion in place. Only versions the alias history shows as former holders of
    the alias are accepted (:class:`RollbackRefused` otherwise). ``serving_check(version)``
    runs before the move and must raise to stop it. Idempotent: a retry of the same task
    finds its own event and completes the history a dead try left half-written.
    """
    with PromotionLock(
        client,
        model_name,
        **_lock_identity(actor),
        **dict(lock_options or {}),
    ) as lock:
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
        target = _rollback_target(model_name, alias, current, last, to_version)
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
