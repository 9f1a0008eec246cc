"""Issue #14 item 10: MLflow credentials stay per client and out of what is shown or logged.

Against the real basic-auth MLflow server (``mlflow_auth_server``): two connections with two
users, used from two threads at once, each act as their own user while ``os.environ`` never
holds an MLflow credential; a password in a tracking URI never reaches an error message, a
log record, the connection test's answer or a link.
"""

from __future__ import annotations

import ast
import inspect
import logging
import os
import threading
import uuid
from pathlib import Path

import pytest
import requests
from conftest import mlflow_connection_env
from devkit import free_port

from airflow_mlops.core.errors import ConfigError, MlflowCallError, MlflowConnectionError
from airflow_mlops.core.mlflow_settings import redact_uri, settings_from_connection
from airflow_mlops.hooks.mlflow import MlflowHook
from airflow_mlops.links.mlflow import link_params

CREDENTIAL_VARIABLES = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://u:pw@mlflow:5000", "http://u:***@mlflow:5000"),
        ("https://tok3n@mlflow.example/x", "https://***@mlflow.example/x"),
        ("postgresql://mlflow:p%40ss@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("postgresql+psycopg2://u:a@b@db/m", "postgresql+psycopg2://u:***@db/m"),
        ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
        ("databricks://profile", "databricks://profile"),
        ("http://mlflow:5000", "http://mlflow:5000"),
    ],
)
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown
    assert redact_uri(f"failed: {uri} (retry)") == f"failed: {shown} (retry)"


def test_http_user_info_becomes_the_connection_credentials():
    settings = settings_from_connection(
        "c", "http://alice:s%40cret@mlflow:5000", None, None, None, {}
    )
    assert (settings.tracking_uri, settings.username, settings.password) == (
        "http://mlflow:5000",
        "alice",
        "s@cret",
    )
    with pytest.raises(ConfigError, match="both in its host") as err:
        settings_from_connection("c", "http://alice:pw-in-uri@mlflow", None, "bob", "x", {})
    assert "pw-in-uri" not in str(err.value)
    with pytest.raises(ConfigError, match="'registry_uri'") as err:
        settings_from_connection(
            "c", "http://m", None, None, None, {"registry_uri": "http://a:pw-reg@r"}
        )
    assert "pw-reg" not in str(err.value)


# -- per-client credentials ---------------------------------------------------------------


def _create_user(uri: str, admin_password: str, username: str, password: str) -> None:
    """A second MLflow user, through MLflow's auth REST API (as the bootstrap admin)."""
    response = requests.post(
        f"{uri}/api/2.0/mlflow/users/create",
        json={"username": username, "password": password},
        auth=("admin", admin_password),
        timeout=30,
    )
    assert response.status_code == 200, response.text


def _experiments_managed_by(uri: str, admin_password: str, user: str) -> set[str]:
    """Experiment ids on which ``user`` holds MANAGE (MLflow grants it to the creator)."""
    response = requests.get(
        f"{uri}/api/3.0/mlflow/users/permissions/list",
        params={"username": user},
        auth=("admin", admin_password),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return {
        row["resource_pattern"]
        for row in response.json()["permissions"]
        if row["resource_type"] == "experiment" and row["permission"] == "MANAGE"
    }


@pytest.fixture(scope="module")
def two_users(mlflow_auth_server) -> dict[str, str]:
    uri, admin_password = mlflow_auth_server
    users = {f"user-{uuid.uuid4().hex[:6]}": f"pw-{uuid.uuid4().hex}" for _ in range(2)}
    for name, password in users.items():
        _create_user(uri, admin_password, name, password)
    return users


@pytest.mark.timeout(180)
def test_two_connections_in_two_threads_each_act_as_their_own_user(
    mlflow_auth_server, two_users, monkeypatch, tmp_path
):
    uri, admin_password = mlflow_auth_server
    for name, password in two_users.items():
        conn_id = f"mlflow_{name.replace('-', '_')}"
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            mlflow_connection_env(uri, login=name, password=password),
        )
    hooks = {name: MlflowHook(f"mlflow_{name.replace('-', '_')}") for name in two_users}
    for hook in hooks.values():
        _ = hook.settings  # the connection lookup is not what this test races

    seen_in_environ: list[str] = []
    done = threading.Event()

    def watch_environ() -> None:
        while not done.is_set():
            seen_in_environ.extend(v for v in CREDENTIAL_VARIABLES if v in os.environ)

    start = threading.Barrier(len(hooks))
    created: dict[str, list[str]] = {name: [] for name in hooks}
    failures: list[BaseException] = []

    def work(name: str) -> None:
        try:
            start.wait(timeout=30)
            with hooks[name].client() as client:
                for i in range(2):
                    experiment_id = client.create_experiment(f"{name}-{uuid.uuid4().hex[:8]}")
                    created[name].append(experiment_id)
                    run = client.create_run(experiment_id)
                    note = tmp_path / f"{name}-{i}.txt"
                    note.write_text(name)
                    client.log_artifact(run.info.run_id, str(note), "notes")
                    assert [f.path for f in client.list_artifacts(run.info.run_id, "notes")] == [
                        f"notes/{note.name}"
                    ]
                    got = client.download_artifacts(
                        run.info.run_id, f"notes/{note.name}", str(tmp_path / f"dl-{name}-{i}")
                    )
                    assert Path(got).read_text() == name
        except BaseException as err:  # reported by the main thread
            failures.append(err)

    watcher = threading.Thread(target=watch_environ, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=work, args=(name,)) for name in hooks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    done.set()
    watcher.join(timeout=5)

    assert not failures, failures
    assert not seen_in_environ, (
        f"credentials in os.environ during the calls: {set(seen_in_environ)}"
    )
    for name in hooks:
        # MLflow's auth app gives the user who creates an experiment MANAGE on it.
        assert _experiments_managed_by(uri, admin_password, name) == set(created[name])


def test_a_client_shares_no_cached_artifact_repository(mlflow_auth_server, two_users, monkeypatch):
    """MLflow caches artifact repositories per run for the whole process; ours are per client."""
    uri, _ = mlflow_auth_server
    (name, password), (other, other_password) = two_users.items()
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_A", mlflow_connection_env(uri, login=name, password=password)
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_B", mlflow_connection_env(uri, login=other, password=other_password)
    )
    with MlflowHook("mlflow_a").client() as client_a:
        run = client_a.create_run(client_a.create_experiment(f"cache-{uuid.uuid4().hex[:8]}"))
        repo_a = client_a._tracking_client._get_artifact_repo(run.info.run_id)
    from mlflow.tracking._tracking_service import utils as tracking_utils

    assert run.info.run_id not in tracking_utils._artifact_repos_cache
    client_b = MlflowHook("mlflow_b").get_conn()
    repo_b = client_b._tracking_client._get_artifact_repo(run.info.run_id)
    assert repo_b is not repo_a
    assert repo_b._host_creds.username == other and repo_a._host_creds.username == name


def test_http_artifact_repo_env_reads_are_all_overridden():
    """Every place MLflow's HTTP artifact repository reads the environment's credentials is
    overridden or switched off by our mixin: a new read in a new MLflow release fails here."""
    from mlflow.store.artifact import http_artifact_repo, mlflow_artifacts_repo

    from airflow_mlops.core.mlflow_client import _CredentialedArtifacts

    overridden = set(vars(_CredentialedArtifacts))
    # Methods reached only through the multipart/presigned paths that the mixin switches off.
    switched_off = {
        "_get_presigned_download_url",
        "create_multipart_upload",
        "complete_multipart_upload",
        "abort_multipart_upload",
    }
    for module in (http_artifact_repo, mlflow_artifacts_repo):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                calls = {
                    c.func.id
                    for c in ast.walk(node)
                    if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
                }
                if "get_default_host_creds" in calls:
                    assert node.name in overridden | switched_off, (
                        f"{module.__name__}.{node.name} reads credentials from os.environ"
                    )


# -- nothing shows the password -----------------------------------------------------------


@pytest.mark.timeout(120)
def test_wrong_password_in_uri_is_in_no_error_log_or_link(mlflow_auth_server, monkeypatch, caplog):
    uri, _ = mlflow_auth_server
    secret = f"pw-uri-{uuid.uuid4().hex}"
    with_user_info = uri.replace("http://", f"http://admin:{secret}@")
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_URIPW", mlflow_connection_env(with_user_info))
    hook = MlflowHook("mlflow_uripw")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(MlflowConnectionError) as err, hook.client() as client:
        client.search_experiments(max_results=1)
    ok, message = hook.test_connection()
    assert "refused the credentials (user 'admin')" in str(err.value)
    shown = [str(err.value), message, hook.display_uri, hook.tracking_uri]
    shown += [r.getMessage() for r in caplog.records]
    shown += [
        str(v)
        for v in link_params(tracking_uri=hook.tracking_uri, run_id="r", experiment_id="1").values()
    ]
    assert not ok
    assert not [s for s in shown if secret in s]


@pytest.mark.timeout(120)
def test_database_password_in_uri_is_masked_everywhere(monkeypatch, caplog):
    from airflow.sdk._shared.secrets_masker import redact

    secret = f"dbpw{uuid.uuid4().hex}"
    uri = f"postgresql://mlflow:{secret}@127.0.0.1:{free_port()}/mlflow"
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_PG", mlflow_connection_env(uri))
    hook = MlflowHook("mlflow_pg")
    caplog.set_level(logging.DEBUG)
    assert hook.display_uri == "postgresql://mlflow:***@127.0.0.1:" + uri.rsplit(":", 1)[1]
    assert secret not in str(redact(f"connecting with {secret}"))  # registered with the masker
    assert secret not in repr(hook.settings)
    ok, message = hook.test_connection()
    assert not ok
    with pytest.raises(Exception) as err, hook.client() as client:
        client.search_experiments(max_results=1)
    shown = [message, str(err.value), repr(err.value)]
    shown += [r.getMessage() for r in caplog.records]
    shown += [
        str(v) for v in link_params(tracking_uri=hook.tracking_uri, experiment_id="1").values()
    ]
    assert not [s for s in shown if secret in s]


def test_connection_http_limits_apply_to_the_calling_thread_only(monkeypatch):
    """The connection's timeout/retries reach MLflow per thread, not through os.environ."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES as RETRIES
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_TIMEOUT as TIMEOUT

    from airflow_mlops.core.mlflow_client import HttpLimits, http_limits

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # an explicit, stricter setting
    seen_elsewhere: list[int] = []
    with http_limits(HttpLimits(timeout_seconds=7, max_retries=3)):
        assert (TIMEOUT.get(), RETRIES.get()) == (7, 1)
        with http_limits(
            HttpLimits(timeout_seconds=30, max_retries=0)
        ):  # nesting keeps the stricter
            assert (TIMEOUT.get(), RETRIES.get()) == (7, 0)
        other = threading.Thread(target=lambda: seen_elsewhere.append(TIMEOUT.get()))
        other.start()
        other.join()
        assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
    assert seen_elsewhere == [TIMEOUT.default]
    assert TIMEOUT.get() == TIMEOUT.default


def test_an_error_quoting_a_credential_is_raised_scrubbed(monkeypatch):
    """Whatever MLflow or a database driver puts in a message, the hook raises it masked."""
    secret = f"dbpw{uuid.uuid4().hex}"
    uri = f"http://127.0.0.1:{free_port()}"  # never contacted
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_LEAKY", mlflow_connection_env(uri, extra={"token": secret})
    )
    hook = MlflowHook("mlflow_leaky")
    with pytest.raises(MlflowCallError) as err, hook.client():
        raise RuntimeError(f"driver said: postgresql://u:{secret}@db/x and token {secret}")
    assert secret not in str(err.value)
    assert "postgresql://u:***@db/x" in str(err.value)
    assert err.value.__suppress_context__ and err.value.__cause__ is None
