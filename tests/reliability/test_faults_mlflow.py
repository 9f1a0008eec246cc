"""The MLflow server dies in the middle of training, of registration and of promotion.

Real ``mlflow server`` (SQLite backend, restarted at the same address), real operators,
real Airflow task runner (``dag.test()``), Airflow's own retry. The only patch is
:func:`reliability.conftest.outage`, which kills the server right before one function of
*our* code runs, so that call and everything after it meet a dead server. The task's
``on_retry_callback`` restarts the server before the retry.

After every outage we check the promises of the issue: the failed try says clearly
what was unreachable; the retry succeeds; no MLflow run is left RUNNING; no model version
is duplicated; and ``@champion`` points at a READY version that passed its gate and whose
move is in the alias history.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from conftest import task_states

from reliability._data import (
    BEST,
    POLICY,
    STUMP,
    clean_frame,
    crown,
    runs_of,
    train_candidate,
    versions_of,
)
from reliability.conftest import outage, restore_on_retry

pytestmark = pytest.mark.timeout(420)

COLLECTED: dict[str, Any] = {}
# The production default TTL, and a wait far shorter: a retry that waited for its dead try's
# lock to expire (instead of taking it over at once) would give up and fail the test.
LOCK_TTL_SECONDS = 900
LOCK_WAIT_SECONDS = 60


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _collector(*task_ids: str):
    from airflow.sdk import task

    @task(trigger_rule="all_done")
    def collect(**context) -> None:
        for task_id in task_ids:
            COLLECTED[task_id] = context["ti"].xcom_pull(task_ids=task_id)

    return collect()


def _assert_succeeded(dag_run, *task_ids: str) -> None:
    """The named tasks succeeded (the collector is a leaf with all_done: the run's own state
    would be success even if they failed)."""
    states = {task_id: state for (task_id, _), state in task_states(dag_run).items()}
    assert all(states.get(t) == "success" for t in task_ids), states


def _assert_clear_mlflow_failure(failure: str, url: str) -> None:
    assert "MlflowConnectionError" in failure, failure
    assert url in failure and "unreachable" in failure, failure


def _assert_nothing_left_running(tracking_uri: str, experiment: str) -> None:
    statuses = [r.info.status for r in runs_of(tracking_uri, experiment)]
    assert "RUNNING" not in statuses, statuses


def _assert_champion_sound(client, model_name: str, expected_version: str) -> dict:
    """@champion is READY, passed its gate, and its move is recorded in the alias history."""
    from airflow_mlops.core.alias_history import alias_history
    from airflow_mlops.core.registry import current_alias_version

    assert current_alias_version(client, model_name, "champion") == expected_version
    mv = client.get_model_version(model_name, expected_version)
    assert str(mv.status) == "READY"
    run = client.get_run(mv.run_id)
    assert run.data.tags.get("mlops.decision.promote") == "true", "it passed its gate"
    moves = [
        e
        for e in alias_history(client, model_name)
        if e["alias"] == "champion" and e["version"] == expected_version
    ]
    assert len(moves) == 1, f"exactly one recorded move to v{expected_version}: {moves}"
    lock = f"{model_name}.mlops-lock"
    assert not client.search_registered_models(f"name = '{lock}'"), "the lock was released"
    return moves[0]


# -- training -------------------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_down_mid_training_then_the_retry_trains_once_and_nothing_stays_running(
    mlflow_up, rel_mlflow, run_dag, tmp_path, monkeypatch
):
    from airflow.sdk import DAG

    import airflow_mlops.core.training as training
    from airflow_mlops.operators.training import TrainModelOperator

    data = tmp_path / "train.csv"
    clean_frame().to_csv(data, index=False)
    experiment, model_name = _unique("rel-train"), _unique("rel-train-model")
    on_retry = restore_on_retry(rel_mlflow.ensure_up)
    COLLECTED.clear()
    with DAG(_unique("rel_mlflow_train").replace("-", "_"), schedule=None) as dag:
        train = TrainModelOperator(
            task_id="train",
            train_uri=str(data),
            target="label",
            experiment_name=experiment,
            model_name=model_name,
            estimator=BEST[0],
            estimator_params=BEST[1],
            task="classification",
            retries=1,
            retry_delay=timedelta(seconds=0),
            on_retry_callback=on_retry,
        )
        train >> _collector("train")
    # Killed after the run started and the model was fitted, before the model is logged.
    with outage(monkeypatch, training, "log_fitted_model", rel_mlflow) as injected:
        dag_run = run_dag(dag)

    assert injected.kills == 1
    (failure,) = on_retry.failures
    _assert_clear_mlflow_failure(failure, rel_mlflow.url)
    _assert_succeeded(dag_run, "train")
    result = COLLECTED["train"]
    assert result["reused"] is False

    runs = runs_of(mlflow_up, experiment)
    by_status: dict[str, list] = {}
    for run in runs:
        by_status.setdefault(run.info.status, []).append(run)
    _assert_nothing_left_running(mlflow_up, experiment)
    # The killed try's run could not be closed while the server was down; the retry found
    # it by its idempotency key, marked it FAILED, and trained exactly one FINISHED run.
    assert len(by_status.get("FINISHED", [])) == 1
    assert by_status["FINISHED"][0].info.run_id == result["run_id"]
    assert len(by_status.get("FAILED", [])) == 1
    leftover = by_status["FAILED"][0]
    assert leftover.data.tags["mlops.idempotency_key"] == result["idempotency_key"]
    assert "earlier try" in leftover.data.tags["mlops.error"]


# -- registration ---------------------------------------------------------------------------


def test_mlflow_down_right_after_the_version_is_created_then_the_retry_reuses_it(
    mlflow_up, rel_mlflow, run_dag, tmp_path, monkeypatch
):
    """The worst instant: the version exists, the task does not know it yet."""
    from airflow.sdk import DAG
    from mlflow.tracking import MlflowClient

    import airflow_mlops.core.registry as registry
    from airflow_mlops.operators.registry import RegisterModelOperator

    data = tmp_path / "train.csv"
    clean_frame().to_csv(data, index=False)
    experiment, model_name = _unique("rel-reg"), _unique("rel-reg-model")
    trained = train_candidate(
        mlflow_up, str(data), BEST, model_name=model_name, experiment=experiment
    )
    on_retry = restore_on_retry(rel_mlflow.ensure_up)
    COLLECTED.clear()
    with DAG(_unique("rel_mlflow_register").replace("-", "_"), schedule=None) as dag:
        register = RegisterModelOperator(
            task_id="register",
            training_result=trained,
            model_name=model_name,
            retries=1,
            retry_delay=timedelta(seconds=0),
            on_retry_callback=on_retry,
        )
        register >> _collector("register")
    with outage(monkeypatch, registry, "wait_until_ready", rel_mlflow) as injected:
        dag_run = run_dag(dag)

    assert injected.kills == 1
    (failure,) = on_retry.failures
    _assert_clear_mlflow_failure(failure, rel_mlflow.url)
    _assert_succeeded(dag_run, "register")
    result = COLLECTED["register"]
    assert result["created"] is False, "the retry found the version the dead try created"

    versions = versions_of(mlflow_up, model_name)
    assert [mv.version for mv in versions] == [result["version"]], "no duplicate version"
    assert str(versions[0].status) == "READY"
    assert versions[0].tags["mlops.idempotency_key"] == result["idempotency_key"]
    client = MlflowClient(mlflow_up)
    assert client.get_registered_model(model_name).aliases == {"challenger": result["version"]}
    _assert_nothing_left_running(mlflow_up, experiment)


# -- promotion ------------------------------------------------------------------------------


def _promotion_scene(tracking_uri: str, tmp_path) -> dict[str, Any]:
    """A champion (tree stump, v1) and a better trained challenger (logistic regression)."""
    data = tmp_path / "train.csv"
    clean_frame().to_csv(data, index=False)
    experiment, model_name = _unique("rel-promo"), _unique("rel-promo-model")
    stump = train_candidate(
        tracking_uri, str(data), STUMP, model_name=model_name, experiment=experiment
    )
    champion = crown(tracking_uri, stump, model_name)
    best = train_candidate(
        tracking_uri, str(data), BEST, model_name=model_name, experiment=experiment
    )
    return {"experiment": experiment, "model_name": model_name, "champion": champion, "best": best}


def _promotion_dag(scene: dict[str, Any], on_retry, *, serving_check: bool):
    from airflow.sdk import DAG

    from airflow_mlops.factories.promotion import promotion_tasks

    retry = {"retries": 1, "retry_delay": timedelta(seconds=0), "on_retry_callback": on_retry}
    with DAG(_unique("rel_mlflow_promote").replace("-", "_"), schedule=None) as dag:
        tasks = promotion_tasks(
            training_result=scene["best"],
            policy=POLICY,
            model_name=scene["model_name"],
            evaluate_kwargs=retry,
            register_kwargs=retry,
            promote_kwargs={
                **retry,
                "serving_check": serving_check,
                "lock_ttl_seconds": LOCK_TTL_SECONDS,
                "lock_wait_seconds": LOCK_WAIT_SECONDS,
            },
        )
        tasks.promote >> _collector("evaluate", "register", "promote")
    return dag


def _is_champion_move(_client, _model_name, alias, *args, **kwargs) -> bool:
    return alias == "champion"


@pytest.mark.slow
def test_mlflow_down_inside_the_promotion_lock_then_the_retry_promotes_once(
    mlflow_up, rel_mlflow, run_dag, tmp_path, monkeypatch
):
    """Killed after the lock is taken, before @champion is written.

    The dead try cannot release its lock; the retry, a later try of the same task instance,
    takes that lock over at once (not after its 900 s TTL) and promotes. The champion never
    pointed anywhere unexpected in between.
    """
    from mlflow.tracking import MlflowClient

    import airflow_mlops.core.alias_moves as alias_moves

    scene = _promotion_scene(mlflow_up, tmp_path)
    on_retry = restore_on_retry(rel_mlflow.ensure_up)
    dag = _promotion_dag(scene, on_retry, serving_check=True)
    COLLECTED.clear()
    with outage(
        monkeypatch, alias_moves, "set_alias_checked", rel_mlflow, when=_is_champion_move
    ) as injected:
        started = time.monotonic()
        dag_run = run_dag(dag)
        elapsed = time.monotonic() - started

    assert injected.kills == 1
    (failure,) = on_retry.failures
    _assert_clear_mlflow_failure(failure, rel_mlflow.url)
    _assert_succeeded(dag_run, "evaluate", "register", "promote")
    promote = COLLECTED["promote"]
    new_version = COLLECTED["register"]["version"]
    assert promote["outcome"] == "promoted" and promote["promoted"] is True
    assert promote["serving_check"]["ok"] is True
    assert promote["previous_champion_version"] == scene["champion"]

    client = MlflowClient(mlflow_up)
    move = _assert_champion_sound(client, scene["model_name"], new_version)
    assert move["previous_version"] == scene["champion"]
    assert [mv.version for mv in versions_of(mlflow_up, scene["model_name"])] == ["1", "2"]
    _assert_nothing_left_running(mlflow_up, scene["experiment"])
    assert elapsed < LOCK_TTL_SECONDS


@pytest.mark.slow
def test_mlflow_down_between_the_champion_move_and_its_history_then_the_retry_records_it(
    mlflow_up, rel_mlflow, run_dag, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    import airflow_mlops.core.alias_moves as alias_moves

    scene = _promotion_scene(mlflow_up, tmp_path)
    on_retry = restore_on_retry(rel_mlflow.ensure_up)
    dag = _promotion_dag(scene, on_retry, serving_check=False)
    COLLECTED.clear()

    def is_champion_event(_client, _model_name, event, *_state) -> bool:
        return event["alias"] == "champion"

    with outage(
        monkeypatch, alias_moves, "record_alias_event", rel_mlflow, when=is_champion_event
    ) as injected:
        dag_run = run_dag(dag)

    assert injected.kills == 1
    (failure,) = on_retry.failures
    _assert_clear_mlflow_failure(failure, rel_mlflow.url)
    _assert_succeeded(dag_run, "evaluate", "register", "promote")
    new_version = COLLECTED["register"]["version"]
    assert COLLECTED["promote"]["promoted"] is True
    _assert_nothing_left_running(mlflow_up, scene["experiment"])
    # The champion did move (the alias write happened before the kill) ...
    client = MlflowClient(mlflow_up)
    assert client.get_registered_model(scene["model_name"]).aliases["champion"] == new_version
    # ... so the alias history must say so, once: the retry records the move it finds.
    move = _assert_champion_sound(client, scene["model_name"], new_version)
    assert move["previous_version"] == scene["champion"]
    assert json.dumps(COLLECTED["promote"]["history_event"])  # the XCom carries the event


# -- rollback -------------------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_down_between_the_rollback_and_its_history_then_the_retry_completes_it(
    mlflow_up, rel_mlflow, run_dag, tmp_path, monkeypatch
):
    from airflow.sdk import DAG
    from mlflow.tracking import MlflowClient

    import airflow_mlops.core.alias_moves as alias_moves
    from airflow_mlops.core.alias_history import alias_history
    from airflow_mlops.operators.registry import RollbackModelOperator

    scene = _promotion_scene(mlflow_up, tmp_path)
    newer = crown(mlflow_up, scene["best"], scene["model_name"], scene["champion"])
    on_retry = restore_on_retry(rel_mlflow.ensure_up)
    COLLECTED.clear()
    with DAG(_unique("rel_mlflow_rollback").replace("-", "_"), schedule=None) as dag:
        rollback = RollbackModelOperator(
            task_id="rollback",
            model_name=scene["model_name"],
            reason="reliability test: roll back",
            lock_ttl_seconds=LOCK_TTL_SECONDS,
            lock_wait_seconds=LOCK_WAIT_SECONDS,
            retries=1,
            retry_delay=timedelta(seconds=0),
            on_retry_callback=on_retry,
        )
        rollback >> _collector("rollback")

    def is_rollback_event(_client, _model_name, event, *_state) -> bool:
        return event["action"] == "rollback"

    with outage(
        monkeypatch, alias_moves, "record_alias_event", rel_mlflow, when=is_rollback_event
    ) as injected:
        dag_run = run_dag(dag)

    assert injected.kills == 1
    (failure,) = on_retry.failures
    _assert_clear_mlflow_failure(failure, rel_mlflow.url)
    client = MlflowClient(mlflow_up)
    # The alias write happened before the kill: @champion is back on the old version.
    assert client.get_registered_model(scene["model_name"]).aliases["champion"] == scene["champion"]
    _assert_succeeded(dag_run, "rollback")
    result = COLLECTED["rollback"]
    assert result["champion_version"] == scene["champion"]
    events = [e for e in alias_history(client, scene["model_name"]) if e["action"] == "rollback"]
    assert len(events) == 1 and events[0]["previous_version"] == newer


# -- replayed create requests (MLflow's client retries POSTs) ---------------------------------
# A network replay cannot be produced on demand, so these tests make it happen: the MLflow
# client's create method is wrapped to send the same request twice, as its retry does when
# the first response is lost. The server, the store and our code are real.


@contextlib.contextmanager
def _replay_twice(method: str) -> Iterator[list[Any]]:
    """Inside the block, ``MlflowClient.<method>`` sends every request twice; yields the
    objects created (the first response is the one the retry lost)."""
    from mlflow.tracking import MlflowClient

    original = getattr(MlflowClient, method)
    created: list[Any] = []

    def replayed(self, *args, **kwargs):
        created.append(original(self, *args, **kwargs))  # the response that was lost
        created.append(original(self, *args, **kwargs))  # the replay's, which the caller sees
        return created[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MlflowClient, method, replayed)
        yield created


def test_a_replayed_create_run_request_leaves_no_run_running(client, tracking, tmp_path):
    from airflow_mlops.core.lineage import TAG_ERROR, TAG_IDEMPOTENCY_KEY

    data = tmp_path / "train.csv"
    clean_frame().to_csv(data, index=False)
    experiment = _unique("replay-run")
    with _replay_twice("create_run") as created:
        result = train_candidate(
            tracking, str(data), STUMP, model_name=_unique("m"), experiment=experiment
        )

    assert len(created) == 2, "the create was sent twice"
    runs = {r.info.run_id: r for r in runs_of(tracking, experiment)}
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED", "KILLED"]
    assert runs[result["run_id"]].info.status == "FINISHED"
    (duplicate,) = [r for r in runs.values() if r.info.status == "KILLED"]
    assert duplicate.data.tags[TAG_IDEMPOTENCY_KEY] == result["idempotency_key"]
    assert "replayed create" in duplicate.data.tags[TAG_ERROR]


def test_a_replayed_create_version_request_leaves_one_version_per_key(client, tracking, tmp_path):
    from airflow_mlops.core.lineage import TAG_IDEMPOTENCY_KEY, RunContext
    from airflow_mlops.core.registry import register_version

    data = tmp_path / "train.csv"
    clean_frame().to_csv(data, index=False)
    name, experiment = _unique("replay-version"), _unique("replay-version")
    first = train_candidate(tracking, str(data), STUMP, model_name=name, experiment=experiment)
    ctx = RunContext(dag_id="reliability", run_id=_unique("r"), task_id="register")

    with _replay_twice("create_model_version") as created:
        registration = register_version(
            client, name, first["model_uri"], context=ctx, run_id=first["run_id"]
        )

    assert [mv.version for mv in created] == ["1", "2"], "the create was sent twice"
    assert registration.version == "1" and registration.created
    assert [mv.version for mv in versions_of(tracking, name)] == ["1"], "the duplicate is gone"
    retry = register_version(client, name, first["model_uri"], context=ctx, run_id=first["run_id"])
    assert retry.version == "1" and not retry.created

    # Same key, but the training task was cleared and trained another model: a new version.
    second = train_candidate(tracking, str(data), BEST, model_name=name, experiment=experiment)
    again = register_version(
        client, name, second["model_uri"], context=ctx, run_id=second["run_id"]
    )
    assert again.created and again.version == "3"
    keys = {mv.tags[TAG_IDEMPOTENCY_KEY] for mv in versions_of(tracking, name)}
    assert keys == {ctx.idempotency_key}
