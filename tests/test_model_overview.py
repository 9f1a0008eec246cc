"""The drift verdict the page shows comes from one registered-model tag, not from listing the
report folders of every monitoring run (a year of daily runs is 365 folders per model)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core.alias_history import TAG_FROZEN
from airflow_mlops.core.drift_verdict import MAX_MODEL_TAG_CHARS, TAG_LAST_DRIFT, last_drift_tag
from airflow_mlops.core.model_status import (
    MAX_REASON_CHARS,
    TAG_LAST_CT,
    FreezeNote,
    LastCt,
    last_ct_tag,
    read_frozen,
    read_last_ct,
)
from airflow_mlops.plugins import model_overview as mo

SUMMARY = {
    "dataset": {
        "drifted": True,
        "drift_share": 0.5,
        "drifted_share": 0.75,
        "drifted_columns": 3,
        "tested_columns": 4,
    },
    "drifted_columns": ["a", "b", "c"],
}
TASK = {"dag_id": "monitor_churn", "run_id": "scheduled__2026-03-01", "task_id": "drift"}


def test_tag_round_trips_into_the_page_verdict() -> None:
    raw = last_drift_tag(
        SUMMARY,
        at="2026-03-01T00:10:00+00:00",
        airflow_task={**TASK, "map_index": 2},
        mlflow_run_id="r" * 32,
        report_artifact="monitoring/drift/monitor_churn/s/drift/2/drift_report.html",
        report_uri="s3://bucket/reports/drift_report.html",
    )
    verdict = mo.drift_verdict_from_tag(raw)
    assert verdict is not None
    assert (verdict.verdict, verdict.ok, verdict.detail) == (
        "drift detected",
        False,
        "3/4 columns drifted",
    )
    assert verdict.at == "2026-03-01T00:10:00+00:00"
    assert verdict.airflow_task == {**TASK, "map_index": 2}
    assert (verdict.run_id, verdict.report_artifact) == (
        "r" * 32,
        json.loads(raw)["report_artifact"],
    )
    assert verdict.report_uri is None  # the tag's URI is never served, only the run's artifact


def test_tag_fits_a_registered_model_tag_whatever_the_columns() -> None:
    many = {**SUMMARY, "drifted_columns": [f"column_{'x' * 400}_{i}" for i in range(500)]}
    raw = last_drift_tag(
        many,
        at="2026-03-01T00:10:00+00:00",
        airflow_task={**TASK, "run_id": "r" * 250, "map_index": -1},
        report_uri="s3://bucket/" + "p" * 3000,
    )
    assert len(raw) <= MAX_MODEL_TAG_CHARS
    assert json.loads(raw)["detected"] is True


@pytest.mark.parametrize(
    "raw",
    [None, "", "not json", "[]", '{"detected": "yes"}'],
)
def test_missing_or_bad_tag_gives_no_verdict(raw: str | None) -> None:
    assert mo.drift_verdict_from_tag(raw) is None


def test_tag_pointing_outside_the_report_folders_offers_no_report() -> None:
    raw = json.dumps({"detected": False, "mlflow_run_id": "r1", "report_artifact": "model/MLmodel"})
    verdict = mo.drift_verdict_from_tag(raw)
    assert verdict is not None and verdict.ok is True
    assert verdict.report_artifact is None


# -- the operator records it; the page reads it with no artifact listing ----------------------


class NoArtifactListing:
    """A real MlflowClient that fails the test if the page lists or downloads artifacts."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        if name in {"list_artifacts", "download_artifacts"}:
            raise AssertionError(f"the page called {name}")
        return getattr(self._client, name)


@pytest.fixture
def cheap_champion(mlflow_conn: str, mlflow_server: str, tmp_path: Path) -> dict[str, str]:
    """A champion version whose run carries training's tags (no model file is needed)."""
    from mlflow.tracking import MlflowClient

    rng = np.random.default_rng(0)
    reference = tmp_path / "reference.parquet"
    pd.DataFrame({"x": rng.normal(size=300), "y": rng.normal(size=300)}).to_parquet(reference)
    current = tmp_path / "current.parquet"
    pd.DataFrame({"x": rng.normal(5, size=300), "y": rng.normal(size=300)}).to_parquet(current)

    name = f"overview_{uuid.uuid4().hex[:8]}"
    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment(f"exp_{name}")
    run = client.create_run(
        experiment_id,
        tags={"mlops.reference.uri": str(reference), "mlops.features": '["x", "y"]'},
    )
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    version = client.create_model_version(
        name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias(name, "champion", version.version)
    return {"name": name, "run_id": run.info.run_id, "current": str(current)}


def test_drift_task_records_its_verdict_and_the_page_reads_it_without_listing(
    run_dag: Any, cheap_champion: dict[str, str], mlflow_server: str, tmp_path: Path
) -> None:
    from airflow.sdk import DAG
    from mlflow.tracking import MlflowClient

    from airflow_mlops.operators.drift import DriftReportOperator

    name = cheap_champion["name"]
    with DAG(f"monitor_{name}", schedule=None) as dag:
        DriftReportOperator(
            task_id="drift",
            model_name=name,
            current_uri=cheap_champion["current"],
            report_folder_uri=str(tmp_path / "reports"),
            on_drift="skip",
        )
    dag_run = run_dag(dag)

    client = MlflowClient(mlflow_server)
    model = client.get_registered_model(name)
    record = json.loads(model.tags[TAG_LAST_DRIFT])
    assert record["detected"] is True and record["drifted_columns"] == 1
    assert record["airflow"] == {
        "dag_id": dag.dag_id,
        "run_id": dag_run.run_id,
        "task_id": "drift",
        "map_index": -1,
    }
    assert record["mlflow_run_id"] == cheap_champion["run_id"]
    folder = record["report_artifact"].rsplit("/", 1)[0]
    attached = [a.path for a in client.list_artifacts(cheap_champion["run_id"], folder)]
    assert record["report_artifact"] in attached  # the report the tag points at is there

    overview = mo.overview_of_model(NoArtifactListing(client), model, experiment_ids=[])
    drift = overview.checks["drift"]
    assert (drift.verdict, drift.ok, drift.detail) == (
        "drift detected",
        False,
        "1/2 columns drifted",
    )
    assert drift.report_artifact == record["report_artifact"]
    assert drift.airflow_task["run_id"] == dag_run.run_id


def test_check_runs_are_searched_once_for_all_models(
    mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One search finds every model's newest check run; a model cut off by the page of the
    newest runs is searched alone, and a model with none costs nothing more."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment(f"checks_{uuid.uuid4().hex[:8]}")
    a, b = f"a_{uuid.uuid4().hex[:6]}", f"b_{uuid.uuid4().hex[:6]}"
    for name, day, ok in ((b, 1, "true"), (a, 2, "false"), (a, 3, "true"), (a, 4, "false")):
        client.create_run(
            experiment_id,
            start_time=day * 86_400_000,
            tags={
                "mlops.stage": "validation",
                "mlops.model_name": name,
                "mlops.validation.success": ok,
            },
        )
    searches = []
    counting = type(
        "Counting",
        (),
        {
            "search_runs": lambda self, **kw: (
                searches.append(kw["filter_string"]) or client.search_runs(**kw)
            )
        },
    )()

    checks = mo.CheckRuns(counting, [experiment_id])
    assert checks.latest(a, "validation").ok is False  # day 4, the newest of a
    assert checks.latest(b, "validation").ok is True
    assert checks.latest("nobody", "validation") is None
    assert len(searches) == 1

    monkeypatch.setattr(mo, "MAX_CHECK_RUNS_PREFETCHED", 2)  # the page holds a's runs only
    searches.clear()
    checks = mo.CheckRuns(counting, [experiment_id])
    assert checks.latest(a, "validation").ok is False
    assert checks.latest(b, "validation").ok is True  # found by its own search
    assert len(searches) == 2 and b in searches[1]


def test_versions_runs_are_read_in_one_search(mlflow_server: str) -> None:
    """An overview reads the runs of all its versions with one search, not one get_run each,
    and shows the same facts as reading them one by one."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment(f"runs_{uuid.uuid4().hex[:8]}")
    name = f"batch_{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    decision = "promoted: all 1 applicable rule(s) passed [rows compared 136, excluded 26 <b>"
    for alias, f1 in (("champion", 0.8), ("challenger", 0.9)):
        tags = {"mlops.airflow.dag_id": f"ct_{name}"}
        if alias == "challenger":
            tags["mlops.decision.reason"] = decision
        run = client.create_run(experiment_id, tags=tags)
        client.log_metric(run.info.run_id, "holdout_f1", f1)
        version = client.create_model_version(
            name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        )
        client.set_registered_model_alias(name, alias, version.version)
    model = client.get_registered_model(name)

    calls: list[str] = []

    class Counting:
        def __getattr__(self, attr: str) -> Any:
            calls.append(attr)
            return getattr(client, attr)

    one_by_one = mo.overview_of_model(client, model, [experiment_id])
    prefetched = mo._prefetch(Counting(), [model], [experiment_id], lambda f, xs: list(map(f, xs)))
    overview = mo.overview_of_model(Counting(), model, [experiment_id], None, prefetched)
    assert calls.count("get_run") == 0 and calls.count("search_runs") == 1 + 2  # + 2 checks
    assert overview.to_dict() == one_by_one.to_dict()
    assert overview.version("challenger").metrics == {"f1": 0.9}
    assert overview.version("challenger").decision == decision  # rows compared, on the page
    assert overview.version("champion").decision is None
    assert overview.lineage_dag_ids == [f"ct_{name}"]


# -- frozen state and the last CT run (issue 17 item 6) ----------------------------------------

NOTIFIED = [
    {"event": "not_promoted_after_signal", "notifier": "ops_email", "ok": True, "attempts": 1},
    {"event": "not_promoted_after_signal", "notifier": "ops_slack", "ok": False, "attempts": 3},
]


def ct_summary(**fields: Any) -> dict[str, Any]:
    return {
        "model_name": "m",
        "outcome": "not promoted",
        "reason": "challenger f1 0.91 < champion f1 0.93",
        "champion_version": "3",
        "challenger_version": "4",
        "steps": [],
        "notifications": NOTIFIED,
        **fields,
    }


def test_last_ct_tag_round_trips_and_always_fits_a_tag() -> None:
    raw = last_ct_tag(ct_summary(), dag_id="ct_m", run_id="manual__1", at="2026-03-01T00:00:00")
    ct = read_last_ct(raw)
    assert ct is not None and not ct.unreadable
    assert (ct.outcome, ct.dag_id, ct.run_id, ct.challenger_version) == (
        "not promoted",
        "ct_m",
        "manual__1",
        "4",
    )
    assert [(n.event, n.notifier, n.ok) for n in ct.notifications] == [
        ("not_promoted_after_signal", "ops_email", True),
        ("not_promoted_after_signal", "ops_slack", False),
    ]
    many = [{"event": "e" * 500, "notifier": "n" * 500, "ok": True}] * 300
    raw = last_ct_tag(
        ct_summary(reason="x " * 5000, notifications=many), dag_id="d", run_id="r", at="t"
    )
    assert len(raw) <= MAX_MODEL_TAG_CHARS
    ct = read_last_ct(raw)
    assert ct is not None and len(ct.reason) == MAX_REASON_CHARS
    assert ct.notifications and len(ct.notifications) + ct.more_notifications == 300


@pytest.mark.parametrize(
    "raw", ["{not json", "[]", '"promoted"', '{"outcome": 3}', '{"outcome": "ok"' + " " * 30_000]
)
def test_unusable_ct_tag_is_unreadable_not_an_error(raw: str) -> None:
    assert read_last_ct(raw) == LastCt(unreadable=True)


def test_any_frozen_tag_means_frozen_even_unreadable() -> None:
    assert read_frozen(None) is None
    assert (
        read_frozen("") == read_frozen("{oops") == read_frozen("[1]") == FreezeNote(unreadable=True)
    )
    note = read_frozen(json.dumps({"by": "airflow", "user": "ops-alice", "reason": "r" * 9000}))
    assert note is not None and note.by == "ops-alice" and len(note.reason) == MAX_REASON_CHARS


HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def status_models(mlflow_server: str) -> dict[str, str]:
    """A frozen model with a last CT run, and one whose tags are hostile (HTML, huge, bad JSON)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    frozen, hostile = f"status_frozen_{uuid.uuid4().hex[:6]}", f"status_bad_{uuid.uuid4().hex[:6]}"
    client.create_registered_model(
        frozen,
        tags={
            TAG_FROZEN: json.dumps(
                {
                    "by": "airflow freeze__x",
                    "user": "ops-alice",
                    "reason": "incident 42",
                    "at": "T1",
                }
            ),
            TAG_LAST_CT: last_ct_tag(ct_summary(), dag_id="ct_x", run_id="run/1", at="T2"),
        },
    )
    client.create_registered_model(
        hostile,
        tags={
            TAG_FROZEN: json.dumps({"user": HOSTILE, "reason": HOSTILE + "A" * 4000}),
            TAG_LAST_CT: "{" + HOSTILE,
        },
    )
    return {"frozen": frozen, "hostile": hostile}


def test_overview_reads_frozen_and_last_ct_from_the_listing_alone(
    mlflow_server: str, status_models: dict[str, str]
) -> None:
    """Both come with ``search_registered_models``: no call per model beyond the overview's."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    [model] = client.search_registered_models(f"name = '{status_models['frozen']}'")
    overview = mo.overview_of_model(NoArtifactListing(client), model, experiment_ids=[])
    assert overview.frozen == FreezeNote(by="ops-alice", at="T1", reason="incident 42")
    assert overview.last_ct is not None and overview.last_ct.outcome == "not promoted"
    assert overview.last_ct.reason == "challenger f1 0.91 < champion f1 0.93"
    assert [n.ok for n in overview.last_ct.notifications] == [True, False]


@pytest.fixture(scope="module")
def page(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, status_models: dict[str, str]
) -> str:
    """The MLOps page's HTML as an admin gets it from Airflow's real API app."""
    from test_plugin import admin_page_api

    with admin_page_api(tmp_path_factory.mktemp("status_plugins"), mlflow_server) as (api, auth):
        response = api.get("/mlops/", headers=auth)
    assert response.status_code == 200, response.text
    return response.text


def card_of(html: str, name: str) -> str:
    return html.split(f'<section class="card" data-model="{name}">')[1].split("</section>")[0]


def test_page_shows_frozen_badge_last_ct_and_notifications(
    page: str, status_models: dict[str, str]
) -> None:
    card = card_of(page, status_models["frozen"])
    assert "data-frozen>FROZEN<" in card
    frozen = card.split("data-frozen-detail>")[1].split("</div>")[0]
    assert "ops-alice" in frozen and "T1" in frozen and "incident 42" in frozen
    ct = card.split("data-last-ct>")[1].split("<h3>")[0]
    assert "data-ct-outcome>not promoted<" in ct
    assert "challenger f1 0.91 &lt; champion f1 0.93" in ct
    assert 'href="/dags/ct_x/runs/run%2F1"' in ct  # the tag's run id cannot add path segments
    notes = ct.split("data-notifications>")[1].split("</ul>")[0]
    assert "not_promoted_after_signal → ops_email" in notes and ">sent<" in notes
    assert "ops_slack" in notes and ">failed<" in notes


def test_hostile_tags_are_escaped_capped_or_unreadable(
    page: str, status_models: dict[str, str]
) -> None:
    card = card_of(page, status_models["hostile"])
    assert "<script>" not in card and "<img" not in card
    assert "&lt;script&gt;" in card  # shown as text
    frozen = card.split("data-frozen-detail>")[1].split("</div>")[0]
    assert "A" * (MAX_REASON_CHARS - len(HOSTILE)) not in frozen and "A…" in frozen  # capped
    ct = card.split("data-last-ct>")[1].split("<h3>")[0]
    assert "unreadable" in ct


# -- the CT DAG's summary writes the tag ------------------------------------------------------


def test_ct_run_records_its_outcome_and_notifications_for_the_page(
    mlflow_conn: str, mlflow_server: str, run_dag: Any, tmp_path: Path, monkeypatch
) -> None:
    """A CT run whose training fails (an empty file: no model is trained, so it stays fast)
    tags the model with ``failed``, its reason and the notification it tried to send."""
    from conftest import stored_xcom
    from devkit import free_port
    from mlflow.tracking import MlflowClient

    from airflow_mlops.factories import continuous_training_dag, parse_config

    smtp_down = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": free_port(),  # nothing listens there: the delivery fails, the run goes on
        "extra": {"disable_ssl": True, "disable_tls": True, "retry_limit": 0, "timeout": 2},
    }
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DOWN", json.dumps(smtp_down))
    monkeypatch.setenv("AIRFLOW__MLOPS__NOTIFICATION_ATTEMPTS", "1")
    monkeypatch.setenv("AIRFLOW__MLOPS__NOTIFICATION_RETRY_DELAY_SECONDS", "0")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    name = f"last_ct_{uuid.uuid4().hex[:6]}"
    config = parse_config(
        {
            "name": name,
            "retries": 0,
            "data": {"train_uri": str(empty), "target": "y"},
            "validation": {"enabled": False},
            "training": {"estimator": "sklearn.linear_model.LogisticRegression"},
            "monitoring": {"enabled": False},
            "notifications": {
                "notifiers": {
                    "ops_email": {"type": "smtp", "to": ["ops@x.io"], "smtp_conn_id": "smtp_down"}
                },
                "events": {"failed": ["ops_email"]},
            },
        },
        source="<test last_ct>",
    )
    client = MlflowClient(mlflow_server)
    client.create_registered_model(config.registered_model_name)  # earlier runs made it

    dag_run = run_dag(continuous_training_dag(config))

    assert dag_run.state == "failed"
    summary = stored_xcom(dag_run, "summary")
    model = client.get_registered_model(config.registered_model_name)
    record = json.loads(model.tags[TAG_LAST_CT])
    assert record["outcome"] == "failed" and record["reason"] == summary["reason"][:300]
    assert record["reason"].startswith("task train failed: ")
    assert (record["dag_id"], record["run_id"]) == (dag_run.dag_id, dag_run.run_id)
    assert record["notifications"] == [{"event": "failed", "notifier": "ops_email", "ok": False}]
    ct = mo.overview_of_model(client, model, experiment_ids=[]).last_ct
    assert ct is not None and ct.outcome == "failed" and ct.notifications[0].ok is False


# -- decay history, health, pipelines (issue #17, item 6) ------------------------------------


def decay_result(**fields: Any) -> dict[str, Any]:
    """A decay task's XCom result as ``ModelPerformanceOperator`` pushes it (partitions)."""
    return {
        "model_name": "churn",
        "decayed": True,
        "check": {"metric": "f1", "baseline": 0.9},
        "reason": "performance decay: f1 0.61 vs 0.90",
        "partitions": {"total": 4, "scored": 3, "pending": 1},
        "recent": [
            {"partition": "dt=2026-12-03", "status": "scored", "coverage": 1.0,
             "metrics": {"f1": 0.61}},
            {"partition": "dt=2026-12-04", "status": "pending", "coverage": 0.2, "metrics": None},
        ],
        **fields,
    }  # fmt: skip


def test_decay_history_and_verdict_make_one_escaped_chart() -> None:
    from airflow_mlops.core.delayed_labels import HISTORY_PREFIX

    assert mo.DECAY_HISTORY_PREFIX == HISTORY_PREFIX  # the page reads what the check logs
    assert mo.decay_metric_of({"decay/accuracy": 0.8, "decay/f1": 0.7, "holdout_f1": 0.9}) == (
        "f1",
        0.9,
    )
    cached = mo.DecayView(
        metric="f1",
        baseline=0.9,
        points=[mo.DecayPoint("2026-12-01", 0.93, 1.0), mo.DecayPoint("2026-12-03", 0.61, 1.0)],
    )
    hostile = decay_result(
        reason="<script>alert(1)</script>",
        recent=[{"partition": 'dt=2026-12-04/"><script>x</script>', "status": "pending"}],
    )
    task = {"dag_id": "monitor__churn", "run_id": "r", "task_id": "decay", "map_index": -1}
    view = mo.apply_decay_result(cached, hostile, task)
    assert (view.verdict, view.ok, view.pending_partitions) == ("decay", False, 1)
    assert [p.status for p in view.points] == ["scored", "scored", "pending"]
    assert len(cached.points) == 2  # the cached overview is never changed
    svg = mo.decay_sparkline(view)
    assert svg.startswith("<svg") and "<script" not in svg and "&lt;script&gt;" in svg
    assert svg.count("data-scored") == 2 and svg.count("data-pending") == 1
    assert "stroke-dasharray" in svg  # the value at promotion
    assert mo.decay_sparkline(None) == "" and mo.decay_sparkline(mo.DecayView()) == ""
    no_verdict = mo.apply_decay_result(None, decay_result(decayed=False, check=None), task)
    assert (no_verdict.verdict, no_verdict.ok) == ("no verdict", None)
    assert [(p.partition, p.status) for p in no_verdict.points] == [("dt=2026-12-04", "pending")]


def overview(name: str, **fields: Any) -> mo.ModelOverview:
    champion = [mo.VersionInfo(alias="champion", version="1")]
    return mo.ModelOverview(name=name, versions=fields.pop("versions", champion), **fields)


def test_healthy_is_defined_and_segments_are_grouped_under_their_pipeline() -> None:
    assert mo.health_problems(overview("a")) == []
    sick = overview(
        "b",
        versions=[],
        last_ct=LastCt(outcome="blocked"),
        checks={"drift": mo.Verdict(kind="drift", ok=False)},
        decay=mo.DecayView(ok=False),
        frozen=FreezeNote(by="ops"),
    )
    assert mo.health_problems(sick) == [
        "no champion",
        "last CT blocked",
        "drift",
        "decay",
        "frozen",
    ]
    assert mo.health_problems(overview("c", last_ct=LastCt(outcome="not promoted"))) == []
    models = [
        overview("plain"),
        overview("churn__s1", pipeline="churn_pipe"),
        overview("churn__s2", pipeline="churn_pipe", frozen=FreezeNote()),
        overview("legacy__x"),  # no pipeline tag: grouped by its base name
        overview("churn__s3", pipeline="churn_pipe"),
    ]
    sections = mo.page_sections(models)
    assert [getattr(s, "name", None) for s in sections] == ["plain", "churn_pipe", "legacy"]
    group = sections[1]
    assert [m.name for m in group.models] == ["churn__s2", "churn__s1", "churn__s3"]
    assert (group.healthy, [m.name for m in group.unhealthy]) == (2, ["churn__s2"])
    assert mo.segment_base("a__") is None and mo.segment_base("__a") is None
