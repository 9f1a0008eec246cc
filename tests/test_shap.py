"""The SHAP summary (the ``explain`` extra, a dev dependency so this path is tested).

Real shap, scikit-learn and XGBoost models on a small table where only ``signal`` decides
the label: a tree model, bare or behind the training code's default preprocessing, gets
mean |SHAP| per input ranked with ``signal`` first and named like the model's inputs; a
non-tree model records why it was skipped. Nothing is mocked.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pandas as pd
import pytest

ROWS = 300


@pytest.fixture(scope="module")
def table() -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """``(X, binary label, numeric target)``; ``signal`` decides both, the rest is noise."""
    assert importlib.util.find_spec("shap"), "shap is a dev dependency: make venv"
    rng = np.random.default_rng(5)
    signal = rng.normal(size=ROWS)
    X = pd.DataFrame(
        {
            "noise": rng.normal(size=ROWS),
            "signal": signal,
            "colour": rng.choice(["red", "green", "blue"], size=ROWS),
        }
    )
    return X, pd.Series((signal > 0).astype(int)), pd.Series(3.0 * signal)


def _numeric(X: pd.DataFrame) -> pd.DataFrame:
    return X[["noise", "signal"]]


def _ranked(summary: dict[str, Any]) -> list[str]:
    assert summary.get("method") == "shap.TreeExplainer", summary
    values = [f["mean_abs_shap"] for f in summary["features"]]
    assert values == sorted(values, reverse=True) and all(v >= 0 for v in values)
    return [f["feature"] for f in summary["features"]]


def test_tree_models_get_a_ranked_summary_named_like_their_inputs(table):
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from xgboost import XGBClassifier

    from airflow_mlops.core.estimators import build_preprocessor
    from airflow_mlops.core.explanations import shap_summary

    X, label, target = table
    numeric = _numeric(X)
    # Classifiers: shap gives one value per class (a 3-D array for the forest): averaged.
    for model in (
        RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0),
        XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1),
    ):
        names = _ranked(shap_summary(model.fit(numeric, label), numeric))
        assert names == ["signal", "noise"], (type(model).__name__, names)

    # Behind the training code's default preprocessing: the names are its output names.
    preprocess = build_preprocessor(X, max_categories=10)
    pipeline = Pipeline(
        [("preprocess", preprocess), ("model", HistGradientBoostingRegressor(max_iter=30))]
    ).fit(X, target)
    names = _ranked(shap_summary(pipeline, X))
    assert sorted(names) == sorted(str(n) for n in pipeline[:-1].get_feature_names_out())
    assert len(names) == 5 and "signal" in names[0], names  # 2 numeric + 3 one-hot colours


def test_explain_model_records_shap_for_a_tree_and_the_skip_reason_otherwise(table):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.tree import DecisionTreeClassifier

    from airflow_mlops.core.estimators import build_preprocessor
    from airflow_mlops.core.explanations import (
        ExplainSpec,
        explain_model,
        explanations_summary,
    )

    X, label, _ = table
    spec = ExplainSpec(max_rows=200, n_repeats=2, shap=True, shap_rows=50)
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(_numeric(X), label)
    record = explain_model(tree, _numeric(X), label, "classification", spec)
    assert _ranked(record["shap"]) == ["signal", "noise"]
    assert record["shap"]["rows"] == 50 and record["rows"] == 200  # SHAP explains fewer rows
    assert explanations_summary(record, 2, "a")["shap"] == "shap.TreeExplainer"

    linear = Pipeline(
        [("preprocess", build_preprocessor(X, max_categories=10)), ("model", LogisticRegression())]
    ).fit(X, label)
    record = explain_model(linear, X, label, "classification", spec)
    assert record["shap"] == {"skipped": "LogisticRegression is not a tree model"}
    assert record["features"][0]["feature"] == "signal"  # permutation importance still ran
    summary = explanations_summary(record, 2, "a")
    assert summary["shap"] == "skipped: LogisticRegression is not a tree model"
