"""An ``MlflowClient`` that carries one connection's credentials, never ``os.environ``'s.

MLflow 3 builds one REST store per tracking URI for the whole process, and that store (like
the HTTP artifact repository) reads the credentials from ``MLFLOW_TRACKING_*`` environment
variables on every request. In a process that serves several connections from several threads
(the API server's MLOps page, the triggerer) those variables would hand one connection's
password to another thread's request. :func:`connection_client` instead gives the client its
own tracking and registry REST stores and its own artifact repositories, each built with a
``get_host_creds`` bound to the connection (``RestStore(get_host_creds)`` is MLflow's own
seam for this). Nothing is written to ``os.environ`` or to MLflow's process-wide caches.

Limits (MLflow 3.17): the HTTP artifact repository reads credentials from the environment in
its multipart and presigned-URL paths, so repositories of this client stream every transfer
through the tracking server instead (MLflow's default); ``test_credentials`` fails if a new
MLflow release adds another environment read there. MLflow's fluent API (``mlflow.start_run``,
``log_model``) has no client to carry credentials: only task processes use it, inside
``MlflowHook.session()``.

Imports MLflow at module level: import this module lazily (``core/`` is not imported at DAG
parse time).
"""

from __future__ import annotations

import posixpath
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial, wraps
from pathlib import Path
from typing import Any, Literal

from mlflow.entities import FileInfo
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
from mlflow.store.model_registry.rest_store import RestStore as RegistryRestStore
from mlflow.store.tracking.rest_store import RestStore as TrackingRestStore
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry.client import ModelRegistryClient
from mlflow.tracking._tracking_service.client import TrackingServiceClient
from mlflow.utils.rest_utils import MlflowHostCreds, augmented_raise_for_status, http_request
from mlflow.utils.uri import validate_path_is_safe

from airflow_mlops.core.mlflow_settings import MlflowSettings

__all__ = [
    "ConnectionMlflowClient",
    "HostCreds",
    "HttpLimits",
    "connection_client",
    "get_or_create_experiment",
    "host_creds_for",
    "http_limits",
    "read_run_text",
    "run_location",
    "with_credentials",
]

HostCreds = Callable[[str], MlflowHostCreds]

#: Artifact repositories kept per client (MLflow keeps 1,024 per process).
_REPO_CACHE_SIZE = 256
_ARTIFACTS_ENDPOINT = "/mlflow-artifacts/artifacts"


def connection_client(settings: MlflowSettings) -> MlflowClient:
    """A client for ``settings``: per-client credentials for ``http(s)://`` servers.

    Other stores (SQLite, PostgreSQL, ``file:``, ``databricks://profile``) take no HTTP
    credentials; they get MLflow's ordinary client.
    """
    registry_uri = settings.registry_uri or settings.tracking_uri
    if not settings.is_http:
        return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=registry_uri)
    limits = HttpLimits(settings.timeout_seconds, settings.max_retries)
    return ConnectionMlflowClient(
        settings.tracking_uri, registry_uri, host_creds_for(settings), limits
    )


def host_creds_for(settings: MlflowSettings) -> HostCreds:
    """``host -> MlflowHostCreds`` with the connection's login/password or token."""

    def host_creds(host: str) -> MlflowHostCreds:
        return MlflowHostCreds(
            host=host,
            username=settings.username,
            password=settings.password,
            token=settings.token,
            ignore_tls_verification=not settings.verify_tls,
        )

    return host_creds


# -- per-call HTTP limits ------------------------------------------------------------------

# MLflow's HTTP client reads its timeout and retries from environment variables on every
# request and offers no per-store setting. The readers of those variables are taught to look
# at a per-thread value first, set only around this module's calls (see http_limits), so one
# connection's limits never change another thread's requests.
_thread_limits = threading.local()
_LIMIT_VARIABLES = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
)
_install_lock = threading.Lock()
_installed = False


@dataclass(frozen=True)
class HttpLimits:
    """Timeout (s) and retries of one connection's MLflow requests."""

    timeout_seconds: int
    max_retries: int
    backoff_factor: int = 1  # MLflow's default (2, 7 retries) can wait minutes on a dead server

    def values(self) -> dict[str, int]:
        numbers = (self.timeout_seconds, self.max_retries, self.backoff_factor)
        return dict(zip(_LIMIT_VARIABLES, numbers, strict=True))


def _install_limit_readers() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        from mlflow import environment_variables

        for name in _LIMIT_VARIABLES:
            variable = getattr(environment_variables, name)
            variable.get_raw = _thread_first(name, variable.get_raw)
        _installed = True


def _thread_first(name: str, below: Callable[[], str | None]) -> Callable[[], str | None]:
    """A reader that prefers this thread's limit, but never exceeds an explicit setting."""

    def get_raw() -> str | None:
        mine = (getattr(_thread_limits, "values", None) or {}).get(name)
        other = below()
        if mine is None:
            return other
        try:
            return str(min(mine, int(other))) if other is not None else str(mine)
        except ValueError:
            return str(mine)

    return get_raw


@contextmanager
def http_limits(limits: HttpLimits) -> Iterator[None]:
    """MLflow requests made by this thread in the block use ``limits`` (or stricter ones)."""
    _install_limit_readers()
    outer = getattr(_thread_limits, "values", None)
    values = limits.values()
    if outer:
        values = {k: min(v, outer.get(k, v)) for k, v in values.items()}
    _thread_limits.values = values
    try:
        yield
    finally:
        _thread_limits.values = outer


def _limited(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a store or client method under its owner's ``_mlops_limits``."""

    @wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        with http_limits(self._mlops_limits):
            return method(self, *args, **kwargs)

    return call


def _is_http(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith(("http://", "https://"))


class ConnectionMlflowClient(MlflowClient):
    """``MlflowClient`` whose tracking, registry and artifact requests use ``host_creds``."""

    def __init__(
        self, tracking_uri: str, registry_uri: str, host_creds: HostCreds, limits: HttpLimits
    ) -> None:
        super().__init__(tracking_uri=tracking_uri, registry_uri=registry_uri)
        self._host_creds = host_creds
        self._mlops_limits = limits
        self._tracking_client = _ConnectionTrackingClient(tracking_uri, host_creds, limits)
        self._not_prompts: set[str] = set()

    def _raise_if_prompt(self, name: str) -> None:
        # MLflow reads the registered model before every tag, alias or delete request to
        # refuse a prompt of that name: a third of an alias move's requests. A name found to
        # be a model stays one, so this client checks each name once.
        if name in self._not_prompts:
            return
        super()._raise_if_prompt(name)
        self._not_prompts.add(name)

    def _get_registry_client(self) -> ModelRegistryClient:
        if not _is_http(self._registry_uri):
            return super()._get_registry_client()
        registry_client = getattr(self, "_registry_client_lazy", None)
        if registry_client is None:
            registry_client = _ConnectionRegistryClient(
                self._registry_uri, self.tracking_uri, self._host_creds, self._mlops_limits
            )
            self._registry_client_lazy = registry_client
        return registry_client


class _ConnectionTrackingClient(TrackingServiceClient):
    """MLflow's tracking client with its own REST store and artifact repositories."""

    def __init__(self, tracking_uri: str, host_creds: HostCreds, limits: HttpLimits) -> None:
        self._host_creds = host_creds
        self._mlops_limits = limits
        self._store = _TrackingStore(partial(host_creds, tracking_uri), limits)
        # Per client, not MLflow's process-wide cache: a cached repository carries the
        # credentials of the client that built it.
        self._repos: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._repos_lock = threading.Lock()
        super().__init__(tracking_uri)

    @property
    def store(self) -> _TrackingStore:
        return self._store

    # MLflow's own list/download go through ``runs:/`` URIs and the process-wide store (the
    # environment's credentials); these read the run's artifacts through this client. Unlike
    # ``runs:/``, they do not fall back to a logged model's artifacts: use ``models:/``.
    @_limited
    def list_artifacts(self, run_id: str, path: str | None = None) -> list[FileInfo]:
        return self._get_artifact_repo(run_id).list_artifacts(path)

    @_limited
    def download_artifacts(self, run_id: str, path: str, dst_path: str | None = None) -> str:
        if dst_path is not None:
            Path(dst_path).mkdir(parents=True, exist_ok=True)
        return self._get_artifact_repo(run_id).download_artifacts(path, dst_path=dst_path)

    log_artifact = _limited(TrackingServiceClient.log_artifact)
    log_artifacts = _limited(TrackingServiceClient.log_artifacts)

    def _get_artifact_repo(
        self, resource_id: str, *, resource: Literal["run", "logged_model"] = "run"
    ) -> Any:
        key = (resource, resource_id)
        with self._repos_lock:
            if key in self._repos:
                return self._repos[key]
        if resource == "run":
            location = self.get_run(resource_id).info.artifact_uri
        elif resource == "logged_model":
            location = self.get_logged_model(resource_id).artifact_location
        else:
            raise ValueError(f"Unexpected resource type {resource!r}.")
        repo = with_credentials(
            get_artifact_repository(location, tracking_uri=self.tracking_uri), self._host_creds
        )
        with self._repos_lock:
            self._repos[key] = repo
            while len(self._repos) > _REPO_CACHE_SIZE:
                self._repos.popitem(last=False)
        return repo


class _ConnectionRegistryClient(ModelRegistryClient):
    """MLflow's model registry client with its own REST store."""

    def __init__(
        self, registry_uri: str, tracking_uri: str, host_creds: HostCreds, limits: HttpLimits
    ) -> None:
        self._store = _RegistryStore(partial(host_creds, registry_uri), limits)
        super().__init__(registry_uri, tracking_uri)

    @property
    def store(self) -> _RegistryStore:
        return self._store


class _TrackingStore(TrackingRestStore):
    """MLflow's tracking REST store; each endpoint call under the connection's limits."""

    def __init__(self, get_host_creds: Callable[[], MlflowHostCreds], limits: HttpLimits) -> None:
        super().__init__(get_host_creds)
        self._mlops_limits = limits

    _call_endpoint = _limited(TrackingRestStore._call_endpoint)


class _RegistryStore(RegistryRestStore):
    """MLflow's model registry REST store; each endpoint call under the connection's limits."""

    def __init__(self, get_host_creds: Callable[[], MlflowHostCreds], limits: HttpLimits) -> None:
        super().__init__(get_host_creds)
        self._mlops_limits = limits

    _call_endpoint = _limited(RegistryRestStore._call_endpoint)


def with_credentials(repo: Any, host_creds: HostCreds) -> Any:
    """Give an HTTP artifact repository (``mlflow-artifacts:``, ``http(s):``) these credentials.

    Other repositories (S3, local files) authenticate with their storage, not with MLflow, and
    come back unchanged.
    """
    if isinstance(repo, HttpArtifactRepository):
        repo.__class__ = _credentialed(type(repo))
        repo._mlops_host_creds = host_creds
    return repo


@cache
def _credentialed(repo_class: type) -> type:
    return type(f"Credentialed{repo_class.__name__}", (_CredentialedArtifacts, repo_class), {})


class _CredentialedArtifacts:
    """Mixin over MLflow's HTTP artifact repositories: every request uses bound credentials.

    Overrides each place where MLflow 3.17 reads the environment's credentials (see
    ``tests/test_credentials.py::test_http_artifact_repo_env_reads_are_all_overridden``).
    """

    _mlops_host_creds: HostCreds
    artifact_uri: str

    @property
    def _host_creds(self) -> MlflowHostCreds:
        return self._mlops_host_creds(self.artifact_uri)

    @property
    def _artifact_server_host_creds(self) -> MlflowHostCreds:
        # MLflow computes the server root; only the credentials are replaced.
        return self._mlops_host_creds(super()._artifact_server_host_creds.host)  # type: ignore[misc]

    def _is_multipart_upload_enabled(self) -> bool:
        return False  # MLflow's multipart calls read credentials from os.environ

    def _is_multipart_download_enabled(self) -> bool:
        return False  # the presigned-URL request reads credentials from os.environ

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        """MLflow's ``HttpArtifactRepository.list_artifacts`` with the bound credentials."""
        url, tail = self.artifact_uri.split(_ARTIFACTS_ENDPOINT, maxsplit=1)
        root = tail.lstrip("/")
        params = {"path": posixpath.join(root, path) if path else root}
        resp = http_request(self._mlops_host_creds(url), _ARTIFACTS_ENDPOINT, "GET", params=params)
        augmented_raise_for_status(resp)
        infos = []
        for entry in resp.json().get("files", []):
            name = validate_path_is_safe(entry["path"])
            size = int(entry["file_size"]) if "file_size" in entry else None
            infos.append(
                FileInfo(posixpath.join(path, name) if path else name, entry["is_dir"], size)
            )
        # MLflow's contract: listing a single file's own path answers an empty list.
        if (
            len(infos) == 1
            and not infos[0].is_dir
            and path is not None
            and infos[0].path == posixpath.join(path, posixpath.basename(path))
        ):
            return []
        return sorted(infos, key=lambda info: info.path)


def get_or_create_experiment(
    client: MlflowClient, name: str, *, artifact_location: str | None = None
) -> str:
    """Experiment id for ``name``, created when missing (safe if two tasks race).

    The one copy: :meth:`MlflowHook.get_or_create_experiment` delegates here. A deleted
    experiment is refused with :class:`DeletedExperimentError` rather than logged into.
    """
    from mlflow.exceptions import MlflowException

    from airflow_mlops.core.errors import DeletedExperimentError

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise DeletedExperimentError(
                f"experiment_name {name!r} names a deleted MLflow experiment: restore it or "
                "choose another name"
            )
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@dataclass(frozen=True)
class RunLocation:
    """What never changes about a run: where its artifacts go and its experiment."""

    artifact_uri: str
    experiment_id: str


_RUN_LOCATIONS: weakref.WeakKeyDictionary[Any, OrderedDict[str, RunLocation]] = (
    weakref.WeakKeyDictionary()
)
_RUN_LOCATIONS_LOCK = threading.Lock()
_RUN_LOCATIONS_PER_CLIENT = 1024


def run_location(client: MlflowClient, run_id: str) -> RunLocation:
    """``run_id``'s artifact root and experiment: one read per client and run, as neither
    changes (a batched segment logs several records on its run; each needs the root)."""
    with _RUN_LOCATIONS_LOCK:
        known = _RUN_LOCATIONS.setdefault(client, OrderedDict())
        if run_id in known:
            return known[run_id]
    info = client.get_run(run_id).info
    location = RunLocation(str(info.artifact_uri), str(info.experiment_id))
    with _RUN_LOCATIONS_LOCK:
        known[run_id] = location
        while len(known) > _RUN_LOCATIONS_PER_CLIENT:
            known.popitem(last=False)
    return location


def read_run_text(client: MlflowClient, run_id: str, path: str) -> str | None:
    """The text of artifact ``path`` of ``run_id``; ``None`` when the run has no such file.

    ``path`` is one of the provider's own artifact names, never a value read from a tag.
    """
    import tempfile

    from mlflow.exceptions import MlflowException

    from airflow_mlops.core.errors import MlflowConnectionError

    folder = posixpath.dirname(path)
    try:
        listed = {info.path for info in client.list_artifacts(run_id, folder or None)}
        # Some artifact repositories list bare names under the folder.
        if path not in listed and posixpath.basename(path) not in listed:
            return None
        with tempfile.TemporaryDirectory(prefix="mlops-artifact-") as tmp:
            return Path(client.download_artifacts(run_id, path, tmp)).read_text(encoding="utf-8")
    except MlflowException as err:
        raise MlflowConnectionError(f"could not read {path} of MLflow run {run_id}: {err}") from err
