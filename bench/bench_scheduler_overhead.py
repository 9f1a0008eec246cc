"""Fixed cost per task under a real scheduler: each operator vs a bare @task, with and without a preload.

Issue 9, item 8. A real Airflow 3.3 deployment is started in a temporary ``AIRFLOW_HOME``
(SQLite, LocalExecutor with 2 workers, ``airflow api-server`` + ``dag-processor`` +
``scheduler``, each in its own process group) with a real ``mlflow server`` on 127.0.0.1.
One DAG runs, on tiny data (``--rows`` rows, 5 features), six operator tasks and, next to
each, a bare ``@task`` that imports the same libraries and calls them once on the same data:

====================== ==========================================================
operator               bare task
====================== ==========================================================
DataValidationOperator GX ephemeral context, the same 3 expectations, result to a file
TrainModelOperator     scikit-learn fit + ``mlflow.sklearn.log_model`` (signature, example)
EvaluateModelOperator  load the model(s) from MLflow, score, log a decision dict
RegisterModelOperator  ``create_model_version``, wait READY, set ``@challenger``
PromoteModelOperator   read ``@champion``, set it, log a record (serving check off in both)
DriftReportOperator    Evidently ``DataDriftPreset`` report, HTML to a file and to MLflow
====================== ==========================================================

Each operator and its bare task run **at the same time** (the two LocalExecutor workers),
stage after stage, so both see the same machine load. Task time = the task instance's
``end_date - start_date`` from the REST API (fork of the task process, DAG-file parse,
imports, work, result). ``--runs`` DAG runs per mode; medians. A one-task warm-up DAG runs
first, so the first measured task does not pay the services' first requests.
``[workers] min_heartbeat_interval`` is set to 1 s (Airflow's default 5 s): the task
supervisor may notice a finished task process only that long after it ended, which keeps the
worker busy (reported as "worker held after task end") but is not part of task times.

Modes (``--modes``, default ``cold,local_settings``), one scheduler (re)start each, the
other services stay up:

- ``cold``: stock Airflow: every task process imports its libraries itself;
- ``local_settings``: ``$AIRFLOW_HOME/config/airflow_local_settings.py`` calls
  :func:`airflow_mlops.preload.preload_in_scheduler`: the scheduler imports the libraries
  once, before it forks its LocalExecutor workers, whose task processes inherit them;
- ``forkserver``: configuration only, ``[scheduler] mp_start_method = forkserver`` and
  ``[scheduler] mp_forkserver_preload`` = :func:`airflow_mlops.preload.forkserver_preload_option`.

Printed: per operator, operator vs bare medians and their ratio (goal <= 1.2) per mode, the
time saved by each preload, its one-off cost and the memory (PSS) of the scheduler's process
group. See docs/performance.md ("Per-task fixed cost").

    .venv/bin/python bench/bench_scheduler_overhead.py [--runs 3] [--modes cold,local_settings,forkserver]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _common import ROOT, report

sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "deploy"))
from _servers import Server, mlflow_server_for
from devkit import free_port, group_alive, start_logged  # one process-group rule (zombies)

BIN = Path(sys.executable).parent
DAG_ID = "bench_scheduler_overhead"
WARMUP_DAG_ID = f"{DAG_ID}_warmup"
GOAL_RATIO = 1.2
MODES = ("cold", "local_settings", "forkserver")
DEFAULT_MODES = ("cold", "local_settings")
WORKLOAD_FINISHED = re.compile(r"Workload finished.*?duration=([0-9.]+).*?workload_id=([0-9a-f-]+)")
# (operator class, operator task id, bare task id), in the order the stages run.
PAIRS = (
    ("DataValidationOperator", "op_validate", "bare_validate"),
    ("TrainModelOperator", "op_train", "bare_train"),
    ("EvaluateModelOperator", "op_evaluate", "bare_evaluate"),
    ("RegisterModelOperator", "op_register", "bare_register"),
    ("PromoteModelOperator", "op_promote", "bare_promote"),
    ("DriftReportOperator", "op_drift", "bare_drift"),
)
FEATURES = [f"x{i}" for i in range(5)]

# The benchmark DAG. Module level imports are only Airflow's authoring API and the
# provider's operators (cheap); every bare task imports its libraries inside the function,
# like the operators do inside execute().
DAG_TEMPLATE = '''
"""Written by bench/bench_scheduler_overhead.py: operators vs bare tasks, pairwise."""
import itertools

from airflow.sdk import DAG, cross_downstream, task

from airflow_mlops.operators.evaluation import EvaluateModelOperator
from airflow_mlops.operators.drift import DriftReportOperator
from airflow_mlops.operators.registry import PromoteModelOperator, RegisterModelOperator
from airflow_mlops.operators.training import TrainModelOperator
from airflow_mlops.operators.validation import DataValidationOperator

TRAIN = {train!r}
CURRENT = {current!r}
OUT = {out!r}
MLFLOW_URI = {mlflow_uri!r}
FEATURES = {features!r}
SUITE = [
    {{"type": "expect_column_values_to_not_be_null", "kwargs": {{"column": "y"}}}},
    {{"type": "expect_column_values_to_be_between",
      "kwargs": {{"column": "x0", "min_value": -10, "max_value": 10}}}},
    {{"type": "expect_column_values_to_be_in_set", "kwargs": {{"column": "y", "value_set": [0, 1]}}}},
]
POLICY = {{"change_thresholds": {{"accuracy": {{"min_delta": -1.0}}}}, "promote_on_tie": True}}
OP_MODEL, BARE_MODEL = "bench_overhead_op", "bench_overhead_bare"
PIP = ["mlflow", "scikit-learn", "cloudpickle", "pandas", "numpy"]


def _client():
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(MLFLOW_URI)
    mlflow.set_registry_uri(MLFLOW_URI)
    return MlflowClient(MLFLOW_URI, MLFLOW_URI)


def _split():
    import pandas as pd
    from sklearn.model_selection import train_test_split

    frame = pd.read_parquet(TRAIN)
    return train_test_split(
        frame[FEATURES], frame["y"], test_size=0.2, random_state=42, stratify=frame["y"]
    )


@task
def bare_validate(run_id=None):
    import json

    import great_expectations as gx
    import pandas as pd

    frame = pd.read_parquet(TRAIN)
    context = gx.get_context(mode="ephemeral")
    batch = (
        context.data_sources.add_pandas("bench")
        .add_dataframe_asset("frame")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name="bench"))
    suite.add_expectation(gx.expectations.ExpectColumnValuesToNotBeNull(column="y"))
    suite.add_expectation(
        gx.expectations.ExpectColumnValuesToBeBetween(column="x0", min_value=-10, max_value=10)
    )
    suite.add_expectation(gx.expectations.ExpectColumnValuesToBeInSet(column="y", value_set=[0, 1]))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="bench", data=batch, suite=suite)
    )
    result = definition.run(batch_parameters={{"dataframe": frame}})
    with open(f"{{OUT}}/bare_validation_{{run_id}}.json", "w") as out:
        json.dump(result.to_json_dict(), out)
    return {{"success": bool(result.success)}}


@task
def bare_train(run_id=None):
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score

    _client()
    x_train, x_test, y_train, y_test = _split()
    model = LogisticRegression().fit(x_train, y_train)
    mlflow.set_experiment("bench_overhead_bare")
    with mlflow.start_run() as run:
        mlflow.log_params(model.get_params())
        mlflow.log_metric("accuracy", accuracy_score(y_test, model.predict(x_test)))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x_train.head(5), model.predict(x_train.head(5))),
            input_example=x_train.head(5),
            pip_requirements=PIP,
            serialization_format="cloudpickle",
        )
    return {{"run_id": run.info.run_id, "model_uri": info.model_uri}}


@task
def bare_evaluate(trained):
    import mlflow
    from mlflow.exceptions import MlflowException
    from sklearn.metrics import accuracy_score

    client = _client()
    _, x_test, _, y_test = _split()
    scores = {{}}
    model = mlflow.sklearn.load_model(trained["model_uri"])
    scores["challenger"] = accuracy_score(y_test, model.predict(x_test))
    try:
        champion = client.get_model_version_by_alias(BARE_MODEL, "champion")
    except MlflowException:
        champion = None
    if champion is not None:
        champion_model = mlflow.sklearn.load_model(f"models:/{{BARE_MODEL}}/{{champion.version}}")
        scores["champion"] = accuracy_score(y_test, champion_model.predict(x_test))
    decision = {{"promote": True, "scores": scores}}
    client.log_dict(trained["run_id"], decision, "decision.json")
    return decision


@task
def bare_register(trained):
    import time

    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.create_registered_model(BARE_MODEL)
    except MlflowException:
        pass  # exists
    version = client.create_model_version(
        BARE_MODEL,
        trained["model_uri"],
        run_id=trained["run_id"],
        model_id=trained["model_uri"].rsplit("/", 1)[-1],
    )
    while client.get_model_version(BARE_MODEL, version.version).status != "READY":
        time.sleep(0.2)
    client.set_registered_model_alias(BARE_MODEL, "challenger", version.version)
    return {{"version": version.version, "run_id": trained["run_id"]}}


@task
def bare_promote(decision, registered):
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        before = client.get_model_version_by_alias(BARE_MODEL, "champion").version
    except MlflowException:
        before = None
    if decision["promote"]:
        client.set_registered_model_alias(BARE_MODEL, "champion", registered["version"])
    record = {{"previous": before, "version": registered["version"]}}
    client.log_dict(registered["run_id"], record, "promotion.json")
    return record


@task
def bare_drift(run_id=None):
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    client = _client()
    champion = client.get_model_version_by_alias(BARE_MODEL, "champion")
    reference = pd.read_parquet(TRAIN)[FEATURES]
    current = pd.read_parquet(CURRENT)[FEATURES]
    snapshot = Report([DataDriftPreset()]).run(reference_data=reference, current_data=current)
    path = f"{{OUT}}/bare_drift_{{run_id}}.html"
    snapshot.save_html(path)
    client.log_artifact(champion.run_id, path, "drift")
    return {{"summary_bytes": len(snapshot.json())}}


DAG_ID = {dag_id!r}

with DAG(DAG_ID, schedule=None, catchup=False, max_active_runs=1):
    op_validate = DataValidationOperator(task_id="op_validate", data_uri=TRAIN, suite=SUITE)
    op_train = TrainModelOperator(
        task_id="op_train",
        train_uri=TRAIN,
        target="y",
        experiment_name="bench_overhead_op",
        model_name=OP_MODEL,
        estimator="sklearn.linear_model.LogisticRegression",
        task="classification",
    )
    op_evaluate = EvaluateModelOperator(
        task_id="op_evaluate", training_result=op_train.output, policy=POLICY, model_name=OP_MODEL
    )
    op_register = RegisterModelOperator(
        task_id="op_register", training_result=op_train.output, model_name=OP_MODEL
    )
    op_promote = PromoteModelOperator(
        task_id="op_promote",
        evaluation=op_evaluate.output,
        registration=op_register.output,
        serving_check=False,
    )
    op_drift = DriftReportOperator(task_id="op_drift", model_name=OP_MODEL, current_uri=CURRENT)

    b_validate = bare_validate(run_id="{{{{ run_id }}}}")
    b_train = bare_train(run_id="{{{{ run_id }}}}")
    b_evaluate = bare_evaluate(b_train)
    b_register = bare_register(b_train)
    b_promote = bare_promote(b_evaluate, b_register)
    b_drift = bare_drift(run_id="{{{{ run_id }}}}")
    stages = [
        [op_validate, b_validate],
        [op_train, b_train],
        [op_evaluate, b_evaluate],
        [op_register, b_register],
        [op_promote, b_promote],
        [op_drift, b_drift],
    ]
    for upstream, downstream in itertools.pairwise(stages):
        cross_downstream(upstream, downstream)
'''

WARMUP_DAG = f'''
"""Written by bench/bench_scheduler_overhead.py: one tiny task run before the measurements,
so the first measured task does not pay the services' first requests."""
from airflow.sdk import DAG, task

with DAG({WARMUP_DAG_ID!r}, schedule=None, catchup=False):

    @task
    def warm_up():
        return None

    warm_up()
'''

LOCAL_SETTINGS = '''
"""Written by bench/bench_scheduler_overhead.py: preload the operators' libraries in the
scheduler only (its forked LocalExecutor workers run the tasks). See docs/deployment.md."""
import json as _json

from airflow_mlops.preload import preload_in_scheduler as _preload_in_scheduler

__all__: list[str] = []  # export nothing into airflow.settings

_report = _preload_in_scheduler()
if _report is not None:
    with open({report_path!r}, "w") as _out:
        _json.dump(_report.to_dict(), _out)
'''


def make_data(rows: int, folder: Path) -> tuple[Path, Path]:
    """Train and "current" tables: 5 normal features, a binary target, same distribution."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(11)
    weights = rng.normal(size=len(FEATURES))
    paths = []
    for name in ("train", "current"):
        x = rng.normal(size=(rows, len(FEATURES)))
        frame = pd.DataFrame(x, columns=FEATURES)
        frame["y"] = (x @ weights + rng.normal(scale=0.5, size=rows) > 0).astype("int64")
        path = folder / f"{name}.parquet"
        frame.to_parquet(path)
        paths.append(path)
    return paths[0], paths[1]


def _migrated_db_template() -> Path | None:
    """The test suite's cached, freshly migrated metadata DB for this Airflow version."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "airflow-mlops"
    path = cache / f"airflow-{version('apache-airflow')}.db"
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return path if {"dag", "task_instance", "dag_run"} <= tables else None


def pss_mb(pgid: int) -> float:
    """Proportional set size (shared pages split between sharers) of a process group, MB."""
    total_kb = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) != pgid:
                continue
            for line in (proc / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total_kb / 1024


@dataclass
class Stack:
    """The temporary Airflow deployment and the processes it started (all killed on close)."""

    root: Path
    min_heartbeat_interval: int = 1
    api_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    mlflow: Server | None = None
    scheduler_log: str = "scheduler"

    @property
    def home(self) -> Path:
        return self.root / "airflow"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self, mode: str = "cold") -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "MLFLOW_", "PYTEST_", "_AIRFLOW"))
        }
        env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "/usr/bin:/bin")])
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.root / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.root / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "2",
                "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__FERNET_KEY": self.fernet_key,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.api,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret,
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_ports[0]),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.log_ports[1]),
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
                # The supervisor notices a finished task process after up to this many seconds
                # (default 5): the worker stays busy that long after the task's end_date. Task
                # times are not affected; a lower value shortens the benchmark.
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": str(self.min_heartbeat_interval),
                "GX_ANALYTICS_ENABLED": "False",
            }
        )
        if self.mlflow is not None:
            env["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps(
                {"conn_type": "mlflow", "host": self.mlflow.url, "extra": {"timeout": 30}}
            )
        if mode == "forkserver":
            from airflow_mlops.preload import forkserver_preload_option

            env["AIRFLOW__SCHEDULER__MP_START_METHOD"] = "forkserver"
            env["AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"] = forkserver_preload_option()
        return env

    def __post_init__(self) -> None:
        self.fernet_key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        self.jwt_secret = secrets.token_urlsafe(32)
        self.log_ports = (free_port(), free_port())

    # -- processes ---------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Start a service in its own session (process group); output to logs/<name>.log."""
        process = start_logged(argv, self.root / "logs" / f"{name}.log", env, self.root)
        self.processes[name] = process
        return process

    def stop(self, name: str, timeout_s: float = 60.0) -> None:
        """SIGTERM the service's process group, then SIGKILL what is left after the timeout."""
        process = self.processes.pop(name, None)
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and group_alive(process.pid):
            process.poll()
            time.sleep(0.3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)

    def close(self) -> None:
        for name in ("scheduler", "dag-processor", "api-server"):
            self.stop(name, timeout_s=30.0)
        for name in list(self.processes):
            self.stop(name, timeout_s=30.0)
        if self.mlflow is not None:
            self.mlflow.stop()

    def log_tail(self, name: str, lines: int = 40) -> str:
        if name == "scheduler":
            name = self.scheduler_log
        try:
            text = (self.root / "logs" / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait(self, what: str, check: Any, timeout_s: float, log_name: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if check():
                    return
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited ({process.returncode}) while waiting for {what}:\n"
                        f"{self.log_tail(name)}"
                    )
            time.sleep(1.0)
        raise TimeoutError(
            f"{what}: not reached after {timeout_s:.0f}s:\n{self.log_tail(log_name)}"
        )

    # -- REST API ----------------------------------------------------------------------
    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        request = urllib.request.Request(
            self.api + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def scheduler_heartbeat(self) -> str | None:
        health = self.call("GET", "/api/v2/monitor/health")
        return (health.get("scheduler") or {}).get("latest_scheduler_heartbeat")

    # -- steps -------------------------------------------------------------------------
    def start_services(self, rows: int) -> None:
        """MLflow server, metadata DB, DAG file and data, api-server and dag-processor."""
        for folder in ("dags", "plugins", "data", "out", "airflow/config"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.mlflow = mlflow_server_for(self.root / "mlflow").start()
        template = _migrated_db_template()
        if template is not None:
            shutil.copyfile(template, self.home / "airflow.db")
        else:
            subprocess.run(
                [str(BIN / "airflow"), "db", "migrate"],
                env=self.env(),
                cwd=self.root,
                check=True,
                capture_output=True,
                timeout=600,
            )
        train, current = make_data(rows, self.root / "data")
        self.mlflow.wait_ready(timeout_s=240)
        (self.root / "dags" / f"{DAG_ID}.py").write_text(
            DAG_TEMPLATE.format(
                train=str(train),
                current=str(current),
                out=str(self.root / "out"),
                mlflow_uri=self.mlflow.url,
                features=FEATURES,
                dag_id=DAG_ID,
            )
        )
        env = self.env()
        self.spawn("api-server", [str(BIN / "airflow"), "api-server"], env)
        (self.root / "dags" / f"{WARMUP_DAG_ID}.py").write_text(WARMUP_DAG)
        self.spawn("dag-processor", [str(BIN / "airflow"), "dag-processor"], env)
        for dag_id in (DAG_ID, WARMUP_DAG_ID):
            self.wait(
                f"DAG {dag_id} parsed and served by the API",
                lambda d=dag_id: self.call("GET", f"/api/v2/dags/{d}")["dag_id"] == d,
                300,
                "dag-processor",
            )

    def start_scheduler(self, mode: str) -> float:
        """(Re)start the scheduler in ``mode``; seconds until its first heartbeat."""
        settings = self.home / "config" / "airflow_local_settings.py"
        report_path = self.root / "out" / f"preload_{mode}.json"
        settings.unlink(missing_ok=True)
        if mode == "local_settings":
            settings.write_text(LOCAL_SETTINGS.format(report_path=str(report_path)))
        before = self.scheduler_heartbeat() if "scheduler" in self.processes else None
        self.stop("scheduler")
        started_at = time.time()
        started = time.monotonic()
        self.scheduler_log = f"scheduler-{mode}"
        self.spawn(self.scheduler_log, [str(BIN / "airflow"), "scheduler"], self.env(mode))
        self.processes["scheduler"] = self.processes.pop(f"scheduler-{mode}")

        def fresh_heartbeat() -> bool:
            beat = self.scheduler_heartbeat()
            if not beat or beat == before:
                return False
            from datetime import datetime

            return datetime.fromisoformat(beat.replace("Z", "+00:00")).timestamp() >= started_at

        self.wait(f"scheduler ({mode}) heartbeat", fresh_heartbeat, 300, "scheduler-" + mode)
        return time.monotonic() - started

    def run_dag(self, mode: str, runs: int, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        """Trigger ``runs`` DAG runs (they run one after another) and wait for them all."""
        run_ids = []
        for i in range(runs):
            run_id = f"{mode}_{i + 1}"
            self.call(
                "POST",
                f"/api/v2/dags/{dag_id}/dagRuns",
                {"dag_run_id": run_id, "logical_date": None, "conf": {}},
            )
            run_ids.append(run_id)
        results = []
        for run_id in run_ids:
            state: dict[str, Any] = {}

            def finished(rid: str = run_id, out: dict[str, Any] = state) -> bool:
                out.update(self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{rid}"))
                return out.get("state") in {"success", "failed"}

            self.wait(f"DAG run {run_id}", finished, 900, "scheduler")
            tis = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
            results.append(
                {
                    "run_id": run_id,
                    "state": state["state"],
                    "tasks": {
                        ti["task_id"]: {
                            "id": ti["id"],
                            "state": ti["state"],
                            "duration": ti.get("duration"),
                            "queued_s": _seconds_between(ti.get("queued_when"), ti["start_date"]),
                        }
                        for ti in tis["task_instances"]
                    },
                }
            )
        self.add_worker_times(results)
        return results

    def add_worker_times(self, results: list[dict[str, Any]]) -> None:
        """How long each task held its worker (the supervisor's "Workload finished" duration,
        from the scheduler's log): the task time plus what the supervisor does after it."""
        try:
            text = (self.root / "logs" / f"{self.scheduler_log}.log").read_text(errors="replace")
        except OSError:
            return
        held = {m.group(2): float(m.group(1)) for m in WORKLOAD_FINISHED.finditer(text)}
        for run in results:
            for ti in run["tasks"].values():
                ti["worker_s"] = held.get(ti["id"])


def _seconds_between(start: str | None, end: str | None) -> float | None:
    from datetime import datetime

    if not start or not end:
        return None
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def medians(runs: list[dict[str, Any]], key: str = "duration") -> dict[str, float]:
    """task_id -> median of ``key`` over the successful runs of that task."""
    values: dict[str, list[float]] = {}
    for run in runs:
        for task_id, ti in run["tasks"].items():
            if ti["state"] == "success" and ti.get(key) is not None:
                values.setdefault(task_id, []).append(float(ti[key]))
    return {task_id: statistics.median(v) for task_id, v in values.items()}


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(f"terminated by signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="DAG runs per mode (medians)")
    parser.add_argument("--rows", type=int, default=300, help="rows of the tiny tables")
    parser.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help=f"comma-separated, from {','.join(MODES)} (default: {','.join(DEFAULT_MODES)})",
    )
    parser.add_argument(
        "--min-heartbeat-interval",
        type=int,
        default=1,
        help="[workers] min_heartbeat_interval (Airflow's default is 5): how long a worker may "
        "stay busy after its task ended; task times are not affected",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="bench-scheduler-overhead-"))
    stack = Stack(root, min_heartbeat_interval=args.min_heartbeat_interval)
    results: dict[str, Any] = {}
    try:
        stack.start_services(args.rows)
        setup_s = time.monotonic() - started
        print(f"services up after {setup_s:.0f}s (state in {root})", flush=True)
        for index, mode in enumerate(modes):
            load_before = os.getloadavg()
            start_s = stack.start_scheduler(mode)
            if index == 0:
                warm = stack.run_dag("warmup", 1, WARMUP_DAG_ID)
                print(f"warm-up run: {warm[0]['state']}", flush=True)
            phase = time.monotonic()
            runs = stack.run_dag(mode, args.runs)
            preload_file = root / "out" / f"preload_{mode}.json"
            results[mode] = {
                "scheduler_start_s": start_s,
                "runs_wall_s": time.monotonic() - phase,
                "load_before": [round(v, 2) for v in load_before],
                "load_after": [round(v, 2) for v in os.getloadavg()],
                "scheduler_group_pss_mb": pss_mb(stack.processes["scheduler"].pid),
                "run_states": [r["state"] for r in runs],
                "medians": medians(runs),
                "worker_medians": medians(runs, "worker_s"),
                "runs": runs,
                "preload": json.loads(preload_file.read_text()) if preload_file.exists() else None,
            }
            print(
                f"mode {mode}: scheduler up in {start_s:.0f}s, {args.runs} runs in "
                f"{results[mode]['runs_wall_s']:.0f}s, states {results[mode]['run_states']}",
                flush=True,
            )
    except BaseException:
        for name in ("scheduler", "dag-processor", "api-server"):
            print(f"--- {name} log tail ---\n{stack.log_tail(name)}", file=sys.stderr)
        raise
    finally:
        stack.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    total_s = time.monotonic() - started
    print_report(results, args.runs, args.rows)
    print(
        json.dumps(
            {
                "bench": "scheduler_overhead",
                "runs": args.runs,
                "rows": args.rows,
                "min_heartbeat_interval": args.min_heartbeat_interval,
                "total_s": total_s,
                "goal_ratio": GOAL_RATIO,
                "pairs": summary(results),
                "modes": {
                    m: {k: v for k, v in r.items() if k != "runs"} for m, r in results.items()
                },
                "raw_runs": {m: r["runs"] for m, r in results.items()},
            }
        )
    )
    failed = [m for m, r in results.items() if any(s != "success" for s in r["run_states"])]
    return 1 if failed else 0


def summary(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per operator and mode: operator and bare medians, their ratio, and savings vs cold."""
    out: dict[str, dict[str, Any]] = {}
    cold = results.get("cold", {}).get("medians", {})
    for operator, op_task, bare_task in PAIRS:
        row: dict[str, Any] = {}
        for mode, result in results.items():
            med = result["medians"]
            op, bare = med.get(op_task), med.get(bare_task)
            row[mode] = {
                "operator_s": op,
                "bare_s": bare,
                "ratio": op / bare if op and bare else None,
                "extra_s": op - bare if op is not None and bare is not None else None,
                "operator_saved_vs_cold_s": (
                    cold[op_task] - op if mode != "cold" and op and op_task in cold else None
                ),
                "operator_vs_cold_bare": (
                    op / cold[bare_task] if mode != "cold" and op and cold.get(bare_task) else None
                ),
            }
        out[operator] = row
    return out


def _fmt(value: float | None, unit: str = " s") -> str:
    return "n/a" if value is None else f"{value:.2f}{unit}"


def print_report(results: dict[str, Any], runs: int, rows: int) -> None:
    pairs = summary(results)
    for mode, result in results.items():
        title = {
            "cold": "no preload (stock Airflow)",
            "local_settings": "preload from airflow_local_settings.py (scheduler only)",
            "forkserver": "preload via [scheduler] mp_start_method=forkserver + mp_forkserver_preload",
        }[mode]
        lines = []
        for operator, by_mode in pairs.items():
            r = by_mode[mode]
            verdict = ""
            if r["ratio"] is not None:
                verdict = "met" if r["ratio"] <= GOAL_RATIO else "MISSED"
            text = (
                f"operator {_fmt(r['operator_s'])}, bare {_fmt(r['bare_s'])}, "
                f"ratio {_fmt(r['ratio'], '')} (goal <= {GOAL_RATIO}: {verdict})"
            )
            if r["extra_s"] is not None:
                text += f", difference {r['extra_s']:+.2f} s"
            if mode != "cold" and r["operator_saved_vs_cold_s"] is not None:
                text += (
                    f"; saved vs cold {_fmt(r['operator_saved_vs_cold_s'])}, "
                    f"vs cold bare {_fmt(r['operator_vs_cold_bare'], '')}"
                )
            lines.append((operator, text))
        total_op = sum(by_mode[mode]["operator_s"] or 0 for by_mode in pairs.values())
        total_bare = sum(by_mode[mode]["bare_s"] or 0 for by_mode in pairs.values())
        lines.append(("sum of medians", f"operators {_fmt(total_op)}, bare {_fmt(total_bare)}"))
        held = result["worker_medians"]
        if held:
            extra = [
                held[t] - result["medians"][t]
                for t in held
                if t in result["medians"] and held[t] is not None
            ]
            lines.append(
                (
                    "worker held after task end",
                    f"median {_fmt(statistics.median(extra))}, max {_fmt(max(extra))} "
                    "(supervisor 'Workload finished' minus task time)",
                )
            )
        lines.append(
            (
                "machine",
                f"load average {result['load_before'][0]:.2f} before, "
                f"{result['load_after'][0]:.2f} after; run states {result['run_states']}",
            )
        )
        report(
            f"Per-task time under a real scheduler, {title}: median of {runs} runs, {rows} rows",
            lines,
        )
    cost_rows = []
    for mode, result in results.items():
        preload = result.get("preload")
        text = (
            f"{len(result['runs'])} runs in {result['runs_wall_s']:.0f} s; "
            f"scheduler start to first heartbeat {result['scheduler_start_s']:.1f} s; "
            f"PSS of scheduler + workers {result['scheduler_group_pss_mb']:.0f} MB"
        )
        if preload:
            text += f"; preload {preload['seconds']:.1f} s ({len(preload['modules'])} modules)"
        first_queue = [
            r["tasks"].get("op_validate", {}).get("queued_s") for r in result["runs"][:1]
        ]
        if first_queue and first_queue[0] is not None:
            text += f"; first task queued {first_queue[0]:.1f} s"
        cost_rows.append((mode, text))
    report("One-off cost of each mode (per scheduler start)", cost_rows)


if __name__ == "__main__":
    sys.exit(main())
