"""Freeze and unfreeze from the generated ``freeze__<name>`` DAG, seen by real CT runs.

The CT and freeze DAGs come from one pipeline config (``tests/test_pipelines.py``'s
breast-cancer pipeline), run with Airflow's real task runner (``dag.test()``) against the
real MLflow server fixture; the freeze state is read back from the registry with MLflow's
own client.
"""

from __future__ import annotations

import json

from conftest import stored_xcom, task_states
from test_pipelines import WEAK_FEATURES, breast_cancer_config, champion_of, land, unique

from airflow_mlops.core.alias_history import TAG_FROZEN, alias_history


def _summary(dag_run) -> dict:
    summary = stored_xcom(dag_run, "summary")
    assert isinstance(summary, dict), summary
    return summary


def test_freeze_stops_a_promoting_ct_run_and_unfreeze_lets_the_next_one_promote(
    client, mlflow_conn, run_dag, tmp_path
):
    from airflow_mlops.factories.continuous_training import continuous_training_dag
    from airflow_mlops.factories.rollback import freeze_dag

    name = unique("frz")
    data = land(tmp_path, "reference")
    weak = breast_cancer_config(
        name, data, data={"train_uri": str(data), "target": "benign", "features": WEAK_FEATURES}
    )
    # A clean batch lands: the full-feature model beats the weak one on rows neither saw.
    full = breast_cancer_config(name, land(tmp_path, "reference", "clean"))
    model = full.registered_model_name
    first = run_dag(continuous_training_dag(weak))
    assert _summary(first)["outcome"] == "promoted"
    assert champion_of(client, model) == "1"

    freezer = freeze_dag(full)
    assert freezer.dag_id == f"freeze__{name}"
    frozen = run_dag(freezer, action="freeze", reason="incident 42", requested_by="ops-alice")
    assert task_states(frozen)[("freeze", -1)] == "success"
    record = json.loads(client.get_registered_model(model).tags[TAG_FROZEN])
    assert record["reason"] == "incident 42" and record["user"] == "dag_test (for ops-alice)"

    # The full-feature model beats the weak champion: it would be promoted, but not now.
    blocked = run_dag(continuous_training_dag(full))
    states = {t: s for (t, _), s in task_states(blocked).items()}
    assert blocked.state == "success", states
    assert states["train"] == states["evaluate"] == states["promote"] == "success"
    evaluation = stored_xcom(blocked, "evaluate")
    assert evaluation["promote"] is True, evaluation["reason"]
    promote = stored_xcom(blocked, "promote")
    assert promote["outcome"] == "frozen" and promote["promoted"] is False
    summary = _summary(blocked)
    assert summary["outcome"] == "frozen", summary
    assert summary["reason"].startswith("frozen: incident 42 (by dag_test (for ops-alice))")
    assert champion_of(client, model) == "1"

    thawed = run_dag(freezer, action="unfreeze", reason="fixed", requested_by=None)
    assert stored_xcom(thawed, "freeze")["outcome"] == "unfrozen"
    assert TAG_FROZEN not in client.get_registered_model(model).tags
    promoted = run_dag(continuous_training_dag(full))
    assert _summary(promoted)["outcome"] == "promoted"
    assert champion_of(client, model) == stored_xcom(promoted, "register")["version"] != "1"

    actions = [(e["action"], e.get("user")) for e in alias_history(client, model)]
    assert ("freeze", "dag_test (for ops-alice)") in actions and ("unfreeze", "dag_test") in actions


def test_a_segmented_pipeline_freezes_and_rolls_back_the_chosen_segment_only(
    client, mlflow_conn, run_dag, tmp_path
):
    """The forms of a segmented pipeline pick a segment; the model it maps to is pinned in
    the DAG file, so only this pipeline's segment models can be touched."""
    import pytest
    from test_registry import actor

    from airflow_mlops.core.alias_history import freeze_state
    from airflow_mlops.core.alias_moves import promote_to_champion
    from airflow_mlops.core.errors import ConfigError
    from airflow_mlops.factories import parse_config
    from airflow_mlops.factories.rollback import freeze_dag, rollback_dag
    from airflow_mlops.operators.registry import FreezeModelOperator

    name = unique("seg")
    config = parse_config(
        {
            "name": name,
            "data": {"train_uri": str(tmp_path / "d.parquet"), "target": "y"},
            "segments": {"column": "band", "values": ["s", "m"]},
            "promotion": {"serving_check": False},
        }
    )
    run = client.create_run(client.create_experiment(f"exp_{name}"))
    for segment in ("s", "m"):
        model = f"{name}__{segment}"
        client.create_registered_model(model)
        for i in range(2):
            v = client.create_model_version(
                model, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
            ).version
            promote_to_champion(
                client, model, str(v), evaluated_champion=None if i == 0 else "1", actor=actor("p")
            )

    freezer = freeze_dag(config)
    assert freezer.params.get_param("segment").schema["enum"] == ["s", "m"]
    run_dag(freezer, segment="m", action="freeze", reason="band m labels late")
    assert freeze_state(client, f"{name}__m")["reason"] == "band m labels late"
    assert freeze_state(client, f"{name}__s") is None

    rolled = run_dag(rollback_dag(config), segment="s", reason="s regressed")
    assert {t: s for (t, _), s in task_states(rolled).items()}["rollback"] == "success"
    assert champion_of(client, f"{name}__s") == "1" and champion_of(client, f"{name}__m") == "2"

    op = FreezeModelOperator(
        task_id="f", model_name=name, segments={"s": f"{name}__s"}, segment="other", reason="r"
    )
    with pytest.raises(ConfigError, match="segment 'other' is not one of"):
        op.execute({"dag_run": None})
