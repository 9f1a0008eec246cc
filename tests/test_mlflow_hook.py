"""MlflowHook against real MLflow servers: plain, basic-auth, unreachable, embedded default."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from conftest import mlflow_connection_env
from devkit import free_port

from airflow_mlops.core.errors import ConfigError, MlflowConnectionError
from airflow_mlops.core.mlflow_settings import settings_from_connection, tracking_uri_from_parts
from airflow_mlops.hooks.mlflow import MlflowHook


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("http://mlflow:5000", None, "http://mlflow:5000"),
        ("https://mlflow.example.com/", None, "https://mlflow.example.com"),
        ("http://mlflow", 5001, "http://mlflow:5001"),
        ("mlflow", None, "http://mlflow:5000"),
        ("mlflow", 8080, "http://mlflow:8080"),
        ("sqlite:////data/mlflow.db", None, "sqlite:////data/mlflow.db"),
        ("/data/mlruns", None, "file:///data/mlruns"),
    ],
)
def test_tracking_uri_from_connection_fields(host, port, expected):
    assert tracking_uri_from_parts(host, port, "c") == expected


def test_connection_without_host_names_the_field():
    with pytest.raises(ConfigError, match="'my_conn' has no host"):
        tracking_uri_from_parts("", None, "my_conn")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tokn": "x"}, r"unknown extra field\(s\) \['tokn'\]"),
        ({"verify_tls": "maybe"}, "'verify_tls' must be true or false"),
        ({"timeout": "soon"}, "'timeout' must be a non-negative integer"),
        ({"max_retries": -1}, "'max_retries' must be a non-negative integer"),
    ],
)
def test_bad_extra_fields_are_named(extra, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_connection("c", "http://h:1", None, None, None, extra)


def test_settings_from_extra():
    settings = settings_from_connection(
        "c",
        "http://h:1",
        None,
        "bob",
        "pw",
        {"token": "t", "verify_tls": "false", "s3_endpoint_url": "http://s3", "timeout": 5},
    )
    env = settings.environment()
    assert env["MLFLOW_TRACKING_USERNAME"] == "bob"
    assert env["MLFLOW_TRACKING_TOKEN"] == "t"
    assert env["MLFLOW_TRACKING_INSECURE_TLS"] == "true"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://s3"
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    assert "pw" not in repr(settings) and "'t'" not in repr(settings)


def test_session_logs_to_server_and_restores_environment(mlflow_conn, mlflow_server):
    import mlflow

    before_env = dict(os.environ)
    before_uri = mlflow.get_tracking_uri()
    hook = MlflowHook(mlflow_conn_id=mlflow_conn)
    with hook.session() as client:
        assert mlflow.get_tracking_uri() == mlflow_server
        experiment_id = hook.get_or_create_experiment(f"hook-{uuid.uuid4().hex[:8]}")
        assert (
            hook.get_or_create_experiment(client.get_experiment(experiment_id).name)
            == experiment_id
        )
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_metric("m", 1.5)
        assert client.get_run(run.info.run_id).data.metrics == {"m": 1.5}
    assert dict(os.environ) == before_env
    assert mlflow.get_tracking_uri() == before_uri


def test_get_or_create_experiment_refuses_a_deleted_experiment(mlflow_conn, mlflow_server):
    """The hook (the training operator's path) names the deleted experiment instead of
    returning its id, which would log runs into the trash; the core copy is the one copy."""
    from airflow_mlops.core.errors import DeletedExperimentError
    from airflow_mlops.core.mlflow_client import get_or_create_experiment

    hook = MlflowHook(mlflow_conn_id=mlflow_conn)
    name = f"hook-deleted-{uuid.uuid4().hex[:8]}"
    with hook.session() as client:
        experiment_id = hook.get_or_create_experiment(name)
        client.delete_experiment(experiment_id)
        with pytest.raises(DeletedExperimentError, match="restore it or choose another name"):
            hook.get_or_create_experiment(name)
        with pytest.raises(DeletedExperimentError, match=name):
            get_or_create_experiment(client, name)
        client.restore_experiment(experiment_id)
        assert hook.get_or_create_experiment(name) == experiment_id


def test_basic_auth_correct_and_wrong_password(mlflow_auth_server, monkeypatch):
    uri, password = mlflow_auth_server
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_AUTH", mlflow_connection_env(uri, login="admin", password=password)
    )
    ok, message = MlflowHook("mlflow_auth").test_connection()
    assert ok, message

    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_AUTH", mlflow_connection_env(uri, login="admin", password="wrong-pw")
    )
    with pytest.raises(MlflowConnectionError) as err, MlflowHook("mlflow_auth").session() as client:
        client.search_experiments(max_results=1)
    assert uri in str(err.value)
    assert "refused the credentials (user 'admin')" in str(err.value)
    assert "wrong-pw" not in str(err.value)


@pytest.mark.timeout(90)
def test_unreachable_server_gives_clear_bounded_error(monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DOWN",
        mlflow_connection_env(uri, extra={"timeout": 2, "max_retries": 1}),
    )
    hook = MlflowHook("mlflow_down")
    with (
        pytest.raises(MlflowConnectionError, match=f"{uri} is unreachable"),
        hook.session() as client,
    ):
        client.search_experiments(max_results=1)
    ok, message = hook.test_connection()
    assert not ok and uri in message


def test_embedded_default_without_connection(airflow_home):
    assert "AIRFLOW_CONN_MLFLOW_DEFAULT" not in os.environ
    hook = MlflowHook()
    assert hook.settings.embedded
    assert hook.tracking_uri == f"sqlite:///{airflow_home / 'mlflow' / 'mlflow.db'}"
    import mlflow

    with hook.session() as client:
        experiment_id = hook.get_or_create_experiment("embedded-default")
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_dict({"a": 1}, "a.json")
        assert client.get_run(run.info.run_id).info.status == "FINISHED"
    artifact_dir = airflow_home / "mlflow" / "artifacts" / "embedded-default"
    assert list(artifact_dir.rglob("a.json")), "artifact not under $AIRFLOW_HOME/mlflow/artifacts"
    assert hook.test_connection()[0]


def test_undefined_custom_connection_is_an_error():
    with pytest.raises(ConfigError, match="'no_such_conn' is not defined"):
        _ = MlflowHook("no_such_conn").settings


def test_password_and_token_are_masked(monkeypatch, mlflow_server):
    from airflow.sdk._shared.secrets_masker import redact

    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_SECRET",
        mlflow_connection_env(
            mlflow_server, login="u", password="pw-abc-123456", extra={"token": "tok-xyz-987654"}
        ),
    )
    _ = MlflowHook("mlflow_secret").settings
    line = json.dumps({"msg": "using pw-abc-123456 and tok-xyz-987654"})
    assert "pw-abc-123456" not in str(redact(line))
    assert "tok-xyz-987654" not in str(redact(line))


def test_only_real_auth_errors_are_reported_as_refused_credentials():
    """A model name or run id holding the digits 401 is not an HTTP 401, and this provider's
    own errors (an untrusted model, say) keep their type and text."""
    from mlflow.exceptions import MlflowException

    from airflow_mlops.core.errors import UntrustedModelError
    from airflow_mlops.core.mlflow_settings import MlflowSettings, translate_mlflow_error

    settings = MlflowSettings(tracking_uri="http://mlflow.example:5000")
    own = UntrustedModelError("model 'foreign-fb040100' version 1 is refused (HTTP 401 text)")
    assert translate_mlflow_error(own, settings) is None
    named = MlflowException("RESOURCE_DOES_NOT_EXIST: run a401ffe not found")
    assert translate_mlflow_error(named, settings) is None
    auth = MlflowException("API request failed with error code 401 != 200")
    assert "refused the credentials" in str(translate_mlflow_error(auth, settings))
