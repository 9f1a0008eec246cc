"""Several CT runs of the same model reach promotion at the same instant.

Real MLflow server, real training, registration, evaluation and promotion code. Each
"CT run" is a thread with its own ``MlflowClient`` and its own Airflow identity
(``RunContext``); a barrier releases all their ``promote_to_champion`` calls at once, so
they race for the per-model promotion lock in the registry exactly as concurrent promote
tasks on different workers do (the lock and the compare-and-set live in the MLflow server,
not in this process). Every candidate was evaluated against the same old champion, as runs
that started together would be; whoever promotes later must re-score against the new one.

Promise: the champion ends as the best candidate, every move of ``@champion`` is in the
alias history in a consistent chain, and the lock is released.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from reliability._data import BEST, POLICY, STUMP, TREE, WORST, clean_frame, crown, train_candidate

pytestmark = pytest.mark.timeout(420)

CANDIDATES = {"stump": STUMP, "tree": TREE, "best": BEST}


def _scene(tracking_uri: str, tmp_path) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.evaluation import challenger_from_training, evaluate_challenger
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import register_version
    from airflow_mlops.core.storage import Storage

    data = tmp_path / "train.csv"
    clean_frame(rows=300, noise=0.3).to_csv(data, index=False)
    model_name = f"rel-race-{uuid.uuid4().hex[:8]}"
    experiment = f"rel-race-{uuid.uuid4().hex[:8]}"
    worst = train_candidate(
        tracking_uri, str(data), WORST, model_name=model_name, experiment=experiment
    )
    old_champion = crown(tracking_uri, worst, model_name)
    client = MlflowClient(tracking_uri)
    runs = {}
    for label, estimator in CANDIDATES.items():
        trained = train_candidate(
            tracking_uri, str(data), estimator, model_name=model_name, experiment=experiment,
            run_id=f"run-{label}",
        )  # fmt: skip
        context = RunContext(dag_id="ct__race", run_id=f"run-{label}", task_id="register")
        registration = register_version(
            client, model_name, trained["model_uri"], context=context, run_id=trained["run_id"]
        )
        evaluation = evaluate_challenger(
            client,
            Storage(),
            challenger_from_training(client, trained),
            model_name=model_name,
            policy=POLICY,
        )
        assert evaluation.promote, f"{label} beats the constant model"
        assert evaluation.champion_version == old_champion
        runs[label] = {
            "trained": trained,
            "version": registration.version,
            "accuracy": evaluation.record["challenger_metrics"]["accuracy"],
        }
    return {"model_name": model_name, "old_champion": old_champion, "runs": runs}


def _promote_concurrently(tracking_uri: str, scene: dict[str, Any]) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_history import Actor
    from airflow_mlops.core.alias_moves import promote_to_champion
    from airflow_mlops.core.evaluation import challenger_from_training, evaluate_challenger
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import Champion
    from airflow_mlops.core.storage import Storage

    model_name = scene["model_name"]
    barrier = threading.Barrier(len(scene["runs"]))
    outcomes: dict[str, Any] = {}

    def ct_run(label: str, run: dict[str, Any]) -> None:
        client = MlflowClient(tracking_uri)  # one client per "worker"
        challenger = challenger_from_training(client, run["trained"])

        def reevaluate(new_champion: str | None) -> dict[str, Any]:
            mv = client.get_model_version(model_name, new_champion)
            return evaluate_challenger(
                client,
                Storage(),
                challenger,
                model_name=model_name,
                policy=POLICY,
                champion=Champion(model_name, str(mv.version), mv.run_id),
            ).record

        context = RunContext(dag_id="ct__race", run_id=f"run-{label}", task_id="promote")
        barrier.wait(timeout=60)
        try:
            outcomes[label] = promote_to_champion(
                client,
                model_name,
                run["version"],
                evaluated_champion=scene["old_champion"],
                actor=Actor(reason=f"{label} beat v{scene['old_champion']}", context=context),
                reevaluate=reevaluate,
                lock_options={"ttl_seconds": 120, "wait_seconds": 120, "poll_seconds": 0.2},
            )
        except BaseException as err:  # reported by the main thread
            outcomes[label] = err

    threads = [
        threading.Thread(target=ct_run, args=(label, run), name=f"ct-{label}")
        for label, run in scene["runs"].items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return outcomes


@pytest.mark.slow
def test_racing_promotions_end_with_the_best_candidate_and_a_complete_history(mlflow_up, tmp_path):
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_history import alias_history
    from airflow_mlops.core.registry import current_alias_version

    scene = _scene(mlflow_up, tmp_path)
    runs = scene["runs"]
    outcomes = _promote_concurrently(mlflow_up, scene)
    errors = {k: v for k, v in outcomes.items() if isinstance(v, BaseException)}
    assert not errors, errors

    client = MlflowClient(mlflow_up)
    model_name = scene["model_name"]
    # The champion ends as a candidate with the highest holdout accuracy (with a tie, the
    # first of them to take the lock: an equal model does not replace it).
    top = max(run["accuracy"] for run in runs.values())
    champion = current_alias_version(client, model_name, "champion")
    (best,) = [label for label, run in runs.items() if run["version"] == champion]
    assert runs[best]["accuracy"] == top, runs

    # Only the first to take the lock saw the champion it was evaluated against: every other
    # run found @champion moved and was re-scored against the new one.
    assert sum(len(move.reevaluations) for move in outcomes.values()) >= len(runs) - 1
    promoted = {label for label, move in outcomes.items() if move.outcome == "promoted"}
    held_back = {label for label, move in outcomes.items() if move.outcome != "promoted"}
    assert best in promoted
    for label in held_back:
        move = outcomes[label]
        # It lost the race to a better (or equal) model and was re-scored against it.
        assert move.outcome == "not_promoted_after_reevaluation", move
        assert move.reevaluations and not move.reevaluations[-1]["promote"]

    # Every move is in the history, once, and the chain of moves has no gap or overwrite.
    events = [e for e in alias_history(client, model_name) if e["alias"] == "champion"]
    assert events[0]["version"] == scene["old_champion"]
    race = events[1:]
    assert sorted(e["version"] for e in race) == sorted(
        runs[label]["version"] for label in promoted
    )
    previous = scene["old_champion"]
    for event in race:
        assert event["previous_version"] == previous, events
        previous = event["version"]
    assert previous == runs[best]["version"]
    for label in promoted:
        (event,) = [e for e in race if e["version"] == runs[label]["version"]]
        assert event["run_id"] == f"run-{label}" and event["action"] == "promote"
    # Each promoted version really was better than the champion it replaced.
    accuracy = {runs[label]["version"]: runs[label]["accuracy"] for label in runs}
    for event in race[1:]:
        assert accuracy[event["version"]] >= accuracy[event["previous_version"]]
    assert not client.search_registered_models(f"name = '{model_name}.mlops-lock'")
