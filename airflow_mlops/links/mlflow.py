"""Extra links from a task to the MLflow UI: the experiment, the run, the model version.

Pattern (as in the Amazon provider): at ``execute()`` time an operator calls
:func:`persist_mlflow_links`, which stores the link *parameters* (the UI base URL and ids) in
XCom under one key per link; ``get_link`` later formats the URL from them and returns ``""``
when there is nothing to link to. At the end of the task Airflow 3 calls ``get_link`` in the
worker and stores the finished URL under ``link.xcom_key`` (``_link_<ClassName>``), which is
what the UI reads.

Links only exist for an HTTP(S) tracking server: an embedded SQLite or file store has no UI
to point at. Credentials in the tracking URI (``http://user:pw@host``) are never persisted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit, urlunsplit

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

log = logging.getLogger(__name__)

# XCom keys holding the link parameters. They must differ from the keys Airflow itself
# uses for the finished URLs (``_link_<ClassName>``).
EXPERIMENT_LINK_KEY = "mlops_link_mlflow_experiment"
RUN_LINK_KEY = "mlops_link_mlflow_run"
MODEL_VERSION_LINK_KEY = "mlops_link_mlflow_model_version"


def mlflow_ui_base_url(tracking_uri: str | None) -> str | None:
    """The MLflow UI address for ``tracking_uri``, or ``None`` when it has no web UI.

    Only ``http(s)://`` tracking servers have a UI; user info (credentials) is dropped, as are
    query strings and fragments.
    """
    if not tracking_uri:
        return None
    parts = urlsplit(tracking_uri.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return None
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _segment(value: Any) -> str:
    """One URL path segment: every reserved character (including '/') is escaped."""
    return quote(str(value), safe="")


class MlflowBaseLink(BaseOperatorLink):
    """Formats an MLflow UI URL from parameters persisted in XCom under :attr:`key`."""

    name: ClassVar[str]
    key: ClassVar[str]
    required: ClassVar[tuple[str, ...]]

    def format_link(self, params: dict[str, Any]) -> str:
        raise NotImplementedError

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        # A link is decoration: a missing or malformed parameter must never fail the task or
        # the UI, so any problem yields "" (and a log line saying why).
        try:
            from airflow.sdk.execution_time.xcom import XCom

            params = XCom.get_value(key=self.key, ti_key=ti_key)
        except Exception:
            log.warning("Could not read the parameters of link %r.", self.name, exc_info=True)
            return ""
        return self.url_from_params(params)

    def url_from_params(self, params: Any) -> str:
        """The URL for persisted ``params``; ``""`` when they are absent or incomplete."""
        if not isinstance(params, dict) or not params.get("base_url"):
            return ""
        if any(params.get(field) in (None, "") for field in self.required):
            return ""
        return self.format_link(params)


class MlflowExperimentLink(MlflowBaseLink):
    """Link to the experiment page."""

    name = "MLflow experiment"
    key = EXPERIMENT_LINK_KEY
    required = ("experiment_id",)

    def format_link(self, params: dict[str, Any]) -> str:
        return f"{params['base_url']}/#/experiments/{_segment(params['experiment_id'])}"


class MlflowRunLink(MlflowBaseLink):
    """Link to the run page (parameters, metrics, artifacts of the run)."""

    name = "MLflow run"
    key = RUN_LINK_KEY
    required = ("experiment_id", "run_id")

    def format_link(self, params: dict[str, Any]) -> str:
        return (
            f"{params['base_url']}/#/experiments/{_segment(params['experiment_id'])}"
            f"/runs/{_segment(params['run_id'])}"
        )


class MlflowModelVersionLink(MlflowBaseLink):
    """Link to the registered model version page."""

    name = "MLflow model version"
    key = MODEL_VERSION_LINK_KEY
    required = ("model_name", "model_version")

    def format_link(self, params: dict[str, Any]) -> str:
        return (
            f"{params['base_url']}/#/models/{_segment(params['model_name'])}"
            f"/versions/{_segment(params['model_version'])}"
        )


def mlflow_links() -> tuple[MlflowBaseLink, ...]:
    """The links to put in an operator's ``operator_extra_links``."""
    return (MlflowExperimentLink(), MlflowRunLink(), MlflowModelVersionLink())


def link_params(
    *,
    tracking_uri: str | None,
    experiment_id: str | None = None,
    run_id: str | None = None,
    model_name: str | None = None,
    model_version: int | str | None = None,
) -> dict[str, dict[str, Any]]:
    """XCom key -> parameters for every link the given ids make possible (pure, testable)."""
    base_url = mlflow_ui_base_url(tracking_uri)
    if base_url is None:
        return {}
    values = {
        "experiment_id": experiment_id,
        "run_id": run_id,
        "model_name": model_name,
        "model_version": None if model_version is None else str(model_version),
    }
    result: dict[str, dict[str, Any]] = {}
    for link in (MlflowExperimentLink, MlflowRunLink, MlflowModelVersionLink):
        needed = {field: values[field] for field in link.required}
        if all(v not in (None, "") for v in needed.values()):
            result[link.key] = {"base_url": base_url, **needed}
    return result


def persist_mlflow_links(
    context: Context,
    *,
    tracking_uri: str | None,
    experiment_id: str | None = None,
    run_id: str | None = None,
    model_name: str | None = None,
    model_version: int | str | None = None,
) -> dict[str, dict[str, Any]]:
    """Store the parameters of the MLflow links the given ids make possible.

    Call from ``execute()`` once the ids are known; pass only what you have (a run without a
    model version persists the experiment and run links). Nothing is stored when the tracking
    URI has no web UI (embedded SQLite/file store) or when the task has ``do_xcom_push=False``.
    Returns what was stored (XCom key -> parameters).
    """
    task = context.get("task")
    if task is not None and not getattr(task, "do_xcom_push", True):
        return {}
    params = link_params(
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        run_id=run_id,
        model_name=model_name,
        model_version=model_version,
    )
    ti = context["ti"]
    for key, value in params.items():
        ti.xcom_push(key=key, value=value)
    return params
