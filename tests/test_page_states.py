"""The MLOps page in a real browser: each state an operator meets, as headless Chromium shows it.

Real parts: the session's MLflow server, the real ``airflow api-server`` (``tests/_servers.py``)
loading the page from the ``airflow.plugins`` entry point, the session's Airflow metadata DB
(shared with ``dag.test()``), and headless Chromium (``tests/e2e/_browser.py``). Screenshots go
to ``test-artifacts/page-states/<state>.png``.

How each state is made:

- healthy, drift, blocked, frozen and the 100-segment pipeline: the core functions that write
  the same registry records as the DAGs (``core.registry.register_version``,
  ``core.alias_moves.set_challenger`` / ``promote_to_champion`` / ``set_frozen``, the CT
  summary's ``core.model_status.last_ct_tag`` and the drift check's
  ``core.drift_verdict.last_drift_tag``); the versions point at one empty logged model
  (no model file is needed to show a version);
- decay: the real ``ModelPerformanceOperator`` run by ``dag.test()`` in the pipeline's
  monitoring DAG, on prediction partitions written as ``BatchPredictionOperator`` writes them
  and labels landing later (one partition still pending): it logs the per-partition history to
  MLflow and pushes its verdict to XCom, both read by the page;
- pending approval: a real DAG run (``dag.test()``) of a DAG with ``register`` and
  ``approve_promotion`` tasks, whose approval task instance is then set to ``awaiting_input``
  with its human-in-the-loop record inserted in the metadata DB as Airflow's Execution API
  writes it. ``dag.test()`` cannot leave a task waiting for a human (and the approval
  operator is being changed in parallel), so the request itself is not made by the operator
  here; a CT DAG waiting on a real scheduler is not part of this module.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from _servers import api_server_for

ADMIN_PASSWORD = "page-states-admin-password"
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "page-states"
SEGMENTS = 100
UNHEALTHY_SEGMENTS = {"s003": "blocked", "s042": "failed", "s077": "drift"}
DAYS = ["2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04"]
ROWS = 120


def _actor(dag_id: str, reason: str) -> Any:
    from airflow_mlops.core.alias_history import Actor
    from airflow_mlops.core.lineage import RunContext

    context = RunContext(dag_id=dag_id, run_id="scheduled__2026-12-01", task_id="promote")
    return Actor(reason=reason, context=context)


def _training_run(client: Any, experiment_id: str, name: str, pipeline: str, **tags: str) -> Any:
    """A finished training run tagged as training tags it, and the (empty) model it logged."""
    run = client.create_run(
        experiment_id,
        tags={"mlops.stage": "training", "mlops.model_name": name, "mlops.pipeline": pipeline}
        | tags,
    )
    client.log_metric(run.info.run_id, "holdout_f1", 0.9)
    client.set_terminated(run.info.run_id)
    return run, client.create_logged_model(experiment_id, source_run_id=run.info.run_id)


def _register(client: Any, name: str, pipeline: str, run: Any, logged: Any) -> str:
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import register_version

    context = RunContext(dag_id=f"ct__{pipeline}", run_id="scheduled__2026-12-01", task_id="reg")
    uri = f"models:/{logged.model_id}"
    return register_version(client, name, uri, context=context, run_id=run.info.run_id).version


def _champion(client: Any, experiment_id: str, name: str, pipeline: str, **tags: str) -> None:
    """``name``'s first version as @challenger then @champion, trained by ``ct__<pipeline>``,
    as the CT DAG's registry tasks leave it (with the alias history)."""
    from airflow_mlops.core.alias_moves import promote_to_champion, set_challenger

    run, logged = _training_run(client, experiment_id, name, pipeline, **tags)
    version = _register(client, name, pipeline, run, logged)
    actor = _actor(f"ct__{pipeline}", "first champion")
    set_challenger(client, name, version, actor)
    promote_to_champion(client, name, version, evaluated_champion=None, actor=actor)


def _last_ct(client: Any, name: str, pipeline: str, outcome: str, reason: str) -> None:
    from airflow_mlops.core.model_status import TAG_LAST_CT, last_ct_tag

    summary = {
        "outcome": outcome,
        "reason": reason,
        "champion_version": "1",
        "notifications": [{"event": outcome, "notifier": "SmtpNotifier", "ok": True}],
    }
    value = last_ct_tag(
        summary, dag_id=f"ct__{pipeline}", run_id="scheduled__2026-12-02", at="2026-12-02T06:00Z"
    )
    client.set_registered_model_tag(name, TAG_LAST_CT, value)


def _drift(client: Any, name: str, pipeline: str) -> None:
    from airflow_mlops.core.drift_verdict import TAG_LAST_DRIFT, last_drift_tag

    summary = {
        "dataset": {
            "drifted": True,
            "drifted_columns": 3,
            "tested_columns": 5,
            "drifted_share": 0.6,
            "drift_share": 0.5,
        }
    }
    task = {"dag_id": f"monitor__{pipeline}", "run_id": "r1", "task_id": "drift", "map_index": -1}
    value = last_drift_tag(summary, at="2026-12-02T07:00Z", airflow_task=task)
    client.set_registered_model_tag(name, TAG_LAST_DRIFT, value)


def _decay_check(name: str, pipeline: str, root: Path) -> None:
    """Predictions of four days; labels of the first three landed (the third badly
    predicted), the fourth still pending; the real decay operator judges them."""
    import pandas as pd
    from airflow.sdk import DAG
    from conftest import serialize_dag

    from airflow_mlops.operators.performance import ModelPerformanceOperator

    labels = []
    for i, day in enumerate(DAYS):
        truth = [(r * 7 + i) % 2 for r in range(ROWS)]
        wrong = 0.45 if i == 2 else 0.03
        predicted = [t if (r % 100) >= wrong * 100 else 1 - t for r, t in enumerate(truth)]
        ids = [f"{day}-{r}" for r in range(ROWS)]
        folder = root / "predictions" / f"dt={day}"
        folder.mkdir(parents=True)
        pd.DataFrame(
            {
                "request_id": ids,
                "prediction": predicted,
                "score": [float(p) for p in predicted],
                "model_name": name,
                "model_version": 1,
            }
        ).to_parquet(folder / "part-0.parquet", index=False)
        if i < 3:
            labels.append(pd.DataFrame({"request_id": ids, "label": truth}))
    (root / "labels" / "dt=2026-12-05").mkdir(parents=True)
    pd.concat(labels).to_parquet(root / "labels" / "dt=2026-12-05" / "part-0.parquet")
    with DAG(f"monitor__{pipeline}", schedule=None) as dag:
        ModelPerformanceOperator(
            task_id="decay",
            model_name=name,
            labels_uri=str(root / "labels"),
            predictions_uri=str(root / "predictions"),
            id_columns=["request_id"],
        )
    serialize_dag(dag)
    assert str(dag.test().state) == "success"


def _pending_approval(name: str, pipeline: str) -> dict[str, str]:
    """A DAG run whose ``approve_promotion`` task waits for a human (see the module doc)."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.sdk import DAG, task
    from airflow.utils.session import create_session
    from conftest import serialize_dag
    from sqlalchemy import select

    with DAG(f"ct__{pipeline}", schedule=None) as dag:

        @task(task_id="register")
        def register() -> dict[str, str]:
            return {"model_name": name, "version": "2"}

        @task(task_id="approve_promotion")
        def approve() -> None:
            """Stands in for the approval task; its request is written below."""

        register() >> approve()
    serialize_dag(dag)
    run = dag.test()
    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag.dag_id,
                TaskInstance.run_id == run.run_id,
                TaskInstance.task_id == "approve_promotion",
            )
        ).one()
        ti.state = "awaiting_input"
        session.add(
            HITLDetail(
                ti_id=ti.id,
                options=["Approve", "Reject"],
                subject=f"Promote {name} version 2 to @champion?",
                body="evidence",
                defaults=["Reject"],
                multiple=False,
                params={},
                assignees=[{"id": "reviewer", "name": "reviewer"}],
            )
        )
    return {"dag_id": dag.dag_id, "run_id": run.run_id}


@pytest.fixture(scope="module")
def states(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One model per state, and a 100-segment pipeline with three unhealthy segments."""
    from conftest import mlflow_connection_env as mlflow_env
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_moves import set_frozen

    tag = uuid.uuid4().hex[:6]
    names = {
        s: f"{s}_{tag}" for s in ("healthy", "drift", "blocked", "frozen", "decay", "approval")
    }
    client = MlflowClient(mlflow_server)
    experiment = client.create_experiment(f"page_states_{tag}")
    started = time.monotonic()
    pipeline = f"seg_{tag}"
    # Segments share one training run and its model (a batched CT task trains them in one
    # run too); each gets its own registered version and @champion alias.
    run, logged = _training_run(client, experiment, pipeline, pipeline)

    def segment(index: int) -> None:
        name = f"{pipeline}__s{index:03d}"
        version = _register(client, name, pipeline, run, logged)
        client.set_registered_model_alias(name, "champion", version)
        problem = UNHEALTHY_SEGMENTS.get(f"s{index:03d}")
        if problem == "drift":
            _drift(client, name, pipeline)
        elif problem:
            _last_ct(client, name, pipeline, problem, f"segment {problem}")

    def single(state: str) -> None:
        name = names[state]
        tags = {"mlops.target": "label", "mlops.task": "classification"}
        _champion(client, experiment, name, name, **tags)
        _last_ct(client, name, name, "promoted", "challenger beat the champion on f1")
        if state == "blocked":
            _last_ct(client, name, name, "blocked", "validation: 3 of 9 expectations failed")
        elif state == "drift":
            _drift(client, name, name)
        elif state == "frozen":
            set_frozen(client, name, _actor("freeze__x", "investigating INC-42"), frozen=True)

    # The single models and the segments are written in the background while the two DAG
    # runs are made (mostly waiting on the MLflow server and on imports); the decay model
    # first, as its check reads it.
    with (
        pytest.MonkeyPatch.context() as patch,
        ThreadPoolExecutor(6, thread_name_prefix="states") as pool,
    ):
        patch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", mlflow_env(mlflow_server))
        single("decay")
        singles = [pool.submit(single, state) for state in names if state != "decay"]
        segments = pool.map(segment, range(SEGMENTS))
        _decay_check(names["decay"], names["decay"], tmp_path_factory.mktemp("decay"))
        print(f"decay check run at {time.monotonic() - started:.1f}s")
        approval = _pending_approval(names["approval"], names["approval"])
        print(f"approval pending at {time.monotonic() - started:.1f}s")
        for done in singles:
            done.result()  # re-raises a single model's error
        print(f"registry states set up in {time.monotonic() - started:.1f}s")
        list(segments)  # re-raises a segment's error
    print(f"states set up in {time.monotonic() - started:.1f}s")
    return {"names": names, "pipeline": pipeline, "approval": approval}


@pytest.fixture(scope="module")
def server(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real ``airflow api-server`` with Airflow's default plugin settings, started first
    so it boots while the states are written."""
    from conftest import mlflow_connection_env

    server = api_server_for(
        tmp_path_factory.mktemp("api-server"),
        ADMIN_PASSWORD,
        {
            "AIRFLOW_CONN_MLFLOW_DEFAULT": mlflow_connection_env(mlflow_server),
            "AIRFLOW__MLOPS__PAGE_MAX_MODELS": "5000",
            "AIRFLOW__MLOPS__PAGE_MLFLOW_TIMEOUT_SECONDS": "60",
            # The stock setting: the page must come from the entry point.
            "AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS": "True",
        },
    ).start()
    try:
        yield server
    finally:
        server.kill()  # a graceful stop takes ~15 s and this server holds nothing to save


@pytest.fixture(scope="module")
def page(server: Any, states: dict[str, Any]) -> Iterator[Any]:
    """Headless Chromium logged in to the API server (Airflow's ``_token`` cookie), on the
    MLOps page."""
    import httpx
    from devkit import ensure_binary
    from e2e._browser import Browser

    ensure_binary("chromium", "chromium")  # a fresh machine has no browser yet
    started = time.monotonic()
    server.wait_ready(timeout_s=90)
    print(f"api-server ready {time.monotonic() - started:.1f}s after the states")
    token = httpx.post(
        f"{server.url}/auth/token",
        json={"username": "admin", "password": ADMIN_PASSWORD},
        timeout=30,
    ).json()["access_token"]
    with Browser(width=1280, height=900) as browser:
        browser.set_cookie(server.url, "_token", token)
        browser.goto(f"{server.url}/mlops/", settle_s=0.5)
        browser.wait_for_text("Healthy means", timeout_s=90)
        print(f"page shown {time.monotonic() - started:.1f}s after the states")
        yield browser, server.url


def card_text(browser: Any, selector: str) -> str:
    return browser.js(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
        "return e ? e.innerText : null; })()"
    )


def shot(browser: Any, selector: str, state: str) -> None:
    path = browser.screenshot_element(selector, SHOTS / f"{state}.png")
    assert path.stat().st_size > 5_000, path


def test_each_state_shows_what_an_operator_needs(page: Any, states: dict[str, Any]) -> None:
    browser, _ = page
    names = states["names"]
    rule = card_text(browser, "[data-health-rule]")
    assert "Healthy means" in rule and "not frozen" in rule

    healthy = f'[data-model="{names["healthy"]}"]'
    assert card_text(browser, f"{healthy} [data-health]") == "healthy"
    assert "promoted" in card_text(browser, f"{healthy} [data-last-ct]")
    shot(browser, healthy, "healthy")

    drift = f'[data-model="{names["drift"]}"]'
    assert "drift" in card_text(browser, f"{drift} [data-health]")
    assert "drift detected" in card_text(browser, f'{drift} [data-check="drift"]')
    assert "3/5 columns drifted" in card_text(browser, f'{drift} [data-check="drift"]')
    shot(browser, drift, "drift")

    blocked = f'[data-model="{names["blocked"]}"]'
    assert "last CT blocked" in card_text(browser, f"{blocked} [data-health]")
    ct = card_text(browser, f"{blocked} [data-last-ct]")
    assert "blocked" in ct and "3 of 9 expectations failed" in ct
    shot(browser, blocked, "blocked")

    frozen = f'[data-model="{names["frozen"]}"]'
    assert card_text(browser, f"{frozen} [data-frozen]") == "FROZEN"
    assert "investigating INC-42" in card_text(browser, f"{frozen} [data-frozen-detail]")
    assert "frozen" in card_text(browser, f"{frozen} [data-health]")
    shot(browser, frozen, "frozen")

    decay = f'[data-model="{names["decay"]}"]'
    text = card_text(browser, f"{decay} [data-decay]")
    assert "performance decay: f1" in text and "1 pending" in text, text
    assert card_text(browser, f"{decay} [data-decay-verdict]") == "decay"
    scored = browser.js(f"document.querySelectorAll('{decay} svg circle[data-scored]').length")
    pending = browser.js(f"document.querySelectorAll('{decay} svg circle[data-pending]').length")
    assert (scored, pending) == (3, 1)
    assert "decay" in card_text(browser, f"{decay} [data-health]")
    shot(browser, decay, "decay")

    approval = f'[data-model="{names["approval"]}"]'
    assert "Approval pending for v2" in card_text(browser, f"{approval} [data-approval]")
    href = browser.js(
        f"document.querySelector('{approval} [data-approval-link]').getAttribute('href')"
    )
    run = states["approval"]
    assert href == (
        f"/dags/{run['dag_id']}/runs/{run['run_id'].replace('+', '%2B').replace(':', '%3A')}"
        "/tasks/approve_promotion/required_actions"
    )
    shot(browser, approval, "pending-approval")


def test_a_100_segment_pipeline_is_one_collapsed_line_with_its_health_count(
    page: Any, states: dict[str, Any]
) -> None:
    browser, _ = page
    group = f'[data-pipeline="{states["pipeline"]}"]'
    summary = card_text(browser, f"{group} summary")
    healthy = SEGMENTS - len(UNHEALTHY_SEGMENTS)
    assert f"{SEGMENTS} segment models, {healthy} healthy" in summary, summary
    for segment, problem in UNHEALTHY_SEGMENTS.items():
        assert f"{states['pipeline']}__{segment} (" in summary and problem in summary
    assert browser.js(f"document.querySelector('{group} details').open") is False
    shot(browser, group, "segments-100-collapsed")
    browser.js(f"document.querySelector('{group} details').open = true")
    rows = browser.js(f"document.querySelectorAll('{group} tr[data-segment-model]').length")
    assert rows == SEGMENTS
    first = browser.js(
        f"Array.from(document.querySelectorAll('{group} tr[data-segment-model]'))"
        ".slice(0, 3).map(row => row.dataset.segmentModel)"
    )
    assert sorted(first) == [f"{states['pipeline']}__{s}" for s in sorted(UNHEALTHY_SEGMENTS)]
    shot(browser, group, "segments-100")


def test_the_page_opens_inside_the_airflow_ui_and_links_to_the_approval_form(
    page: Any, states: dict[str, Any]
) -> None:
    browser, url = page
    browser.goto(f"{url}/plugin/mlops", settle_s=0.5)
    browser.wait_for_text("MLOps: registered models", timeout_s=60, frames=True)
    browser.screenshot(SHOTS / "in-airflow-ui.png")
    # The approval link opens Airflow's own page for the request: its subject is shown.
    name = states["names"]["approval"]
    href = browser.js(
        "document.querySelector('iframe').contentDocument"
        f".querySelector('[data-model=\"{name}\"] [data-approval-link]').getAttribute('href')"
    )
    browser.goto(url + href, settle_s=0.5)
    browser.wait_for_text(f"Promote {name} version 2 to @champion", timeout_s=60)
    browser.screenshot(SHOTS / "approval-in-airflow-ui.png")
