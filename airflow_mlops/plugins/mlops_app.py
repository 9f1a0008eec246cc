"""The FastAPI app behind the "MLOps" page (see :mod:`airflow_mlops.plugins.mlops_page`).

Imported only when the API server mounts the plugin's app (``MlopsPlugin.fastapi_apps`` is
resolved on first access), so schedulers, DAG processors and task processes that load
plugins do not pay for FastAPI (~0.2-0.5 s; it also pulls ``pydantic.v1``).

**Auth.** Routes of a plugin's FastAPI app are not protected by Airflow by default, so every
route here depends on :func:`authorized_user`, which calls Airflow's own
``airflow.api_fastapi.core_api.security.get_user`` (the dependency of the REST API: bearer
token first, then the UI's ``_token`` cookie) and then asks the configured auth manager
whether the user may read DAGs. Anonymous callers get 401 (browsers are redirected to the
login page), invalid tokens 403/401, users without DAG read access 403.

Configuration: the ``[mlops]`` options listed in :mod:`airflow_mlops.plugins.mlops_page`;
``mlflow_ui_url`` is read by :func:`airflow_mlops.links.mlflow.mlflow_ui_url`, the function
the task links use, so the page and the links point at the same MLflow address.
"""

from __future__ import annotations

import logging
import mimetypes
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

# The logger keeps the plugin module's name (this code lived there before the split).
log = logging.getLogger("airflow_mlops.plugins.mlops_page")

TEMPLATES = Path(__file__).parent / "templates"
# A report is shown in a sandbox: scripts of an Evidently report may run, but in an opaque
# origin that cannot read the Airflow session cookie or call the Airflow API.
REPORT_CSP = "sandbox allow-scripts allow-popups; default-src 'self' 'unsafe-inline' data: blob:"
MAX_REPORT_BYTES = 50 * 1024 * 1024

# MlflowHook.session() sets process-wide environment variables for the block; the API server
# serves requests on several threads, so reads of MLflow are serialised.
_MLFLOW_LOCK = threading.Lock()

_templates = Environment(
    loader=FileSystemLoader(str(TEMPLATES)),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


# -- auth -----------------------------------------------------------------------------------


async def authorized_user(request: Request) -> Any:
    """The logged-in Airflow user allowed to read DAGs, or an HTTP error.

    Uses Airflow's own API security dependency (``get_user``) and auth manager, so the page
    follows whatever auth manager the deployment configures (simple, FAB, Keycloak, ...).
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    credentials = await bearer_scheme(request)
    try:
        user = await get_user(request, None, credentials)
    except HTTPException as err:
        if err.status_code == status.HTTP_401_UNAUTHORIZED and _wants_html(request):
            login = get_auth_manager().get_url_login(next_url=str(request.url))
            raise HTTPException(
                status_code=status.HTTP_307_TEMPORARY_REDIRECT,
                detail="Log in to Airflow to see the MLOps page.",
                headers={"Location": login},
            ) from err
        raise
    if not get_auth_manager().is_authorized_dag(method="GET", user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden: reading DAGs is not allowed.")
    return user


UserDep = Annotated[Any, Depends(authorized_user)]


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


# -- configuration and MLflow access -------------------------------------------------------


def _setting(key: str, default: str | None = None) -> str | None:
    from airflow.configuration import conf

    value = conf.get("mlops", key, fallback=default)
    return value or default


def _mlflow_hook() -> Any:
    from airflow_mlops.hooks.mlflow import MlflowHook

    return MlflowHook(
        mlflow_conn_id=_setting("mlflow_conn_id", "mlflow_default") or "mlflow_default"
    )


def _may_read_xcom(user: Any) -> Any:
    """Per-DAG check: may ``user`` read the task results (XCom) of this DAG?"""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )

    def may_read(dag_id: str) -> bool:
        return get_auth_manager().is_authorized_dag(
            method="GET",
            access_entity=DagAccessEntity.XCOM,
            details=DagDetails(id=dag_id),
            user=user,
        )

    return may_read


def load_overview(user: Any) -> dict[str, Any]:
    """Read the registry once (and Airflow for validations), for the page and the JSON."""
    from airflow_mlops.links.mlflow import mlflow_ui_url
    from airflow_mlops.plugins.airflow_facts import latest_validation
    from airflow_mlops.plugins.model_overview import collect_overview

    hook = _mlflow_hook()
    max_models = int(_setting("page_max_models", "50") or 50)
    with _MLFLOW_LOCK, hook.session() as client:
        models = collect_overview(client, max_models=max_models)
    may_read = _may_read_xcom(user)
    for model in models:
        if "validation" not in model.checks and model.lineage_dag_ids:
            # The validation operator runs before training: its verdict is in Airflow.
            found = latest_validation(model.lineage_dag_ids, may_read)
            if found is not None:
                model.checks["validation"] = found
    return {
        "tracking_uri": hook.tracking_uri,
        "mlflow_url": mlflow_ui_url(hook.tracking_uri),  # the same address as the task links
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "models": models,
    }


# -- the app --------------------------------------------------------------------------------

app = FastAPI(
    title="airflow-mlops: MLOps page",
    description="Read-only overview of champion/challenger models (needs an Airflow login).",
    dependencies=[Depends(authorized_user)],
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


@app.get("/", response_class=HTMLResponse)
def mlops_page(request: Request, user: UserDep) -> HTMLResponse:
    """The HTML page: one card per registered model."""
    from airflow_mlops.plugins import model_overview as mo

    try:
        data = load_overview(user)
    except Exception as err:
        log.exception("The MLOps page could not read MLflow")
        html = _templates.get_template("mlops.html").render(
            error=f"Could not read the MLflow registry: {type(err).__name__}: {err}",
            models=[],
            mlflow_url=None,
            tracking_uri=None,
            generated_at=None,
            metric_names=[],
            links=None,
            prefix=_prefix(request),
        )
        return HTMLResponse(html, status_code=status.HTTP_502_BAD_GATEWAY)
    base = data["mlflow_url"]
    links = {
        "model": lambda name: mo.model_url(base, name),
        "version": lambda name, v: mo.version_url(base, name, v),
        "run": lambda exp, run: mo.run_url(base, exp, run),
        "report": lambda model, verdict: _report_href(_prefix(request), model, verdict),
        "task": _airflow_task_href,
    }
    html = _templates.get_template("mlops.html").render(
        error=None,
        models=data["models"],
        mlflow_url=base,
        tracking_uri=data["tracking_uri"],
        generated_at=data["generated_at"],
        metric_names=mo.all_metric_names(data["models"]),
        links=links,
        prefix=_prefix(request),
    )
    return HTMLResponse(html)


@app.get("/api/models")
def models_json(user: UserDep) -> JSONResponse:
    """The same data as JSON (for scripts and tests)."""
    try:
        data = load_overview(user)
    except Exception as err:
        log.exception("The MLOps page could not read MLflow")
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, f"Could not read the MLflow registry: {err}"
        ) from err
    data["models"] = [m.to_dict() for m in data["models"]]
    return JSONResponse(data)


@app.get("/reports/runs/{run_id}/{kind}")
def report_of_run(run_id: str, kind: str) -> Response:
    """The report a check run recorded (the URI comes from MLflow, never from the browser)."""
    from airflow_mlops.plugins.model_overview import report_uri_of_run

    with _MLFLOW_LOCK, _mlflow_hook().session() as client:
        uri = _or_404(lambda: report_uri_of_run(client, run_id, kind), kind)
    return _report_response(uri)


@app.get("/reports/models/{name}/versions/{version}/{kind}")
def report_of_version(name: str, version: str, kind: str) -> Response:
    """The report recorded on a model version or its training run."""
    from airflow_mlops.plugins.model_overview import report_uri_of_version

    with _MLFLOW_LOCK, _mlflow_hook().session() as client:
        uri = _or_404(lambda: report_uri_of_version(client, name, version, kind), kind)
    return _report_response(uri)


@app.get("/reports/runs/{run_id}/artifacts/{path:path}")
def report_artifact(run_id: str, path: str) -> Response:
    """A report attached to an MLflow run (report folders only, never the model)."""
    import tempfile

    from airflow_mlops.plugins.model_overview import is_report_artifact, report_artifact_of_run

    if not is_report_artifact(path):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Only reports can be opened here.")
    with tempfile.TemporaryDirectory(prefix="mlops-report-") as tmp:
        with _MLFLOW_LOCK, _mlflow_hook().session() as client:
            local = _or_404(lambda: report_artifact_of_run(client, run_id, path, tmp), "such")
        return _bytes_response(Path(local).read_bytes(), path)


@app.get("/reports/airflow/{dag_id}/{run_id}/{task_id}")
def report_of_task(
    dag_id: str, run_id: str, task_id: str, user: UserDep, map_index: int = -1
) -> Response:
    """The report a validation task recorded in its XCom (for users who may read it)."""
    from airflow_mlops.plugins.airflow_facts import report_uri_of_task

    if not _may_read_xcom(user)(dag_id):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"Forbidden: reading {dag_id} is not allowed."
        )
    uri = report_uri_of_task(dag_id, run_id, task_id, map_index)
    if not uri:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No report is recorded for this task.")
    return _report_response(str(uri))


def _or_404(read: Any, kind: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        uri = read()
    except MlflowException as err:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"Not found in MLflow: {err.message}"
        ) from err
    if not uri:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No {kind} report is recorded there.")
    return uri


def _report_response(uri: str) -> Response:
    if uri.startswith(("http://", "https://")):
        return RedirectResponse(uri)
    from airflow_mlops.core.errors import DataNotFoundError
    from airflow_mlops.hooks.storage import StorageHook

    storage = StorageHook(aws_conn_id=_setting("aws_conn_id", "aws_default")).get_storage()
    try:
        body = storage.read_bytes(uri)
    except DataNotFoundError as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"The report {uri} does not exist.") from err
    return _bytes_response(body, uri)


def _bytes_response(body: bytes, name: str) -> Response:
    """A report's bytes, sandboxed: its scripts cannot use the Airflow session."""
    if len(body) > MAX_REPORT_BYTES:
        raise HTTPException(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"The report {name} is too large."
        )
    media_type = mimetypes.guess_type(name.split("?")[0])[0] or "application/octet-stream"
    if media_type not in {"text/html", "application/json", "text/plain", "text/csv"}:
        media_type = "application/octet-stream"
    return Response(
        body,
        media_type=media_type,
        headers={"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff"},
    )


def _prefix(request: Request) -> str:
    """Where this app is mounted (``/mlops`` in Airflow), for links between its routes."""
    return (request.scope.get("root_path") or "").rstrip("/")


def _report_href(prefix: str, model: Any, verdict: Any) -> str | None:
    if verdict.report_artifact and verdict.run_id:
        return f"{prefix}/reports/runs/{quote(verdict.run_id, safe='')}/artifacts/{quote(verdict.report_artifact)}"
    if not verdict.report_uri:
        return None
    if verdict.report_uri.startswith(("http://", "https://")):
        return verdict.report_uri
    task = verdict.airflow_task or {}
    if task.get("run_id"):
        href = "/".join(quote(str(task[k]), safe="") for k in ("dag_id", "run_id", "task_id"))
        return f"{prefix}/reports/airflow/{href}?map_index={int(task.get('map_index', -1))}"
    kind = quote(verdict.kind, safe="")
    if verdict.model_version:
        name = quote(model.name, safe="")
        return f"{prefix}/reports/models/{name}/versions/{quote(verdict.model_version, safe='')}/{kind}"
    if verdict.run_id:
        return f"{prefix}/reports/runs/{quote(verdict.run_id, safe='')}/{kind}"
    return None


def _airflow_task_href(verdict: Any) -> str | None:
    """The Airflow UI page of the task that produced a verdict (or of its DAG)."""
    task = verdict.airflow_task or {}
    if not task.get("dag_id"):
        return None
    dag = quote(str(task["dag_id"]), safe="")
    if not task.get("run_id"):
        return f"/dags/{dag}"
    href = f"/dags/{dag}/runs/{quote(str(task['run_id']), safe='')}/tasks/{quote(str(task['task_id']), safe='')}"
    if int(task.get("map_index", -1)) >= 0:
        href += f"/mapped/{int(task['map_index'])}"
    return href
