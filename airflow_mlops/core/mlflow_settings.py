"""How to reach MLflow: settings resolved from an Airflow connection (or the embedded default).

Plain Python with no Airflow import. Credentials never live in a URI that is shown: an
``http(s)://user:pw@host`` host is split into the URI and the login/password, and
:func:`redact_uri` / :func:`redact_text` mask the user-info of any other URI (``postgresql://
u:pw@db/mlflow``) wherever one is displayed, logged or raised.

Clients get the credentials per client (:mod:`airflow_mlops.core.mlflow_client`). Only
MLflow's *fluent* API (``mlflow.start_run``, ``log_model``) reads them from the process
environment: :func:`mlflow_environment` applies them for the duration of a block in a task
process and restores the environment after, so settings never leak from one task to the next
in a long-lived worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from airflow_mlops.core.errors import (
    ConfigError,
    MlflowCallError,
    MlflowConnectionError,
    MlopsError,
)
from airflow_mlops.core.values import parse_bool

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT_SECONDS",
    "EMBEDDED_DIR_NAME",
    "MASK",
    "MlflowSettings",
    "embedded_settings",
    "ensure_embedded_store",
    "mlflow_environment",
    "patched_environ",
    "redact_text",
    "redact_uri",
    "settings_from_connection",
    "split_credentials",
    "tracking_uri_from_parts",
    "translate_mlflow_error",
    "uri_secrets",
]

EMBEDDED_DIR_NAME = "mlflow"
DEFAULT_TIMEOUT_SECONDS = 30
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


MASK = "***"

# ``scheme://user-info@``: the user-info runs to the last '@' before the path, query, fragment
# or a blank, which is how URL parsers split a netloc; applied to any text that may hold a URI.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s]*)@")


def _masked_userinfo(userinfo: str) -> str:
    user, sep, _ = userinfo.partition(":")
    # A user-info without ':' may be a token (``https://<token>@host``): mask all of it.
    return f"{user}:{MASK}" if sep else MASK


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its user-info masked: ``postgresql://u:***@db/mlflow``.

    URIs without user-info (``sqlite:///…``, ``databricks://profile``) come back unchanged.
    """
    return _USERINFO.sub(lambda m: f"{m['scheme']}{_masked_userinfo(m['userinfo'])}@", uri)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` (an error message, a log line) with URI user-info and every secret masked."""
    text = redact_uri(text)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text


def uri_secrets(uri: str | None) -> list[str]:
    """The secret part of ``uri``'s user-info, as written and percent-decoded."""
    match = _USERINFO.search(uri or "")
    if match is None:
        return []
    user, sep, password = match["userinfo"].partition(":")
    secret = password if sep else user
    return [s for s in dict.fromkeys((secret, unquote(secret))) if s]


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without user-info, user, password)`` for an ``http(s)://`` URI.

    Other schemes come back whole: a database URI needs its user-info to connect.
    """
    parts = urlsplit(uri)
    if parts.scheme not in {"http", "https"} or "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    bare = urlunsplit(parts._replace(netloc=host))
    return bare, unquote(user) or None, unquote(password) if sep else None


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
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    max_retries: int = DEFAULT_MAX_RETRIES
    artifact_root: str | None = None
    embedded: bool = False

    @property
    def is_http(self) -> bool:
        return self.tracking_uri.startswith(("http://", "https://"))

    def __repr__(self) -> str:
        # The URIs may hold a database password: mask it like everywhere else.
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
        return redact_text(f"MlflowSettings({shown})", self.secrets)

    @property
    def display_uri(self) -> str:
        """The tracking URI to show people: any user-info password masked."""
        return redact_uri(self.tracking_uri)

    @property
    def secrets(self) -> list[str]:
        """Every secret of the settings, for the log masker and error scrubbing."""
        found = [s for s in (self.password, self.token) if s]
        for uri in (self.tracking_uri, self.registry_uri, self.artifact_root, self.s3_endpoint_url):
            found += uri_secrets(uri)
        return list(dict.fromkeys(found))

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
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.timeout_seconds),
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
    host, uri_user, uri_password = split_credentials(host.strip()) if host else (host, None, None)
    if (uri_user or uri_password) and (login or password):
        raise ConfigError(
            f"MLflow connection {conn_id!r} has credentials both in its host "
            f"({redact_uri(host or '')}) and in login/password: keep only login/password."
        )
    registry_uri = extra.get("registry_uri") or None
    if registry_uri and split_credentials(registry_uri)[0] != registry_uri:
        raise ConfigError(
            f"MLflow connection {conn_id!r}: extra 'registry_uri' ({redact_uri(registry_uri)}) "
            "must not carry credentials; the connection's login/password apply to it."
        )
    return MlflowSettings(
        tracking_uri=tracking_uri_from_parts(host, port, conn_id),
        registry_uri=registry_uri,
        username=login or uri_user or None,
        password=password or uri_password or None,
        token=extra.get("token") or None,
        s3_endpoint_url=extra.get("s3_endpoint_url") or None,
        verify_tls=parse_bool(
            extra.get("verify_tls", True), "MLflow connection extra 'verify_tls'"
        ),
        timeout_seconds=_as_positive_int(extra.get("timeout", DEFAULT_TIMEOUT_SECONDS), "timeout"),
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
            _put_env(key, value)
        yield
    finally:
        for key, value in saved.items():
            _put_env(key, value)


def _put_env(key: str, value: str | None) -> None:
    """Set ``key``, or remove it when ``value`` is None."""
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


@contextlib.contextmanager
def mlflow_environment(settings: MlflowSettings) -> Iterator[None]:
    """Point MLflow's fluent API at ``settings`` for the duration of the block.

    Task processes only: the variables, credentials included, are process-wide while the
    block runs, which is safe where one process runs one task. Threads of long-lived
    processes (API server, triggerer) use a per-client connection instead
    (:func:`airflow_mlops.core.mlflow_client.connection_client`).
    """
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


_HTTP_401 = re.compile(r"(?<![0-9A-Za-z])401(?![0-9A-Za-z])")
_HTTP_403 = re.compile(r"(?<![0-9A-Za-z])403(?![0-9A-Za-z])")


def translate_mlflow_error(err: BaseException, settings: MlflowSettings) -> BaseException | None:
    """Turn MLflow's transport and auth errors into a clear MlflowConnectionError.

    Credentials never reach the message (URI user-info and the connection's secrets are
    masked); any other error whose text holds one comes back as a scrubbed MlflowCallError.
    Returns ``None`` for other errors that are not about reaching or authenticating to MLflow.
    """
    if isinstance(err, MlopsError):
        return None  # this provider's own errors already say what went wrong
    text = redact_text(str(err), settings.secrets)
    uri = settings.display_uri
    if any(marker in text for marker in _UNREACHABLE_MARKERS):
        return MlflowConnectionError(
            f"MLflow tracking server {uri} is unreachable "
            f"(timeout {settings.timeout_seconds}s, {settings.max_retries} retries): "
            f"{_first_line(text)}"
        )
    # Whole tokens: a model name or run id may contain the digits "401" or "403".
    if _HTTP_401.search(text) or "UNAUTHENTICATED" in text:
        who = f"user {settings.username!r}" if settings.username else "anonymous access"
        return MlflowConnectionError(
            f"MLflow tracking server {uri} refused the credentials ({who}): check the "
            f"connection's login/password or token. Server said: {_first_line(text)}"
        )
    if _HTTP_403.search(text) and "PERMISSION_DENIED" in text:
        return MlflowConnectionError(
            f"MLflow tracking server {uri} denied permission: {_first_line(text)}"
        )
    if text != str(err):
        # Not about reaching MLflow, but the message held a credential: raise it scrubbed.
        return MlflowCallError(f"MLflow call to {uri} failed: {type(err).__name__}: {text}")
    return None


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]
