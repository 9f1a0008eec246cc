"""How to reach MLflow: settings resolved from an Airflow connection (or the embedded default).

Plain Python with no Airflow import. MLflow's REST client reads credentials, TLS and
retry settings from environment variables at request time; :func:`mlflow_environment`
applies them for the duration of a block and restores the process environment after,
so settings never leak from one task to the next in a long-lived worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_mlops.core.errors import ConfigError, MlflowConnectionError

EMBEDDED_DIR_NAME = "mlflow"
DEFAULT_TIMEOUT_S = 30
DEFAULT_MAX_RETRIES = 2

# Every variable we may set; all of them are snapshotted and restored together.
_MANAGED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    "MLFLOW_DISABLE_TELEMETRY",
)


@dataclass(frozen=True)
class MlflowSettings:
    """Everything needed to talk to one MLflow tracking server and registry."""

    tracking_uri: str
    registry_uri: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    s3_endpoint_url: str | None = None
    verify_tls: bool = True
    timeout_s: int = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    artifact_root: str | None = None
    embedded: bool = False

    @property
    def is_http(self) -> bool:
        return self.tracking_uri.startswith(("http://", "https://"))

    @property
    def secrets(self) -> list[str]:
        return [s for s in (self.password, self.token) if s]

    def environment(self) -> dict[str, str | None]:
        """Environment variables MLflow reads; ``None`` means 'must be unset'."""
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_REGISTRY_URI": self.registry_uri,
            "MLFLOW_TRACKING_USERNAME": self.username,
            "MLFLOW_TRACKING_PASSWORD": self.password,
            "MLFLOW_TRACKING_TOKEN": self.token,
            "MLFLOW_TRACKING_INSECURE_TLS": None if self.verify_tls else "true",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.timeout_s),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.max_retries),
            # MLflow's default backoff (factor 2, 7 retries) can wait minutes on a dead server.
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            # tqdm bars would fill task logs on every model download.
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            # A pipeline talks to its MLflow server and storage only: no usage telemetry.
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }


def embedded_settings(airflow_home: str | None = None) -> MlflowSettings:
    """The default with no connection: a SQLite store under ``$AIRFLOW_HOME/mlflow/``."""
    home = Path(airflow_home or os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    root = (home / EMBEDDED_DIR_NAME).resolve()
    return MlflowSettings(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_root=(root / "artifacts").as_uri(),
        embedded=True,
    )


def _as_bool(value: Any, field_name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "false", "0", "no"}:
        return value.strip().lower() in {"true", "1", "yes"}
    raise ConfigError(
        f"MLflow connection extra {field_name!r} must be true or false, got {value!r}."
    )


def _as_positive_int(value: Any, field_name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0:
        raise ConfigError(
            f"MLflow connection extra {field_name!r} must be a non-negative integer, got {value!r}."
        )
    return number


def tracking_uri_from_parts(host: str | None, port: int | None, conn_id: str) -> str:
    """Turn the connection's host/port into a tracking URI.

    ``host`` may be a full URI (``http://mlflow:5000``, ``sqlite:////data/mlflow.db``), a local
    path (``/data/mlruns``), or a bare host name with a port (``mlflow`` + 5000).
    """
    if not host:
        raise ConfigError(f"MLflow connection {conn_id!r} has no host: set it to the tracking URI.")
    host = host.strip()
    if "://" in host:
        if port and host.startswith(("http://", "https://")) and host.count(":") == 1:
            return f"{host.rstrip('/')}:{port}"
        return host.rstrip("/") if host.startswith(("http://", "https://")) else host
    if host.startswith("/"):
        return Path(host).as_uri()
    return f"http://{host}:{port or 5000}"


def settings_from_connection(
    conn_id: str,
    host: str | None,
    port: int | None,
    login: str | None,
    password: str | None,
    extra: Mapping[str, Any],
) -> MlflowSettings:
    """Build settings from the fields of an Airflow connection, naming any bad field."""
    known = {
        "token",
        "registry_uri",
        "s3_endpoint_url",
        "verify_tls",
        "timeout",
        "max_retries",
        "artifact_root",
    }
    unknown = sorted(set(extra) - known)
    if unknown:
        raise ConfigError(
            f"MLflow connection {conn_id!r} has unknown extra field(s) {unknown}; "
            f"known fields: {sorted(known)}."
        )
    return MlflowSettings(
        tracking_uri=tracking_uri_from_parts(host, port, conn_id),
        registry_uri=extra.get("registry_uri") or None,
        username=login or None,
        password=password or None,
        token=extra.get("token") or None,
        s3_endpoint_url=extra.get("s3_endpoint_url") or None,
        verify_tls=_as_bool(extra.get("verify_tls", True), "verify_tls"),
        timeout_s=_as_positive_int(extra.get("timeout", DEFAULT_TIMEOUT_S), "timeout"),
        max_retries=_as_positive_int(extra.get("max_retries", DEFAULT_MAX_RETRIES), "max_retries"),
        artifact_root=extra.get("artifact_root") or None,
    )


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Apply ``values`` to ``os.environ`` and restore every managed variable afterwards."""
    keys = set(_MANAGED_ENV) | set(values)
    saved = {k: os.environ.get(k) for k in keys}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def mlflow_environment(settings: MlflowSettings) -> Iterator[None]:
    """Point MLflow's fluent API and clients at ``settings`` for the duration of the block."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # MLflow keeps the URIs in module globals; save and restore them with the environment.
    saved_tracking = tracking_utils._tracking_uri
    saved_registry = registry_utils._registry_uri
    with patched_environ(settings.environment()):
        try:
            mlflow.set_tracking_uri(settings.tracking_uri)
            mlflow.set_registry_uri(settings.registry_uri or settings.tracking_uri)
            yield
        finally:
            tracking_utils._tracking_uri = saved_tracking
            registry_utils._registry_uri = saved_registry


def ensure_embedded_store(settings: MlflowSettings) -> None:
    """Create/upgrade the embedded SQLite store once, under a file lock.

    Two processes migrating a fresh SQLite DB at once fail in alembic, so the first task to
    arrive migrates while the others wait on the lock.
    """
    if not settings.tracking_uri.startswith("sqlite:///"):
        return
    db_path = Path(settings.tracking_uri.removeprefix("sqlite:///"))
    db_path.parent.mkdir(parents=True, exist_ok=True)
    if settings.artifact_root and settings.artifact_root.startswith("file://"):
        Path(settings.artifact_root.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    lock_path = db_path.with_suffix(".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(settings.tracking_uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_UNREACHABLE_MARKERS = (
    "Max retries exceeded",
    "Failed to establish a new connection",
    "Connection refused",
    "ConnectionError",
    "Read timed out",
    "Name or service not known",
)


def translate_mlflow_error(err: BaseException, settings: MlflowSettings) -> BaseException | None:
    """Turn MLflow's transport and auth errors into a clear MlflowConnectionError.

    Returns ``None`` for errors that are not about reaching or authenticating to MLflow.
    """
    text = str(err)
    uri = settings.tracking_uri
    if any(marker in text for marker in _UNREACHABLE_MARKERS):
        return MlflowConnectionError(
            f"MLflow tracking server {uri} is unreachable "
            f"(timeout {settings.timeout_s}s, {settings.max_retries} retries): "
            f"{_first_line(text)}"
        )
    if "401" in text or "UNAUTHENTICATED" in text:
        who = f"user {settings.username!r}" if settings.username else "anonymous access"
        return MlflowConnectionError(
            f"MLflow tracking server {uri} refused the credentials ({who}): check the "
            f"connection's login/password or token. Server said: {_first_line(text)}"
        )
    if "403" in text and "PERMISSION_DENIED" in text:
        return MlflowConnectionError(
            f"MLflow tracking server {uri} denied permission: {_first_line(text)}"
        )
    return None


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]
