"""Registry moves against the real MLflow server: idempotency, CAS, lock, races, history,
rollback and the fresh-process serving check."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from typing import Any

import mlflow.pyfunc
import pandas as pd
import pytest
from test_evaluation import BEST, STUMP, TREE, WORST, make_dataset, train, unique_name

from airflow_mlops.core.alias_moves import RollbackRefused
from airflow_mlops.core.errors import PromotionError
from airflow_mlops.core.lineage import RunContext

POLICY = {"change_thresholds": {"accuracy": {"direction": "higher", "min_delta": 0.0}}}


def actor(task_id: str, reason: str = "test", run_id: str | None = None):
    from airflow_mlops.core.alias_history import Actor

    return Actor(
        reason=reason, context=RunContext(dag_id="tests", run_id=run_id or "r", task_id=task_id)
    )


def evaluate(client, result: dict, name: str, champion: Any = "resolve") -> dict:
    from airflow_mlops.core.evaluation import challenger_from_training, evaluate_challenger
    from airflow_mlops.core.storage import Storage

    return evaluate_challenger(
        client,
        Storage(),
        challenger_from_training(client, result),
        model_name=name,
        policy=POLICY,
        champion=champion,
    ).record


def reevaluator(client, result: dict, name: str):
    from airflow_mlops.core.registry import resolve_champion

    def _again(new_champion: str | None) -> dict:
        champion = resolve_champion(client, name)
        assert (champion and champion.version) == new_champion
        return evaluate(client, result, name, champion=champion)

    return _again


def register_as(client, name: str, model_uri: str, task_id: str) -> str:
    """Register ``model_uri`` as task ``task_id`` would; the new version's number."""
    from airflow_mlops.core.registry import register_version

    return register_version(client, name, model_uri, context=RunContext(task_id=task_id)).version


def count_versions(client, name: str) -> int:
    from airflow_mlops.core.registry import iter_versions

    return len(list(iter_versions(client, name)))


# -- registration ---------------------------------------------------------------------------


def test_registration_is_idempotent_per_task_instance(client, tracking, tmp_path):
    from airflow_mlops.core.registry import find_version_by_key, register_version

    name = unique_name()
    result = train(tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    ctx = RunContext(dag_id="d", run_id="run-1", task_id="register", try_number=1)
    first = register_version(
        client, name, result["model_uri"], context=ctx, run_id=result["run_id"]
    )
    retry = RunContext(dag_id="d", run_id="run-1", task_id="register", try_number=2)
    second = register_version(
        client, name, result["model_uri"], context=retry, run_id=result["run_id"]
    )
    assert first.created is True and second.created is False
    assert first.version == second.version and second.status == "READY"
    assert count_versions(client, name) == 1
    mv = find_version_by_key(client, name, ctx.idempotency_key)
    assert mv.tags["mlops.source_model_uri"] == result["model_uri"]
    assert mv.tags["mlops.airflow.dag_id"] == "d"

    other_run = RunContext(dag_id="d", run_id="run-2", task_id="register")
    third = register_version(client, name, result["model_uri"], context=other_run)
    assert third.created is True and third.version != first.version
    assert count_versions(client, name) == 2


def test_a_version_ready_at_creation_costs_no_status_poll(client, tracking, tmp_path, monkeypatch):
    """The search that finds the new version already says READY: no extra version read."""
    from airflow_mlops.core.registry import register_version

    name = unique_name()
    result = train(tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    reads: list[tuple] = []
    real = client.get_model_version
    monkeypatch.setattr(client, "get_model_version", lambda *a: reads.append(a) or real(*a))
    ctx = RunContext(dag_id="d", run_id="run-1", task_id="register")
    first = register_version(client, name, result["model_uri"], context=ctx)
    again = register_version(client, name, result["model_uri"], context=ctx)
    assert (first.status, again.status, again.version) == ("READY", "READY", first.version)
    assert reads == []


# -- compare-and-set promotion --------------------------------------------------------------


def test_first_worse_better_rollback_and_history(client, tracking, tmp_path):
    from airflow_mlops.core.alias_history import alias_history, recent_alias_history
    from airflow_mlops.core.alias_moves import (
        promote_to_champion,
        rollback_champion,
        set_challenger,
    )
    from airflow_mlops.core.registry import register_version

    name = unique_name()
    data = make_dataset(tmp_path / "d.csv")
    versions = {}
    outcomes = {}
    for label, estimator in (("stump", STUMP), ("worst", WORST), ("best", BEST)):
        result = train(tracking, data, estimator, model_name=name, task_id=f"train-{label}")
        record = evaluate(client, result, name)
        reg = register_version(
            client,
            name,
            result["model_uri"],
            context=RunContext(task_id=f"reg-{label}"),
            run_id=result["run_id"],
        )
        versions[label] = reg.version
        set_challenger(client, name, reg.version, actor(f"reg-{label}"))
        if record["promote"]:
            move = promote_to_champion(
                client,
                name,
                reg.version,
                evaluated_champion=(record["champion"] or {}).get("version"),
                actor=actor(f"promote-{label}", record["reason"]),
            )
            outcomes[label] = move.outcome
        else:
            outcomes[label] = "rejected: " + record["reason"]

    assert outcomes["stump"] == "promoted"
    assert outcomes["worst"].startswith("rejected: not promoted")
    assert outcomes["best"] == "promoted"
    aliases = client.get_registered_model(name).aliases
    assert str(aliases["champion"]) == versions["best"]
    assert str(aliases["challenger"]) == versions["best"]

    champion_moves = [e for e in alias_history(client, name) if e["alias"] == "champion"]
    assert [(e["version"], e["previous_version"]) for e in champion_moves] == [
        (versions["stump"], None),
        (versions["best"], versions["stump"]),
    ]
    assert champion_moves[1]["by"] == "airflow:tests/r/promote-best"
    assert "promoted" in champion_moves[1]["reason"]
    summary = recent_alias_history(client, name)
    assert [e["action"] for e in summary] == ["set", "promote", "set", "set", "promote"]

    # The old champion is still reachable, and one step brings it back.
    rolled = rollback_champion(client, name, actor("rollback", "bad model in prod"))
    assert rolled.outcome == "rolled_back"
    assert (rolled.version, rolled.previous_version) == (versions["stump"], versions["best"])
    assert str(client.get_registered_model(name).aliases["champion"]) == versions["stump"]
    again = rollback_champion(client, name, actor("rollback", "retry of the same task"))
    assert again.outcome == "already_rolled_back"
    assert str(client.get_registered_model(name).aliases["champion"]) == versions["stump"]
    last = alias_history(client, name)[-1]
    assert last["action"] == "rollback" and last["reason"] == "bad model in prod"


def test_promote_retry_does_not_move_or_record_twice(client, tracking, tmp_path):
    from airflow_mlops.core.alias_history import alias_history
    from airflow_mlops.core.alias_moves import promote_to_champion
    from airflow_mlops.core.registry import register_version

    name = unique_name()
    result = train(tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    reg = register_version(client, name, result["model_uri"], context=RunContext(task_id="reg"))
    first = promote_to_champion(
        client, name, reg.version, evaluated_champion=None, actor=actor("promote")
    )
    retry = promote_to_champion(
        client, name, reg.version, evaluated_champion=None, actor=actor("promote")
    )
    assert first.outcome == "promoted" and retry.outcome == "already_champion"
    assert retry.event == first.event  # the retry found its own event
    assert len(alias_history(client, name)) == 1

    # A try that set the alias and died before writing its event: the retry records it.
    reg2 = register_version(client, name, result["model_uri"], context=RunContext(task_id="reg2"))
    client.set_registered_model_alias(name, "champion", reg2.version)
    healed = promote_to_champion(
        client, name, reg2.version, evaluated_champion=reg.version, actor=actor("promote2")
    )
    assert healed.outcome == "already_champion"
    assert healed.event["previous_version"] == reg.version
    assert healed.event["reason"].startswith("(recorded on retry: @champion already pointed")
    assert [e["version"] for e in alias_history(client, name)] == [reg.version, reg2.version]


def test_champion_changed_since_evaluation_fail_mode_leaves_it_untouched(
    client, tracking, tmp_path
):
    from airflow_mlops.core.alias_moves import promote_to_champion

    name = unique_name()
    data = make_dataset(tmp_path / "d.csv")
    a = train(tracking, data, STUMP, model_name=name, task_id="a")
    b = train(tracking, data, BEST, model_name=name, task_id="b")
    va = register_as(client, name, a["model_uri"], "ra")
    vb = register_as(client, name, b["model_uri"], "rb")
    client.set_registered_model_alias(name, "champion", va)  # moved behind our back
    with pytest.raises(PromotionError) as info:
        promote_to_champion(
            client, name, vb, evaluated_champion=None, actor=actor("p"), on_champion_changed="fail"
        )
    message = str(info.value)
    assert f"moved from none to version {va} since the challenger was evaluated" in message
    assert f"Version {vb} was not promoted" in message
    assert str(client.get_registered_model(name).aliases["champion"]) == va


def test_champion_changed_since_evaluation_is_reevaluated(client, tracking, tmp_path):
    """The second of two promotions evaluated against the same champion is re-judged."""
    from airflow_mlops.core.alias_moves import promote_to_champion

    name = unique_name()
    data = make_dataset(tmp_path / "d.csv")
    stump = train(tracking, data, STUMP, model_name=name, task_id="s")
    v_stump = register_as(client, name, stump["model_uri"], "rs")
    client.set_registered_model_alias(name, "champion", v_stump)

    tree = train(tracking, data, TREE, model_name=name, task_id="t")
    best = train(tracking, data, BEST, model_name=name, task_id="b")
    tree_record = evaluate(client, tree, name)
    best_record = evaluate(client, best, name)
    assert tree_record["promote"] and best_record["promote"]  # both beat the stump
    v_tree = register_as(client, name, tree["model_uri"], "rt")
    v_best = register_as(client, name, best["model_uri"], "rb")

    # The better model wins first; the tree, evaluated against the stump, is re-judged.
    won = promote_to_champion(
        client,
        name,
        v_best,
        evaluated_champion=v_stump,
        actor=actor("pb"),
        reevaluate=reevaluator(client, best, name),
    )
    assert won.outcome == "promoted" and won.reevaluations == []
    lost = promote_to_champion(
        client,
        name,
        v_tree,
        evaluated_champion=v_stump,
        actor=actor("pt"),
        reevaluate=reevaluator(client, tree, name),
    )
    assert lost.outcome == "not_promoted_after_reevaluation"
    (again,) = lost.reevaluations
    assert again["champion"]["version"] == v_best and again["promote"] is False
    assert str(client.get_registered_model(name).aliases["champion"]) == v_best


# -- the lock -------------------------------------------------------------------------------


def test_lock_excludes_concurrent_holders_threads(client, tracking):
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.promotion_lock import PromotionLock

    name = unique_name("lock")
    inside, peak, entries = [0], [0], []
    guard = threading.Lock()

    def worker(i: int) -> None:
        own = MlflowClient(tracking)
        for _ in range(3):
            with PromotionLock(
                own, name, holder=f"thread-{i}", poll_seconds=0.05, wait_seconds=120
            ):
                with guard:
                    inside[0] += 1
                    peak[0] = max(peak[0], inside[0])
                    entries.append(i)
                time.sleep(0.05)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(entries) == 12
    assert peak[0] == 1, f"{peak[0]} holders at once"
    assert PromotionLock(client, name).read() is None  # released


def test_moves_inside_a_held_lock_re_enter_it_in_one_lock_cycle(client, tracking, tmp_path):
    """``@challenger`` then ``@champion`` inside ``with promotion_lock(...)``: the lock is
    created and deleted once (a cycle is four requests), the inner moves leave it held, and
    neither another thread nor another client is let in meanwhile."""
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_moves import promote_to_champion, promotion_lock, set_challenger
    from airflow_mlops.core.promotion_lock import PromotionLock, lock_name
    from airflow_mlops.core.registry import register_version

    name = unique_name("reenter")
    result = train(tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    reg = register_version(client, name, result["model_uri"], context=RunContext(task_id="reg"))
    cycle: list[str] = []

    def counting(method: str) -> Any:
        real = getattr(client, method)

        def counted(model_name: str, *args: Any, **kwargs: Any) -> Any:
            if model_name == lock_name(name):
                cycle.append(method)
            return real(model_name, *args, **kwargs)

        return counted

    for method in ("create_registered_model", "delete_registered_model"):
        setattr(client, method, counting(method))
    who = actor("promote")
    outsider: list[str] = []

    def other_thread() -> None:
        try:
            with PromotionLock(client, name, wait_seconds=0.3, poll_seconds=0.1):
                outsider.append("entered")
        except PromotionError as err:
            outsider.append(str(err))

    with promotion_lock(client, name, who) as held:
        challenger = set_challenger(client, name, reg.version, who)
        champion = promote_to_champion(
            client, name, reg.version, evaluated_champion=None, actor=who
        )
        assert cycle == ["create_registered_model"]  # the moves took no lock of their own
        assert held.read().owner == held.owner  # and their exits released nothing
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(timeout=60)
        other_client = PromotionLock(MlflowClient(tracking), name, wait_seconds=0.3)
        with pytest.raises(PromotionError, match="could not take the promotion lock"):
            other_client.__enter__()
    assert outsider and outsider[0].startswith("could not take the promotion lock"), outsider
    assert (challenger.outcome, champion.outcome) == ("set", "promoted")
    assert cycle[-1] == "delete_registered_model" and cycle.count("delete_registered_model") == 1
    assert PromotionLock(client, name).read() is None
    aliases = client.get_registered_model(name).aliases
    assert aliases == {"challenger": reg.version, "champion": reg.version}


def test_expired_lock_is_broken_and_a_live_one_times_out(client, tracking):
    from airflow_mlops.core.promotion_lock import PromotionLock

    name = unique_name("lock")
    dead = PromotionLock(client, name, holder="dead worker", ttl_seconds=1.0)
    dead.acquire()  # never released: its holder "died"
    with pytest.raises(PromotionError, match="held by dead worker until"):
        PromotionLock(client, name, ttl_seconds=60, wait_seconds=0.0).acquire()
    time.sleep(1.2)
    with PromotionLock(
        client, name, holder="next", wait_seconds=10, clock_skew_seconds=0.0
    ) as lock:
        assert lock.read().holder == "next"
        with pytest.raises(PromotionError, match="lost the promotion lock"):
            dead.verify()  # the dead holder may not write any more
        lock.verify()


# -- racing promotions in separate processes ------------------------------------------------


def _race_worker(
    tracking_uri: str, name: str, result: dict, version: str, label: str, barrier: Any, out: Any
) -> None:
    import os

    import mlflow
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_history import Actor
    from airflow_mlops.core.alias_moves import promote_to_champion

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        record = evaluate(client, result, name)
        barrier.wait(timeout=600)  # both evaluated against the same champion: now race
        move = promote_to_champion(
            client,
            name,
            version,
            evaluated_champion=(record["champion"] or {}).get("version"),
            actor=Actor(reason=record["reason"], context=RunContext(dag_id="race", task_id=label)),
            reevaluate=reevaluator(client, result, name),
            lock_options={"poll_seconds": 0.1},
        )
        out.put((label, {"first": record, "move": move.to_dict(), "at": time.time()}))
    except BaseException as err:  # report, so the test shows the cause
        out.put((label, {"error": repr(err)}))
        raise


@pytest.mark.slow
def test_two_racing_promotions_end_with_the_better_model(client, tracking, tmp_path):
    from airflow_mlops.core.alias_history import alias_history
    from airflow_mlops.core.registry import register_version

    name = unique_name("race")
    data = make_dataset(tmp_path / "d.csv")
    stump = train(tracking, data, STUMP, model_name=name, task_id="s")
    v_stump = register_as(client, name, stump["model_uri"], "rs")
    client.set_registered_model_alias(name, "champion", v_stump)
    runs = {
        "tree": train(tracking, data, TREE, model_name=name, task_id="t"),
        "best": train(tracking, data, BEST, model_name=name, task_id="b"),
    }
    versions = {
        label: register_version(
            client, name, r["model_uri"], context=RunContext(task_id=label)
        ).version
        for label, r in runs.items()
    }

    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(
            target=_race_worker,
            args=(tracking, name, runs[label], versions[label], label, barrier, out),
        )
        for label in ("tree", "best")
    ]
    for p in procs:
        p.start()
    reports = dict(out.get(timeout=900) for _ in procs)
    for p in procs:
        p.join(timeout=120)
    assert all("error" not in r for r in reports.values()), reports

    assert str(client.get_registered_model(name).aliases["champion"]) == versions["best"]
    # Both evaluated against the stump and both decisions are recorded.
    assert all(r["first"]["champion"]["version"] == v_stump for r in reports.values())
    assert all(r["first"]["promote"] for r in reports.values())
    # Exactly one of them found the champion moved and was re-judged against the other.
    rejudged = [label for label, r in reports.items() if r["move"]["reevaluations"]]
    assert len(rejudged) == 1, reports
    (second,) = rejudged
    print(
        f"RACE: {second!r} took the lock second and was re-judged; outcomes:",
        {label: r["move"]["outcome"] for label, r in reports.items()},
    )
    other = "best" if second == "tree" else "tree"
    (again,) = reports[second]["move"]["reevaluations"]
    assert again["champion"]["version"] == versions[other]
    expected = "promoted" if second == "best" else "not_promoted_after_reevaluation"
    assert reports[second]["move"]["outcome"] == expected
    moves = [
        (e["version"], e["previous_version"])
        for e in alias_history(client, name)
        if e["alias"] == "champion"
    ]
    if second == "best":
        assert moves == [(versions["tree"], v_stump), (versions["best"], versions["tree"])]
    else:
        assert moves == [(versions["best"], v_stump)]


# -- history size limits --------------------------------------------------------------------


def test_history_summary_fits_the_tag_limit_and_full_history_is_kept(client, tracking, tmp_path):
    from airflow_mlops.core.alias_history import (
        HISTORY_SUMMARY_MAX_CHARS,
        TAG_ALIAS_HISTORY,
        alias_history,
        recent_alias_history,
    )
    from airflow_mlops.core.alias_moves import set_challenger

    name = unique_name()
    result = train(tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    v1 = register_as(client, name, result["model_uri"], "a")
    v2 = register_as(client, name, result["model_uri"], "b")
    long_reason = "x" * 3000
    for i in range(30):
        set_challenger(client, name, v1 if i % 2 else v2, actor(f"t{i}", long_reason))
    raw = client.get_registered_model(name).tags[TAG_ALIAS_HISTORY]
    assert len(raw) <= HISTORY_SUMMARY_MAX_CHARS
    summary = recent_alias_history(client, name)
    assert 5 < len(summary) < 30
    full = alias_history(client, name)
    assert len(full) == 30
    assert full[-1]["id"] == summary[-1]["id"]
    assert len(full[0]["reason"]) == 2000  # full events keep a long reason


def test_rollback_refusals_name_the_problem(client, tracking, tmp_path):
    from airflow_mlops.core.alias_moves import promote_to_champion, rollback_champion

    name = unique_name()
    result = train(tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    v1 = register_as(client, name, result["model_uri"], "a")
    with pytest.raises(PromotionError, match="has no @champion: nothing to roll back"):
        rollback_champion(client, name, actor("rb"))
    promote_to_champion(client, name, v1, evaluated_champion=None, actor=actor("p"))
    with pytest.raises(PromotionError, match="was the first @champion"):
        rollback_champion(client, name, actor("rb"))
    v2 = register_as(client, name, result["model_uri"], "b")
    client.set_registered_model_alias(name, "champion", v2)  # outside the provider
    with pytest.raises(PromotionError, match="pass to_version"):
        rollback_champion(client, name, actor("rb2"))
    explicit = rollback_champion(client, name, actor("rb3"), to_version=v1)
    assert explicit.outcome == "rolled_back" and explicit.previous_version == v2
    with pytest.raises(RollbackRefused, match=r"version 99 of .* never held @champion"):
        rollback_champion(client, name, actor("rb4"), to_version="99")


def test_rollback_only_returns_to_a_former_champion_that_passes_the_serving_check(
    client, tracking, tmp_path
):
    from airflow_mlops.core.alias_moves import (
        RollbackRefused,
        promote_to_champion,
        rollback_champion,
        set_challenger,
    )

    name = unique_name()
    result = train(tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    v1 = register_as(client, name, result["model_uri"], "a")
    v2 = register_as(client, name, result["model_uri"], "b")
    rejected = register_as(client, name, result["model_uri"], "c")
    promote_to_champion(client, name, v1, evaluated_champion=None, actor=actor("p1"))
    promote_to_champion(client, name, v2, evaluated_champion=v1, actor=actor("p2"))
    set_challenger(client, name, rejected, actor("c"))  # a challenger the policy rejected
    with pytest.raises(RollbackRefused, match=rf"version {rejected} of .* never held @champion"):
        rollback_champion(client, name, actor("rb"), to_version=rejected)
    assert str(client.get_registered_model(name).aliases["champion"]) == v2

    checked: list[str] = []

    def failing_check(version: str) -> None:
        checked.append(version)
        raise PromotionError(f"serving check of version {version} failed")

    with pytest.raises(PromotionError, match=f"serving check of version {v1} failed"):
        rollback_champion(client, name, actor("rb2"), serving_check=failing_check)
    assert checked == [v1]
    assert str(client.get_registered_model(name).aliases["champion"]) == v2  # not moved
    moved = rollback_champion(client, name, actor("rb3"), serving_check=checked.append)
    assert moved.outcome == "rolled_back" and checked == [v1, v1]
    assert str(client.get_registered_model(name).aliases["champion"]) == v1


# -- retries after a crash between two registry writes -------------------------------------


class Crash(BaseException):
    """The task process dies here (BaseException: no handler of the code under test runs)."""


def crash_on_summary_write(monkeypatch, client) -> None:
    """Kill the next ``record_alias_event`` after its per-version event, before its summary:
    a fault injected in the client because a process cannot be killed between two calls."""
    from airflow_mlops.core.alias_history import TAG_ALIAS_HISTORY

    real = client.set_registered_model_tag

    def set_tag(name, key, value):
        if key == TAG_ALIAS_HISTORY:
            monkeypatch.setattr(client, "set_registered_model_tag", real)  # only once
            raise Crash
        return real(name, key, value)

    monkeypatch.setattr(client, "set_registered_model_tag", set_tag)


def test_retries_complete_the_history_a_crashed_try_left_half_written(
    client, tracking, tmp_path, monkeypatch
):
    from airflow_mlops.core.alias_history import alias_history, recent_alias_history
    from airflow_mlops.core.alias_moves import (
        promote_to_champion,
        rollback_champion,
        set_challenger,
    )

    name = unique_name()
    result = train(tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    v1 = register_as(client, name, result["model_uri"], "a")
    v2 = register_as(client, name, result["model_uri"], "b")

    def retried(move, *args, **kwargs):
        """Run ``move``, crash it between its two history writes, then retry it."""
        crash_on_summary_write(monkeypatch, client)
        with pytest.raises(Crash):
            move(client, name, *args, **kwargs)
        return move(client, name, *args, **kwargs)

    def summary_ids() -> list[str]:
        return [e["id"] for e in recent_alias_history(client, name)]

    # @champion: the alias and the per-version event were written, the summary was not.
    first = retried(promote_to_champion, v1, evaluated_champion=None, actor=actor("p", run_id="r1"))
    assert first.outcome == "already_champion"
    assert first.event["id"] in summary_ids()
    assert [e["id"] for e in alias_history(client, name)] == summary_ids()  # nothing twice

    # @challenger ("already set"), same crash.
    challenger = retried(set_challenger, v2, actor("reg", run_id="r2"))
    assert challenger.outcome == "already_set" and challenger.event["id"] in summary_ids()

    # @challenger moved and the try died before any history write: the retry records it.
    client.set_registered_model_alias(name, "challenger", v1)
    healed = set_challenger(client, name, v1, actor("reg", run_id="r3"))
    assert healed.outcome == "already_set" and healed.event is not None
    assert healed.event["version"] == v1 and healed.event["previous_version"] == v2
    assert healed.event["id"] in summary_ids()

    # Rollback, same crash: one rollback event, in the summary too.
    promote_to_champion(client, name, v2, evaluated_champion=v1, actor=actor("p", run_id="r4"))
    rolled = retried(rollback_champion, actor("rb", run_id="r5"))
    assert rolled.outcome == "already_rolled_back" and rolled.version == v1
    rollbacks = [e for e in alias_history(client, name) if e["action"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["id"] in summary_ids()
    assert [e["id"] for e in alias_history(client, name)] == summary_ids()


# -- serving check --------------------------------------------------------------------------


class OnlyImportableHere(mlflow.pyfunc.PythonModel):
    """Pickled by reference to this test module, which a consumer does not have."""

    def predict(self, context, model_input, params=None):
        return model_input.iloc[:, 0]


def test_serving_check_loads_in_a_fresh_process(client, tracking, tmp_path):
    from airflow_mlops.core.registry import register_version
    from airflow_mlops.core.serving import serving_check, serving_sample

    name = unique_name()
    result = train(tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    version = register_version(client, name, result["model_uri"], context=RunContext()).version
    holdout = pd.read_parquet(result["holdout_uri"])
    uri = f"models:/{name}/{version}"
    sample = serving_sample(holdout, uri, "label", rows=25)
    assert list(sample.columns) == ["x1", "x2", "group"] and len(sample) == 25
    check = serving_check(uri, sample)
    assert check["ok"] is True, check
    assert check["predictions"] == 25 and check["model_uri"] == uri


def test_serving_check_reports_a_model_consumers_cannot_load(client, tracking):
    import mlflow

    from airflow_mlops.core.provenance import ModelTrust
    from airflow_mlops.core.registry import register_version
    from airflow_mlops.core.serving import serving_check

    name = unique_name()
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=OnlyImportableHere(), pip_requirements=["mlflow"]
        )
    loaded = mlflow.pyfunc.load_model(info.model_uri)  # fine in this process...
    assert len(loaded.predict(pd.DataFrame({"a": [1.0, 2.0]}))) == 2
    version = register_version(client, name, info.model_uri, context=RunContext()).version
    # Logged by hand, not trained by the provider: the check of the checker opts in to it.
    check = serving_check(
        f"models:/{name}/{version}",
        pd.DataFrame({"a": [1.0, 2.0]}),
        trust=ModelTrust(trust_unsigned=True),
    )
    assert check["ok"] is False  # ...but not where the consumer runs
    assert "test_registry" in check["error"], check
    json.dumps(check)


def test_the_lock_clock_skew_comes_from_the_mlops_settings(monkeypatch):
    from airflow_mlops.core.errors import ConfigError
    from airflow_mlops.core.promotion_lock import DEFAULT_LOCK_CLOCK_SKEW_SECONDS
    from airflow_mlops.operators.registry import _lock_options

    monkeypatch.delenv("AIRFLOW__MLOPS__LOCK_CLOCK_SKEW_SECONDS", raising=False)
    assert _lock_options(900, 60)["clock_skew_seconds"] == DEFAULT_LOCK_CLOCK_SKEW_SECONDS
    monkeypatch.setenv("AIRFLOW__MLOPS__LOCK_CLOCK_SKEW_SECONDS", "5")
    assert _lock_options(900, 60) == {
        "ttl_seconds": 900.0,
        "wait_seconds": 60.0,
        "clock_skew_seconds": 5.0,
    }
    monkeypatch.setenv("AIRFLOW__MLOPS__LOCK_CLOCK_SKEW_SECONDS", "-1")
    with pytest.raises(
        ConfigError, match=r"\[mlops\] lock_clock_skew_seconds must be seconds >= 0"
    ):
        _lock_options(900, 60)


def test_the_connection_client_checks_each_name_for_a_prompt_once(tracking, tmp_path, monkeypatch):
    """MLflow reads the registered model before every tag, alias or delete request to refuse
    a prompt; the provider's client does that once per name, and an alias move reads the
    model once for its alias, freeze state and history summary."""
    from mlflow.exceptions import MlflowException
    from mlflow.prompt.constants import IS_PROMPT_TAG_KEY
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_moves import promote_to_champion, set_challenger
    from airflow_mlops.core.mlflow_client import connection_client
    from airflow_mlops.core.mlflow_settings import MlflowSettings
    from airflow_mlops.core.registry import register_version

    client = connection_client(MlflowSettings(tracking_uri=tracking))
    name = unique_name("reads")
    result = train(tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    ctx = RunContext(dag_id="tests", run_id="r", task_id="register")
    version = register_version(client, name, result["model_uri"], context=ctx).version
    reads: list[str] = []
    real = type(client).get_registered_model
    monkeypatch.setattr(
        type(client),
        "get_registered_model",
        lambda self, model: reads.append(model) or real(self, model),
    )
    assert set_challenger(client, name, version, actor("register")).outcome == "set"
    assert reads.count(name) == 3, reads  # the move's read, the prompt check, the read-back
    reads.clear()
    move = promote_to_champion(
        client, name, version, evaluated_champion=None, actor=actor("promote")
    )
    assert move.outcome == "promoted"
    assert reads.count(name) == 2, reads  # the move's read and the read-back

    prompt = unique_name("prompt")
    other = MlflowClient(tracking)
    other.create_registered_model(prompt)
    other.set_registered_model_tag(prompt, IS_PROMPT_TAG_KEY, "true")  # as a prompt is stored
    with pytest.raises(MlflowException, match=r"Registered Model with name=.* not found"):
        set_challenger(client, prompt, "1", actor("register"))


def test_records_logged_on_one_run_read_its_location_once(tracking, monkeypatch):
    """A batched segment logs its decision and promotion records (and a card) on its run:
    the run's artifact root is read once per client, not once per record."""
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.evaluation import log_record

    client = MlflowClient(tracking)
    run_id = client.create_run(client.create_experiment(unique_name("loc"))).info.run_id
    reads: list[str] = []
    real = MlflowClient.get_run
    monkeypatch.setattr(
        MlflowClient, "get_run", lambda self, rid: reads.append(rid) or real(self, rid)
    )
    first = log_record(client, run_id, {"a": 1}, "mlops/decision.json")
    second = log_record(client, run_id, {"b": 2}, "mlops/promotion.json")
    assert first.endswith("/mlops/decision.json") and second.endswith("/mlops/promotion.json")
    assert first.rsplit("/mlops/", 1)[0] == second.rsplit("/mlops/", 1)[0]
    assert reads == [run_id]  # one read of the run for both records
    log_record(client, run_id, {"c": 3}, "mlops/card.json")
    assert reads == [run_id]
