"""End to end on the production-shaped local stack, checked the way a person would.

Starts ``deploy/local-stack prod`` (PostgreSQL and Redis from Debian's packages, Airflow on
PostgreSQL with the CeleryExecutor and two Celery workers, api-server, scheduler,
dag-processor, triggerer, MLflow on PostgreSQL with S3 artifacts on a moto server), triggers
the real continuous-training DAG of the DAG factory (``ct__breast_cancer``: ``dags/`` loading
``include/pipelines/breast_cancer.yaml``) through Airflow's REST API v2, waits for success,
checks ``@champion`` with MLflow's own client and the run's ``summary``, then logs in to the
Airflow UI in headless Chromium (typing into the login form) and checks the DAG run, its asset
events, the Assets view and the MLOps page.

The DAG runs ``@daily`` with catchup off: unpausing it makes the scheduler create a scheduled
run for today at once. The REST run is triggered while the DAG is still paused, with a
``run_after`` before that scheduled run's, so the scheduler starts it first (``max_active_runs``
is 1) and it trains the first model. Its training data is a byte-identical copy of the YAML's
``train_uri`` in S3, so the scheduled run that follows finds the champion's data and config
unchanged and is skipped with "no change" (checked too). Training data in S3 also keeps the
holdout files the training step writes beside its data out of the repository.

Screenshots are saved under ``test-artifacts/e2e/``; the stack's logs are copied to
``test-artifacts/e2e/logs/``. Everything started is stopped at the end.

Select or skip with the marker: ``pytest -m e2e`` / ``pytest -m "not e2e"``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import local_stack  # deploy/ is on pytest's pythonpath
import pytest
from devkit import AirflowApi, ensure_binary, group_alive, group_is_ours

REPO = Path(__file__).resolve().parents[2]
# The continuous-training DAG of the DAG factory: dags/mlops_pipeline__breast_cancer.py builds
# it from include/pipelines/breast_cancer.yaml.
E2E_DAG_ID = "ct__breast_cancer"
E2E_DAGS_FOLDER = REPO / "dags"
E2E_MODEL_NAME = "breast_cancer"
E2E_TASK_IDS = (
    "detect_changes",
    "validate",
    "train",
    "evaluate",
    "register",
    "promote",
    "predict",
    "summary",
)
E2E_RETRAIN_ASSET = f"mlops_retrain__{E2E_MODEL_NAME}"
E2E_CHAMPION_ASSET = f"mlops_champion__{E2E_MODEL_NAME}"
E2E_TRAIN_DATA = REPO / "include" / "data" / "breast_cancer" / "reference.parquet"
E2E_DATA_BUCKET = "ml-data"

ARTIFACTS = REPO / "test-artifacts" / "e2e"
STATE_DIR = REPO / ".local-stack" / "e2e"
RUN_TIMEOUT_S = 420

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

sys.path.insert(0, str(Path(__file__).parent))
from _browser import Browser  # noqa: E402


def _stack_cli(*args: str, timeout_s: float = 900) -> str:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "deploy" / "local_stack.py"),
            "prod",
            *args,
            "--state-dir",
            str(STATE_DIR),
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"local-stack prod {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result.stdout


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    """The running production-shaped stack (fresh state), stopped and purged afterwards."""
    ensure_binary("chromium", "chromium")  # the stack installs PostgreSQL and Redis
    _stack_cli("stop", "--purge", timeout_s=120)  # leftovers of an interrupted run
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        _stack_cli("start", "--auto-ports", "--dags-folder", str(E2E_DAGS_FOLDER))
        print(f"stack started in {time.monotonic() - started:.0f}s")
        yield json.loads(_stack_cli("env").strip().splitlines()[-1])
    finally:
        logs = STATE_DIR / "logs"
        if logs.exists():
            shutil.copytree(logs, ARTIFACTS / "logs", dirs_exist_ok=True)
        _kill_stack()
        _stack_cli("stop", "--purge", timeout_s=180)


def _kill_stack(timeout_s: float = 15) -> None:
    """SIGKILL the stack's process groups (those its state file records, still its own): the
    stack is purged right after, and a graceful stop of its ten services took ~15 s."""
    state = local_stack.State.load(STATE_DIR)
    if state is None:
        return
    groups = [
        pgid for name, pgid in state.pids.items() if group_is_ours(pgid, state.started.get(name))
    ]
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while any(group_alive(pgid) for pgid in groups) and time.monotonic() < deadline:
        time.sleep(0.2)


# -- Airflow REST API v2 --------------------------------------------------------------------


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope="module")
def api(stack: dict[str, str]) -> AirflowApi:
    return AirflowApi(
        stack["airflow_url"], stack["admin_user"], stack["admin_password"], timeout_seconds=30
    )


def wait_for_run_end(api: AirflowApi, run_path: str, timeout_s: float = RUN_TIMEOUT_S) -> dict:
    started = time.monotonic()
    run = api.call("GET", run_path)
    while run["state"] not in ("success", "failed"):
        assert time.monotonic() - started < timeout_s, (
            f"{run['dag_run_id']} still {run['state']} after {timeout_s}s"
        )
        time.sleep(1)
        run = api.call("GET", run_path)
    return run


def wait_for_dag(api: AirflowApi, dag_id: str, timeout_s: float) -> dict[str, Any]:
    """The DAG once the dag-processor serialized it, polled every half second
    (``AirflowApi.wait_for_dag`` sleeps 3 s between tries)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return api.call("GET", f"/api/v2/dags/{urllib.parse.quote(dag_id)}")
        except urllib.error.HTTPError as err:
            if err.code != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def xcom_value(api: AirflowApi, run_path: str, task_id: str) -> Any:
    """A task's ``return_value`` XCom through the REST API (JSON text or native)."""
    entry = api.call("GET", f"{run_path}/taskInstances/{task_id}/xcomEntries/return_value")
    value = entry["value"]
    return json.loads(value) if isinstance(value, str) else value


def upload_training_data(stack: dict[str, str]) -> str:
    """A byte-identical copy of the YAML's training file, in the stack's S3."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=stack["s3_url"],
        region_name="us-east-1",
        aws_access_key_id="local-stack",
        aws_secret_access_key="local-stack",
    )
    s3.create_bucket(Bucket=E2E_DATA_BUCKET)
    key = f"{E2E_MODEL_NAME}/{E2E_TRAIN_DATA.name}"
    s3.upload_file(str(E2E_TRAIN_DATA), E2E_DATA_BUCKET, key)
    return f"s3://{E2E_DATA_BUCKET}/{key}"


@pytest.fixture(scope="module")
def dag_run(api: AirflowApi, stack: dict[str, str]) -> dict[str, Any]:
    """Trigger the CT DAG through the REST API and wait until the run ends."""
    path = f"/api/v2/dags/{urllib.parse.quote(E2E_DAG_ID)}"
    dag = wait_for_dag(api, E2E_DAG_ID, timeout_s=240)  # parsed right after start
    assert dag["is_paused"], "new DAGs start paused: the run below must be queued first"
    train_uri = upload_training_data(stack)
    # Before today's scheduled run, which the scheduler creates as soon as the DAG is unpaused.
    midnight = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    run_after = (midnight - dt.timedelta(minutes=1)).isoformat()
    started = time.monotonic()
    run = api.call(
        "POST",
        f"{path}/dagRuns",
        {"logical_date": None, "run_after": run_after, "conf": {"train_uri": train_uri}},
    )
    api.call("PATCH", path, {"is_paused": False})
    run_path = f"{path}/dagRuns/{urllib.parse.quote(run['dag_run_id'], safe='')}"
    run = wait_for_run_end(api, run_path)
    run["seconds"] = round(time.monotonic() - started, 1)
    run["train_uri"] = train_uri
    run["task_instances"] = api.call("GET", f"{run_path}/taskInstances")["task_instances"]
    run["summary"] = xcom_value(api, run_path, "summary")
    query = urllib.parse.urlencode(
        {"source_dag_id": E2E_DAG_ID, "source_run_id": run["dag_run_id"]}
    )
    events = api.call("GET", f"/api/v2/assets/events?{query}")["asset_events"]
    run["champion_event"] = next((e for e in events if e["name"] == E2E_CHAMPION_ASSET), None)
    print(f"DAG run {run['dag_run_id']} ended {run['state']} after {run['seconds']}s")
    return run


@pytest.fixture(scope="module")
def scheduled_run(api: AirflowApi, dag_run: dict[str, Any]) -> dict[str, Any]:
    """Today's scheduled run, created by the scheduler when the DAG was unpaused."""
    path = f"/api/v2/dags/{urllib.parse.quote(E2E_DAG_ID)}/dagRuns"
    runs = [r for r in api.call("GET", path)["dag_runs"] if r["run_type"] == "scheduled"]
    assert len(runs) == 1, [(r["dag_run_id"], r["run_type"], r["state"]) for r in runs]
    run_path = f"{path}/{urllib.parse.quote(runs[0]['dag_run_id'], safe='')}"
    run = wait_for_run_end(api, run_path)
    run["task_instances"] = api.call("GET", f"{run_path}/taskInstances")["task_instances"]
    run["summary"] = xcom_value(api, run_path, "summary")
    return run


# -- the tests ------------------------------------------------------------------------------


def test_ct_dag_run_succeeds_on_celery_workers(dag_run: dict[str, Any]) -> None:
    tasks = {t["task_id"]: (t["state"], t["hostname"]) for t in dag_run["task_instances"]}
    assert dag_run["state"] == "success", (
        f"DAG run failed; task states: {tasks}; logs in {ARTIFACTS / 'logs'}"
    )
    assert set(tasks) == set(E2E_TASK_IDS), tasks
    assert all(state == "success" for state, _ in tasks.values()), tasks
    # Each task ran on a Celery worker of the stack (the workers log every workload they run).
    executed = {
        worker: [
            line
            for line in (STATE_DIR / "logs" / f"airflow-{worker}.log").read_text().splitlines()
            if "Executing workload in Celery" in line and f"dag_id={E2E_DAG_ID}/" in line
        ]
        for worker in local_stack.CELERY_WORKERS
    }
    run_key = f"run_id={dag_run['dag_run_id']}/"
    for task_id in tasks:
        assert any(
            run_key in line and f"task_id={task_id}/" in line
            for lines in executed.values()
            for line in lines
        ), f"{task_id} not run by a Celery worker"
    print("tasks per Celery worker:", {w: len(lines) for w, lines in executed.items()})


def test_run_summary_says_the_first_model_was_promoted(dag_run: dict[str, Any]) -> None:
    summary = dag_run["summary"]
    assert summary["outcome"] == "promoted", summary
    assert summary["champion_version"] == "1", summary
    steps = {s["step"]: s for s in summary["steps"]}
    assert steps["detect_changes"]["detail"] == "first model: no champion yet", steps
    assert [steps[t]["state"] for t in E2E_TASK_IDS[:-1]] == ["success"] * 7, steps


def test_run_emitted_the_champion_asset(dag_run: dict[str, Any]) -> None:
    event = dag_run["champion_event"]
    assert event is not None, f"the run emitted no {E2E_CHAMPION_ASSET} asset event"
    assert event["uri"] == f"mlops://models/{E2E_MODEL_NAME}/champion"
    assert event["source_task_id"] == "promote"
    assert event["extra"].get("version") == "1", event


def test_ct_dag_is_scheduled_on_the_retrain_asset(api: AirflowApi) -> None:
    query = urllib.parse.urlencode({"name_pattern": E2E_RETRAIN_ASSET})
    assets = api.call("GET", f"/api/v2/assets?{query}")["assets"]
    (asset,) = [a for a in assets if a["name"] == E2E_RETRAIN_ASSET]
    assert asset["uri"] == f"mlops://models/{E2E_MODEL_NAME}/retrain"
    assert E2E_DAG_ID in [d["dag_id"] for d in asset["scheduled_dags"]], asset


def test_mlflow_requires_authentication(stack: dict[str, str]) -> None:
    """MLflow runs with basic auth: anonymous and wrong-password calls are refused."""
    search = stack["mlflow_url"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert status_of(search, {}) == 401
    wrong = base64.b64encode(f"{stack['mlflow_login']}:wrong".encode()).decode()
    assert status_of(search, {"Authorization": f"Basic {wrong}"}) == 401
    right = base64.b64encode(
        f"{stack['mlflow_login']}:{stack['mlflow_password']}".encode()
    ).decode()
    assert status_of(search, {"Authorization": f"Basic {right}"}) == 200


def test_champion_alias_is_set_by_this_run(
    stack: dict[str, str], dag_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked with MLflow's own client: the champion came from the run we triggered."""
    from mlflow.tracking import MlflowClient

    # This test process talks to one MLflow only: the environment is the plain way in.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack["mlflow_login"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack["mlflow_password"])
    client = MlflowClient(tracking_uri=stack["mlflow_url"])
    champion = client.get_model_version_by_alias(E2E_MODEL_NAME, "champion")
    assert str(champion.status) == "READY"
    run = client.get_run(champion.run_id)
    assert run.data.tags.get("mlops.airflow.dag_id") == E2E_DAG_ID
    assert run.data.tags.get("mlops.airflow.run_id") == dag_run["dag_run_id"]
    assert run.data.tags.get("mlops.data.uri") == dag_run["train_uri"]
    assert any(k.startswith("holdout_") for k in run.data.metrics), run.data.metrics
    # The model is stored in S3 (moto) through the MLflow server's artifact proxy.
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=stack["s3_url"],
        region_name="us-east-1",
        aws_access_key_id="local-stack",
        aws_secret_access_key="local-stack",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow").get("Contents", [])]
    assert any(k.endswith("MLmodel") for k in keys), keys[:20]


def test_mlops_page_refuses_anonymous_callers(stack: dict[str, str], api: AirflowApi) -> None:
    url = stack["airflow_url"] + "/mlops/"
    assert status_of(url, {"Accept": "application/json"}) == 401
    assert status_of(url + "api/models", {"Authorization": f"Bearer {api.token}"}) == 200


# After the checks above: the scheduler's run proceeds while they run.
def test_scheduled_run_with_nothing_new_is_skipped(scheduled_run: dict[str, Any]) -> None:
    """The scheduler's own run: same data (the YAML's file) and config as the champion."""
    tasks = {t["task_id"]: t["state"] for t in scheduled_run["task_instances"]}
    assert scheduled_run["state"] == "success", tasks
    assert tasks["detect_changes"] == "skipped", tasks
    skipped = ("validate", "train", "evaluate", "register", "promote", "predict")
    assert [tasks[t] for t in skipped] == ["skipped"] * len(skipped), tasks
    assert tasks["summary"] == "success", tasks
    summary = scheduled_run["summary"]
    assert summary["outcome"] == "skipped", summary
    assert summary["reason"] == "no change: same data and config as the champion", summary
    assert summary["champion_version"] == "1", summary


def wait_for_all(browser: Browser, *needles: str, timeout_s: float = 60) -> str:
    """The page's text once it shows every needle, or at the timeout (the caller's asserts
    then name what is missing)."""
    deadline = time.monotonic() + timeout_s
    text = browser.text()
    while not all(n in text for n in needles) and time.monotonic() < deadline:
        time.sleep(0.5)
        text = browser.text()
    return text


def test_ui_shows_run_assets_and_mlops_page(
    stack: dict[str, str], dag_run: dict[str, Any], scheduled_run: dict[str, Any]
) -> None:
    base = stack["airflow_url"]
    run_id = dag_run["dag_run_id"]
    task_ids = [t["task_id"] for t in dag_run["task_instances"]]
    asset_name = E2E_CHAMPION_ASSET
    with Browser() as browser:
        # Log in through the login form, as a person would.
        browser.goto(base + "/")
        browser.wait_for_js("location.pathname.startsWith('/auth/login')", 30)
        browser.screenshot(ARTIFACTS / "00-login.png")
        browser.type_into("input[name=username]", stack["admin_user"])
        browser.type_into("input[name=password]", stack["admin_password"])
        browser.press_enter()
        browser.wait_for_js("!location.pathname.startsWith('/auth/')", 60)

        # The DAG run: grid with every task green, run details, task instances.
        browser.goto(
            f"{base}/dags/{E2E_DAG_ID}/runs/{urllib.parse.quote(run_id, safe='')}", settle_s=0.5
        )
        # Each task appears twice once the page is complete: in the grid and in the table.
        # (Waiting for what is asserted below, not a fixed settle time.)
        browser.wait_for_js(
            f"(() => {{ const t = document.body.innerText; return {json.dumps(task_ids)}"
            ".every(id => t.split(id).length > 2)"
            f" && t.split('Success').length > {len(task_ids) + 1} }})()",
            timeout_s=60,
        )
        text = browser.text()
        assert run_id in text and "Success" in text, text[:1500]
        assert text.count("Success") >= len(task_ids) + 1, text[:3000]
        browser.screenshot(ARTIFACTS / "01-grid-dag-run.png")

        # The champion asset emitted by this run, on the page of the task that emitted it.
        event = dag_run["champion_event"]
        assert event is not None, "the run emitted no champion asset event"
        browser.goto(
            f"{base}/dags/{E2E_DAG_ID}/runs/{urllib.parse.quote(run_id, safe='')}"
            f"/tasks/{urllib.parse.quote(event['source_task_id'], safe='')}/asset_events",
            settle_s=0.5,
        )
        text = wait_for_all(browser, asset_name, "Created Asset Event")
        assert asset_name in text, text[:1500]
        assert "Created Asset Event" in text, text[:1500]
        browser.screenshot(ARTIFACTS / "02-task-asset-events.png")

        # The Assets view lists the retrain asset the CT DAG is scheduled on. (The champion
        # asset, emitted at run time through an AssetAlias, was checked on the task's Asset
        # Events page above; the list shows it only once Airflow registers it as active, which
        # took longer than 60 s in one CI-like run.)
        browser.goto(base + "/assets", settle_s=0.5)
        text = wait_for_all(browser, E2E_RETRAIN_ASSET, "1 Dag")
        assert E2E_RETRAIN_ASSET in text, text[:2000]
        assert "1 Dag" in text, text[:2000]
        browser.screenshot(ARTIFACTS / "03-assets.png")

        # The MLOps page inside the UI (nav entry -> iframe of /mlops/).
        browser.goto(base + "/plugin/mlops", settle_s=2)
        text = browser.wait_for_text(r"@champion", frames=True, timeout_s=90)
        assert E2E_MODEL_NAME in text
        page = text.split("MLOps: registered models", 1)[-1]
        champion_line = next(line for line in page.splitlines() if line.startswith("@champion"))
        assert "\tv" in champion_line and "—" not in champion_line.split("\t")[1], champion_line
        assert "Alias history" in page or "ALIAS HISTORY" in page
        assert "promote" in page
        browser.screenshot(ARTIFACTS / "04-mlops-page.png")

        # The DAG's grid: the REST-triggered run (trained, promoted) and the scheduler's run
        # (skipped: nothing new), side by side.
        browser.goto(f"{base}/dags/{E2E_DAG_ID}", settle_s=1)
        browser.wait_for_text("detect_changes")
        browser.screenshot(ARTIFACTS / "05-dag-grid-two-runs.png")
    assert scheduled_run["summary"]["outcome"] == "skipped"
    for name in (
        "00-login",
        "01-grid-dag-run",
        "02-task-asset-events",
        "03-assets",
        "04-mlops-page",
        "05-dag-grid-two-runs",
    ):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000, name
