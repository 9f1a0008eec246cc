"""A task process killed with SIGTERM in the middle of training, as Airflow kills a task.

The DAG runs in a *separate* Python process (``dag.test()``, Airflow's real task runner).
Once MLflow shows the training run RUNNING, the test does what Airflow's supervisor does on
a timeout or a "mark failed" from the UI: SIGTERM (the task runner then calls the
operator's ``on_kill``), and SIGKILL when the process is still alive after a grace period.
Nothing in the task process is patched: the estimator is merely slow on its first fit, so
that the signal lands during training.

The retry is what the scheduler does for a task whose process vanished: ``handle_failure``
puts the task instance up for retry, and the same DAG run (same run id, hence the same
idempotency key) runs it again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import task_states

from reliability._data import clean_frame, runs_of

pytestmark = pytest.mark.timeout(600)

DAG_MODULE = """
import json, os, time
from datetime import timedelta

from sklearn.linear_model import LogisticRegression


class SlowOnceClassifier(LogisticRegression):
    \"\"\"Fits slowly the first time (a marker file says whether it already did).\"\"\"

    def fit(self, X, y, sample_weight=None):
        marker = os.environ["SLOW_ONCE_MARKER"]
        if not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(300)
        return super().fit(X, y, sample_weight)


def build(dag_id, train_uri, experiment, result_path):
    from airflow.sdk import DAG, task

    from airflow_mlops.operators.training import TrainModelOperator

    with DAG(dag_id, schedule=None) as dag:
        train = TrainModelOperator(
            task_id="train",
            train_uri=train_uri,
            target="label",
            experiment_name=experiment,
            model_name="rel-sigterm",
            estimator="sigterm_dag.SlowOnceClassifier",
            task="classification",
            retries=1,
            retry_delay=timedelta(seconds=0),
        )

        @task(trigger_rule="all_done")
        def report(**context):
            with open(result_path, "w") as handle:
                json.dump(context["ti"].xcom_pull(task_ids="train"), handle)

        train >> report()
    return dag


def serialize(dag):
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
        session.commit()
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(),
            session=session,
        )
"""

RUNNER = """
import sys
from datetime import datetime
sys.path.insert(0, {module_dir!r})
import sigterm_dag

dag = sigterm_dag.build({dag_id!r}, {train_uri!r}, {experiment!r}, {result_path!r})
sigterm_dag.serialize(dag)
when = datetime.fromisoformat({when!r})
dag.test(run_after=when, logical_date=when)
print("FIRST PROCESS ENDED", flush=True)
"""


def _wait_for_running_run(tracking_uri: str, experiment: str, proc, timeout_s: float = 180.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the task process ended before training started:\n{_out(proc)}")
        running = [r for r in runs_of(tracking_uri, experiment) if r.info.status == "RUNNING"]
        if running:
            return running[0]
        time.sleep(0.5)
    raise TimeoutError("no RUNNING training run appeared")


def _out(proc) -> str:
    try:
        out, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        return "(still running)"
    return out[-6000:]


def _wait_for_status(tracking_uri: str, run_id: str, statuses: set[str], timeout_s: float):
    from mlflow.tracking import MlflowClient

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = MlflowClient(tracking_uri).get_run(run_id)
        if run.info.status in statuses:
            return run
        time.sleep(0.2)
    return MlflowClient(tracking_uri).get_run(run_id)


def _schedule_retry_of_dead_task(dag_id: str, task_id: str) -> int:
    """What the scheduler does when a task's process vanished and retries remain."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=dag_id, task_id=task_id).one()
        assert ti.state == TaskInstanceState.RUNNING, "the killed process never reported back"
        ti.handle_failure("task process killed (SIGTERM, then SIGKILL)", session=session)
        assert ti.state == TaskInstanceState.UP_FOR_RETRY
        return ti.try_number


@pytest.mark.slow
def test_sigterm_during_training_fails_the_run_and_the_retry_trains_exactly_one_model(
    mlflow_up, tmp_path: Path, monkeypatch
):
    data = tmp_path / "train.csv"
    clean_frame().to_csv(data, index=False)
    (tmp_path / "sigterm_dag.py").write_text(DAG_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "slow-once.marker"
    monkeypatch.setenv("SLOW_ONCE_MARKER", str(marker))
    # Estimators outside sklearn/xgboost need the allow-list setting (issue #14, item 5).
    monkeypatch.setenv("AIRFLOW__MLOPS__ALLOWED_ESTIMATOR_MODULES", "sigterm_dag")
    experiment = f"rel-sigterm-{uuid.uuid4().hex[:8]}"
    dag_id = f"rel_sigterm_{uuid.uuid4().hex[:6]}"
    result_path = tmp_path / "result.json"
    when = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=uuid.uuid4().int % 10**6)
    script = tmp_path / "run_dag.py"
    script.write_text(
        RUNNER.format(
            module_dir=str(tmp_path),
            dag_id=dag_id,
            train_uri=str(data),
            experiment=experiment,
            result_path=str(result_path),
            when=when.isoformat(),
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        killed_run = _wait_for_running_run(mlflow_up, experiment, proc)
        # Airflow's supervisor: SIGTERM (the task runner calls on_kill), and SIGKILL when
        # the process has not exited after a grace period.
        proc.send_signal(signal.SIGTERM)
        # Airflow waits killed_task_cleanup_time (60 s by default) before SIGKILL.
        after_term = _wait_for_status(mlflow_up, killed_run.info.run_id, {"FAILED", "KILLED"}, 60)
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    assert "FIRST PROCESS ENDED" not in out

    # on_kill closed the run before the process was killed: never RUNNING, never FINISHED.
    assert after_term.info.status == "FAILED", out[-4000:]
    assert "on_kill" in after_term.data.tags.get("mlops.error", ""), after_term.data.tags
    assert "mlops.model_uri" not in after_term.data.tags

    # The retry of the same task instance (same run id, so the same idempotency key).
    import sigterm_dag
    from conftest import serialize_dag

    assert _schedule_retry_of_dead_task(dag_id, "train") == 1
    dag = sigterm_dag.build(dag_id, str(data), experiment, str(result_path))
    serialize_dag(dag)
    dag_run = dag.test(run_after=when, logical_date=when)
    states = {t: s for (t, _), s in task_states(dag_run).items()}
    assert states["train"] == "success", states

    runs = {r.info.run_id: r for r in runs_of(mlflow_up, experiment)}
    result = json.loads(result_path.read_text())
    assert sorted(r.info.status for r in runs.values()) == ["FAILED", "FINISHED"]
    assert result["run_id"] != killed_run.info.run_id and result["reused"] is False
    finished = runs[result["run_id"]]
    assert finished.info.status == "FINISHED"
    assert (
        finished.data.tags["mlops.idempotency_key"]
        == (after_term.data.tags["mlops.idempotency_key"])
    )
