"""The MLOps page: mounted by Airflow's real API app, protected by Airflow's auth, fed by MLflow.

The app under test is Airflow's own ``create_app()`` with the plugin loaded the way a
deployment loads it, and the SimpleAuthManager issuing real JWTs (``POST /auth/token``).
The registry content comes from the real MLflow server fixture, written with the
provider's own registry functions (registration, challenger, promotion with history).
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

PLUGIN_CLASS = "airflow_mlops.plugins.mlops_page.MlopsPlugin"
ADMIN_PASSWORD = "plugin-test-password"


def plugin_declared_by_package() -> bool:
    """True when the provider info or an ``airflow.plugins`` entry point declares the plugin."""
    from importlib.metadata import entry_points

    from airflow_mlops.get_provider_info import get_provider_info

    declared = {p.get("plugin-class") for p in get_provider_info().get("plugins", [])}
    declared |= {ep.value.replace(":", ".") for ep in entry_points(group="airflow.plugins")}
    return PLUGIN_CLASS in declared


@pytest.fixture(scope="module")
def plugins_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plugins folder holding a one-line shim, unless the package already declares it.

    Declaring the plugin twice makes Airflow report it as already registered.
    """
    folder = tmp_path_factory.mktemp("plugins")
    if not plugin_declared_by_package():
        (folder / "mlops_plugin.py").write_text(
            f"from {PLUGIN_CLASS.rsplit('.', 1)[0]} import MlopsPlugin\n"
        )
    return folder


@pytest.fixture(scope="module")
def artifacts_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``[mlops] artifacts_uri`` of the API server: the only local folder it serves reports from."""
    return tmp_path_factory.mktemp("mlops_artifacts")


#: The api-server's settings shared by this module and tests/test_plugin_authz.py.
BASE_API_ENV = {
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
    "AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS": "False",
    # The session's MLflow server also holds the models of the other test modules: list
    # them all, so this module's models are never cut off by the default cap of 50.
    "AIRFLOW__MLOPS__PAGE_MAX_MODELS": "1000",
    # Each test writes its own models and reads them at once: no overview cache in tests.
    "AIRFLOW__MLOPS__PAGE_CACHE_SECONDS": "0.001",
}


@contextmanager
def admin_page_api(plugins_folder: Path, mlflow_uri: str) -> Iterator[tuple[Any, dict[str, str]]]:
    """:func:`airflow_api` with the MLOps plugin (declared by the package, else from a file in
    ``plugins_folder``) and MLflow at ``mlflow_uri``; ``(client, admin's auth header)``."""
    from conftest import mlflow_connection_env

    if not plugin_declared_by_package():
        (plugins_folder / "mlops_plugin.py").write_text(
            "from airflow_mlops.plugins.mlops_page import MlopsPlugin\n"
        )
    env = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW_CONN_MLFLOW_DEFAULT": mlflow_connection_env(mlflow_uri),
    }
    password = uuid.uuid4().hex
    with airflow_api(plugins_folder, {"admin": password}, env) as api:
        login = {"username": "admin", "password": password}
        token = api.post("/auth/token", json=login).json()["access_token"]
        yield api, {"Authorization": f"Bearer {token}"}


@contextmanager
def airflow_api(
    plugins_folder: Path, passwords: dict[str, str], env: dict[str, str]
) -> Iterator[Any]:
    """Airflow's API app (core routes, UI, auth manager, plugins) in a TestClient."""
    from airflow import plugins_manager, settings
    from airflow.api_fastapi import app as api_app
    from fastapi.testclient import TestClient

    from airflow_mlops.plugins import mlflow_calls

    passwords_file = plugins_folder.parent / f"passwords-{uuid.uuid4().hex[:6]}.json"
    passwords_file.write_text(json.dumps(passwords))
    env = {
        **BASE_API_ENV,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__API_AUTH__JWT_SECRET": "plugin-test-secret-" + uuid.uuid4().hex * 2,
        **env,
    }
    saved = {k: os.environ.get(k) for k in env}
    saved_folder, saved_lazy = settings.PLUGINS_FOLDER, settings.LAZY_LOAD_PROVIDERS
    os.environ.update(env)
    settings.PLUGINS_FOLDER = str(plugins_folder)
    # Plugins declared in the provider info are only loaded when providers are not lazy.
    settings.LAZY_LOAD_PROVIDERS = False
    if str(plugins_folder) not in sys.path:
        sys.path.append(str(plugins_folder))
    _clear_plugin_caches(plugins_manager)
    api_app.purge_cached_app()
    mlflow_calls.reset()
    try:
        with TestClient(api_app.create_app(apps="core"), base_url="http://127.0.0.1") as client:
            yield client
    finally:
        mlflow_calls.reset()
        api_app.purge_cached_app()
        _clear_plugin_caches(plugins_manager)
        settings.PLUGINS_FOLDER, settings.LAZY_LOAD_PROVIDERS = saved_folder, saved_lazy
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def api(plugins_folder: Path, artifacts_root: Path) -> Iterator[object]:
    env = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__MLOPS__ARTIFACTS_URI": str(artifacts_root),
    }
    with airflow_api(plugins_folder, {"admin": ADMIN_PASSWORD}, env) as client:
        yield client


def _clear_plugin_caches(plugins_manager: object) -> None:
    for name in dir(plugins_manager):
        cached = getattr(plugins_manager, name)
        if callable(getattr(cached, "cache_clear", None)):
            cached.cache_clear()


@pytest.fixture(scope="module")
def token(api: object) -> str:
    response = api.post("/auth/token", json={"username": "admin", "password": ADMIN_PASSWORD})  # type: ignore[attr-defined]
    assert response.status_code in (200, 201), response.text
    return response.json()["access_token"]


@pytest.fixture
def registered_model(mlflow_conn: str, mlflow_server: str, artifacts_root: Path) -> dict[str, str]:
    """A model with a challenger promoted to champion, a drift check run and reports (written
    under ``[mlops] artifacts_uri``, the only local folder the page serves reports from)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_history import Actor
    from airflow_mlops.core.alias_moves import promote_to_champion, set_challenger
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import register_version

    name = f"churn_{uuid.uuid4().hex[:6]}"
    reports = artifacts_root / name
    reports.mkdir()
    validation_report = reports / "validation.json"
    validation_report.write_text(json.dumps({"success": True, "evaluated_expectations": 7}))
    drift_report = reports / "drift.html"
    drift_report.write_text("<html><body><h1>Drift report</h1><script>1</script></body></html>")

    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment(f"exp_{name}")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metrics({"holdout_accuracy": 0.9312, "holdout_f1": 0.9021, "train_seconds": 1.5})
        mlflow.set_tags(
            {
                "mlops.stage": "training",
                "mlops.model_name": name,
                "mlops.validation.success": "true",
                "mlops.validation.report_uri": str(validation_report),
            }
        )
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(), pip_requirements=[])
    context = RunContext(dag_id="ct", run_id="manual__1", task_id="register")
    version = register_version(
        client, name, info.model_uri, context=context, run_id=run.info.run_id
    )
    actor = Actor(reason="better f1 than the champion", context=context)
    set_challenger(client, name, version.version, actor)
    promote_to_champion(client, name, version.version, evaluated_champion=None, actor=actor)
    with mlflow.start_run(experiment_id=experiment_id) as drift_run:
        mlflow.set_tags(
            {
                "mlops.stage": "drift",
                "mlops.model_name": name,
                "mlops.drift.detected": "true",
                "mlops.drift.report_uri": str(drift_report),
            }
        )
    result = {
        "name": name,
        "version": version.version,
        "run_id": run.info.run_id,
        "drift_run_id": drift_run.info.run_id,
        "experiment_id": experiment_id,
    }
    _page_sees_new_models()
    return result


@pytest.fixture
def unrelated_champion(mlflow_conn: str, mlflow_server: str) -> str:
    """Another model's champion, without metrics, listed before ``churn_*`` models.

    The MLflow server is shared by the whole test session (the drift tests leave
    ``churn_<hex>`` champions without metrics): the assertions must read their own model's
    card, not the first card on the page.
    """
    from mlflow.tracking import MlflowClient

    name = f"aaa_unrelated_{uuid.uuid4().hex[:6]}"
    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment(f"exp_{name}"))
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias(name, "champion", version.version)
    _page_sees_new_models()
    return name


def _page_sees_new_models() -> None:
    """The page caches the registry for a moment (and a refresh may already be under way):
    a model made by a test must be read afresh by the next request."""
    from airflow_mlops.plugins import mlflow_calls

    mlflow_calls.forget_cached()


class _Constant:
    """Defined lazily as an mlflow PythonModel (keeps mlflow out of module import)."""

    def __new__(cls) -> object:
        import mlflow.pyfunc

        class Constant(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
                return [1] * len(model_input)

        return Constant()


# -- auth -----------------------------------------------------------------------------------


def test_anonymous_api_call_is_refused(api: object) -> None:
    response = api.get("/mlops/api/models", headers={"Accept": "application/json"})  # type: ignore[attr-defined]
    assert response.status_code == 401
    assert response.json()["detail"] == "Not authenticated"


def test_anonymous_browser_is_sent_to_login(api: object) -> None:
    response = api.get("/mlops/", headers={"Accept": "text/html"}, follow_redirects=False)  # type: ignore[attr-defined]
    assert response.status_code == 307
    assert response.headers["location"].startswith("/auth/login")
    assert "next=" in response.headers["location"]
    assert "champion" not in response.text


def test_forged_token_is_refused(api: object) -> None:
    forged = "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJhZG1pbiIsInJvbGUiOiJhZG1pbiJ9.c2lnbmF0dXJl"
    response = api.get("/mlops/", headers={"Authorization": f"Bearer {forged}"})  # type: ignore[attr-defined]
    assert response.status_code in (401, 403)
    assert "champion" not in response.text


def test_report_route_is_protected(api: object) -> None:
    response = api.get("/mlops/reports/runs/abc/drift", headers={"Accept": "application/json"})  # type: ignore[attr-defined]
    assert response.status_code == 401


# -- content --------------------------------------------------------------------------------


def test_logged_in_user_sees_champion_metrics_checks_and_history(
    api: object, token: str, registered_model: dict[str, str], unrelated_champion: str
) -> None:
    response = api.get("/mlops/", headers={"Authorization": f"Bearer {token}"})  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text
    html = response.text
    name, version = registered_model["name"], registered_model["version"]
    assert f'data-model="{name}"' in html
    assert f'data-model="{unrelated_champion}"' in html
    card = model_card(html, name)
    champion_row = card.split('data-alias="champion"')[1].split("</tr>")[0]
    assert f">v{version}<" in champion_row
    assert "0.9312" in champion_row and "0.9021" in champion_row
    assert registered_model["run_id"][:8] in champion_row
    challenger_row = card.split('data-alias="challenger"')[1].split("</tr>")[0]
    assert f">v{version}<" in challenger_row
    drift = card.split('data-check="drift"')[1].split("data-check=")[0]
    assert "drift detected" in drift and "badge bad" in drift
    validation = card.split('data-check="validation"')[1].split("</div>\n  </div>")[0]
    assert "passed" in validation and "badge ok" in validation
    # Links to MLflow (the tracking server is HTTP, so its UI is linked).
    assert f"/#/models/{name}/versions/{version}" in html
    assert (
        f"/#/experiments/{registered_model['experiment_id']}/runs/{registered_model['run_id']}"
        in html
    )
    # Alias history written by the registry functions: challenger set, then promotion.
    history = card.split("Alias history")[1]
    assert "promote" in history and "set" in history and "better f1 than the champion" in history
    # The promotion lock (a registered model of its own) is not listed as a model.
    assert ".mlops-lock" not in html


def model_card(html: str, name: str) -> str:
    """The page's card of model ``name`` (the shared server holds other tests' models)."""
    return html.split(f'<section class="card" data-model="{name}">')[1].split("</section>")[0]


def test_ui_cookie_login_works_and_json_matches(
    api: object, token: str, registered_model: dict[str, str]
) -> None:
    """The UI's iframe sends the ``_token`` cookie, not a bearer header."""
    response = api.get("/mlops/api/models", cookies={"_token": token})  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text
    models = {m["name"]: m for m in response.json()["models"]}
    model = models[registered_model["name"]]
    champion = next(v for v in model["versions"] if v["alias"] == "champion")
    assert champion["version"] == registered_model["version"]
    assert champion["metrics"] == {"accuracy": 0.9312, "f1": 0.9021}
    assert model["checks"]["drift"]["run_id"] == registered_model["drift_run_id"]
    assert model["checks"]["validation"]["model_version"] == registered_model["version"]
    assert [e["action"] for e in model["history"]] == ["promote", "set"]


def test_reports_are_served_sandboxed_from_recorded_uris(
    api: object, token: str, registered_model: dict[str, str]
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    drift = api.get(f"/mlops/reports/runs/{registered_model['drift_run_id']}/drift", headers=auth)  # type: ignore[attr-defined]
    assert drift.status_code == 200, drift.text
    assert "<h1>Drift report</h1>" in drift.text
    assert drift.headers["content-type"].startswith("text/html")
    assert drift.headers["content-security-policy"].startswith("sandbox allow-scripts;")
    assert "allow-popups" not in drift.headers["content-security-policy"]
    path = f"/mlops/reports/models/{registered_model['name']}/versions/{registered_model['version']}/validation"
    validation = api.get(path, headers=auth)  # type: ignore[attr-defined]
    assert validation.status_code == 200, validation.text
    assert validation.json()["evaluated_expectations"] == 7
    # A kind nobody recorded is a clean 404, not an error page.
    missing = api.get(
        f"/mlops/reports/runs/{registered_model['drift_run_id']}/validation", headers=auth
    )  # type: ignore[attr-defined]
    assert missing.status_code == 404


# -- hostile report URIs (issue #14, item 1) --------------------------------------------------


def hostile_local_uris(root: Path, outside: Path) -> list[tuple[str, int]]:
    """(URI, expected status) pairs a tag or an XCom could name, for ``[mlops] artifacts_uri``
    = ``root``; ``outside`` is a file outside it."""
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "escape.html").unlink(missing_ok=True)
    (root / "sub" / "escape.html").symlink_to(outside)  # a symlink inside, pointing outside
    return [
        ("/proc/self/environ", 403),
        ("/etc/passwd", 403),
        ("file:///etc/passwd", 403),
        (f"{root}/../{outside.name}", 400),  # '..' segments
        (f"{root}/sub/./escape.html", 400),
        (f"file://otherhost{root}/sub/x.html", 400),  # another machine's path
        (f"{root}/sub/escape.html", 403),  # the symlink resolves outside
        (f"{root}-evil/x.html", 403),  # a sibling sharing the root's name as a prefix
        (str(root / "sub"), 404),  # a directory
        (str(root), 404),
        ("ftp://example.com/report.html", 400),  # unknown scheme
        ("relative/report.html", 400),
        ("https://evil.example/report.html", 404),  # external: linked, never fetched
    ]


def test_report_uris_outside_artifacts_uri_are_refused(tmp_path: Path) -> None:
    from airflow_mlops.plugins import reports

    root, outside = tmp_path / "artifacts", tmp_path / "secret.txt"
    root.mkdir()
    outside.write_text("SECRET=1")
    (root / "sub" / "ok.html").parent.mkdir()
    (root / "sub" / "ok.html").write_text("<h1>ok</h1>")
    for uri, expected in hostile_local_uris(root, outside):
        with pytest.raises(reports.ReportRefused) as refused:
            reports.read_report(uri, str(root), 1024, s3_client=lambda: None)
        assert refused.value.status == expected, uri
        assert "SECRET" not in refused.value.reason and str(root) not in refused.value.reason
    for uri in (str(root / "sub" / "ok.html"), f"file://{root}/sub/ok.html"):
        assert reports.read_report(uri, str(root), 1024, lambda: None) == b"<h1>ok</h1>"
    # Without [mlops] artifacts_uri, no URI is served at all (only MLflow artifacts).
    with pytest.raises(reports.ReportRefused) as refused:
        reports.read_report(str(root / "sub" / "ok.html"), None, 1024, lambda: None)
    assert refused.value.status == 403


def test_only_html_and_json_reports_are_served_from_the_artifacts_root(tmp_path: Path) -> None:
    """The root also holds holdout/reference/prediction data: a forged tag or XCom naming one
    must not make the page a download of another pipeline's data. A %00 is a 400, not a 500."""
    from airflow_mlops.plugins import reports

    run = tmp_path / "other_team_ct" / "run" / "train" / "training"
    run.mkdir(parents=True)
    for name in ("holdout.parquet", "reference.csv", "notes.txt"):
        (run / name).write_bytes(b"SECRET rows")
    (run / "report.HTML").write_text("<h1>ok</h1>")
    for name in ("holdout.parquet", "reference.csv", "notes.txt"):
        with pytest.raises(reports.ReportRefused) as refused:
            reports.read_report(str(run / name), str(tmp_path), 1024, lambda: None)
        assert refused.value.status == 403, name
    assert reports.read_report(str(run / "report.HTML"), str(tmp_path), 1024, lambda: None)
    with pytest.raises(reports.ReportRefused) as refused:
        reports.read_report(f"file://{run}/report.HTML%00.x", str(tmp_path), 1024, lambda: None)
    assert refused.value.status == 400


def test_oversized_report_is_refused_before_it_is_read(tmp_path: Path) -> None:
    from airflow_mlops.plugins import reports

    big = tmp_path / "big.html"
    big.write_bytes(b"x" * 5000)
    with pytest.raises(reports.ReportRefused) as refused:
        reports.read_report(str(big), str(tmp_path), 4999, lambda: None)
    assert refused.value.status == 413
    # A stream that lies about its size is cut at cap + 1 bytes, never read to its end.
    pulled: list[int] = []

    def endless() -> Iterator[bytes]:
        while True:
            pulled.append(1)
            yield b"y" * 1000

    with pytest.raises(reports.ReportRefused):
        reports.read_capped(endless(), 2500)
    assert len(pulled) == 3


def test_s3_reports_only_under_the_artifacts_prefix(s3_bucket: str, s3_server: str) -> None:
    import boto3

    from airflow_mlops.plugins import reports

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    foreign = f"{s3_bucket}-foreign"
    s3.create_bucket(Bucket=foreign)
    s3.put_object(Bucket=foreign, Key="reports/r.html", Body=b"foreign secret")
    s3.put_object(Bucket=s3_bucket, Key="reports/r.html", Body=b"<h1>mine</h1>")
    s3.put_object(Bucket=s3_bucket, Key="reports-evil/r.html", Body=b"sibling")
    s3.put_object(Bucket=s3_bucket, Key="secret/r.html", Body=b"secret")
    s3.put_object(Bucket=s3_bucket, Key="reports/big.html", Body=b"z" * 3000)
    s3.put_object(Bucket=s3_bucket, Key="reports/holdout.parquet", Body=b"data")
    root = f"s3://{s3_bucket}/reports/"
    refused = {
        f"s3://{foreign}/reports/r.html": 403,
        f"s3://{s3_bucket}/reports-evil/r.html": 403,
        f"s3://{s3_bucket}/reports/../secret/r.html": 400,
        f"s3://{s3_bucket}/reports/": 404,
        f"s3://{s3_bucket}/reports/big.html": 413,
        f"s3://{s3_bucket}/reports/missing.html": 404,
        f"s3://{s3_bucket}/reports/holdout.parquet": 403,  # data, not a report
        "/etc/passwd": 403,  # a local path while the root is on S3
    }
    for uri, expected in refused.items():
        with pytest.raises(reports.ReportRefused) as err:
            reports.read_report(uri, root, 2048, lambda: s3)
        assert err.value.status == expected, uri
    assert reports.read_report(f"s3://{s3_bucket}/reports/r.html", root, 2048, lambda: s3) == (
        b"<h1>mine</h1>"
    )


@pytest.fixture
def tagged_report(mlflow_conn: str, mlflow_server: str) -> Any:
    """``tagged_report(uri)``: a model whose drift check run names ``uri`` as its report
    (anyone with MLflow write access can set this tag); returns the run's report route."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)

    def make(uri: str) -> tuple[str, str]:
        name = f"hostile_{uuid.uuid4().hex[:6]}"
        client.create_registered_model(name)
        run = client.create_run(client.create_experiment(f"exp_{name}"))
        for key, value in {
            "mlops.stage": "drift",
            "mlops.model_name": name,
            "mlops.drift.detected": "false",
            "mlops.drift.report_uri": uri,
        }.items():
            client.set_tag(run.info.run_id, key, value)
        _page_sees_new_models()
        return name, f"/mlops/reports/runs/{run.info.run_id}/drift"

    return make


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("/proc/self/environ", 403), ("/etc/passwd", 403), ("file:///proc/self/environ", 403)],
)
def test_page_never_serves_local_files_named_by_a_tag(
    api: object, token: str, tagged_report: Any, uri: str, expected: int
) -> None:
    _, route = tagged_report(uri)
    response = api.get(route, headers={"Authorization": f"Bearer {token}"})  # type: ignore[attr-defined]
    assert response.status_code == expected, response.text
    assert "root:" not in response.text and "PATH=" not in response.text
    assert uri not in response.text  # the reason does not echo the path


def test_http_report_is_a_link_not_a_redirect(api: object, token: str, tagged_report: Any) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    name, route = tagged_report("https://evil.example/phish")
    response = api.get(route, headers=auth, follow_redirects=False)  # type: ignore[attr-defined]
    assert response.status_code == 404
    assert "location" not in response.headers
    card = model_card(api.get("/mlops/", headers=auth).text, name)  # type: ignore[attr-defined]
    link = re.search(r'<a href="https://evil.example/phish"[^>]*>', card)
    assert link and 'rel="noopener noreferrer"' in link.group(0)
    assert route not in card  # the page does not route the external report through itself


def test_oversized_report_gets_413(
    api: object,
    token: str,
    tagged_report: Any,
    artifacts_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big = artifacts_root / f"big_{uuid.uuid4().hex[:6]}.html"
    big.write_bytes(b"<p>" + b"x" * 4096)
    _, route = tagged_report(str(big))
    auth = {"Authorization": f"Bearer {token}"}
    assert api.get(route, headers=auth).status_code == 200  # type: ignore[attr-defined]
    monkeypatch.setenv("AIRFLOW__MLOPS__REPORT_MAX_BYTES", "1024")
    assert api.get(route, headers=auth).status_code == 413  # type: ignore[attr-defined]


def test_task_report_route_serves_only_validation_tasks_and_their_roots(
    api: object, token: str, run_dag: object, tmp_path: Path, artifacts_root: Path
) -> None:
    """An XCom is writable by the USER role (PATCH xcomEntries): its URI is checked too."""
    from airflow.sdk import DAG, task

    from airflow_mlops.operators.validation import DataValidationOperator

    data = tmp_path / "batch.csv"
    data.write_text("x\n1\n2\n")
    report = artifacts_root / f"gx_{uuid.uuid4().hex[:6]}.json"
    suite = {
        "name": "s",
        "expectations": [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}}
        ],
    }
    dag_id = f"xcom_reports_{uuid.uuid4().hex[:6]}"
    with DAG(dag_id=dag_id, schedule=None) as dag:

        @task
        def lookalike() -> dict[str, object]:
            """Not the provider's validation operator, pushing the same summary shape."""
            return {"success": True, "report_uri": str(report)}

        lookalike()
        DataValidationOperator(
            task_id="validate", data_uri=str(data), suite=suite, report_uri=str(report)
        )
    dag_run = run_dag(dag)  # type: ignore[operator]
    auth = {"Authorization": f"Bearer {token}"}
    base = f"/mlops/reports/airflow/{dag_id}/{quote(dag_run.run_id, safe='')}"  # type: ignore[attr-defined]
    assert api.get(f"{base}/validate", headers=auth).status_code == 200  # type: ignore[attr-defined]
    assert api.get(f"{base}/lookalike", headers=auth).status_code == 404  # type: ignore[attr-defined]
    # A user patches the validation task's XCom to name the api-server's secrets.
    xcom = (
        f"/api/v2/dags/{dag_id}/dagRuns/{quote(dag_run.run_id, safe='')}"  # type: ignore[attr-defined]
        "/taskInstances/validate/xcomEntries/return_value"
    )
    for uri in ("/proc/self/environ", "/etc/passwd"):
        patched = api.patch(
            xcom, headers=auth, json={"value": {"success": True, "report_uri": uri}}
        )  # type: ignore[attr-defined]
        assert patched.status_code == 200, patched.text
        response = api.get(f"{base}/validate", headers=auth)  # type: ignore[attr-defined]
        assert response.status_code == 403, response.text
        assert "root:" not in response.text and "PATH=" not in response.text
    # Or at another DAG's report under the same root (another team's data samples): a URI
    # that is not the task's own rendered report_uri is served only from its DAG's folder.
    other = artifacts_root / "other_team_ct" / "run" / "validate" / "validation_result.json"
    own = artifacts_root / dag_id / "run" / "validate" / "validation_result.json"
    for path in (other, own):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"secret": "rows"}')
    for uri, expected in ((other, 403), (own, 200)):
        patched = api.patch(
            xcom, headers=auth, json={"value": {"success": True, "report_uri": str(uri)}}
        )  # type: ignore[attr-defined]
        assert patched.status_code == 200, patched.text
        response = api.get(f"{base}/validate", headers=auth)  # type: ignore[attr-defined]
        assert response.status_code == expected, (uri, response.text)


def test_nav_entry_is_registered(api: object, token: str) -> None:
    response = api.get("/api/v2/plugins", headers={"Authorization": f"Bearer {token}"})  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text
    plugins = {p["name"]: p for p in response.json()["plugins"]}
    views = plugins["mlops"]["external_views"]
    assert [(v["name"], v["href"], v["url_route"]) for v in views] == [
        ("MLOps", "/mlops/", "mlops")
    ]


def test_page_says_why_when_mlflow_is_unreachable(
    api: object, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = json.dumps(
        {
            "conn_type": "mlflow",
            "host": "http://127.0.0.1:9",
            "extra": {"timeout": 2, "max_retries": 0},
        }
    )
    from airflow_mlops.plugins import mlflow_calls

    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", dead)
    mlflow_calls.reset()  # the page reuses its MLflow client for a minute
    try:
        response = api.get("/mlops/", headers={"Authorization": f"Bearer {token}"})  # type: ignore[attr-defined]
    finally:
        mlflow_calls.reset()
    assert response.status_code == 502
    assert "Could not read the MLflow registry" in response.text
    assert "127.0.0.1:9" in response.text


@pytest.mark.parametrize(
    "module",
    [
        # Scheduler, workers and DAG processor import the plugin class.
        "airflow_mlops.plugins.mlops_page",
        # The api-server imports the app when it mounts it: the page's readers (decay
        # history, approvals) import MLflow and Airflow's models per call, never pandas.
        "airflow_mlops.plugins.mlops_app",
    ],
)
def test_plugin_module_is_import_light(module: str) -> None:
    """No MLflow, pandas or Airflow API security at import."""
    import subprocess

    code = textwrap.dedent(
        f"""
        import sys
        import {module}
        heavy = ("mlflow", "pandas", "numpy", "airflow.api_fastapi.core_api.security")
        print([m for m in heavy if m in sys.modules])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


# -- the operators' own conventions: drift reports on the champion's run, validation in Airflow


@pytest.fixture
def pipeline_model(
    mlflow_conn: str, mlflow_server: str, tmp_path: Path, run_dag: object, artifacts_root: Path
) -> dict[str, str]:
    """A champion trained by DAG ``ct_<model>`` whose validation task really ran in Airflow,
    with two drift reports attached to its run the way ``DriftReportOperator`` attaches them.
    """
    import mlflow
    from airflow.sdk import DAG
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.alias_history import Actor
    from airflow_mlops.core.alias_moves import promote_to_champion
    from airflow_mlops.core.drift_verdict import TAG_LAST_DRIFT, last_drift_tag
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import register_version
    from airflow_mlops.operators.validation import DataValidationOperator

    name = f"pipe_{uuid.uuid4().hex[:6]}"
    dag_id = f"ct_{name}"
    data = tmp_path / "batch.csv"
    data.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    suite = {
        "name": "plugin_test",
        "expectations": [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}},
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "x", "min_value": 0, "max_value": 100},
            },
        ],
    }
    with DAG(dag_id=dag_id, schedule=None) as dag:
        DataValidationOperator(
            task_id="validate",
            data_uri=str(data),
            suite=suite,
            report_uri=str(artifacts_root / name / "gx_result.json"),
        )
    dag_run = run_dag(dag)  # type: ignore[operator]
    assert str(dag_run.state) == "success"

    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment(f"exp_{name}")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metrics({"holdout_rmse": 3.25, "holdout_r2": 0.81})
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(), pip_requirements=[])
    context = RunContext(
        dag_id=dag_id, run_id="scheduled__2026-01-01T00:00:00+00:00", task_id="register"
    )
    version = register_version(
        client, name, info.model_uri, context=context, run_id=run.info.run_id
    )
    promote_to_champion(
        client,
        name,
        version.version,
        evaluated_champion=None,
        actor=Actor(reason="first", context=context),
    )
    # Drift reports as DriftReportOperator attaches them: the newer one says "no drift".
    for run_folder, drifted in (
        ("scheduled__2026-01-01T00_00_00_00_00", True),
        ("scheduled__2026-02-01T00_00_00_00_00", False),
    ):
        folder = f"monitoring/drift/monitor_{name}/{run_folder}/drift"
        summary = {
            "dataset": {
                "drifted": drifted,
                "drifted_columns": 2 if drifted else 0,
                "tested_columns": 3,
            }
        }
        client.log_dict(run.info.run_id, summary, f"{folder}/drift_summary.json")
        client.log_text(
            run.info.run_id,
            f"<html><h1>Drift {run_folder}</h1></html>",
            f"{folder}/drift_report.html",
        )
    # ... and the verdict of the newest one, recorded on the model as the operator records it.
    newest = f"monitoring/drift/monitor_{name}/scheduled__2026-02-01T00_00_00_00_00/drift"
    client.set_registered_model_tag(
        name,
        TAG_LAST_DRIFT,
        last_drift_tag(
            {"dataset": {**summary["dataset"], "drifted_share": 0.0, "drift_share": 0.5}},
            at="2026-02-01T00:00:00+00:00",
            airflow_task={
                "dag_id": f"monitor_{name}",
                "run_id": "scheduled__2026-02-01T00:00:00+00:00",
                "task_id": "drift",
                "map_index": -1,
            },
            mlflow_run_id=run.info.run_id,
            report_artifact=f"{newest}/drift_report.html",
        ),
    )
    signal = {"at": "2026-01-01T00:05:00+00:00", "reason": "data drift: 2/3 columns drifted"}
    client.set_registered_model_tag(name, "mlops.last_retrain_signal", json.dumps(signal))
    _page_sees_new_models()
    return {"name": name, "dag_id": dag_id, "run_id": run.info.run_id, "dag_run_id": dag_run.run_id}


def test_page_reads_the_operators_reports_and_airflow_validation(
    api: object, token: str, pipeline_model: dict[str, str]
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    response = api.get("/mlops/api/models", headers=auth)  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text
    model = {m["name"]: m for m in response.json()["models"]}[pipeline_model["name"]]
    assert model["lineage_dag_ids"] == [pipeline_model["dag_id"]]
    drift = model["checks"]["drift"]
    assert (drift["verdict"], drift["ok"]) == ("no drift", True)  # the newest report wins
    assert drift["at"] == "2026-02-01T00:00:00+00:00"
    assert drift["detail"] == "0/3 columns drifted"
    assert drift["report_artifact"].endswith(
        "scheduled__2026-02-01T00_00_00_00_00/drift/drift_report.html"
    )
    assert model["retrain_signal"]["reason"] == "data drift: 2/3 columns drifted"
    validation = model["checks"]["validation"]
    assert (validation["verdict"], validation["ok"]) == ("passed", True)
    assert validation["airflow_task"]["dag_id"] == pipeline_model["dag_id"]
    assert validation["airflow_task"]["run_id"] == pipeline_model["dag_run_id"]
    assert validation["detail"].startswith("0 of ")

    html = api.get("/mlops/", headers=auth).text  # type: ignore[attr-defined]
    card = html.split(f'data-model="{pipeline_model["name"]}"')[1].split("</section>")[0]
    assert f"/dags/{pipeline_model['dag_id']}/runs/" in card and "/tasks/validate" in card
    assert "last retrain signal" in card
    # Both report links work: the MLflow artifact and the report recorded in the task's XCom.
    links = re.findall(r'href="(/mlops/reports/[^"]+)"', card)
    assert len(links) == 2, links
    bodies = {link: api.get(link.replace("&amp;", "&"), headers=auth) for link in links}  # type: ignore[attr-defined]
    for link, body in bodies.items():
        assert body.status_code == 200, (link, body.text)
        assert body.headers["content-security-policy"].startswith("sandbox")
    texts = " ".join(b.text for b in bodies.values())
    assert "Drift scheduled__2026-02-01" in texts
    assert '"success": true' in texts or '"success":true' in texts


def test_report_route_serves_reports_only(
    api: object, token: str, pipeline_model: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_mlops.plugins.model_overview import is_report_artifact

    auth = {"Authorization": f"Bearer {token}"}
    runs = f"/mlops/reports/runs/{pipeline_model['run_id']}/artifacts"
    model_file = api.get(f"{runs}/model/MLmodel", headers=auth)  # type: ignore[attr-defined]
    assert model_file.status_code == 404
    folder = f"{runs}/monitoring/drift/monitor_{pipeline_model['name']}"
    assert api.get(folder, headers=auth).status_code == 404  # type: ignore[attr-defined]
    report = f"{folder}/scheduled__2026-02-01T00_00_00_00_00/drift/drift_report.html"
    assert api.get(report, headers=auth).status_code == 200  # type: ignore[attr-defined]
    monkeypatch.setenv("AIRFLOW__MLOPS__REPORT_MAX_BYTES", "10")
    assert api.get(report, headers=auth).status_code == 413  # type: ignore[attr-defined]
    # A run no card shows is not served, even from its report folders.
    other = api.get(
        f"/mlops/reports/runs/{uuid.uuid4().hex}/artifacts/{report.split('/artifacts/')[1]}",
        headers=auth,
    )  # type: ignore[attr-defined]
    assert other.status_code == 404
    assert not is_report_artifact("monitoring/../model/MLmodel")
    assert not is_report_artifact("/etc/passwd")
    assert is_report_artifact("monitoring/drift/d/r/t/drift_report.html")


# -- the MLflow address for browsers, shared with the task links ---------------------------


def test_page_links_to_the_configured_mlflow_ui_url(
    api: object, token: str, registered_model: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[mlops] mlflow_ui_url`` is read by the links' function: same address, no credentials."""
    monkeypatch.setenv("AIRFLOW__MLOPS__MLFLOW_UI_URL", "http://viewer:pw@localhost:5999/")
    auth = {"Authorization": f"Bearer {token}"}
    data = api.get("/mlops/api/models", headers=auth).json()  # type: ignore[attr-defined]
    assert data["mlflow_url"] == "http://localhost:5999"
    html = api.get("/mlops/", headers=auth).text  # type: ignore[attr-defined]
    name, version = registered_model["name"], registered_model["version"]
    assert f"http://localhost:5999/#/models/{name}/versions/{version}" in html
    assert "viewer:pw" not in html


# -- the last validation that ran, not a "no change" skip ---------------------------------


def test_validation_verdict_survives_runs_that_skipped_validation(
    run_dag: object, tmp_path: Path
) -> None:
    from airflow.sdk import DAG, task
    from airflow.sdk.exceptions import AirflowSkipException
    from conftest import task_states

    from airflow_mlops.operators.validation import DataValidationOperator
    from airflow_mlops.plugins.airflow_facts import latest_validation

    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("x,y\n1,a\n2,b\n")
    bad.write_text("x,y\n1,a\n,b\n")  # a null x
    suite = {
        "name": "no_nulls",
        "expectations": [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}}
        ],
    }
    dag_id = f"ct_skips_{uuid.uuid4().hex[:6]}"
    with DAG(dag_id=dag_id, schedule=None) as dag:

        @task
        def detect_changes(**context: object) -> None:
            """Like DetectChangesOperator: nothing new since the champion skips the run."""
            if context["dag_run"].conf.get("unchanged"):  # type: ignore[attr-defined]
                raise AirflowSkipException("no change since the champion")

        detect_changes() >> DataValidationOperator(
            task_id="validate",
            data_uri="{{ dag_run.conf.get('data', '') }}",
            suite=suite,
            on_failure="skip",
        )

    def read_all(dag_id: str) -> bool:
        return True

    validated = run_dag(dag, data=str(good))  # type: ignore[operator]
    assert task_states(validated)[("validate", -1)] == "success"
    unchanged = [run_dag(dag, unchanged=True) for _ in range(2)]  # type: ignore[operator]
    assert {task_states(r)[("validate", -1)] for r in unchanged} == {"skipped"}

    verdict = latest_validation([dag_id], read_all)
    assert verdict is not None
    assert (verdict.verdict, verdict.ok) == ("passed", True)  # not "skipped"
    assert verdict.airflow_task["run_id"] == validated.run_id  # type: ignore[index]
    assert verdict.note == "2 newer run(s) skipped validation"

    # A validation that failed under on_failure="skip" did run: it is the newest verdict.
    failed = run_dag(dag, data=str(bad))  # type: ignore[operator]
    assert task_states(failed)[("validate", -1)] == "skipped"
    verdict = latest_validation([dag_id], read_all)
    assert verdict is not None
    assert (verdict.verdict, verdict.ok) == ("failed", False)
    assert verdict.airflow_task["run_id"] == failed.run_id  # type: ignore[index]
    assert verdict.note is None


def test_page_says_which_run_a_validation_verdict_comes_from() -> None:
    from airflow_mlops.plugins.mlops_app import _airflow_task_href, _templates
    from airflow_mlops.plugins.model_overview import ModelOverview, Verdict

    run_id = "scheduled__2026-01-01T00:00:00+00:00"
    verdict = Verdict(
        kind="validation",
        verdict="passed",
        ok=True,
        airflow_task={"dag_id": "ct", "run_id": run_id, "task_id": "validate", "map_index": -1},
        note="2 newer run(s) skipped validation",
    )
    model = ModelOverview(name="churn", checks={"validation": verdict})
    links = {
        "model": lambda name: None,
        "version": lambda name, v: None,
        "run": lambda exp, run: None,
        "report": lambda model, verdict: None,
        "external": lambda verdict: None,
        "task": _airflow_task_href,
    }
    html = _templates.get_template("mlops.html").render(
        error=None, models=[model], metric_names=[], links=links, prefix="/mlops"
    )
    check = html.split('data-check="validation"')[1].split('data-check="drift"')[0]
    assert '<span class="badge ok">passed</span>' in check
    assert f"<code data-airflow-run>{run_id}</code>" in check
    assert "2 newer run(s) skipped validation" in check


# -- decay results and pending approvals read from Airflow (issue #17, item 6) ---------------


def test_decay_results_and_pending_approvals_come_only_from_the_models_own_dags(
    run_dag: Any,
) -> None:
    """The newest decay result naming the model, from its own DAGs only (another DAG's XCom
    cannot speak for it); approvals still waiting, with the model from the registration.

    The decay task is a stand-in operator of the same class name (the real one runs in
    tests/test_page_states.py); the approval's human-in-the-loop record is inserted as the
    Execution API writes it, because ``dag.test()`` cannot leave a task awaiting input."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.sdk import DAG, BaseOperator, task
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_mlops.plugins.airflow_facts import latest_decays, pending_approvals
    from airflow_mlops.plugins.mlops_app import approval_href

    class ModelPerformanceOperator(BaseOperator):
        def __init__(self, *, result: dict[str, Any], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.result = result

        def execute(self, context: Any) -> dict[str, Any]:
            return self.result

    name = f"facts_{uuid.uuid4().hex[:6]}"
    runs = {}
    for dag_id, decayed in ((f"monitor__{name}", False), (f"evil_{name}", True)):
        with DAG(dag_id, schedule=None) as dag:
            ModelPerformanceOperator(
                task_id="decay", result={"model_name": name, "decayed": decayed}
            )
        runs[dag_id] = run_dag(dag)
    found = latest_decays({name: [f"monitor__{name}", f"ct__{name}"]}, lambda dag_id: True)
    assert found[name][0] == {"model_name": name, "decayed": False}
    assert found[name][1]["dag_id"] == f"monitor__{name}"
    assert latest_decays({name: [f"monitor__{name}"]}, lambda dag_id: False) == {}

    with DAG(f"ct__{name}", schedule=None) as dag:

        @task(task_id="register")
        def register() -> dict[str, str]:
            return {"model_name": name, "version": "7"}

        @task(task_id="approve_promotion")
        def approve() -> None:
            """Stands in for the approval task (its request is written below)."""

        register() >> approve()
    waiting, answered = run_dag(dag), run_dag(dag)
    with create_session() as session:
        for dag_run in (waiting, answered):
            ti = session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == dag.dag_id,
                    TaskInstance.run_id == dag_run.run_id,
                    TaskInstance.task_id == "approve_promotion",
                )
            ).one()
            ti.state = "awaiting_input" if dag_run is waiting else "success"
            session.add(
                HITLDetail(
                    ti_id=ti.id,
                    options=["Approve", "Reject"],
                    subject="Promote something to @champion?",
                    params={},
                    responded_at=None if dag_run is waiting else ti.end_date,
                )
            )
    [approval] = pending_approvals([dag.dag_id], lambda dag_id: True)
    assert (approval.run_id, approval.model_name, approval.version) == (waiting.run_id, name, "7")
    assert approval_href(approval) == (
        f"/dags/{dag.dag_id}/runs/{quote(waiting.run_id, safe='')}"
        "/tasks/approve_promotion/required_actions"
    )
    # Without the right to read task results, the model is not taken from the XCom.
    [unread] = pending_approvals([dag.dag_id], lambda dag_id: False)
    assert unread.model_name is None
    assert pending_approvals([f"evil_{name}"], lambda dag_id: True) == []
