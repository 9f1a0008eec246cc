"""Fixtures of the reliability suite: servers we may kill and bring back mid-task.

The shared fixtures of ``tests/conftest.py`` start one MLflow and one moto server for the
whole session and never stop them. Fault-injection tests need the opposite: a server they
can kill at a chosen instant and restart *at the same address*, so that the Airflow
connections, MLflow's recorded artifact URIs and a task's retry all keep pointing at it. So
this package owns:

* ``rel_mlflow``: a real ``mlflow server`` on a port fixed for the session, with its own
  SQLite backend and artifact folder (both survive a restart, as a production store does);
  restarts come from a warm standby of its worker process (:class:`WarmMlflow`);
* ``rel_moto``: a real moto S3 server on a fixed port. moto keeps objects in memory, so a
  restart empties it; :class:`S3Fixture` re-creates the bucket and the objects the test
  declared, which is what a durable object store would still hold after coming back;
* ``outage``: swap one function of *our* code (``airflow_mlops.*``) for a wrapper that kills
  a server just before calling the original. It changes when the outage happens, never
  how MLflow, boto3 or the servers behave;
* connection helpers that keep MLflow/boto retries and timeouts short, so an outage fails a
  task in seconds instead of minutes.

Both servers are :class:`_servers.Server` objects, like the shared ones. Every fixture
brings its servers back up before the next test, whatever the test did.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest
from _servers import Server, mlflow_server_for, moto_server_for

# Short enough that an outage fails a task in seconds, long enough for a loaded CI machine.
MLFLOW_TIMEOUT_S = 10
MLFLOW_MAX_RETRIES = 0
# A restart under fault-test load may be slower than the session servers' first start.
READY_TIMEOUT_S = 180.0


_SERVERS: dict[str, Server] = {}


def _reliability_server(name: str, root: Path) -> Server:
    if name not in _SERVERS:
        factory = mlflow_server_for if name == "mlflow" else moto_server_for
        server = factory(root / f"reliability-{name}")
        server.ready_timeout_s = READY_TIMEOUT_S
        _SERVERS[name] = server.start()
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


# Runs ``python -m uvicorn ARGS`` as the CLI's worker does, but imports the app (MLflow's
# ~5 s import) first and binds the port only when told "go": a warm standby for a restart.
_STANDBY = """
import sys
import uvicorn.main  # before the app, as `python -m uvicorn` has it
import mlflow.server.fastapi_app  # noqa: F401  (the import a cold restart waits for)
if sys.stdin.readline().strip() != "go":
    sys.exit(0)  # not needed: the session ended
sys.argv = ["uvicorn", *sys.argv[1:]]
uvicorn.main.main()
"""


@dataclass
class WarmMlflow(Server):
    """The restartable MLflow server, restarted from a warm standby.

    ``mlflow server`` (the CLI) only computes the worker's environment (stores, artifact root,
    security settings) and starts ``python -m uvicorn ... mlflow.server.fastapi_app:app``; the
    first start goes through it. Restarts then run that worker's exact command line and
    environment (read from ``/proc``), with a fresh boot id as the CLI gives, from a process
    that has already imported MLflow and waits to bind the port: a restart takes about a
    second instead of two cold imports of MLflow (10-20 s on a loaded machine). Same app,
    same SQLite and artifact stores, same port; the stores are opened at the first request
    after the restart, as on a cold start. The next standby starts right after each restart.
    """

    standby: subprocess.Popen | None = None

    @classmethod
    def adopt(cls, server: Server) -> Server:
        """``server`` restarted warm, or ``server`` itself if its worker cannot be read."""
        worker = _cli_worker(server)
        if worker is None:
            return server
        command, env = worker
        state = {f.name: getattr(server, f.name) for f in fields(Server)}
        return cls(**{**state, "command": command, "env": env})

    def start(self) -> Server:
        if self.running:
            return self
        standby = self.standby
        if standby is None or standby.poll() is not None:
            standby = self._spawn_standby()
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- start #{self.starts + 1} (standby) at {time.ctime()} ---\n".encode())
        assert standby.stdin is not None
        standby.stdin.write(b"go\n")
        standby.stdin.close()
        self.process, self.standby = standby, self._spawn_standby()
        self.starts += 1
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.standby is not None and self.standby.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.standby.pid, signal.SIGKILL)
            self.standby.wait(timeout=30)
        super().stop(timeout_s)

    def _spawn_standby(self) -> subprocess.Popen:
        env = {**self.env, "_MLFLOW_SERVER_BOOT_ID": uuid.uuid4().hex}
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [self.command[0], "-c", _STANDBY, *self.command[3:]],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=str(self.workdir), start_new_session=True,
            )  # fmt: skip


def _cli_worker(server: Server) -> tuple[list[str], dict[str, str]] | None:
    """(command line, environment) of the ``python -m uvicorn`` worker the CLI started."""
    if server.process is None:
        return None
    pid = server.process.pid
    try:
        (child, *_) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        argv = Path(f"/proc/{child}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        environ = Path(f"/proc/{child}/environ").read_bytes().rstrip(b"\0").split(b"\0")
    except (OSError, ValueError):
        return None
    command = [arg.decode() for arg in argv]
    if command[1:3] != ["-m", "uvicorn"] or "mlflow.server.fastapi_app:app" not in command:
        return None
    return command, dict(item.decode().split("=", 1) for item in environ if b"=" in item)


@pytest.fixture(scope="session")
def rel_mlflow() -> Server:
    server = _reliability_server("mlflow", _session_root())
    server.wait_ready()
    if not isinstance(server, WarmMlflow):
        server = _SERVERS["mlflow"] = WarmMlflow.adopt(server)
    return server


@pytest.fixture(scope="session")
def rel_moto() -> Server:
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
def mlflow_up(rel_mlflow: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
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

    server: Server
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
def s3(rel_moto: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Fixture]:
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
    server: Server,
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
