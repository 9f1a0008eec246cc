"""A full factory-built CT pipeline, run like production, then audited.

One pipeline YAML -> ``continuous_training_dag`` -> ``dag.test()`` (Airflow's real task
runner) against the restartable MLflow server and moto S3: data, holdout, reports and
predictions all live in S3. The DAG runs in a separate Python process whose environment
is scrubbed of everything that makes libraries behave differently under test (pytest and
CI variables, DO_NOT_TRACK, telemetry and analytics switches, MLflow and AWS variables):
what it does is what a worker would do. Two runs: a clean one, then one with corrupted
training data.

That process records, with a Python audit hook (``sys.addaudithook``), every
``socket.connect``, every ``socket.getaddrinfo`` (a lookup happens even when the network is
down, so an attempt to phone home is seen offline too) and every ``subprocess.Popen``.

The MLflow connection carries a login, a password and a token; the AWS connection a
secret key. Afterwards we look for those values (raw, base64 in a basic-auth header,
URL-quoted) in the task logs (the process's stdout/stderr), the XCom and rendered-template
rows of the metadata DB, every MLflow run's tags and params, the registry's tags and
descriptions, the decision/promotion records, and every object written to S3.

Limit: the promotion's serving check runs in a fresh interpreter started with ``python -I``
(isolated), which an audit hook cannot follow; its start is recorded (``subprocess.Popen``)
and it inherits the task's environment.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import socket
import subprocess
import sys
import textwrap
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from reliability._data import SUITE, clean_frame, csv_bytes
from reliability.conftest import aws_conn_json, mlflow_conn_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# Variables that switch libraries into test mode or turn telemetry off: a worker has none.
_TEST_MODE_VARS = (
    "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER", "CI", "GITHUB_ACTIONS", "GITLAB_CI",
    "CIRCLECI", "JENKINS_URL", "TRAVIS", "TF_BUILD", "BITBUCKET_BUILD_NUMBER",
    "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION", "CLOUD_RUN_EXECUTION",
    "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID", "DO_NOT_TRACK",
    "MLFLOW_DISABLE_TELEMETRY", "GX_ANALYTICS_ENABLED", "EVIDENTLY_DISABLE_TELEMETRY",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
)  # fmt: skip
_MLFLOW_TELEMETRY_HOSTS = ("mlflow-telemetry.io", "cloudfront.net")

RUNNER = """
import json, sys, time
EVENTS = []

def audit(event, args):
    if event == "socket.connect":
        EVENTS.append(["connect", repr(args[1])])
    elif event == "socket.getaddrinfo":
        EVENTS.append(["getaddrinfo", repr(args[0]), repr(args[1])])
    elif event == "subprocess.Popen":
        EVENTS.append(["popen", repr(args[1])[:400]])

sys.addaudithook(audit)  # before anything else is imported

from airflow.dag_processing.bundles.manager import DagBundlesManager
from airflow.dag_processing.collection import update_dag_parsing_results_in_db
from airflow.serialization.serialized_objects import LazyDeserializedDAG
from airflow.utils.session import create_session

from airflow_mlops.factories import continuous_training_dag

dag = continuous_training_dag({config_path!r})
with create_session() as session:
    DagBundlesManager().sync_bundles_to_db(session=session)
    session.commit()
    update_dag_parsing_results_in_db(
        "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {{}}, None, set(),
        session=session,
    )
runs = []
for conf in (None, {{"train_uri": {corrupt_uri!r}}}):
    started = time.monotonic()
    run = dag.test(run_conf=conf)
    runs.append({{"run_id": run.run_id, "state": str(run.state),
                 "seconds": round(time.monotonic() - started, 1)}})
with open({result_path!r}, "w") as handle:
    json.dump({{"dag_id": dag.dag_id, "runs": runs, "events": EVENTS}}, handle)
"""


def _production_like_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _TEST_MODE_VARS and not k.startswith(("MLFLOW_", "AIRFLOW_CONN_"))
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def pipeline(rel_mlflow, rel_moto, tmp_path_factory) -> dict[str, Any]:
    import boto3

    rel_mlflow.ensure_up()
    rel_moto.ensure_up()
    tmp = tmp_path_factory.mktemp("pipeline")
    bucket = f"rel-pipe-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=rel_moto.url, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="x")  # fmt: skip
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="data/train.csv", Body=csv_bytes(clean_frame(300)))
    corrupted = clean_frame(300, seed=9).drop(columns=["x2"]).assign(x1=None)
    s3.put_object(Bucket=bucket, Key="data/corrupted.csv", Body=csv_bytes(corrupted))
    s3.put_object(Bucket=bucket, Key="data/inference.csv",
                  Body=csv_bytes(clean_frame(50, seed=3).drop(columns=["label"])))  # fmt: skip

    name = f"rel_pipe_{uuid.uuid4().hex[:8]}"
    config = {
        "name": name,
        "model_name": name.replace("_", "-"),
        "data": {
            "train_uri": f"s3://{bucket}/data/train.csv",
            "target": "label",
            "inference_uri": f"s3://{bucket}/data/inference.csv",
            "predictions_uri": f"s3://{bucket}/predictions/predictions.parquet",
        },
        "validation": {"suite": SUITE, "on_failure": "fail"},
        "training": {
            "estimator": "sklearn.linear_model.LogisticRegression",
            "params": {"C": 1.0},
            "task": "classification",
        },
        "evaluation": {"policy": {"value_thresholds": {"accuracy": {"lower": 0.6}}}},
        "promotion": {"approval": "auto", "serving_check": True},
        "monitoring": {"enabled": False},
        "retries": 0,
    }
    config_path = tmp / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config))

    secrets = {
        "mlflow password": f"mlflow-pw-{uuid.uuid4().hex}",
        "mlflow token": f"mlflow-tok-{uuid.uuid4().hex}",
        "aws secret key": f"aws-secret-{uuid.uuid4().hex}",
    }
    login = "mlops-reliability-user"
    env = _production_like_env(
        {
            "AIRFLOW_CONN_MLFLOW_DEFAULT": mlflow_conn_json(
                rel_mlflow.url,
                login=login,
                password=secrets["mlflow password"],
                extra={"token": secrets["mlflow token"]},
            ),
            "AIRFLOW_CONN_AWS_DEFAULT": aws_conn_json(
                rel_moto.url, login="AKIARELIABILITY", password=secrets["aws secret key"]
            ),
            "AIRFLOW__MLOPS__ARTIFACTS_URI": f"s3://{bucket}/artifacts",
        }
    )
    result_path = tmp / "result.json"
    script = tmp / "run_pipeline.py"
    script.write_text(
        textwrap.dedent(RUNNER).format(
            config_path=str(config_path),
            corrupt_uri=f"s3://{bucket}/data/corrupted.csv",
            result_path=str(result_path),
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and result_path.exists(), output[-6000:]
    result = json.loads(result_path.read_text())
    return {
        **result,
        "output": output,
        "bucket": bucket,
        "config": config,
        "secrets": secrets,
        "login": login,
        "mlflow_url": rel_mlflow.url,
        "moto_url": rel_moto.url,
        "s3": s3,
    }


def _task_states(dag_id: str, run_id: str) -> dict[str, str]:
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id)
        return {ti.task_id: str(ti.state) for ti in rows}


def _loopback_ports(pipeline: dict[str, Any]) -> set[int]:
    return {
        int(pipeline["mlflow_url"].rsplit(":", 1)[1]),
        int(pipeline["moto_url"].rsplit(":", 1)[1]),
    }


def _outbound(pipeline: dict[str, Any]) -> list[list[str]]:
    """Connects and lookups that are not to the configured MLflow and S3 endpoints.

    Looking up this machine's own name (Airflow records the worker's hostname) is local.
    """
    allowed_addresses = {repr(("127.0.0.1", port)) for port in _loopback_ports(pipeline)}
    local_names = {
        repr(n) for n in ("127.0.0.1", "localhost", socket.gethostname(), socket.getfqdn())
    }
    unexpected = []
    for event in pipeline["events"]:
        if event[0] == "connect" and event[1] not in allowed_addresses:
            unexpected.append(event)
        if event[0] == "getaddrinfo" and event[1] not in local_names:
            unexpected.append(event)
    return unexpected


def test_the_clean_run_trains_promotes_and_predicts(pipeline):
    clean = pipeline["runs"][0]
    states = _task_states(pipeline["dag_id"], clean["run_id"])
    assert clean["state"] == "success", (states, pipeline["output"][-4000:])
    assert set(states.values()) == {"success"}, states
    assert {"detect_changes", "validate", "train", "evaluate", "register", "promote",
            "predict", "summary"} <= set(states)  # fmt: skip

    from mlflow.tracking import MlflowClient

    client = MlflowClient(pipeline["mlflow_url"])
    model_name = pipeline["config"]["model_name"]
    champion = client.get_model_version_by_alias(model_name, "champion")
    assert str(champion.status) == "READY"
    assert client.get_run(champion.run_id).data.tags["mlops.decision.promote"] == "true"


def test_a_full_pipeline_run_connects_only_to_the_configured_mlflow_and_s3(pipeline):
    connects = [e for e in pipeline["events"] if e[0] == "connect"]
    assert connects, "the audit hook saw the pipeline's own connections"
    ports = {ast.literal_eval(e[1])[1] for e in connects if e[1].startswith("('127.0.0.1'")}
    assert ports == _loopback_ports(pipeline), "both MLflow and S3 were used, nothing else"
    other = [
        e for e in _outbound(pipeline) if not any(h in str(e) for h in _MLFLOW_TELEMETRY_HOSTS)
    ]
    assert other == [], other
    # Child processes: the serving check's isolated interpreter, and local commands that
    # libraries run to describe the machine (``platform``: ``uname -p``, ``file -b``;
    # GitPython, imported by MLflow: ``git version``). None of them networks.
    children = [e[1] for e in pipeline["events"] if e[0] == "popen"]
    interpreters = [c for c in children if "python" in c.split(",")[0]]
    assert interpreters and all("'-I', '-c'" in c for c in interpreters), interpreters
    others = [c for c in children if c not in interpreters]
    local = ("['uname', '-p']", "['file', '-b',", "['git', 'version']")
    assert all(c.startswith(local) for c in others), others


def test_the_pipeline_does_not_phone_home(pipeline):
    """Not even MLflow's own usage telemetry (config.mlflow-telemetry.io), which MLflow 3
    turns on wherever it sees no CI or pytest variable: the MLflow hook disables it."""
    assert _outbound(pipeline) == []


def _needles(pipeline: dict[str, Any]) -> dict[str, str]:
    needles = {}
    for label, value in pipeline["secrets"].items():
        needles[label] = value
        needles[f"{label} (url-quoted)"] = urllib.parse.quote(value, safe="")
    basic = base64.b64encode(
        f"{pipeline['login']}:{pipeline['secrets']['mlflow password']}".encode()
    ).decode()
    needles["basic auth header"] = basic
    return needles


def _leaks(text: str, needles: dict[str, str]) -> list[str]:
    return [label for label, value in needles.items() if value in text]


def _metadata_rows(dag_id: str) -> dict[str, str]:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        xcoms = session.query(XComModel).filter(XComModel.dag_id == dag_id).all()
        rendered = (
            session.query(RenderedTaskInstanceFields)
            .filter(RenderedTaskInstanceFields.dag_id == dag_id)
            .all()
        )
        return {
            "xcom": json.dumps([[x.task_id, x.key, x.value] for x in xcoms], default=str),
            "rendered": json.dumps(
                [[r.task_id, r.rendered_fields, r.k8s_pod_yaml] for r in rendered], default=str
            ),
            "xcom_rows": str(len(xcoms)),
            "rendered_rows": str(len(rendered)),
        }


def _mlflow_texts(pipeline: dict[str, Any]) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(pipeline["mlflow_url"])
    model_name = pipeline["config"]["model_name"]
    experiment = client.get_experiment_by_name(f"mlops/{pipeline['config']['name']}")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    texts = {
        "run tags and params": json.dumps(
            [[r.data.tags, r.data.params, list(r.data.metrics)] for r in runs]
        ),
    }
    model = client.get_registered_model(model_name)
    versions = client.search_model_versions(f"name = '{model_name}'")
    texts["registry"] = json.dumps(
        [model.tags, model.description, model.aliases]
        + [[v.tags, v.description, v.source] for v in versions],
        default=str,
    )
    records = []
    for run in runs:
        for artifact in client.list_artifacts(run.info.run_id, "mlops"):
            path = client.download_artifacts(run.info.run_id, artifact.path)
            records.append(Path(path).read_text())
    texts["decision and promotion records"] = "\n".join(records)
    texts["_records_found"] = str(len(records))
    return texts


def test_connection_secrets_appear_nowhere(pipeline):
    needles = _needles(pipeline)
    assert _leaks(pipeline["output"], needles) == [], "task logs (stdout/stderr)"
    # The logs do show the tasks ran and talked to both services.
    assert "promote" in pipeline["output"]

    rows = _metadata_rows(pipeline["dag_id"])
    assert int(rows["xcom_rows"]) > 0 and int(rows["rendered_rows"]) > 0
    assert _leaks(rows["xcom"], needles) == [], "XCom rows"
    assert _leaks(rows["rendered"], needles) == [], "rendered template fields"

    texts = _mlflow_texts(pipeline)
    assert int(texts.pop("_records_found")) >= 2, "decision and promotion records were read"
    for where, text in texts.items():
        assert _leaks(text, needles) == [], where

    s3 = pipeline["s3"]
    listed = s3.list_objects_v2(Bucket=pipeline["bucket"]).get("Contents", [])
    written = [o["Key"] for o in listed if not o["Key"].startswith("data/")]
    assert any(k.endswith("validation_result.json") for k in written), written
    for key in written:
        body = s3.get_object(Bucket=pipeline["bucket"], Key=key)["Body"].read()
        assert _leaks(body.decode("utf-8", errors="replace"), needles) == [], key


def test_corrupted_training_data_never_reaches_the_registry(pipeline):
    from mlflow.tracking import MlflowClient

    clean, corrupted = pipeline["runs"]
    assert corrupted["state"] == "failed"
    states = _task_states(pipeline["dag_id"], corrupted["run_id"])
    assert states["validate"] == "failed", states
    for step in ("train", "evaluate", "register", "promote", "predict"):
        assert states[step] == "upstream_failed", states
    assert states["summary"] == "failed", "the summary fails the run (fail closed)"

    client = MlflowClient(pipeline["mlflow_url"])
    model_name = pipeline["config"]["model_name"]
    versions = client.search_model_versions(f"name = '{model_name}'")
    assert [v.version for v in versions] == ["1"], "no version from the corrupted data"
    assert client.get_registered_model(model_name).aliases["champion"] == "1"
    experiment = client.get_experiment_by_name(f"mlops/{pipeline['config']['name']}")
    training_runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`mlops.stage` = 'training'"
    )
    assert len(training_runs) == 1, "nothing was trained on the corrupted data"
    assert clean["state"] == "success"
