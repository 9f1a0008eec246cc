"""The promotion workflow and the approval protocol in ``core``, without Airflow.

The full workflow (serving check, compare-and-set, record) runs through the operators in
``tests/test_promotion_dag.py`` and ``tests/test_registry.py``; here are its decisions and the
approval record, against the real MLflow server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from airflow_mlops.core.alias_moves import AliasMove
from airflow_mlops.core.approval import (
    APPROVE,
    REJECT,
    ApprovalError,
    ApprovalTask,
    approval_decision,
    approval_record,
    store_approval,
)
from airflow_mlops.core.errors import ConfigError, PromotionError
from airflow_mlops.core.promotion import check_promotion_inputs, promotion_gate, promotion_reason

QUALIFIED = {"promote": True, "reason": "promoted: all 2 applicable rule(s) passed"}


def test_the_promotion_modules_import_without_mlflow_or_airflow():
    """Operators import the approval protocol and the promotion constants at module level."""
    code = (
        "import sys, json\n"
        "import airflow_mlops.core.approval, airflow_mlops.core.promotion\n"
        "print(json.dumps(sorted(m for m in ('mlflow', 'airflow', 'pandas') if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


# -- gate, inputs, reason -------------------------------------------------------------------


def test_the_gate_moves_nothing_without_a_qualified_challenger_and_a_human_approve():
    refused = promotion_gate({"promote": False, "reason": "accuracy too low"}, None, "3")
    assert refused == ("not_promoted", "accuracy too low; @champion unchanged (version 3)")
    unanswered = {"answered": False, "approved": False, "by": None, "at": None}
    assert promotion_gate(QUALIFIED, unanswered, None, "approve") == (
        "not_approved",
        "no answer from approval task 'approve'; @champion unchanged (none)",
    )
    timed_out = {
        "answered": True,
        "approved": False,
        "by": None,
        "at": "t",
        "chosen_options": [APPROVE],
    }
    outcome, reason = promotion_gate(QUALIFIED, timed_out, None, "approve")
    assert outcome == "not_approved" and "no human answered" in reason
    rejected = {
        "answered": True,
        "approved": False,
        "by": "bob",
        "at": "t",
        "chosen_options": [REJECT],
    }
    assert promotion_gate(QUALIFIED, rejected, "3")[0] == "rejected"
    approved = {"answered": True, "approved": True, "by": "alice", "at": "t"}
    assert promotion_gate(QUALIFIED, approved, "3") == (None, None)
    assert promotion_gate(QUALIFIED, None, None) == (None, None)


def test_promotion_inputs_must_describe_the_same_model_and_run():
    evaluation = {
        **QUALIFIED,
        "challenger": {"run_id": "r1"},
        "policy": {},
        "model_name": "churn",
    }
    registration = {"model_name": "churn", "version": "4", "run_id": "r1"}
    check_promotion_inputs(evaluation, registration)
    with pytest.raises(ConfigError, match="evaluation lacks 'policy'"):
        check_promotion_inputs({k: v for k, v in evaluation.items() if k != "policy"}, registration)
    with pytest.raises(ConfigError, match="registration for 'other'"):
        check_promotion_inputs(evaluation, {**registration, "model_name": "other"})
    with pytest.raises(ConfigError, match="comes from run r2: they must match"):
        check_promotion_inputs(evaluation, {**registration, "run_id": "r2"})


def test_the_promotion_reason_says_what_moved():
    def move(outcome: str, **kw) -> AliasMove:
        return AliasMove(
            outcome, "churn", "champion", "4", kw.get("prev"), kw.get("cur"), **kw.get("extra", {})
        )

    assert promotion_reason(move("promoted", prev="3"), QUALIFIED) == (
        "@champion moved from version 3 to version 4: " + QUALIFIED["reason"]
    )
    assert promotion_reason(move("already_champion"), QUALIFIED) == (
        "version 4 already holds @champion (retry)"
    )
    lost = move(
        "not_promoted_after_reevaluation",
        cur="5",
        extra={"reevaluations": [{"reason": "accuracy: worse than version 5"}]},
    )
    assert promotion_reason(lost, QUALIFIED) == (
        "@champion moved to version 5 since evaluation; re-scored against it: "
        "accuracy: worse than version 5; @champion unchanged"
    )


# -- the approval record --------------------------------------------------------------------


@pytest.fixture
def version(client) -> tuple[str, str]:
    """A registered version of a throwaway model (no model files: only its tags are used)."""
    name = f"approval_{uuid.uuid4().hex[:8]}"
    run = client.create_run(client.create_experiment(f"exp_{name}"))
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    mv = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    return name, str(mv.version)


def _answer(client, name: str, version: str, task: ApprovalTask, option: str, by) -> None:
    store_approval(
        client,
        approval_record(
            task,
            model_name=name,
            version=version,
            chosen_options=[option],
            responded_by=by,
            responded_at="2026-01-01T00:00:00+00:00",
        ),
    )


def test_the_approval_is_decided_from_the_registry_record_only(client, version):
    name, v = version
    task = ApprovalTask("dag", "run_1", "approve_promotion")
    assert approval_decision(client, name, v, task, None)["answered"] is False
    forged = {"chosen_options": [APPROVE], "responded_by_user": {"id": "admin", "name": "admin"}}
    with pytest.raises(ApprovalError, match="recorded no human-in-the-loop answer"):
        approval_decision(client, name, v, task, forged)

    _answer(client, name, v, task, REJECT, {"id": "bob", "name": "bob"})
    with pytest.raises(ApprovalError, match="changed after the fact"):
        approval_decision(client, name, v, task, forged)
    assert approval_decision(client, name, v, task, None)["approved"] is False

    _answer(client, name, v, task, APPROVE, {"id": "alice", "name": "alice"})
    decision = approval_decision(client, name, v, task, None)
    assert decision["approved"] is True and decision["by"] == "alice"
    assert decision["record"] == task.tag_key
    # The record of another DAG run does not count for this one.
    assert (
        approval_decision(client, name, v, ApprovalTask("dag", "run_2", task.task_id), None)[
            "answered"
        ]
        is False
    )


def test_a_default_applied_at_timeout_is_not_a_human_approval(client, version):
    name, v = version
    task = ApprovalTask("dag", "run_1", "approve_promotion")
    _answer(client, name, v, task, APPROVE, None)
    decision = approval_decision(client, name, v, task, None)
    assert decision["answered"] is True and decision["approved"] is False and decision["by"] is None


# -- rollback target and freeze, on the registry ---------------------------------------------


def _actor(task: str, reason: str = "test", user: str | None = None):
    from airflow_mlops.core.alias_history import Actor
    from airflow_mlops.core.lineage import RunContext

    return Actor(
        reason=reason, context=RunContext(dag_id="d", run_id=task, task_id=task), user=user
    )


@pytest.fixture
def three_champions(client) -> tuple[str, list[str]]:
    """A model whose @champion went v1 -> v2 -> v3 through the provider (no model files)."""
    from airflow_mlops.core.alias_moves import promote_to_champion

    name = f"rb_{uuid.uuid4().hex[:8]}"
    run = client.create_run(client.create_experiment(f"exp_{name}"))
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    versions = []
    for i in range(3):
        mv = client.create_model_version(
            name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )
        previous = versions[-1] if versions else None
        promote_to_champion(
            client, name, str(mv.version), evaluated_champion=previous, actor=_actor(f"p{i}")
        )
        versions.append(str(mv.version))
    return name, versions


def test_a_second_rollback_goes_further_back_never_toggles(client, three_champions):
    """v3 -> v2 -> v1: the default target of the second rollback is v1, never v3 (the old
    target, the previous_version of the last move, was v3)."""
    from airflow_mlops.core.alias_history import alias_history
    from airflow_mlops.core.alias_moves import rollback_candidates, rollback_champion

    name, (v1, v2, v3) = three_champions
    first = rollback_champion(client, name, _actor("rb1", "v3 is bad", user="alice"))
    assert (first.outcome, first.previous_version, first.version) == ("rolled_back", v3, v2)
    second = rollback_champion(client, name, _actor("rb2", "v2 is bad too", user="bob"))
    assert (second.outcome, second.previous_version, second.version) == ("rolled_back", v2, v1)
    assert str(client.get_registered_model(name).aliases["champion"]) == v1
    with pytest.raises(PromotionError, match="no previous champion to roll back to"):
        rollback_champion(client, name, _actor("rb3"))
    rollbacks = [e for e in alias_history(client, name) if e["action"] == "rollback"]
    assert [(e["user"], e["reason"]) for e in rollbacks] == [
        ("alice", "v3 is bad"),
        ("bob", "v2 is bad too"),
    ]
    statuses = {r["version"]: r["status"] for r in rollback_candidates(client, name)}
    assert statuses == {v1: "current", v2: "rolled away from", v3: "rolled away from"}
    # An explicit former champion is still allowed (the operator chooses).
    back = rollback_champion(client, name, _actor("rb4", "v3 was fine"), to_version=v3)
    assert (back.previous_version, back.version) == (v1, v3)
    assert rollback_champion(client, name, _actor("rb5")).version == v1


def test_freeze_stops_promotions_until_unfrozen_and_lives_in_the_registry(
    client, three_champions, tracking
):
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_history import TAG_FROZEN, alias_history, freeze_state
    from airflow_mlops.core.alias_moves import promote_to_champion, rollback_champion, set_frozen

    name, (_, v2, v3) = three_champions
    frozen = set_frozen(client, name, _actor("f", "incident 42", user="ops"), frozen=True)
    assert frozen["outcome"] == "frozen"
    again = set_frozen(client, name, _actor("f2", "twice"), frozen=True)
    assert again["outcome"] == "already_frozen" and again["event"] is None
    # Another client (another process) reads the same record from the registry tag.
    state = freeze_state(MlflowClient(tracking), name)
    assert (state["user"], state["reason"]) == ("ops", "incident 42") and state["at"]
    assert json.loads(client.get_registered_model(name).tags[TAG_FROZEN])["reason"] == "incident 42"

    source = client.get_model_version(name, v3)
    new = client.create_model_version(name, source=source.source, run_id=source.run_id).version
    move = promote_to_champion(client, name, str(new), evaluated_champion=v3, actor=_actor("p"))
    assert move.outcome == "frozen" and move.frozen["reason"] == "incident 42"
    assert str(client.get_registered_model(name).aliases["champion"]) == v3
    # A rollback is the operator's action: allowed while frozen, and the freeze stays.
    assert rollback_champion(client, name, _actor("rb")).version == v2
    assert freeze_state(client, name) is not None

    unfrozen = set_frozen(client, name, _actor("u", "fixed", user="ops"), frozen=False)
    assert unfrozen["outcome"] == "unfrozen" and freeze_state(client, name) is None
    assert TAG_FROZEN not in client.get_registered_model(name).tags
    move = promote_to_champion(client, name, str(new), evaluated_champion=v2, actor=_actor("p2"))
    assert move.outcome == "promoted"
    actions = [e["action"] for e in alias_history(client, name)]
    assert actions[-4:] == ["freeze", "rollback", "unfreeze", "promote"]
