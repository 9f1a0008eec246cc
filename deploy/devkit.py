"""Dev helpers shared by the local stack, the tests, the benches and the soak script.

Processes started in their own session and stopped by process group, free-port checks, a
command runner that fails with the command's output, Debian package installs, and a client for
Airflow's REST API v2. :mod:`local_stack` builds the stack on them; tests import them by name
(``deploy/`` is on pytest's ``pythonpath``), benches and scripts after putting ``deploy/`` on
``sys.path``. Standard library only, so importing it costs nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

__all__ = [
    "AirflowApi",
    "StackError",
    "apt_install",
    "ensure_binary",
    "free_port",
    "group_alive",
    "group_is_ours",
    "http_ok",
    "port_is_free",
    "run",
    "sqlite_metadata_url",
    "start_logged",
    "start_ticks",
    "stop_group",
]


class StackError(RuntimeError):
    """A stack step failed; the message says which and where its log is."""


# -- Airflow's metadata database ----------------------------------------------------------

#: Seconds a SQLite connection waits for the write lock. SQLite has one writer at a time and
#: sqlite3 waits 5 s by default: on a loaded machine a writer can hold the lock longer, and
#: the waiting API request then fails with a 500 (an approval answered through the REST API).
SQLITE_LOCK_WAIT_SECONDS = 60


def sqlite_metadata_url(path: Path) -> str:
    """``[database] sql_alchemy_conn`` for a SQLite file; SQLAlchemy hands ``timeout`` to
    ``sqlite3.connect`` (sync and aiosqlite)."""
    return f"sqlite:///{path}?timeout={SQLITE_LOCK_WAIT_SECONDS}"


# -- ports ---------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1 now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- processes ------------------------------------------------------------------------------


def start_logged(argv: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> Any:
    """Start ``argv`` in a new session (its own process group, so it can be stopped as a
    whole), stdin closed, stdout and stderr appended to ``log_path``; returns the Popen."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(cwd),
            start_new_session=True,
        )


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[19])


def group_is_ours(pgid: int, started: int | None) -> bool:
    """True unless the number now belongs to another process than the one we started.

    While any member of a process group lives, Linux does not reuse its id for a new
    process, so a group without a live leader is still ours.
    """
    ticks = start_ticks(pgid)
    return ticks is None or not started or ticks == started


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is running (a zombie leader does not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still "exists"; look for a live member of the group.
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(
    name: str, pgid: int, started: int | None = None, timeout_seconds: float = 30.0
) -> None:
    """SIGTERM the service's process group (SIGINT for PostgreSQL: fast shutdown), then SIGKILL."""
    if not group_is_ours(pgid, started):
        print(f"[local-stack] {name}: process {pgid} is not the one this stack started; leaving it")
        return
    sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.3)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def http_ok(url: str) -> bool:
    """Whether ``url`` answers below 500 (a 401 of an auth-protected server counts as up)."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status < 500
    except urllib.error.HTTPError as err:
        return err.code < 500


def run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    what: str,
    timeout_seconds: float = 600,
    cwd: Path | None = None,
    input_text: str | None = None,
) -> str:
    """Run ``argv`` to the end and return its stdout; :class:`StackError` with the tail of
    its output, naming ``what``, when it fails."""
    result = subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
        check=False,
        input=input_text,
    )
    if result.returncode != 0:
        raise StackError(
            f"{what} failed ({' '.join(argv[:3])} … exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-3000:]}"
        )
    return result.stdout


def apt_install(packages: list[str]) -> None:
    """Install Debian packages (needs root; skipped when the binaries are already there)."""
    if os.geteuid() != 0:
        raise StackError(
            f"{packages} missing: install them (sudo apt-get install {' '.join(packages)})"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"[local-stack] apt-get install {' '.join(packages)}", flush=True)
    result = subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:  # the package lists may be missing or stale
        run(["apt-get", "update", "-q"], env=env, what="apt-get update")
        run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            env=env,
            what=f"apt-get install {' '.join(packages)}",
        )


def ensure_binary(binary: str, package: str) -> str:
    """Path of ``binary``, installing the Debian ``package`` first when it is missing."""
    found = shutil.which(binary)
    if found is None:
        apt_install([package])
        found = shutil.which(binary)
    if found is None:
        raise StackError(f"{binary} not found after installing the Debian package {package}")
    return found


# -- REST client ---------------------------------------------------------------------------


class AirflowApi:
    """Airflow's REST API v2 with a JWT from ``/auth/token`` (simple auth manager's users)."""

    def __init__(
        self, base_url: str, username: str, password: str, timeout_seconds: float = 60
    ) -> None:
        self.base_url = base_url
        self.timeout_seconds = timeout_seconds
        body = {"username": username, "password": password}
        self.token = self.call("POST", "/auth/token", body, auth=False)["access_token"]

    def call(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        request.add_header("Accept", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
            return json.loads(response.read() or b"null")

    def wait_for_dag(self, dag_id: str, timeout_seconds: float = 300) -> dict[str, Any]:
        """The DAG's details once the dag-processor has parsed it (404 until then)."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                return self.call("GET", f"/api/v2/dags/{urllib.parse.quote(dag_id)}")
            except urllib.error.HTTPError as err:
                if err.code != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(3)
