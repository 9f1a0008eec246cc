"""Manual promotion approvals on a real Airflow: scheduler, dag-processor, triggerer and
api-server (``tests/_airflow_stack.py``) with the real MLflow server fixture.

One stack serves every case; each case is its own pipeline (CT DAG) in one DAG file, so the
runs proceed side by side: approve (and a non-assigned user refused), timeout, and supersede
(whose second, newer request is then rejected). Answers go through Airflow's REST API
(``PATCH /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/approve_promotion/-1/hitlDetails``)
signed in as the assigned user ``reviewer``; ``other`` is refused (403). The approval
notifications go to a local HTTP server standing in for a Slack webhook. Nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import urllib.error
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from _airflow_stack import AirflowStack, quote
from conftest import mlflow_connection_env
from devkit import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "include" / "data" / "breast_cancer"
CASES = ("supersede", "approve", "timeout")  # the longest path is triggered first
TIMEOUT_SECONDS = 20

# One small DAG file per case (a task parses only its own file): a CT DAG built by the factory
# on the bundled breast-cancer data with a five-tree forest, no validation, no serving check.
DAG_FILE = """\
from airflow_mlops.factories import continuous_training_dag, parse_config
from airflow_mlops.factories.rollback import operations_dags

raw = {{
    "name": {name!r},
    "retries": 0,
    "data": {{"train_uri": {data!r} + "/reference.parquet", "target": "benign",
              "allowed_prefixes": [{data!r}]}},
    "validation": {{"enabled": False}},
    "training": {{
        "estimator": "sklearn.ensemble.RandomForestClassifier",
        "params": {{"n_estimators": 5, "max_depth": 3, "random_state": 0}},
        "holdout_fraction": 0.3,
    }},
    "promotion": {{"approval": "manual", "approvers": ["reviewer"], "serving_check": False,
                   **{promotion!r}}},
    "monitoring": {{"enabled": False}},
    "notifications": {notifications!r},
}}
config = parse_config(raw, source={name!r})
dag = continuous_training_dag(config)
for operations in operations_dags(config):  # rollback__ and freeze__, triggered from the UI
    globals()[operations.dag_id] = operations
"""
NOTIFICATIONS = {
    "notifiers": {"approvers": {"type": "slack_webhook", "http_conn_id": "slack_approvers"}},
    "events": {"approval_pending": ["approvers"], "approval_timed_out": ["approvers"]},
}


def write_dag_files(folder: Path, suffix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        timeout = case == "timeout"
        text = DAG_FILE.format(
            name=f"appr_{case}_{suffix}",
            data=str(DATA),
            promotion={"timeout": TIMEOUT_SECONDS} if timeout else {},
            notifications=NOTIFICATIONS if timeout else {},
        )
        (folder / f"approvals_{case}.py").write_text(text)


class Webhook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        Webhook.received.append(json.loads(self.rfile.read(length) or b"{}"))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def live(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The stack with the four pipelines parsed and the first run of each triggered."""
    webhook = ThreadingHTTPServer(("127.0.0.1", free_port()), Webhook)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    root = tmp_path_factory.mktemp("approvals_live")
    suffix = uuid.uuid4().hex[:6]
    stack = AirflowStack(
        root,
        users={"admin": "admin", "reviewer": "user", "other": "user"},
        extra_env={
            "AIRFLOW_CONN_MLFLOW_DEFAULT": mlflow_connection_env(mlflow_server),
            "AIRFLOW_CONN_SLACK_APPROVERS": json.dumps(
                {
                    "conn_type": "http",
                    "host": f"http://127.0.0.1:{webhook.server_port}",
                    "password": "/services/T0/B0/approvers",
                }
            ),
            "AIRFLOW__MLOPS__APPROVAL_SUPERSEDE_POLL_SECONDS": "2",
            "AIRFLOW__MLOPS__NOTIFICATION_RETRY_DELAY_SECONDS": "0",
            "AIRFLOW__MLOPS__ARTIFACTS_URI": str(root / "mlops_artifacts"),
        },
    )
    write_dag_files(root / "dags", suffix)
    try:
        stack.start()
        admin = stack.api("admin")
        dags = {case: f"ct__appr_{case}_{suffix}" for case in CASES}
        stack.wait_for_dags(admin, list(dags.values()), timeout_s=120)
        runs = {case: trigger(admin, dag_id) for case, dag_id in dags.items()}
        live = {
            "stack": stack,
            "admin": admin,
            "reviewer": stack.api("reviewer"),
            "other": stack.api("other"),
            "dags": dags,
            "runs": runs,
            "model": {case: f"appr_{case}_{suffix}" for case in CASES},
        }
        # The supersede case's second run starts once the first one's register task runs: the
        # second needs three tasks more before its own register, so the versions are numbered
        # in run order. Started here rather than in its test, it trains while the other
        # cases' tests run.
        wait_task(live, "supersede", "register", {"running", "success"})
        live["second"] = trigger(admin, dags["supersede"])
        yield live
    except BaseException:
        print(stack.log_tails(60))
        raise
    finally:
        stack.stop()
        webhook.shutdown()


def trigger(api: Any, dag_id: str) -> str:
    run = api.call("POST", f"/api/v2/dags/{quote(dag_id)}/dagRuns", {"logical_date": None})
    return run["dag_run_id"]


def task_state(api: Any, dag_id: str, run_id: str, task_id: str) -> str | None:
    path = f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}/taskInstances/{task_id}"
    try:
        return api.call("GET", path).get("state")
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def wait_task(live: dict, case: str, task_id: str, states: set[str], run_id: str | None = None):
    """Wait until the task of the case's run reaches one of ``states``; returns the state."""
    dag_id, run_id = live["dags"][case], run_id or live["runs"][case]
    deadline = time.monotonic() + 240
    state = None
    while time.monotonic() < deadline:
        state = task_state(live["admin"], dag_id, run_id, task_id)
        if state in states:
            return state
        if state in {"failed", "upstream_failed"}:
            break
        time.sleep(0.5)
    raise AssertionError(
        f"{case}: {task_id} is {state}, expected {states}\n{live['stack'].log_tails(40)}"
    )


def wait_run(live: dict, case: str, run_id: str | None = None) -> str:
    return run_end(live, live["dags"][case], run_id or live["runs"][case], timeout_s=240)


def xcom(live: dict, case: str, task_id: str, key: str = "return_value", run_id: str = "") -> Any:
    dag_id, run_id = live["dags"][case], run_id or live["runs"][case]
    path = (
        f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}/taskInstances/{task_id}"
        f"/xcomEntries/{key}?deserialize=true"
    )
    return live["admin"].call("GET", path)["value"]


def hitl_path(live: dict, case: str, run_id: str | None = None) -> str:
    dag_id, run_id = live["dags"][case], run_id or live["runs"][case]
    return (
        f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}/taskInstances/"
        "approve_promotion/-1/hitlDetails"
    )


# Airflow 3.3 race (seen under load on the full suite): the LocalExecutor reports the
# deferring try's process exit as "success"; if an answer re-queues the task before the
# scheduler has handled that event, the scheduler sees a queued task reported finished and
# marks it failed. A person never answers within seconds of the request appearing; the tests
# answer no earlier than this long after the request was made (its ``created_at``), and only
# once the task is seen deferred.
ANSWER_SETTLE_SECONDS = 8


def answer(api: Any, path: str, option: str, *, settle: bool = True) -> Any:
    if settle:
        created = dt.datetime.fromisoformat(api.call("GET", path)["created_at"])
        age = (dt.datetime.now(dt.timezone.utc) - created).total_seconds()
        time.sleep(max(0.0, ANSWER_SETTLE_SECONDS - age))
    return api.call("PATCH", path, {"chosen_options": [option], "params_input": {}})


def as_dict(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def test_assigned_user_approves_and_anyone_else_is_refused(live):
    wait_task(live, "approve", "approve_promotion", {"deferred"})
    path = hitl_path(live, "approve")
    detail = live["reviewer"].call("GET", path)
    model = live["model"]["approve"]
    assert detail["subject"] == f"Promote {model} version 1 to @champion?"
    assert [u["id"] for u in detail["assigned_users"]] == ["reviewer"]
    body = detail["body"]
    for evidence in ("**Data:**", "manifest hash", "#### Metrics", "| accuracy |", "MLflow"):
        assert evidence in body, body
    with pytest.raises(urllib.error.HTTPError) as refused:
        answer(live["other"], path, "Approve", settle=False)  # refused: nothing re-queued
    assert refused.value.code == 403
    see_the_request_on_the_mlops_page(live, model)
    assert answer(live["reviewer"], path, "Approve")["responded_by"]["id"] == "reviewer"
    assert wait_run(live, "approve") == "success"
    promote = as_dict(xcom(live, "approve", "promote"))
    assert promote["outcome"] == "promoted", promote
    assert promote["approval"]["by"] == "reviewer" and promote["champion_version"] == "1"


def see_the_request_on_the_mlops_page(live: dict, model: str) -> None:
    """The reviewer, in headless Chromium, finds the waiting request on the MLOps page and
    follows its link to Airflow's own form for it (screenshots in test-artifacts/)."""
    from devkit import ensure_binary
    from e2e._browser import Browser

    ensure_binary("chromium", "chromium")
    shots = ROOT / "test-artifacts" / "page-states"
    shots.mkdir(parents=True, exist_ok=True)
    url = live["stack"].url
    card = f'[data-model="{model}"]'
    with Browser(width=1280, height=900) as browser:
        browser.set_cookie(url, "_token", live["reviewer"].token)
        browser.goto(f"{url}/mlops/", settle_s=0.5)
        browser.wait_for_text(model, timeout_s=90)
        text = browser.js(f"document.querySelector('{card} [data-approval]').innerText")
        assert "Approval pending for v1" in text, text
        href = browser.js(f"document.querySelector('{card} [data-approval-link]').href")
        browser.screenshot_element(card, shots / "pending-approval-live.png")
        browser.goto(href, settle_s=0.5)
        browser.wait_for_text(f"Promote {model} version 1 to @champion", timeout_s=60)
        browser.screenshot(shots / "approval-form-live.png")


def trigger_as(api: Any, dag_id: str, conf: dict[str, Any]) -> str:
    body = {"logical_date": None, "conf": conf}
    return api.call("POST", f"/api/v2/dags/{quote(dag_id)}/dagRuns", body)["dag_run_id"]


def run_end(live: dict, dag_id: str, run_id: str, timeout_s: float = 180) -> str:
    """The run's end state (``success``/``failed``); fails with the stack's logs on timeout."""
    path = f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = live["admin"].call("GET", path)["state"]
        if state in {"success", "failed"}:
            return state
        time.sleep(0.5)
    raise AssertionError(f"{dag_id} run {run_id} still {state}\n{live['stack'].log_tails(40)}")


def test_operations_freeze_and_unfreeze_from_the_trigger_form_and_rollback_fails_closed(
    live, mlflow_server
):
    """Item 3 on the real stack: the reviewer triggers ``freeze__`` with the form's params
    through the REST API; the freeze records the authenticated user. A rollback with no
    earlier champion to go back to fails, and @champion stays."""
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_history import TAG_FROZEN

    assert wait_run(live, "approve") == "success"  # v1 is the champion
    name, client = live["model"]["approve"], MlflowClient(mlflow_server)
    freeze = f"freeze__{name}"
    live["admin"].wait_for_dag(freeze, timeout_seconds=120)
    run = trigger_as(live["reviewer"], freeze, {"action": "freeze", "reason": "INC-7 open"})
    assert run_end(live, freeze, run) == "success"
    record = json.loads(client.get_registered_model(name).tags[TAG_FROZEN])
    assert record["reason"] == "INC-7 open" and record["user"] == "reviewer", record

    run = trigger_as(live["reviewer"], freeze, {"action": "unfreeze", "reason": "INC-7 closed"})
    assert run_end(live, freeze, run) == "success"
    assert TAG_FROZEN not in client.get_registered_model(name).tags

    rollback = f"rollback__{name}"
    run = trigger_as(live["reviewer"], rollback, {"reason": "bad predictions"})
    assert run_end(live, rollback, run) == "failed"
    assert client.get_model_version_by_alias(name, "champion").version == "1"


def test_timeout_applies_reject_and_says_nobody_answered(live):
    assert wait_run(live, "timeout") == "success"
    promote = as_dict(xcom(live, "timeout", "promote"))
    assert promote["outcome"] == "timed_out" and promote["promoted"] is False, promote
    assert "approval timed out" in promote["reason"] and "nobody answered" in promote["reason"]
    assert promote["approval"]["by"] is None
    assert promote["approval"]["chosen_options"] == ["Reject"]
    detail = live["admin"].call("GET", hitl_path(live, "timeout"))
    assert detail["responded_by_user"] is None and detail["chosen_options"] == ["Reject"]
    model = live["model"]["timeout"]
    texts = [m.get("text", "") for m in Webhook.received]
    pending = [t for t in texts if t.startswith(f"[mlops] approval_pending: {model} ")]
    timed_out = [t for t in texts if t.startswith(f"[mlops] approval_timed_out: {model} ")]
    assert len(pending) == 1 and len(timed_out) == 1, texts
    assert "approvers: reviewer" in pending[0]
    assert "/tasks/approve_promotion/required_actions" in pending[0], pending[0]
    assert "nobody answered" in timed_out[0]


# The supersede case runs last: it has the longest path (a second run, triggered by the
# fixture), which proceeds while the other cases' tests run.
def test_a_newer_qualifying_challenger_supersedes_the_waiting_request(live):
    # Run 2 starts once run 1 registered version 1 and trains, evaluates and registers while
    # run 1 waits for approval (max_active_runs 2): version 2 supersedes version 1.
    second = live["second"]
    wait_task(live, "supersede", "approve_promotion", {"deferred", "success"})
    wait_task(live, "supersede", "approve_promotion", {"deferred"}, run_id=second)
    assert wait_run(live, "supersede") == "success"
    first = as_dict(xcom(live, "supersede", "promote"))
    assert first["outcome"] == "superseded" and first["promoted"] is False, first
    assert first["reason"].startswith("superseded by version 2"), first["reason"]
    assert first["champion_version"] is None
    approval = as_dict(xcom(live, "supersede", "approve_promotion", "mlops_approval"))
    assert approval["outcome"] == "superseded" and approval["superseded_by"]["version"] == "2"
    # The newer request is answered like any other: here rejected, so nothing moves.
    answer(live["reviewer"], hitl_path(live, "supersede", second), "Reject")
    assert wait_run(live, "supersede", second) == "success"
    promote = as_dict(xcom(live, "supersede", "promote", run_id=second))
    assert promote["outcome"] == "rejected" and promote["promoted"] is False, promote
    assert promote["reason"].startswith("rejected by reviewer"), promote["reason"]
    assert promote["champion_version"] is None
