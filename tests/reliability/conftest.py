"""Fixtures of the reliability suite: servers we may kill and bring back mid-task.

The shared fixtures of ``tests/conftest.py`` start one MLflow and one moto server for the
whole session and never stop them. Fault-injection tests need the opposite: a server they
can kill at a chosen instant and restart *at the same address*, so that the Airflow
connections, MLflow's recorded artifact URIs and a task's retry all keep pointing at it. So
this package owns:

* ``rel_mlflow``: a real ``mlflow server`` on a port fixed for the session, with its own
  SQLite backend and artifact folder (both survive a restart, as a production store does);
* ``rel_moto``: a real moto S3 server on a fixed port. moto keeps objects in memory, so a
  restart empties it; :class:`S3Fixture` re-creates the bucket and the objects the test
  declared, which is what a durable object store would still hold after coming back;
* ``outage``: swap one function of *our* code (``airflow_mlops.*``) for a wrapper that kills
  a server just before calling the original. It changes when the outage happens, never
  how MLflow, boto3 or the servers behave;
* connection helpers that keep MLflow/boto retries and timeouts short, so an outage fails a
  task in seconds instead of minutes.

Every fixture brings its servers back up before the next test, whatever the test did.
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
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from devkit import free_port

BIN = Path(sys.executable).parent
# Short enough that an outage fails a task in seconds, long enough for a loaded CI machine.
MLFLOW_TIMEOUT_S = 10
MLFLOW_MAX_RETRIES = 0


@dataclass
class RestartableServer:
    """A service started as a subprocess group on a fixed loopback port; killable, restartable.

    ``command(port)`` builds the command line. The port is chosen once: after a restart the
    service is at the same URL, so everything configured with that URL keeps working.
    """

    name: str
    workdir: Path
    command: Callable[[int], list[str]]
    env: dict[str, str]
    health_path: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    starts: int = 0
    stops: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- start #{self.starts + 1} at {time.ctime()} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(self.port),
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own process group: we kill the whole group
            )
        self.starts += 1

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"{self.name} exited ({code}); log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + self.health_path, timeout=2) as resp:
                    if resp.status < 500:
                        return
            except urllib.error.HTTPError as err:
                if err.code < 500:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout_s}s; log:\n{self.log_tail()}")

    def ensure_up(self) -> None:
        self.start()
        self.wait_ready()

    def kill(self) -> None:
        """Sudden death (SIGKILL to the process group): no graceful shutdown, like a crash."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
            self.stops += 1
        self._wait_port_closed()

    def stop(self) -> None:
        """Graceful stop (SIGTERM, then SIGKILL), for the end of the session."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def _wait_port_closed(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)

    def is_answering(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def mlflow_server_for(workdir: Path) -> RestartableServer:
    """A real tracking server: SQLite backend + proxied artifacts, both on disk."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for key in [k for k in env if k.startswith("MLFLOW_TRACKING")]:
        env.pop(key)

    def command(port: int) -> list[str]:
        return [
            str(BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--artifacts-destination", str(workdir / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ]  # fmt: skip

    return RestartableServer("mlflow", workdir, command, env, "/health")


def moto_server_for(workdir: Path) -> RestartableServer:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

    def command(port: int) -> list[str]:
        return [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]

    return RestartableServer("moto", workdir, command, env, "/moto-api/")


_SERVERS: dict[str, RestartableServer] = {}


def _reliability_server(name: str, root: Path) -> RestartableServer:
    if name not in _SERVERS:
        factory = mlflow_server_for if name == "mlflow" else moto_server_for
        server = factory(root / f"reliability-{name}")
        server.start()
        _SERVERS[name] = server
    return _SERVERS[name]


def _session_root() -> Path:
    # Next to the shared fixtures' temp dir, removed with it at session end.
    return Path(os.environ["AIRFLOW_HOME"]).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start our servers while the other fixtures import, so their start-up overlaps."""
    names = set()
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & {"rel_mlflow", "mlflow_up"}:
            names.add("mlflow")
        if used & {"rel_moto", "s3"}:
            names.add("moto")
    for name in sorted(names):
        _reliability_server(name, _session_root())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for server in _SERVERS.values():
        server.stop()


@pytest.fixture(scope="session")
def rel_mlflow() -> RestartableServer:
    server = _reliability_server("mlflow", _session_root())
    server.wait_ready()
    return server


@pytest.fixture(scope="session")
def rel_moto() -> RestartableServer:
    server = _reliability_server("moto", _session_root())
    server.wait_ready()
    return server


def mlflow_conn_json(url: str, **fields: Any) -> str:
    extra = {
        "timeout": MLFLOW_TIMEOUT_S,
        "max_retries": MLFLOW_MAX_RETRIES,
        **fields.pop("extra", {}),
    }
    return json.dumps({"conn_type": "mlflow", "host": url, "extra": extra, **fields})


def aws_conn_json(endpoint: str, login: str = "testing", password: str = "testing") -> str:
    return json.dumps(
        {
            "conn_type": "aws",
            "login": login,
            "password": password,
            "extra": {
                "endpoint_url": endpoint,
                "region_name": "us-east-1",
                # One attempt and short timeouts: an outage fails the task in seconds.
                "config_kwargs": {
                    "retries": {"max_attempts": 1, "mode": "standard"},
                    "connect_timeout": 3,
                    "read_timeout": 10,
                },
            },
        }
    )


@pytest.fixture
def mlflow_up(rel_mlflow: RestartableServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The restartable MLflow server, up; ``mlflow_default`` and the process point at it."""
    import mlflow

    rel_mlflow.ensure_up()
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", mlflow_conn_json(rel_mlflow.url))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", rel_mlflow.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", str(MLFLOW_TIMEOUT_S))
    mlflow.set_tracking_uri(rel_mlflow.url)
    yield rel_mlflow.url
    rel_mlflow.ensure_up()  # never leave it dead for the next test


@dataclass
class S3Fixture:
    """A bucket on the restartable moto server, re-created (with its objects) after a restart."""

    server: RestartableServer
    bucket: str
    objects: dict[str, bytes] = field(default_factory=dict)

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 2}),
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def put(self, key: str, data: bytes) -> str:
        """Store an object and remember it as durable (it survives :meth:`restore`)."""
        self.objects[key] = data
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)
        return self.uri(key)

    def get(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def object_keys(self) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=self.bucket)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def restore(self) -> None:
        """Bring the server back with the durable objects (moto forgets them on restart)."""
        self.server.ensure_up()
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=self.bucket)
        for key, data in self.objects.items():
            client.put_object(Bucket=self.bucket, Key=key, Body=data)


@pytest.fixture
def s3(rel_moto: RestartableServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Fixture]:
    """A fresh bucket; Airflow's ``aws_default`` points at the restartable moto server."""
    rel_moto.ensure_up()
    fixture = S3Fixture(rel_moto, f"rel-{uuid.uuid4().hex[:12]}")
    fixture.restore()
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_conn_json(rel_moto.url))
    yield fixture
    rel_moto.ensure_up()


@dataclass
class Outage:
    """Record of an injected outage: how often the wrapped function ran, and the kills."""

    target: str
    calls: int = 0
    kills: int = 0


@contextlib.contextmanager
def outage(
    monkeypatch: pytest.MonkeyPatch,
    owner: Any,
    attribute: str,
    server: RestartableServer,
    *,
    when: Callable[..., bool] = lambda *args, **kwargs: True,
    times: int = 1,
) -> Iterator[Outage]:
    """Kill ``server`` right before ``owner.attribute`` (our code) runs, ``times`` times.

    This only chooses *when* the outage happens, at a boundary of airflow_mlops' own code;
    the call then goes ahead against the dead server, so what fails (and how) is the real
    behaviour of MLflow, boto3 and our error handling.
    """
    original = getattr(owner, attribute)
    record = Outage(f"{getattr(owner, '__name__', owner)}.{attribute}")

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        record.calls += 1
        if record.kills < times and when(*args, **kwargs):
            record.kills += 1
            server.kill()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, wrapper)
    try:
        yield record
    finally:
        monkeypatch.setattr(owner, attribute, original)


def restore_on_retry(*restore: Callable[[], None]) -> Callable[[Any], None]:
    """An ``on_retry_callback`` that brings the servers back before the next try.

    It also records the failed try's exception text in ``callback.failures`` so the test can
    check that the failure message was clear.
    """
    failures: list[str] = []

    def callback(context: Any) -> None:
        exc = context.get("exception")
        failures.append(f"{type(exc).__name__}: {exc}")
        for step in restore:
            step()

    callback.failures = failures  # type: ignore[attr-defined]
    return callback
