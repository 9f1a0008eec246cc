"""Issue 7 acceptance: the factory-built CT and monitoring DAGs, run through Airflow.

Every DAG here comes from ``continuous_training_dag`` / ``monitoring_dag`` on a small
YAML-like config (``parse_config(raw, base_dir=include/pipelines)``, so relative paths point at
``include/data`` and ``include/suites`` exactly as in the shipped YAML files). They run with
Airflow's real task runner (``dag.test()``), against the real MLflow server fixture; results
are read back from Airflow's metadata DB (task states, the ``summary`` XCom, asset events,
DagRuns) and from the registry with MLflow's own client.

Runs that are not manual are real DagRuns of their type:

* asset-triggered: the monitoring DAG emits the retrain Asset, Airflow queues the CT DAG
  (``AssetDagRunQueue``), and the scheduler's own run-creation code
  (``SchedulerJobRunner._create_dagruns_for_dags`` + ``_start_queued_dagruns``, the first
  half of a scheduling loop, no executor) creates and starts the ``asset_triggered`` DagRun (:func:`scheduler_loops`);
* scheduled: a ``scheduled`` DagRun created with the serialized DAG's ``create_dagrun`` (the
  call the scheduler makes for a timetable run).

Such a run is then executed by ``dag.test()``'s in-process task loop: ``dag.test()`` always
creates a new *manual* run, so :func:`execute_run` hands it the existing run instead (it
patches ``get_or_create_dagrun``, the one helper ``dag.test()`` uses to make its run).

Training data that the CT DAG trains on is copied to a temporary landing folder first: the
training step writes its holdout and drift reference next to the data, which must not land
in the repository's ``include/data``. Configs set ``retries: 0``: the failures tested here are
final, and a retry would make ``dag.test()`` wait out the 30 s retry delay.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import mlflow_connection_env, serialize_dag, stored_xcom, task_states

from airflow_mlops.factories import continuous_training_dag, monitoring_dag, parse_config

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "include" / "pipelines"
DATA = ROOT / "include" / "data"

# Small, fast models: the point is the pipeline, not the model.
SMALL_FOREST = {"n_estimators": 10, "max_depth": 4, "random_state": 0}
# A deliberately weak first champion: two uninformative features.
WEAK_FEATURES = ["mean_fractal_dimension", "smoothness_error"]


# -- helpers ---------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def breast_cancer_config(name: str, train_uri: Path | str, **sections: Any) -> Any:
    """A breast_cancer.yaml-like pipeline; ``sections`` replace whole top-level keys."""
    raw: dict[str, Any] = {
        "name": name,
        "retries": 0,
        "data": {"train_uri": str(train_uri), "target": "benign"},
        "validation": {"suite": "../suites/breast_cancer.json", "on_failure": "fail"},
        "training": {
            "estimator": "sklearn.ensemble.RandomForestClassifier",
            "params": SMALL_FOREST,
            "holdout_fraction": 0.3,
        },
        "promotion": {"approval": "auto", "serving_check": False},
        "monitoring": {
            "current_uri": "../data/breast_cancer/drifted.parquet",
            "drift_share": 0.3,
            "debounce_hours": 0,
        },
    }
    raw.update(sections)
    return parse_config(raw, source=f"<test {name}>", base_dir=PIPELINES)


def land(folder: Path, *batches: str, path: Path | None = None) -> Path:
    """New data landing: the training file is the union of bundled breast_cancer batches."""
    frame = pd.concat(
        [pd.read_parquet(DATA / "breast_cancer" / f"{b}.parquet") for b in batches],
        ignore_index=True,
    )
    path = path or folder / f"breast_cancer_{'+'.join(batches)}.parquet"
    frame.to_parquet(path, index=False)
    return path


def states_of(dag_run: Any) -> dict[str, str]:
    """{task_id: state} of an unmapped run."""
    return {task_id: state for (task_id, _), state in task_states(dag_run).items()}


def xcom(dag_run: Any, task_id: str, map_index: int = -1, key: str = "return_value") -> Any:
    return stored_xcom(dag_run, task_id, key, map_index)


def summary_of(dag_run: Any, map_index: int = -1, task_id: str = "summary") -> dict[str, Any]:
    value = xcom(dag_run, task_id, map_index)
    assert isinstance(value, dict), f"no summary XCom for {task_id}[{map_index}]: {value!r}"
    return value


def step(summary: dict[str, Any], name: str) -> dict[str, str]:
    return next(s for s in summary["steps"] if s["step"] == name)


def champion_of(client: Any, model: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model, "champion").version)
    except MlflowException:
        return None


def set_paused(dag_id: str, paused: bool) -> None:
    """What a user does with the toggle in the UI: paused DAGs are not queued on Assets."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(DagModel).filter_by(dag_id=dag_id).update({"is_paused": paused})


def run_manual(dag: Any, **conf: Any) -> Any:
    """What the ``run_dag`` fixture does, for the module-scoped fixture: serialize, dag.test()."""
    serialize_dag(dag)
    return dag.test(run_conf=conf or None)


def execute_run(dag: Any, run_id: str) -> Any:
    """Execute an existing RUNNING DagRun with ``dag.test()``'s in-process task loop.

    ``dag.test()`` makes a new manual run through ``airflow.models.dagrun.get_or_create_dagrun``
    (imported when it is called); returning the existing run from there lets the real task
    runner execute a scheduled or asset-triggered run as it is, run type and all.
    """
    from unittest import mock

    import airflow.models.dagrun as dagrun_module
    from airflow.models.dagrun import DagRun

    def existing_run(*, dag: Any, session: Any, **_: Any) -> Any:
        dag_run = session.query(DagRun).filter_by(dag_id=dag.dag_id, run_id=run_id).one()
        assert dag_run.state == "running", f"{run_id} is {dag_run.state}, not running"
        dag_run.dag = dag  # as create_dagrun does for the run it makes
        return dag_run

    with mock.patch.object(dagrun_module, "get_or_create_dagrun", existing_run):
        return dag.test()


def scheduler_loops(dag_id: str, max_loops: int = 5) -> int:
    """The run-creation half of the scheduler loop, Airflow's own code, no executor.

    ``SchedulerJobRunner._do_scheduling`` starts with exactly these two calls, inside the same
    commit guard; the rest of the loop (queueing task instances to an executor) is left out
    because :func:`execute_run` runs the tasks in process. Loops (1 s apart, like an idle
    scheduler) until ``dag_id`` has no queued run: on SQLite the start query compares
    ``run_after`` with ``now()`` at one-second resolution, so a run created in this second
    starts in the next loop. Returns the number of loops.
    """
    import time

    from airflow.executors.local_executor import LocalExecutor
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.utils.session import create_session
    from airflow.utils.sqlalchemy import prohibit_commit

    runner = SchedulerJobRunner(job=Job(), num_runs=1, executors=[LocalExecutor()])
    for loop in range(1, max_loops + 1):
        with create_session() as session, prohibit_commit(session) as guard:
            runner._create_dagruns_for_dags(guard, session)
            runner._start_queued_dagruns(session)
            guard.commit()
        if not [r for r in runs_of(dag_id) if r["state"] == "queued"]:
            return loop
        time.sleep(1)
    return max_loops


def create_scheduled_run(dag: Any, logical_date: dt.datetime) -> str:
    """A ``scheduled`` DagRun, made with the call the scheduler makes for a timetable run."""
    from airflow.models.dagrun import DagRun
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    serialize_dag(dag)
    with create_session() as session:
        serdag = SerializedDagModel.get_dag(dag.dag_id, session=session)
        run_id = DagRun.generate_run_id(
            run_type=DagRunType.SCHEDULED, logical_date=logical_date, run_after=logical_date
        )
        serdag.create_dagrun(
            run_id=run_id,
            logical_date=logical_date,
            data_interval=(logical_date, logical_date),
            run_after=logical_date,
            run_type=DagRunType.SCHEDULED,
            triggered_by=DagRunTriggeredByType.TIMETABLE,
            state=DagRunState.RUNNING,
            start_date=dt.datetime.now(dt.timezone.utc),
            session=session,
        )
    return run_id


def retrain_queue(dag_id: str, model: str) -> tuple[list[dict[str, Any]], int]:
    """(events of the model's retrain Asset, AssetDagRunQueue rows for ``dag_id``)."""
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from airflow_mlops.assets import retrain_asset

    with create_session() as session:
        asset = session.query(AssetModel).filter_by(uri=retrain_asset(model).uri).one_or_none()
        if asset is None:
            return [], 0
        events = [
            {"id": e.id, "extra": dict(e.extra or {}), "source_dag_id": e.source_dag_id}
            for e in session.query(AssetEvent).filter_by(asset_id=asset.id)
        ]
        queued = (
            session.query(AssetDagRunQueue)
            .filter_by(asset_id=asset.id, target_dag_id=dag_id)
            .count()
        )
        return events, queued


def runs_of(dag_id: str) -> list[dict[str, Any]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return [
            {
                "run_id": r.run_id,
                "run_type": str(getattr(r.run_type, "value", r.run_type)),
                "state": str(r.state),
                "consumed_event_ids": [e.id for e in r.consumed_asset_events],
            }
            for r in session.query(DagRun).filter_by(dag_id=dag_id).order_by(DagRun.id)
        ]


@contextlib.contextmanager
def mlflow_connection(uri: str) -> Iterator[None]:
    """Like the ``mlflow_conn`` fixture, for module-scoped fixtures."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", mlflow_connection_env(uri))
        yield


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("landing")


@pytest.fixture(scope="module")
def client(mlflow_server: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow_server)


@pytest.fixture(scope="module")
def breast_cancer(mlflow_server: str, landing: Path) -> dict[str, Any]:
    """One breast-cancer pipeline shared by the tests below: its first run made a champion.

    The first model is a weak baseline (two uninformative features) with the serving check
    on, so a better challenger later is promoted by a clear margin.
    """
    name = unique("bc")
    reference = land(landing, "reference")
    config = breast_cancer_config(
        name,
        reference,
        data={"train_uri": str(reference), "target": "benign", "features": WEAK_FEATURES},
        promotion={"approval": "auto", "serving_check": True},
    )
    with mlflow_connection(mlflow_server):
        dag_run = run_manual(continuous_training_dag(config))
    return {"name": name, "model": config.registered_model_name, "first_run": dag_run}


# -- first model, promotion, non-promotion, validation block ---------------------------------


def test_first_model_becomes_champion(breast_cancer, client):
    dag_run, model = breast_cancer["first_run"], breast_cancer["model"]
    states = states_of(dag_run)
    assert dag_run.state == "success", states
    assert set(states) == {
        "detect_changes",
        "validate",
        "train",
        "evaluate",
        "register",
        "promote",
        "summary",
    }
    assert set(states.values()) == {"success"}, states
    summary = summary_of(dag_run)
    assert summary["outcome"] == "promoted", summary
    assert "first model" in summary["reason"], summary
    assert step(summary, "detect_changes")["detail"] == "first model: no champion yet"
    promote = xcom(dag_run, "promote")
    assert promote["serving_check"]["ok"] is True, promote["serving_check"]
    assert champion_of(client, model) == "1" == summary["champion_version"]
    tags = client.get_run(xcom(dag_run, "train")["run_id"]).data.tags
    assert tags["mlops.pipeline"] == breast_cancer["name"], tags


def test_better_challenger_is_promoted(breast_cancer, client, landing, mlflow_conn, run_dag):
    """A clean batch lands; the full-feature model beats the baseline on the same holdout."""
    model = breast_cancer["model"]
    before = champion_of(client, model)
    config = breast_cancer_config(breast_cancer["name"], land(landing, "reference"))
    dag_run = run_dag(
        continuous_training_dag(config), train_uri=str(land(landing, "reference", "clean"))
    )
    assert dag_run.state == "success", states_of(dag_run)
    summary = summary_of(dag_run)
    assert summary["outcome"] == "promoted", summary
    assert step(summary, "detect_changes")["detail"] == "manual run"
    promote = xcom(dag_run, "promote")
    assert promote["previous_champion_version"] == before
    assert f"@champion moved from version {before}" in summary["reason"], summary
    after = champion_of(client, model)
    assert after == summary["champion_version"] == xcom(dag_run, "register")["version"] != before
    evaluate = xcom(dag_run, "evaluate")
    assert evaluate["challenger_metrics"]["f1"] > evaluate["champion_metrics"]["f1"], evaluate


def test_worse_challenger_is_not_promoted(breast_cancer, client, landing, mlflow_conn, run_dag):
    """A challenger that loses on the same holdout is registered but @champion stays."""
    model = breast_cancer["model"]
    before = champion_of(client, model)
    assert before is not None
    config = breast_cancer_config(
        breast_cancer["name"],
        land(landing, "reference"),
        training={"estimator": "sklearn.dummy.DummyClassifier", "params": {"strategy": "prior"}},
    )
    dag_run = run_dag(
        continuous_training_dag(config), train_uri=str(land(landing, "reference", "clean"))
    )
    states = states_of(dag_run)
    assert dag_run.state == "success", states
    assert set(states.values()) == {"success"}, states
    summary = summary_of(dag_run)
    assert summary["outcome"] == "not promoted", summary
    assert f"@champion unchanged (version {before})" in summary["reason"], summary
    register = xcom(dag_run, "register")
    assert summary["challenger_version"] == register["version"] != before
    assert champion_of(client, model) == before
    assert client.get_model_version_by_alias(model, "challenger").version == register["version"]
    evaluate = xcom(dag_run, "evaluate")
    assert evaluate["promote"] is False
    assert evaluate["challenger_metrics"]["f1"] < evaluate["champion_metrics"]["f1"], evaluate


def test_corrupted_batch_is_blocked_by_validation(breast_cancer, client, mlflow_conn, run_dag):
    """Validation fails the run before training; nothing is trained or registered."""
    model = breast_cancer["model"]
    before = champion_of(client, model)
    versions_before = len(client.search_model_versions(f"name='{model}'"))
    config = breast_cancer_config(
        breast_cancer["name"], DATA / "breast_cancer" / "reference.parquet"
    )
    # The corrupted batch is only read (validation stops the run before training writes).
    dag_run = run_dag(
        continuous_training_dag(config), train_uri=str(DATA / "breast_cancer" / "corrupted.csv")
    )
    states = states_of(dag_run)
    assert dag_run.state == "failed", states
    assert states["detect_changes"] == "success"
    assert states["validate"] == "failed"
    assert {states[t] for t in ("train", "evaluate", "register", "promote")} == {
        "upstream_failed"
    }, states
    assert states["summary"] == "failed", "the summary fails the run, never hides a failure"
    summary = summary_of(dag_run)
    assert summary["outcome"] == "blocked", summary
    assert summary["reason"].startswith("validation failed: "), summary
    validation = xcom(dag_run, "validate")
    assert validation["success"] is False and validation["failures"], validation
    assert champion_of(client, model) == before
    assert len(client.search_model_versions(f"name='{model}'")) == versions_before


# -- drift -> retrain Asset -> asset-triggered CT run ----------------------------------------


def test_drift_triggers_retrain_through_the_asset(
    breast_cancer, client, landing, mlflow_conn, run_dag
):
    """Monitoring finds drift and emits the retrain Asset; the scheduler creates the CT run."""
    model = breast_cancer["model"]
    champion_before = champion_of(client, model)
    versions_before = len(client.search_model_versions(f"name='{model}'"))
    # The CT DAG's default training data (what an asset-triggered run trains on) is the
    # landed union with the drifted batch.
    train_uri = land(landing, "reference", "clean", "drifted")
    config = breast_cancer_config(breast_cancer["name"], train_uri)
    ct, monitor = continuous_training_dag(config), monitoring_dag(config)
    serialize_dag(ct)
    set_paused(ct.dag_id, False)  # a paused DAG is not queued on its Assets
    try:
        assert retrain_queue(ct.dag_id, model) == ([], 0)
        monitor_run = run_dag(monitor, current_uri=str(DATA / "breast_cancer" / "drifted.parquet"))
        assert monitor_run.state == "success", states_of(monitor_run)
        drift = xcom(monitor_run, "drift")
        assert drift["dataset"]["drifted"] is True, drift["dataset"]
        assert drift["retrain_signal"]["emit"] is True, drift["retrain_signal"]

        events, queued = retrain_queue(ct.dag_id, model)
        assert len(events) == 1 and events[0]["source_dag_id"] == monitor.dag_id, events
        assert queued == 1, "the unpaused CT DAG is queued on the retrain Asset"
        assert not [r for r in runs_of(ct.dag_id) if r["run_type"] == "asset_triggered"]

        scheduler_loops(ct.dag_id)

        triggered = [r for r in runs_of(ct.dag_id) if r["run_type"] == "asset_triggered"]
        assert len(triggered) == 1, runs_of(ct.dag_id)
        assert triggered[0]["state"] == "running"
        assert triggered[0]["consumed_event_ids"] == [events[0]["id"]]
        assert retrain_queue(ct.dag_id, model)[1] == 0, "the scheduler consumed the queue entry"
    finally:
        set_paused(ct.dag_id, True)

    dag_run = execute_run(ct, triggered[0]["run_id"])
    assert (dag_run.run_id, str(dag_run.run_type)) == (triggered[0]["run_id"], "asset_triggered")
    states = states_of(dag_run)
    assert dag_run.state == "success", states
    summary = summary_of(dag_run)
    assert step(summary, "detect_changes")["detail"] == "asset-triggered run"
    assert summary["outcome"] in {"promoted", "not promoted"}, summary
    train = xcom(dag_run, "train")
    assert client.get_run(train["run_id"]).data.tags["mlops.data.uri"] == str(train_uri)
    assert len(client.search_model_versions(f"name='{model}'")) == versions_before + 1
    expected = (
        summary["challenger_version"] if summary["outcome"] == "promoted" else champion_before
    )
    assert champion_of(client, model) == expected


# -- scheduled runs: no change is skipped, a config change retrains ---------------------------


def test_scheduled_run_skips_no_change_and_retrains_on_config_change(
    landing, client, mlflow_conn, run_dag
):
    name = unique("sched")
    train_uri = land(landing, "reference", path=landing / f"{name}.parquet")
    sections = {"schedule": "@daily", "validation": {"enabled": False}}
    config = breast_cancer_config(name, train_uri, **sections)
    model = config.registered_model_name

    first = run_dag(continuous_training_dag(config))
    assert summary_of(first)["outcome"] == "promoted", summary_of(first)
    assert champion_of(client, model) == "1"

    # Same data, same config: a scheduled run has nothing new to learn from.
    dag = continuous_training_dag(config)
    run_id = create_scheduled_run(dag, dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc))
    unchanged = execute_run(dag, run_id)
    assert str(unchanged.run_type) == "scheduled"
    states = states_of(unchanged)
    assert unchanged.state == "success", states
    assert states["detect_changes"] == "skipped"
    assert {states[t] for t in ("train", "evaluate", "register", "promote")} == {"skipped"}
    summary = summary_of(unchanged)
    assert summary["outcome"] == "skipped", summary
    assert summary["reason"] == "no change: same data and config as the champion", summary
    assert len(client.search_model_versions(f"name='{model}'")) == 1

    # A config change (same data): the next scheduled run retrains and says why.
    changed_config = breast_cancer_config(
        name,
        train_uri,
        training={
            "estimator": "sklearn.ensemble.RandomForestClassifier",
            "params": {**SMALL_FOREST, "n_estimators": 12},
            "holdout_fraction": 0.3,
        },
        **sections,
    )
    assert changed_config.fingerprint() != config.fingerprint()
    dag = continuous_training_dag(changed_config)
    run_id = create_scheduled_run(dag, dt.datetime(2025, 1, 2, tzinfo=dt.timezone.utc))
    retrained = execute_run(dag, run_id)
    assert str(retrained.run_type) == "scheduled"
    states = states_of(retrained)
    assert retrained.state == "success", states
    assert states["detect_changes"] == states["train"] == "success", states
    summary = summary_of(retrained)
    why = step(summary, "detect_changes")["detail"]
    assert why == "pipeline config changed since the champion was trained", summary
    assert summary["outcome"] in {"promoted", "not promoted"}, summary
    train_tags = client.get_run(xcom(retrained, "train")["run_id"]).data.tags
    assert train_tags["mlops.pipeline.config_hash"] == changed_config.fingerprint()
    versions = client.search_model_versions(f"name='{model}'")
    assert len(versions) == 2 and summary["challenger_version"] == "2", summary

    # New data lands at the same URI (same config): the next scheduled run retrains.
    land(landing, "reference", "clean", path=train_uri)
    run_id = create_scheduled_run(dag, dt.datetime(2025, 1, 3, tzinfo=dt.timezone.utc))
    new_data = execute_run(dag, run_id)
    assert new_data.state == "success", states_of(new_data)
    summary = summary_of(new_data)
    # (The config also differs from the champion's unless the config-change run promoted.)
    why = step(summary, "detect_changes")["detail"]
    assert "training data changed since the champion was trained" in why, summary


def test_scheduled_run_retrains_after_a_code_change(
    landing, client, mlflow_conn, run_dag, monkeypatch
):
    name = unique("code")
    train_uri = land(landing, "reference", path=landing / f"{name}.parquet")
    config = breast_cancer_config(name, train_uri, schedule="@daily", validation={"enabled": False})
    monkeypatch.setenv("MLOPS_GIT_COMMIT", "a" * 40)  # how CI tells the task its commit
    first = run_dag(continuous_training_dag(config))
    assert summary_of(first)["outcome"] == "promoted", summary_of(first)
    tags = client.get_run(xcom(first, "train")["run_id"]).data.tags
    assert tags["mlops.git_commit"] == "a" * 40

    monkeypatch.setenv("MLOPS_GIT_COMMIT", "b" * 40)  # new training code, same data and config
    dag = continuous_training_dag(config)
    run_id = create_scheduled_run(dag, dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc))
    after_code_change = execute_run(dag, run_id)
    assert after_code_change.state == "success", states_of(after_code_change)
    summary = summary_of(after_code_change)
    assert summary["outcome"] != "skipped", summary  # observed: skipped, "no change: ..."
    assert "code changed" in step(summary, "detect_changes")["detail"], summary


# -- segments: one model per value, one failing segment ----------------------------------------


def test_segments_promote_their_own_champions_and_one_failing_segment_fails_the_run(
    client, mlflow_conn, run_dag
):
    name = unique("seg")
    config = parse_config(
        {
            "name": name,
            "retries": 0,
            "data": {
                "train_uri": "../data/diabetes/reference.parquet",
                "target": "progression",
                "exclude": ["sex"],
            },
            "validation": {"suite": "../suites/diabetes.json"},
            "training": {
                "estimator": "sklearn.linear_model.Ridge",
                "params": {"alpha": 1.0},
                "task": "regression",
            },
            "promotion": {"serving_check": False},
            "segments": {"column": "sex", "values": ["F", "M", "X"]},  # no row has sex X
            "monitoring": {"enabled": False},
        },
        source=f"<test {name}>",
        base_dir=PIPELINES,
    )
    dag_run = run_dag(continuous_training_dag(config))
    states = task_states(dag_run)
    assert dag_run.state == "failed", states
    assert states[("split_segments", -1)] == "success"
    for index in (0, 1):  # F, M
        for task_id in ("detect_changes", "validate", "train", "evaluate", "register"):
            assert states[(f"segment.{task_id}", index)] == "success", (task_id, index, states)
        assert states[("segment.promote", index)] == "success"
        assert states[("segment.summary", index)] == "success"
    assert states[("segment.validate", 2)] == "failed", states  # X: no rows
    assert states[("segment.train", 2)] == "upstream_failed"
    assert states[("segment.summary", 2)] == "failed"

    segments = {
        segment: summary_of(dag_run, index, "segment.summary")
        for index, segment in enumerate(["F", "M", "X"])
    }
    for segment in ("F", "M"):
        summary = segments[segment]
        assert summary["model_name"] == f"{name}__{segment}"
        assert summary["outcome"] == "promoted", summary
        assert champion_of(client, f"{name}__{segment}") == "1"
    assert segments["X"]["model_name"] == f"{name}__X"
    assert segments["X"]["outcome"] == "blocked", segments["X"]
    assert "expect_table_row_count_to_be_between" in segments["X"]["reason"], segments["X"]
    assert champion_of(client, f"{name}__X") is None


# -- manual approval ---------------------------------------------------------------------------


@pytest.mark.slow
def test_manual_approval_promotes_after_a_human_approves(landing, client, mlflow_conn, monkeypatch):
    """The approval parks in awaiting_input; a human answers through the Core API."""
    from test_promotion_dag import HumanResponder

    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    name = unique("appr")
    config = breast_cancer_config(
        name,
        land(landing, "reference"),
        validation={"enabled": False},
        promotion={"approval": "manual", "serving_check": False},
    )
    dag = continuous_training_dag(config)
    serialize_dag(dag)
    responder = HumanResponder(dag.dag_id, "approve_promotion", "Approve")
    responder.thread.start()
    dag_run = dag.test()
    responder.thread.join(timeout=60)
    assert not responder.errors, responder.errors
    asked = responder.found
    assert asked["status_code"] == 200, asked
    assert asked["subject"] == f"Promote {name} version 1 to @champion?"
    assert "**Policy verdict:** promoted: first model" in asked["body"], asked["body"]

    states = states_of(dag_run)
    assert dag_run.state == "success", states
    assert states["approve_promotion"] == states["approval_gate"] == "success", states
    summary = summary_of(dag_run)
    assert summary["outcome"] == "promoted", summary
    promote = xcom(dag_run, "promote")
    assert promote["approval"]["approved"] is True and promote["approval"]["by"], promote
    assert champion_of(client, name) == "1"


def test_a_provider_upgrade_counts_as_a_change(monkeypatch):
    """The config fingerprint that detect_changes compares includes the provider's version."""
    import airflow_mlops
    from airflow_mlops.core.changes import decide_retrain
    from airflow_mlops.core.lineage import TAG_PIPELINE_CONFIG_HASH

    config = breast_cancer_config("upgrade", DATA / "breast_cancer" / "reference.parquet")
    champion_tags = {TAG_PIPELINE_CONFIG_HASH: config.fingerprint()}
    same = decide_retrain(
        run_type="scheduled",
        data_changed=False,
        config_hash=config.fingerprint(),
        champion_tags=champion_tags,
    )
    assert same.train is False
    monkeypatch.setattr(airflow_mlops, "__version__", f"{airflow_mlops.__version__}.post1")
    upgraded = decide_retrain(
        run_type="scheduled",
        data_changed=False,
        config_hash=config.fingerprint(),
        champion_tags=champion_tags,
    )
    assert upgraded.train is True
    assert upgraded.reason == "pipeline config changed since the champion was trained"
