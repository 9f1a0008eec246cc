"""A private Airflow + MLflow environment for the benchmarks that run real DAGs.

Import this module **before** anything imports airflow: it reuses the test suite's set-up
(``tests/conftest.py``: a private ``AIRFLOW_HOME`` with a migrated metadata DB, a real
``mlflow server`` on 127.0.0.1) and adds what the benchmarks read back from the metadata DB:
per-task durations and the size of every XCom value.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT

sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "deploy"))  # tests/_servers imports devkit
import conftest

WORKDIR: Path = conftest._SESSION_DIR
RESULTS = ROOT / "bench" / "results"


class Environment:
    """Migrated metadata DB + a running MLflow server; ``close()`` stops and removes it all."""

    def __init__(self, mlflow_workers: int = 1) -> None:
        conftest._migrate_airflow_db()
        if mlflow_workers == 1:
            self.mlflow = conftest._server("mlflow")
        else:  # a server sized as production runs it: several uvicorn worker processes
            from _servers import mlflow_server_for

            self.mlflow = mlflow_server_for(WORKDIR / "mlflow", workers=mlflow_workers).start()
        self.mlflow.wait_ready()
        os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = conftest.mlflow_connection_env(self.mlflow.url)

    def close(self) -> None:
        self.mlflow.stop()
        shutil.rmtree(WORKDIR, ignore_errors=True)

    def __enter__(self) -> Environment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_dag(dag: Any, **conf: Any) -> tuple[Any, float]:
    """Serialize and run a DAG with ``dag.test()`` (in-process task runner); (DagRun, seconds)."""
    conftest.serialize_dag(dag)
    start = time.perf_counter()
    dag_run = dag.test(run_conf=conf or None)
    return dag_run, time.perf_counter() - start


def _db(path: Path | None = None) -> sqlite3.Connection:
    """The metadata DB: this process's private home, or ``path`` (e.g. an AirflowStack's)."""
    return sqlite3.connect(path or Path(os.environ["AIRFLOW_HOME"]) / "airflow.db")


def task_rows(dag_id: str, run_id: str, db_path: Path | None = None) -> list[dict[str, Any]]:
    """Every task instance of a run: task_id, map_index, state, duration (s)."""
    with contextlib.closing(_db(db_path)) as db:
        rows = db.execute(
            "SELECT task_id, map_index, state, duration FROM task_instance "
            "WHERE dag_id = ? AND run_id = ? ORDER BY start_date",
            (dag_id, run_id),
        ).fetchall()
    return [{"task_id": t, "map_index": m, "state": s, "duration": d or 0.0} for t, m, s, d in rows]


def xcom_sizes(dag_id: str, run_id: str, db_path: Path | None = None) -> list[dict[str, Any]]:
    """Size in bytes of every XCom value a run stored (as stored: serialized JSON)."""
    with contextlib.closing(_db(db_path)) as db:
        rows = db.execute(
            "SELECT task_id, map_index, key, length(CAST(value AS BLOB)) FROM xcom "
            "WHERE dag_id = ? AND run_id = ?",
            (dag_id, run_id),
        ).fetchall()
    return [{"task_id": t, "map_index": m, "key": k, "bytes": n or 0} for t, m, k, n in rows]


def save_xcom_sizes(bench: str, sizes: list[dict[str, Any]]) -> None:
    """Keep the sizes for ``bench_xcom.py`` (the largest value over every benchmark run)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"xcom_{bench}.json").write_text(json.dumps(sizes))


def per_task_totals(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """task_id -> {count, total_s, median_s} over map indexes."""
    import statistics

    by_task: dict[str, list[float]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], []).append(float(row["duration"]))
    return {
        task: {"count": len(d), "total_s": sum(d), "median_s": statistics.median(d)}
        for task, d in by_task.items()
    }
