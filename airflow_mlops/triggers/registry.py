"""Triggers that wait on the MLflow model registry from the triggerer, freeing worker slots.

Also holds the one-shot registry checks (:func:`model_version_state`, :func:`alias_state`)
that the sensors' ``poke`` and the triggers' loops share, so both modes decide the same way.

MLflow's client is synchronous: each poll runs in a worker thread through asgiref's
``sync_to_async`` (so a connection lookup inside it can reach Airflow's API from the
triggerer), and the event loop never blocks. The triggerer runs many triggers in one
process, so polls use ``MlflowHook.client()``: each client carries its own connection's
credentials and nothing is placed in the process environment for other triggers to see.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_mlops.core.model_uri import model_uri_for

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from airflow_mlops.hooks.mlflow import MlflowHook

__all__ = [
    "ERROR",
    "FAILED",
    "FAILED_REGISTRATION",
    "PENDING_REGISTRATION",
    "READY",
    "SUCCESS",
    "ModelAliasChangedTrigger",
    "ModelVersionReadyTrigger",
    "alias_state",
    "model_version_state",
]

# Event statuses. "success" completes the sensor; "failed" fails it without retries (the
# registry said no); "error" fails it (a retry may help, e.g. the server was unreachable).
SUCCESS = "success"
FAILED = "failed"
ERROR = "error"

# Model version statuses as MLflow reports them.
READY = "READY"
PENDING_REGISTRATION = "PENDING_REGISTRATION"
FAILED_REGISTRATION = "FAILED_REGISTRATION"

_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


def _is_not_found(err: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and err.error_code in _NOT_FOUND_CODES


def _experiment_of(client: MlflowClient, run_id: str | None) -> str | None:
    """The experiment of the run that produced a version (for the run link)."""
    if not run_id:
        return None
    return client.get_run(run_id).info.experiment_id


def model_version_state(
    client: MlflowClient, model_name: str, version: int | str
) -> dict[str, Any]:
    """One check of a model version: ``{"state": "ready"|"pending"|"failed"|"missing", ...}``.

    The returned dict is JSON-safe (it becomes a trigger event and an XCom value).
    """
    model_uri = model_uri_for(model_name, version=version)  # refuses unsafe names/versions
    base: dict[str, Any] = {"model_name": model_name, "version": str(version)}
    try:
        mv = client.get_model_version(model_name, str(version))
    except Exception as err:
        if _is_not_found(err):
            return {**base, "state": "missing"}
        raise
    status = str(mv.status)
    if status == READY:
        return {
            **base,
            "state": "ready",
            "registry_status": status,
            "model_uri": model_uri,
            "run_id": mv.run_id or None,
            "experiment_id": _experiment_of(client, mv.run_id),
        }
    if status == FAILED_REGISTRATION:
        return {
            **base,
            "state": "failed",
            "registry_status": status,
            "message": mv.status_message or "",
        }
    return {**base, "state": "pending", "registry_status": status}


def alias_state(
    client: MlflowClient, model_name: str, alias: str, previous_version: int | str | None
) -> dict[str, Any]:
    """One check of an alias: ``{"state": "changed"|"unchanged"|"missing", "version": ...}``.

    "changed" means the alias exists and points at a version other than ``previous_version``
    (``None``: any version counts, i.e. waiting for the alias to be set at all). A move back
    to an older version (a rollback) is a change too.
    """
    model_uri_for(model_name, alias=alias)  # refuses unsafe names/aliases
    previous = None if previous_version in (None, "") else str(previous_version)
    base: dict[str, Any] = {
        "model_name": model_name,
        "alias": alias,
        "previous_version": previous,
    }
    from airflow_mlops.core.registry import current_alias_version

    # Missing model or alias -> None; any other registry error (server down) is raised.
    version = current_alias_version(client, model_name, alias)
    if version is None:
        return {**base, "state": "missing", "version": None}
    if version == previous:
        return {**base, "state": "unchanged", "version": version}
    mv = client.get_model_version(model_name, version)
    return {
        **base,
        "state": "changed",
        "version": version,
        "model_uri": model_uri_for(model_name, version=version),
        "run_id": mv.run_id or None,
        "experiment_id": _experiment_of(client, mv.run_id),
    }


class _RegistryPollTrigger(BaseTrigger):
    """Polls one registry check every ``poll_interval`` seconds until it is conclusive.

    ``poll_interval`` keeps the name Airflow's own triggers use (the sensors pass their
    ``poke_interval``). Subclasses list the attributes that rebuild them in ``_fields``.
    """

    _fields: tuple[str, ...] = ()

    def __init__(self, *, mlflow_conn_id: str, poll_interval: float = 30.0) -> None:
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id
        self.poll_interval = float(poll_interval)
        self._hook: MlflowHook | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        fields = (*self._fields, "mlflow_conn_id", "poll_interval")
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {name: getattr(self, name) for name in fields},
        )

    def _check(self, client: MlflowClient) -> dict[str, Any]:
        raise NotImplementedError

    def _event_for(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """The event to fire for ``state``, or ``None`` to keep waiting."""
        raise NotImplementedError

    def _poll_once(self) -> dict[str, Any]:
        """Runs in a worker thread: builds the hook there (connection lookup is blocking)."""
        from airflow_mlops.hooks.mlflow import MlflowHook

        if self._hook is None:
            self._hook = MlflowHook(mlflow_conn_id=self.mlflow_conn_id)
        with self._hook.client() as client:
            return self._check(client)

    async def _run_in_thread(self, func: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        from asgiref.sync import sync_to_async

        return await sync_to_async(func, thread_sensitive=False)()

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                state = await self._run_in_thread(self._poll_once)
            except Exception as err:
                self.log.exception("Registry check failed")
                yield TriggerEvent(
                    {"status": ERROR, "message": f"{type(err).__name__}: {err}"[:2000]}
                )
                return
            event = self._event_for(state)
            if event is not None:
                yield TriggerEvent(event)
                return
            self.log.info("Still waiting: %s", state)
            await asyncio.sleep(self.poll_interval)


class ModelVersionReadyTrigger(_RegistryPollTrigger):
    """Fires when ``model_name`` version ``version`` is READY (or failed registration).

    :param model_name: registered model name.
    :param version: version number.
    :param mlflow_conn_id: MLflow connection id.
    :param poll_interval: seconds between checks.
    """

    _fields = ("model_name", "version")

    def __init__(
        self,
        *,
        model_name: str,
        version: int | str,
        mlflow_conn_id: str,
        poll_interval: float = 30.0,
    ) -> None:
        super().__init__(mlflow_conn_id=mlflow_conn_id, poll_interval=poll_interval)
        self.model_name = model_name
        self.version = str(version)

    def _check(self, client: MlflowClient) -> dict[str, Any]:
        return model_version_state(client, self.model_name, self.version)

    def _event_for(self, state: dict[str, Any]) -> dict[str, Any] | None:
        if state["state"] == "ready":
            return {**state, "status": SUCCESS}
        if state["state"] == "failed":
            return {
                **state,
                "status": FAILED,
                "message": (
                    f"Model version {self.model_name}/{self.version} failed registration: "
                    f"{state.get('message') or 'no message'}"
                ),
            }
        return None


class ModelAliasChangedTrigger(_RegistryPollTrigger):
    """Fires when ``model_name@alias`` points at a version other than ``previous_version``.

    :param model_name: registered model name.
    :param alias: alias to watch (``champion``).
    :param previous_version: the version already known; ``None`` waits for the alias to exist.
    :param mlflow_conn_id: MLflow connection id.
    :param poll_interval: seconds between checks.
    """

    _fields = ("model_name", "alias", "previous_version")

    def __init__(
        self,
        *,
        model_name: str,
        alias: str,
        previous_version: int | str | None,
        mlflow_conn_id: str,
        poll_interval: float = 30.0,
    ) -> None:
        super().__init__(mlflow_conn_id=mlflow_conn_id, poll_interval=poll_interval)
        self.model_name = model_name
        self.alias = alias
        self.previous_version = None if previous_version in (None, "") else str(previous_version)

    def _check(self, client: MlflowClient) -> dict[str, Any]:
        return alias_state(client, self.model_name, self.alias, self.previous_version)

    def _event_for(self, state: dict[str, Any]) -> dict[str, Any] | None:
        if state["state"] == "changed":
            return {**state, "status": SUCCESS}
        return None
