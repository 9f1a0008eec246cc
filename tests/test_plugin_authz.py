"""Who may see what on the MLOps page: exactly what Airflow's own API lets the same user read.

One Airflow API app (plugin loaded, ``[core] multi_team`` on) serves both the page and
Airflow's REST API. For each login (anonymous, viewer, user, op, admin, a user with per-DAG
grants only, and one user in each of two teams) every page route is requested and its status
compared with the status Airflow's own API gives the same user for the same DAG:

- the page and its JSON             <-> ``GET /api/v2/dags``;
- a model's reports, and its card   <-> ``GET /api/v2/dags/{lineage dag}``;
- a validation task's report        <-> ``GET .../taskInstances/{task}/xcomEntries/return_value``;
- a model without a lineage DAG     <-> whether ``GET /api/v2/dags`` lists every DAG the
  admin sees (the page shows such a model only to users who may read all DAGs).

Nothing is hard-coded: if Airflow's auth manager answered differently, the expectations would
follow. Three DAGs: one owned by team ``team_a``, one by ``team_b`` (their bundles' team, as
Airflow resolves it) and one by no team.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
from test_plugin import airflow_api

PASSWORD = "authz-test-password"
#: username -> role[:teams], as ``[core] simple_auth_manager_users`` spells them.
USERS = {
    "viewer": "viewer",
    "user": "user",
    "op": "op",
    "admin": "admin",
    "perdag": "viewer",  # its DAG access comes only from PER_DAG_GRANTS
    "alice": "viewer:team_a",
    "bob": "viewer:team_b",
}
LOGINS = ["anonymous", *USERS]
#: username -> the only DAGs that user may read (filled by the ``world`` fixture).
PER_DAG_GRANTS: dict[str, set[str]] = {}


class PerDagAuthManager(SimpleAuthManager):
    """SimpleAuthManager plus per-DAG grants, which it lacks (it has roles and teams only).

    A test-only auth manager, configured through ``[core] auth_manager`` like any other: a
    user listed in :data:`PER_DAG_GRANTS` may read those DAGs and nothing else (listing DAGs
    is allowed, filtered to the grants, as FAB answers a user with per-DAG permissions).
    """

    def is_authorized_dag(
        self,
        *,
        method: Any,
        user: Any,
        access_entity: Any = None,
        details: Any = None,
    ) -> bool:
        grants = PER_DAG_GRANTS.get(user.username)
        if grants is None:
            return super().is_authorized_dag(
                method=method, user=user, access_entity=access_entity, details=details
            )
        if method != "GET":
            return False
        return details is None or details.id is None or details.id in grants


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str) -> Iterator[dict[str, Any]]:
    """Three DAGs (team_a, team_b, no team) whose validation ran, and one model per DAG plus
    one model without lineage, each with a report of every kind the page serves."""
    root = tmp_path_factory.mktemp("authz_artifacts")
    suffix = uuid.uuid4().hex[:6]
    dags = {team: f"authz_{team or 'shared'}_{suffix}" for team in ("team_a", "team_b", None)}
    runs = {dag_id: _run_validation_dag(dag_id, root) for dag_id in dags.values()}
    _give_dags_to_teams({team: dag_id for team, dag_id in dags.items() if team})
    models = {
        dag_id: _model_with_reports(mlflow_server, root, f"authz_m{i}_{suffix}", dag_id)
        for i, dag_id in enumerate([*dags.values(), None])
    }
    PER_DAG_GRANTS["perdag"] = {dags["team_a"]}
    yield {"root": root, "dags": dags, "runs": runs, "models": models}
    PER_DAG_GRANTS.clear()


def _run_validation_dag(dag_id: str, root: Path) -> str:
    """Run a DAG with the provider's validation task; its report goes under ``root``."""
    from airflow.sdk import DAG
    from conftest import serialize_dag

    from airflow_mlops.operators.validation import DataValidationOperator

    data = root / f"{dag_id}.csv"
    data.write_text("x\n1\n2\n")
    suite = {
        "name": "authz",
        "expectations": [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x"}}
        ],
    }
    with DAG(dag_id=dag_id, schedule=None) as dag:
        DataValidationOperator(
            task_id="validate",
            data_uri=str(data),
            suite=suite,
            report_uri=str(root / dag_id / "gx.json"),
        )
    serialize_dag(dag)
    dag_run = dag.test()
    assert str(dag_run.state) == "success"
    return dag_run.run_id


def _give_dags_to_teams(dag_of_team: dict[str, str]) -> None:
    """Each team owns a bundle holding its DAG: the team Airflow's API resolves for a DAG."""
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.team import Team
    from airflow.utils.session import create_session

    with create_session() as session:
        for team_name, dag_id in dag_of_team.items():
            team = session.get(Team, team_name) or Team(name=team_name)
            session.add(team)
            bundle_name = f"{team_name}_bundle"
            bundle = session.get(DagBundleModel, bundle_name) or DagBundleModel(name=bundle_name)
            bundle.teams = [team]
            session.add(bundle)
            session.flush()
            session.get(DagModel, dag_id).bundle_name = bundle_name


def _model_with_reports(
    mlflow_server: str, root: Path, name: str, dag_id: str | None
) -> dict[str, str]:
    """A champion trained by ``dag_id`` (None: no lineage tag) with an MLflow report artifact,
    a validation report URI on its run and a drift check run, both under ``root``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.create_experiment(f"exp_{name}")
    (root / name).mkdir()
    (root / name / "validation.json").write_text(json.dumps({"success": True}))
    (root / name / "drift.html").write_text("<h1>drift</h1>")
    tags = {
        "mlops.validation.success": "true",
        "mlops.validation.report_uri": str(root / name / "validation.json"),
    }
    if dag_id:
        tags["mlops.airflow.dag_id"] = dag_id
    run = client.create_run(experiment, tags=tags)
    artifact = "monitoring/drift/monitor/r1/drift/drift_report.html"
    client.log_text(run.info.run_id, "<h1>drift artifact</h1>", artifact)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias(name, "champion", version.version)
    check = client.create_run(
        experiment,
        tags={
            "mlops.stage": "drift",
            "mlops.model_name": name,
            "mlops.drift.detected": "false",
            "mlops.drift.report_uri": str(root / name / "drift.html"),
        },
    )
    client.set_terminated(check.info.run_id)
    return {
        "name": name,
        "artifact": f"/mlops/reports/runs/{run.info.run_id}/artifacts/{artifact}",
        "version_report": f"/mlops/reports/models/{name}/versions/{version.version}/validation",
        "run_report": f"/mlops/reports/runs/{check.info.run_id}/drift",
    }


@pytest.fixture(scope="module")
def api(
    world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, mlflow_server: str
) -> Iterator[Any]:
    from conftest import mlflow_connection_env

    plugins = tmp_path_factory.mktemp("authz_plugins")
    from test_plugin import plugin_declared_by_package

    if not plugin_declared_by_package():
        (plugins / "mlops_plugin.py").write_text(
            "from airflow_mlops.plugins.mlops_page import MlopsPlugin\n"
        )
    env = {
        "AIRFLOW__CORE__AUTH_MANAGER": f"{__name__}.PerDagAuthManager",
        "AIRFLOW__CORE__MULTI_TEAM": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
            f"{name}:{role}" for name, role in USERS.items()
        ),
        "AIRFLOW__MLOPS__ARTIFACTS_URI": str(world["root"]),
        # The models exist before the app starts: one cached (unfiltered) registry read
        # serves every user, and each user's view is filtered after the cache.
        "AIRFLOW__MLOPS__PAGE_CACHE_SECONDS": "600",
        "AIRFLOW_CONN_MLFLOW_DEFAULT": mlflow_connection_env(mlflow_server),
    }
    with airflow_api(plugins, dict.fromkeys(USERS, PASSWORD), env) as client:
        yield client


@pytest.fixture(scope="module")
def headers(api: Any) -> dict[str, dict[str, str]]:
    """Request headers per login (a JSON client: anonymous gets 401, not the login page)."""
    found = {"anonymous": {"Accept": "application/json"}}
    for name in USERS:
        response = api.post("/auth/token", json={"username": name, "password": PASSWORD})
        assert response.status_code in (200, 201), response.text
        token = response.json()["access_token"]
        found[name] = {"Accept": "application/json", "Authorization": f"Bearer {token}"}
    return found


def airflow_answers(api: Any, world: dict[str, Any], auth: dict[str, str]) -> dict[str, Any]:
    """What Airflow's own REST API answers this user, per route of the page."""
    listing = api.get("/api/v2/dags?limit=1", headers=auth)
    answers: dict[str, Any] = {"page": listing.status_code}
    total = listing.json()["total_entries"] if listing.status_code == 200 else None
    answers["reads_all"] = total is not None and total == world["admin_total"]
    for dag_id in world["dags"].values():
        answers[dag_id] = api.get(f"/api/v2/dags/{dag_id}", headers=auth).status_code
        run = quote(world["runs"][dag_id], safe="")
        xcom = (
            f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances/validate/xcomEntries/return_value"
        )
        answers[f"xcom:{dag_id}"] = api.get(xcom, headers=auth).status_code
    return answers


def expected_model_status(answers: dict[str, Any], dag_id: str | None) -> int:
    """A model's routes answer as Airflow answers for its lineage DAG (no lineage: all DAGs)."""
    if dag_id is not None:
        return answers[dag_id]
    if answers["page"] != 200:
        return answers["page"]
    return 200 if answers["reads_all"] else 403


@pytest.fixture(scope="module")
def admin_total(api: Any, world: dict[str, Any], headers: dict[str, dict[str, str]]) -> int:
    listing = api.get("/api/v2/dags?limit=1", headers=headers["admin"])
    assert listing.status_code == 200, listing.text
    world["admin_total"] = listing.json()["total_entries"]
    return world["admin_total"]


@pytest.mark.parametrize("login", LOGINS)
def test_page_answers_like_airflow_api(
    api: Any,
    world: dict[str, Any],
    headers: dict[str, dict[str, str]],
    admin_total: int,
    login: str,
) -> None:
    auth = headers[login]
    answers = airflow_answers(api, world, auth)
    expected: dict[str, int] = {"/mlops/": answers["page"], "/mlops/api/models": answers["page"]}
    actual = {path: api.get(path, headers=auth).status_code for path in expected}
    for dag_id, model in world["models"].items():
        status = expected_model_status(answers, dag_id)
        for route in ("artifact", "version_report", "run_report"):
            expected[model[route]] = status
            actual[model[route]] = api.get(model[route], headers=auth).status_code
    for dag_id, run_id in world["runs"].items():
        route = f"/mlops/reports/airflow/{dag_id}/{quote(run_id, safe='')}/validate"
        expected[route] = answers[f"xcom:{dag_id}"]
        actual[route] = api.get(route, headers=auth).status_code
    print(f"\n{login}: " + json.dumps(actual, indent=1))  # the role matrix, for the record
    assert actual == expected

    # The cards listed are the models whose routes answer 200 (the page shows what it serves).
    if answers["page"] == 200:
        listed = {m["name"] for m in api.get("/mlops/api/models", headers=auth).json()["models"]}
        html = api.get("/mlops/", headers=auth).text
        for dag_id, model in world["models"].items():
            shown = expected_model_status(answers, dag_id) == 200
            assert (model["name"] in listed) == shown, (login, model["name"])
            assert (f'data-model="{model["name"]}"' in html) == shown, (login, model["name"])


def test_the_matrix_is_not_trivial(
    api: Any, world: dict[str, Any], headers: dict[str, dict[str, str]], admin_total: int
) -> None:
    """Guard the comparison above: Airflow's own answers really differ between these users."""
    team_a, team_b = world["dags"]["team_a"], world["dags"]["team_b"]
    answers = {login: airflow_answers(api, world, headers[login]) for login in LOGINS}
    assert answers["anonymous"]["page"] == 401
    assert (answers["alice"][team_a], answers["alice"][team_b]) == (200, 403)
    assert (answers["bob"][team_a], answers["bob"][team_b]) == (403, 200)
    assert (answers["perdag"][team_a], answers["perdag"][world["dags"][None]]) == (200, 403)
    assert answers["admin"]["reads_all"] and not answers["alice"]["reads_all"]
