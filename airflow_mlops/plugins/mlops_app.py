"""The FastAPI app behind the "MLOps" page (see :mod:`airflow_mlops.plugins.mlops_page`).

Imported only when the API server mounts the plugin's app (``MlopsPlugin.fastapi_apps`` is
resolved on first access), so schedulers, DAG processors and task processes that load
plugins do not pay for FastAPI (it also pulls ``pydantic.v1``).

**Auth, like Airflow's own API.** Routes of a plugin's FastAPI app are not protected by
Airflow by default, so every route depends on :func:`authorized_user`: Airflow's
``get_user`` (bearer token, then the UI's ``_token`` cookie), then the auth manager's answer
to "may this user read DAGs" (what ``GET /api/v2/dags`` asks). Then each model is shown only
to users who may read every DAG that trained it (lineage tag ``mlops.airflow.dag_id`` of its
``@champion``/``@challenger`` versions), asked with the DAG's team as Airflow's API asks
(``DagDetails(id=..., team_name=...)``); a model without a lineage DAG only to users who
may read all DAGs. Reports follow their model; a task's report follows the auth manager's
XCom permission on its DAG.

**Airflow facts.** Per request, for the DAGs the user may read: the last validation, the
newest decay result of each model (from its own DAGs only) and the promotion approvals still
waiting, linked to Airflow's *Required Actions* tab (:mod:`airflow_mlops.plugins.airflow_facts`).
Each card says whether the model is healthy (:func:`model_overview.health_problems`), and
segment models are grouped under their pipeline (:func:`model_overview.page_sections`).

**Reports.** Served only from MLflow (report folders of a run the user's page shows) or
from under ``[mlops] artifacts_uri``, with a byte cap (:mod:`airflow_mlops.plugins.reports`).

**Responsiveness.** Routes are ``async``: MLflow calls and metadata-database reads run in
the page's small bounded executors (:mod:`airflow_mlops.plugins.mlflow_calls`): 503 when
they are full, 504 after ``[mlops] page_mlflow_timeout_seconds``. The overview is cached
unfiltered for ``[mlops] page_cache_seconds``; each request filters its own copy for its user.

Configuration: the ``[mlops]`` options listed in :mod:`airflow_mlops.plugins.mlops_page`;
``mlflow_ui_url`` is read by :func:`airflow_mlops.links.mlflow.mlflow_ui_url`, the function
the task links use, so the page and the links point at the same MLflow address.

Over 600 lines on purpose: every route and the access check it depends on stay in one file,
so a review of who may see what reads one module.
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from airflow_mlops.plugins import mlflow_calls, model_overview, reports

__all__ = [
    "MAX_REPORT_BYTES",
    "REPORT_CSP",
    "RETRY_AFTER_SECONDS",
    "TEMPLATES",
    "Access",
    "access_for",
    "app",
    "authorized_user",
    "load_overview",
    "report_max_bytes",
    "unfiltered_overview",
    "visible_models",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

TEMPLATES = Path(__file__).parent / "templates"
# A report is shown in a sandbox: scripts of an Evidently report may run, but in an opaque
# origin that cannot read the Airflow session cookie, call the Airflow API, open windows
# (no allow-popups: a popup would escape the sandbox) or navigate the page.
REPORT_CSP = (
    "sandbox allow-scripts; default-src 'self' 'unsafe-inline' data: blob:; "
    "form-action 'none'; base-uri 'none'"
)
#: Default of ``[mlops] report_max_bytes``: a larger report is refused (413) before it is read.
MAX_REPORT_BYTES = reports.DEFAULT_MAX_REPORT_BYTES
RETRY_AFTER_SECONDS = "5"
DEFAULT_MAX_MODELS = 300
#: A pipeline with more segment models than this is shown collapsed.
GROUP_OPEN_MAX = 8

_templates = Environment(
    loader=FileSystemLoader(str(TEMPLATES)),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.globals.update(
    page_sections=model_overview.page_sections,
    health_problems=model_overview.health_problems,
    # An SVG built from escaped parts (model_overview.decay_sparkline), marked safe here.
    decay_sparkline=lambda view: Markup(model_overview.decay_sparkline(view)),
    group_open_max=GROUP_OPEN_MAX,
)


# -- auth -----------------------------------------------------------------------------------


async def authorized_user(request: Request) -> Any:
    """The logged-in Airflow user allowed to read DAGs, or an HTTP error.

    Uses Airflow's own API security dependency (``get_user``) and auth manager, so the page
    follows whatever auth manager the deployment configures (simple, FAB, Keycloak, ...),
    and asks what ``GET /api/v2/dags`` asks: reading DAGs, no particular DAG or team.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
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
    if not get_auth_manager().is_authorized_dag(
        method="GET", details=DagDetails(id=None, team_name=None), user=user
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden: reading DAGs is not allowed.")
    return user


UserDep = Annotated[Any, Depends(authorized_user)]


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


@dataclass
class Access:
    """What one user may read, asked of the auth manager with each DAG's team.

    Built in a worker thread (it reads DAG teams from the metadata database): see
    :func:`access_for`.
    """

    user: Any
    teams: dict[str, str | None]
    readable: set[str]
    _reads_all: bool | None = None

    def may_read_dag(self, dag_id: str) -> bool:
        return dag_id in self.readable

    def may_read_xcom(self, dag_id: str) -> bool:
        """Per-DAG check of the task results (XCom), the permission of Airflow's XCom API."""
        from airflow.api_fastapi.auth.managers.models.resource_details import (
            DagAccessEntity,
            DagDetails,
        )

        return _auth_manager().is_authorized_dag(
            method="GET",
            access_entity=DagAccessEntity.XCOM,
            details=DagDetails(id=dag_id, team_name=self.team_of(dag_id)),
            user=self.user,
        )

    def team_of(self, dag_id: str) -> str | None:
        if dag_id not in self.teams:
            from airflow_mlops.plugins.airflow_facts import dag_teams

            self.teams.update(dag_teams([dag_id]))
        return self.teams.get(dag_id)

    def reads_all_dags(self) -> bool:
        """May the user read every DAG (the auth manager's own list covers them all)?"""
        if self._reads_all is None:
            from airflow_mlops.plugins.airflow_facts import all_dag_ids

            authorized = _auth_manager().get_authorized_dag_ids(user=self.user, method="GET")
            self._reads_all = all_dag_ids() <= set(authorized)
        return self._reads_all

    def may_see(self, model: Any) -> bool:
        """A model trained by DAGs the user may all read; without lineage, only if all DAGs."""
        if model.lineage_dag_ids:
            return all(self.may_read_dag(d) for d in model.lineage_dag_ids)
        return self.reads_all_dags()


def _auth_manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


def access_for(user: Any, dag_ids: Iterable[str]) -> Access:
    """The user's :class:`Access` to ``dag_ids`` (blocking: DB reads and auth manager calls)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    from airflow_mlops.plugins.airflow_facts import dag_teams

    teams = dag_teams(dag_ids)
    auth = _auth_manager()
    readable = {
        dag_id
        for dag_id, team in teams.items()
        if auth.is_authorized_dag(
            method="GET", details=DagDetails(id=dag_id, team_name=team), user=user
        )
    }
    return Access(user=user, teams=teams, readable=readable)


# -- configuration and blocking work ---------------------------------------------------------


def _setting(key: str, default: str | None = None) -> str | None:
    from airflow.configuration import conf

    value = conf.get("mlops", key, fallback=default)
    return value or default


def _mlflow_hook() -> Any:
    from airflow_mlops.hooks.mlflow import MlflowHook

    return MlflowHook(
        mlflow_conn_id=_setting("mlflow_conn_id", "mlflow_default") or "mlflow_default"
    )


def report_max_bytes() -> int:
    """``[mlops] report_max_bytes`` (default 50 MiB): the largest report the page serves."""
    raw = _setting("report_max_bytes")
    try:
        value = int(raw) if raw else MAX_REPORT_BYTES
    except ValueError:
        log.warning("[mlops] report_max_bytes must be an integer, got %r", raw)
        value = MAX_REPORT_BYTES
    return value if value > 0 else MAX_REPORT_BYTES


def page_max_models() -> int:
    """``[mlops] page_max_models``: registered models read per overview (a 100-segment
    pipeline fits the default)."""
    raw = _setting("page_max_models")
    try:
        value = int(raw) if raw else DEFAULT_MAX_MODELS
    except ValueError:
        log.warning("[mlops] page_max_models must be an integer, got %r", raw)
        value = DEFAULT_MAX_MODELS
    return value if value > 0 else DEFAULT_MAX_MODELS


async def _blocking(work: Callable[[], T]) -> T:
    """Run a metadata-database read (and auth manager calls) off the event loop."""
    return await _answer_errors(mlflow_calls.call_blocking(work))


async def _mlflow(work: Callable[[Any], T]) -> T:
    """Run ``work(client)`` in the page's bounded MLflow executor."""
    return await _answer_errors(mlflow_calls.call_mlflow(work))


async def _answer_errors(call: Awaitable[T]) -> T:
    """The executor's refusals as HTTP answers: full -> 503 (retry later), too slow -> 504."""
    try:
        return await call
    except mlflow_calls.MlflowBusy as err:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "The MLOps page is busy reading MLflow; try again shortly.",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from err
    except mlflow_calls.MlflowTimeout as err:
        raise HTTPException(
            status.HTTP_504_GATEWAY_TIMEOUT, "MLflow did not answer in time."
        ) from err


# -- the overview: cached unfiltered, filtered per request ----------------------------------


def _read_registry(client: Any) -> dict[str, Any]:
    """Everything the page shows, for every user (runs in the MLflow executor)."""
    from airflow_mlops.plugins.model_overview import collect_overview

    max_models = page_max_models()
    return {
        "tracking_uri": _mlflow_hook().display_uri,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "models": collect_overview(client, max_models=max_models, map_fn=mlflow_calls.thread_map),
    }


async def unfiltered_overview() -> dict[str, Any]:
    """The registry overview, shared by all users for ``[mlops] page_cache_seconds``.

    Never shown as is: :func:`load_overview` filters a copy for each user.
    """
    key = "overview:{}:{}".format(_setting("mlflow_conn_id", "mlflow_default"), page_max_models())
    return await mlflow_calls.cached(key, lambda: _mlflow(_read_registry))


def visible_models(user: Any, models: list[Any], *, with_validation: bool = True) -> list[Any]:
    """Copies of the models ``user`` may see, with what Airflow knows of them that the user
    may read: validation verdicts, decay results, pending approvals (blocking: runs in the
    database executor). The cached models are never mutated.
    """
    from airflow_mlops.plugins.airflow_facts import latest_validation

    access = access_for(user, {d for m in models for d in m.lineage_dag_ids})
    shown = []
    for model in models:
        if not access.may_see(model):
            continue
        mine = replace(model, checks=dict(model.checks), approvals=[])
        if with_validation and "validation" not in mine.checks and mine.lineage_dag_ids:
            # The validation operator runs before training: its verdict is in Airflow.
            found = latest_validation(mine.lineage_dag_ids, access.may_read_xcom)
            if found is not None:
                mine.checks["validation"] = found
        shown.append(mine)
    if with_validation and shown:
        _add_decay_and_approvals(shown, access)
    return shown


def monitoring_dag_ids(model: Any) -> list[str]:
    """The DAGs whose decay results may speak for ``model``: its training DAGs and its
    pipeline's monitoring DAG (``monitor__<pipeline>``, ``PipelineConfig.monitoring_dag_id``)."""
    dags = list(model.lineage_dag_ids)
    if model.pipeline:
        dags.append(f"monitor__{model.pipeline}")
    return dags


def _add_decay_and_approvals(shown: list[Any], access: Access) -> None:
    """Each model's newest decay result and its pending approvals, for DAGs the user may read
    (decay results and registrations are task results: Airflow's XCom permission)."""
    from functools import cache

    from airflow_mlops.plugins.airflow_facts import latest_decays, pending_approvals
    from airflow_mlops.plugins.model_overview import apply_decay_result

    may_xcom = cache(access.may_read_xcom)
    decays = latest_decays({m.name: monitoring_dag_ids(m) for m in shown}, may_xcom)
    for model in shown:
        if model.name in decays:
            result, task = decays[model.name]
            at = task.pop("at", None)
            model.decay = apply_decay_result(model.decay, result, task)
            model.decay.at = at
    dags = {d for m in shown for d in m.lineage_dag_ids if access.may_read_dag(d)}
    for approval in pending_approvals(dags, may_xcom):
        owners = [
            m
            for m in shown
            if approval.dag_id in m.lineage_dag_ids and approval.model_name in (None, m.name)
        ]
        # A request naming no model is shown only where it cannot be mistaken for another's.
        if len(owners) == 1 or (owners and approval.model_name is not None):
            owners[0].approvals.append(approval)


async def load_overview(user: Any) -> dict[str, Any]:
    """The overview ``user`` may see: the cached registry read, filtered for them."""
    from airflow_mlops.links.mlflow import mlflow_ui_url

    data = await unfiltered_overview()
    models = await _blocking(lambda: visible_models(user, data["models"]))
    return {
        "tracking_uri": data["tracking_uri"],
        "mlflow_url": mlflow_ui_url(data["tracking_uri"]),  # the same address as task links
        "generated_at": data["generated_at"],
        "models": models,
        # The registry holds more models than the page reads ([mlops] page_max_models).
        "truncated": len(data["models"]) >= page_max_models(),
    }


async def _shown_model(user: Any, pick: Callable[[Any], bool]) -> Any:
    """The first model on the page that ``pick`` selects and ``user`` may see.

    404 when no card shows it, 403 when only cards the user may not see do (as Airflow's
    API answers 403 for a DAG the user may not read).
    """
    data = await unfiltered_overview()
    candidates = [m for m in data["models"] if pick(m)]
    if not candidates:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "The page shows no such report.")
    visible = await _blocking(lambda: visible_models(user, candidates, with_validation=False))
    if not visible:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "Forbidden: reading this model's DAG is not allowed."
        )
    return visible[0]


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
async def mlops_page(request: Request, user: UserDep) -> HTMLResponse:
    """The HTML page: one card per registered model the user may see."""
    from airflow_mlops.plugins import model_overview as mo

    try:
        data = await load_overview(user)
    except HTTPException as err:
        return _error_page(request, err.detail, err.status_code, err.headers)
    except Exception as err:
        log.exception("The MLOps page could not read MLflow")
        return _error_page(
            request,
            f"Could not read the MLflow registry: {type(err).__name__}: {err}",
            status.HTTP_502_BAD_GATEWAY,
        )
    base = data["mlflow_url"]
    links = {
        "model": lambda name: mo.model_url(base, name),
        "version": lambda name, v: mo.version_url(base, name, v),
        "run": lambda exp, run: mo.run_url(base, exp, run),
        "report": lambda model, verdict: _report_href(_prefix(request), model, verdict),
        "external": _external_report,
        "task": _airflow_task_href,
        "airflow_run": _airflow_run_href,
        "approval": approval_href,
        "card": lambda version: card_href(_prefix(request), version),
    }
    html = _templates.get_template("mlops.html").render(
        error=None,
        models=data["models"],
        truncated=data["truncated"],
        mlflow_url=base,
        tracking_uri=data["tracking_uri"],
        generated_at=data["generated_at"],
        metric_names=mo.all_metric_names(data["models"]),
        links=links,
        prefix=_prefix(request),
    )
    return HTMLResponse(html)


def _error_page(
    request: Request, error: str, code: int, headers: dict[str, str] | None = None
) -> HTMLResponse:
    html = _templates.get_template("mlops.html").render(
        error=error,
        models=[],
        mlflow_url=None,
        tracking_uri=None,
        generated_at=None,
        metric_names=[],
        links=None,
        prefix=_prefix(request),
    )
    return HTMLResponse(html, status_code=code, headers=headers)


@app.get("/api/models")
async def models_json(user: UserDep) -> JSONResponse:
    """The same data as JSON (for scripts and tests)."""
    try:
        data = await load_overview(user)
    except HTTPException:
        raise
    except Exception as err:
        log.exception("The MLOps page could not read MLflow")
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, f"Could not read the MLflow registry: {err}"
        ) from err
    data["models"] = [m.to_dict() for m in data["models"]]
    return JSONResponse(data)


@app.get("/reports/runs/{run_id}/artifacts/{path:path}")
async def report_artifact(run_id: str, path: str, user: UserDep) -> Response:
    """A report attached to an MLflow run that a card of the user's page shows (report
    folders only, never the model), read through MLflow."""
    from airflow_mlops.plugins.model_overview import is_report_artifact

    if not is_report_artifact(path):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Only reports can be opened here.")
    await _shown_model(user, lambda m: run_id in _run_ids_of(m))
    cap = report_max_bytes()
    body = await _mlflow(lambda client: _read_run_artifact(client, run_id, path, cap))
    return _report_body(body, path)


@app.get("/reports/runs/{run_id}/{kind}")
async def report_of_run(run_id: str, kind: str, user: UserDep) -> Response:
    """The report a check run recorded (the URI comes from MLflow, never from the browser)."""

    def shows(model: Any) -> bool:
        verdict = model.checks.get(kind)
        return bool(verdict and verdict.run_id == run_id and not verdict.model_version)

    model = await _shown_model(user, shows)
    return await _served_uri(model.checks[kind].report_uri)


@app.get("/reports/models/{name}/versions/{version}/{kind}")
async def report_of_version(name: str, version: str, kind: str, user: UserDep) -> Response:
    """The report recorded on a model version (or its training run)."""

    def shows(model: Any) -> bool:
        verdict = model.checks.get(kind)
        return model.name == name and bool(verdict and verdict.model_version == version)

    model = await _shown_model(user, shows)
    return await _served_uri(model.checks[kind].report_uri)


@app.get("/reports/airflow/{dag_id}/{run_id}/{task_id}")
async def report_of_task(
    dag_id: str, run_id: str, task_id: str, user: UserDep, map_index: int = -1
) -> Response:
    """The report a provider's validation task recorded in its XCom (for users who may read
    that DAG's task results, as Airflow's XCom API decides).

    The ``USER`` role may patch that XCom: a URI other than the task's own rendered
    ``report_uri`` is served only from the DAG's own folder of the artifacts root (where the
    operator's default report goes), never from another DAG's.
    """
    from airflow_mlops.operators.base import path_safe
    from airflow_mlops.plugins.airflow_facts import (
        is_provider_validation_task,
        rendered_report_uri,
        report_uri_of_task,
    )

    def find() -> tuple[str | None, str | None]:
        if not access_for(user, []).may_read_xcom(dag_id):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "Forbidden: reading this DAG's task results is not allowed.",
            )
        if not is_provider_validation_task(dag_id, run_id, task_id, map_index):
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                "Only the reports of the provider's validation tasks are served.",
            )
        uri = report_uri_of_task(dag_id, run_id, task_id, map_index)
        if uri and uri == rendered_report_uri(dag_id, run_id, task_id, map_index):
            return uri, None
        return uri, path_safe(dag_id)

    uri, subfolder = await _blocking(find)
    if not uri:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No report is recorded for this task.")
    return await _served_uri(str(uri), subfolder)


# -- reading reports ------------------------------------------------------------------------


def _run_ids_of(model: Any) -> set[str]:
    """The MLflow runs a card shows: its versions' runs and its checks' runs."""
    runs = {v.run_id for v in model.versions} | {c.run_id for c in model.checks.values()}
    return {r for r in runs if r}


def _read_run_artifact(client: Any, run_id: str, path: str, cap: int) -> bytes:
    """A run's report artifact: a file (not a folder) no larger than ``cap``, read capped."""
    from mlflow.exceptions import MlflowException

    parent = posixpath.dirname(path)
    try:
        listed = {f.path: f for f in client.list_artifacts(run_id, parent or None)}
    except MlflowException as err:
        raise reports.ReportRefused(404, "The run has no such report.") from err
    entry = listed.get(path)
    if entry is None:
        raise reports.ReportRefused(404, "The run has no such report.")
    if entry.is_dir:
        raise reports.ReportRefused(404, "The report is a folder, not a file.")
    if entry.file_size is not None and int(entry.file_size) > cap:
        raise reports.ReportRefused(413, f"The report is larger than {cap} bytes.")
    with tempfile.TemporaryDirectory(prefix="mlops-report-") as tmp:
        local = Path(client.download_artifacts(run_id, path, tmp))
        located = reports.LocalReport(path=local.resolve(), root=Path(tmp).resolve())
        return reports.read_local(located, cap)


async def _served_uri(uri: str | None, subfolder: str | None = None) -> Response:
    """A recorded report URI, served only from under ``[mlops] artifacts_uri`` (or its
    ``subfolder``)."""
    from airflow_mlops.core.storage import join_uri

    if not uri:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No report is recorded there.")
    root, cap = _setting("artifacts_uri"), report_max_bytes()
    if root and subfolder:
        root = join_uri(root, subfolder)
    body = await _blocking(lambda: _read_or_refuse(uri, root, cap))
    return _report_body(body, uri)


def _read_or_refuse(uri: str, root: str | None, cap: int) -> bytes:
    try:
        return reports.read_report(uri, root, cap, _s3_client)
    except reports.ReportRefused:
        log.info("MLOps page refused a report URI (outside %s)", root or "any root")
        raise


def _s3_client() -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=_setting("aws_conn_id", "aws_default")).get_conn()


def _report_body(body: bytes, name: str) -> Response:
    """A report's bytes, sandboxed: its scripts cannot use the Airflow session."""
    return Response(
        body,
        media_type=reports.media_type(name),
        headers={"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff"},
    )


@app.exception_handler(reports.ReportRefused)
async def _refused(request: Request, err: reports.ReportRefused) -> JSONResponse:
    """A refused report: its 4xx status and short reason (never the URI)."""
    return JSONResponse({"detail": err.reason}, status_code=err.status)


# -- links ----------------------------------------------------------------------------------


def _prefix(request: Request) -> str:
    """Where this app is mounted (``/mlops`` in Airflow), for links between its routes."""
    return (request.scope.get("root_path") or "").rstrip("/")


def _external_report(verdict: Any) -> str | None:
    """An ``http(s)://`` report URI: a plain link in the page, never a redirect by the app."""
    uri = verdict.report_uri
    return uri if uri and not verdict.report_artifact and reports.is_external(uri) else None


def _report_href(prefix: str, model: Any, verdict: Any) -> str | None:
    """The page's own route serving a verdict's report (None for external or no report)."""
    if verdict.report_artifact and verdict.run_id:
        run = quote(verdict.run_id, safe="")
        return f"{prefix}/reports/runs/{run}/artifacts/{quote(verdict.report_artifact)}"
    if not verdict.report_uri or reports.is_external(verdict.report_uri):
        return None
    task = verdict.airflow_task or {}
    if task.get("run_id") and verdict.kind == "validation":
        href = "/".join(quote(str(task[k]), safe="") for k in ("dag_id", "run_id", "task_id"))
        return f"{prefix}/reports/airflow/{href}?map_index={int(task.get('map_index', -1))}"
    kind = quote(verdict.kind, safe="")
    if verdict.model_version:
        name, version = quote(model.name, safe=""), quote(verdict.model_version, safe="")
        return f"{prefix}/reports/models/{name}/versions/{version}/{kind}"
    if verdict.run_id:
        return f"{prefix}/reports/runs/{quote(verdict.run_id, safe='')}/{kind}"
    return None


def card_href(prefix: str, version: Any) -> str | None:
    """The page's report route serving a version's model card (final, else pending)."""
    from airflow_mlops.core.model_card import card_route

    if not version.card_artifact or not version.run_id:
        return None
    return f"{prefix}{card_route(version.run_id, version.card_artifact)}"


def _airflow_run_href(dag_id: str | None, run_id: str | None) -> str | None:
    """The Airflow UI page of a DAG run named by a tag (each part quoted: no path tricks)."""
    if not dag_id or not run_id:
        return None
    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


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


def approval_href(approval: Any) -> str:
    """The Airflow UI page where a human-in-the-loop request is answered: the task
    instance's "Required Actions" tab (each part quoted: no path tricks)."""
    parts = (approval.dag_id, approval.run_id, approval.task_id)
    dag, run, task = (quote(str(p), safe="") for p in parts)
    href = f"/dags/{dag}/runs/{run}/tasks/{task}"
    if int(approval.map_index) >= 0:
        href += f"/mapped/{int(approval.map_index)}"
    return f"{href}/required_actions"
