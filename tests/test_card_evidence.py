"""Issue 18 items 1 and 4: the card's training-data drift, the pending card and the shadow
record, in the card, the approval body and the MLOps page.

Real training code (``core.training.train_model``: the drift reference files and tags are
the ones production writes), the real MLflow server fixture, the evaluation workflow, the
approval operator's request-building step with a real MLflow client, and Airflow's real API
app (TestClient) for the page. The approval's human-in-the-loop wait itself is not run (it
needs a triggerer; tests/test_approvals_live.py covers it): ``_start_waiting`` is the part
that writes the pending card and builds the body.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from test_evaluation import STUMP, WORST, make_dataset, train, unique_name

from airflow_mlops.core.lineage import RunContext
from airflow_mlops.core.model_card import (
    PENDING_CARD_HTML,
    PENDING_CARD_JSON,
    TAG_MODEL_CARD_PENDING,
    TAG_MODEL_CARD_SHA256,
    build_model_card,
)

POLICY = {"change_thresholds": {"accuracy": {"direction": "higher", "min_delta": -1.0}}}


def _shifted(path: Path, source: str) -> str:
    """The same rows with ``x1`` and ``x2`` moved by 3 standard deviations."""
    frame = pd.read_csv(source)
    frame["x1"], frame["x2"] = frame["x1"] + 3.0, frame["x2"] - 3.0
    frame.to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def evaluated(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A champion on data A; challengers on A (same), on shifted A (shift, @challenger) and a
    batched segment's on A: each evaluated as its path does."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core import evaluation as ev
    from airflow_mlops.core.registry import register_version
    from airflow_mlops.core.storage import Storage

    folder = tmp_path_factory.mktemp("card-evidence")
    data = make_dataset(folder / "a.csv")
    shifted = _shifted(folder / "b.csv", data)
    client, name = MlflowClient(mlflow_server), unique_name("evidence")
    mlflow.set_tracking_uri(mlflow_server)
    runs = {
        "champion": train(mlflow_server, data, WORST, model_name=name, task_id="train"),
        "same": train(mlflow_server, data, STUMP, model_name=name, task_id="train2"),
        "shift": train(mlflow_server, shifted, STUMP, model_name=name, task_id="train3"),
        "batched": train(mlflow_server, data, WORST, model_name=name, task_id="batch[seg_a]"),
    }
    versions = {
        key: register_version(
            client, name, run["model_uri"], context=RunContext(task_id=key), run_id=run["run_id"]
        ).version
        for key, run in runs.items()
    }
    client.set_registered_model_alias(name, "champion", versions["champion"])
    client.set_registered_model_alias(name, "challenger", versions["shift"])
    records, seconds = {}, {}
    for key in ("champion", "same", "shift", "batched"):
        challenger = ev.challenger_from_training(client, runs[key])
        started = time.monotonic()
        evaluation = ev.evaluate_challenger(
            client,
            Storage(),
            challenger,
            model_name=name,
            policy=POLICY,
            champion=None if key == "champion" else "resolve",
            # What the evaluate task sets; batched segments call with the default.
            **({} if key == "batched" else {"training_drift": True}),
        )
        seconds[key] = time.monotonic() - started
        record = ev.log_artifacts(client, challenger.run_id, evaluation)
        ev.log_record(client, challenger.run_id, record, ev.DECISION_ARTIFACT)
        records[key] = record
    print(f"evaluation seconds (training_drift on except 'batched'): {seconds}")
    return {"name": name, "runs": runs, "versions": versions, "records": records}


def _artifact(client: Any, run_id: str, path: str) -> Any:
    return json.loads(Path(client.download_artifacts(run_id, path)).read_text())


def test_card_drift_section_is_the_recorded_comparison_with_the_champion(evaluated, client):
    name, versions, runs = evaluated["name"], evaluated["versions"], evaluated["runs"]
    sections = {}
    for key in ("champion", "same", "shift", "batched"):
        card = build_model_card(client, name, versions[key], promotion={})
        sections[key] = card["drift"]["training_data_vs_previous_champion"]

    shift = sections["shift"]
    recorded = _artifact(client, runs["shift"]["run_id"], "mlops/training_drift.json")
    assert shift == recorded  # the card shows what the evaluate step recorded
    assert shift["status"] == "computed"
    assert shift["champion_version"] == versions["champion"]
    drifted = {c["column"] for c in shift["drifted_columns"]}
    assert {"x1", "x2"} <= drifted and "group" not in drifted, shift
    assert shift["rows"]["challenger"] > 0 and shift["rows"]["champion"] > 0
    assert set(shift["methods"]) and shift["dataset"]["drifted_columns"] == len(drifted)
    assert evaluated["records"]["shift"]["training_drift"]["drifted_columns"] == [
        c["column"] for c in shift["drifted_columns"]
    ]

    same = sections["same"]
    assert same["status"] == "computed" and same["drifted_columns"] == [], same
    assert same["dataset"]["drifted"] is False

    assert sections["champion"] == "first model: no previous champion"
    assert sections["batched"] == "not computed for batched segments"
    assert "training_drift" not in evaluated["records"]["batched"]


def _approval_context(ti_run: str) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="ct_evidence", run_id=ti_run, task_id="approve_promotion")
    ti.map_index = -1
    return {"ti": ti, "task_instance": ti}


def _log_shadow(client: Any, evaluated: dict[str, Any]) -> None:
    from airflow_mlops.core.shadow import log_shadow_records

    champion, challenger = evaluated["versions"]["champion"], evaluated["versions"]["shift"]
    log_shadow_records(
        client,
        evaluated["name"],
        [
            {
                "partition": f"day=2026-12-0{i}",
                "champion_version": int(champion),
                "challenger_version": int(challenger),
                "rows": 100,
                "champion": {"accuracy": 0.5},
                "challenger": {"accuracy": 0.5 + delta},
                "difference": {"accuracy": delta},
            }
            for i, delta in ((1, 0.1), (2, 0.2), (3, 0.3))
        ],
    )


@pytest.fixture(scope="module")
def approval_body(evaluated, mlflow_server: str) -> str:
    """The approval request of the shifted challenger (3 shadow partitions, 3 required)."""
    from conftest import mlflow_connection_env
    from mlflow.tracking import MlflowClient

    from airflow_mlops.operators.approval import PromotionApprovalOperator

    client = MlflowClient(mlflow_server)
    _log_shadow(client, evaluated)
    name, version = evaluated["name"], evaluated["versions"]["shift"]
    registration = {
        "model_name": name,
        "version": version,
        "run_id": evaluated["runs"]["shift"]["run_id"],
        "model_uri": f"models:/{name}/{version}",
    }
    operator = PromotionApprovalOperator(
        task_id="approve_promotion",
        evaluation=evaluated["records"]["shift"],
        registration=registration,
        approvers=["alice"],
        require_shadow_partitions=3,
        shadow_metric="accuracy",
        intended_use="Scores sign-ups.",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", mlflow_connection_env(mlflow_server))
        patch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org/")
        newer = operator._start_waiting(
            _approval_context("manual__1"), evaluated["records"]["shift"], registration, None
        )
    assert newer is None
    return operator.body


def test_approval_writes_a_pending_card_and_links_it_with_the_shadow_record(
    evaluated, approval_body, client
):
    name, version = evaluated["name"], evaluated["versions"]["shift"]
    run_id = evaluated["runs"]["shift"]["run_id"]
    link = f"https://airflow.example.org/mlops/reports/runs/{run_id}/artifacts/{PENDING_CARD_HTML}"
    assert f"]({link})" in approval_body
    shadow = approval_body.split("**Shadow record:**")[1].split("\n")[0]
    assert f"3 partition(s) scored beside champion version {evaluated['versions']['champion']}" in (
        shadow
    )
    assert "accuracy challenger - champion +0.2 (mean; range over partitions [+0.1, +0.3])" in (
        shadow
    )
    assert "require\\_shadow\\_partitions 3: met" in shadow

    tags = client.get_model_version(name, version).tags
    assert TAG_MODEL_CARD_SHA256 not in tags  # the final card and its tag are untouched
    text = Path(client.download_artifacts(run_id, PENDING_CARD_JSON)).read_text()
    import hashlib

    assert tags[TAG_MODEL_CARD_PENDING] == hashlib.sha256(text.encode()).hexdigest()
    card = json.loads(text)
    assert card["decision"]["outcome"] == "awaiting approval"
    assert card["decision"]["awaiting"]["approvers"] == ["alice"]
    assert card["decision"]["reason"] == "awaiting approval: approvers alice, policy manual"
    assert card["intended_use"] == "Scores sign-ups."
    record = card["evaluation"]["shadow_record"]
    assert record["partitions"] == 3 and record["rule"]["met"] is True
    assert record["mean_difference"] == pytest.approx(0.2)
    assert card["drift"]["training_data_vs_previous_champion"]["status"] == "computed"


def test_page_links_cards_shows_the_shadow_record_and_serves_only_cards(
    evaluated, approval_body, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
):
    """The page (Airflow's API app) links the challenger's pending card and the champion's
    final card; the report route serves both and still refuses the model's files."""
    from mlflow.tracking import MlflowClient
    from test_plugin import admin_page_api

    from airflow_mlops.core.model_card import write_model_card
    from airflow_mlops.plugins.model_overview import is_report_artifact

    client = MlflowClient(mlflow_server)
    name, versions, runs = evaluated["name"], evaluated["versions"], evaluated["runs"]
    write_model_card(client, name, versions["champion"], promotion={})
    with admin_page_api(tmp_path_factory.mktemp("card_plugins"), mlflow_server) as (api, auth):
        models = api.get("/mlops/api/models", headers=auth).json()["models"]
        html = api.get("/mlops/", headers=auth).text
        model = next(m for m in models if m["name"] == name)
        shown = {v["alias"]: v for v in model["versions"]}
        assert shown["champion"]["card_artifact"] == "mlops/model_card.html"
        assert shown["challenger"]["card_artifact"] == PENDING_CARD_HTML
        shadow = shown["challenger"]["shadow"]
        assert shadow["partitions"] == 3 and shadow["rule"]["met"] is True
        assert shadow["difference_range"] == pytest.approx([0.1, 0.3])

        card = html.split(f'<section class="card" data-model="{name}">')[1].split("</section>")[0]
        pending = f"/mlops/reports/runs/{runs['shift']['run_id']}/artifacts/{PENDING_CARD_HTML}"
        final = f"/mlops/reports/runs/{runs['champion']['run_id']}/artifacts/mlops/model_card.html"
        assert f'href="{pending}"' in card and f'href="{final}"' in card
        assert "model card (pending decision)" in card
        line = card.split("data-shadow>")[1].split("</div>")[0]
        assert "3 partition(s)" in line and "+0.2000 [+0.1000, +0.3000]" in line
        assert "data-shadow-rule>met<" in line

        for href in (pending, final):
            served = api.get(href, headers=auth)
            assert served.status_code == 200, served.text
            assert served.headers["content-security-policy"].startswith("sandbox")
            assert "<h1>Model card: " in served.text
        model_file = f"/mlops/reports/runs/{runs['shift']['run_id']}/artifacts/model/MLmodel"
        assert api.get(model_file, headers=auth).status_code == 404
        other = f"/mlops/reports/runs/{runs['shift']['run_id']}/artifacts/mlops/decision.json"
        assert api.get(other, headers=auth).status_code == 404
    assert not is_report_artifact("mlops/model_card/pending/../../model/MLmodel")
    assert not is_report_artifact("mlops/model_card/pending/other.html")


def test_a_browser_shows_the_pending_card_with_drift_and_shadow(evaluated, approval_body, client):
    """The pending card in headless Chromium: no script runs, the drift and shadow sections
    are visible (screenshot test-artifacts/governance/model-card-pending.png)."""
    from devkit import ensure_binary
    from e2e._browser import Browser

    ensure_binary("chromium", "chromium")
    page = Path(client.download_artifacts(evaluated["runs"]["shift"]["run_id"], PENDING_CARD_HTML))
    shots = Path(__file__).resolve().parents[1] / "test-artifacts" / "governance"
    shots.mkdir(parents=True, exist_ok=True)
    with Browser(width=1280, height=5400) as browser:
        browser.goto(page.as_uri(), settle_s=0.3)
        text = browser.text()
        assert browser.js("document.querySelectorAll('script').length") == 0
        assert "Decision: awaiting approval" in text
        assert "training_data_vs_previous_champion" in text and "x1" in text
        assert "shadow_record" in text
        browser.screenshot(shots / "model-card-pending.png")
