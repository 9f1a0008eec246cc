"""Manual approvals: the YAML fields, the body an approver reads, and the supersede and
timeout protocol on the real MLflow server fixture. The live answers (approve, timeout,
supersede, refusal of a non-assigned user) are in ``test_approvals_live.py``."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from test_pipelines import DATA, breast_cancer_config

from airflow_mlops.core.approval import (
    APPROVE,
    MAX_BODY_CHARS,
    REJECT,
    TAG_SUPERSEDED_BY,
    ApprovalTask,
    approval_body,
    approval_decision,
    approval_evidence,
    approval_record,
    mark_pending,
    newer_pending_version,
    read_superseded_by,
    store_approval,
    supersede_older,
)
from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.promotion import promotion_gate

TRAIN = DATA / "breast_cancer" / "reference.parquet"


def manual(**promotion):
    return breast_cancer_config(
        f"appr_{uuid.uuid4().hex[:6]}",
        TRAIN,
        promotion={"approval": "manual", "serving_check": False, **promotion},
    )


def test_yaml_fields_reach_the_approval_task_and_errors_name_the_field():
    from airflow_mlops.factories import continuous_training_dag

    config = manual(approvers=["reviewer", "lead"], timeout="3600", on_timeout="approve")
    assert config.promotion.timeout == 3600.0
    dag = continuous_training_dag(config)
    approval, promote = dag.get_task("approve_promotion"), dag.get_task("promote")
    assert approval.assigned_users == [
        {"id": "reviewer", "name": "reviewer"},
        {"id": "lead", "name": "lead"},
    ]
    assert approval.response_timeout.total_seconds() == 3600 and approval.defaults == [APPROVE]
    assert promote.approval_on_timeout == "approve"
    # A waiting approval must not hold up the next run (see factories/continuous_training.py).
    assert dag.max_active_runs == 2
    assert continuous_training_dag(breast_cancer_config("auto_x", TRAIN)).max_active_runs == 1
    plain = continuous_training_dag(manual()).get_task("approve_promotion")
    assert plain.assigned_users is None and plain.response_timeout is None
    assert plain.defaults is None

    for bad, message in [
        ({"timeout": "soon"}, r"promotion.timeout: .*must be seconds > 0, got 'soon'"),
        ({"timeout": 0}, r"promotion.timeout"),
        ({"on_timeout": "approve"}, r"promotion.on_timeout: approve needs promotion.timeout"),
        ({"on_timeout": "maybe"}, r"promotion.on_timeout"),
        ({"approvers": ["a", "a"]}, r"promotion.approvers lists a user twice"),
        ({"approvers": [""]}, r"promotion.approvers.0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            manual(**bad)
    with pytest.raises(ConfigError, match=r"promotion.approvers needs promotion.approval: manual"):
        breast_cancer_config("auto_y", TRAIN, promotion={"approvers": ["reviewer"]})


EVALUATION = {
    "promote": True,
    "reason": "promoted: all 2 rule(s) passed [rows compared 120, excluded 30]",
    "champion": {"version": "3"},
    "challenger_metrics": {"accuracy": 0.93, "f1": 0.9},
    "champion_metrics": {"accuracy": 0.9, "f1": 0.88},
    "intervals": {
        "accuracy": {
            "challenger": {"estimate": 0.93, "low": 0.9, "high": 0.96, "confidence": 0.95},
            "champion": {"estimate": 0.9, "low": 0.86, "high": 0.93, "confidence": 0.95},
            "difference": {"estimate": 0.03, "low": 0.01, "high": 0.05, "confidence": 0.95},
        },
        "f1": {"error": "too few positive rows"},
    },
    "comparison": {"rows_compared": 120, "rows_excluded": 30, "basis": "champion_manifest"},
    "holdout": {"uri": "/data/holdout.parquet", "rows": 150},
    "slice_metrics": {
        "region=north": {"rows": 60, "challenger": {"accuracy": 0.95}, "champion": None},
        "x](https://evil.example/steal)": {"rows": 1, "challenger": {}, "champion": {}},
    },
    "rules": [{"rule": "change.absolute", "verdict": "pass", "detail": "accuracy +0.03"}],
    "decision_artifact_uri": "mlflow-artifacts:/1/r/artifacts/mlops/decision.json",
}
REGISTRATION = {"model_name": "churn", "version": "4", "model_uri": "models:/churn/4"}


def test_body_shows_the_evidence_and_escapes_what_users_control():
    evidence = approval_evidence(
        run_tags={
            "mlops.data.uri": "s3://bucket/churn/",
            "mlops.data.window": "last 30 days",
            "mlops.data.files": "12",
            "mlops.data.rows": "48000",
            "mlops.data.manifest_hash": "ab" * 32,
        },
        validation={
            "success": True,
            "evaluated_expectations": 9,
            "failed_expectations": 0,
            "suite_name": "churn",
            "report_uri": "file:///reports/validation.json",
        },
        retrain_signal={
            "trigger": "drift",
            "reason": "drift: 4 of 10 columns drifted (share 0.40 >= 0.30)\n# injected heading",
            "report_uri": "https://reports.example/drift.html",
            "champion_version": "3",
        },
        links={"mlflow_version": "http://mlflow:5000/#/models/churn/versions/4"},
        approvers=["reviewer"],
        deadline="2026-12-03T12:00:00+00:00",
    )
    body = approval_body(EVALUATION, REGISTRATION, evidence)
    for shown in (
        "`churn` version **4**",
        "**Current champion:** version 3",
        "`s3://bucket/churn/`, window last 30 days, 12 file(s), 48000 rows, manifest hash "
        "`abababababababab`",
        "**Validation:** passed: 9 expectation(s), 0 failed",
        "**Retrain signal (drift):** drift: 4 of 10 columns drifted",
        "**Compared on:** 120 rows, 30 excluded",
        "| accuracy | 0.93 [0.9, 0.96] | 0.9 [0.86, 0.93] | +0.03 [+0.01, +0.05] (95%) |",
        "no interval: too few positive rows",
        "| region=north | 60 | accuracy 0.95 | - |",
        "| change.absolute | pass | accuracy +0.03 |",
        # Link text escaped (renders as the address), target kept.
        "[http://mlflow:5000/\\#/models/churn/versions/4](http://mlflow:5000/#/models/churn/versions/4)",
        "Drift/decay report: [https://reports.example/drift.html]",
        "Validation report: `file:///reports/validation.json`",
        "Approvers: reviewer.",
        "Unanswered by 2026-12-03T12:00:00+00:00, the answer is **Reject**",
    ):
        assert shown in body, (shown, body)
    # A slice or reason can neither add a link nor start a heading or a table row.
    assert "](https://evil.example" not in body and "x\\]\\(https://evil" in body
    assert not any(line.startswith("# ") for line in body.splitlines())
    assert "\\# injected heading" in body

    many = {
        **EVALUATION,
        "slice_metrics": {f"s{i}" * 40: {"rows": i} for i in range(500)},
        "rules": [{"rule": "r" * 200, "verdict": "pass", "detail": "d" * 400}] * 500,
    }
    assert len(approval_body(many, REGISTRATION, evidence)) <= MAX_BODY_CHARS


@pytest.fixture
def versions(client):
    """A registered model with four versions (no champion)."""
    name = f"appr_{uuid.uuid4().hex[:8]}"
    experiment = client.create_experiment(name)
    run = client.create_run(experiment)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    for _ in range(4):
        client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    return name


def answered(name: str, version: str, task: ApprovalTask, options, by, outcome="answered"):
    return approval_record(
        task,
        model_name=name,
        version=version,
        chosen_options=options,
        responded_by=by,
        responded_at="2026-12-02T10:00:00+00:00",
        outcome=outcome,
    )


def test_a_newer_challenger_supersedes_waiting_versions_and_they_never_promote(client, versions):
    name = versions
    task = ApprovalTask("ct__x", "run_1", "approve_promotion")
    for version in ("1", "2", "3"):
        mark_pending(client, name, version)
    # Version 1 was even approved just before: a superseded version still never promotes.
    store_approval(client, answered(name, "1", task, [APPROVE], {"id": "reviewer"}))
    by = {"dag_id": "ct__x", "run_id": "run_9", "at": "2026-12-02T11:00:00+00:00"}
    assert supersede_older(client, name, "3", by) == ["1", "2"]
    assert supersede_older(client, name, "3", by) == []  # idempotent: first tag kept
    assert json.loads(client.get_model_version(name, "1").tags[TAG_SUPERSEDED_BY]) == {
        **by,
        "version": "3",
    }
    assert read_superseded_by(client, name, "3") is None
    # A challenger reaching its approval after a newer one is superseded at once.
    assert newer_pending_version(client, name, "2") == "3"
    assert newer_pending_version(client, name, "3") is None

    xcom = {"chosen_options": [APPROVE], "responded_by_user": {"id": "reviewer"}}
    decision = approval_decision(client, name, "1", task, xcom)
    assert decision["outcome"] == "superseded" and decision["approved"] is False
    assert decision["superseded_by"] == "3"
    outcome, reason = promotion_gate({"promote": True}, decision, "none", "approve_promotion")
    assert outcome == "superseded"
    assert reason.startswith("superseded by version 3 (a newer qualifying challenger)")
    # A forged or garbled tag still only stops a promotion.
    client.set_model_version_tag(name, "4", TAG_SUPERSEDED_BY, "not json")
    assert read_superseded_by(client, name, "4") == {"version": "unknown"}


def test_a_timeout_is_recorded_as_nobody_answering(client, versions):
    name = versions
    task = ApprovalTask("ct__x", "run_2", "approve_promotion")
    store_approval(client, answered(name, "2", task, [REJECT], None, "timed_out"))
    decision = approval_decision(client, name, "2", task, None)
    assert decision["outcome"] == "timed_out" and decision["by"] is None
    assert not decision["approved"]
    outcome, reason = promotion_gate({"promote": True}, decision, "1", "approve_promotion")
    assert outcome == "timed_out"
    assert "nobody answered, the default ['Reject'] applied" in reason
    assert reason.endswith("@champion unchanged (version 1)")
    # on_timeout: approve — only the promote task's own setting lets the default approve.
    store_approval(client, answered(name, "2", task, [APPROVE], None, "timed_out"))
    assert approval_decision(client, name, "2", task, None)["approved"] is False
    approved = approval_decision(client, name, "2", task, None, on_timeout="approve")
    assert approved["approved"] is True and approved["by"] is None
    assert promotion_gate({"promote": True}, approved, "1", "approve_promotion") == (None, None)


def test_the_trigger_notices_the_supersede_tag_and_serializes(client, versions, mlflow_conn):
    from airflow_mlops.triggers.approval import SupersedableApprovalTrigger

    name = versions
    trigger = SupersedableApprovalTrigger(
        ti_id=uuid.uuid4(),
        options=[APPROVE, REJECT],
        defaults=[REJECT],
        params={},
        timeout_datetime=None,
        model_name=name,
        version="1",
        mlflow_conn_id=mlflow_conn,
        supersede_poll_interval=2,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_mlops.triggers.approval.SupersedableApprovalTrigger"
    assert SupersedableApprovalTrigger(**kwargs).serialize() == (classpath, kwargs)
    assert asyncio.run(trigger._check_superseded()) is None
    mark_pending(client, name, "1")
    supersede_older(client, name, "2", {"dag_id": "d", "run_id": "r", "at": "t"})
    event = asyncio.run(trigger._check_superseded())
    assert event.payload["superseded_by"]["version"] == "2"
