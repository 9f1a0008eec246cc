"""docker-compose.yaml: parsed offline by Debian's ``docker-compose config`` (no Docker engine).

The compose file is checked for what matters when it is finally run somewhere: every service
of the production-shaped topology is there, the secrets come from ``.env`` (and the file
refuses to render without them), and its service commands are exactly those of the local
stack that the end-to-end test runs (``deploy/local_stack.py:service_commands``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
AIRFLOW_SERVICES = (
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker-1",
    "airflow-worker-2",
)


def _local_stack() -> Any:
    import local_stack  # deploy/ is on pytest's pythonpath

    return local_stack


def ensure_docker_compose() -> str:
    """Debian's docker-compose (1.29), installed with apt-get when missing (CI included)."""
    found = shutil.which("docker-compose")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    known = subprocess.run(
        ["apt-cache", "show", "docker-compose"], capture_output=True, env=env, check=False
    )
    if known.returncode != 0:  # no package lists yet
        subprocess.run(
            ["apt-get", "update", "-q"], check=True, capture_output=True, env=env, timeout=600
        )
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "docker-compose"],
        check=True,
        capture_output=True,
        env=env,
        timeout=900,
    )
    found = shutil.which("docker-compose")
    assert found, "docker-compose is still missing after apt-get install docker-compose"
    return found


def compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            ensure_docker_compose(),
            "--project-directory",
            str(REPO),
            "--env-file",
            str(env_file),
            "-f",
            str(REPO / "docker-compose.yaml"),
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    result = compose_config(REPO / ".env.example")
    assert result.returncode == 0, f"docker-compose config rejected the file:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def defaults() -> dict[str, str]:
    return read_env_file(REPO / ".env.example")


def test_every_service_of_the_topology_is_defined(config: dict[str, Any]) -> None:
    services = set(config["services"])
    expected = {"postgres", "redis", "s3", "s3-init", "mlflow", "mlflow-init", "airflow-init"}
    expected |= set(AIRFLOW_SERVICES)
    assert expected <= services, f"missing: {sorted(expected - services)}"


def test_service_commands_are_those_of_the_local_stack(
    config: dict[str, Any], defaults: dict[str, str]
) -> None:
    stack = _local_stack()
    expected = stack.service_commands(
        mlflow_backend_uri=f"postgresql+psycopg2://mlflow:{defaults['MLFLOW_DB_PASSWORD']}@postgres:5432/mlflow",
        artifacts_destination=f"s3://{defaults['MLFLOW_BUCKET']}/artifacts",
        host="0.0.0.0",
        port=5000,
        allowed_hosts=f"mlflow:5000,localhost:{defaults['MLFLOW_PORT']},127.0.0.1:{defaults['MLFLOW_PORT']}",
    )
    assert set(expected) == {"mlflow", *AIRFLOW_SERVICES}
    for service, command in expected.items():
        assert config["services"][service]["command"] == command, service


def test_airflow_services_share_one_celery_configuration(config: dict[str, Any]) -> None:
    envs = {
        name: config["services"][name]["environment"]
        for name in (*AIRFLOW_SERVICES, "airflow-init")
    }
    for key in (
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__CELERY__RESULT_BACKEND",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "AIRFLOW_CONN_MLFLOW_DEFAULT",
        "AIRFLOW_CONN_AWS_DEFAULT",
    ):
        values = {name: env.get(key) for name, env in envs.items()}
        assert len(set(values.values())) == 1 and None not in values.values(), (key, values)
    env = envs["airflow-scheduler"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3: the Celery backend names psycopg2.
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__BROKER_URL"].endswith("@redis:6379/0")
    assert (
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
        == "http://airflow-api-server:8080/execution/"
    )
    mlflow_conn = json.loads(env["AIRFLOW_CONN_MLFLOW_DEFAULT"])
    assert (mlflow_conn["conn_type"], mlflow_conn["host"]) == ("mlflow", "http://mlflow:5000")
    assert mlflow_conn["login"] == "airflow" and mlflow_conn["password"]
    aws_conn = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert aws_conn["conn_type"] == "aws" and aws_conn["extra"]["endpoint_url"] == "http://s3:9000"


def test_repository_folders_and_provider_image(config: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        service = config["services"][name]
        targets = {
            v["target"] if isinstance(v, dict) else v.split(":")[1] for v in service["volumes"]
        }
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= targets, (
            name
        )
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert (
        "requirements/lock.txt" in dockerfile
        and "pip install --no-cache-dir --no-deps ." in dockerfile
    )
    assert config["services"]["postgres"]["volumes"], "PostgreSQL data must live in a volume"


def test_mlflow_uses_postgres_and_the_bucket_created_at_start(
    config: dict[str, Any], defaults: dict[str, str]
) -> None:
    mlflow = config["services"]["mlflow"]
    command = mlflow["command"]
    assert (
        command[command.index("--artifacts-destination") + 1]
        == f"s3://{defaults['MLFLOW_BUCKET']}/artifacts"
    )
    assert "mlflow:5000" in command[command.index("--allowed-hosts") + 1].split(",")
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://s3:9000"
    assert mlflow["depends_on"]["s3-init"]["condition"] == "service_completed_successfully"
    init = config["services"]["s3-init"]
    assert init["environment"]["MLFLOW_BUCKET"] == defaults["MLFLOW_BUCKET"]
    assert "create_bucket" in init["command"][-1]
    assert (REPO / "deploy" / "docker" / "postgres-init.sh").exists()


def test_services_listen_on_loopback_only(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            published = (
                port
                if isinstance(port, str)
                else f"{port.get('host_ip', '')}:{port.get('published')}"
            )
            assert str(published).startswith("127.0.0.1:"), (name, port)


def test_missing_secrets_stop_the_rendering(tmp_path: Path, defaults: dict[str, str]) -> None:
    """Without the secrets of .env the file does not render: no silent default password."""
    public = {
        k: v
        for k, v in defaults.items()
        if "PASSWORD" not in k and "SECRET" not in k and "KEY" not in k
    }
    env_file = tmp_path / "public.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in public.items()))
    result = compose_config(env_file)
    assert result.returncode != 0
    assert "in .env" in result.stderr, result.stderr


def test_env_example_documents_every_variable(defaults: dict[str, str]) -> None:
    import re

    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", (REPO / "docker-compose.yaml").read_text()))
    assert used <= set(defaults), f"undocumented in .env.example: {sorted(used - set(defaults))}"


def test_mlflow_runs_with_basic_auth_and_airflow_signs_in(
    config: dict[str, Any], defaults: dict[str, str]
) -> None:
    """Issue #14 item 6: MLflow refuses anonymous writes; Airflow has its own MLflow user."""
    mlflow = config["services"]["mlflow"]
    command = mlflow["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == defaults["MLFLOW_ADMIN_PASSWORD"]
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == defaults["MLFLOW_FLASK_SECRET_KEY"]
    assert env["MLFLOW_AUTH_DATABASE_URI"].endswith("@postgres:5432/mlflow")
    # The entry point writes the auth settings, then runs the command.
    assert mlflow["entrypoint"][-2:] == ["bash", "/opt/mlflow-auth.sh"]
    script = REPO / "deploy" / "docker" / "mlflow-auth.sh"
    assert any(v.startswith(f"{script}:/opt/mlflow-auth.sh") for v in mlflow["volumes"])
    assert 'exec "$@"' in script.read_text()
    init = config["services"]["mlflow-init"]
    assert init["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert init["environment"]["MLFLOW_AIRFLOW_PASSWORD"] == defaults["MLFLOW_AIRFLOW_PASSWORD"]
    for name in AIRFLOW_SERVICES:
        service = config["services"][name]
        assert service["depends_on"]["mlflow-init"]["condition"] == "service_completed_successfully"
        conn = json.loads(service["environment"]["AIRFLOW_CONN_MLFLOW_DEFAULT"])
        assert (conn["login"], conn["password"]) == ("airflow", defaults["MLFLOW_AIRFLOW_PASSWORD"])
