"""Issue 18 item 1: a model card per registered version, checked against the run's facts.

One real CT run (factory DAG, ``dag.test()``, the real MLflow server fixture) on breast-cancer
data in which one informative column is renamed ``</script><script>alert(1)</script>`` and
the pipeline's description carries the same text: the card must list it, and its HTML page
must escape it. Every card section is compared with what the run recorded independently
(registry, run tags and params, the manifest artifact, the decision record, the validate
task's XCom, the DAG run).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from test_pipelines import (
    DATA,
    SMALL_FOREST,
    mlflow_connection,
    run_manual,
    unique,
    xcom,
)

from airflow_mlops.cli import main as cli_main
from airflow_mlops.core.model_card import (
    MODEL_CARD_HTML,
    MODEL_CARD_JSON,
    TAG_MODEL_CARD_SHA256,
    ModelCardError,
    read_model_card,
    render_html,
    write_model_card,
)
from airflow_mlops.factories import continuous_training_dag, parse_config

HOSTILE = "</script><script>alert(1)</script>"
PIPELINES = Path(__file__).resolve().parents[1] / "include" / "pipelines"


@pytest.fixture(scope="module")
def client(mlflow_server: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow_server)


@pytest.fixture(scope="module")
def carded(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("card-data")
    frame = pd.read_parquet(DATA / "breast_cancer" / "reference.parquet")
    frame = frame.rename(columns={"worst_radius": HOSTILE})
    train_uri = folder / "train.parquet"
    frame.to_parquet(train_uri, index=False)
    name = unique("card")
    config = parse_config(
        {
            "name": name,
            "description": f"Screens biopsies. {HOSTILE}",
            "retries": 0,
            "data": {"train_uri": str(train_uri), "target": "benign"},
            "validation": {
                "suite": [
                    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": HOSTILE}},
                    {
                        "type": "expect_table_row_count_to_be_between",
                        "kwargs": {"min_value": 50},
                    },
                ],
                "on_failure": "fail",
            },
            "training": {
                "estimator": "sklearn.ensemble.RandomForestClassifier",
                "params": SMALL_FOREST,
                "holdout_fraction": 0.3,
            },
            "promotion": {"approval": "auto", "serving_check": False},
            "monitoring": {"enabled": False},
        },
        source=f"<test {name}>",
        base_dir=PIPELINES,
    )
    with mlflow_connection(mlflow_server):
        dag_run = run_manual(continuous_training_dag(config))
    assert dag_run.state == "success"
    promote = xcom(dag_run, "promote")
    return {
        "config": config,
        "dag_run": dag_run,
        "model": config.registered_model_name,
        "promote": promote,
        "train": xcom(dag_run, "train"),
        "validate": xcom(dag_run, "validate"),
        "evaluate": xcom(dag_run, "evaluate"),
    }


def test_every_section_matches_the_recorded_facts(carded, client):
    model, promote = carded["model"], carded["promote"]
    version = str(promote["version"])
    card = read_model_card(client, model, version)
    model_version = client.get_model_version(model, version)
    run = client.get_run(model_version.run_id)
    tags, params = run.data.tags, run.data.params

    assert card["model"] == {
        "name": model,
        "version": version,
        "run_id": carded["train"]["run_id"],
        "source": model_version.source,
        "registered_at_ms": model_version.creation_timestamp,
        "task": "classification",
    }
    assert card["intended_use"] == carded["config"].description

    data = card["data"]
    manifest = json.loads(
        Path(client.download_artifacts(run.info.run_id, "mlops/manifest.json")).read_text()
    )
    assert data["manifest"]["content_hash"] == tags["mlops.data.manifest_hash"]
    assert data["manifest"]["files"] == len(manifest["files"]) == 1
    assert data["manifest"]["listed"][0]["sha256"] == manifest["files"][0]["sha256"]
    assert HOSTILE in data["features"] and data["target"] == "benign"
    assert data["rows"] == {
        "train": int(params["train_rows"]),
        "holdout": int(params["holdout_rows"]),
    }
    balance = data["class_balance"]
    assert sum(v["train"] for v in balance.values()) == data["rows"]["train"]
    assert sum(v["holdout"] for v in balance.values()) == data["rows"]["holdout"]
    assert set(balance) == {"0", "1"}
    assert data["validation"] == carded["validate"]

    training = card["training"]
    assert training["estimator"] == tags["mlops.estimator"]
    assert training["params"]["n_estimators"] == params["model.n_estimators"] == "10"
    assert training["holdout_metrics"]["f1"] == run.data.metrics["holdout_f1"]

    evaluation, decision = card["evaluation"], carded["evaluate"]
    assert evaluation["rows_compared"] == decision["rows_compared"]
    assert evaluation["rows_excluded"] == decision["rows_excluded"]
    assert evaluation["challenger_metrics"] == decision["challenger_metrics"]
    assert evaluation["champion_version"] is None  # the first model
    names = [f["feature"] for f in evaluation["top_features"]["features"]]
    assert names and set(names) <= set(data["features"])

    # The evaluate task computed the training-data drift: nothing to compare the first with.
    assert card["drift"]["training_data_vs_previous_champion"] == (
        "first model: no previous champion"
    )
    assert card["decision"]["outcome"] == promote["outcome"] == "promoted"
    assert card["decision"]["decided_by"] == "policy"
    assert card["decision"]["policy_verdict"] == "promote"

    lineage = card["lineage"]
    assert lineage["airflow"]["dag_id"] == carded["dag_run"].dag_id
    assert lineage["airflow"]["run_id"] == carded["dag_run"].run_id
    assert lineage["config_hash"] == carded["config"].fingerprint()

    # The promote task's XCom names the card and its hash; the version is tagged with it.
    text = Path(client.download_artifacts(run.info.run_id, MODEL_CARD_JSON)).read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert promote["model_card"]["sha256"] == digest
    assert model_version.tags[TAG_MODEL_CARD_SHA256] == digest


def test_html_escapes_a_hostile_column_name(carded, client):
    html = Path(
        client.download_artifacts(carded["train"]["run_id"], "mlops/model_card.html")
    ).read_text()
    assert "<script>" not in html and "</script>" not in html
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_the_card_is_written_once_and_a_changed_card_is_refused(carded, client):
    model, version = carded["model"], str(carded["promote"]["version"])
    again = write_model_card(client, model, version, intended_use="something else")
    assert again.written is False
    assert again.sha256 == carded["promote"]["model_card"]["sha256"]
    assert read_model_card(client, model, version)["intended_use"] != "something else"

    run_id = carded["train"]["run_id"]
    original = Path(client.download_artifacts(run_id, MODEL_CARD_JSON)).read_text()
    client.log_text(run_id, original.replace("promoted", "rejected"), MODEL_CARD_JSON)
    try:
        with pytest.raises(ModelCardError, match="does not match the hash"):
            read_model_card(client, model, version)
    finally:
        client.log_text(run_id, original, MODEL_CARD_JSON)
    assert read_model_card(client, model, version)["decision"]["outcome"] == "promoted"


def test_writing_a_card_reads_its_version_once(carded, client, monkeypatch):
    """A second version of the carded run gets its own card from one version read."""
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import register_version

    model, run_id = carded["model"], carded["train"]["run_id"]
    originals = {
        path: Path(client.download_artifacts(run_id, path)).read_text()
        for path in (MODEL_CARD_JSON, MODEL_CARD_HTML)
    }
    version = register_version(
        client, model, carded["train"]["model_uri"], context=RunContext(task_id="card-reads")
    ).version
    reads: list[tuple] = []
    real = client.get_model_version
    monkeypatch.setattr(client, "get_model_version", lambda *a: reads.append(a) or real(*a))
    try:
        ref = write_model_card(client, model, version, intended_use="second version")
        assert ref.written is True and len(reads) == 1, reads
        card = read_model_card(client, model, version)
        assert card["model"]["version"] == version and card["intended_use"] == "second version"
    finally:  # the two versions share the run's card files: give the first its own back
        for path, text in originals.items():
            client.log_text(run_id, text, path)
    assert read_model_card(client, model, str(carded["promote"]["version"]))["model"][
        "version"
    ] == (str(carded["promote"]["version"]))


def test_cli_saves_the_card_as_html(carded, client, mlflow_conn, tmp_path, capsys):
    model, version = carded["model"], str(carded["promote"]["version"])
    output = tmp_path / "card.html"
    assert (
        cli_main(["model-card", model, version, "--format", "html", "--output", str(output)]) == 0
    )
    assert output.read_text() == render_html(read_model_card(client, model, version))
    assert cli_main(["model-card", model, "999"]) == 1
    assert "error:" in capsys.readouterr().err


def test_a_browser_shows_the_hostile_name_as_text_and_runs_no_script(carded, client):
    """The card page opened in headless Chromium: the hostile column name is visible text,
    the page holds no script element (screenshot in test-artifacts/)."""
    from devkit import ensure_binary
    from e2e._browser import Browser

    ensure_binary("chromium", "chromium")
    page = Path(client.download_artifacts(carded["train"]["run_id"], "mlops/model_card.html"))
    shots = Path(__file__).resolve().parents[1] / "test-artifacts" / "governance"
    shots.mkdir(parents=True, exist_ok=True)
    with Browser(width=1280, height=2400) as browser:
        browser.goto(page.as_uri(), settle_s=0.3)
        assert HOSTILE in browser.text()
        assert browser.js("document.querySelectorAll('script').length") == 0
        assert f"Model card: {carded['model']} version" in browser.text()
        browser.screenshot(shots / "model-card.png")
