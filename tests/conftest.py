"""Shared fixtures: a private AIRFLOW_HOME with a migrated DB, and real MLflow and S3 servers.

Nothing here is mocked: the MLflow tracking servers are ``mlflow server`` subprocesses and
S3 is moto's standalone server, all on 127.0.0.1 with free ports, stopped at session end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Airflow reads its configuration at first import: set the environment before any test
# module imports airflow.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="airflow-mlops-tests-"))
os.environ["AIRFLOW_HOME"] = str(_SESSION_DIR / "airflow")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(_SESSION_DIR / "dags"))
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
for _var in [v for v in os.environ if v.startswith(("MLFLOW_TRACKING", "AIRFLOW_CONN_"))]:
    del os.environ[_var]

sys.path.insert(0, str(Path(__file__).parent))
import _fuzz  # noqa: E402, F401  (loads the Hypothesis profile: derandomized in CI)
from _servers import Server, mlflow_server_for, moto_server_for  # noqa: E402

MLFLOW_ADMIN_PASSWORD = "test-admin-password-1234"
_SERVER_FIXTURES = {"mlflow_server", "mlflow_conn", "mlflow_auth_server", "s3_server", "s3_bucket"}
_started: dict[str, Server] = {}


def _migrate_airflow_db() -> None:
    """Migrate the metadata DB once per Airflow version, then copy the template."""
    from airflow import __version__ as airflow_version

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "airflow-mlops"
    template = cache / f"airflow-{airflow_version}.db"
    target = Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    if template.exists() and _has_airflow_tables(template):
        shutil.copyfile(template, target)
        return
    from airflow.utils.db import initdb

    initdb()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = template.with_suffix(f".{uuid.uuid4().hex}.tmp")
    # Airflow opens SQLite in WAL mode: right after initdb() the tables may still sit in
    # airflow.db-wal, so copying airflow.db alone can give an empty database.
    with (
        contextlib.closing(sqlite3.connect(target)) as src,
        contextlib.closing(sqlite3.connect(tmp)) as dst,
    ):
        src.backup(dst)
    os.replace(tmp, template)


def _has_airflow_tables(path: Path) -> bool:
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='task_instance'"
        ).fetchone()
    return row is not None


def _server(name: str) -> Server:
    """The session's server ``name`` (mlflow, mlflow-auth, moto), started on first use."""
    if name not in _started:
        workdir = _SESSION_DIR / name
        if name == "mlflow":
            server = mlflow_server_for(workdir)
        elif name == "mlflow-auth":
            server = mlflow_server_for(workdir, basic_auth_password=MLFLOW_ADMIN_PASSWORD)
        else:
            server = moto_server_for(workdir)
        _started[name] = server.start()
    return _started[name]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the servers the collected tests need right away, so their start-up overlaps."""
    wanted = set()
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & {"mlflow_server", "mlflow_conn"}:
            wanted.add("mlflow")
        if "mlflow_auth_server" in names:
            wanted.add("mlflow-auth")
        if names & {"s3_server", "s3_bucket"}:
            wanted.add("moto")
    for name in sorted(wanted):
        _server(name)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for server in _started.values():
        server.stop()
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolate_mlflow_fluent_state() -> Iterator[None]:
    """Tests share one process: undo what a test left in MLflow's module-level state.

    ``mlflow.set_experiment`` sets a process-wide active experiment that makes a later
    ``mlflow.start_run(run_id=...)`` of another experiment fail; an unended run, a tracking URI
    or an ``MLFLOW_*`` variable set by one test would change where the next one logs.
    """
    env_before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    import sys as _sys

    fluent = _sys.modules.get("mlflow.tracking.fluent")
    if fluent is None:
        return
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    while mlflow.active_run() is not None:
        mlflow.end_run()
    fluent._active_experiment_id = None
    tracking_utils._tracking_uri = None
    registry_utils._registry_uri = None
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        if key not in env_before:
            del os.environ[key]
    os.environ.update(env_before)


@pytest.fixture(scope="session", autouse=True)
def airflow_home() -> Path:
    """A private AIRFLOW_HOME whose metadata DB is migrated (needed by ``dag.test()``)."""
    _migrate_airflow_db()
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture(scope="session")
def mlflow_server() -> str:
    """Tracking URI of a real ``mlflow server`` (SQLite backend, local artifacts)."""
    server = _server("mlflow")
    server.wait_ready()
    return server.url


@pytest.fixture(scope="session")
def mlflow_auth_server() -> tuple[str, str]:
    """(tracking URI, admin password) of a real ``mlflow server --app-name basic-auth``."""
    server = _server("mlflow-auth")
    server.wait_ready()
    return server.url, MLFLOW_ADMIN_PASSWORD


def mlflow_connection_env(uri: str, **fields: object) -> str:
    extra = {"timeout": 10, "max_retries": 1, **fields.pop("extra", {})}  # type: ignore[arg-type]
    return json.dumps({"conn_type": "mlflow", "host": uri, "extra": extra, **fields})


@pytest.fixture
def mlflow_conn(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Defines Airflow connection ``mlflow_default`` pointing at the MLflow server fixture."""
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", mlflow_connection_env(mlflow_server))
    return "mlflow_default"


@pytest.fixture(scope="session")
def s3_server() -> str:
    """Endpoint URL of a real moto S3 server."""
    server = _server("moto")
    server.wait_ready()
    return server.url


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; Airflow connection ``aws_default`` points at the moto server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"},
            }
        ),
    )
    return name


def serialize_dag(dag: object) -> None:
    """Write a DAG built in a test to the metadata DB, as the DAG processor would.

    Airflow 3.3's ``dag.test()`` only runs DAGs it finds serialized (it walks the DAG bundles);
    DAGs built inside a test function are not in any bundle.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
        session.commit()
        update_dag_parsing_results_in_db(
            "dags-folder",
            None,
            [LazyDeserializedDAG.from_dag(dag)],
            {},
            None,
            set(),
            session=session,
        )


@pytest.fixture
def tracking(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the process-wide MLflow URI (used by model loading) at the server fixture."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    return mlflow_server


@pytest.fixture
def airflow_tracking(mlflow_conn: str, tracking: str) -> str:
    """``tracking``, plus the Airflow connection (``mlflow_default``) a DAG's operators use."""
    return tracking


@pytest.fixture
def client(tracking: str):
    """An ``MlflowClient`` on the server fixture (with the process-wide URI set too)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking)


def stored_xcom(dag_run: Any, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    """The XCom value a task of ``dag_run`` stored, read from the metadata DB (None if absent)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.task_id == task_id,
                XComModel.map_index == map_index,
                XComModel.key == key,
            )
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def task_states(dag_run: object) -> dict[tuple[str, int], str]:
    """{(task_id, map_index): state} of a finished DagRun, read from the metadata DB."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,  # type: ignore[attr-defined]
        )
        return {(ti.task_id, ti.map_index): str(ti.state) for ti in rows}


@pytest.fixture
def run_dag() -> Callable[..., object]:
    """Run a DAG with ``dag.test()`` (real Airflow task runner) and return the DagRun.

    ``run_dag(dag, **conf)``; the returned DagRun has ``.state``; use ``task_states(dag_run)``
    for per-task states.
    """

    def _run(dag: object, **conf: object) -> object:
        serialize_dag(dag)
        return dag.test(run_conf=conf or None)  # type: ignore[attr-defined]

    return _run


@pytest.fixture
def tmp_data(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    path.mkdir()
    yield path
