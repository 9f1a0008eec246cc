"""A light real Airflow for tests: scheduler, dag-processor, triggerer and api-server.

:class:`AirflowStack` runs the four ``airflow`` processes (each a :class:`_servers.Server`,
killed with its process group) on a private ``AIRFLOW_HOME`` with a SQLite metadata DB and the
``LocalExecutor``, a DAGs folder the test fills, the simple auth manager with the users the
test names (``{"admin": "admin", "reviewer": "user"}``: name -> role) and ``[api] base_url``
pointing at the api-server. Tasks call MLflow through ``extra_env`` (e.g.
``AIRFLOW_CONN_MLFLOW_DEFAULT``).

Start-up is kept short for a 2-core machine:

- the metadata DB is copied from the migrated template ``tests/conftest.py`` caches (one
  ``airflow db migrate`` per Airflow version), else migrated here;
- the scheduler preloads the operators' libraries before it forks its LocalExecutor workers
  (``airflow_mlops.preload`` from ``airflow_local_settings.py``), so a task does not pay
  pandas/MLflow/scikit-learn imports again;
- up to four task processes at once (``[core] parallelism``, which Airflow 3.3's
  LocalExecutor uses; it has no ``[local_executor] parallelism``), DAGs unpaused at
  creation, the DAGs folder listed every few seconds.

Use :meth:`api` for a REST client authenticated as one of the users (JWT from
``POST /auth/token``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import urllib.error
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _servers import BIN, Server
from devkit import AirflowApi, free_port, sqlite_metadata_url

__all__ = ["AirflowStack"]

PRELOAD_SETTINGS = """\
from airflow_mlops.preload import preload_in_scheduler

__all__: list[str] = []
preload_in_scheduler("training,evaluation,registry")
"""


@dataclass
class AirflowStack:
    """The four Airflow processes on ``root``; call :meth:`start`, then :meth:`stop`."""

    root: Path
    users: dict[str, str]
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    servers: list[Server] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def home(self) -> Path:
        return self.root / "airflow"

    @property
    def dags_folder(self) -> Path:
        return self.root / "dags"

    def env(self) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "MLFLOW_TRACKING", "PYTEST_"))
        }
        return {
            **base,
            "PATH": os.pathsep.join([str(BIN), base.get("PATH", "/usr/bin:/bin")]),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlite_metadata_url(self.home / "airflow.db"),
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                f"{name}:{role}" for name, role in self.users.items()
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": "stack-" + uuid.uuid4().hex,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "GX_ANALYTICS_ENABLED": "False",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            **self.extra_env,
        }

    def start(self) -> AirflowStack:
        """Prepare the home, start every process and wait until the api-server reports the
        scheduler, triggerer and dag-processor healthy."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        self.passwords = {name: f"{name}-pw" for name in self.users}
        (self.home / "passwords.json").write_text(json.dumps(self.passwords))
        (self.home / "config").mkdir(exist_ok=True)
        (self.home / "config" / "airflow_local_settings.py").write_text(PRELOAD_SETTINGS)
        env = self.env()
        self._metadata_db(env)
        airflow = str(BIN / "airflow")
        for name, argv in (
            ("api-server", [airflow, "api-server", "--port", str(self.port)]),
            ("scheduler", [airflow, "scheduler"]),
            ("dag-processor", [airflow, "dag-processor"]),
            ("triggerer", [airflow, "triggerer"]),
        ):
            health = "/api/v2/monitor/health" if name == "api-server" else "/"
            server = Server(name, self.root / "logs", argv, env, health, self.port)
            self.servers.append(server.start())
        self.wait_healthy()
        return self

    def _metadata_db(self, env: dict[str, str]) -> None:
        from airflow import __version__ as airflow_version

        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "airflow-mlops"
        template = cache / f"airflow-{airflow_version}.db"
        target = self.home / "airflow.db"
        if template.exists():
            with (
                contextlib.closing(sqlite3.connect(template)) as src,
                contextlib.closing(sqlite3.connect(target)) as dst,
            ):
                src.backup(dst)
            return
        from devkit import run

        run([str(BIN / "airflow"), "db", "migrate"], env=env, cwd=self.root, what="db migrate")

    def wait_healthy(self, timeout_s: float = 240) -> None:
        components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        deadline = time.monotonic() + timeout_s
        body: Any = None
        while time.monotonic() < deadline:
            for server in self.servers:
                if not server.running:
                    raise RuntimeError(f"{server.name} exited; log:\n{server.log_tail()}")
            try:
                body = AirflowApi(self.url, "admin", self.passwords["admin"], 10).call(
                    "GET", "/api/v2/monitor/health", auth=False
                )
                if all((body.get(c) or {}).get("status") == "healthy" for c in components):
                    return
            except (OSError, urllib.error.URLError, KeyError):
                pass
            time.sleep(0.5)
        logs = "\n".join(f"--- {s.name}\n{s.log_tail(15)}" for s in self.servers)
        raise TimeoutError(f"Airflow not healthy after {timeout_s}s ({body}); logs:\n{logs}")

    def wait_for_dags(self, api: AirflowApi, dag_ids: list[str], timeout_s: float = 120) -> None:
        """Wait until the dag-processor has serialized every DAG of ``dag_ids``, polling every
        half second (``AirflowApi.wait_for_dag`` sleeps 3 s between tries)."""
        deadline = time.monotonic() + timeout_s
        missing = list(dag_ids)
        while True:
            missing = [d for d in missing if not self._has_dag(api, d)]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not parsed after {timeout_s}s: {missing}\n{self.log_tails()}")
            time.sleep(0.5)

    @staticmethod
    def _has_dag(api: AirflowApi, dag_id: str) -> bool:
        try:
            api.call("GET", f"/api/v2/dags/{quote(dag_id)}")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return False
            raise
        return True

    def api(self, user: str) -> AirflowApi:
        """A REST client signed in as ``user`` (JWT from ``POST /auth/token``)."""
        return AirflowApi(self.url, user, self.passwords[user], timeout_seconds=30)

    def stop(self) -> None:
        """Kill every process group at once: the stack is thrown away with its home, and a
        graceful stop of four Airflow processes one after another takes ~30 s."""
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.kill()

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {s.name}\n{s.log_tail(lines)}" for s in self.servers)


def quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")
