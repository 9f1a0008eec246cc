"""The real services tests and benches talk to: MLflow, moto S3 and Airflow's api-server.

:class:`Server` runs one service as a subprocess in its own process group on a loopback port
chosen once, so it can be killed mid-test and restarted at the same URL (the Airflow
connections and MLflow's recorded artifact URIs keep pointing at it). The ``*_server_for``
functions build a server per service (command line, environment, health path, log name);
call :meth:`Server.start` and then :meth:`Server.wait_ready` (or :meth:`Server.ensure_up`).
Used by ``tests/conftest.py`` (session servers), ``tests/reliability/conftest.py``
(servers the fault tests kill) and the benches.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from devkit import free_port, http_ok, start_logged, stop_group

__all__ = ["Server", "api_server_for", "mlflow_server_for", "moto_server_for"]

BIN = Path(sys.executable).parent


@dataclass
class Server:
    """A service run as a subprocess group on a fixed loopback port; killable, restartable.

    Its output goes to ``workdir/<name>.log``, appended across restarts.
    """

    name: str
    workdir: Path
    command: list[str]
    env: dict[str, str]
    health_path: str
    port: int = field(default_factory=free_port)
    ready_timeout_s: float = 120.0
    process: subprocess.Popen | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Server:
        """Start the process unless it runs; returns the server, for chaining."""
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- start #{self.starts + 1} at {time.ctime()} ---\n".encode())
        self.process = start_logged(self.command, self.log_path, self.env, self.workdir)
        self.starts += 1
        return self

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until the health path answers below 500; fail with the log if it exits."""
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"{self.name} exited ({code}); log:\n{self.log_tail()}")
            if self.is_answering():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout_s}s; log:\n{self.log_tail()}")

    def ensure_up(self) -> None:
        self.start()
        self.wait_ready()

    def is_answering(self) -> bool:
        """Whether the health path answers below 500 (a 401 of an auth-protected server
        counts as up)."""
        try:
            return http_ok(self.url + self.health_path)
        except OSError:
            return False

    def kill(self) -> None:
        """Sudden death (SIGKILL to the process group): no graceful shutdown, like a crash.

        Returns once the port is closed, so a request made next fails as against a dead host.
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self._wait_port_closed()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Graceful stop of the whole group (SIGTERM, then SIGKILL after ``timeout_s``)."""
        if self.process is None or self.process.poll() is not None:
            return
        stop_group(self.name, self.process.pid, timeout_seconds=timeout_s)
        self.process.wait(timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _wait_port_closed(self, timeout_s: float = 10.0) -> None:
        # "Nobody listens" (connect refused), not devkit.port_is_free: the TIME_WAIT sockets a
        # killed server leaves block a plain bind for a minute, not the server's own restart.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)


def mlflow_server_for(
    workdir: Path, *, basic_auth_password: str | None = None, workers: int = 1
) -> Server:
    """``mlflow server`` with a SQLite backend and proxied artifacts in ``workdir`` (both
    survive a restart, as a production store does), ``workers`` uvicorn worker processes;
    with ``basic_auth_password``, the basic-auth app with that password for the ``admin``
    user."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # No job runner: it starts seven worker processes the tests never use.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for key in [k for k in env if k.startswith("MLFLOW_TRACKING")]:
        env.pop(key)
    command = [
        str(BIN / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", str(workdir / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    name = "mlflow"
    if basic_auth_password:
        name = "mlflow-auth"
        command += ["--app-name", "basic-auth"]
        auth_ini = workdir / "basic_auth.ini"
        auth_ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{workdir / 'auth.db'}\n"
            f"admin_username = admin\nadmin_password = {basic_auth_password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_ini)
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = "test-secret-key"
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = basic_auth_password
    return Server(name, workdir, command, env, "/health", port)


def moto_server_for(workdir: Path) -> Server:
    """moto's standalone S3 server. It keeps objects in memory: a restart empties it."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    return Server("moto", workdir, command, env, "/moto-api/", port)


def api_server_for(workdir: Path, admin_password: str, env: dict[str, str]) -> Server:
    """``airflow api-server`` (one worker) with the simple auth manager's ``admin`` user and
    the MLOps page loaded; ``env`` adds or overrides settings."""
    workdir.mkdir(parents=True, exist_ok=True)
    passwords = workdir / "passwords.json"
    passwords.write_text(json.dumps({"admin": admin_password}))
    port = free_port()
    full_env = {
        **os.environ,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        # The page is declared in the provider info: loaded only without lazy discovery.
        "AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": "api-server-" + uuid.uuid4().hex,
        "AIRFLOW__API__WORKERS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **env,
    }
    command = [str(BIN / "airflow"), "api-server", "--port", str(port)]
    return Server("api-server", workdir, command, full_env, "/api/v2/monitor/health", port)
