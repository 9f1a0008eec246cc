"""Batch prediction against the real MLflow server (and moto S3), via core and ``dag.test()``."""

from __future__ import annotations

import datetime
import gzip
import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import stored_xcom

from airflow_mlops.core.errors import ConfigError, DataError, ModelUriError
from airflow_mlops.core.prediction import (
    prediction_frame,
    resolve_model_version,
    run_batch_prediction,
)
from airflow_mlops.core.storage import Storage

# -- helpers ---------------------------------------------------------------------------------


def register_linear_model(
    tracking_uri: str, name: str, coef_a: float, coef_b: float
) -> tuple[Any, str]:
    """Log y = coef_a*a + coef_b*b as an sklearn model, register it: (version, logged model id).

    The run carries the tags the provider's training writes and the version is registered by
    ``register_version``, so it passes the provenance check every load makes (no signing key
    is configured here; ``tests/test_provenance.py`` covers signatures and foreign models).
    """
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient
    from sklearn.linear_model import LinearRegression

    from airflow_mlops.core.lineage import TAG_MODEL_URI, TAG_STAGE, RunContext
    from airflow_mlops.core.mlflow_settings import MlflowSettings, mlflow_environment
    from airflow_mlops.core.registry import register_version

    x = pd.DataFrame({"a": np.arange(10.0), "b": np.arange(10.0) ** 2})
    y = coef_a * x["a"] + coef_b * x["b"]
    model = LinearRegression().fit(x, y)
    ctx = RunContext(dag_id="prediction-tests", run_id=uuid.uuid4().hex, task_id="train")
    with mlflow_environment(MlflowSettings(tracking_uri=tracking_uri)):
        mlflow.set_experiment("airflow-mlops-prediction-tests")
        with mlflow.start_run(tags={**ctx.as_tags(), TAG_STAGE: "training"}) as run:
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                pip_requirements=["scikit-learn", "skops"],  # no 15 s inference subprocess
                signature=infer_signature(x, model.predict(x)),
            )
            mlflow.set_tag(TAG_MODEL_URI, info.model_uri)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        registration = register_version(
            client, name, info.model_uri, context=ctx, run_id=run.info.run_id
        )
        return registration, info.model_id


def xcom_value(dag_run: Any, task_id: str, key: str = "return_value") -> Any:
    return stored_xcom(dag_run, task_id, key)


@pytest.fixture(scope="module")
def registry(mlflow_server: str) -> dict[str, Any]:
    """Model with v1 (y = a) and v2 (y = 2a + 3b); champion -> v2, canary -> v1."""
    from mlflow.tracking import MlflowClient

    name = f"pred-{uuid.uuid4().hex[:8]}"
    v1, _ = register_linear_model(mlflow_server, name, 1.0, 0.0)
    v2, model_id = register_linear_model(mlflow_server, name, 2.0, 3.0)
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    client.set_registered_model_alias(name, "champion", v2.version)
    client.set_registered_model_alias(name, "canary", v1.version)
    return {"name": name, "v1": int(v1.version), "v2": int(v2.version), "model_id": model_id}


def make_input(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer_id": np.arange(rows) + 1000,
            "a": rng.normal(size=rows),
            "b": rng.normal(size=rows),
            "unused": "x",
        }
    )


def champion_expected(frame: pd.DataFrame) -> np.ndarray:
    return 2.0 * frame["a"].to_numpy() + 3.0 * frame["b"].to_numpy()


# -- core against the real server ------------------------------------------------------------


def test_scores_parquet_in_chunks_with_the_champion_version(registry, mlflow_conn, tmp_path):
    from airflow_mlops.hooks.mlflow import MlflowHook

    frame = make_input(1000)
    input_uri = str(tmp_path / "in.parquet")
    frame.to_parquet(input_uri, index=False)
    output_uri = str(tmp_path / "out" / "pred.parquet")

    with MlflowHook().session() as client:
        result = run_batch_prediction(
            client=client,
            storage=Storage(),
            model_uri=f"models:/{registry['name']}@champion",
            input_uri=input_uri,
            output_uri=output_uri,
            key_columns=["customer_id"],
            chunk_rows=128,
        )

    out = pd.read_parquet(output_uri)
    assert len(out) == len(frame) == result.rows
    assert result.chunks == 8  # ceil(1000 / 128): memory bounded by the chunk size
    assert list(out.columns) == ["customer_id", "prediction", "model_name", "model_version"]
    assert out["customer_id"].tolist() == frame["customer_id"].tolist()
    assert set(out["model_version"]) == {registry["v2"]}
    assert set(out["model_name"]) == {registry["name"]}
    # The values come from v2 (2a + 3b), not v1 (a): the pinned version really was loaded.
    np.testing.assert_allclose(out["prediction"], champion_expected(frame), atol=1e-6)
    assert result.model_uri == f"models:/{registry['name']}/{registry['v2']}"
    assert result.requested_model_uri == f"models:/{registry['name']}@champion"
    assert result.model_run_id
    assert len(result.input_sha256) == 64 and len(result.output_sha256) == 64
    assert result.prediction_columns == ["prediction"]


def test_other_alias_resolves_to_its_own_version(registry, mlflow_conn, tmp_path):
    from airflow_mlops.hooks.mlflow import MlflowHook

    frame = make_input(50)
    input_uri = str(tmp_path / "in.csv")
    frame.to_csv(input_uri, index=False)
    output_uri = str(tmp_path / "pred.csv.gz")
    with MlflowHook().session() as client:
        result = run_batch_prediction(
            client=client,
            storage=Storage(),
            model_uri=f"models:/{registry['name']}@canary",
            input_uri=input_uri,
            output_uri=output_uri,
        )
    with gzip.open(output_uri, "rt") as handle:
        out = pd.read_csv(handle)
    assert result.model_version == registry["v1"]
    assert set(out["model_version"]) == {registry["v1"]}
    np.testing.assert_allclose(out["prediction"], frame["a"], atol=1e-6)  # v1 is y = a
    # No key columns: only the prediction and the model identity are written.
    assert list(out.columns) == ["prediction", "model_name", "model_version"]


def test_integer_csv_chunks_are_widened_to_the_signature(registry, mlflow_conn, tmp_path):
    """A chunk whose float column holds whole numbers is read as int64; it must still score."""
    from airflow_mlops.hooks.mlflow import MlflowHook

    frame = pd.DataFrame({"customer_id": range(6), "a": [1.5, 2.5, 3, 4, 5, 6], "b": 1})
    input_uri = str(tmp_path / "in.csv")
    frame.to_csv(input_uri, index=False)
    output_uri = str(tmp_path / "pred.parquet")
    with MlflowHook().session() as client:
        result = run_batch_prediction(
            client=client,
            storage=Storage(),
            model_uri=f"models:/{registry['name']}/{registry['v2']}",
            input_uri=input_uri,
            output_uri=output_uri,
            key_columns=["customer_id"],
            chunk_rows=2,  # chunks 2 and 3 are all-integer
        )
    out = pd.read_parquet(output_uri)
    assert result.chunks == 3
    np.testing.assert_allclose(out["prediction"], 2.0 * frame["a"] + 3.0, atol=1e-6)


def test_rerun_overwrites_the_output_atomically(registry, mlflow_conn, tmp_path):
    from airflow_mlops.hooks.mlflow import MlflowHook

    input_uri = str(tmp_path / "in.parquet")
    make_input(300).to_parquet(input_uri, index=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "pred.parquet"
    output.write_bytes(b"stale garbage from a crashed attempt")

    kwargs = {
        "storage": Storage(),
        "model_uri": f"models:/{registry['name']}@champion",
        "input_uri": input_uri,
        "output_uri": str(output),
        "key_columns": ["customer_id"],
        "chunk_rows": 100,
    }
    with MlflowHook().session() as client:
        first = run_batch_prediction(client=client, **kwargs)
        second = run_batch_prediction(client=client, **kwargs)
    assert first.output_sha256 == second.output_sha256
    assert len(pd.read_parquet(output)) == 300
    assert sorted(p.name for p in out_dir.iterdir()) == ["pred.parquet"]  # no temp files left


def test_logged_model_and_missing_alias_are_refused(registry, mlflow_conn):
    from airflow_mlops.hooks.mlflow import MlflowHook

    with MlflowHook().session() as client:
        with pytest.raises(ModelUriError, match="no registry version"):
            resolve_model_version(client, f"models:/{registry['model_id']}")
        with pytest.raises(ModelUriError, match="has no alias 'nope'"):
            resolve_model_version(client, f"models:/{registry['name']}@nope")
        with pytest.raises(ModelUriError, match="has no version 99"):
            resolve_model_version(client, f"models:/{registry['name']}/99")
        with pytest.raises(ModelUriError, match="file://"):
            resolve_model_version(client, "file:///etc/passwd")


def test_bad_inputs_fail_with_named_reasons(registry, mlflow_conn, tmp_path):
    from airflow_mlops.hooks.mlflow import MlflowHook

    missing_feature = tmp_path / "nob.parquet"
    make_input(10).drop(columns=["b"]).to_parquet(missing_feature, index=False)
    header_only = tmp_path / "empty.csv"
    header_only.write_text("customer_id,a,b\n")
    good = tmp_path / "good.parquet"
    make_input(10).to_parquet(good, index=False)
    model_uri = f"models:/{registry['name']}@champion"
    with MlflowHook().session() as client:

        def run(input_uri: Path, **kwargs: Any) -> Any:
            return run_batch_prediction(
                client=client,
                storage=Storage(),
                model_uri=model_uri,
                input_uri=str(input_uri),
                output_uri=str(tmp_path / "o.parquet"),
                **kwargs,
            )

        with pytest.raises(DataError, match=r"lacks the model's input column\(s\) \['b'\]"):
            run(missing_feature)
        with pytest.raises(DataError, match="no rows to score"):
            run(header_only)
        with pytest.raises(ConfigError, match="clash with the output columns"):
            run(good, key_columns=["customer_id", "model_version"])
        with pytest.raises(ConfigError, match=r"key_columns \['nope'\] are not in"):
            run(good, key_columns=["nope"])
    assert not (tmp_path / "o.parquet").exists()


# -- prediction shapes (pure) ----------------------------------------------------------------


def test_prediction_frame_shapes():
    assert prediction_frame(np.array([1, 2]), 2).columns.tolist() == ["prediction"]
    assert prediction_frame(np.array([[1], [2]]), 2).columns.tolist() == ["prediction"]
    proba = prediction_frame(np.array([[0.1, 0.9], [0.8, 0.2]]), 2)
    assert proba.columns.tolist() == ["prediction_0", "prediction_1"]
    multi = prediction_frame(pd.DataFrame({"lo": [1, 2], "hi": [3, 4]}), 2)
    assert multi.columns.tolist() == ["prediction_lo", "prediction_hi"]
    assert prediction_frame(pd.Series([5, 6], index=[10, 11]), 2)["prediction"].tolist() == [5, 6]
    assert prediction_frame({"p": [1, 2]}, 2).columns.tolist() == ["prediction"]
    with pytest.raises(DataError, match="returned 3 predictions for 2 input rows"):
        prediction_frame(np.array([1, 2, 3]), 2)


# -- the operator in a real DAG run ----------------------------------------------------------


def test_operator_refuses_unsafe_uris_at_parse_time():
    from airflow_mlops.operators.prediction import BatchPredictionOperator

    for uri in ("file:///etc/passwd", "runs:/abc/model", "models:/../../x/1", "/tmp/model"):
        with pytest.raises(ModelUriError, match="Refused model URI"):
            BatchPredictionOperator(task_id="p", input_uri="in.parquet", model_uri=uri)
    with pytest.raises(ConfigError, match="exactly one of model_name"):
        BatchPredictionOperator(task_id="p", input_uri="in.parquet")
    with pytest.raises(ModelUriError, match="host 'evil'"):
        BatchPredictionOperator(task_id="p", input_uri="x.csv", model_uri="models://evil/m/1")
    # Templated values are checked after rendering, at execute time.
    op = BatchPredictionOperator(
        task_id="p", input_uri="x.csv", model_uri="{{ params.uri }}", key_columns=["id"]
    )
    assert "model_uri" in op.template_fields and "input_uri" in op.template_fields


def test_operator_in_dag_test_reads_csv_and_writes_s3(
    registry, mlflow_conn, s3_bucket, s3_server, tmp_path, run_dag
):
    import boto3
    from airflow.sdk import DAG

    from airflow_mlops.operators.prediction import BatchPredictionOperator

    frame = make_input(500, seed=3)
    input_uri = str(tmp_path / "scoring.csv")
    frame.to_csv(input_uri, index=False)
    output_uri = f"s3://{s3_bucket}/predictions/{{{{ ds }}}}/pred.parquet"

    with DAG(
        dag_id=f"pred_{uuid.uuid4().hex[:8]}",
        schedule=None,
        start_date=datetime.datetime(2026, 1, 1),
    ) as dag:
        BatchPredictionOperator(
            task_id="score",
            model_name=registry["name"],
            input_uri=input_uri,
            output_uri=output_uri,
            key_columns=["customer_id"],
            chunk_rows=200,
        )
    dag_run = run_dag(dag)
    assert dag_run.state == "success"

    result = xcom_value(dag_run, "score")
    assert result["rows"] == 500 and result["chunks"] == 3
    assert result["model_version"] == registry["v2"]
    assert result["output_uri"].startswith(f"s3://{s3_bucket}/predictions/")
    assert "{{" not in result["output_uri"]  # rendered

    key = result["output_uri"].removeprefix(f"s3://{s3_bucket}/")
    body = (
        boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
        .get_object(Bucket=s3_bucket, Key=key)["Body"]
        .read()
    )
    out = pd.read_parquet(io.BytesIO(body))
    assert len(out) == 500
    assert set(out["model_version"]) == {registry["v2"]}
    np.testing.assert_allclose(out["prediction"], champion_expected(frame), atol=1e-6)

    # Extra links: parameters persisted at execute time, URLs formatted by Airflow at the end.
    link_url = xcom_value(dag_run, "score", key="_link_MlflowModelVersionLink")
    assert link_url.endswith(f"/#/models/{registry['name']}/versions/{registry['v2']}")
    run_url = xcom_value(dag_run, "score", key="_link_MlflowRunLink")
    assert f"/runs/{result['model_run_id']}" in run_url
