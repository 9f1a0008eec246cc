"""Every alias lookup goes through ``core.registry.current_alias_version`` (issue #15).

Missing model or alias reads as "no champion"; any other registry failure (server down) is
raised, never taken for "no champion" (which would retrain or report an alias as missing).
"""

from __future__ import annotations

import uuid

import pytest
from conftest import mlflow_connection_env
from devkit import free_port


@pytest.fixture()
def model_with_champion(mlflow_server):
    """A registered model with version 1 (champion, from a run tagged ``t=1``) and version 2."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    name = f"lookups-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(name)
    run = client.create_run(experiment_id, tags={"t": "1"})
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    source = f"runs:/{run.info.run_id}/model"
    v1 = client.create_model_version(name, source, run_id=run.info.run_id)
    v2 = client.create_model_version(name, source, run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", v1.version)
    return client, name, run.info.run_id, str(v1.version), str(v2.version)


def _unreachable(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    return f"http://127.0.0.1:{free_port()}"


def test_alias_state_reads_the_alias_map(model_with_champion):
    from airflow_mlops.triggers.registry import alias_state

    client, name, run_id, v1, v2 = model_with_champion
    assert alias_state(client, name, "champion", None)["state"] == "changed"
    assert alias_state(client, name, "champion", v1)["state"] == "unchanged"
    moved = alias_state(client, name, "champion", v2)
    assert (moved["state"], moved["version"], moved["run_id"]) == ("changed", v1, run_id)
    assert alias_state(client, name, "nope", None)["state"] == "missing"
    assert alias_state(client, f"{name}-absent", "champion", None)["state"] == "missing"


def test_alias_state_raises_when_the_server_is_unreachable(monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from airflow_mlops.triggers.registry import alias_state

    uri = _unreachable(monkeypatch)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with pytest.raises(MlflowException):  # not {"state": "missing"}
        alias_state(client, "m", "champion", None)


def test_changes_operator_champion_tags(model_with_champion, mlflow_conn):
    from airflow_mlops.operators.changes import DetectChangesOperator

    _, name, _, v1, _ = model_with_champion

    def op(model: str) -> DetectChangesOperator:
        return DetectChangesOperator(
            task_id="d", train_uri="/d/x.csv", model_name=model, config_hash="h"
        )

    tags, version = op(name)._champion_run_tags()
    assert version == v1 and tags is not None and tags["t"] == "1"
    assert op(f"{name}-absent")._champion_run_tags() == (None, None)


def test_changes_operator_raises_an_invalid_request_instead_of_no_champion(mlflow_conn):
    """The old copy read INVALID_PARAMETER_VALUE (its code for a missing alias) as "no
    champion", so a request the server rejects (here an empty model name) looked like a first
    training; the alias-map read tells the two apart and raises."""
    from mlflow.exceptions import MlflowException

    from airflow_mlops.operators.changes import DetectChangesOperator

    operator = DetectChangesOperator(
        task_id="d", train_uri="/d/x.csv", model_name="", config_hash="h"
    )
    with pytest.raises(MlflowException) as caught:
        operator._champion_run_tags()
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"


def test_changes_operator_does_not_take_an_unreachable_server_for_no_champion(monkeypatch):
    from airflow_mlops.core.errors import MlflowConnectionError
    from airflow_mlops.operators.changes import DetectChangesOperator

    uri = _unreachable(monkeypatch)
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT", mlflow_connection_env(uri, extra={"max_retries": 0})
    )
    operator = DetectChangesOperator(
        task_id="d", train_uri="/d/x.csv", model_name="m", config_hash="h"
    )
    with pytest.raises(MlflowConnectionError):  # not (None, None), "no champion yet"
        operator._champion_run_tags()


def test_provenance_alias_missing_is_an_mlflow_error(model_with_champion):
    """A URI to load, not a champion check: a missing alias or model is an error (the
    not-found one that evaluation and the serving check handle) that names the alias."""
    from mlflow.exceptions import MlflowException

    from airflow_mlops.core.model_uri import parse_model_uri
    from airflow_mlops.core.provenance import _describe

    client, name, run_id, v1, _ = model_with_champion
    target = _describe(client, parse_model_uri(f"models:/{name}@champion"))
    assert target.download_uri == f"models:/{name}/{v1}" and target.run_id == run_id
    for uri in (f"models:/{name}@nope", f"models:/{name}-absent@champion"):
        with pytest.raises(MlflowException, match=r"has no alias '(nope|champion)'") as caught:
            _describe(client, parse_model_uri(uri))
        assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_provenance_does_not_take_an_unreachable_server_for_a_missing_alias(monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.model_uri import parse_model_uri
    from airflow_mlops.core.provenance import _describe

    uri = _unreachable(monkeypatch)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with pytest.raises(MlflowException) as caught:
        _describe(client, parse_model_uri("models:/m@champion"))
    assert caught.value.error_code != "RESOURCE_DOES_NOT_EXIST"


def test_prediction_alias_resolution(model_with_champion):
    from airflow_mlops.core.errors import ModelUriError
    from airflow_mlops.core.prediction import resolve_model_version

    client, name, _, v1, _ = model_with_champion
    assert str(resolve_model_version(client, f"models:/{name}@champion").version) == v1
    with pytest.raises(ModelUriError, match="has no alias 'nope'"):
        resolve_model_version(client, f"models:/{name}@nope")
    with pytest.raises(ModelUriError, match="has no alias 'champion'"):
        resolve_model_version(client, f"models:/{name}-absent@champion")
