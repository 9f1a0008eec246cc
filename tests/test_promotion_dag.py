"""The promotion pipeline through Airflow's real task runner (``dag.test()``) and MLflow server.

train (TrainModelOperator) -> evaluate -> register -> [approval -> gate] -> promote, then a
rollback DAG triggered with params, and the human-in-the-loop approve / reject paths: the
approval task parks in ``awaiting_input`` and a human answer is posted to Airflow's real
Core API (``PATCH .../hitlDetails``, the endpoint the Required Actions UI calls) from
another thread while ``dag.test()`` waits for it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pandas as pd
import pytest
from conftest import serialize_dag, task_states
from test_evaluation import BEST, STUMP, WORST, make_dataset, unique_name

from airflow_mlops.core.errors import ConfigError

POLICY = {
    "value_thresholds": {"accuracy": {"lower": 0.6}},
    "change_thresholds": {"accuracy": {"direction": "higher", "min_delta": 0.0}},
}
COLLECTED: dict[str, Any] = {}


def build_pipeline(dag_id: str, data_uri: str, model_name: str, estimator, approval: str = "auto"):
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
            policy=POLICY,
            model_name=model_name,
            slices={"group": ["a", "b"]},
            approval=approval,
        )

        @task(trigger_rule="all_done")
        def collect(**context) -> None:
            ti = context["ti"]
            for task_id in ("evaluate", "register", "approve_promotion", "promote"):
                COLLECTED[task_id] = ti.xcom_pull(task_ids=task_id)

        tasks.promote >> collect()
    return dag


def run(dag, **conf) -> dict[str, Any]:
    COLLECTED.clear()
    serialize_dag(dag)
    dr = dag.test(run_conf=conf or None)
    states = {task_id: state for (task_id, _), state in task_states(dr).items()}
    return {"state": dr.state, "tasks": states, **json.loads(json.dumps(COLLECTED, default=str))}


def _collector(task_id: str):
    from airflow.sdk import task

    @task(task_id=f"collect_{task_id}", trigger_rule="all_done")
    def collect(**context) -> None:
        COLLECTED[task_id] = context["ti"].xcom_pull(task_ids=task_id)

    return collect()


def champion_asset_events(name: str) -> list[dict]:
    """Asset events emitted for champion_asset(name) (only when @champion really moved)."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .filter(AssetModel.uri == f"mlops://models/{name}/champion")
            .order_by(AssetEvent.id)
            .all()
        )
    return [dict(r.extra or {}) for r in rows]


def champion_of(client, name: str) -> str | None:
    version = client.get_registered_model(name).aliases.get("champion")
    return None if version is None else str(version)


# -- the automatic pipeline -----------------------------------------------------------------


def test_pipeline_first_worse_better_then_rollback_from_params(client, airflow_tracking, tmp_path):
    from airflow.sdk import DAG

    from airflow_mlops.core.alias_history import alias_history
    from airflow_mlops.factories.promotion import rollback_dag_params
    from airflow_mlops.operators.registry import RollbackModelOperator

    name = unique_name("pipe")
    data = make_dataset(tmp_path / "d.csv")

    first = run(build_pipeline("promo_first", data, name, STUMP))
    assert first["tasks"]["promote"] == "success", first
    assert first["evaluate"]["first_model"] is True and first["evaluate"]["promote"] is True
    assert first["register"]["created"] is True and first["register"]["challenger_move"] == "set"
    assert first["promote"]["outcome"] == "promoted"
    assert first["promote"]["serving_check"]["ok"] is True
    v1 = first["register"]["version"]
    assert champion_of(client, name) == v1

    worse = run(build_pipeline("promo_worse", data, name, WORST))
    assert worse["evaluate"]["promote"] is False
    assert worse["promote"]["outcome"] == "not_promoted"
    assert worse["promote"]["serving_check"] is None  # nothing to move, nothing to check
    assert "not promoted" in worse["promote"]["reason"]
    assert f"@champion unchanged (version {v1})" in worse["promote"]["reason"]
    assert champion_of(client, name) == v1
    assert (
        str(client.get_registered_model(name).aliases["challenger"]) == worse["register"]["version"]
    )

    better = run(build_pipeline("promo_better", data, name, BEST))
    assert better["promote"]["outcome"] == "promoted"
    v3 = better["register"]["version"]
    assert champion_of(client, name) == v3
    assert better["promote"]["previous_champion_version"] == v1
    event = better["promote"]["history_event"]
    assert event["by"].startswith("airflow:promo_better/") and event["previous_version"] == v1

    # The decision and promotion records are stored on the challenger's run.
    import mlflow

    stored = mlflow.artifacts.load_dict(better["promote"]["promotion_artifact_uri"])
    assert (
        stored["outcome"] == "promoted"
        and stored["decision"]["reason"] == better["evaluate"]["reason"]
    )
    tags = client.get_run(better["evaluate"]["challenger"]["run_id"]).data.tags
    assert (
        tags["mlops.promotion.outcome"] == "promoted" and tags["mlops.decision.promote"] == "true"
    )

    # Rollback DAG, triggered the way the UI form does it: with params. The model is pinned
    # in the DAG file; the params choose only a former champion and the reason.
    assert "model_name" not in rollback_dag_params(name)
    with DAG("promo_rollback", schedule=None, params=rollback_dag_params(name)) as rollback_dag:
        rollback = RollbackModelOperator(
            task_id="rollback",
            model_name=name,
            to_version="{{ params.to_version or '' }}",
            reason="{{ params.reason }}",
        )
        rollback >> _collector("rollback")
    serialize_dag(rollback_dag)
    rejected = worse["register"]["version"]  # the policy refused it: never champion
    dr = rollback_dag.test(run_conf={"to_version": rejected, "reason": "try the rejected one"})
    assert task_states(dr)[("rollback", -1)] == "failed" and champion_of(client, name) == v3
    COLLECTED.clear()
    dr = rollback_dag.test(run_conf={"to_version": None, "reason": "v3 misbehaves in prod"})
    assert task_states(dr)[("rollback", -1)] == "success"
    assert champion_of(client, name) == v1
    assert COLLECTED["rollback"]["serving_check"]["ok"] is True  # checked before the move
    last = alias_history(client, name)[-1]
    assert (last["action"], last["version"], last["previous_version"]) == ("rollback", v1, v3)
    assert last["reason"] == "v3 misbehaves in prod"
    champion_moves = [e["version"] for e in alias_history(client, name) if e["alias"] == "champion"]
    assert champion_moves == [v1, v3, v1]
    # Downstream DAGs hear of each move, and only of moves (the rejected run emitted nothing).
    events = champion_asset_events(name)
    assert [e.get("version") for e in events] == [v1, v3, v1], events
    assert events[-1].get("rollback") is True


def test_serving_check_failure_blocks_the_move_and_is_recorded(
    client, airflow_tracking, tmp_path, run_dag
):
    """A version that loads here but not in a consumer's fresh process never becomes champion."""
    import mlflow
    from airflow.sdk import DAG
    from test_evaluation import train
    from test_registry import OnlyImportableHere

    from airflow_mlops.core.evaluation import challenger_from_training, evaluate_challenger
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import register_version
    from airflow_mlops.core.storage import Storage
    from airflow_mlops.operators.registry import PromoteModelOperator

    name = unique_name("serve")
    result = train(airflow_tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    record = evaluate_challenger(
        client, Storage(), challenger_from_training(client, result), model_name=name, policy=POLICY
    ).record
    assert record["promote"] is True
    with mlflow.start_run(run_id=result["run_id"]):  # same run: a broken packaging of it
        broken = mlflow.pyfunc.log_model(
            name="broken", python_model=OnlyImportableHere(), pip_requirements=["mlflow"]
        )
        # The run names it as its model, so it passes the provenance check: what fails is
        # loading it where a consumer runs.
        mlflow.set_tag("mlops.model_uri", broken.model_uri)
    registration = register_version(
        client, name, broken.model_uri, context=RunContext(task_id="r"), run_id=result["run_id"]
    ).to_dict()
    with DAG("promo_broken", schedule=None) as dag:
        PromoteModelOperator(task_id="promote", evaluation=record, registration=registration)
    dr = run_dag(dag)
    assert dr.state == "failed"
    assert "champion" not in client.get_registered_model(name).aliases
    stored = mlflow.artifacts.load_dict(
        f"{client.get_run(result['run_id']).info.artifact_uri}/mlops/promotion.json"
    )
    assert stored["outcome"] == "serving_check_failed"
    assert (
        stored["serving_check"]["ok"] is False
        and "test_registry" in stored["serving_check"]["error"]
    )


def test_a_forged_or_edited_approval_xcom_does_not_promote(
    client, airflow_tracking, tmp_path, run_dag
):
    """Airflow's USER role may create/patch XCom through the REST API; the promote task must
    not take an approval from there. The forgery is written with ``xcom_push`` from a task
    standing in for the approval task: it stores the same XCom row as the REST API's
    ``PATCH .../xcomEntries/mlops_approval`` would."""
    from airflow.sdk import DAG, task
    from test_evaluation import train

    from airflow_mlops.core.approval import (
        APPROVAL_XCOM_KEY,
        ApprovalTask,
        approval_record,
        store_approval,
    )
    from airflow_mlops.core.evaluation import challenger_from_training, evaluate_challenger
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import register_version
    from airflow_mlops.core.storage import Storage
    from airflow_mlops.operators.registry import PromoteModelOperator

    name = unique_name("forged")
    result = train(airflow_tracking, make_dataset(tmp_path / "d.csv"), STUMP, model_name=name)
    record = evaluate_challenger(
        client, Storage(), challenger_from_training(client, result), model_name=name, policy=POLICY
    ).record
    assert record["promote"] is True  # the policy alone would promote it
    registration = register_version(
        client, name, result["model_uri"], context=RunContext(task_id="r"), run_id=result["run_id"]
    ).to_dict()
    forged = {
        "chosen_options": ["Approve"],
        "responded_by_user": {"id": "admin", "name": "admin"},
        "responded_at": "2026-01-01T00:00:00+00:00",
    }

    def promotion_dag(dag_id: str, real_answer: str | None):
        with DAG(dag_id, schedule=None) as dag:

            @task(task_id="approve_promotion")
            def approve(**context) -> None:
                ti = context["ti"]
                if real_answer:  # what PromotionApprovalOperator records from Airflow's answer
                    from mlflow.tracking import MlflowClient

                    store_approval(
                        MlflowClient(airflow_tracking),
                        approval_record(
                            ApprovalTask(ti.dag_id, ti.run_id, ti.task_id),
                            model_name=name,
                            version=registration["version"],
                            chosen_options=[real_answer],
                            responded_by={"id": "alice", "name": "alice"},
                            responded_at="2026-01-01T00:00:00+00:00",
                        ),
                    )
                ti.xcom_push(key=APPROVAL_XCOM_KEY, value=forged)  # the forgery

            promote = PromoteModelOperator(
                task_id="promote",
                evaluation=record,
                registration=registration,
                approval_task_id="approve_promotion",
                serving_check=False,
            )
            approve() >> promote
        return dag

    for dag_id, real_answer in (("forged_no_answer", None), ("forged_over_reject", "Reject")):
        dr = run_dag(promotion_dag(f"{dag_id}_{uuid.uuid4().hex[:6]}", real_answer))
        states = {t: state for (t, _), state in task_states(dr).items()}
        assert states["promote"] == "failed", (dag_id, states)
        assert "champion" not in client.get_registered_model(name).aliases, dag_id


def test_operators_refuse_bad_configuration_at_parse_time():
    from airflow_mlops.core.promotion import promotion_gate
    from airflow_mlops.factories.promotion import promotion_tasks
    from airflow_mlops.operators.evaluation import EvaluateModelOperator
    from airflow_mlops.operators.registry import PromoteModelOperator

    with pytest.raises(ConfigError, match="the policy has no rule"):
        EvaluateModelOperator(task_id="e", training_result={}, policy={})
    templated = EvaluateModelOperator(
        task_id="e2", training_result={}, policy="{{ params.policy }}"
    )
    assert templated.policy == "{{ params.policy }}"  # rendered and checked at run time
    with pytest.raises(ConfigError, match="on_champion_changed"):
        PromoteModelOperator(
            task_id="p", evaluation={}, registration={}, on_champion_changed="yolo"
        )
    with pytest.raises(ConfigError, match="approval must be 'auto' or 'manual'"):
        promotion_tasks(training_result={}, policy=POLICY, approval="sometimes")
    from airflow_mlops.operators.registry import RollbackModelOperator

    with pytest.raises(ConfigError, match="a rollback DAG must pin its model"):
        RollbackModelOperator(task_id="rb", model_name="{{ params.model_name }}")
    assert "model_name" not in RollbackModelOperator.template_fields
    # A default applied at response_timeout has no responder: not a human approval.
    timed_out = {"answered": True, "approved": False, "by": None, "at": "t"}
    outcome, reason = promotion_gate(
        {"promote": True}, {**timed_out, "chosen_options": ["Approve"]}, None, "approve"
    )
    assert outcome == "not_approved" and "no human answered" in reason
    assert {"training_result", "policy", "slices", "model_name"} <= set(
        EvaluateModelOperator.template_fields
    )


def test_approval_body_shows_the_decision():
    from airflow_mlops.core.approval import approval_body

    evaluation = {
        "reason": "promoted: all 2 applicable rule(s) passed",
        "champion": {"version": "3"},
        "challenger_metrics": {"accuracy": 0.91},
        "champion_metrics": {"accuracy": 0.88},
        "rules": [
            {"rule": "change.absolute", "verdict": "pass", "detail": "accuracy: improvement 0.03"}
        ],
        "holdout": {"uri": "s3://b/h.parquet", "rows": 80},
        "decision_artifact_uri": "mlflow-artifacts:/1/r/artifacts/mlops/decision.json",
    }
    body = approval_body(
        evaluation, {"model_name": "churn", "version": "4", "model_uri": "models:/churn/4"}
    )
    assert "`churn` version **4**" in body and "**Current champion:** version 3" in body
    assert "| accuracy | 0.91 | 0.88 |" in body
    assert "| change.absolute | pass | accuracy: improvement 0.03 |" in body
    assert "mlops/decision.json" in body


# -- human in the loop ----------------------------------------------------------------------


class HumanResponder:
    """Answers an approval task through the real Core API while ``dag.test()`` waits for it.

    Everything that imports modules or configures SQLAlchemy mappers happens in the main
    thread (``__init__``): doing it in the responder thread while ``dag.test()`` imports in
    the main thread deadlocks on Python's import locks.
    """

    def __init__(self, dag_id: str, task_id: str, option: str, timeout: float = 600) -> None:
        from airflow.api_fastapi.app import create_app
        from fastapi.testclient import TestClient

        self.dag_id, self.task_id, self.option, self.timeout = dag_id, task_id, option, timeout
        self.api = TestClient(create_app("core"))
        self.found: dict[str, Any] = {}
        self.errors: list[BaseException] = []
        self._parked()  # warm up: mappers configured here, in the main thread
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _parked(self) -> Any:
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            return (
                session.query(
                    TaskInstance.id,
                    TaskInstance.run_id,
                    TaskInstance.state,
                    HITLDetail.body,
                    HITLDetail.subject,
                )
                .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
                .filter(
                    TaskInstance.dag_id == self.dag_id,
                    TaskInstance.task_id == self.task_id,
                    TaskInstance.state == "awaiting_input",
                )
                .first()
            )

    def _run(self) -> None:
        row = None
        try:
            deadline = time.monotonic() + self.timeout
            while (row := self._parked()) is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.dag_id}.{self.task_id} never asked for input")
                time.sleep(1)
            self.found.update(run_id=row.run_id, body=row.body, subject=row.subject)
            response = self.api.patch(
                f"/api/v2/dags/{self.dag_id}/dagRuns/{row.run_id}/taskInstances/"
                f"{self.task_id}/-1/hitlDetails",
                json={"chosen_options": [self.option], "params_input": {}},
            )
            self.found.update(status_code=response.status_code, response=response.json())
            if response.status_code != 200:
                raise AssertionError(f"HITL answer refused: {response.status_code} {response.text}")
        except BaseException as err:
            self.errors.append(err)
            self._fail_parked_task()  # or dag.test() would wait for an answer forever

    def _fail_parked_task(self) -> None:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            session.query(TaskInstance).filter(
                TaskInstance.dag_id == self.dag_id,
                TaskInstance.task_id == self.task_id,
                TaskInstance.state == "awaiting_input",
            ).update({"state": "failed"}, synchronize_session=False)


def run_with_answer(dag, option: str) -> tuple[dict[str, Any], dict[str, Any]]:
    serialize_dag(dag)
    responder = HumanResponder(dag.dag_id, "approve_promotion", option)
    responder.thread.start()
    result = run(dag)
    responder.thread.join(timeout=60)
    assert not responder.errors, responder.errors
    return result, responder.found


@pytest.mark.slow
def test_manual_approval_approve_then_reject(client, airflow_tracking, tmp_path, monkeypatch):
    # The in-process Core API authenticates every request as an admin (simple auth manager).
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    name = unique_name("hitl")
    data = make_dataset(tmp_path / "d.csv")

    approved, asked = run_with_answer(
        build_pipeline(
            f"hitl_approve_{uuid.uuid4().hex[:6]}", data, name, STUMP, approval="manual"
        ),
        "Approve",
    )
    assert asked["status_code"] == 200, asked
    assert asked["subject"] == f"Promote {name} version 1 to @champion?"
    assert "**Policy verdict:** promoted: first model" in asked["body"]
    assert "| accuracy |" in asked["body"]
    assert approved["tasks"]["approve_promotion"] == "success"
    assert approved["approve_promotion"]["chosen_options"] == ["Approve"]
    promote = approved["promote"]
    assert promote["outcome"] == "promoted", promote
    assert promote["approval"]["approved"] is True and promote["approval"]["by"]
    assert promote["history_event"]["user"] == promote["approval"]["by"]
    assert champion_of(client, name) == "1"
    # The answer the promote task trusted: recorded on the version from Airflow's HITL answer.
    stored = json.loads(client.get_model_version(name, "1").tags[promote["approval"]["record"]])
    assert stored["chosen_options"] == ["Approve"]
    assert stored["responded_by_user"]["name"] == promote["approval"]["by"]
    assert stored["task_id"] == "approve_promotion"

    rejected, asked = run_with_answer(
        build_pipeline(f"hitl_reject_{uuid.uuid4().hex[:6]}", data, name, BEST, approval="manual"),
        "Reject",
    )
    assert asked["status_code"] == 200, asked
    assert rejected["evaluate"]["promote"] is True  # the policy would have promoted it
    assert rejected["tasks"]["approval_gate"] == "skipped"
    assert rejected["tasks"]["promote"] == "success"
    promote = rejected["promote"]
    assert promote["outcome"] == "rejected" and promote["promoted"] is False
    assert promote["reason"].startswith(f"rejected by {promote['approval']['by']}")
    assert "@champion unchanged (version 1)" in promote["reason"]
    assert champion_of(client, name) == "1"
    assert promote["champion_version"] == "1"
    run_id = rejected["evaluate"]["challenger"]["run_id"]
    assert client.get_run(run_id).data.tags["mlops.promotion.outcome"] == "rejected"


def test_policy_rejection_skips_the_approval_question(client, airflow_tracking, tmp_path):
    """No human is asked to approve a challenger the policy already refused."""
    name = unique_name("hitl")
    data = make_dataset(tmp_path / "d.csv")
    # Value threshold the constant model cannot meet: refused even as the first model.
    result = run(
        build_pipeline(f"hitl_skip_{uuid.uuid4().hex[:6]}", data, name, WORST, approval="manual")
    )
    assert result["tasks"]["approve_promotion"] == "skipped"
    assert result["promote"]["outcome"] == "not_promoted"
    assert "champion" not in client.get_registered_model(name).aliases
    assert isinstance(pd.__version__, str)


# -- the generated rollback DAG -------------------------------------------------------------


def test_generated_rollback_dag_goes_further_back_and_records_who_and_why(
    client, airflow_tracking, tmp_path, run_dag
):
    """``rollback__<name>`` from a pipeline config, triggered twice as the UI form does:
    v3 -> v2 -> v1 (never back to v3), each run audited with the triggering user, the
    ``requested_by`` of the form and the required reason."""
    from airflow.sdk.exceptions import ParamValidationError
    from conftest import stored_xcom
    from test_evaluation import train
    from test_registry import actor

    from airflow_mlops.core.alias_history import alias_history
    from airflow_mlops.core.alias_moves import promote_to_champion
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import register_version
    from airflow_mlops.factories import parse_config
    from airflow_mlops.factories.rollback import rollback_dag

    name = unique_name("gen-rb")
    data = make_dataset(tmp_path / "d.csv")
    result = train(airflow_tracking, data, STUMP, model_name=name)
    versions = []
    for i in range(3):  # three champions of one trained model: the rollback is what is tested
        v = register_version(
            client, name, result["model_uri"], context=RunContext(task_id=f"r{i}")
        ).version
        promote_to_champion(
            client,
            name,
            v,
            evaluated_champion=versions[-1] if versions else None,
            actor=actor(f"p{i}"),
        )
        versions.append(v)
    v1, v2, v3 = versions
    config = parse_config({"name": name, "data": {"train_uri": data, "target": "label"}})
    dag = rollback_dag(config)
    assert dag.dag_id == f"rollback__{name}"
    assert {"to_version", "reason", "requested_by"} == set(dag.params)
    first = run_dag(dag, reason="v3 misbehaves in prod", requested_by="alice")
    states = {t: s for (t, _), s in task_states(first).items()}
    assert states == {"champion_history": "success", "rollback": "success"}, states
    assert champion_of(client, name) == v2
    # The form sends every field; dag.test() runs in-process and would keep the last conf.
    second = run_dag(dag, reason="v2 too", requested_by=None, to_version=None)
    assert {t: s for (t, _), s in task_states(second).items()}["rollback"] == "success"
    assert champion_of(client, name) == v1  # further back, not toggled to v3

    rollbacks = [e for e in alias_history(client, name) if e["action"] == "rollback"]
    assert [(e["previous_version"], e["version"]) for e in rollbacks] == [(v3, v2), (v2, v1)]
    assert [e["reason"] for e in rollbacks] == ["v3 misbehaves in prod", "v2 too"]
    # dag.test() triggers as "dag_test"; the form's requested_by is recorded beside it.
    assert [e["user"] for e in rollbacks] == ["dag_test (for alice)", "dag_test"]
    assert rollbacks[0]["dag_id"] == dag.dag_id

    listed = stored_xcom(second, "champion_history")
    assert [(r["version"], r["status"]) for r in listed][:1] == [(v2, "current")]
    assert {r["version"]: r["status"] for r in listed}[v1] == "default target"
    result = stored_xcom(second, "rollback")
    assert result["serving_check"]["ok"] is True and result["user"] == "dag_test"
    # No reason: the form refuses it (a required param without default).
    with pytest.raises(ParamValidationError, match="reason"):
        dag.params.validate()
