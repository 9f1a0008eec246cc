"""Explanations per version: permutation importance of the challenger, logged on its run.

The challenger is trained by the real training code (``core.training.train_model``) on a
table where only ``signal`` decides the label and ``noise_a``/``noise_b`` are noise, then
evaluated on the real MLflow server. SHAP is an optional extra: the test hides it
(``sys.modules["shap"] = None`` makes ``import shap`` raise ImportError, as when it is not
installed) so the skip path is exercised whether or not it is installed here.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_evaluation import train, unique_name

TREE = ("sklearn.tree.DecisionTreeClassifier", {"max_depth": 3, "random_state": 0})


def _dataset(path: Path, rows: int = 600) -> str:
    rng = np.random.default_rng(3)
    signal = rng.normal(size=rows)
    frame = pd.DataFrame(
        {
            "noise_a": rng.normal(size=rows),
            "signal": signal,
            "noise_b": rng.normal(size=rows),
            "label": (signal > 0).astype(int),
        }
    )
    frame.to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def trained(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = _dataset(tmp_path_factory.mktemp("explain") / "d.csv")
    name = unique_name("explain")
    return {"name": name, "result": train(mlflow_server, data, TREE, model_name=name)}


def _evaluate(client: Any, trained: dict[str, Any], explain: Any) -> Any:
    from airflow_mlops.core.evaluation import challenger_from_training, evaluate_challenger
    from airflow_mlops.core.storage import Storage

    challenger = challenger_from_training(client, trained["result"])
    policy = {"value_thresholds": {"accuracy": {"lower": 0.5}}}
    return evaluate_challenger(
        client, Storage(), challenger, model_name=trained["name"], policy=policy, explain=explain
    )


def test_permutation_importance_ranks_the_planted_feature_first_and_is_logged(
    client, trained, monkeypatch, caplog
):
    import mlflow

    from airflow_mlops.core.evaluation import log_artifacts

    monkeypatch.setitem(sys.modules, "shap", None)  # as when the extra is not installed
    caplog.set_level(logging.INFO, logger="airflow_mlops.core.explanations")
    evaluation = _evaluate(client, trained, {"max_rows": 100, "seed": 7, "top": 2, "shap": True})
    summary = evaluation.record["explanations"]
    assert summary["top_features"][0]["feature"] == "signal"
    assert len(summary["top_features"]) == 2
    assert summary["top_features"][0]["importance"] > 0.3
    assert summary["shap"].startswith("skipped: the shap package is not installed")
    assert "SHAP summary skipped: the shap package is not installed" in caplog.text
    assert evaluation.record["promote"] is True  # explanations never gate

    full = evaluation.artifacts["mlops/explanations.json"]
    holdout_rows = evaluation.record["holdout"]["rows"]
    assert holdout_rows > 100 and full["rows"] == 100  # the cap, sampled
    assert {f["feature"] for f in full["features"]} == {"signal", "noise_a", "noise_b"}
    noise = [f["importance_mean"] for f in full["features"] if f["feature"] != "signal"]
    assert max(noise) < 0.05

    again = _evaluate(client, trained, {"max_rows": 100, "seed": 7, "top": 2})
    assert again.artifacts["mlops/explanations.json"]["features"] == full["features"]  # seeded

    record = log_artifacts(client, trained["result"]["run_id"], evaluation)
    stored = mlflow.artifacts.load_dict(record["explanations"]["artifact_uri"])
    assert stored["features"] == full["features"]
    assert stored["shap"] == {"skipped": full["shap"]["skipped"]}


def test_explain_false_turns_it_off_and_shap_skips_non_tree_models():
    from sklearn.linear_model import LogisticRegression

    from airflow_mlops.core.explanations import parse_explain, shap_summary

    assert parse_explain(False).enabled is False
    assert parse_explain(True).shap is False  # SHAP is asked for, not implied by the install
    frame = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    model = LogisticRegression().fit(frame, [0, 0, 1, 1])
    assert shap_summary(model, frame) == {"skipped": "LogisticRegression is not a tree model"}
