"""Issue 17 item 1: ``stale_champion``, with the real MLflow server and the real SMTP server.

A segmented pipeline has two champions: ``__s`` last changed 20 days ago (its history and
last CT record back-dated in the registry: the test cannot wait 20 days) and ``__m`` promoted
now. The ``stale_champion`` task runs with Airflow's real task runner (``dag.test()``) in a
one-task DAG: the rest of the monitoring DAG (drift on real data) adds nothing to this check,
and the monitoring DAG's wiring is asserted on the DAG object. The SMTP server, the webhook
stand-in and their connections are ``test_notifications``' module fixture ``services``.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from conftest import serialize_dag
from test_notifications import AIRFLOW_BASE_URL, NOTIFIERS, services, slack_about  # noqa: F401
from test_pipelines import unique, xcom

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.factories import parse_config

BOTH = ["ops_email", "ops_slack"]
DAY = dt.timedelta(days=1)


def raw_config(name: str, **notifications: Any) -> dict[str, Any]:
    return {
        "name": name,
        "data": {"train_uri": "/srv/stale/train.parquet", "target": "y"},
        "segments": {"column": "band", "values": ["s", "m"]},
        "monitoring": {"current_uri": "/srv/stale/current.parquet"},
        "notifications": {
            "notifiers": {n: NOTIFIERS[n] for n in BOTH},
            "events": {"stale_champion": BOTH},
            "stale_after": "14d",
            **notifications,
        },
    }


def make_champion(
    client: Any, run: Any, model: str, outcome: str, ct_ago: dt.timedelta, changed_ago: dt.timedelta
) -> None:
    """``model`` with champion v1 promoted ``changed_ago`` and a last CT run that ended
    ``outcome`` ``ct_ago``: the times are back-dated where the check reads them (the alias
    history summary and ``mlops.last_ct``), as that much time passing would leave them."""
    from test_registry import actor

    from airflow_mlops.core.alias_history import TAG_ALIAS_HISTORY
    from airflow_mlops.core.alias_moves import promote_to_champion
    from airflow_mlops.core.model_status import TAG_LAST_CT

    now = dt.datetime.now(dt.timezone.utc)
    client.create_registered_model(model)
    version = client.create_model_version(
        model, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    ).version
    promote_to_champion(client, model, str(version), evaluated_champion=None, actor=actor("p"))
    last_ct = {"outcome": outcome, "reason": "r", "dag_id": f"ct__{model}", "run_id": "r1"}
    last_ct["at"] = (now - ct_ago).isoformat(timespec="seconds")
    client.set_registered_model_tag(model, TAG_LAST_CT, json.dumps(last_ct))
    history = json.loads(client.get_registered_model(model).tags[TAG_ALIAS_HISTORY])
    for event in history:
        event["at"] = (now - changed_ago).isoformat(timespec="milliseconds")
    client.set_registered_model_tag(model, TAG_ALIAS_HISTORY, json.dumps(history))


@pytest.fixture(scope="module")
def champions(services: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    """``<name>__s`` (champion v1 since 20 days, last CT run failed 2 days ago) and
    ``<name>__m`` (champion v1 promoted now, last CT run promoted now)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(services["mlflow"])
    name = unique("stale")
    run = client.create_run(client.create_experiment(f"exp_{name}"))
    make_champion(client, run, f"{name}__s", "failed", 2 * DAY, 20 * DAY)
    make_champion(client, run, f"{name}__m", "promoted", 0 * DAY, 0 * DAY)
    config = parse_config(raw_config(name))
    return {"client": client, "run": run, "name": name, "config": config}


def _check(config: Any) -> Any:
    from airflow.sdk import DAG

    from airflow_mlops.factories.staleness import staleness_task

    with DAG(
        dag_id=unique("stale_check"),
        schedule=None,
        start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    ) as dag:
        staleness_task(config)
    serialize_dag(dag)
    return dag.test()


def test_a_stale_champion_is_alerted_once_and_a_fresh_one_never(champions, services):  # noqa: F811
    from airflow_mlops.core.staleness import TAG_STALENESS

    client, name, inbox = champions["client"], champions["name"], services["inbox"]
    stale, fresh = f"{name}__s", f"{name}__m"

    first = _check(champions["config"])
    assert first.state == "success"
    result = xcom(first, "stale_champion")
    assert (result["checked"], result["stale"], result["alerted"]) == (2, 1, [stale]), result
    [(subject, body)] = inbox.about("stale_champion", stale)
    assert subject == f"[mlops] stale_champion: {stale} (champion v1)", subject
    assert "@champion v1 unchanged for 20 days (promote on " in body, body
    assert "no successful CT run for 20 days (the last CT run ended failed on " in body, body
    assert "stale after 2 weeks" in body, body
    assert f"{AIRFLOW_BASE_URL}/dags/{first.dag_id}/runs/" in body, body  # this check's run
    assert f"{AIRFLOW_BASE_URL}/dags/ct__{stale}/runs/r1" in body, body  # the last CT run
    assert f"/#/models/{stale}/versions/1" in body, body
    [text] = slack_about("stale_champion", stale)
    assert "unchanged for 20 days" in text, text
    assert inbox.about("stale_champion", fresh) == []
    record = json.loads(client.get_registered_model(stale).tags[TAG_STALENESS])
    assert set(record["alerted"]) == {"champion", "ct"}, record

    second = _check(champions["config"])
    assert second.state == "success"
    assert xcom(second, "stale_champion")["alerted"] == []
    assert len(inbox.about("stale_champion", stale)) == 1  # not again
    assert len(slack_about("stale_champion", stale)) == 1
    assert inbox.about("stale_champion", fresh) == []


def test_the_monitoring_dag_carries_the_check_before_notify(champions):
    from airflow_mlops.factories import monitoring_dag

    dag = monitoring_dag(champions["config"])
    assert "stale_champion" in dag.get_task("notify").upstream_task_ids
    assert dag.get_task("stale_champion").upstream_task_ids == set()
    plain = raw_config("nostale")
    del plain["notifications"]
    assert "stale_champion" not in monitoring_dag(parse_config(plain)).task_ids


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"stale_after": "14 days"}, r"notifications.stale_after: .*'14 days' is not a duration"),
        ({"stale_after": "30m"}, r"notifications.stale_after: .*shorter than 1h"),
        ({"stale_after": 14}, r"notifications.stale_after: "),
        ({"events": {}}, r"stale_after: no notifier receives stale_champion"),
        ({"stale_after": None}, r"events.stale_champion: set notifications.stale_after"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_field(change, error):
    with pytest.raises(ConfigError, match=error):
        parse_config(raw_config("bad", **change))


def test_stale_after_needs_a_scheduled_monitoring_dag():
    unscheduled = raw_config("bad")
    unscheduled["monitoring"]["schedule"] = None
    with pytest.raises(
        ConfigError, match=r"notifications.stale_after: monitoring.schedule is null"
    ):
        parse_config(unscheduled)
    unmonitored = raw_config("bad")
    del unmonitored["monitoring"]
    with pytest.raises(ConfigError, match=r"notifications.stale_after: .*monitoring DAG"):
        parse_config(unmonitored)


def test_each_condition_is_alerted_once_and_tags_are_untrusted():
    """Pure :func:`assess_staleness`: the debounce is per condition, a new staleness alerts
    again, and unreadable tags read as unknown."""
    from airflow_mlops.core.model_status import TAG_LAST_CT
    from airflow_mlops.core.staleness import TAG_STALENESS, assess_staleness

    now = dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc)
    bound = 14 * DAY

    def tags(promoted_ago: dt.timedelta, ct: str, ct_ago: dt.timedelta, record=None) -> dict:
        at = (now - promoted_ago).isoformat()
        history = [{"alias": "champion", "action": "promote", "version": "3", "at": at}]
        last_ct = {"outcome": ct, "at": (now - ct_ago).isoformat()}
        found = {"mlops.alias_history": json.dumps(history), TAG_LAST_CT: json.dumps(last_ct)}
        return {**found, TAG_STALENESS: json.dumps(record)} if record else found

    # Daily CT runs that do not promote: only "unchanged" is stale.
    quiet = assess_staleness("m", tags(20 * DAY, "not promoted", DAY), "3", bound, now)
    assert set(quiet.stale) == {"champion"} and quiet.due
    assert quiet.reason == (
        "@champion v3 unchanged for 20 days (promote on 2026-11-12 00:00 UTC); stale after 2 weeks"
    )
    alerted = {"alerted": dict(quiet.stale)}
    # The next day, another quiet run: same staleness, not due.
    later = assess_staleness("m", tags(20 * DAY, "not promoted", 0 * DAY, alerted), "3", bound, now)
    assert later.is_stale and not later.due
    # CT then fails for 15 days: a new condition, due again.
    failing = assess_staleness("m", tags(20 * DAY, "failed", DAY, alerted), "3", bound, now)
    assert set(failing.stale) == {"champion", "ct"} and failing.due
    # A recent promotion: fresh.
    assert not assess_staleness("m", tags(DAY, "promoted", DAY), "3", bound, now).is_stale
    # A champion set by hand (history names another version): its creation time counts.
    created = now - 3 * DAY
    hand = assess_staleness("m", tags(30 * DAY, "not promoted", DAY), "4", bound, now, created)
    assert hand.champion_change == "version created" and not hand.is_stale
    # Unreadable tags: no error, the version's creation time is all that is known.
    junk = {"mlops.alias_history": "{", TAG_LAST_CT: "[1]", TAG_STALENESS: "no"}
    old = assess_staleness("m", junk, "3", bound, now, now - 30 * DAY)
    assert set(old.stale) == {"champion", "ct"} and old.due
    assert assess_staleness("m", junk, None, bound, now).reason == "no champion yet"


def test_a_ct_run_past_its_deadline_sends_stale_champion(champions, services):  # noqa: F811
    """The CT DAG carries the ``DeadlineAlert``, and its callback sends through the real SMTP
    server. Airflow's scheduler noticing the missed deadline is not run here (it would need a
    run held for the interval): the callback is run by Airflow's own executor entry point
    (``execute_callback``) with the kwargs stored in the DAG and the context the scheduler
    builds (``dag_run``, ``deadline``)."""
    import structlog
    from airflow.sdk.definitions.deadline import DagRunQueuedAtDeadline
    from airflow.sdk.execution_time.callback_supervisor import execute_callback

    from airflow_mlops.factories import continuous_training_dag
    from airflow_mlops.factories.staleness import ct_run_deadline

    name, inbox = champions["name"], services["inbox"]
    raw = raw_config(name)
    del raw["segments"]
    config = parse_config({**raw, "model_name": f"{name}__m"})
    # A YAML pipeline with stale_after gets the deadline at that bound; code may set its own.
    [default] = continuous_training_dag(config).deadline
    assert default.interval == config.notifications.stale_after_delta
    dag = continuous_training_dag(config, deadline=ct_run_deadline(config, "6h"))
    [alert] = dag.deadline
    assert isinstance(alert.reference, DagRunQueuedAtDeadline)
    assert alert.interval == dt.timedelta(hours=6)
    assert alert.callback.path == "airflow_mlops.factories.staleness.ct_run_overdue"
    serialize_dag(dag)  # the callback and its kwargs serialize with the DAG

    context = {
        "dag_run": {"dag_id": dag.dag_id, "run_id": "scheduled__2026-12-01"},
        "deadline": {"id": "d1", "deadline_time": "2026-12-01T06:00:00+00:00"},
    }
    ok, error = execute_callback(
        alert.callback.path,
        {**alert.callback.kwargs, "context": context},
        None,
        None,
        structlog.get_logger(),
    )
    assert (ok, error) == (True, None)
    [(subject, body)] = inbox.about("stale_champion", f"{name}__m")
    assert subject == f"[mlops] stale_champion: {name}__m (champion v1)", subject
    assert "CT run scheduled__2026-12-01 has not finished 6h after it was queued" in body, body
    assert f"{AIRFLOW_BASE_URL}/dags/{dag.dag_id}/runs/scheduled__2026-12-01" in body, body
    with pytest.raises(ConfigError, match=r"map notifications\.events\.stale_champion"):
        ct_run_deadline(parse_config({**raw, "notifications": {}}), "6h")


def test_an_undelivered_alert_is_sent_at_the_next_check(champions, services):  # noqa: F811
    """The task's function is called directly with the one context key it reads (``dag_run``):
    what it records does not depend on a DAG run. First with a notifier nobody listens to
    (nothing recorded), then with the working ones (sent, recorded)."""
    from types import SimpleNamespace

    from airflow_mlops.core.staleness import TAG_STALENESS
    from airflow_mlops.factories.staleness import check_stale_champions

    client, name, inbox = champions["client"], champions["name"], services["inbox"]
    model = f"{name}_down"
    make_champion(client, champions["run"], model, "not promoted", DAY, 20 * DAY)
    raw = {k: v for k, v in raw_config(name).items() if k != "segments"}
    raw["model_name"] = model
    down = {
        "notifiers": {"down_email": NOTIFIERS["down_email"]},
        "events": {"stale_champion": ["down_email"]},
        "stale_after": "14d",
    }
    context = {"dag_run": SimpleNamespace(dag_id=f"monitor__{name}", run_id="manual__1")}

    first = check_stale_champions(parse_config({**raw, "notifications": down}), context)
    assert (first["stale"], first["alerted"]) == (1, []), first
    [record] = first["notifications"]
    assert (record["notifier"], record["ok"], record["attempts"]) == ("down_email", False, 3)
    stored = json.loads(client.get_registered_model(model).tags[TAG_STALENESS])
    assert stored["alerted"] == {} and stored["last_ct_ok_at"], stored

    second = check_stale_champions(parse_config(raw), context)
    assert second["alerted"] == [model], second
    [(_, body)] = inbox.about("stale_champion", model)
    assert "@champion v1 unchanged for 20 days" in body, body
    assert "no successful CT run" not in body, body  # the last CT run succeeded a day ago
