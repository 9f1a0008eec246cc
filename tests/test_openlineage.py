"""Issue 18 item 6: the operators report their inputs and outputs to OpenLineage.

The main fixture runs a factory-built CT DAG (``continuous_training_dag``), then a batch
prediction DAG on its champion, with ``dag.test()`` in a child Python process whose
environment configures the OpenLineage provider's file transport
(``AIRFLOW__OPENLINEAGE__TRANSPORT``), as a deployment would: Airflow's plugin manager loads
the provider's plugin with its listener, the task runner calls the listener when each task
succeeds, and the listener calls our operators' ``get_openlineage_facets_on_complete`` and
writes the events to the file. A child process because the plugin decides when it is
imported whether OpenLineage is on, and this pytest process loads its plugins without a
transport (the last test shows the listener is off then). Real MLflow server fixture, real
Airflow metadata DB (the session's AIRFLOW_HOME); nothing is mocked. The drift test gives
the operator its result by hand (a monitoring DAG run would cost about a minute more).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from conftest import mlflow_connection_env, stored_xcom

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "include" / "data" / "breast_cancer"
DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")

# Run in the child: build the DAG from the config, serialize it (as conftest.serialize_dag
# does: dag.test() runs serialized DAGs only) and run it. Not importing conftest, which
# would make a new AIRFLOW_HOME.
CHILD = """
import json, os, sys
from airflow_mlops.factories import continuous_training_dag, parse_config
from airflow.dag_processing.bundles.manager import DagBundlesManager
from airflow.dag_processing.collection import update_dag_parsing_results_in_db
from airflow.serialization.serialized_objects import LazyDeserializedDAG
from airflow.utils.session import create_session

from airflow.sdk import DAG
from airflow_mlops.operators.prediction import BatchPredictionOperator


def run(dag):
    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
        session.commit()
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(),
            session=session,
        )
    done = dag.test()
    return {"dag_id": done.dag_id, "run_id": done.run_id, "state": str(done.state)}


config = parse_config(json.loads(sys.argv[1]), source="<openlineage test>")
scoring = json.loads(sys.argv[2])
with DAG("predict_" + config.name, schedule=None) as predict:
    BatchPredictionOperator(task_id="predict", model_name=config.name, **scoring)
print("RESULT " + json.dumps([run(continuous_training_dag(config)), run(predict)]))
"""


def write_partition(root: Path, day: str, frame: pd.DataFrame) -> Path:
    path = root / f"dt={day}" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    frame.to_parquet(path, index=False)
    return path


def events_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def complete(events: list[dict[str, Any]], task_id: str) -> dict[str, Any]:
    found = [
        e
        for e in events
        if e.get("eventType") == "COMPLETE" and e["job"]["name"].endswith(f".{task_id}")
    ]
    assert len(found) == 1, f"{len(found)} COMPLETE events for {task_id}"
    return found[0]


@pytest.fixture(scope="module", autouse=True)
def lineage_child(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any] | None]:
    """Three daily partitions landed; the pipeline's window is the last two. The child runs
    the two DAGs while the module's other tests (listed first) run: started with the
    module's first test when a test needs its events."""
    ours = [i for i in request.session.items if getattr(i, "module", None) is request.module]
    if not any("lineage_run" in item.fixturenames for item in ours):
        yield None
        return
    mlflow_server = request.getfixturevalue("mlflow_server")
    root = tmp_path_factory.mktemp("ol")
    landing = root / "landing"
    frame = pd.read_parquet(DATA / "reference.parquet")
    files = [write_partition(landing, day, frame.iloc[i::3]) for i, day in enumerate(DAYS)]
    name = f"ol_{uuid.uuid4().hex[:8]}"
    config = {
        "name": name,
        "retries": 0,
        "data": {
            "train_uri": str(landing),
            "target": "benign",
            "exclude": ["dt"],
            "window": {"last_partitions": 2},
        },
        "validation": {
            "suite": [
                {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "benign"}}
            ]
        },
        "training": {
            "estimator": "sklearn.ensemble.RandomForestClassifier",
            "params": {"n_estimators": 10, "max_depth": 4, "random_state": 0},
            "holdout_fraction": 0.3,
        },
        "promotion": {"approval": "auto", "serving_check": False},
        "monitoring": {"enabled": False},
    }
    events_file = root / "events.jsonl"
    env = {
        **os.environ,
        "AIRFLOW_CONN_MLFLOW_DEFAULT": mlflow_connection_env(mlflow_server),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "mlops_test",
    }
    scoring = {"input_uri": str(files[-1]), "output_uri": str(root / "scored.parquet")}
    # Output to files, not pipes: nobody reads a pipe while the other tests run.
    with open(root / "child.out", "w") as out, open(root / "child.err", "w") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(config), json.dumps(scoring)],
            env=env,
            cwd=root,
            stdout=out,
            stderr=err,
        )
    try:
        yield {
            "child": child,
            "root": root,
            "events_file": events_file,
            "scoring": scoring,
            "landing": landing,
            "files": files,
            "model": name,
        }
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.fixture(scope="module")
def lineage_run(lineage_child: dict[str, Any]) -> dict[str, Any]:
    """The child's two DAG runs, once it ended, and the events it wrote."""
    child, root = lineage_child["child"], lineage_child["root"]
    child.wait(timeout=600)
    stdout = (root / "child.out").read_text()
    output = (stdout + (root / "child.err").read_text())[-4000:]
    assert child.returncode == 0, output
    line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
    ct, predict = json.loads(line.removeprefix("RESULT "))
    assert ct["state"] == predict["state"] == "success", stdout[-4000:]
    events_file = lineage_child["events_file"]
    assert events_file.exists(), "no OpenLineage event was written:\n" + stdout[-4000:]
    return {
        "run": SimpleNamespace(dag_id=ct["dag_id"], run_id=ct["run_id"]),
        "predict": SimpleNamespace(dag_id=predict["dag_id"], run_id=predict["run_id"]),
        "events": events_of(events_file),
        **{k: lineage_child[k] for k in ("scoring", "landing", "files", "model")},
    }


def test_drift_facets_name_reference_current_champion_and_report():
    """The drift task's facets from its result (the keys core.drift_check returns); the
    connection's password never reaches the namespace."""
    from airflow_mlops.operators.drift import DriftReportOperator

    operator = DriftReportOperator(task_id="drift", model_name="m", current_uri="/d/current")
    operator._openlineage_facts = {
        "tracking_uri": "http://user:secret@mlflow:5000",
        "result": {
            "model_name": "m",
            "champion_version": "3",
            "mlflow_run_id": "r1",
            "reference_uri": "s3://bucket/ref/reference.parquet",
            "current_uri": "/d/current",
            "report_uri": "/reports/drift_report.html",
            "summary_uri": "/reports/drift_summary.json",
        },
    }
    lineage = operator.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [
        ("s3://bucket", "ref/reference.parquet"),
        ("file", "/d/current"),
        ("http://mlflow:5000", "models/m/3"),
    ]
    assert [d.name for d in lineage.outputs] == [
        "/reports/drift_report.html",
        "/reports/drift_summary.json",
    ]


def test_names_drop_credentials_and_queries():
    from airflow_mlops.openlineage import dataset_identity, mlflow_namespace

    assert dataset_identity("s3://bucket/data/events/") == ("s3://bucket", "data/events")
    assert dataset_identity("s3://key:secret@bucket/x.parquet?v=1") == ("s3://bucket", "x.parquet")
    assert dataset_identity("/data/events/dt=*/part-*.parquet") == ("file", "/data/events")
    assert dataset_identity("file:///data/x.csv") == ("file", "/data/x.csv")
    assert mlflow_namespace("https://user:pw@mlflow.example:5000/?token=t") == (
        "https://mlflow.example:5000"
    )
    assert mlflow_namespace("postgresql://u:p@db:5432/mlflow") == "postgresql://db:5432/mlflow"
    assert mlflow_namespace("databricks") == "databricks"


def test_importing_operators_loads_no_openlineage_and_the_listener_is_off_by_default():
    """No transport configured (this test session): Airflow's plugin manager loads the
    provider's plugin, which then registers no listener, and the operators' modules import
    no OpenLineage module (they import it inside get_openlineage_facets_on_complete)."""
    code = (
        "import sys, json, pkgutil, importlib\n"
        "import airflow_mlops.operators as ops, airflow_mlops.openlineage\n"
        # Airflow's provider discovery reads every installed provider's get_provider_info.
        "known = {'airflow.providers.openlineage.get_provider_info'}\n"
        "for m in pkgutil.iter_modules(ops.__path__):\n"
        "    importlib.import_module('airflow_mlops.operators.' + m.name)\n"
        "before = sorted(m for m in sys.modules if m.split('.')[0] == 'openlineage'\n"
        "    or (m.startswith('airflow.providers.openlineage.') and m not in known))\n"
        "from airflow.sdk.listener import get_listener_manager\n"
        "names = [type(p).__name__ for p in get_listener_manager().pm.get_plugins()]\n"
        "print(json.dumps({'modules': before, 'listeners': names}))\n"
    )
    env = {k: v for k, v in os.environ.items() if "OPENLINEAGE" not in k}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["modules"] == [], seen["modules"]
    assert "OpenLineageListener" not in seen["listeners"], seen["listeners"]


# The tests below read the child's events: they run last, as the child runs meanwhile.
def test_training_event_names_the_window_partitions_and_the_mlflow_run(lineage_run, mlflow_server):
    from mlflow.tracking import MlflowClient

    from airflow_mlops.openlineage import mlflow_namespace

    event = complete(lineage_run["events"], "train")
    train = stored_xcom(lineage_run["run"], "train")
    (source,) = event["inputs"]
    assert (source["namespace"], source["name"]) == ("file", str(lineage_run["landing"]))
    manifest = source["facets"]["mlopsManifest"]
    window = [str(p) for p in lineage_run["files"][1:]]  # the last two partitions
    assert [f["path"] for f in manifest["files"]] == window, manifest
    assert [f["partition"] for f in manifest["files"]] == [{"dt": d} for d in DAYS[1:]]
    tags = MlflowClient(mlflow_server).get_run(train["run_id"]).data.tags
    assert manifest["contentHash"] == tags["mlops.data.manifest_hash"]
    assert manifest["fileCount"] == 2 and manifest["runId"] == train["run_id"]
    assert source["facets"]["version"]["datasetVersion"] == tags["mlops.data.manifest_hash"]
    assert source["inputFacets"]["inputStatistics"]["fileCount"] == 2
    assert source["inputFacets"]["inputStatistics"]["rowCount"] == int(tags["mlops.data.rows"])
    logged = f"models/{train['model_uri'].removeprefix('models:/')}"
    outputs = {(o["namespace"], o["name"]) for o in event["outputs"]}
    assert (mlflow_namespace(mlflow_server), logged) in outputs, outputs
    run_facet = event["run"]["facets"]["mlopsMlflowRun"]
    assert run_facet["runId"] == train["run_id"]
    assert run_facet["experimentId"] == train["experiment_id"]


def test_registration_event_names_the_model_version(lineage_run, mlflow_server):
    from airflow_mlops.openlineage import mlflow_namespace

    events = lineage_run["events"]
    register = stored_xcom(lineage_run["run"], "register")
    train = stored_xcom(lineage_run["run"], "train")
    event = complete(events, "register")
    (output,) = event["outputs"]
    namespace = mlflow_namespace(mlflow_server)
    assert (output["namespace"], output["name"]) == (
        namespace,
        f"models/{lineage_run['model']}/{register['version']}",
    )
    assert output["facets"]["mlopsModelVersion"]["runId"] == train["run_id"]
    assert output["facets"]["mlopsModelVersion"]["aliases"] == ["challenger"]
    # The chain: training's logged model is registration's input.
    (source,) = event["inputs"]
    train_outputs = {(o["namespace"], o["name"]) for o in complete(events, "train")["outputs"]}
    assert (source["namespace"], source["name"]) in train_outputs
    # The validation task names the same window of the same dataset, and its verdict.
    validate = complete(events, "validate")
    (checked,) = validate["inputs"]
    assert checked["name"] == str(lineage_run["landing"])
    verdict = checked["facets"]["mlopsValidation"]
    assert verdict["success"] is True and verdict["evaluatedExpectations"] >= 1, verdict
    assert [f["path"] for f in checked["facets"]["mlopsManifest"]["files"]] == [
        str(p) for p in lineage_run["files"][1:]
    ]


def test_prediction_event_names_the_model_version_and_the_predictions(lineage_run, mlflow_server):
    from airflow_mlops.openlineage import mlflow_namespace

    scored = stored_xcom(lineage_run["predict"], "predict")
    event = complete(lineage_run["events"], "predict")
    names = {(i["namespace"], i["name"]) for i in event["inputs"]}
    assert names == {
        ("file", lineage_run["scoring"]["input_uri"]),
        (mlflow_namespace(mlflow_server), f"models/{lineage_run['model']}/1"),
    }
    (output,) = event["outputs"]
    assert (output["namespace"], output["name"]) == ("file", lineage_run["scoring"]["output_uri"])
    assert output["outputFacets"]["outputStatistics"]["rowCount"] == scored["rows"]
    assert output["facets"]["version"]["datasetVersion"] == scored["output_sha256"]
