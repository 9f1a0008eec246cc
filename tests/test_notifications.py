"""Issue 17 item 1: run events reach people through Airflow notifiers, with real services.

A real SMTP server (aiosmtpd) and a local HTTP server standing in for a Slack incoming webhook
receive the messages; a third notifier points at a closed port. One breast-cancer pipeline
(module-scoped) goes through: a first CT run (promoted), a monitoring run on drifted data with
flipped labels (drift and decay), the asset-triggered retrain that does not promote
(``not_promoted_after_signal``), a run stopped by validation (blocked) and one whose training
fails (failed). A second pipeline goes through the operations DAGs: a freeze (frozen), a CT run
whose qualifying challenger the freeze holds back (frozen), an unfreeze (unfrozen) and a
rollback (rolled_back). Every DAG runs with Airflow's real task runner (``dag.test()``) against the
MLflow server fixture.
"""

from __future__ import annotations

import email
import email.policy
import html
import json
import logging
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import mlflow_connection_env, serialize_dag
from devkit import free_port
from test_pipelines import (
    DATA,
    WEAK_FEATURES,
    breast_cancer_config,
    execute_run,
    land,
    runs_of,
    scheduler_loops,
    set_paused,
    states_of,
    summary_of,
    unique,
    xcom,
)

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.notifications import (
    Notification,
    ct_events,
    deliver,
    operations_events,
    operations_message,
)
from airflow_mlops.factories import continuous_training_dag, monitoring_dag, parse_config
from airflow_mlops.factories.rollback import freeze_dag, rollback_dag

AIRFLOW_BASE_URL = "http://airflow.example:8080"
WEBHOOK_SECRET_PATH = "/services/T000/B000/s3cr3t-webhook-token"
NOTIFIERS = {
    "ops_email": {"type": "smtp", "to": ["ops@example.com"], "smtp_conn_id": "smtp_ops"},
    "ops_slack": {"type": "slack_webhook", "http_conn_id": "slack_ops"},
    "down_email": {"type": "smtp", "to": ["ops@example.com"], "smtp_conn_id": "smtp_down"},
}
BOTH = ["ops_email", "ops_slack"]
NOTIFICATIONS = {
    "notifiers": NOTIFIERS,
    "events": {
        # A notifier that never answers: the promotion must happen all the same.
        "promoted": [*BOTH, "down_email"],
        "drift": BOTH,
        "decay": BOTH,
        "not_promoted_after_signal": BOTH,
        "blocked": BOTH,
        "failed": BOTH,
    },
}


# -- the services ------------------------------------------------------------------------------


class Inbox:
    """Messages an aiosmtpd server received (aiosmtpd's handler protocol)."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 OK"

    def about(self, event: str, model: str) -> list[tuple[str, str]]:
        """(subject, body) of the messages about ``event`` for ``model``."""
        found = []
        for message in self.messages:
            subject = str(message["subject"])
            if subject.startswith(f"[mlops] {event}: {model} "):
                body = message.get_body(("html", "plain"))
                found.append((subject, body.get_content() if body else ""))
        return found


class Webhook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        Webhook.received.append(
            {"path": self.path, "json": json.loads(self.rfile.read(length) or b"{}")}
        )
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:  # keep the test output quiet
        pass


def slack_about(event: str, model: str) -> list[str]:
    return [
        r["json"]["text"]
        for r in Webhook.received
        if r["json"].get("text", "").startswith(f"[mlops] {event}: {model} ")
    ]


@pytest.fixture(scope="module")
def services(mlflow_server: str) -> Iterator[dict[str, Any]]:
    """SMTP server, webhook server, and the Airflow connections and settings pointing at them."""
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    webhook = ThreadingHTTPServer(("127.0.0.1", free_port()), Webhook)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    smtp_extra = {"disable_ssl": True, "disable_tls": True, "from_email": "mlops@example.com"}
    env = {
        "AIRFLOW_CONN_MLFLOW_DEFAULT": mlflow_connection_env(mlflow_server),
        "AIRFLOW_CONN_SMTP_OPS": json.dumps(
            {"conn_type": "smtp", "host": "127.0.0.1", "port": smtp.port, "extra": smtp_extra}
        ),
        "AIRFLOW_CONN_SMTP_DOWN": json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": free_port(),  # nothing listens there
                "extra": {**smtp_extra, "retry_limit": 0, "timeout": 2},
            }
        ),
        "AIRFLOW_CONN_SLACK_OPS": json.dumps(
            {
                "conn_type": "http",
                "host": f"http://127.0.0.1:{webhook.server_port}",
                "password": WEBHOOK_SECRET_PATH,
            }
        ),
        "AIRFLOW__API__BASE_URL": AIRFLOW_BASE_URL,
        "AIRFLOW__MLOPS__NOTIFICATION_ATTEMPTS": "3",
        "AIRFLOW__MLOPS__NOTIFICATION_RETRY_DELAY_SECONDS": "0",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield {"inbox": inbox, "mlflow": mlflow_server}
    webhook.shutdown()
    smtp.stop()


@pytest.fixture(scope="module")
def pipeline(services: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A pipeline with notifications whose first CT run made a champion (``promoted``)."""
    landing = tmp_path_factory.mktemp("notify_landing")
    reference = land(landing, "reference")
    # Labels that landed later, all wrong: the champion's metric falls (decay).
    flipped = pd.read_parquet(reference)
    flipped["benign"] = 1 - flipped["benign"]
    labels = landing / "labels.parquet"
    flipped.to_parquet(labels, index=False)
    name = unique("notify")
    config = breast_cancer_config(
        name,
        reference,
        data={
            "train_uri": str(reference),
            "target": "benign",
            "allowed_prefixes": [str(landing), str(DATA)],
        },
        monitoring={
            "current_uri": str(DATA / "breast_cancer" / "drifted.parquet"),
            "drift_share": 0.3,
            "debounce_hours": 0,
            "decay": {"labels_uri": str(labels), "tolerance": 0.05},
        },
        notifications=NOTIFICATIONS,
    )
    logged = Recorder()
    dispatch_log = logging.getLogger("airflow_mlops.notifiers.dispatch")
    dispatch_log.addHandler(logged)
    try:
        first = _run(continuous_training_dag(config))
    finally:
        dispatch_log.removeHandler(logged)
    return {
        "config": config,
        "model": config.registered_model_name,
        "first": first,
        "logged": logged.lines,
    }


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _run(dag: Any, **conf: Any) -> Any:
    serialize_dag(dag)
    return dag.test(run_conf=conf or None)


def assert_message(text: str, model: str, dag_id: str, versions: str, reason: str) -> None:
    assert model in text and versions in text, text
    assert reason in text, text
    assert f"{AIRFLOW_BASE_URL}/dags/{dag_id}/runs/" in text, text


# -- the events --------------------------------------------------------------------------------


def test_promoted_is_sent_and_a_dead_notifier_changes_nothing(pipeline, services, mlflow_server):
    from mlflow.tracking import MlflowClient

    run, model = pipeline["first"], pipeline["model"]
    summary = summary_of(run)
    assert run.state == "success", states_of(run)
    assert summary["outcome"] == "promoted", summary
    assert MlflowClient(mlflow_server).get_model_version_by_alias(model, "champion").version == "1"

    [(subject, body)] = services["inbox"].about("promoted", model)
    assert subject == f"[mlops] promoted: {model} (champion v1, challenger v1)"
    assert_message(body, model, run.dag_id, "challenger v1", summary["reason"][:40])
    assert f"{mlflow_server}/#/models/{model}/versions/1" in body, body
    card = xcom(run, "promote")["model_card"]
    assert "Model card" in body and card["html_uri"] in body, body
    [text] = slack_about("promoted", model)
    assert_message(text, model, run.dag_id, "challenger v1", summary["reason"][:40])
    assert Webhook.received[0]["path"] == WEBHOOK_SECRET_PATH

    records = {r["notifier"]: r for r in summary["notifications"]}
    assert records["ops_email"]["ok"] and records["ops_slack"]["ok"], records
    down = records["down_email"]
    assert (down["event"], down["ok"], down["attempts"]) == ("promoted", False, 3), down
    assert "ConnectionRefusedError" in down["error"], down
    failures = [line for line in pipeline["logged"] if "to down_email" in line]
    assert [line.split(":")[0] for line in failures] == [
        "Notification promoted to down_email failed (attempt 1 of 3)",
        "Notification promoted to down_email failed (attempt 2 of 3)",
        "Notification promoted to down_email failed (attempt 3 of 3)",
        "Notification promoted to down_email not delivered",
    ], failures


def test_drift_and_decay_then_a_retrain_that_does_not_promote(pipeline, services):
    config, model = pipeline["config"], pipeline["model"]
    ct, monitor = continuous_training_dag(config), monitoring_dag(config)
    serialize_dag(ct)
    set_paused(ct.dag_id, False)  # a paused DAG is not queued on its Assets
    try:
        monitor_run = _run(monitor)
        scheduler_loops(ct.dag_id)
    finally:
        set_paused(ct.dag_id, True)
    assert monitor_run.state == "success", states_of(monitor_run)
    notified = xcom(monitor_run, "notify")
    assert notified["events"] == ["drift", "decay"], notified
    assert all(r["ok"] for r in notified["notifications"]), notified
    drift, decay = xcom(monitor_run, "drift"), xcom(monitor_run, "decay")
    for event, result in (("drift", drift), ("decay", decay)):
        [(subject, body)] = services["inbox"].about(event, model)
        assert subject == f"[mlops] {event}: {model} (champion v1)", subject
        assert_message(body, model, monitor.dag_id, "champion v1", result["reason"][:40])
        assert result["report_uri"] in body, body
        [text] = slack_about(event, model)
        assert result["report_uri"] in text, text

    triggered = [r for r in runs_of(ct.dag_id) if r["run_type"] == "asset_triggered"]
    assert len(triggered) == 1, runs_of(ct.dag_id)
    retrain = execute_run(ct, triggered[0]["run_id"])
    summary = summary_of(retrain)
    assert summary["outcome"] == "not promoted", summary
    [(subject, body)] = services["inbox"].about("not_promoted_after_signal", model)
    assert f"challenger v{summary['challenger_version']}" in subject, subject
    assert "signal was not promoted: " in body, body
    assert_message(body, model, ct.dag_id, "champion v1", summary["reason"][:40])
    assert slack_about("not_promoted_after_signal", model)


@pytest.mark.parametrize(
    ("train_uri", "event", "reason"),
    [
        (DATA / "breast_cancer" / "corrupted.csv", "blocked", "validation failed: "),
        # Outside data.allowed_prefixes: the first task refuses it.
        (Path("/nonexistent-notify/x.csv"), "failed", "task detect_changes failed: "),
    ],
)
def test_blocked_and_failed_runs_are_sent(pipeline, services, train_uri, event, reason):
    ct = continuous_training_dag(pipeline["config"])
    run = _run(ct, train_uri=str(train_uri))
    summary = summary_of(run)
    assert run.state == "failed" and summary["outcome"] == event, summary
    # A run stopped by its first task never read the champion.
    versions = "champion v1" if event == "blocked" else "champion unknown"
    [(subject, body)] = services["inbox"].about(event, pipeline["model"])
    assert subject == f"[mlops] {event}: {pipeline['model']} ({versions})", subject
    assert_message(body, pipeline["model"], ct.dag_id, versions, reason)
    assert [r["ok"] for r in summary["notifications"]] == [True, True], summary


def test_freeze_held_back_challenger_unfreeze_and_rollback_are_sent(
    services, tmp_path, mlflow_server
):
    from mlflow.tracking import MlflowClient
    from test_registry import actor

    from airflow_mlops.core.alias_moves import promote_to_champion

    ops = {
        "notifiers": {"ops_email": NOTIFIERS["ops_email"], "down_email": NOTIFIERS["down_email"]},
        "events": {
            "frozen": ["ops_email"],
            "unfrozen": ["ops_email"],
            "rolled_back": ["ops_email", "down_email"],
        },
    }
    name = unique("notify_ops")
    data = land(tmp_path, "reference")
    weak_data = {"train_uri": str(data), "target": "benign", "features": WEAK_FEATURES}
    weak = breast_cancer_config(name, data, data=weak_data, notifications=ops)
    # A clean batch lands: the full-feature model beats the weak champion.
    full = breast_cancer_config(name, land(tmp_path, "reference", "clean"), notifications=ops)
    model, inbox = full.registered_model_name, services["inbox"]
    assert summary_of(_run(continuous_training_dag(weak)))["outcome"] == "promoted"

    freezer = freeze_dag(full)
    frozen = _run(freezer, action="freeze", reason="incident 7", requested_by="ops-bob")
    assert xcom(frozen, "notify")["events"] == ["frozen"], states_of(frozen)
    who = "dag_test (for ops-bob)"
    [(subject, body)] = inbox.about("frozen", model)
    assert subject == f"[mlops] frozen: {model} (champion v1)", subject
    assert_message(body, model, freezer.dag_id, "champion v1", "incident 7")
    assert f"By: {who}" in body and f"/#/models/{model}/versions/1" in body, body

    held = _run(continuous_training_dag(full))
    summary = summary_of(held)
    assert (held.state, summary["outcome"]) == ("success", "frozen"), summary
    [_, (subject, body)] = inbox.about("frozen", model)
    assert subject == f"[mlops] frozen: {model} (champion v1, challenger v2)", subject
    cause = f"challenger v2 qualified but the model is frozen: incident 7 (by {who})"
    assert_message(body, model, held.dag_id, "challenger v2", cause)
    assert f"/#/models/{model}/versions/2" in body, body

    _run(freezer, action="unfreeze", reason="labels fixed")
    [(subject, body)] = inbox.about("unfrozen", model)
    assert subject == f"[mlops] unfrozen: {model} (champion v1)" and "labels fixed" in body

    # v2 becomes champion through the registry (a CT run would only add time), then regresses.
    client = MlflowClient(mlflow_server)
    promote_to_champion(client, model, "2", evaluated_champion="1", actor=actor("p"))
    rollback = rollback_dag(full)
    rolled = _run(rollback, reason="v2 misroutes band s", requested_by="ops-carol")
    assert rolled.state == "success", states_of(rolled)
    assert client.get_model_version_by_alias(model, "champion").version == "1"
    [(subject, body)] = inbox.about("rolled_back", model)
    body = html.unescape(body)  # the e-mail is HTML: "->" arrives as "-&gt;"
    assert subject == f"[mlops] rolled_back: {model} (champion v2 -> v1)", subject
    reason = "@champion rolled back from v2 to v1: v2 misroutes band s"
    assert_message(body, model, rollback.dag_id, "champion v2 -> v1", reason)
    assert "By: dag_test (for ops-carol)" in body and f"/#/models/{model}/versions/1" in body
    # The dead notifier is recorded and changes nothing.
    records = {r["notifier"]: r for r in xcom(rolled, "notify")["notifications"]}
    assert records["ops_email"]["ok"] and not records["down_email"]["ok"], records


# -- configuration and delivery, without a DAG run -----------------------------------------------


class RecordingNotifier:
    """Replaced by a BaseNotifier subclass in :func:`test_allowed_custom_notifier_is_used`."""


def test_notifier_outside_the_allow_list_is_refused_before_import(monkeypatch):
    monkeypatch.delenv("AIRFLOW__MLOPS__ALLOWED_NOTIFIER_MODULES", raising=False)
    raw = {
        "name": "refused",
        "data": {"train_uri": "/srv/data/x.csv", "target": "y"},
        "notifications": {
            "notifiers": {"x": {"type": "class", "class_path": "notify_evil_mod.Pager"}},
            "events": {"failed": ["x"]},
        },
    }
    with pytest.raises(ConfigError, match=r"not in an allowed module.*allowed_notifier_modules"):
        parse_config(raw)
    assert "notify_evil_mod" not in sys.modules
    url = {"type": "class", "class_path": "notify_evil_mod.Pager", "params": {"u": "https://x"}}
    monkeypatch.setenv("AIRFLOW__MLOPS__ALLOWED_NOTIFIER_MODULES", "notify_evil_mod")
    with pytest.raises(ConfigError, match=r"params.u: a URL may carry a secret"):
        parse_config({**raw, "notifications": {"notifiers": {"x": url}}})
    unknown = {"notifiers": {}, "events": {"approval_granted": []}}
    with pytest.raises(ConfigError, match=r"events.approval_granted: unknown event"):
        parse_config({**raw, "notifications": unknown})
    slack_url = {"type": "slack_webhook", "http_conn_id": "s", "url": "https://hooks/x"}
    with pytest.raises(ConfigError, match=r"url"):
        parse_config({**raw, "notifications": {"notifiers": {"s": slack_url}}})


def test_allowed_custom_notifier_is_used(monkeypatch):
    from airflow.sdk import BaseNotifier

    from airflow_mlops.notifiers.dispatch import notify_events

    received: list[dict[str, Any]] = []

    class Recording(BaseNotifier):
        def __init__(self, channel: str) -> None:
            super().__init__()
            self.channel = channel

        def notify(self, context: Any) -> None:
            received.append({"channel": self.channel, **context["mlops_notification"]})

    monkeypatch.setattr(sys.modules[__name__], "RecordingNotifier", Recording)
    monkeypatch.setenv("AIRFLOW__MLOPS__ALLOWED_NOTIFIER_MODULES", __name__)
    spec = {"type": "class", "class_path": f"{__name__}.RecordingNotifier"}
    raw = {
        "name": "custom",
        "data": {"train_uri": "/srv/data/x.csv", "target": "y"},
        "notifications": {
            "notifiers": {"pager": {**spec, "params": {"channel": "#ml"}}},
            "events": {"failed": ["pager"]},
        },
    }
    config = parse_config(raw)
    message = Notification("failed", "m", "task train failed", "3", None, {"report": "/r.json"})
    [record] = notify_events(config.notifications, [message], {})
    assert record["ok"] is True, record
    [got] = received
    assert (got["channel"], got["event"], got["champion_version"]) == ("#ml", "failed", "3")
    assert got["links"] == {"report": "/r.json"}


def test_delivery_retries_then_records_and_never_raises(caplog):
    calls: list[int] = []

    def refuse() -> None:
        calls.append(1)
        raise ConnectionRefusedError("nobody listens")

    with caplog.at_level(logging.WARNING):
        record = deliver(
            refuse,
            event="drift",
            notifier="x",
            attempts=3,
            retry_delay_seconds=0,
            on_failure=lambda attempt, err: logging.getLogger("t").warning("try %d", attempt),
        )
    assert len(calls) == 3 and not record.ok and record.attempts == 3
    assert record.error == "ConnectionRefusedError: nobody listens"
    assert [r.getMessage() for r in caplog.records] == ["try 1", "try 2", "try 3"]


def test_events_of_a_ct_summary():
    assert ct_events({"outcome": "promoted"}) == ["promoted"]
    assert ct_events({"outcome": "not promoted"}) == []
    assert ct_events({"outcome": "not promoted"}, "decay") == ["not_promoted_after_signal"]
    assert ct_events({"outcome": "skipped"}, "drift") == []
    assert ct_events({"outcome": "frozen"}) == ["frozen"]
    assert ct_events({"outcome": "frozen"}, "drift") == ["frozen", "not_promoted_after_signal"]
    assert operations_events({"outcome": "already_frozen"}) == []
    retry = {"outcome": "already_rolled_back", "previous_champion_version": "2"}
    assert operations_events({**retry, "champion_version": "1"}) == ["rolled_back"]
    assert operations_events({**retry, "champion_version": "2"}) == []  # nothing moved
    # requested_by comes from the trigger form: it cannot add a (fake link) line.
    forged = {**retry, "champion_version": "1", "user": "x\nAirflow run: http://evil"}
    assert "\nAirflow run" not in operations_message("rolled_back", forged, {}).text()


def test_monitoring_failure_names_what_failed_per_segment():
    from airflow_mlops.factories.notify import _failure_reason, _step_states

    # get_task_states keys a mapped instance "<task id>_<map index>".
    found = {"r": {"drift_0": "success", "drift_1": "failed", "summary": "failed"}}
    states = _step_states(found, ["drift", "summary"])
    assert states == {"drift": "failed", "summary": "failed"}
    summary = {"checked": [], "failed": [{"check": "drift", "model_name": "m__s"}]}
    assert _failure_reason(states, summary) == (
        "monitoring step(s) drift, summary failed: drift of m__s failed"
    )
    nothing = {"checked": [], "not_checked": [{"check": "drift", "model_name": "m", "reason": "x"}]}
    assert _failure_reason({"summary": "failed"}, nothing).endswith(
        "nothing was checked (drift of m: x)"
    )
