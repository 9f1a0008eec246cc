"""Model registry moves that are safe to retry, to race and to audit (MLflow 3 aliases).

**Registration** is idempotent: every version we create carries the task's idempotency key
as the tag ``mlops.idempotency_key`` (set atomically with the version), and a retry finds
that version instead of creating another one, if it was registered from the same logged
model and run (a task re-run after retraining registers the new model). A create request
replayed by MLflow's client retry can leave two versions: the lowest is kept and the other
deleted. The logged model's signature (``mlops.signature``, see ``core.provenance``) is
copied onto the version.

**Alias moves** (``@challenger``, ``@champion``, rollbacks) happen under a per-model
*promotion lock* and with compare-and-set:

- The lock (:class:`~airflow_mlops.core.promotion_lock.PromotionLock`) is a registered
  model ``<model>.mlops-lock`` created and deleted atomically by MLflow; see
  :mod:`airflow_mlops.core.promotion_lock`.
- Inside the lock, the champion is re-read just before the move. If it differs from the
  version the challenger was evaluated against, the challenger is re-scored against the
  new champion (``reevaluate`` callback, bounded) or the move stops with
  :class:`PromotionError` (``on_champion_changed="fail"``). After the move the alias is
  read back. Two promotions that race therefore serialise, and the second one is judged
  against whatever the first one installed: the better model ends as champion.

**The champion** is read here (:func:`current_alias_version`, :func:`resolve_champion`),
for promotion and for the modules that score or watch it (``core.evaluation``).

**History**: each alias move writes one JSON event (who, when, why, Airflow run, previous
version) as an append-only tag ``mlops.alias_event.<ms>-<id>`` on the version that received
the alias (model version tags hold up to 100,000 characters), and the newest events are
kept in the registered model's tag ``mlops.alias_history`` (a JSON list trimmed to fit
5,000 characters: the SQL column of registered-model tags is ``VARCHAR(5000)``). The
summary is rewritten only under the lock; the per-version events are never rewritten, so
the full history survives even if the summary is trimmed or edited by hand.

**Serving check**: :mod:`airflow_mlops.core.serving`; the promote operator runs it before it
moves ``@champion``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from airflow_mlops.core.errors import ConfigError, PromotionError
from airflow_mlops.core.lineage import TAG_IDEMPOTENCY_KEY, RunContext
from airflow_mlops.core.model_uri import model_uri_for, parse_model_uri
from airflow_mlops.core.promotion_lock import PromotionLock
from airflow_mlops.core.provenance import signature_tags

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "HISTORY_SUMMARY_MAX_CHARS",
    "HISTORY_SUMMARY_MAX_EVENTS",
    "TAG_ALIAS_EVENT_PREFIX",
    "TAG_ALIAS_HISTORY",
    "TAG_SERVING_CHECK",
    "TAG_SOURCE_MODEL_URI",
    "TAG_SOURCE_RUN_ID",
    "Actor",
    "AliasMove",
    "Champion",
    "Reevaluate",
    "Registration",
    "RollbackRefused",
    "ServingCheck",
    "alias_history",
    "current_alias_version",
    "ensure_in_summary",
    "ensure_registered_model",
    "find_registered_version",
    "find_version_by_key",
    "fit_summary",
    "iter_versions",
    "keep_first_version",
    "latest_alias_event",
    "make_event",
    "promote_to_champion",
    "recent_alias_history",
    "record_alias_event",
    "register_version",
    "resolve_champion",
    "rollback_champion",
    "set_alias_checked",
    "set_challenger",
    "version_label",
    "wait_until_ready",
    "was_champion",
]

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"

TAG_ALIAS_HISTORY = "mlops.alias_history"
TAG_ALIAS_EVENT_PREFIX = "mlops.alias_event."
TAG_SOURCE_MODEL_URI = "mlops.source_model_uri"
TAG_SOURCE_RUN_ID = "mlops.source_run_id"
TAG_SERVING_CHECK = "mlops.serving_check"

# Registered-model tag values live in a VARCHAR(5000) column in MLflow's SQL stores.
HISTORY_SUMMARY_MAX_CHARS = 4800
HISTORY_SUMMARY_MAX_EVENTS = 50
_SUMMARY_REASON_CHARS = 160
_EVENT_REASON_CHARS = 2000
_VERSION_PAGE = 200


# -- registration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """A registered model version and whether this call created it."""

    model_name: str
    version: str
    created: bool
    status: str
    source_model_uri: str
    run_id: str | None
    idempotency_key: str

    @property
    def model_uri(self) -> str:
        return model_uri_for(self.model_name, version=self.version)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_uri": self.model_uri}


def ensure_registered_model(client: MlflowClient, model_name: str) -> None:
    """Create the registered model if needed (safe when another task creates it first)."""
    try:
        client.create_registered_model(model_name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _quote(value: str) -> str:
    if "'" in value:
        raise ConfigError(f"{value!r} contains a single quote, which registry searches cannot hold")
    return f"'{value}'"


def iter_versions(
    client: MlflowClient, model_name: str, extra_filter: str = ""
) -> Iterator[ModelVersion]:
    """Every version of ``model_name`` (all pages), optionally narrowed by a filter clause."""
    filter_string = f"name = {_quote(model_name)}" + (
        f" AND {extra_filter}" if extra_filter else ""
    )
    token = None
    while True:
        page = client.search_model_versions(
            filter_string=filter_string, max_results=_VERSION_PAGE, page_token=token
        )
        yield from page
        token = page.token
        if not token:
            return


def find_version_by_key(client: MlflowClient, model_name: str, key: str) -> ModelVersion | None:
    """The version a previous try of this task created, found by its idempotency tag."""
    clause = f"tags.`{TAG_IDEMPOTENCY_KEY}` = {_quote(key)}"
    found = sorted(iter_versions(client, model_name, clause), key=lambda mv: int(mv.version))
    if len(found) > 1:
        log.warning(
            "%d versions of %s carry idempotency key %s (created outside this provider?); "
            "using the oldest, v%s",
            len(found),
            model_name,
            key,
            found[0].version,
        )
    return found[0] if found else None


def register_version(
    client: MlflowClient,
    model_name: str,
    model_uri: str,
    *,
    context: RunContext,
    run_id: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
    description: str | None = None,
    ready_timeout_s: float = 300.0,
) -> Registration:
    """Register ``model_uri`` (a ``models:/m-<id>`` logged model) as a version, once.

    A retry of the same task instance (same idempotency key) finds the version it created
    instead of creating a second one, but only a version of the same model and run: a task
    cleared and re-run after retraining registers its new model. A replayed create request
    (MLflow's client retries POSTs) that left two versions is repaired: the lowest version
    is kept and the others are deleted. The signature training put on the logged model
    (``mlops.signature``) is copied onto the version. The version is returned only once
    it is READY.
    """
    parsed = parse_model_uri(model_uri)
    model_uri_for(model_name, version=1)  # validates the registered model name
    key = context.idempotency_key
    logged = client.get_logged_model(parsed.model_id) if parsed.model_id else None
    # The version links to the run that logged the model even when the caller omits it.
    run_id = run_id or (logged.source_run_id if logged is not None else None) or None
    ensure_registered_model(client, model_name)
    existing = find_registered_version(client, model_name, key, parsed.uri, run_id)
    created = existing is None
    if existing is None:
        tags = {
            **dict(extra_tags or {}),
            **signature_tags(logged.tags if logged is not None else None),
            **context.as_tags(),
            TAG_SOURCE_MODEL_URI: parsed.uri,
            **({TAG_SOURCE_RUN_ID: run_id} if run_id else {}),
        }
        # Tags go in the create call itself: a crash right after it still leaves the key.
        client.create_model_version(
            name=model_name,
            source=parsed.uri,
            run_id=run_id,
            tags=tags,
            description=description,
            await_creation_for=0,
            model_id=parsed.model_id,
        )
        existing = keep_first_version(client, model_name, key, parsed.uri, run_id)
        log.info("Registered %s as version %s of %s.", parsed.uri, existing.version, model_name)
    else:
        log.info(
            "Version %s of %s already carries idempotency key %s for %s: reusing it.",
            existing.version,
            model_name,
            key,
            parsed.uri,
        )
    ready = wait_until_ready(client, model_name, str(existing.version), timeout_s=ready_timeout_s)
    return Registration(
        model_name=model_name,
        version=str(ready.version),
        created=created,
        status=str(ready.status),
        source_model_uri=parsed.uri,
        run_id=ready.run_id or run_id,
        idempotency_key=key,
    )


def _versions_of(
    client: MlflowClient, model_name: str, key: str, source_uri: str, run_id: str | None
) -> list[ModelVersion]:
    """Versions with this key registered from ``source_uri`` (and ``run_id``), oldest first."""
    clause = (
        f"tags.`{TAG_IDEMPOTENCY_KEY}` = {_quote(key)} "
        f"AND tags.`{TAG_SOURCE_MODEL_URI}` = {_quote(source_uri)}"
    )
    found = [
        mv
        for mv in iter_versions(client, model_name, clause)
        if run_id is None or (mv.run_id or None) in (None, run_id)
    ]
    return sorted(found, key=lambda mv: int(mv.version))


def find_registered_version(
    client: MlflowClient, model_name: str, key: str, source_uri: str, run_id: str | None
) -> ModelVersion | None:
    """The version an earlier try of this task registered from the same model, or None."""
    found = _versions_of(client, model_name, key, source_uri, run_id)
    return found[0] if found else None


def keep_first_version(
    client: MlflowClient, model_name: str, key: str, source_uri: str, run_id: str | None
) -> ModelVersion:
    """After a create: keep the lowest version of this key and source, delete the others.

    Only a replayed create request makes more than one (Airflow runs one try of a task
    instance at a time), so the others were never returned to anybody.
    """
    found = _versions_of(client, model_name, key, source_uri, run_id)
    if not found:
        raise PromotionError(
            f"version of {model_name} just created for key {key} is not found by a search"
        )
    first, duplicates = found[0], found[1:]
    for duplicate in duplicates:
        try:
            client.delete_model_version(model_name, str(duplicate.version))
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":  # another retry deleted it
                raise
    if duplicates:
        log.warning(
            "A replayed create left versions %s of %s for key %s: kept v%s, deleted the rest.",
            [mv.version for mv in found],
            model_name,
            key,
            first.version,
        )
    return first


def wait_until_ready(
    client: MlflowClient,
    model_name: str,
    version: str,
    *,
    timeout_s: float = 300.0,
    poll_s: float = 1.0,
) -> ModelVersion:
    """Poll until the version is READY; FAILED_REGISTRATION or a timeout is an error."""
    deadline = time.monotonic() + timeout_s
    while True:
        mv = client.get_model_version(model_name, version)
        status = str(mv.status)
        if status == "READY":
            return mv
        if status == "FAILED_REGISTRATION":
            raise PromotionError(
                f"version {version} of {model_name} failed registration: "
                f"{mv.status_message or 'no message'}"
            )
        if time.monotonic() >= deadline:
            raise PromotionError(
                f"version {version} of {model_name} is still {status} after {timeout_s:.0f}s"
            )
        time.sleep(poll_s)


# -- the champion ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Champion:
    """The registered version that held the champion alias when it was resolved."""

    name: str
    version: str
    run_id: str | None

    @property
    def model_uri(self) -> str:
        return model_uri_for(self.name, version=self.version)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "model_uri": self.model_uri, "run_id": self.run_id}


def resolve_champion(
    client: MlflowClient, model_name: str, alias: str = CHAMPION
) -> Champion | None:
    """The version holding ``alias`` now, or None (no registered model, or no alias yet)."""
    version = current_alias_version(client, model_name, alias)
    if version is None:
        return None
    mv = client.get_model_version(model_name, version)
    return Champion(name=model_name, version=str(mv.version), run_id=mv.run_id or None)


def current_alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """Version number (str) that ``alias`` points at, or None; one registry read.

    Reads the registered model's alias map rather than ``get_model_version_by_alias``, whose
    error for a missing alias (INVALID_PARAMETER_VALUE) cannot be told apart from a real
    invalid request.
    """
    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = (registered.aliases or {}).get(alias)
    return None if version is None else str(version)


# -- alias history --------------------------------------------------------------------------


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
    alias: str, action: str, version: str, previous: str | None, actor: Actor
) -> dict[str, Any]:
    c = actor.context
    return {
        "id": uuid.uuid4().hex[:8],
        "at": _now_iso(),
        "alias": alias,
        "action": action,
        "version": str(version),
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
    try:
        tags = client.get_registered_model(model_name).tags or {}
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    try:
        events = json.loads(tags.get(TAG_ALIAS_HISTORY, "[]"))
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
    client: MlflowClient, model_name: str, event: dict[str, Any]
) -> dict[str, Any]:
    """Append ``event``: a per-version tag (never rewritten) and the registered-model summary.

    Call with the promotion lock held: the summary is a read-modify-write.
    """
    stamp = int(time.time() * 1000)
    client.set_model_version_tag(
        model_name,
        event["version"],
        f"{TAG_ALIAS_EVENT_PREFIX}{stamp:013d}-{event['id']}",
        json.dumps(event, separators=(",", ":")),
    )
    summary = [*recent_alias_history(client, model_name), _compact(event)]
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
    """The newest move of ``alias``: from the summary, else from the full history."""
    for source in (recent_alias_history, alias_history):
        moves = [e for e in source(client, model_name) if e.get("alias") == alias]
        if moves:
            return moves[-1]
    return None


# -- alias moves ----------------------------------------------------------------------------


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


def _find_event_by_key(
    client: MlflowClient, model_name: str, version: str, alias: str, key: str
) -> dict[str, Any] | None:
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
    event = _find_event_by_key(client, model_name, version, alias, actor.context.idempotency_key)
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
            None if current is None else _find_event_by_key(client, model_name, current, alias, key)
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


def version_label(version: str | None) -> str:
    """``"version 3"``, or ``"none"`` when there is no version (for messages)."""
    return "none" if version is None else f"version {version}"
