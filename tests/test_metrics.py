"""Holdout metrics: the definitions training and evaluation both rely on."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LinearRegression, LogisticRegression

from airflow_mlops.core.errors import ConfigError, DataError
from airflow_mlops.core.metrics import (
    CLASSIFICATION_METRICS,
    HIGHER_IS_BETTER,
    REGRESSION_METRICS,
    compute_metrics,
    infer_task,
    predict_for_metrics,
)


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(400, 3))


def test_binary_metrics_match_sklearn_binary_definitions(features):
    y = (features[:, 0] + 0.5 * features[:, 1] > 0).astype(int)
    model = LogisticRegression().fit(features[:200], y[:200])
    y_pred, y_score = predict_for_metrics(model, features[200:], "classification")
    result = compute_metrics("classification", y[200:], y_pred, y_score)

    assert set(result) == set(CLASSIFICATION_METRICS)
    truth = y[200:]
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(truth, y_pred))
    assert result["precision"] == pytest.approx(skm.precision_score(truth, y_pred))
    assert result["recall"] == pytest.approx(skm.recall_score(truth, y_pred))
    assert result["f1"] == pytest.approx(skm.f1_score(truth, y_pred))
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(truth, y_score[:, 1]))
    assert result["log_loss"] == pytest.approx(skm.log_loss(truth, y_score))
    assert all(isinstance(v, float) for v in result.values())


def test_multiclass_metrics_are_macro_averaged(features):
    y = np.digitize(features[:, 0], [-0.4, 0.4])
    model = LogisticRegression().fit(features[:200], y[:200])
    y_pred, y_score = predict_for_metrics(model, features[200:], "classification")
    truth = y[200:]
    result = compute_metrics("classification", truth, y_pred, y_score)

    assert result["precision"] == pytest.approx(skm.precision_score(truth, y_pred, average="macro"))
    assert result["recall"] == pytest.approx(skm.recall_score(truth, y_pred, average="macro"))
    assert result["f1"] == pytest.approx(skm.f1_score(truth, y_pred, average="macro"))
    assert result["roc_auc"] == pytest.approx(
        skm.roc_auc_score(truth, y_score, multi_class="ovr", average="macro")
    )
    assert result["log_loss"] == pytest.approx(skm.log_loss(truth, y_score))


def test_string_labels_use_the_larger_label_as_positive(features):
    y = np.where(features[:, 0] > 0, "yes", "no")
    model = LogisticRegression().fit(features, y)
    y_pred, y_score = predict_for_metrics(model, features, "classification")
    result = compute_metrics("classification", y, y_pred, y_score)

    assert result["precision"] == pytest.approx(skm.precision_score(y, y_pred, pos_label="yes"))
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y == "yes", y_score[:, 1]))


def test_one_dimensional_positive_scores_are_accepted():
    truth = np.array([0, 0, 1, 1])
    result = compute_metrics("classification", truth, [0, 1, 1, 1], [0.1, 0.6, 0.7, 0.9])
    assert result["roc_auc"] == pytest.approx(1.0)
    assert result["log_loss"] == pytest.approx(
        skm.log_loss(truth, np.column_stack([[0.9, 0.4, 0.3, 0.1], [0.1, 0.6, 0.7, 0.9]]))
    )


def test_single_class_holdout_omits_roc_auc_but_keeps_log_loss():
    result = compute_metrics("classification", [1, 1], [1, 0], [[0.2, 0.8], [0.6, 0.4]])
    assert "roc_auc" not in result
    assert result["log_loss"] == pytest.approx(-(math.log(0.8) + math.log(0.4)) / 2)


def test_holdout_missing_a_class_still_scores_xgboost_style_integer_labels():
    truth = np.array([0, 0, 2, 2])
    proba = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.2, 0.2, 0.6]])
    result = compute_metrics("classification", truth, [0, 0, 2, 2], proba)
    assert result["roc_auc"] == pytest.approx(1.0)
    assert result["log_loss"] == pytest.approx(skm.log_loss(truth, proba, labels=[0, 1, 2]))


def test_unalignable_string_scores_are_left_out_not_guessed():
    proba = [[0.8, 0.1, 0.1], [0.6, 0.2, 0.2]]
    result = compute_metrics("classification", ["a", "a"], ["a", "a"], proba)
    assert "log_loss" not in result and "roc_auc" not in result
    assert result["accuracy"] == 1.0


def test_without_scores_probability_metrics_are_absent():
    result = compute_metrics("classification", [0, 1, 1], [0, 1, 0])
    assert set(result) == {"accuracy", "precision", "recall", "f1"}


def test_regression_metrics(features):
    y = features @ np.array([1.0, -2.0, 0.5]) + np.random.default_rng(1).normal(size=400)
    model = LinearRegression().fit(features, y)
    y_pred, y_score = predict_for_metrics(model, features, "regression")
    assert y_score is None
    result = compute_metrics("regression", y, y_pred)

    assert set(result) == set(REGRESSION_METRICS)
    assert result["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, y_pred)))
    assert result["mae"] == pytest.approx(skm.mean_absolute_error(y, y_pred))
    assert result["r2"] == pytest.approx(skm.r2_score(y, y_pred))


def test_constant_regression_holdout_has_no_r2():
    result = compute_metrics("regression", [3.0, 3.0, 3.0], [2.0, 3.0, 4.0])
    assert "r2" not in result
    assert result["mae"] == pytest.approx(2 / 3)


def test_direction_of_each_metric_is_declared():
    assert {"log_loss", "rmse", "mae"}.isdisjoint(HIGHER_IS_BETTER)
    assert {"accuracy", "roc_auc", "r2", "f1"} <= HIGHER_IS_BETTER


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 1, 1, 0], "classification"),
        ([True, False], "classification"),
        (["cat", "dog"], "classification"),
        ([0.0, 1.0, 1.0], "classification"),
        ([0.5, 1.2, 3.3], "regression"),
        (list(range(100)), "regression"),
    ],
)
def test_infer_task(values, expected):
    assert infer_task(pd.Series(values)) == expected


def test_infer_task_on_an_all_null_target_raises():
    with pytest.raises(DataError, match="no non-null"):
        infer_task(pd.Series([None, None]))


def test_bad_inputs_are_refused():
    with pytest.raises(ConfigError, match="task must be one of"):
        compute_metrics("ranking", [1], [1])
    with pytest.raises(DataError, match="empty holdout"):
        compute_metrics("regression", [], [])
    with pytest.raises(DataError, match="must match"):
        compute_metrics("regression", [1.0, 2.0], [1.0])
    with pytest.raises(DataError, match="y_score"):
        compute_metrics("classification", [0, 1], [0, 1], [[0.5, 0.5]])
