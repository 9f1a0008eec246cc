#!/usr/bin/env python3
"""A real Airflow + MLflow + S3 stack on 127.0.0.1, without Docker, in two shapes.

``quick``: ``airflow standalone`` (SQLite, LocalExecutor), an MLflow tracking server (SQLite
backend, artifacts in S3) and moto's S3-compatible server.

``prod``: the topology of ``docker-compose.yaml``: PostgreSQL and Redis from Debian's packages
(installed with apt-get when missing), Airflow on PostgreSQL with the CeleryExecutor (api-server,
scheduler, dag-processor, triggerer and two Celery workers), an MLflow server on PostgreSQL
with S3 artifacts and basic authentication on (Airflow signs in as its own MLflow user), and
moto's S3 server with the artifact bucket created.

Usage (through the ``deploy/local-stack`` wrapper)::

    deploy/local-stack quick start|stop|status
    deploy/local-stack prod  start|stop|status [--dags-folder DIR] [--auto-ports] [--purge]
    deploy/local-stack quick start --preload     # pay the operators' imports once per worker

About 1,000 lines in one file on purpose: it is a command, run by path from a fresh checkout,
that describes two stacks service by service (each service's command line, settings and
readiness check read best next to each other); its reusable half lives in ``devkit``.

State lives under ``.local-stack/<shape>/`` (ports, process groups, logs, databases). Every
service is started in its own session (``setsid``) and stopped by signalling its process
group, so nothing is left behind. Only the standard library is imported at module level;
the script runs with the project's virtualenv Python, whose ``airflow``, ``mlflow`` and
``moto_server`` it uses.

Processes, ports, the command runner and the REST client (:class:`AirflowApi`) live in
:mod:`devkit` next to this file, importable by tests, benches and scripts.

The service commands are defined once, in :func:`service_commands`; ``tests/test_compose.py``
checks that ``docker-compose.yaml`` runs the same commands.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devkit import (
    StackError,
    apt_install,
    ensure_binary,
    free_port,
    group_alive,
    group_is_ours,
    http_ok,
    port_is_free,
    run,
    sqlite_metadata_url,
    start_logged,
    start_ticks,
    stop_group,
)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PLUGIN_CLASS = "airflow_mlops.plugins.mlops_page.MlopsPlugin"
ADMIN_USER = "admin"
MLFLOW_ADMIN = "admin"  # MLflow's bootstrap admin (basic auth)
MLFLOW_USER = "airflow"  # the MLflow user of Airflow's mlflow_default connection
BUCKET = "mlflow"
S3_KEY = "local-stack"  # moto accepts any credentials; these name the stack in its logs
CELERY_WORKERS = ("worker-1", "worker-2")

DEFAULT_PORTS = {
    "quick": {
        "airflow": 28080,
        "mlflow": 25000,
        "s3": 29000,
        "worker_logs": 28793,
        "triggerer_logs": 28794,
    },
    "prod": {
        "airflow": 18080,
        "mlflow": 15000,
        "s3": 19000,
        "postgres": 15432,
        "redis": 16379,
        "triggerer_logs": 18794,
        "worker-1_logs": 18793,
        "worker-2_logs": 18795,
    },
}
# Order of shutdown: clients before the services they use.
STOP_ORDER = (
    "airflow-standalone",
    "airflow-api-server",
    *(f"airflow-{w}" for w in CELERY_WORKERS),
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "mlflow",
    "s3",
    "redis",
    "postgres",
)


# -- state ----------------------------------------------------------------------------------


@dataclass
class State:
    """What ``start`` recorded, so ``status`` and ``stop`` work from another process."""

    shape: str
    root: str
    dags_folder: str
    ports: dict[str, int]
    admin_password: str
    fernet_key: str
    jwt_secret: str
    db_passwords: dict[str, str] = field(default_factory=dict)
    # prod: MLflow basic-auth users (``admin``, and ``airflow`` for Airflow's connection) and
    # the secret key of MLflow's Flask sessions.
    mlflow_passwords: dict[str, str] = field(default_factory=dict)
    mlflow_secret_key: str = ""
    pids: dict[str, int] = field(default_factory=dict)  # service -> process group id
    # service -> start time (clock ticks since boot) of the group leader, so a stale state
    # file never makes ``stop`` signal an unrelated process that reused the number.
    started: dict[str, int] = field(default_factory=dict)
    # Preload the operators' libraries in the processes that fork the task processes
    # (airflow_mlops.preload; docs/deployment.md "Paying imports once per worker").
    preload: bool = False

    @property
    def path(self) -> Path:
        return Path(self.root)

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['airflow']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.chmod(0o600)
        tmp.replace(self.path / "state.json")

    @classmethod
    def load(cls, root: Path) -> State | None:
        try:
            return cls(**json.loads((root / "state.json").read_text()))
        except FileNotFoundError:
            return None


def new_state(shape: str, root: Path, dags_folder: Path, auto_ports: bool) -> State:
    ports = dict(DEFAULT_PORTS[shape])
    for name, port in ports.items():
        env_port = os.environ.get(f"LOCAL_STACK_{name.upper().replace('-', '_')}_PORT")
        ports[name] = int(env_port) if env_port else (free_port() if auto_ports else port)
        if not port_is_free(ports[name]):
            raise StackError(
                f"port {ports[name]} for {name} is in use on 127.0.0.1: stop what uses it, set "
                f"LOCAL_STACK_{name.upper().replace('-', '_')}_PORT, or pass --auto-ports"
            )
    return State(
        shape=shape,
        root=str(root),
        dags_folder=str(dags_folder),
        ports=ports,
        admin_password=os.environ.get("LOCAL_STACK_ADMIN_PASSWORD", "admin"),
        fernet_key=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        jwt_secret=secrets.token_urlsafe(64),
        db_passwords={"airflow": secrets.token_urlsafe(16), "mlflow": secrets.token_urlsafe(16)},
        mlflow_passwords={user: secrets.token_urlsafe(24) for user in (MLFLOW_ADMIN, MLFLOW_USER)},
        mlflow_secret_key=secrets.token_urlsafe(32),
    )


# -- the commands (shared with docker-compose.yaml) -----------------------------------------


def service_commands(
    *,
    mlflow_backend_uri: str,
    artifacts_destination: str,
    host: str,
    port: int,
    allowed_hosts: str,
    mlflow_auth: bool = True,
) -> dict[str, list[str]]:
    """The command of every long-running service of the production-shaped topology.

    Addresses that differ between the local stack and docker-compose are arguments; the rest
    (what runs, with which options) is the same in both, and ``tests/test_compose.py`` checks it.
    Airflow's own addresses and ports come from ``AIRFLOW__*`` variables, not the command.
    ``mlflow_auth``: MLflow's basic-auth app (on in both production shapes; the ``quick``
    sandbox turns it off).
    """
    commands = {
        "mlflow": [
            "mlflow",
            "server",
            *(["--app-name", "basic-auth"] if mlflow_auth else []),
            "--backend-store-uri",
            mlflow_backend_uri,
            "--artifacts-destination",
            artifacts_destination,
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            "1",
            "--allowed-hosts",
            allowed_hosts,
        ],
        "airflow-api-server": ["airflow", "api-server"],
        "airflow-scheduler": ["airflow", "scheduler"],
        "airflow-dag-processor": ["airflow", "dag-processor"],
        "airflow-triggerer": ["airflow", "triggerer"],
    }
    for worker in CELERY_WORKERS:
        commands[f"airflow-{worker}"] = [
            "airflow",
            "celery",
            "worker",
            "--concurrency",
            "1",
            "--celery-hostname",
            f"{worker}@%h",
        ]
    return commands


def _resolve(argv: list[str]) -> list[str]:
    """Run the virtualenv's console scripts (``airflow``, ``mlflow``) by absolute path."""
    head = BIN / argv[0]
    return [str(head) if head.exists() else argv[0], *argv[1:]]


# -- environment ----------------------------------------------------------------------------


# The example pipelines train scikit-learn and XGBoost models and the stacks keep data in S3.
PRELOAD_FAMILIES = "all,xgboost,s3"
PRELOAD_MARKER = "# Written by deploy/local_stack.py for --preload; removed by a start without it."
PRELOAD_SETTINGS = f"""{PRELOAD_MARKER}
# LocalExecutor: the scheduler imports the operators' libraries once, before it forks the
# workers whose task processes inherit them. Other Airflow processes skip it.
from airflow_mlops.preload import preload_in_scheduler

__all__: list[str] = []  # export nothing into airflow.settings
preload_in_scheduler({PRELOAD_FAMILIES!r})
"""


def _preload_module() -> Any:
    """``airflow_mlops.preload`` from this repository (cheap: standard library only)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import airflow_mlops.preload

    return airflow_mlops.preload


def write_preload_settings(state: State) -> Path:
    """quick: ``$AIRFLOW_HOME/config/airflow_local_settings.py`` preloading in the scheduler
    when ``state.preload``; a file this script wrote earlier is removed otherwise (a file
    written by someone else is left alone)."""
    path = state.path / "airflow" / "config" / "airflow_local_settings.py"
    if state.preload and state.shape == "quick":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PRELOAD_SETTINGS)
    elif path.exists() and path.read_text().startswith(PRELOAD_MARKER):
        path.unlink()
    return path


def celery_preload_env(state: State) -> dict[str, str]:
    """prod: the Celery workers import the operators' libraries in their main process at
    start (Celery's ``imports``, through ``[celery] extra_celery_config``), before forking."""
    if not state.preload:
        return {}
    config = _preload_module().celery_extra_config(PRELOAD_FAMILIES)
    return {"AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": json.dumps(config)}


def plugin_registration() -> str:
    """How the MLOps page plugin is declared: provider-info, entry-point or none."""
    from importlib.metadata import entry_points

    sys.path.insert(0, str(REPO))
    try:
        from airflow_mlops.get_provider_info import get_provider_info

        declared = {p.get("plugin-class") for p in get_provider_info().get("plugins", [])}
    finally:
        sys.path.remove(str(REPO))
    if PLUGIN_CLASS in declared:
        return "provider-info"
    if any(
        ep.value.replace(":", ".") == PLUGIN_CLASS for ep in entry_points(group="airflow.plugins")
    ):
        return "entry-point"
    return "none"


def prepare_plugins_folder(state: State) -> Path:
    """The stack's plugins folder: the repo's ``plugins/`` plus, if the package does not
    declare the MLOps page yet, a one-line shim (declaring it twice is an error in Airflow)."""
    folder = state.path / "plugins"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for item in (REPO / "plugins").glob("*.py"):
        (folder / item.name).symlink_to(item)
    if plugin_registration() == "none":
        module, cls = PLUGIN_CLASS.rsplit(".", 1)
        (folder / "airflow_mlops_page.py").write_text(
            f"# Written by deploy/local_stack.py: the package does not declare the plugin yet.\n"
            f"from {module} import {cls}  # noqa: F401\n"
        )
    return folder


def airflow_env(state: State) -> dict[str, str]:
    """Environment shared by every Airflow process of the stack."""
    home = state.path / "airflow"
    api = state.airflow_url
    env = {
        **base_env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": state.dags_folder,
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(state.path / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
        "AIRFLOW__CORE__FERNET_KEY": state.fernet_key,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(state.ports["airflow"]),
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": state.jwt_secret,
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps(
            {
                "conn_type": "mlflow",
                "host": state.mlflow_url,
                **mlflow_login(state),
                "extra": {"timeout": 30, "max_retries": 2},
            }
        ),
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
            {
                "conn_type": "aws",
                "login": S3_KEY,
                "password": S3_KEY,
                "extra": {"endpoint_url": state.s3_url, "region_name": "us-east-1"},
            }
        ),
        "GX_ANALYTICS_ENABLED": "False",
        # Holdouts of training data in S3 need a configured root (never beside the data);
        # every process of the stack shares this disk.
        "AIRFLOW__MLOPS__ARTIFACTS_URI": str(home / "mlops_artifacts"),
    }
    if plugin_registration() == "provider-info":
        # Airflow loads plugins declared in provider info only when providers are not lazy.
        env["AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS"] = "False"
    if state.shape == "prod":
        pg = f"airflow:{state.db_passwords['airflow']}@127.0.0.1:{state.ports['postgres']}/airflow"
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{pg}",
                "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{state.ports['redis']}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{pg}",
            }
        )
    else:
        env["AIRFLOW__CORE__EXECUTOR"] = "LocalExecutor"
        env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(state.ports["worker_logs"])
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = sqlite_metadata_url(home / "airflow.db")
    # Log servers listen on fixed default ports otherwise (8793/8794): keep them per stack.
    env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(state.ports["triggerer_logs"])
    return env


def base_env() -> dict[str, str]:
    """The caller's environment without variables that would redirect the stack elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "MLFLOW_", "AWS_", "PYTEST_"))
    }
    # `airflow standalone` and the Celery workers start `airflow …` subprocesses by name.
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "/usr/bin:/bin")])
    return env


def mlflow_env(state: State) -> dict[str, str]:
    env = {
        **base_env(),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_S3_ENDPOINT_URL": state.s3_url,
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    if mlflow_auth_on(state):
        env.update(
            {
                "MLFLOW_AUTH_CONFIG_PATH": str(state.path / "mlflow" / "basic_auth.ini"),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": state.mlflow_secret_key,
                "MLFLOW_AUTH_ADMIN_PASSWORD": state.mlflow_passwords[MLFLOW_ADMIN],
            }
        )
    return env


def mlflow_auth_on(state: State) -> bool:
    """prod runs MLflow with basic auth, like docker-compose; quick stays an open sandbox."""
    return state.shape == "prod"


def mlflow_login(state: State) -> dict[str, str]:
    """Login/password fields of Airflow's ``mlflow_default`` connection (prod only)."""
    if not mlflow_auth_on(state):
        return {}
    return {"login": MLFLOW_USER, "password": state.mlflow_passwords[MLFLOW_USER]}


def ensure_mlflow_user(base_url: str, admin_password: str, user: str, password: str) -> None:
    """Create MLflow user ``user`` (an existing one stays) and make it an MLflow admin.

    Admin because MLflow 3.17's basic-auth app answers 403, not 404, when a non-admin asks for
    an alias of a model that does not exist yet, which the first run of a pipeline does.
    """
    try:
        _mlflow_auth_call(
            base_url, admin_password, "POST", "users/create", username=user, password=password
        )
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")
        if "RESOURCE_ALREADY_EXISTS" not in body:
            raise StackError(
                f"creating MLflow user {user!r} failed: HTTP {err.code}: {body[:300]}"
            ) from None
    _mlflow_auth_call(
        base_url, admin_password, "PATCH", "users/update-admin", username=user, is_admin=True
    )


def _mlflow_auth_call(
    base_url: str, admin_password: str, method: str, route: str, **body: Any
) -> None:
    token = base64.b64encode(f"{MLFLOW_ADMIN}:{admin_password}".encode()).decode()
    request = urllib.request.Request(
        f"{base_url}/api/2.0/mlflow/{route}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=30):
        pass


# -- processes ------------------------------------------------------------------------------


def spawn(
    state: State, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
) -> int:
    """Start ``argv`` as service ``name`` (see :func:`start_logged`), logging to logs/<name>.log."""
    process = start_logged(argv, state.path / "logs" / f"{name}.log", env, cwd or state.path)
    state.pids[name] = process.pid
    state.started[name] = start_ticks(process.pid) or 0
    state.save()
    return process.pid


def log_tail(state: State, name: str, lines: int = 30) -> str:
    try:
        text = (state.path / "logs" / f"{name}.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_for(state: State, name: str, check: Any, timeout_seconds: float, what: str) -> None:
    """Poll ``check()`` until true; fail early if any started service's process group died."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        for service, pgid in state.pids.items():
            if not group_alive(pgid):
                raise StackError(
                    f"{service} exited while waiting for {name}: {what}; log "
                    f"{state.path}/logs/{service}.log:\n{log_tail(state, service)}"
                )
        time.sleep(1.0)
    raise StackError(
        f"{name}: {what} not reached after {timeout_seconds:.0f}s; log "
        f"{state.path}/logs/{name}.log:\n{log_tail(state, name)}"
    )


# -- native services ------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The PostgreSQL server binaries of the Debian package (installed when missing)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        apt_install(["postgresql"])
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise StackError("PostgreSQL server binaries not found under /usr/lib/postgresql")
    return found[-1].parent


def redis_bin() -> str:
    return ensure_binary("redis-server", "redis-server")


def _as_postgres_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the Debian ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _reachable_by_other_users(path: Path) -> bool:
    """Whether every folder down to ``path`` lets other users through (o+x)."""
    return all(folder.stat().st_mode & stat.S_IXOTH for folder in (path, *path.parents))


def postgres_dir(root: Path) -> Path:
    """Where PostgreSQL keeps its data and socket for the stack whose state is ``root``.

    As root, PostgreSQL runs as the ``postgres`` user, who cannot enter a private checkout
    (``mktemp -d`` makes 0700 folders): then a folder under the system temp dir, named after
    ``root`` so that stop --purge finds it again.
    """
    inside = root / "postgres"
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or _reachable_by_other_users(root.resolve()):
        return inside
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"airflow-mlops-postgres-{digest}"


def start_postgres(state: State) -> None:
    pg = postgres_bin()
    root = postgres_dir(state.path)
    data, sockets = root / "data", root / "run"
    fresh = not (data / "PG_VERSION").exists()
    sockets.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
    if fresh:
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        run(
            _as_postgres_user(
                [
                    str(pg / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                ]
            ),
            what="initdb",
            cwd=root,
        )
    spawn(
        state,
        "postgres",
        _as_postgres_user(
            [
                str(pg / "postgres"),
                "-D",
                str(data),
                "-p",
                str(state.ports["postgres"]),
                "-k",
                str(sockets),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=64MB",
                "-c",
                "fsync=off",
            ]
        ),
        base_env(),
        cwd=root,
    )
    psql = [
        str(pg / "psql"),
        "-h",
        str(sockets),
        "-p",
        str(state.ports["postgres"]),
        "-U",
        "postgres",
        "-v",
        "ON_ERROR_STOP=1",
        "-q",
        "-d",
        "postgres",
    ]
    wait_for(
        state,
        "postgres",
        lambda: (
            subprocess.run(
                _as_postgres_user(
                    [str(pg / "pg_isready"), "-h", str(sockets), "-p", str(state.ports["postgres"])]
                ),
                capture_output=True,
                check=False,
            ).returncode
            == 0
        ),
        60,
        "accepting connections",
    )
    # Roles and databases: created once, passwords reset at every start (they live in the state).
    for name, password in state.db_passwords.items():
        sql = (
            f"SELECT 'CREATE ROLE {name} LOGIN' WHERE NOT EXISTS "
            f"(SELECT FROM pg_roles WHERE rolname = '{name}')\\gexec\n"
            f"ALTER ROLE {name} WITH LOGIN PASSWORD '{password}';\n"
            f"SELECT 'CREATE DATABASE {name} OWNER {name}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{name}')\\gexec\n"
        )
        run(
            _as_postgres_user(psql),
            input_text=sql,
            what=f"creating role and database {name}",
            cwd=root,
        )


def start_redis(state: State) -> None:
    folder = state.path / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    spawn(
        state,
        "redis",
        [
            redis_bin(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(state.ports["redis"]),
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        base_env(),
        cwd=folder,
    )

    def pong() -> bool:
        with socket.create_connection(("127.0.0.1", state.ports["redis"]), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    wait_for(state, "redis", pong, 30, "answering PING")


def start_s3(state: State) -> None:
    env = {**base_env(), "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_KEY}
    spawn(
        state,
        "s3",
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(state.ports["s3"])],
        env,
    )
    wait_for(state, "s3", lambda: http_ok(f"{state.s3_url}/moto-api/"), 60, "serving")
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=state.s3_url,
        region_name="us-east-1",
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_KEY,
    )
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in (BUCKET, "mlops"):
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)


def start_mlflow(state: State) -> None:
    if state.shape == "prod":
        backend = (
            f"postgresql+psycopg2://mlflow:{state.db_passwords['mlflow']}"
            f"@127.0.0.1:{state.ports['postgres']}/mlflow"
        )
    else:
        backend = f"sqlite:///{state.path / 'mlflow' / 'mlflow.db'}"
        (state.path / "mlflow").mkdir(parents=True, exist_ok=True)
    port = state.ports["mlflow"]
    argv = service_commands(
        mlflow_backend_uri=backend,
        artifacts_destination=f"s3://{BUCKET}/artifacts",
        host="127.0.0.1",
        port=port,
        allowed_hosts=f"127.0.0.1:{port},localhost:{port}",
        mlflow_auth=mlflow_auth_on(state),
    )["mlflow"]
    env = mlflow_env(state)
    argv = _resolve(argv)
    if mlflow_auth_on(state):
        # The entry point of docker-compose's mlflow service writes the auth settings (users
        # and permissions in the MLflow database) and then runs the server.
        env["MLFLOW_AUTH_DATABASE_URI"] = backend
        argv = ["bash", str(REPO / "deploy" / "docker" / "mlflow-auth.sh"), *argv]
    spawn(state, "mlflow", argv, env)
    wait_for(state, "mlflow", lambda: http_ok(f"{state.mlflow_url}/health"), 180, "healthy")
    if mlflow_auth_on(state):
        ensure_mlflow_user(
            state.mlflow_url,
            state.mlflow_passwords[MLFLOW_ADMIN],
            MLFLOW_USER,
            state.mlflow_passwords[MLFLOW_USER],
        )


# -- Airflow --------------------------------------------------------------------------------


def write_passwords(state: State) -> None:
    home = state.path / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({ADMIN_USER: state.admin_password}) + "\n")
    passwords.chmod(0o600)


def start_airflow_prod(state: State) -> None:
    env = airflow_env(state)
    write_passwords(state)
    print("[local-stack] airflow db migrate (PostgreSQL)", flush=True)
    run([str(BIN / "airflow"), "db", "migrate"], env=env, what="airflow db migrate", cwd=state.path)
    commands = service_commands(
        mlflow_backend_uri="", artifacts_destination="", host="", port=0, allowed_hosts=""
    )
    for name in (
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    ):
        spawn(state, name, _resolve(commands[name]), env)
    for worker in CELERY_WORKERS:
        worker_env = {
            **env,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(state.ports[f"{worker}_logs"]),
            **celery_preload_env(state),
        }
        spawn(state, f"airflow-{worker}", _resolve(commands[f"airflow-{worker}"]), worker_env)
    wait_airflow_healthy(state, "airflow-api-server", ("scheduler", "triggerer", "dag_processor"))
    for worker in CELERY_WORKERS:
        wait_for(
            state,
            f"airflow-{worker}",
            lambda w=worker: (
                f"{w}@" in log_tail(state, f"airflow-{w}", 400)
                and " ready." in log_tail(state, f"airflow-{w}", 400)
            ),
            240,
            "Celery worker ready",
        )


def start_airflow_quick(state: State) -> None:
    env = airflow_env(state)
    write_passwords(state)
    spawn(state, "airflow-standalone", [str(BIN / "airflow"), "standalone"], env)
    wait_airflow_healthy(state, "airflow-standalone", ("scheduler", "triggerer", "dag_processor"))


def wait_airflow_healthy(state: State, name: str, components: tuple[str, ...]) -> None:
    def healthy() -> bool:
        with urllib.request.urlopen(
            f"{state.airflow_url}/api/v2/monitor/health", timeout=5
        ) as resp:
            body = json.loads(resp.read())
        return all(
            (body.get(c) or {}).get("status") == "healthy" for c in ("metadatabase", *components)
        )

    wait_for(state, name, healthy, 300, "api-server healthy with " + ", ".join(components))


# -- commands -------------------------------------------------------------------------------


def start(
    shape: str, root: Path, dags_folder: Path, auto_ports: bool, preload: bool = False
) -> State:
    existing = State.load(root)
    if existing and any(
        group_alive(p) and group_is_ours(p, existing.started.get(n))
        for n, p in existing.pids.items()
    ):
        raise StackError(
            f"the {shape} stack in {root} is already running: deploy/local-stack {shape} stop first"
        )
    state = new_state(shape, root, dags_folder, auto_ports)
    if existing:  # keep the database passwords of the existing PostgreSQL cluster
        state.db_passwords = existing.db_passwords or state.db_passwords
        # MLflow's users live in its database: keep their passwords with it.
        state.mlflow_passwords = existing.mlflow_passwords or state.mlflow_passwords
        state.mlflow_secret_key = existing.mlflow_secret_key or state.mlflow_secret_key
    state.preload = preload
    state.save()
    prepare_plugins_folder(state)
    write_preload_settings(state)
    started = time.monotonic()
    try:
        if shape == "prod":
            start_postgres(state)
            start_redis(state)
        start_s3(state)
        start_mlflow(state)
        if shape == "prod":
            start_airflow_prod(state)
        else:
            start_airflow_quick(state)
    except BaseException:
        stop(root)
        raise
    print(f"[local-stack] {shape} stack up in {time.monotonic() - started:.0f}s", flush=True)
    print_status(state)
    return state


def stop(root: Path, purge: bool = False) -> None:
    state = State.load(root)
    if state is not None:
        names = sorted(state.pids, key=lambda n: STOP_ORDER.index(n) if n in STOP_ORDER else -1)
        for name in names:
            stop_group(name, state.pids[name], state.started.get(name))
        state.pids, state.started = {}, {}
        state.save()
    if purge:
        outside = postgres_dir(root) if root.exists() else None
        if outside is not None and not outside.is_relative_to(root) and outside.exists():
            shutil.rmtree(outside)
        if root.exists():
            shutil.rmtree(root)


def print_status(state: State) -> None:
    print(f"shape:      {state.shape}   (state: {state.root})")
    print(f"Airflow UI: {state.airflow_url}   login: {ADMIN_USER} / {state.admin_password}")
    print(f"MLOps page: {state.airflow_url}/plugin/mlops   (app: {state.airflow_url}/mlops/)")
    print(f"MLflow UI:  {state.mlflow_url}")
    if mlflow_auth_on(state):
        print(
            f"            login: {MLFLOW_ADMIN} / {state.mlflow_passwords[MLFLOW_ADMIN]}   "
            f"(Airflow signs in as {MLFLOW_USER!r})"
        )
    print(f"S3 (moto):  {state.s3_url}   bucket s3://{BUCKET}  key/secret: {S3_KEY}/{S3_KEY}")
    if state.shape == "prod":
        print(
            f"PostgreSQL: 127.0.0.1:{state.ports['postgres']}   Redis: 127.0.0.1:{state.ports['redis']}"
        )
    print(f"DAGs:       {state.dags_folder}")
    for name, pgid in sorted(state.pids.items()):
        print(f"  {name:24s} pgid {pgid:<8d} {'running' if group_alive(pgid) else 'STOPPED'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy/local-stack", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("shape", choices=("quick", "prod"))
    parser.add_argument("command", choices=("start", "stop", "status", "env"))
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="default: .local-stack/<shape> in the repository",
    )
    parser.add_argument("--dags-folder", type=Path, default=REPO / "dags")
    parser.add_argument("--auto-ports", action="store_true", help="pick free ports")
    parser.add_argument("--purge", action="store_true", help="with stop: delete the state too")
    parser.add_argument(
        "--preload",
        action="store_true",
        help="with start: import the operators' libraries once per worker instead of once per "
        "task (quick: in the scheduler; prod: in each Celery worker)",
    )
    args = parser.parse_args(argv)
    root = (args.state_dir or REPO / ".local-stack" / args.shape).resolve()
    try:
        if args.command == "start":
            start(args.shape, root, args.dags_folder.resolve(), args.auto_ports, args.preload)
        elif args.command == "stop":
            stop(root, purge=args.purge)
            print(
                f"[local-stack] {args.shape} stack stopped" + (" and purged" if args.purge else "")
            )
        else:
            state = State.load(root)
            if state is None:
                print(f"[local-stack] no {args.shape} stack in {root}")
                return 1
            if args.command == "env":
                print(
                    json.dumps(
                        {
                            "airflow_url": state.airflow_url,
                            "mlflow_url": state.mlflow_url,
                            # Airflow's MLflow login (prod); absent when MLflow is open.
                            **{f"mlflow_{k}": v for k, v in mlflow_login(state).items()},
                            "s3_url": state.s3_url,
                            "admin_user": ADMIN_USER,
                            "admin_password": state.admin_password,
                            "root": state.root,
                        }
                    )
                )
            else:
                print_status(state)
    except StackError as err:
        print(f"[local-stack] ERROR: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
