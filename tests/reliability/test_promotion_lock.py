"""The promotion lock after its holder died: who may take it, and how soon.

Real MLflow server (the restartable one, so the lock lives in the same registry the fault
tests use). No server is killed here: a holder "dies" by never releasing the lock, exactly
what a try killed inside the critical section leaves behind.
"""

from __future__ import annotations

import time
import uuid

import pytest

from airflow_mlops.core.errors import PromotionError


def _lock(client, model_name, **options):
    from airflow_mlops.core.promotion_lock import PromotionLock

    return PromotionLock(client, model_name, **{"poll_seconds": 0.2, **options})


def _assert_promotion_refused_while_held(client, model, holder, actor) -> None:
    """While ``holder`` holds the lock, promoting as ``actor`` gives up after 1 s and the lock
    still belongs to ``holder``."""
    from airflow_mlops.core.alias_moves import promote_to_champion

    holder.acquire()
    try:
        with pytest.raises(PromotionError, match="could not take the promotion lock"):
            promote_to_champion(
                client, model, "1", evaluated_champion=None, actor=actor,
                lock_options={"wait_seconds": 1.0, "poll_seconds": 0.2},
            )  # fmt: skip
        assert holder.read().owner == holder.owner
    finally:
        holder.release()


def test_another_promoter_waits_for_a_live_holder_and_is_told_who_holds_it(mlflow_up):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_up)
    model = f"rel-lock-{uuid.uuid4().hex[:8]}"
    holder = _lock(client, model, holder="airflow:ct/run-1/promote", ttl_seconds=120)
    holder.acquire()
    try:
        with pytest.raises(PromotionError, match="airflow:ct/run-1/promote"):
            _lock(client, model, holder="airflow:ct/run-2/promote", wait_seconds=1.0).acquire()
    finally:
        holder.release()
    # Released: the next one gets it at once.
    started = time.monotonic()
    with _lock(client, model, wait_seconds=5.0):
        assert time.monotonic() - started < 5.0


def test_an_expired_lock_of_a_dead_holder_is_broken(mlflow_up):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_up)
    model = f"rel-lock-{uuid.uuid4().hex[:8]}"
    _lock(client, model, ttl_seconds=1.0).acquire()  # never released: its holder "died"
    time.sleep(1.5)
    with _lock(client, model, wait_seconds=10.0, clock_skew_seconds=0.0) as lock:
        assert lock.read().owner == lock.owner


def test_the_retry_of_the_same_task_instance_reclaims_its_dead_tries_lock_at_once(
    mlflow_up, monkeypatch
):
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_history import Actor
    from airflow_mlops.core.alias_moves import promote_to_champion
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.promotion_lock import PromotionLock

    client = MlflowClient(mlflow_up)
    model = f"rel-lock-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(model)
    try1 = RunContext(dag_id="ct", run_id="run-1", task_id="promote", try_number=1)
    try2 = RunContext(dag_id="ct", run_id="run-1", task_id="promote", try_number=2)

    # Try 1 takes the lock through the real code path and dies inside it: the process is
    # gone before ``release`` can run (SIGKILL, or an MLflow outage that fails the release).
    class Killed(BaseException):
        pass

    def die(self, margin_s=30.0):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(PromotionLock, "verify", die)
        patch.setattr(PromotionLock, "release", lambda self: None)
        with pytest.raises(Killed):
            promote_to_champion(
                client, model, "1", evaluated_champion=None, actor=Actor("try 1", try1),
                lock_options={"ttl_seconds": 900},
            )  # fmt: skip
    assert PromotionLock(client, model).read() is not None, "try 1 left its lock behind"

    started = time.monotonic()
    try:
        promote_to_champion(
            client, model, "1", evaluated_champion=None, actor=Actor("try 2", try2),
            lock_options={"wait_seconds": 3.0, "poll_seconds": 0.2},
        )  # fmt: skip
    except PromotionError as err:
        pytest.fail(f"try 2 could not take its own dead try's lock: {err}")
    except Exception:
        pass  # version 1 does not exist: only getting past the lock matters here
    assert time.monotonic() - started < 3.0


def test_a_different_task_never_takes_over_a_live_lock(mlflow_up):
    """The reclaim above must not let another run's promotion break a lock in use."""
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_history import Actor
    from airflow_mlops.core.lineage import RunContext

    client = MlflowClient(mlflow_up)
    model = f"rel-lock-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(model)
    holder = _lock(client, model, holder="airflow:ct/run-1/promote", ttl_seconds=120)
    other = RunContext(dag_id="ct", run_id="run-2", task_id="promote")
    _assert_promotion_refused_while_held(client, model, holder, Actor("run 2", other))


@pytest.mark.parametrize(
    "context",
    [None, {"dag_id": "ct", "run_id": "run-1", "task_id": "promote", "try_number": 2}],
    ids=["two scripts with the default context", "the same try"],
)
def test_the_same_identity_without_a_later_try_never_takes_over_a_live_lock(mlflow_up, context):
    """Only a *later* try may reclaim: two scripts that both use the default ``RunContext``
    (``manual``/``manual``/``manual``, try 1) share an idempotency key but are both alive."""
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_history import Actor
    from airflow_mlops.core.lineage import RunContext

    client = MlflowClient(mlflow_up)
    model = f"rel-lock-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(model)
    run_context = RunContext(**context) if context else RunContext()
    holder = _lock(
        client, model, holder="a live holder", ttl_seconds=120,
        reclaim_key=run_context.idempotency_key, try_number=run_context.try_number,
    )  # fmt: skip
    _assert_promotion_refused_while_held(client, model, holder, Actor("again", run_context))


# -- replays, long names, clock skew ----------------------------------------------------------


def test_a_replayed_create_finds_its_own_lock_and_does_not_wait_out_its_ttl(mlflow_up, monkeypatch):
    """The MLflow client retries a POST whose response was lost: the replay gets
    RESOURCE_ALREADY_EXISTS for the lock the first attempt created. That lock is ours."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_up)
    model = f"rel-lock-{uuid.uuid4().hex[:8]}"
    real_create = client.create_registered_model

    def lost_response_then_replay(name, *args, **kwargs):
        # Simulated network fault (cannot be produced on loopback): the server creates the
        # lock, the response is lost, and the client's retry of the same request is refused.
        real_create(name, *args, **kwargs)
        raise MlflowException("already exists (replayed request)", RESOURCE_ALREADY_EXISTS)

    monkeypatch.setattr(client, "create_registered_model", lost_response_then_replay)
    started = time.monotonic()
    lock = _lock(client, model, ttl_seconds=600, wait_seconds=2.0)
    lock.acquire()  # before the fix: waits 2 s for "another holder", then PromotionError
    try:
        assert time.monotonic() - started < 2.0
        assert lock.read().owner == lock.owner
        lock.verify()
    finally:
        lock.release()
    assert lock.read() is None


def test_a_create_racing_the_holders_release_tries_again(mlflow_up, monkeypatch):
    """Seen under load on the real server: a create that raced the previous holder's delete
    answered RESOURCE_DOES_NOT_EXIST. The lock is free then: acquiring goes on, not fails."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_up)
    model = f"rel-lock-{uuid.uuid4().hex[:8]}"
    real_create = client.create_registered_model
    answers = iter(["raced"])

    def raced_once(name, *args, **kwargs):
        # Simulated server race (cannot be produced on demand): the first create is answered
        # as the server answered it while the name was being deleted.
        if next(answers, None) == "raced":
            raise MlflowException(
                f"Registered Model with name={name} not found", RESOURCE_DOES_NOT_EXIST
            )
        return real_create(name, *args, **kwargs)

    monkeypatch.setattr(client, "create_registered_model", raced_once)
    lock = _lock(client, model, wait_seconds=2.0)
    lock.acquire()  # before the fix: the RestException escaped from acquire()
    try:
        assert lock.read().owner == lock.owner
    finally:
        lock.release()


def test_a_lock_expired_by_less_than_the_clock_skew_is_not_broken(mlflow_up):
    """A holder whose clock runs behind writes an expiry already in the waiter's past."""
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.promotion_lock import TAG_LOCK_EXPIRES_AT, PromotionLock, lock_name

    client = MlflowClient(mlflow_up)
    model = f"rel-lock-{uuid.uuid4().hex[:8]}"
    holder = _lock(client, model, holder="slow-clock host", ttl_seconds=600)
    holder.acquire()
    try:
        # Its expiry, by the waiter's clock, passed 20 s ago.
        client.set_registered_model_tag(
            lock_name(model), TAG_LOCK_EXPIRES_AT, f"{time.time() - 20:.3f}"
        )
        with pytest.raises(PromotionError, match="slow-clock host"):
            _lock(client, model, wait_seconds=1.0).acquire()  # default skew: 60 s
        assert holder.read().owner == holder.owner
        # Beyond the configured skew the lock counts as expired and is broken.
        with PromotionLock(
            client, model, wait_seconds=5.0, poll_seconds=0.2, clock_skew_seconds=10.0
        ) as lock:
            assert lock.read().owner == lock.owner
    finally:
        holder.release()


def test_lock_names_fit_the_registry_name_column_for_every_accepted_model_name():
    from airflow_mlops.core.model_uri import model_uri_for
    from airflow_mlops.core.promotion_lock import LOCK_SUFFIX, lock_name

    short = "churn"
    assert lock_name(short) == f"churn{LOCK_SUFFIX}"  # unchanged for ordinary names
    longest = "m" * 256
    model_uri_for(longest, version=1)  # accepted as a model name
    for name in (longest, "a" * 246, "a" * 245 + "b", "x" * 250 + " y.z-"):
        assert len(lock_name(name)) <= 256, name
        assert lock_name(name) == lock_name(name)  # deterministic
        assert lock_name(name).endswith(LOCK_SUFFIX)
    assert lock_name("a" * 246) != lock_name("a" * 245 + "b")  # same prefix, other lock


def _local_stack():
    """deploy/local_stack.py, which installs and starts PostgreSQL for ``local-stack prod``."""
    import local_stack  # deploy/ is on pytest's pythonpath

    return local_stack


@pytest.mark.slow
def test_the_lock_of_a_256_character_model_name_works_on_postgresql(tmp_path):
    """SQLite ignores ``VARCHAR(256)``; PostgreSQL refuses a longer registered-model name.

    MLflow's SQL store is used in-process on a real PostgreSQL (no tracking server: the
    store is what enforces the column; a server adds 30 s and nothing to this check).
    """
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.promotion_lock import PromotionLock, lock_name

    stack = _local_stack()
    state = stack.new_state("prod", tmp_path / "stack", tmp_path / "dags", auto_ports=True)
    stack.start_postgres(state)
    try:
        uri = (
            f"postgresql+psycopg2://mlflow:{state.db_passwords['mlflow']}"
            f"@127.0.0.1:{state.ports['postgres']}/mlflow"
        )
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        model = "m" * 250 + f"-{uuid.uuid4().hex[:5]}"  # 256 characters: the longest allowed
        client.create_registered_model(model)
        with pytest.raises(Exception, match=r"256|too long"):  # the lock's name before the fix
            client.create_registered_model(f"{model}.mlops-lock")
        with PromotionLock(client, model, wait_seconds=5.0) as lock:
            assert lock.read().owner == lock.owner
            assert client.get_registered_model(lock_name(model)).name == lock.name
        assert lock.read() is None
    finally:
        stack.stop_group("postgres", state.pids["postgres"], state.started.get("postgres"))
