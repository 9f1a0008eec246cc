"""Sensors on the MLflow model registry: a version becoming READY, an alias moving.

Both follow the deferrable pattern of the Amazon provider: ``deferrable`` defaults from
Airflow's ``[operators] default_deferrable``; the registry is checked once before deferring
(no pointless deferral when the condition already holds); ``execute_complete`` validates the
trigger's event. Poke and deferred modes share the same check functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.hooks.mlflow import DEFAULT_CONN_ID
from airflow_mlops.links.mlflow import mlflow_links, persist_mlflow_links
from airflow_mlops.operators.base import MlopsHookMixin
from airflow_mlops.triggers.registry import (
    ERROR,
    FAILED,
    SUCCESS,
    ModelAliasChangedTrigger,
    ModelVersionReadyTrigger,
    alias_state,
    model_version_state,
)

if TYPE_CHECKING:
    from airflow.sdk import Context


__all__ = ["ModelAliasChangedSensor", "ModelVersionReadySensor", "default_deferrable"]


def default_deferrable() -> bool:
    """``[operators] default_deferrable`` from Airflow's configuration (False if unset)."""
    return conf.getboolean("operators", "default_deferrable", fallback=False)


class _RegistrySensor(MlopsHookMixin, BaseSensorOperator):
    """Shared plumbing: the hook, the deferral, the event check, the links."""

    operator_extra_links = mlflow_links()
    ui_color = "#e8f0d5"

    def __init__(
        self,
        *,
        mlflow_conn_id: str = DEFAULT_CONN_ID,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id
        self.deferrable = default_deferrable() if deferrable is None else bool(deferrable)

    # Subclasses: one registry check, whether it is conclusive, the trigger to defer to.
    def _check(self) -> dict[str, Any]:
        raise NotImplementedError

    def _result(self, state: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError

    def _trigger(self) -> Any:
        raise NotImplementedError

    def poke(self, context: Context) -> PokeReturnValue:
        result = self._result(self._check())
        return PokeReturnValue(is_done=result is not None, xcom_value=result)

    def execute(self, context: Context) -> Any:
        self._before_first_check(context)
        if not self.deferrable:
            # Blocks in BaseSensorOperator.execute until poke succeeds (or times out).
            result = super().execute(context)
        else:
            result = self._result(self._check())
            if result is None:
                self.defer(
                    trigger=self._trigger(),
                    method_name="execute_complete",
                    timeout=timedelta(seconds=self.timeout),
                )
        return self._finish(context, result)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger fired: accept only a well-formed success event."""
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        if not isinstance(event, dict) or "status" not in event:
            raise AirflowException(f"{self.task_id}: the trigger sent a malformed event {event!r}.")
        status = event["status"]
        if status == FAILED:
            raise AirflowFailException(event.get("message") or f"{self.task_id}: registry failure.")
        if status == ERROR:
            raise AirflowException(
                f"{self.task_id}: checking the MLflow registry failed: {event.get('message')}"
            )
        if status != SUCCESS:
            raise AirflowException(f"{self.task_id}: unknown trigger event status {status!r}.")
        result = self._result(event)
        if result is None:
            raise AirflowException(
                f"{self.task_id}: the trigger reported success but the event does not satisfy "
                f"the condition: {event!r}"
            )
        return self._finish(context, result)

    def _before_first_check(self, context: Context) -> None:
        """Hook for state to capture before the first check (the alias baseline)."""

    def _finish(self, context: Context, result: dict[str, Any]) -> dict[str, Any]:
        persist_mlflow_links(
            context,
            tracking_uri=self.mlflow_hook.tracking_uri,
            experiment_id=result.get("experiment_id"),
            run_id=result.get("run_id"),
            model_name=result.get("model_name"),
            model_version=result.get("version"),
        )
        return result


class ModelVersionReadySensor(_RegistrySensor):
    """Wait until a registered model version is READY.

    Keeps waiting while the version does not exist yet or is PENDING_REGISTRATION; fails
    without retries when MLflow reports FAILED_REGISTRATION.

    Returns (XCom) ``{"model_name", "version", "state": "ready", "registry_status": "READY",
    "model_uri": "models:/<name>/<version>", "run_id", "experiment_id"}``.

    :param model_name: registered model name (templated).
    :param version: model version number (templated, e.g. from the registering task's XCom).
    :param mlflow_conn_id: MLflow connection (templated).
    :param deferrable: wait in the triggerer instead of a worker slot; default from
        ``[operators] default_deferrable``.
    """

    template_fields: Sequence[str] = ("model_name", "version", "mlflow_conn_id")

    def __init__(self, *, model_name: str, version: int | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.version = version

    def _check(self) -> dict[str, Any]:
        with self.mlflow_hook.session() as client:
            return model_version_state(client, self.model_name, self.version)

    def _result(self, state: dict[str, Any]) -> dict[str, Any] | None:
        from airflow.sdk.exceptions import AirflowFailException

        if state.get("state") == "failed":
            raise AirflowFailException(
                f"Model version {self.model_name}/{self.version} failed registration: "
                f"{state.get('message') or 'no message'}"
            )
        if state.get("state") != "ready":
            self.log.info("Model version %s/%s: %s", self.model_name, self.version, state)
            return None
        return {k: v for k, v in state.items() if k != "status"}

    def _trigger(self) -> ModelVersionReadyTrigger:
        return ModelVersionReadyTrigger(
            model_name=self.model_name,
            version=self.version,
            mlflow_conn_id=self.mlflow_conn_id,
            poll_interval=self.poke_interval,
        )


class ModelAliasChangedSensor(_RegistrySensor):
    """Wait until ``model_name@alias`` points at a new version (e.g. a new champion).

    "New" means different from ``previous_version``. Without ``previous_version``, the
    version the alias points at when the sensor starts is the baseline (and a missing alias
    counts as "no version": the sensor then completes when the alias is first set). A move
    back to an older version (rollback) also completes the sensor.

    Returns (XCom) ``{"model_name", "alias", "version", "previous_version", "state": "changed",
    "model_uri": "models:/<name>/<version>", "run_id", "experiment_id"}``.

    :param model_name: registered model name (templated).
    :param alias: alias to watch (templated), default ``champion``.
    :param previous_version: the version already seen (templated, e.g. from the last run's
        XCom). Required in ``reschedule`` mode, where no baseline survives between pokes.
    :param mlflow_conn_id: MLflow connection (templated).
    :param deferrable: wait in the triggerer instead of a worker slot; default from
        ``[operators] default_deferrable``.
    """

    template_fields: Sequence[str] = ("model_name", "alias", "previous_version", "mlflow_conn_id")

    def __init__(
        self,
        *,
        model_name: str,
        alias: str = "champion",
        previous_version: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.alias = alias
        self.previous_version = previous_version
        if self.mode == "reschedule" and previous_version is None and not self.deferrable:
            raise ConfigError(
                f"{self.task_id}: previous_version is required in reschedule mode (each poke is "
                "a new process, so a baseline captured by the first poke would be lost); set it "
                "or use mode='poke' or deferrable=True."
            )
        self._baseline: str | None = None

    def _before_first_check(self, context: Context) -> None:
        if self.previous_version not in (None, ""):
            self._baseline = str(self.previous_version)
            return
        with self.mlflow_hook.session() as client:
            first = alias_state(client, self.model_name, self.alias, None)
        self._baseline = first.get("version")
        self.log.info(
            "No previous_version given: waiting for %s@%s to move from %s.",
            self.model_name,
            self.alias,
            self._baseline or "(not set)",
        )

    def _check(self) -> dict[str, Any]:
        with self.mlflow_hook.session() as client:
            return alias_state(client, self.model_name, self.alias, self._baseline)

    def _result(self, state: dict[str, Any]) -> dict[str, Any] | None:
        if state.get("state") != "changed":
            self.log.info("%s@%s: %s", self.model_name, self.alias, state)
            return None
        # Judge by the baseline recorded in the state itself: after a deferral this runs in a
        # fresh operator instance that never saw the first check.
        if state.get("version") in (None, state.get("previous_version")):
            return None
        return {k: v for k, v in state.items() if k != "status"}

    def _trigger(self) -> ModelAliasChangedTrigger:
        return ModelAliasChangedTrigger(
            model_name=self.model_name,
            alias=self.alias,
            previous_version=self._baseline,
            mlflow_conn_id=self.mlflow_conn_id,
            poll_interval=self.poke_interval,
        )
