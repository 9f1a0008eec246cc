"""Start and stop the real services the tests talk to (MLflow server, moto S3 server)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devkit import free_port  # re-exported: tests and benches import it from here

BIN = Path(sys.executable).parent


@dataclass
class ServerProcess:
    """A service started as a subprocess in its own process group, with its log file."""

    name: str
    url: str
    process: subprocess.Popen
    log_path: Path
    health_path: str = "/"

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; log:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + self.health_path, timeout=2) as resp:
                    if resp.status < 500:
                        return
            except urllib.error.HTTPError as err:
                if err.code < 500:  # 401 from an auth-protected server still means "up"
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready after {timeout_s}s; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def _spawn(
    name: str, cmd: list[str], workdir: Path, env: dict[str, str], url: str, health: str
) -> ServerProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
    process = subprocess.Popen(
        cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    return ServerProcess(name, url, process, log_path, health)


def start_mlflow_server(workdir: Path, *, basic_auth_password: str | None = None) -> ServerProcess:
    """``mlflow server`` on SQLite with a local artifact root, on a free loopback port."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for key in list(env):
        if key.startswith("MLFLOW_TRACKING_") or key == "MLFLOW_TRACKING_URI":
            env.pop(key)
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    name = "mlflow"
    if basic_auth_password:
        name = "mlflow-auth"
        cmd += ["--app-name", "basic-auth"]
        auth_ini = workdir / "basic_auth.ini"
        workdir.mkdir(parents=True, exist_ok=True)
        auth_ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{workdir / 'auth.db'}\n"
            f"admin_username = admin\nadmin_password = {basic_auth_password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_ini)
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = "test-secret-key"
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = basic_auth_password
    return _spawn(name, cmd, workdir, env, f"http://127.0.0.1:{port}", "/health")


def start_moto_server(workdir: Path) -> ServerProcess:
    port = free_port()
    moto = shutil.which("moto_server", path=str(BIN)) or str(BIN / "moto_server")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    cmd = [moto, "-H", "127.0.0.1", "-p", str(port)]
    return _spawn("moto", cmd, workdir, env, f"http://127.0.0.1:{port}", "/moto-api/")


def start_api_server(workdir: Path, admin_password: str, env: dict[str, str]) -> ServerProcess:
    """``airflow api-server`` (one worker) with the simple auth manager's ``admin`` user and
    the MLOps page loaded; ``env`` adds or overrides settings. Call ``wait_ready()`` next."""
    import json
    import uuid

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
    cmd = [str(BIN / "airflow"), "api-server", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    return _spawn("api-server", cmd, workdir, full_env, url, "/api/v2/monitor/health")
