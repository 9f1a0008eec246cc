"""The read-only "MLOps" page in the Airflow UI: an Airflow 3 plugin (FastAPI app + nav entry).

The FastAPI app is mounted by the Airflow API server under ``/mlops``; the ``external_views``
entry adds "MLOps" to the UI's navigation, which shows the page inside the UI at
``/plugin/mlops``.

**Auth.** Routes of a plugin's FastAPI app are not protected by Airflow by default, so every
route here depends on :func:`authorized_user`, which calls Airflow's own
``airflow.api_fastapi.core_api.security.get_user`` (the dependency of the REST API: bearer
token first, then the UI's ``_token`` cookie) and then asks the configured auth manager
whether the user may read DAGs. Anonymous callers get 401 (browsers are redirected to the
login page), invalid tokens 403/401, users without DAG read access 403.

**Import cost.** Every Airflow process that loads plugins imports this module (scheduler,
workers, DAG processor, and every task process when ``lazy_discover_providers=False``), so
it imports nothing but Airflow's plugin base class: the FastAPI app lives in
:mod:`airflow_mlops.plugins.mlops_app` and is imported when ``MlopsPlugin.fastapi_apps`` is
first read (by the API server). Airflow's API security module, MLflow and the storage code
are imported at request time, in the API server.

Configuration (``airflow.cfg`` section ``[mlops]`` or ``AIRFLOW__MLOPS__*`` variables):

- ``mlflow_conn_id`` (default ``mlflow_default``): the MLflow connection to read;
- ``mlflow_ui_url``: the MLflow address for the browser when it differs from the tracking
  URI (in docker-compose: ``http://localhost:5000`` vs ``http://mlflow:5000``); the task
  instances' extra links to MLflow use it too;
- ``aws_conn_id`` (default ``aws_default``): the connection used to open ``s3://`` reports;
- ``page_max_models`` (default 300: a 100-segment pipeline fits).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

__all__ = ["PAGE_NAME", "URL_PREFIX", "MlopsPlugin"]

URL_PREFIX = "/mlops"
PAGE_NAME = "MLOps"


class _LazyFastapiApps:
    """``fastapi_apps`` built on first read, so that importing the plugin skips FastAPI."""

    def __init__(self) -> None:
        self._apps: list[dict[str, Any]] | None = None

    def __get__(self, instance: object, owner: type | None = None) -> list[dict[str, Any]]:
        if self._apps is None:
            from airflow_mlops.plugins.mlops_app import app

            self._apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "MLOps page"}]
        return self._apps


class MlopsPlugin(AirflowPlugin):
    """Adds the read-only "MLOps" page (``/mlops``) and its entry in the UI navigation."""

    name = "mlops"
    fastapi_apps = _LazyFastapiApps()  # type: ignore[assignment]
    external_views = [
        {
            "name": PAGE_NAME,
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "mlops",
        }
    ]
