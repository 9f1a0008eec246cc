"""Extra links from a task to the MLflow UI: the experiment, the run, the model version.

Pattern (as in the Amazon provider): at ``execute()`` time an operator calls
:func:`persist_mlflow_links`, which stores the link *parameters* (the UI base URL and ids) in
XCom under one key per link; ``get_link`` later formats the URL from them and returns ``""``
when there is nothing to link to. At the end of the task Airflow 3 calls ``get_link`` in the
worker and stores the finished URL under ``link.xcom_key`` (``_link_<ClassName>``), which is
what the UI reads.

The UI base URL is ``[mlops] mlflow_ui_url`` when set (the address a *browser* reaches, e.g.
``http://localhost:5000`` while the workers use ``http://mlflow:5000``), else the tracking URI
when it is an HTTP(S) server: an embedded SQLite or file store has no UI to point at.
Credentials in either URL (``http://user:pw@host``) are never persisted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperatorLink

from airflow_mlops.links.urls import mlflow_page_url, mlflow_ui_base_url

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

__all__ = [
    "EXPERIMENT_LINK_KEY",
    "MODEL_VERSION_LINK_KEY",
    "RUN_LINK_KEY",
    "MlflowBaseLink",
    "MlflowExperimentLink",
    "MlflowModelVersionLink",
    "MlflowRunLink",
    "link_params",
    "mlflow_links",
    "mlflow_ui_url",
    "persist_mlflow_links",
    "read_link_params",
]

log = logging.getLogger(__name__)

# XCom keys holding the link parameters. They must differ from the keys Airflow itself
# uses for the finished URLs (``_link_<ClassName>``).
EXPERIMENT_LINK_KEY = "mlops_link_mlflow_experiment"
RUN_LINK_KEY = "mlops_link_mlflow_run"
MODEL_VERSION_LINK_KEY = "mlops_link_mlflow_model_version"
UI_URL_OPTION = "mlflow_ui_url"  # [mlops] mlflow_ui_url


def mlflow_ui_url(tracking_uri: str | None) -> str | None:
    """The MLflow UI address to show people: ``[mlops] mlflow_ui_url``, else the tracking URI's.

    The one place that reads the option: the extra links (in the workers) and the MLOps page
    (in the API server) both call it. The configured address is cleaned like a tracking URI
    (credentials, query and fragment dropped); one that is not ``http(s)://`` is ignored with
    a warning, since a link is no reason to fail a task or the page. ``None``: no UI to link.
    """
    from airflow.sdk import conf

    configured = conf.get("mlops", UI_URL_OPTION, fallback=None)
    if configured:
        base = mlflow_ui_base_url(configured)
        if base:
            return base
        log.warning(
            "Ignoring [mlops] %s = %r: not an http(s):// URL; linking from the tracking URI.",
            UI_URL_OPTION,
            configured,
        )
    return mlflow_ui_base_url(tracking_uri)


# -- reading the persisted parameters ------------------------------------------------------

# Link keys persisted by this process, per task-instance try. Airflow formats the links at
# the end of the task, in the process that ran execute(): for such a task this answers "was
# the key pushed?" without a request. Small, and bounded by the tasks this process runs.
_persisted_here: dict[tuple[Any, ...], set[str]] = {}


def _try_id(ti: Any) -> tuple[Any, ...]:
    return (ti.dag_id, ti.run_id, ti.task_id, ti.map_index, getattr(ti, "try_number", None))


def read_link_params(key: str, ti_key: Any) -> Any:
    """The parameters persisted under ``key`` for the task instance ``ti_key``, else ``None``.

    Reads only what exists. Airflow's ``XCom.get_value`` of a key never pushed is a 404 from
    the API server, which the task's supervisor logs at level *error* ("XCom not found")
    before answering ``None`` - at the end of every task that had no ids for a link, used an
    embedded store, or failed before persisting. So: a key this process did not persist is not
    read; when this process persisted nothing (the task failed first, or persisted before a
    deferral), the key's values are listed, which answers an empty list quietly.

    Outside a task (no ``SUPERVISOR_COMMS``: Airflow's own test for a task context) there is
    no XCom to read: ``None``. Any other failure (API server unreachable, a broken XCom
    backend) propagates; Airflow logs it with its traceback ("Failed to push an xcom for task
    operator extra link") and the task's state is unaffected.
    """
    from airflow.sdk.execution_time import task_runner

    if not hasattr(task_runner, "SUPERVISOR_COMMS"):
        return None
    from airflow.sdk.execution_time.xcom import XCom

    persisted = _persisted_here.get(_try_id(ti_key))
    if persisted is not None:
        return XCom.get_value(key=key, ti_key=ti_key) if key in persisted else None
    values = XCom.get_all(
        key=key, dag_id=ti_key.dag_id, task_id=ti_key.task_id, run_id=ti_key.run_id
    )
    # get_all spans every map index of the task: keep this instance's (recorded at persist;
    # parameters persisted before map_index was recorded are an unmapped task's).
    mine = [
        v
        for v in values or []
        if isinstance(v, dict) and v.get("map_index", -1) == ti_key.map_index
    ]
    return mine[0] if mine else None


# -- the links ------------------------------------------------------------------------------


class MlflowBaseLink(BaseOperatorLink):
    """Formats an MLflow UI URL from parameters persisted in XCom under :attr:`key`.

    :attr:`route` names the page: ``(word, parameter)`` pairs, so ``(("experiments",
    "experiment_id"), ("runs", "run_id"))`` is ``<base>/#/experiments/<id>/runs/<id>``. The
    parameters a link needs are the ones its route names.
    """

    name: ClassVar[str]
    key: ClassVar[str]
    route: ClassVar[tuple[tuple[str, str], ...]]

    @classmethod
    def required(cls) -> tuple[str, ...]:
        """The parameters the link needs, in route order."""
        return tuple(param for _, param in cls.route)

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        # Runs at the end of every task, also one that failed before persisting anything:
        # a link that was never persisted is "", quietly (see read_link_params).
        return self.url_from_params(read_link_params(self.key, ti_key))

    def url_from_params(self, params: Any) -> str:
        """The URL for persisted ``params``; ``""`` when they are absent or incomplete."""
        if not isinstance(params, dict):
            return ""
        route = ((word, params.get(param)) for word, param in self.route)
        return mlflow_page_url(params.get("base_url"), *route) or ""


class MlflowExperimentLink(MlflowBaseLink):
    """Link to the experiment page."""

    name = "MLflow experiment"
    key = EXPERIMENT_LINK_KEY
    route = (("experiments", "experiment_id"),)


class MlflowRunLink(MlflowBaseLink):
    """Link to the run page (parameters, metrics, artifacts of the run)."""

    name = "MLflow run"
    key = RUN_LINK_KEY
    route = (("experiments", "experiment_id"), ("runs", "run_id"))


class MlflowModelVersionLink(MlflowBaseLink):
    """Link to the registered model version page."""

    name = "MLflow model version"
    key = MODEL_VERSION_LINK_KEY
    route = (("models", "model_name"), ("versions", "model_version"))


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
    """XCom key -> parameters for every link the given ids make possible.

    The base URL is :func:`mlflow_ui_url` of ``tracking_uri``.
    """
    base_url = mlflow_ui_url(tracking_uri)
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
        needed = {field: values[field] for field in link.required()}
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
    model version persists the experiment and run links). Nothing is stored when there is no
    MLflow UI to link to (no ``[mlops] mlflow_ui_url`` and an embedded SQLite/file store) or
    when the task has ``do_xcom_push=False``. Returns what was stored (XCom key -> parameters,
    each with the task's ``map_index``).
    """
    ti = context["ti"]
    task = context.get("task")
    params: dict[str, dict[str, Any]] = {}
    if task is None or getattr(task, "do_xcom_push", True):
        found = link_params(
            tracking_uri=tracking_uri,
            experiment_id=experiment_id,
            run_id=run_id,
            model_name=model_name,
            model_version=model_version,
        )
        params = {key: {**value, "map_index": ti.map_index} for key, value in found.items()}
    persisted = _persisted_here.setdefault(_try_id(ti), set())
    for key, value in params.items():
        ti.xcom_push(key=key, value=value)
        persisted.add(key)
    return params
