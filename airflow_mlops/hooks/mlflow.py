"""MLflow hook: connection type ``mlflow``, a configured client, and a safe session."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.jsonsafe import parse_json_mapping
from airflow_mlops.core.mlflow_settings import (
    MlflowSettings,
    embedded_settings,
    settings_from_connection,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["DEFAULT_CONN_ID", "MlflowHook"]

DEFAULT_CONN_ID = "mlflow_default"


class MlflowHook(BaseHook):
    """Talk to an MLflow tracking server and model registry through an Airflow connection.

    Two ways in:

    - ``with hook.client() as client:`` (or ``hook.get_conn()``): an ``MlflowClient`` that
      carries this connection's credentials itself. Nothing is written to ``os.environ``, so
      it is safe in threads of long-lived processes (the API server, the triggerer).
    - ``with hook.session() as client:``: the same client, and MLflow's *fluent* API
      (``mlflow.start_run``, ``log_model``, ``models:/`` loads) also points at this connection
      for the block. The fluent API reads credentials from process environment variables, so
      use ``session()`` only in task processes (one task per process).

    Secrets (password, token, the password of a URI's user-info) are registered with the log
    masker when the connection is read; :attr:`display_uri` is the URI to show people.

    With no ``mlflow_default`` connection defined, the hook uses the embedded default: a
    SQLite tracking store and artifact folder under ``$AIRFLOW_HOME/mlflow/``.

    :param mlflow_conn_id: Airflow connection id of type ``mlflow``.
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "mlflow"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        from airflow_mlops.get_provider_info import get_provider_info

        (conn_type,) = get_provider_info()["connection-types"]
        behaviour = conn_type["ui-field-behaviour"]
        return {
            "hidden_fields": behaviour["hidden-fields"],
            "relabeling": behaviour["relabeling"],
            "placeholders": behaviour["placeholders"],
        }

    @cached_property
    def settings(self) -> MlflowSettings:
        """Resolved once per hook; secrets are registered with the log masker."""
        settings = self._resolve_settings()
        for secret in settings.secrets:
            _mask(secret)
        return settings

    def _resolve_settings(self) -> MlflowSettings:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = self.get_connection(self.mlflow_conn_id)
        except AirflowNotFoundException:
            if self.mlflow_conn_id != DEFAULT_CONN_ID:
                raise ConfigError(
                    f"Airflow connection {self.mlflow_conn_id!r} is not defined; define it or use "
                    f"{DEFAULT_CONN_ID!r} (which falls back to the embedded local store)."
                ) from None
            self.log.info(
                "No %r connection: using the embedded local MLflow store.", DEFAULT_CONN_ID
            )
            return embedded_settings()
        return settings_from_connection(
            conn_id=self.mlflow_conn_id,
            host=conn.host,
            port=conn.port,
            login=conn.login,
            password=conn.password,
            extra=_extra_dict(conn.extra, self.mlflow_conn_id),
        )

    @property
    def tracking_uri(self) -> str:
        """The tracking URI as configured; may hold a database password: never show it."""
        return self.settings.tracking_uri

    @property
    def display_uri(self) -> str:
        """The tracking URI to show, log or raise: user-info passwords masked."""
        return self.settings.display_uri

    def get_conn(self) -> MlflowClient:
        """A client bound to this connection: its own URIs and its own credentials."""
        from airflow_mlops.core.mlflow_client import connection_client

        return connection_client(self.settings)

    @contextlib.contextmanager
    def client(self) -> Iterator[MlflowClient]:
        """A client for this connection, safe in any thread: no process-wide state changes.

        Transport and authentication failures are re-raised as ``MlflowConnectionError``
        naming the tracking URI (credentials masked).
        """
        with self._translated_errors():
            yield self.get_conn()

    @contextlib.contextmanager
    def session(self) -> Iterator[MlflowClient]:
        """Configure MLflow's fluent API for this connection for the block; restore after.

        Task processes only (see the class docstring); errors as in :meth:`client`.
        """
        from airflow_mlops.core.mlflow_settings import mlflow_environment

        with mlflow_environment(self.settings), self._translated_errors():
            yield self.get_conn()

    @contextlib.contextmanager
    def _translated_errors(self) -> Iterator[None]:
        from airflow_mlops.core.mlflow_settings import (
            ensure_embedded_store,
            redact_text,
            translate_mlflow_error,
        )

        settings = self.settings
        try:
            if settings.embedded or settings.tracking_uri.startswith("sqlite:"):
                ensure_embedded_store(settings)
            yield
        except Exception as err:
            clearer = translate_mlflow_error(err, settings)
            if clearer is None:
                raise
            # An original that quotes a credential stays out of the traceback.
            quotes_secret = redact_text(str(err), settings.secrets) != str(err)
            raise clearer from (None if quotes_secret else err)

    def get_or_create_experiment(self, name: str) -> str:
        """Experiment id for ``name``, creating it if needed (with this connection's client).

        :func:`airflow_mlops.core.mlflow_client.get_or_create_experiment` with the connection's
        artifact root; a deleted experiment raises ``DeletedExperimentError``.
        """
        from airflow_mlops.core.mlflow_client import get_or_create_experiment

        artifact_location = None
        if self.settings.artifact_root:
            artifact_location = f"{self.settings.artifact_root.rstrip('/')}/{_safe_dir(name)}"
        return get_or_create_experiment(self.get_conn(), name, artifact_location=artifact_location)

    def test_connection(self) -> tuple[bool, str]:
        """Answer the Test button of the connection form."""
        from airflow_mlops.core.mlflow_settings import redact_text

        try:
            with self.client() as client:
                client.search_experiments(max_results=1)
        except Exception as err:
            secrets = self.settings.secrets if "settings" in self.__dict__ else ()
            return False, redact_text(str(err), secrets)
        return True, f"Connected to MLflow at {self.display_uri}."


def _extra_dict(extra: Any, conn_id: str) -> dict[str, Any]:
    if not extra:
        return {}
    return parse_json_mapping(
        extra, f"Extra of connection {conn_id!r}", not_mapping="{field} must be a JSON object."
    )


def _safe_dir(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _mask(secret: str) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret(secret)
