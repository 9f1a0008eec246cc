"""A model's status as the MLOps page shows it, from registered-model tags; standard library only.

Two tags, both small JSON objects on the registered model, so the page reads them from
``search_registered_models`` with no call of its own:

- :data:`TAG_LAST_CT`, written by the CT DAG's ``summary`` task
  (:mod:`airflow_mlops.factories.chain`): the run's outcome and reason, its Airflow run, the
  versions, and the notifications it sent (event, notifier, delivered or not).
  :func:`last_ct_tag` encodes it; :func:`read_last_ct` decodes it for the page.
- ``mlops.frozen``, written by :func:`airflow_mlops.core.alias_moves.set_frozen`;
  :func:`read_frozen` decodes it for display (any value, even unreadable, means frozen, as
  :func:`airflow_mlops.core.alias_history.freeze_state` decides).

Tags are writable by anyone with MLflow write access, so the readers treat them as untrusted
input: every text is cut to a few hundred characters, lists are capped, and a value that is
not the expected JSON becomes a record marked ``unreadable`` instead of an error. The writer
and the page share this module; it imports neither MLflow nor Airflow.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_mlops.core.drift_verdict import MAX_MODEL_TAG_CHARS

__all__ = [
    "MAX_NOTIFICATIONS",
    "MAX_REASON_CHARS",
    "MAX_SHORT_CHARS",
    "MAX_TAG_CHARS_READ",
    "TAG_LAST_CT",
    "FreezeNote",
    "LastCt",
    "SentNotification",
    "last_ct_tag",
    "read_frozen",
    "read_last_ct",
]

#: Registered-model tag holding the newest CT run's outcome (read by the MLOps page).
TAG_LAST_CT = "mlops.last_ct"
#: The reason kept in the tag and shown on the page (the run summary holds all of it).
MAX_REASON_CHARS = 300
#: Outcome, ids, names, times: longer values are cut.
MAX_SHORT_CHARS = 120
#: Notification records kept in the tag and shown on the page.
MAX_NOTIFICATIONS = 20
#: A tag longer than this is not parsed at all (the writers stay under 5,000 characters;
#: a file-based or SQLite store does not enforce that).
MAX_TAG_CHARS_READ = 20_000


@dataclass
class SentNotification:
    """One delivery of the last CT run: which event, to which notifier, delivered or not."""

    event: str | None
    notifier: str | None
    ok: bool | None  # None: the record did not say


@dataclass
class LastCt:
    """The last CT run as the page shows it; ``unreadable`` when the tag was not usable."""

    outcome: str | None = None
    reason: str | None = None
    dag_id: str | None = None
    run_id: str | None = None
    at: str | None = None
    champion_version: str | None = None
    challenger_version: str | None = None
    notifications: list[SentNotification] = field(default_factory=list)
    #: Records beyond :data:`MAX_NOTIFICATIONS` (counted, not shown).
    more_notifications: int = 0
    unreadable: bool = False


@dataclass
class FreezeNote:
    """Who froze the model, when and why; ``unreadable`` when the tag was not a JSON object."""

    by: str | None = None
    at: str | None = None
    reason: str | None = None
    unreadable: bool = False


def last_ct_tag(
    summary: Mapping[str, Any],
    *,
    dag_id: str,
    run_id: str,
    at: str,
    max_chars: int = MAX_MODEL_TAG_CHARS,
) -> str:
    """The value of :data:`TAG_LAST_CT` for a CT run summary (``core.summary.RunSummary``
    as a dict, with the ``notifications`` records the summary task added).

    Fits ``max_chars``: the reason is cut to :data:`MAX_REASON_CHARS` and the notification
    records to :data:`MAX_NOTIFICATIONS`, then records are dropped from the end (counted in
    ``notifications_dropped``) until it fits.
    """
    records = [
        {
            "event": _short(n.get("event")),
            "notifier": _short(n.get("notifier")),
            "ok": n.get("ok") if isinstance(n.get("ok"), bool) else None,
        }
        for n in _mappings(summary.get("notifications"))
    ]
    record: dict[str, Any] = {
        "outcome": _short(summary.get("outcome")),
        "reason": _cut(summary.get("reason"), MAX_REASON_CHARS),
        "dag_id": _short(dag_id),
        "run_id": _short(run_id),
        "at": _short(at),
        "champion_version": _short(summary.get("champion_version")),
        "challenger_version": _short(summary.get("challenger_version")),
        "notifications": records[:MAX_NOTIFICATIONS],
        "notifications_dropped": max(0, len(records) - MAX_NOTIFICATIONS),
    }
    value = json.dumps(record, separators=(",", ":"))
    while len(value) > max_chars and record["notifications"]:
        record["notifications"].pop()
        record["notifications_dropped"] += 1
        value = json.dumps(record, separators=(",", ":"))
    return value


def read_last_ct(raw: str | None) -> LastCt | None:
    """The :data:`TAG_LAST_CT` record for display; None when the tag is absent.

    Every text is cut (:data:`MAX_REASON_CHARS`, :data:`MAX_SHORT_CHARS`), at most
    :data:`MAX_NOTIFICATIONS` records are kept; a tag that is too long, not JSON, not an
    object or without a text ``outcome`` gives ``LastCt(unreadable=True)``.
    """
    if raw is None or raw == "":
        return None
    record = _json_object(raw)
    if record is None or not isinstance(record.get("outcome"), str):
        return LastCt(unreadable=True)
    records = list(_mappings(record.get("notifications")))
    dropped = record.get("notifications_dropped")
    # The writer's count of records it left out; bounded so a forged one stays a short number.
    extra = min(max(dropped, 0), 10**6) if type(dropped) is int else 0
    return LastCt(
        outcome=_short(record["outcome"]),
        reason=_cut(record.get("reason"), MAX_REASON_CHARS),
        dag_id=_short(record.get("dag_id")),
        run_id=_short(record.get("run_id")),
        at=_short(record.get("at")),
        champion_version=_short(record.get("champion_version")),
        challenger_version=_short(record.get("challenger_version")),
        notifications=[
            SentNotification(
                event=_short(n.get("event")),
                notifier=_short(n.get("notifier")),
                ok=n.get("ok") if isinstance(n.get("ok"), bool) else None,
            )
            for n in records[:MAX_NOTIFICATIONS]
        ],
        more_notifications=max(0, len(records) - MAX_NOTIFICATIONS) + extra,
    )


def read_frozen(raw: str | None) -> FreezeNote | None:
    """The ``mlops.frozen`` record for display; None only when the tag is absent.

    Who is the requesting user when recorded, else the actor (as the CT summary says it).
    """
    if raw is None:
        return None
    record = _json_object(raw)
    if record is None:
        return FreezeNote(unreadable=True)
    return FreezeNote(
        by=_short(record.get("user")) or _short(record.get("by")),
        at=_short(record.get("at")),
        reason=_cut(record.get("reason"), MAX_REASON_CHARS),
    )


def _json_object(raw: str) -> dict[str, Any] | None:
    if not isinstance(raw, str) or len(raw) > MAX_TAG_CHARS_READ:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) else None


def _mappings(value: Any) -> Iterable[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _cut(value: Any, limit: int) -> str | None:
    """A text (numbers as text) on one line, cut to ``limit`` characters; else None."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = " ".join(str(value).split())
    if not text:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short(value: Any) -> str | None:
    return _cut(value, MAX_SHORT_CHARS)
