"""The end-to-end continuous-training demo (README command 1: ``make demo``).

Runs the real factory-built DAGs of ``include/pipelines/breast_cancer.yaml`` through Airflow
(``dag.test()``: the real task runner, XCom, Assets and metadata DB, in one process) on the
embedded default: bundled data and a local MLflow store under ``.demo/``. Four scenes:

1. first training            -> the first model becomes @champion;
2. a clean batch lands       -> retrain, evaluate on the same holdout, promote or not, with why;
3. a drifted batch arrives   -> the monitoring DAG detects drift and emits the retrain Asset;
                                the CT DAG (scheduled on that Asset) retrains;
4. a corrupted batch lands   -> validation blocks it; the champion is unchanged.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / ".demo"
PIPELINE = "breast_cancer"
DATA = ROOT / "include" / "data" / PIPELINE


def prepare_environment() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    (DEMO / "landing").mkdir(parents=True)
    os.environ["AIRFLOW_HOME"] = str(DEMO / "airflow")
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["GX_ANALYTICS_ENABLED"] = "False"
    for var in [v for v in os.environ if v.startswith(("AIRFLOW_CONN_MLFLOW", "MLFLOW_TRACKING"))]:
        del os.environ[var]


def quiet_logs() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("airflow", "great_expectations", "mlflow", "alembic", "evidently", "py.warnings"):
        logging.getLogger(name).setLevel(logging.ERROR)


def land(*batches: str) -> str:
    """Simulate new data landing: the training file becomes the union of the batches."""
    import pandas as pd

    frame = pd.concat([pd.read_parquet(DATA / f"{b}.parquet") for b in batches], ignore_index=True)
    uri = DEMO / "landing" / f"{PIPELINE}_{'+'.join(batches)}.parquet"
    frame.to_parquet(uri, index=False)
    return str(uri)


def load_dags() -> dict:
    from airflow_mlops.factories import dags_from_yaml

    namespace: dict = {}
    dags_from_yaml(str(ROOT / "dags" / "x.py"), f"../include/pipelines/{PIPELINE}.yaml", namespace)
    return namespace


def run(dag, **conf):
    """dag.test() of a DAG that the DAG processor would find in dags/ (it is serialized there).

    Airflow's task logs go to .demo/airflow-tasks.log so the demo prints only its own lines.
    """
    with output_to_log():
        return dag.test(run_conf=conf or None)


@contextlib.contextmanager
def output_to_log():
    """Send this process's stdout/stderr (Airflow's structured logs) to the demo log file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(DEMO / "airflow-tasks.log", "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def unpause(*dags) -> None:
    """What a user does in the UI: a paused DAG is not scheduled on its Assets."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        for dag in dags:
            session.query(DagModel).filter_by(dag_id=dag.dag_id).update({"is_paused": False})


def champion_version(model: str) -> str:
    from mlflow.exceptions import MlflowException

    from airflow_mlops.hooks.mlflow import MlflowHook

    with output_to_log(), MlflowHook().session() as client:
        try:
            return str(client.get_model_version_by_alias(model, "champion").version)
        except MlflowException:
            return "-"


def summary_of(dag_run) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(
                dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id="summary", key="return_value"
            )
            .first()
        )
        if row is None:
            return {}
        value = XComModel.deserialize_value(row)
        return value if isinstance(value, dict) else {}


def retrain_signals(model: str) -> tuple[int, int]:
    """(asset events of the retrain Asset, CT runs queued by it) from Airflow's metadata DB."""
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from airflow_mlops.assets import retrain_asset

    uri = retrain_asset(model).uri
    with create_session() as session:
        asset = session.query(AssetModel).filter_by(uri=uri).first()
        if asset is None:
            return 0, 0
        events = session.query(AssetEvent).filter_by(asset_id=asset.id).count()
        queued = session.query(AssetDagRunQueue).filter_by(asset_id=asset.id).count()
        return events, queued


def main() -> int:
    started = time.monotonic()
    prepare_environment()
    print(f"airflow-mlops demo: AIRFLOW_HOME={os.environ['AIRFLOW_HOME']}", flush=True)
    print("  migrating the Airflow metadata DB ...", flush=True)
    from airflow.utils.db import initdb

    quiet_logs()
    initdb()
    quiet_logs()
    dags = load_dags()
    ct, monitor = dags[f"ct__{PIPELINE}"], dags[f"monitor__{PIPELINE}"]
    model = PIPELINE
    rows: list[tuple[str, str, str, str]] = []

    def scene(name: str, dag_run, reason_override: str | None = None) -> None:
        summary = summary_of(dag_run)
        outcome = summary.get("outcome") or str(dag_run.state)
        reason = reason_override or summary.get("reason") or ""
        rows.append((name, outcome, champion_version(model), reason))
        print(f"  [{time.monotonic() - started:5.0f}s] {name}: {outcome} - {reason}", flush=True)

    print("1/4 first training on the reference batch ...", flush=True)
    scene("first training", run(ct, train_uri=land("reference")))
    unpause(ct, monitor)

    print("2/4 a clean batch lands: retrain and evaluate against the champion ...", flush=True)
    scene("clean batch", run(ct, train_uri=land("reference", "clean")))

    print("3/4 a drifted batch arrives: monitoring ...", flush=True)
    monitor_run = run(monitor, current_uri=str(DATA / "drifted.parquet"))
    events, queued = retrain_signals(model)
    verdict = "drift detected" if events else f"no drift ({monitor_run.state})"
    drift_reason = f"retrain Asset events={events}, CT runs queued by it={queued}"
    rows.append(("drift check", verdict, champion_version(model), drift_reason))
    print(f"      {drift_reason}", flush=True)
    if queued:
        print("      running the CT DAG that the retrain Asset queued ...", flush=True)
        scene("drift retrain", run(ct, train_uri=land("reference", "clean", "drifted")))

    print("4/4 a corrupted batch lands ...", flush=True)
    scene("corrupted batch", run(ct, train_uri=str(DATA / "corrupted.csv")))

    print_table(rows)
    print_where_to_look(time.monotonic() - started)
    return 0


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("step", "outcome", "champion", "reason")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(3)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, [*widths, 0], strict=True)))
    print("  ".join("-" * w for w in widths) + "  " + "-" * 40)
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row[:3], widths, strict=True)]
        print("  ".join([*cells, row[3][:160]]))


def print_where_to_look(elapsed: float) -> None:
    home = Path(os.environ["AIRFLOW_HOME"])
    print(
        f"\nDone in {elapsed:.0f}s.\n"
        f"  Airflow task logs: {DEMO / 'airflow-tasks.log'}\n"
        f"  reports (validation, drift HTML, decisions): {home / 'mlops_artifacts'}\n"
        f"  MLflow store: {home / 'mlflow' / 'mlflow.db'} (artifacts in {home / 'mlflow' / 'artifacts'})\n"
        f"  MLflow UI:    .venv/bin/mlflow ui --backend-store-uri sqlite:///{home / 'mlflow' / 'mlflow.db'}"
        f" --port 5000   then open http://127.0.0.1:5000\n"
        f"  Airflow UI:   AIRFLOW_HOME={home} AIRFLOW__CORE__DAGS_FOLDER={ROOT / 'dags'} "
        ".venv/bin/airflow standalone   then open http://127.0.0.1:8080"
    )


if __name__ == "__main__":
    sys.exit(main())
