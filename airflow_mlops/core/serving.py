"""Serving check: load a registered model in a clean process, as a consumer would, and predict.

The check must not load the model from the task's memory or find our code on its path: a
model that pickled a reference to ``airflow_mlops`` or to a DAG file loads fine in the task
and breaks for every consumer. So each check runs in a process that has imported only
third-party libraries, started with ``python -I`` (isolated mode: no user site-packages,
no current directory on ``sys.path``).

Starting that interpreter and importing MLflow, pandas and scikit-learn costs more than
the check itself, once per model. So each Python process keeps one **checker**: a
long-lived ``python -I`` process that imports those libraries once and then ``fork()``s one
child per check. A process that runs many checks (a chunk of segment models) also has it pay
the first model load's lazy imports before forking, and stops it when done
(:func:`warm_serving_checker`). Every child starts from the same clean state (the libraries,
nothing else), loads ``models:/<name>/<version>`` with ``mlflow.pyfunc.load_model`` (the copy the
parent downloaded and checked, see :mod:`airflow_mlops.core.provenance`) and predicts
the sample; a model that breaks its child cannot affect the next check. The checker
exits, removing its temporary folder, when its parent closes the pipe (a stop, the end of
the block, interpreter exit, or the task process ending without any of them).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from airflow_mlops.core.errors import DataError, UntrustedModelError
from airflow_mlops.core.model_uri import parse_model_uri
from airflow_mlops.core.prediction import widen_integer_columns
from airflow_mlops.core.provenance import ModelTrust, verified_local_copy

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "REPLY_GRACE_SECONDS",
    "START_TIMEOUT_SECONDS",
    "CheckerError",
    "checker_starts",
    "launch_serving_checker",
    "serving_check",
    "serving_sample",
    "stop_serving_checker",
    "warm_serving_checker",
]

# Time the checker may take to start (interpreter + imports) on a loaded machine.
START_TIMEOUT_SECONDS = 180.0
# Extra wait for the checker's answer beyond the check's own timeout (it kills the child).
REPLY_GRACE_SECONDS = 30.0

# Runs in the checker process (``python -I -c``). Imports happen once; each request forks.
_CHECKER_CODE = r"""
import json, os, signal, sys, time, traceback
import pandas as pd
import mlflow.pyfunc
channel = sys.stdout
sys.stdout = sys.stderr  # library prints must not corrupt the protocol

# Paid once before the first fork, not by every child's first load: the flavours this
# provider trains and the scikit-learn modules its pipelines use (third-party modules only,
# importable by any consumer anyway), then one tiny model's save and load.
def warm_up():
    for name in ("sklearn", "sklearn.pipeline", "sklearn.compose", "sklearn.impute",
                 "sklearn.preprocessing", "sklearn.linear_model", "sklearn.ensemble",
                 "mlflow.sklearn", "xgboost", "mlflow.xgboost"):
        try:
            __import__(name)
        except ImportError:
            pass
    try:
        import tempfile, numpy, mlflow.sklearn
        from sklearn.linear_model import Ridge
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.sklearn.save_model(Ridge().fit(numpy.ones((2, 1)), [0.0, 1.0]), tmp + "/m",
                                      serialization_format="cloudpickle",
                                      pip_requirements=["scikit-learn"])
            mlflow.pyfunc.load_model(tmp + "/m")
    except Exception:  # a warm-up only: the checks themselves report real failures
        traceback.print_exc()

if os.environ.get("MLOPS_SERVING_CHECKER_WARM_UP") == "1":
    warm_up()

def run_check(req):
    started = time.time()
    try:
        frame = pd.read_parquet(req["sample_path"])
        model = mlflow.pyfunc.load_model(req["uri"])
        predictions = model.predict(frame)
        count = len(predictions)
        if count != len(frame):
            raise ValueError(f"{count} predictions for {len(frame)} input rows")
        result = {"ok": True, "rows": len(frame), "predictions": count,
                  "prediction_type": type(predictions).__name__}
    except BaseException as err:
        result = {"ok": False, "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = round(time.time() - started, 3)
    with open(req["out_path"], "w") as handle:
        json.dump(result, handle)

def wait_child(pid, timeout_seconds):
    deadline = time.monotonic() + timeout_seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.02)

channel.write('{"ready": true}\n')
channel.flush()
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            log = os.open(req["log_path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.environ.clear()
            os.environ.update(req["env"])
            os.chdir(req["cwd"])
            run_check(req)
            code = 0
        finally:
            os._exit(code)
    channel.write(json.dumps({"exit": wait_child(pid, req["timeout_seconds"])}) + "\n")
    channel.flush()
# The parent closed the pipe (its stop, or its process ended without one, e.g. a forked
# task process whose atexit handlers were cleared): leave nothing behind in the temp folder.
import shutil
shutil.rmtree(os.getcwd(), ignore_errors=True)
"""


class CheckerError(RuntimeError):
    """The checker process could not start or died; the message says why."""


class _Checker:
    """One ``python -I`` checker process, started on first use and restarted if it died."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._workdir: Path | None = None
        self._stderr_path: Path | None = None
        self._lock = threading.Lock()
        self._ready = False  # its "ready" line was read
        self.started_count = 0
        self.warm_up = False  # see warm_serving_checker()

    def run(self, request: dict[str, Any], timeout_seconds: float) -> int | str:
        """Send one check; return the child's exit code or ``"timeout"``."""
        with self._lock:
            proc = self._ensure_started()
            try:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(request) + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError) as err:
                raise self._died(f"could not send the check: {err}") from err
            reply = self._read_reply(timeout_seconds + REPLY_GRACE_SECONDS)
            return reply["exit"]

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def launch(self) -> None:
        """Start the checker without waiting for it to be ready (no-op when it runs)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._launch_locked()

    def _ensure_started(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._launch_locked()
        if not self._ready:
            self._read_reply(START_TIMEOUT_SECONDS)
            self._ready = True
        assert self._proc is not None
        return self._proc

    def _launch_locked(self) -> None:
        self._stop_locked()
        workdir = self._workdir = Path(tempfile.mkdtemp(prefix="mlops-serving-checker-"))
        self._stderr_path = workdir / "checker.log"
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
        env["MLOPS_SERVING_CHECKER_WARM_UP"] = "1" if self.warm_up else "0"
        with self._stderr_path.open("w") as stderr:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _CHECKER_CODE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
                cwd=workdir,
                start_new_session=True,  # a Ctrl-C in the parent must not kill it mid-check
            )
        self.started_count += 1

    def _read_reply(self, timeout_seconds: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout_seconds):
                raise self._died(f"no answer within {timeout_seconds:.0f}s")
        line = self._proc.stdout.readline()
        if not line:
            raise self._died("it exited")
        return json.loads(line)

    def _died(self, what: str) -> CheckerError:
        tail = ""
        if self._stderr_path is not None and self._stderr_path.exists():
            tail = self._stderr_path.read_text(errors="replace")[-2000:]
        self._stop_locked()
        return CheckerError(f"the serving checker process failed: {what}. Its log: {tail}")

    def _stop_locked(self) -> None:
        proc, self._proc, self._ready = self._proc, None, False
        workdir, self._workdir = self._workdir, None
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):  # already closed by a dead checker
                    proc.stdin.close()  # the checker's loop ends on EOF
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if workdir is not None:  # a checker that was killed cannot remove its own folder
            shutil.rmtree(workdir, ignore_errors=True)


_CHECKER = _Checker()
atexit.register(_CHECKER.stop)


@contextlib.contextmanager
def warm_serving_checker() -> Iterator[None]:
    """Inside the block, this process's checker pays the model loads' imports once before
    forking (the flavours this provider trains, the scikit-learn modules its pipelines use,
    one tiny model's save and load), instead of every check's child paying them; at its end
    the checker is stopped.

    Worth it in a process that runs many checks (a chunk of segment models); a task that
    checks one model would pay imports its model may not need (XGBoost for a scikit-learn
    model). Stopping at the end matters under an executor that forks task processes and
    clears their ``atexit`` handlers: the checker would otherwise outlive its task's work.
    """
    previous, _CHECKER.warm_up = _CHECKER.warm_up, True
    if _CHECKER._proc is not None and not previous:
        _CHECKER.stop()  # a cold checker started earlier: the next check starts a warm one
    try:
        yield
    finally:
        _CHECKER.warm_up = previous
        _CHECKER.stop()


def launch_serving_checker() -> None:
    """Inside :func:`warm_serving_checker`, start the checker now without waiting: its
    start-up (an interpreter and the libraries' imports, seconds of CPU) overlaps the
    caller's work, e.g. a chunk's first training, instead of delaying the first check.
    Outside that block it does nothing: a lone check starts its checker when it needs it."""
    if _CHECKER.warm_up:
        _CHECKER.launch()


def stop_serving_checker() -> None:
    """Stop this process's checker (it restarts on the next check)."""
    _CHECKER.stop()


def checker_starts() -> int:
    """How many checker processes this process has started (for tests and benchmarks)."""
    return _CHECKER.started_count


def serving_sample(
    frame: pd.DataFrame, model_dir: str, target: str, rows: int = 100
) -> pd.DataFrame:
    """Up to ``rows`` rows of ``frame`` with exactly the columns the signature of the model
    in ``model_dir`` (a downloaded copy) names; without a signature, all but ``target``."""
    from mlflow.models import Model

    signature = Model.load(model_dir).signature
    names = None
    if signature is not None and signature.inputs is not None:
        try:
            names = signature.inputs.input_names()
        except Exception:
            names = None
    if names:
        missing = [c for c in names if c not in frame.columns]
        if missing:
            raise DataError(f"the holdout lacks columns {missing} named by the model's signature")
        sample = frame[list(names)].head(rows).reset_index(drop=True)
        # As the prediction operator does: training declares integer features as doubles
        # (so requests with missing values pass), and MLflow refuses int64 -> float64.
        return widen_integer_columns(sample, signature.inputs)
    return frame.drop(columns=[target], errors="ignore").head(rows).reset_index(drop=True)


def serving_check(
    model_uri: str,
    data: pd.DataFrame,
    *,
    target: str | None = None,
    sample_rows: int | None = None,
    timeout_seconds: float = 600.0,
    trust: ModelTrust | None = None,
    client: MlflowClient | None = None,
) -> dict[str, Any]:
    """Load ``model_uri`` in a clean process, as a consumer would, and predict ``data``.

    With ``sample_rows``, the check predicts :func:`serving_sample` of ``data`` (the first
    rows, with the signature's columns, ``target`` dropped) instead of ``data`` itself.
    The model is downloaded from the registry here and checked under ``trust`` (see
    :mod:`airflow_mlops.core.provenance`) first; the child loads that checked copy, so an
    untrusted model is never unpickled, not even in the child. Returns ``{"ok": bool,
    "model_uri", "rows", "predictions", "seconds", "error"?}``; never raises for a model
    failure or refusal (the caller decides), only for a bad URI or a holdout that lacks the
    signature's columns (:class:`DataError`).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = parse_model_uri(model_uri).uri
    with tempfile.TemporaryDirectory(prefix="mlops-serving-check-") as tmp:
        started = time.monotonic()
        try:
            local = verified_local_copy(client or MlflowClient(), uri, tmp + "/model", trust)
        except (UntrustedModelError, MlflowException) as err:
            return _failed(uri, f"{type(err).__name__}: {err}", started)
        sample = (
            data if sample_rows is None else serving_sample(data, local, target or "", sample_rows)
        )
        request = {
            "uri": local,
            "sample_path": str(Path(tmp) / "sample.parquet"),
            "out_path": str(Path(tmp) / "result.json"),
            "log_path": str(Path(tmp) / "check.log"),
            "cwd": tmp,
            # The child sees the caller's current environment (MlflowHook.session() sets
            # the tracking URI and credentials there), not the one the checker started with.
            "env": dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"),
            "timeout_seconds": timeout_seconds,
        }
        sample.to_parquet(request["sample_path"], index=False)
        try:
            exit_status = _CHECKER.run(request, timeout_seconds)
        except CheckerError as err:
            return _failed(uri, str(err), started)
        if exit_status == "timeout":
            return _failed(
                uri, f"the serving check timed out after {timeout_seconds:.0f}s", started
            )
        out_path = Path(request["out_path"])
        if not out_path.exists():
            log = Path(request["log_path"])
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            return _failed(
                uri,
                f"the serving check process exited with {exit_status} and no result: {tail}",
                started,
            )
        result = json.loads(out_path.read_text())
    result["model_uri"] = uri
    return result


def _failed(uri: str, error: str, started: float) -> dict[str, Any]:
    return {
        "ok": False,
        "model_uri": uri,
        "error": error,
        "seconds": round(time.monotonic() - started, 3),
    }
