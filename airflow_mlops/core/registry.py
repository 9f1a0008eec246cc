"""Model registration and the champion lookup (MLflow 3 aliases).

**Registration** is idempotent: every version we create carries the task's idempotency key
as the tag ``mlops.idempotency_key`` (set atomically with the version), and a retry finds
that version instead of creating another one, if it was registered from the same logged
model and run (a task re-run after retraining registers the new model). A create request
replayed by MLflow's client retry can leave two versions: the lowest is kept and the other
deleted. The logged model's signature (``mlops.signature``, see ``core.provenance``) is
copied onto the version.

**The champion** is read here (:func:`current_alias_version`, :func:`resolve_champion`), for
promotion, for the modules that score or watch it (``core.evaluation``, ``core.champion``)
and for the provenance check of an alias URI (``core.provenance``). A missing model or alias
reads as "none"; any other registry error is raised, never taken for "no champion".

The alias moves (``@challenger``, ``@champion``, rollbacks) are in
:mod:`airflow_mlops.core.alias_moves`, their audit trail in
:mod:`airflow_mlops.core.alias_history`; both import this module, never the reverse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from airflow_mlops.core.errors import ConfigError, PromotionError
from airflow_mlops.core.lineage import (
    TAG_IDEMPOTENCY_KEY,
    TAG_SOURCE_MODEL_URI,
    TAG_SOURCE_RUN_ID,
    RunContext,
    signature_tags,
)
from airflow_mlops.core.model_uri import model_uri_for, parse_model_uri

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Champion",
    "ModelState",
    "Registration",
    "current_alias_version",
    "ensure_registered_model",
    "find_registered_version",
    "find_version_by_key",
    "iter_versions",
    "keep_first_version",
    "read_model_state",
    "register_version",
    "resolve_champion",
    "version_label",
    "wait_until_ready",
]

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"

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
    ready_timeout_seconds: float = 300.0,
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
    ready = wait_until_ready(
        client,
        model_name,
        str(existing.version),
        timeout_seconds=ready_timeout_seconds,
        known=existing,
    )
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
    timeout_seconds: float = 300.0,
    poll_seconds: float = 1.0,
    known: ModelVersion | None = None,
) -> ModelVersion:
    """Poll until the version is READY; FAILED_REGISTRATION or a timeout is an error.

    ``known``: the version as a search just returned it; it is the first reading, so a
    version already READY costs no request."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        mv, known = known or client.get_model_version(model_name, version), None
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
                f"version {version} of {model_name} is still {status} after {timeout_seconds:.0f}s"
            )
        time.sleep(poll_seconds)


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


@dataclass(frozen=True)
class ModelState:
    """A registered model's aliases and tags as one read saw them (empty: no such model).

    Under the promotion lock one read answers every question a move asks (where the alias
    points, whether the model is frozen, the history summary), instead of one read each.
    """

    aliases: Mapping[str, str]
    tags: Mapping[str, str]

    def alias_version(self, alias: str) -> str | None:
        version = self.aliases.get(alias)
        return None if version is None else str(version)


def read_model_state(client: MlflowClient, model_name: str) -> ModelState:
    """The registered model's aliases and tags; one registry read.

    Reads the registered model's alias map rather than ``get_model_version_by_alias``, whose
    error for a missing alias (INVALID_PARAMETER_VALUE) cannot be told apart from a real
    invalid request.
    """
    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return ModelState({}, {})
        raise
    return ModelState(dict(registered.aliases or {}), dict(registered.tags or {}))


def current_alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """Version number (str) that ``alias`` points at, or None; one registry read."""
    return read_model_state(client, model_name).alias_version(alias)


def version_label(version: str | None) -> str:
    """``"version 3"``, or ``"none"`` when there is no version (for messages)."""
    return "none" if version is None else f"version {version}"
