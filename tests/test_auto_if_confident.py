"""``promotion.approval: auto_if_confident``: promote without asking only on confident evidence.

The pure decision (:func:`airflow_mlops.core.approval_policy.approval_outcome`) on planted
records, then the real pipeline under ``dag.test()`` with the MLflow server fixture: a first
model (no champion, so nothing to be confident about) asks and is promoted once a human
approves through the real Core API; a clearly better challenger is promoted with the approval
task skipped; a challenger whose gain over a champion passes the policy but not at its 95%
bound asks, and a rejection leaves ``@champion`` where it was; and a promote task given a not-confident evaluation refuses to move
``@champion`` without an approval record even when an XCom claims confidence.
"""

from __future__ import annotations

import copy
import json
import uuid

import pytest
from conftest import stored_xcom, task_states
from test_evaluation import BEST, STUMP, TREE, make_dataset, unique_name
from test_promotion_dag import COLLECTED, POLICY, champion_of, run, run_with_answer

from airflow_mlops.core.approval_policy import approval_outcome
from airflow_mlops.core.errors import ConfigError

RECORD = {
    "promote": True,
    "reason": "promoted: all 2 applicable rule(s) passed",
    "champion": {"version": "1"},
    "champion_metrics": {"f1": 0.8, "rmse": 2.0},
    "rows_compared": 400,
    "min_rows": 50,
    "policy": {
        "change_thresholds": {
            "f1": {"min_delta": 0.0},
            "rmse": {"direction": "lower", "min_relative_delta": 0.0},
        }
    },
    "rules": [
        {"rule": "change.absolute", "metric": "f1", "verdict": "pass", "detail": "ok"},
        {"rule": "change.relative", "metric": "rmse", "verdict": "pass", "detail": "ok"},
    ],
    "intervals": {
        "f1": {"difference": {"confidence": 0.95, "low": 0.02, "high": 0.08}},
        "rmse": {"difference": {"confidence": 0.95, "low": -0.4, "high": -0.1}},
    },
}


def build_pipeline(dag_id: str, data_uri: str, model_name: str, estimator, policy=POLICY):
    """test_promotion_dag's pipeline with ``auto_if_confident``, without the serving check."""
    from airflow.sdk import DAG, task

    from airflow_mlops.factories.promotion import promotion_tasks
    from airflow_mlops.operators.training import TrainModelOperator

    with DAG(dag_id, schedule=None) as dag:
        train = TrainModelOperator(
            task_id="train",
            train_uri=data_uri,
            target="label",
            experiment_name=f"exp-{model_name}",
            model_name=model_name,
            estimator=estimator[0],
            estimator_params=estimator[1],
            task="classification",
        )
        tasks = promotion_tasks(
            training_result=train.output,
            policy=policy,
            model_name=model_name,
            approval="auto_if_confident",
            promote_kwargs={"serving_check": False},
        )

        @task(trigger_rule="all_done")
        def collect(**context) -> None:
            for task_id in ("evaluate", "approve_promotion", "promote"):
                COLLECTED[task_id] = context["ti"].xcom_pull(task_ids=task_id)

        tasks.promote >> collect()
    return dag


def planted(**changes) -> dict:
    record = copy.deepcopy(RECORD)
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = record
        for key in parents:
            target = target[key]
        target[last] = value
    return record


def test_the_decision_is_made_from_the_record_and_names_why_it_asks():
    confident = approval_outcome(RECORD)
    assert confident["outcome"] == "auto_approved" and confident["confident"] is True
    assert confident["reason"] == "auto-approved: every rule passed at 95% confidence"
    assert [c["ok"] for c in confident["checks"]] == [True, True]
    json.dumps(confident)  # recorded as is

    cases = {
        "small f1 gain": (
            planted(intervals__f1__difference__low=-0.01),
            "asked reviewers: f1 difference lower bound -0.01 below threshold 0",
        ),
        "rmse may be worse": (
            planted(intervals__rmse__difference__high=0.1),
            "rmse relative improvement at the upper bound -0.05 below threshold 0",
        ),
        "too few rows": (planted(rows_compared=49), "49 rows compared < min_rows 50"),
        "first model": (planted(champion=None), "first model: no champion"),
        "a rule not passed": (
            planted(rules=[{"rule": "slice", "metric": "f1", "verdict": "not_applicable"}]),
            "rule slice on f1 is not_applicable",
        ),
        "no interval": (
            planted(intervals__f1={"error": "too few rows to resample"}),
            "f1 difference: no 95% interval (too few rows to resample)",
        ),
    }
    for name, (record, why) in cases.items():
        outcome = approval_outcome(record)
        assert outcome["outcome"] == "ask" and outcome["confident"] is False, name
        assert outcome["reason"].startswith("asked reviewers: "), (name, outcome["reason"])
        assert why in outcome["reason"], (name, outcome["reason"])
    # A level the record has no interval at asks (the evaluation records 0.95 intervals).
    other_level = approval_outcome(RECORD, confidence=0.9)
    assert other_level["outcome"] == "ask"
    assert "no 90% interval (the record holds the 0.95 interval)" in other_level["reason"]
    # The policy's own min_confidence is the default level; its bound is in its rule.
    at_90 = planted(policy__change_thresholds__f1__min_confidence=0.9)
    assert "no 90% interval" in approval_outcome(at_90)["reason"]
    rule = {"rule": "change.absolute.confidence", "metric": "f1", "verdict": "pass"}
    at_90["rules"].append({**rule, "observed": 0.004, "detail": "f1: improvement ..."})
    assert approval_outcome(at_90)["reason"] == (
        "auto-approved: every rule passed at 90% confidence and 95% confidence"
    )
    at_90["rules"][-1].update(observed=-0.002, verdict="pass")
    assert (
        "f1 improvement at the 90% bound -0.002 below threshold 0"
        in (approval_outcome(at_90)["reason"])
    )
    # The core gate refuses a move the policy asked about when no approval is given.
    from airflow_mlops.core.promotion import promotion_gate

    asked = approval_outcome(planted(champion=None))
    outcome, reason = promotion_gate(RECORD, None, None, "approve", asked)
    assert outcome == "not_approved" and reason.startswith("asked reviewers: first model")
    assert promotion_gate(RECORD, None, None, "approve", confident) == (None, None)
    refused = approval_outcome(planted(promote=False))
    assert refused["outcome"] == "not_promoted" and refused["confident"] is False


def test_config_validation_names_the_field():
    from test_pipelines import DATA, breast_cancer_config

    train = DATA / "breast_cancer" / "reference.parquet"
    ok = breast_cancer_config(
        "aic_ok",
        train,
        promotion={"approval": "auto_if_confident", "approvers": ["alice"], "timeout": 60},
    )
    assert ok.promotion.approval == "auto_if_confident" and ok.promotion.auto_confidence is None
    from airflow_mlops.factories import continuous_training_dag

    dag = continuous_training_dag(ok)
    approve, promote = dag.get_task("approve_promotion"), dag.get_task("promote")
    assert approve.approval_policy == promote.approval_policy == "auto_if_confident"
    assert approve.approvers == ["alice"] and approve.response_timeout.total_seconds() == 60
    assert promote.approval_task_id == "approve_promotion"
    assert dag.max_active_runs == 2  # a run waiting for an answer does not hold up the next
    for promotion, message in [
        ({"approval": "auto", "auto_confidence": 0.9}, r"promotion.auto_confidence needs"),
        ({"approval": "auto_if_confident", "auto_confidence": 1.5}, r"promotion.auto_confidence"),
        ({"approval": "auto_if_confident", "auto_confidence": 0.2}, r"promotion.auto_confidence"),
        ({"approval": "sometimes"}, r"promotion.approval"),
        (
            {"approval": "auto_if_confident", "auto_confidence": 0.9},
            r"promotion.auto_confidence: no 0.9 interval is recorded by evaluation",
        ),
        ({"approvers": ["a"]}, r"promotion.approvers needs promotion.approval: manual or auto_if"),
    ]:
        with pytest.raises(ConfigError, match=message):
            breast_cancer_config("aic_bad", train, promotion=promotion)
    from airflow_mlops.operators.registry import PromoteModelOperator

    with pytest.raises(ConfigError, match="needs approval_task_id"):
        PromoteModelOperator(
            task_id="p", evaluation={}, registration={}, approval_policy="auto_if_confident"
        )


@pytest.mark.slow
def test_asks_when_not_confident_and_promotes_a_confident_challenger_unasked(
    client, airflow_tracking, tmp_path, monkeypatch
):
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    name = unique_name("aic")
    data = make_dataset(tmp_path / "d.csv")

    # First model: no champion, no difference to be confident about -> a human is asked.
    first, asked = run_with_answer(
        build_pipeline(f"aic_first_{uuid.uuid4().hex[:6]}", data, name, STUMP),
        "Approve",
    )
    assert asked["status_code"] == 200, asked
    assert "**Approval policy:** auto_if_confident: asked reviewers: first model" in asked["body"]
    assert first["tasks"]["approve_promotion"] == "success", first["tasks"]
    promote = first["promote"]
    assert promote["outcome"] == "promoted", promote
    assert promote["approval"]["approved"] is True and promote["approval"]["by"]
    assert promote["approval_policy"]["outcome"] == "ask"
    assert promote["history_event"]["reason"].startswith("asked reviewers: first model")
    assert champion_of(client, name) == "1"

    # A much better challenger: every rule passes at the 95% bound -> nobody is asked.
    better = run(build_pipeline(f"aic_better_{uuid.uuid4().hex[:6]}", data, name, BEST))
    assert better["tasks"]["approve_promotion"] == "skipped", better["tasks"]
    assert better["tasks"]["approval_gate"] == "skipped", better["tasks"]
    promote = better["promote"]
    assert promote["outcome"] == "promoted", promote
    assert promote["approval"] is None
    policy = promote["approval_policy"]
    assert policy["policy"] == "auto_if_confident" and policy["outcome"] == "auto_approved"
    assert policy["reason"] == "auto-approved: every rule passed at 95% confidence"
    low = better["evaluate"]["intervals"]["accuracy"]["difference"]["low"]
    assert policy["checks"][0]["bound"] == low > 0
    assert promote["history_event"]["reason"].startswith(policy["reason"])
    assert champion_of(client, name) == "2"
    # The promotion record and the card say which policy decided and what it did.
    run_id = better["evaluate"]["challenger"]["run_id"]
    record = client.download_artifacts(run_id, "mlops/promotion.json", str(tmp_path))
    with open(record) as fh:
        stored = json.load(fh)
    assert stored["approval_policy"]["outcome"] == "auto_approved"
    card = client.download_artifacts(run_id, "mlops/model_card.json", str(tmp_path))
    with open(card) as fh:
        decision = json.load(fh)["decision"]
    assert decision["approval_policy"] == "auto_if_confident"
    assert decision["approval_policy_outcome"] == policy["reason"]


def test_promote_refuses_a_not_confident_challenger_without_an_approval_record(
    client, airflow_tracking, tmp_path, run_dag
):
    """An XCom claiming confidence (Airflow's USER role may write XCom) changes nothing: the
    promote task recomputes the verdict from the evaluation and finds no approval record."""
    from airflow.sdk import DAG, task
    from test_evaluation import train

    from airflow_mlops.core.evaluation import challenger_from_training, evaluate_challenger
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import register_version
    from airflow_mlops.core.storage import Storage
    from airflow_mlops.operators.registry import PromoteModelOperator

    name = unique_name("aicforged")
    result = train(airflow_tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    record = evaluate_challenger(
        client, Storage(), challenger_from_training(client, result), model_name=name, policy=POLICY
    ).record
    assert record["promote"] is True  # the policy alone would promote it (first model)
    registration = register_version(
        client, name, result["model_uri"], context=RunContext(task_id="r"), run_id=result["run_id"]
    ).to_dict()
    claim = {"policy": "auto_if_confident", "outcome": "auto_approved", "confident": True}

    with DAG(f"aic_forged_{uuid.uuid4().hex[:6]}", schedule=None) as dag:

        @task(task_id="approve_promotion")
        def approve(**context) -> None:
            context["ti"].xcom_push(key="mlops_approval_policy", value=claim)

        promote = PromoteModelOperator(
            task_id="promote",
            evaluation=record,
            registration=registration,
            approval_task_id="approve_promotion",
            approval_policy="auto_if_confident",
            serving_check=False,
            model_card=False,
        )
        approve() >> promote
    dag_run = run_dag(dag)
    states = {t: s for (t, _), s in task_states(dag_run).items()}
    assert states["promote"] == "success", states
    outcome = stored_xcom(dag_run, "promote")
    assert outcome["outcome"] == "not_approved", outcome
    assert outcome["reason"].startswith("asked reviewers: first model"), outcome["reason"]
    assert "no answer from approval task 'approve_promotion'" in outcome["reason"]
    assert "champion" not in client.get_registered_model(name).aliases


#: On make_dataset's rows a depth-4 tree beats the depth-3 champion by three of the 107
#: comparison rows (+0.028 accuracy, deterministic: both trees are seeded), with a 95%
#: interval whose lower bound is below zero:
DEEPER = ("sklearn.tree.DecisionTreeClassifier", {"max_depth": 4, "random_state": 0})
# above this threshold on the point estimate, below it at the interval's lower bound.
NARROW_DELTA = 0.005
NARROW = {
    "value_thresholds": {"accuracy": {"lower": 0.6}},
    "change_thresholds": {"accuracy": {"direction": "higher", "min_delta": NARROW_DELTA}},
}


@pytest.mark.slow
def test_asks_when_the_gain_over_a_champion_passes_only_on_the_point_estimate(
    client, airflow_tracking, tmp_path, monkeypatch
):
    """The champion is trained, registered and aliased directly (its own promotion is the
    test above); the pipeline run asks the approvers, and a rejection keeps ``@champion``."""
    from test_evaluation import train

    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import register_version

    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    name = unique_name("aicnarrow")
    data = make_dataset(tmp_path / "d.csv")
    champion = train(airflow_tracking, data, TREE, model_name=name)
    v1 = register_version(
        client,
        name,
        champion["model_uri"],
        context=RunContext(task_id="r"),
        run_id=champion["run_id"],
    ).version
    client.set_registered_model_alias(name, "champion", v1)

    dag = build_pipeline(f"aic_narrow_{uuid.uuid4().hex[:6]}", data, name, DEEPER, policy=NARROW)
    result, asked = run_with_answer(dag, "Reject")
    evaluation = result["evaluate"]
    assert evaluation["promote"] is True, evaluation["reason"]  # the point rule passes
    assert evaluation["champion"]["version"] == str(v1)
    gain = evaluation["intervals"]["accuracy"]["difference"]
    assert gain["estimate"] >= NARROW_DELTA > gain["low"], gain
    why = (
        f"asked reviewers: accuracy difference lower bound {gain['low']:.4g} below threshold "
        f"{NARROW_DELTA:g}"
    )

    assert asked["status_code"] == 200, asked  # the approval task was reached and asked
    assert f"**Approval policy:** auto_if_confident: {why}" in asked["body"]
    assert result["tasks"]["approve_promotion"] == "success", result["tasks"]
    promote = result["promote"]
    assert promote["approval_policy"]["outcome"] == "ask", promote["approval_policy"]
    assert promote["approval_policy"]["confident"] is False
    assert promote["approval_policy"]["reason"].startswith(why)
    assert promote["outcome"] == "rejected", promote
    assert f"@champion unchanged (version {v1})" in promote["reason"]
    assert champion_of(client, name) == str(v1)
