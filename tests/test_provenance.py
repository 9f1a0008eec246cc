"""What the workers unpickle (issue #14, item 6): only models this provider trained.

Against the real MLflow server fixture. The foreign model is a hand-registered sklearn-flavour
folder whose pickle runs ``os.mkdir(marker)`` when unpickled: the marker must never appear,
which proves the refusal happens before any unpickling.
"""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_evaluation import POLICY, STUMP, make_dataset

from airflow_mlops.core.errors import ConfigError, UntrustedModelError
from airflow_mlops.core.lineage import TAG_SIGNATURE, RunContext
from airflow_mlops.core.provenance import ModelTrust, artifact_digest, signature_for
from airflow_mlops.core.storage import Storage

KEY = b"test-signing-key-0123456789abcdef"
SIGNED = ModelTrust(signing_key=KEY)
PROVENANCE = ModelTrust()  # no signing connection: provenance tags only


class MakesMarkerWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def write_pickled_model(folder: Path, marker: Path) -> Path:
    """An MLflow sklearn-flavour model folder, written by hand, whose pickle is hostile."""
    import mlflow
    import sklearn

    folder.mkdir(parents=True)
    (folder / "model.pkl").write_bytes(pickle.dumps(MakesMarkerWhenUnpickled(marker)))
    (folder / "MLmodel").write_text(
        "artifact_path: model\n"
        "flavors:\n"
        "  python_function:\n"
        "    loader_module: mlflow.sklearn\n"
        "    model_path: model.pkl\n"
        "    predict_fn: predict\n"
        "    python_version: 3.11.0\n"
        "  sklearn:\n"
        "    pickled_model: model.pkl\n"
        "    serialization_format: pickle\n"
        f"    sklearn_version: {sklearn.__version__}\n"
        f"mlflow_version: {mlflow.__version__}\n"
    )
    return folder


def register_foreign_model(client, name: str, folder: Path) -> str:
    """Register ``folder`` by hand, as anyone with MLflow write access could."""
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "model")
    client.create_registered_model(name)
    mv = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias(name, "champion", mv.version)
    return str(mv.version)


@pytest.fixture(scope="module")
def signed(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One model trained and signed by the provider, registered as version 1 of a new name."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.registry import register_version
    from airflow_mlops.core.training import train_model
    from airflow_mlops.core.training_job import TrainingJob

    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient(mlflow_server)
    folder = tmp_path_factory.mktemp("signed")
    config = TrainingJob(
        train_uri=make_dataset(folder / "d.csv"),
        target="label",
        experiment_name="provenance-tests",
        model_name=f"signed-{uuid.uuid4().hex[:8]}",
        estimator=STUMP[0],
        params=STUMP[1],
        task="classification",
    )
    ctx = RunContext(dag_id="provenance", run_id=uuid.uuid4().hex, task_id="train")
    result = train_model(config, ctx, Storage(), client, signing_key=KEY)
    registration = register_version(
        client, config.model_name, result.model_uri, context=ctx, run_id=result.run_id
    )
    return {
        "result": result.to_dict(),
        "name": config.model_name,
        "version": registration.version,
        "data": folder,
    }


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "UNPICKLED"


@pytest.fixture
def foreign(client, tmp_path: Path, marker: Path) -> dict[str, str]:
    name = f"foreign-{uuid.uuid4().hex[:8]}"
    version = register_foreign_model(client, name, write_pickled_model(tmp_path / "m", marker))
    return {"name": name, "version": version}


def predict_with(client, model_uri: str, tmp_path: Path, trust: ModelTrust) -> Any:
    from airflow_mlops.core.prediction import run_batch_prediction

    data = tmp_path / "score.csv"
    pd.DataFrame({"x1": [0.5, -1.0], "x2": [0.1, 0.3], "group": ["a", "b"]}).to_csv(
        data, index=False
    )
    return run_batch_prediction(
        client=client,
        storage=Storage(),
        model_uri=model_uri,
        input_uri=str(data),
        output_uri=str(tmp_path / "out.parquet"),
        trust=trust,
    )


# -- a foreign pickled model -----------------------------------------------------------------


@pytest.mark.parametrize("trust", [SIGNED, PROVENANCE], ids=["signing-key", "no-signing-key"])
def test_batch_prediction_refuses_a_foreign_pickled_model_before_unpickling(
    client, tracking, tmp_path, foreign, marker, trust
):
    with pytest.raises(UntrustedModelError) as err:
        predict_with(client, f"models:/{foreign['name']}@champion", tmp_path, trust)
    message = str(err.value)
    assert f"model {foreign['name']!r} version {foreign['version']}" in message
    assert ("no mlops.signature" if trust is SIGNED else "registration tags") in message
    assert "trust_unsigned_models" in message
    assert not marker.exists()


def test_evaluation_and_serving_check_refuse_a_foreign_champion_before_unpickling(
    client, tracking, tmp_path, signed, marker
):
    from airflow_mlops.core.evaluation import challenger_from_training, evaluate_challenger
    from airflow_mlops.core.serving import serving_check

    name = f"foreign-{uuid.uuid4().hex[:8]}"
    register_foreign_model(client, name, write_pickled_model(tmp_path / "m", marker))
    challenger = challenger_from_training(client, signed["result"])
    with pytest.raises(UntrustedModelError, match=f"model '{name}' version 1"):
        evaluate_challenger(
            client, Storage(), challenger, model_name=name, policy=POLICY, trust=SIGNED
        )
    check = serving_check(f"models:/{name}/1", pd.DataFrame({"x1": [1.0]}), trust=PROVENANCE)
    assert check["ok"] is False and check["error"].startswith("UntrustedModelError")
    assert not marker.exists()


def test_the_hostile_pickle_does_run_when_a_task_opts_in(client, tracking, foreign, marker):
    """Shows the marker test above can fail: opting in loads (and unpickles) the model."""
    from airflow_mlops.core.evaluation import load_model_for_scoring

    uri = f"models:/{foreign['name']}/{foreign['version']}"
    load_model_for_scoring(uri, client=client, trust=ModelTrust(trust_unsigned=True))
    assert marker.is_dir()


# -- signed models ---------------------------------------------------------------------------


def test_a_signed_model_loads_and_its_version_carries_the_signature(
    client, tracking, tmp_path, signed
):
    version = client.get_model_version(signed["name"], signed["version"])
    assert version.tags[TAG_SIGNATURE].startswith("hmac-sha256:v1:")
    uri = f"models:/{signed['name']}/{signed['version']}"
    for trust in (SIGNED, PROVENANCE):
        assert predict_with(client, uri, tmp_path, trust).rows == 2
    with pytest.raises(UntrustedModelError, match="signed with another key"):
        predict_with(client, uri, tmp_path, ModelTrust(signing_key=b"another-key-0123456789"))


def test_a_re_uploaded_model_file_is_refused(client, tracking, tmp_path, signed, marker):
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from airflow_mlops.core.registry import register_version
    from airflow_mlops.core.training import train_model
    from airflow_mlops.core.training_job import TrainingJob

    config = TrainingJob(
        train_uri=str(signed["data"] / "d.csv"),
        target="label",
        experiment_name="provenance-tests",
        estimator=STUMP[0],
        params=STUMP[1],
        task="classification",
    )
    ctx = RunContext(dag_id="provenance", run_id=uuid.uuid4().hex, task_id="train")
    result = train_model(config, ctx, Storage(), client, signing_key=KEY)
    version = register_version(
        client, signed["name"], result.model_uri, context=ctx, run_id=result.run_id
    ).version
    logged = client.get_logged_model(result.model_uri.removeprefix("models:/"))
    hostile = tmp_path / "model.pkl"
    hostile.write_bytes(pickle.dumps(MakesMarkerWhenUnpickled(marker)))
    get_artifact_repository(logged.artifact_location).log_artifact(str(hostile))

    with pytest.raises(UntrustedModelError, match=r"do not match its mlops\.signature"):
        predict_with(client, f"models:/{signed['name']}/{version}", tmp_path, SIGNED)
    assert not marker.exists()


def test_within_a_reuse_block_a_model_is_fetched_once_and_every_copy_is_still_checked(
    client, tracking, tmp_path, signed, monkeypatch
):
    """A batched segment signs, scores and serving-checks the same model: one download from
    MLflow, and each use is checked under its own trust as if it had downloaded."""
    from airflow_mlops.core import provenance

    fetched: list[str] = []
    real = provenance.download_model
    monkeypatch.setattr(
        provenance, "download_model", lambda uri, dst: fetched.append(uri) or real(uri, dst)
    )
    logged_uri = signed["result"]["model_uri"]
    version_uri = f"models:/{signed['name']}/{signed['version']}"
    with provenance.reusing_model_downloads():
        first = provenance.verified_local_copy(client, logged_uri, str(tmp_path / "a"), SIGNED)
        second = provenance.verified_local_copy(client, version_uri, str(tmp_path / "b"), SIGNED)
        with pytest.raises(UntrustedModelError, match="signed with another key"):
            provenance.verified_local_copy(
                client,
                version_uri,
                str(tmp_path / "c"),
                ModelTrust(signing_key=b"another-key-0123456789"),
            )
    assert fetched == [logged_uri]
    assert artifact_digest(first) == artifact_digest(second)
    assert (Path(second) / "MLmodel").is_file()
    provenance.verified_local_copy(client, version_uri, str(tmp_path / "d"), SIGNED)
    assert fetched == [logged_uri, version_uri]  # outside the block: downloaded again


def test_digest_covers_every_file_and_ignores_the_download_only_meta_file(tmp_path):
    (tmp_path / "MLmodel").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.pkl").write_bytes(b"b")
    digest = artifact_digest(tmp_path)
    (tmp_path / "registered_model_meta").write_text("model_name: x")
    assert artifact_digest(tmp_path) == digest
    (tmp_path / "sub" / "model.pkl").write_bytes(b"c")
    assert artifact_digest(tmp_path) != digest
    assert signature_for(KEY, digest) != signature_for(b"other-key", digest)


# -- the key comes from an Airflow connection ------------------------------------------------


def test_signing_key_comes_from_the_configured_connection(monkeypatch):
    from airflow_mlops.hooks.signing import model_signing_key, model_trust

    monkeypatch.delenv("AIRFLOW_CONN_MLOPS_SIGNING", raising=False)
    monkeypatch.delenv("AIRFLOW__MLOPS__SIGNING_CONN_ID", raising=False)
    assert model_signing_key() is None  # default name, no connection: provenance only
    assert model_trust().mode == "provenance"
    assert model_trust(trust_unsigned_models=True).mode == "trust-unsigned"

    monkeypatch.setenv(
        "AIRFLOW_CONN_MLOPS_SIGNING", '{"conn_type": "generic", "password": "short"}'
    )
    with pytest.raises(ConfigError, match="at least 16 characters"):
        model_signing_key()
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLOPS_SIGNING", f'{{"conn_type": "generic", "password": "{KEY.decode()}"}}'
    )
    assert model_signing_key() == KEY and model_trust().mode == "signature"
    assert "signing_key" not in repr(model_trust())  # the key never shows in logs

    monkeypatch.setenv("AIRFLOW__MLOPS__SIGNING_CONN_ID", "mlops_signing_typo")
    with pytest.raises(ConfigError, match="'mlops_signing_typo', which does not exist"):
        model_signing_key()


def test_batch_prediction_operator_refuses_a_foreign_model_in_a_real_dag_run(
    mlflow_conn, tracking, client, run_dag, tmp_path, foreign, marker
):
    from airflow.sdk import DAG

    from airflow_mlops.operators.prediction import BatchPredictionOperator

    data = tmp_path / "score.csv"
    pd.DataFrame({"x1": [0.5]}).to_csv(data, index=False)
    failures: list[BaseException] = []
    with DAG(f"provenance_{uuid.uuid4().hex[:6]}", schedule=None) as dag:
        BatchPredictionOperator(
            task_id="score",
            input_uri=str(data),
            output_uri=str(tmp_path / "out.parquet"),
            model_name=foreign["name"],
            on_failure_callback=lambda context: failures.append(context["exception"]),
        )
    assert run_dag(dag).state == "failed"
    assert [type(e).__name__ for e in failures] == ["UntrustedModelError"], failures
    assert not marker.exists() and not (tmp_path / "out.parquet").exists()
