"""Is a champion stale? The check behind the ``stale_champion`` notification.

A champion is stale when its last change or the last successful CT run of its model is older
than ``notifications.stale_after``. Both are read from the registered model in one call
(its aliases and tags; a second call only when the history lacks the champion's move):

- **last champion change**: the newest move of ``@champion`` in the ``mlops.alias_history``
  summary (promote, rollback, set) when it moved to the current champion; else (the alias was
  set outside the provider) the champion version's creation time, the earliest it can be.
- **last successful CT run**: the newest of ``mlops.last_ct``'s time when that run ended
  ``promoted``, ``not promoted`` or ``frozen`` (it trained, evaluated and decided), the newest
  promotion in the history (a promotion ends a successful run), and the time an earlier check
  remembered in :data:`TAG_STALENESS` (``mlops.last_ct`` holds only the newest run, so a failed
  run after a success would hide the success). A run that skipped because nothing changed does
  not count: the model was not refreshed. With nothing recorded, the champion's change.

**Debounce.** :data:`TAG_STALENESS` also records, per condition, the key of the staleness that
was alerted (``champion``: version and change time; ``ct``: the last success). The same
staleness is alerted once; when the champion changes or a CT run succeeds, a later staleness
has a new key and is alerted again. The record is written only after a delivery succeeded, so
an alert that no notifier delivered is tried again at the next check.

Tags are untrusted input: an unreadable time or record reads as unknown, never as an error.
No Airflow import; the registry is read through the ``client`` passed in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow_mlops.core.alias_history import MOVE_ACTIONS, TAG_ALIAS_HISTORY
from airflow_mlops.core.model_status import MAX_TAG_CHARS_READ, TAG_LAST_CT, LastCt, read_last_ct
from airflow_mlops.core.notifications import Notification
from airflow_mlops.core.registry import CHAMPION

__all__ = [
    "CT_SUCCESS_OUTCOMES",
    "STALE_EVENT",
    "TAG_STALENESS",
    "Staleness",
    "assess_staleness",
    "format_age",
    "read_staleness",
    "record_check",
    "stale_digest",
    "stale_message",
]

STALE_EVENT = "stale_champion"
#: Registered-model tag: the last success a check saw and the staleness already alerted.
TAG_STALENESS = "mlops.staleness"
#: ``mlops.last_ct`` outcomes of a CT run that trained, evaluated and decided.
CT_SUCCESS_OUTCOMES = frozenset({"promoted", "not promoted", "frozen"})


@dataclass(frozen=True)
class Staleness:
    """One model's staleness at ``now``; ``reasons`` is empty when it is fresh."""

    model_name: str
    now: datetime
    stale_after: timedelta
    champion_version: str | None = None
    champion_changed_at: datetime | None = None
    #: ``promote``/``rollback``/``set`` from the history, or ``version created``.
    champion_change: str | None = None
    last_ct_ok_at: datetime | None = None
    last_ct: LastCt | None = None
    #: Condition (``champion``/``ct``) → key of the staleness, for each stale condition.
    stale: dict[str, str] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    #: The stored :data:`TAG_STALENESS` record (``{}`` when absent or unreadable).
    record: dict[str, Any] = field(default_factory=dict)
    note: str | None = None  # why nothing was assessed (no model, no champion)

    @property
    def is_stale(self) -> bool:
        return bool(self.stale)

    @property
    def due(self) -> bool:
        """Stale in a way not alerted yet."""
        alerted = self.record.get("alerted")
        alerted = alerted if isinstance(alerted, Mapping) else {}
        return any(alerted.get(condition) != key for condition, key in self.stale.items())

    @property
    def reason(self) -> str:
        if not self.reasons:
            return self.note or "fresh"
        return f"{' and '.join(self.reasons)}; stale after {format_age(self.stale_after)}"

    @property
    def age(self) -> timedelta | None:
        """Time since the older of the two anchors (orders a digest, oldest first)."""
        anchors = [t for t in (self.champion_changed_at, self.last_ct_ok_at) if t is not None]
        return self.now - min(anchors) if anchors else None

    def to_dict(self) -> dict[str, Any]:
        """Small JSON for XCom and the task log."""
        return {
            "model_name": self.model_name,
            "champion_version": self.champion_version,
            "stale": self.is_stale,
            "due": self.due,
            "reason": self.reason,
            "champion_changed_at": _iso(self.champion_changed_at),
            "last_ct_ok_at": _iso(self.last_ct_ok_at),
        }


def format_age(age: timedelta) -> str:
    """``20 days``, ``36 hours``, ``1 day``: whole units, rounded down."""
    seconds = max(0, int(age.total_seconds()))
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and (unit != "week" or seconds % size == 0):
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def assess_staleness(
    model_name: str,
    tags: Mapping[str, str],
    champion_version: str | None,
    stale_after: timedelta,
    now: datetime,
    champion_created_at: datetime | None = None,
) -> Staleness:
    """The staleness of ``model_name`` from its registered-model ``tags`` (pure)."""
    record = _json(tags.get(TAG_STALENESS), dict) or {}
    base = Staleness(model_name, now, stale_after, record=record)
    if champion_version is None:
        return _replace(base, note="no champion yet")
    moves = [
        e
        for e in _json(tags.get(TAG_ALIAS_HISTORY), list) or []
        if isinstance(e, dict)
        and e.get("alias") == CHAMPION
        and e.get("action", "promote") in MOVE_ACTIONS
    ]
    last_move = moves[-1] if moves else None
    changed_at, change = champion_created_at, "version created"
    if last_move and str(last_move.get("version")) == str(champion_version):
        changed_at = _time(last_move.get("at")) or champion_created_at
        change = str(last_move.get("action", "promote"))
    last_ct = read_last_ct(tags.get(TAG_LAST_CT))
    successes = [_time(record.get("last_ct_ok_at"))]
    successes += [_time(e.get("at")) for e in moves if e.get("action", "promote") == "promote"]
    if last_ct is not None and last_ct.outcome in CT_SUCCESS_OUTCOMES:
        successes.append(_time(last_ct.at))
    known = [t for t in successes if t is not None]
    last_ok = max(known) if known else changed_at
    stale: dict[str, str] = {}
    reasons: list[str] = []
    if changed_at is not None and now - changed_at >= stale_after:
        stale["champion"] = f"v{champion_version}@{_iso(changed_at)}"
        reasons.append(
            f"@champion v{champion_version} unchanged for {format_age(now - changed_at)} "
            f"({change} on {_day(changed_at)})"
        )
    if last_ok is not None and now - last_ok >= stale_after:
        stale["ct"] = _iso(last_ok) or ""
        reasons.append(f"no successful CT run for {format_age(now - last_ok)}{_last_ct(last_ct)}")
    return _replace(
        base,
        note=None if changed_at else "the time of the last champion change is unknown",
        champion_version=str(champion_version),
        champion_changed_at=changed_at,
        champion_change=change,
        last_ct_ok_at=last_ok,
        last_ct=last_ct,
        stale=stale,
        reasons=tuple(reasons),
    )


def read_staleness(
    client: Any, model_name: str, stale_after: timedelta, now: datetime | None = None
) -> Staleness:
    """:func:`assess_staleness` of ``model_name`` as the registry holds it (an ``MlflowClient``).

    A missing registered model reads as "no registered model yet" (nothing to be stale); any
    other registry error is raised.
    """
    now = now or datetime.now(timezone.utc)
    try:
        model = client.get_registered_model(model_name)
    except Exception as err:
        if getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            return Staleness(model_name, now, stale_after, note="no registered model yet")
        raise
    tags = dict(model.tags or {})
    champion = (model.aliases or {}).get(CHAMPION)
    champion = None if champion is None else str(champion)
    assessed = assess_staleness(model_name, tags, champion, stale_after, now)
    if champion is not None and assessed.champion_change == "version created":
        created = client.get_model_version(model_name, champion).creation_timestamp
        created_at = _from_millis(created)
        assessed = assess_staleness(model_name, tags, champion, stale_after, now, created_at)
    return assessed


def record_check(
    client: Any, staleness: Staleness, *, alerted: bool, reason: str | None = None
) -> bool:
    """Write :data:`TAG_STALENESS` when it changes: the last success seen and, with
    ``alerted``, the staleness just delivered. Returns True when the tag was written.

    Idempotent: a retried check computes the same record and writes nothing.
    """
    if staleness.champion_version is None:
        return False
    old = staleness.record
    new: dict[str, Any] = {
        "last_ct_ok_at": _iso(staleness.last_ct_ok_at),
        "alerted": dict(old.get("alerted") or {}) if isinstance(old.get("alerted"), dict) else {},
        "alerted_at": old.get("alerted_at"),
        "reason": old.get("reason"),
    }
    if alerted:
        new["alerted"].update(staleness.stale)
        new["alerted_at"] = _iso(staleness.now)
        new["reason"] = (reason or staleness.reason)[:300]
    if new == {k: old.get(k) for k in new}:
        return False
    value = json.dumps(new, separators=(",", ":"))
    client.set_registered_model_tag(staleness.model_name, TAG_STALENESS, value)
    return True


def stale_message(staleness: Staleness, links: Mapping[str, str | None]) -> Notification:
    """The ``stale_champion`` message: model, champion version, how old and why (the
    reason names each stale condition with its age), links."""
    return Notification(
        event=STALE_EVENT,
        model_name=staleness.model_name,
        reason=staleness.reason,
        champion_version=staleness.champion_version,
        links=dict(links),
    )


def stale_digest(
    pipeline_model: str, stale: list[Staleness], links: Mapping[str, str | None], shown: int = 10
) -> Notification:
    """One ``stale_champion`` message for many segment models (one message each would flood
    the channel): how many, the oldest ``shown`` with their age, the bound."""
    oldest = sorted(stale, key=lambda s: s.age or timedelta(0), reverse=True)
    parts = [
        f"{s.model_name} v{s.champion_version} ({format_age(s.age or timedelta(0))})"
        for s in oldest[:shown]
    ]
    more = f" and {len(stale) - shown} more" if len(stale) > shown else ""
    bound = format_age(stale[0].stale_after) if stale else "?"
    return Notification(
        event=STALE_EVENT,
        model_name=pipeline_model,
        reason=f"{len(stale)} segment champions stale (after {bound}): {', '.join(parts)}{more}",
        links=dict(links),
    )


# -- small readers ---------------------------------------------------------------------------


def _replace(base: Staleness, **changes: Any) -> Staleness:
    from dataclasses import replace

    return replace(base, **changes)


def _json(raw: Any, kind: type) -> Any:
    if not isinstance(raw, str) or len(raw) > MAX_TAG_CHARS_READ:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, kind) else None


def _time(value: Any) -> datetime | None:
    """An ISO time from a tag (naive ones taken as UTC); None when unreadable."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _from_millis(millis: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(millis) / 1000, tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def _day(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _last_ct(last_ct: LastCt | None) -> str:
    if last_ct is None or last_ct.unreadable or not last_ct.outcome:
        return ""
    if last_ct.outcome in CT_SUCCESS_OUTCOMES:
        return ""
    when = _time(last_ct.at)
    on = f" on {_day(when)}" if when else ""
    return f" (the last CT run ended {last_ct.outcome}{on})"
