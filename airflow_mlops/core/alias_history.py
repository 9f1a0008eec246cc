"""The audit trail of alias moves, stored in the MLflow registry itself.

Each alias move writes one JSON event (who, when, why, Airflow run, previous version) as an
append-only tag ``mlops.alias_event.<ms>-<id>`` on the version that received the alias
(model version tags hold up to 100,000 characters), and the newest events are kept in the
registered model's tag ``mlops.alias_history`` (a JSON list trimmed to fit 5,000 characters:
the SQL column of registered-model tags is ``VARCHAR(5000)``). The summary is rewritten only
under the promotion lock; the per-version events are never rewritten, so the full history
survives even if the summary is trimmed or edited by hand.

A model can be *frozen*: the registered-model tag ``mlops.frozen`` (JSON ``{by, user, reason,
at, ...}``) stops promotions from moving ``@champion`` until it is removed. Freezing and
unfreezing are recorded in the same history (actions ``freeze``/``unfreeze``, on the current
champion's version, or only in the summary when there is no champion); they are not alias
moves, so :func:`latest_alias_event` skips them.

The moves that write these events are in :mod:`airflow_mlops.core.alias_moves`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mlflow.tracking import MlflowClient

from airflow_mlops.core.lineage import RunContext
from airflow_mlops.core.registry import ModelState, iter_versions, read_model_state

__all__ = [
    "HISTORY_SUMMARY_MAX_CHARS",
    "HISTORY_SUMMARY_MAX_EVENTS",
    "MOVE_ACTIONS",
    "TAG_ALIAS_EVENT_PREFIX",
    "TAG_ALIAS_HISTORY",
    "TAG_FROZEN",
    "Actor",
    "alias_history",
    "ensure_in_summary",
    "find_event_by_key",
    "fit_summary",
    "freeze_state",
    "frozen_of",
    "frozen_reason",
    "history_of",
    "latest_alias_event",
    "make_event",
    "recent_alias_history",
    "record_alias_event",
]

log = logging.getLogger(__name__)

TAG_ALIAS_HISTORY = "mlops.alias_history"
TAG_ALIAS_EVENT_PREFIX = "mlops.alias_event."
TAG_FROZEN = "mlops.frozen"
#: History actions that move an alias; ``freeze``/``unfreeze`` events move nothing.
MOVE_ACTIONS = frozenset({"set", "promote", "rollback"})

# Registered-model tag values live in a VARCHAR(5000) column in MLflow's SQL stores.
HISTORY_SUMMARY_MAX_CHARS = 4800
HISTORY_SUMMARY_MAX_EVENTS = 50
_SUMMARY_REASON_CHARS = 160
_EVENT_REASON_CHARS = 2000


@dataclass(frozen=True)
class Actor:
    """Who moves an alias and why; stored in every history event."""

    reason: str
    context: RunContext = field(default_factory=RunContext)
    user: str | None = None  # e.g. the approver of a manual promotion
    decision_uri: str | None = None

    @property
    def description(self) -> str:
        who = f"{self.user} via " if self.user else ""
        c = self.context
        return f"{who}airflow:{c.dag_id}/{c.run_id}/{c.task_id}"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def make_event(
    alias: str, action: str, version: str | None, previous: str | None, actor: Actor
) -> dict[str, Any]:
    """One history event: ``action`` moved ``alias`` from ``previous`` to ``version``.

    ``version`` is None only for a freeze or unfreeze of a model without a champion."""
    c = actor.context
    return {
        "id": uuid.uuid4().hex[:8],
        "at": _now_iso(),
        "alias": alias,
        "action": action,
        "version": None if version is None else str(version),
        "previous_version": None if previous is None else str(previous),
        "by": actor.description,
        "user": actor.user,
        "reason": actor.reason[:_EVENT_REASON_CHARS],
        "dag_id": c.dag_id,
        "run_id": c.run_id,
        "task_id": c.task_id,
        "try_number": c.try_number,
        "idempotency_key": c.idempotency_key,
        "decision_uri": actor.decision_uri,
    }


def _compact(event: Mapping[str, Any]) -> dict[str, Any]:
    """Summary form: what an auditor scans first; the full event stays on the version."""
    keep = ("id", "at", "alias", "action", "version", "previous_version", "by", "idempotency_key")
    compact = {k: event.get(k) for k in keep}
    compact["reason"] = str(event.get("reason") or "")[:_SUMMARY_REASON_CHARS]
    return compact


def fit_summary(events: list[dict[str, Any]], max_chars: int = HISTORY_SUMMARY_MAX_CHARS) -> str:
    """JSON of the newest events that fits ``max_chars`` (oldest dropped first)."""
    kept = events[-HISTORY_SUMMARY_MAX_EVENTS:]
    while True:
        text = json.dumps(kept, separators=(",", ":"))
        if len(text) <= max_chars or not kept:
            return text
        kept = kept[1:]


def recent_alias_history(client: MlflowClient, model_name: str) -> list[dict[str, Any]]:
    """The summary kept on the registered model (newest last); [] when absent or unreadable."""
    return history_of(read_model_state(client, model_name), model_name)


def history_of(state: ModelState, model_name: str) -> list[dict[str, Any]]:
    """The history summary in a registered model's tags (newest last); [] when absent or
    unreadable."""
    try:
        events = json.loads(state.tags.get(TAG_ALIAS_HISTORY, "[]"))
    except json.JSONDecodeError:
        log.warning("Tag %s of %s is not JSON; ignoring it.", TAG_ALIAS_HISTORY, model_name)
        return []
    return [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []


def alias_history(client: MlflowClient, model_name: str) -> list[dict[str, Any]]:
    """The full history, from the append-only events on every version (oldest first)."""
    events = []
    for mv in iter_versions(client, model_name):
        for key, value in (mv.tags or {}).items():
            if key.startswith(TAG_ALIAS_EVENT_PREFIX):
                try:
                    events.append(json.loads(value))
                except json.JSONDecodeError:
                    log.warning("Unreadable history tag %s on %s v%s", key, model_name, mv.version)
    events.sort(key=lambda e: (str(e.get("at")), str(e.get("id"))))
    return events


def record_alias_event(
    client: MlflowClient,
    model_name: str,
    event: dict[str, Any],
    state: ModelState | None = None,
) -> dict[str, Any]:
    """Append ``event``: a per-version tag (never rewritten) and the registered-model summary.

    Call with the promotion lock held: the summary is a read-modify-write. ``state``: the
    model as read under that same lock hold (alias writes leave its tags as they were), so
    the summary is not read again. An event without a version (a freeze of a model that has
    no champion) goes to the summary only.
    """
    stamp = int(time.time() * 1000)
    if event["version"] is not None:
        client.set_model_version_tag(
            model_name,
            event["version"],
            f"{TAG_ALIAS_EVENT_PREFIX}{stamp:013d}-{event['id']}",
            json.dumps(event, separators=(",", ":")),
        )
    earlier = (
        recent_alias_history(client, model_name) if state is None else history_of(state, model_name)
    )
    summary = [*earlier, _compact(event)]
    client.set_registered_model_tag(model_name, TAG_ALIAS_HISTORY, fit_summary(summary))
    return event


def ensure_in_summary(client: MlflowClient, model_name: str, event: Mapping[str, Any]) -> bool:
    """Add ``event`` to the registered-model summary if a crashed try never wrote it there.

    :func:`record_alias_event` writes the per-version event first and the summary second; a
    try that died in between leaves an event the summary lacks. Call with the lock held.
    Returns True when the summary was repaired.
    """
    summary = recent_alias_history(client, model_name)
    if any(e.get("id") == event.get("id") for e in summary):
        return False
    repaired = sorted([*summary, _compact(event)], key=lambda e: str(e.get("at")))
    client.set_registered_model_tag(model_name, TAG_ALIAS_HISTORY, fit_summary(repaired))
    log.warning(
        "The alias history summary of %s lacked event %s (@%s -> v%s) written by an earlier "
        "try: repaired.",
        model_name,
        event.get("id"),
        event.get("alias"),
        event.get("version"),
    )
    return True


def latest_alias_event(client: MlflowClient, model_name: str, alias: str) -> dict[str, Any] | None:
    """The newest move of ``alias`` (freeze events skipped): from the summary, else from the
    full history."""
    for source in (recent_alias_history, alias_history):
        moves = [
            e
            for e in source(client, model_name)
            if e.get("alias") == alias and e.get("action", "promote") in MOVE_ACTIONS
        ]
        if moves:
            return moves[-1]
    return None


def find_event_by_key(
    client: MlflowClient, model_name: str, version: str, alias: str, key: str
) -> dict[str, Any] | None:
    """The event on ``version`` that task ``key`` wrote for ``alias``, or None (a retry's
    way to find what its earlier try recorded)."""
    mv = client.get_model_version(model_name, version)
    for tag, value in (mv.tags or {}).items():
        if tag.startswith(TAG_ALIAS_EVENT_PREFIX):
            try:
                event = json.loads(value)
            except json.JSONDecodeError:
                continue
            if event.get("alias") == alias and event.get("idempotency_key") == key:
                return event
    return None


def freeze_state(client: MlflowClient, model_name: str) -> dict[str, Any] | None:
    """The model's freeze record (``{by, user, reason, at, ...}``), or None when not frozen."""
    return frozen_of(read_model_state(client, model_name))


def frozen_of(state: ModelState) -> dict[str, Any] | None:
    """The freeze record in a registered model's tags, or None when not frozen.

    A tag that is not a JSON object still counts as frozen (fail closed): someone meant to
    stop promotions, and only an unfreeze may lift that.
    """
    raw = state.tags.get(TAG_FROZEN)
    if raw is None:
        return None
    try:
        state = json.loads(raw)
    except json.JSONDecodeError:
        state = None
    if not isinstance(state, dict):
        return {"by": None, "user": None, "reason": f"unreadable {TAG_FROZEN} tag: {raw[:100]!r}"}
    return state


def frozen_reason(state: Mapping[str, Any]) -> str:
    """``frozen: <reason> (by <who>)``: what a CT run that could not promote says."""
    who = state.get("user") or state.get("by") or "unknown"
    return f"frozen: {state.get('reason') or 'no reason given'} (by {who})"
