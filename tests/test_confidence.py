"""Bootstrap intervals: same definitions as core.metrics, seeded, honest about degeneracy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from airflow_mlops.core.confidence import (
    bootstrap_interval,
    compare_intervals,
    paired_difference_interval,
)
from airflow_mlops.core.errors import (
    ConfigError,
    DataError,
    DegenerateResamplesError,
    TooFewRowsError,
)
from airflow_mlops.core.metrics import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    compute_metrics,
)


def _classifier_output(rng, n, classes, skill=0.6):
    """Labels, probabilities that favour the true class, and their argmax predictions."""
    y = rng.integers(0, classes, n)
    proba = rng.dirichlet(np.ones(classes), n)
    proba[np.arange(n), y] += skill
    proba /= proba.sum(axis=1, keepdims=True)
    return y, proba.argmax(axis=1), proba


@pytest.mark.parametrize(
    ("n", "classes", "max_blocks"),
    [(300, 2, 2000), (3000, 2, 500), (600, 3, 2000), (4000, 4, 300)],
)
def test_estimates_equal_compute_metrics(n, classes, max_blocks):
    rng = np.random.default_rng(n + classes)
    y, pred, proba = _classifier_output(rng, n, classes)
    other = rng.integers(0, classes, n)
    expected = compute_metrics("classification", y, pred, proba)
    assert set(expected) == set(CLASSIFICATION_METRICS)
    result = compare_intervals(
        list(expected), y, pred, other, score_a=proba, score_b=proba[::-1],
        n_resamples=200, max_blocks=max_blocks,
    )  # fmt: skip
    expected_b = compute_metrics("classification", y, other, proba[::-1])
    for name, value in expected.items():
        interval = result[name]["a"]
        assert interval.estimate == pytest.approx(value, abs=1e-12), name
        assert interval.low <= interval.estimate <= interval.high, name
        assert result[name]["b"].estimate == pytest.approx(expected_b[name], abs=1e-12)
        assert result[name]["difference"].estimate == pytest.approx(value - expected_b[name])
        assert interval.resampled_units == min(n, max_blocks)


def test_regression_estimates_equal_compute_metrics():
    rng = np.random.default_rng(2)
    y = 1000.0 + rng.normal(scale=3.0, size=5000)  # a large mean: r2's sums must stay exact
    pred = y + rng.normal(size=5000)
    expected = compute_metrics("regression", y, pred)
    result = compare_intervals(REGRESSION_METRICS, y, pred, n_resamples=200)
    for name, value in expected.items():
        assert result[name]["a"].estimate == pytest.approx(value, rel=1e-9), name
        assert result[name]["a"].low < value < result[name]["a"].high


def test_same_seed_same_interval_and_json_safe_result():
    rng = np.random.default_rng(4)
    y, pred, proba = _classifier_output(rng, 500, 2)
    first = bootstrap_interval("roc_auc", y, pred, y_score=proba, seed=3)
    assert first == bootstrap_interval("roc_auc", y, pred, y_score=proba, seed=3)
    assert first != bootstrap_interval("roc_auc", y, pred, y_score=proba, seed=4)
    record = first.to_dict()
    json.dumps(record, allow_nan=False)
    assert {"estimate", "low", "high", "n_rows", "n_resamples", "confidence"} <= set(record)
    assert record["n_rows"] == 500 and record["n_resamples"] == 1000


def _coverage(trials, draw, truth, metric, **kwargs):
    hits = 0
    for trial in range(trials):
        y_true, y_pred, y_score = draw(np.random.default_rng(1000 + trial))
        interval = bootstrap_interval(
            metric, y_true, y_pred, y_score=y_score, n_resamples=200, seed=trial, **kwargs
        )
        hits += interval.low <= truth <= interval.high
    return hits / trials


def test_accuracy_interval_covers_the_true_value_about_95_percent_of_the_time():
    # Each row is right with probability 0.8: the true accuracy is 0.8.
    def draw(rng):
        y = rng.integers(0, 2, 300)
        right = rng.random(300) < 0.8
        return y, np.where(right, y, 1 - y), None

    assert 0.89 <= _coverage(200, draw, 0.8, "accuracy") <= 0.99


def test_block_bootstrap_covers_too():
    # 6,000 rows resampled as 200 blocks: the same coverage as the row bootstrap.
    def draw(rng):
        y = rng.normal(size=6000)
        return y, y + rng.normal(size=6000), None

    truth = math.sqrt(2 / math.pi)  # mean absolute value of a standard normal error
    assert 0.88 <= _coverage(200, draw, truth, "mae", max_blocks=200) <= 0.99


def test_roc_auc_interval_covers_the_true_auc():
    # Positives ~ N(1, 1), negatives ~ N(0, 1): AUC = Phi(1 / sqrt(2)).
    truth = 0.5 * (1 + math.erf(0.5))

    def draw(rng):
        y = rng.integers(0, 2, 400)
        score = 1 / (1 + np.exp(-(rng.normal(size=400) + y)))
        return y, (score > 0.5).astype(int), score

    assert 0.88 <= _coverage(100, draw, truth, "roc_auc") <= 1.0


def test_paired_difference_excludes_zero_for_a_better_model_and_not_for_a_twin():
    rng = np.random.default_rng(8)
    y, good, _ = _classifier_output(rng, 2000, 2, skill=0.8)
    worse = np.where(rng.random(2000) < 0.1, 1 - good, good)  # 10 % of answers flipped
    better = paired_difference_interval("f1", y, good, worse, n_resamples=500)
    assert better.estimate > 0 and better.low > 0 and better.higher_is_better

    same = paired_difference_interval("accuracy", y, good, good.copy(), n_resamples=500)
    assert same.estimate == same.low == same.high == 0.0

    # Two models of equal skill that disagree on some rows: the interval straddles zero.
    twin = np.where(rng.random(2000) < 0.05, 1 - good, good)
    twin_b = np.where(rng.random(2000) < 0.05, 1 - good, good)
    straddle = paired_difference_interval("accuracy", y, twin, twin_b, n_resamples=500)
    assert straddle.low < 0 < straddle.high

    # Pairing removes what both share: narrower than the two intervals' widths combined.
    single = bootstrap_interval("accuracy", y, twin, n_resamples=500)
    assert straddle.high - straddle.low < (single.high - single.low)

    # Lower is better for rmse: the better model's difference is negative.
    target = rng.normal(size=2000)
    near, far = target + rng.normal(scale=0.5, size=2000), target + rng.normal(size=2000)
    rmse = paired_difference_interval("rmse", target, near, far, n_resamples=500)
    assert rmse.high < 0 and not rmse.higher_is_better


def test_degenerate_resamples_raise_unless_the_caller_accepts_some():
    # 1 positive in 40 rows: about a third of resamples have no positive at all.
    y = np.array([1] + [0] * 39)
    score = np.linspace(0.9, 0.1, 40)
    pred = (score > 0.5).astype(int)
    with pytest.raises(DegenerateResamplesError, match=r"'roc_auc' is undefined in \d+ of 1000"):
        bootstrap_interval("roc_auc", y, pred, y_score=score)
    with pytest.raises(DegenerateResamplesError, match="'recall'"):
        bootstrap_interval("recall", y, pred)
    accepted = bootstrap_interval("recall", y, pred, max_degenerate_share=0.5)
    assert 200 < accepted.degenerate_resamples < 500
    # Not degenerate: the full rows already predict no positive, 0 by convention.
    none_predicted = bootstrap_interval("precision", y, np.zeros(40, dtype=int))
    assert none_predicted.estimate == none_predicted.high == 0.0


def test_the_positive_class_stays_the_same_in_every_resample():
    # Few positives: a resample without any must not turn the negative class positive
    # (scikit-learn called on such a resample alone would score class 0 as positive).
    y = np.array([0] * 45 + [1] * 5)
    pred = np.array([0] * 45 + [1] * 5)
    interval = bootstrap_interval("f1", y, pred, max_degenerate_share=0.05)
    assert interval.low == interval.high == 1.0


def test_bad_input_is_named():
    y = np.array([0, 1] * 20)
    with pytest.raises(TooFewRowsError, match="at least 20 rows, got 10"):
        bootstrap_interval("accuracy", y[:10], y[:10])
    with pytest.raises(ConfigError, match="unknown metric 'auc'; known metrics"):
        bootstrap_interval("auc", y, y)
    with pytest.raises(DataError, match="y_true has 40 rows but pred_a has 39"):
        bootstrap_interval("accuracy", y, y[:39])
    with pytest.raises(ConfigError, match="need class probabilities"):
        bootstrap_interval("roc_auc", y, y)
    with pytest.raises(DataError, match="single class"):
        bootstrap_interval("roc_auc", np.zeros(40), np.zeros(40), y_score=np.full(40, 0.3))
    with pytest.raises(DataError, match="'r2' is not defined on a constant target"):
        bootstrap_interval("r2", np.ones(40), np.ones(40))
    with pytest.raises(ConfigError, match="n_resamples"):
        bootstrap_interval("accuracy", y, y, n_resamples=10)
    with pytest.raises(ConfigError, match="confidence"):
        bootstrap_interval("accuracy", y, y, confidence=95)
    with pytest.raises(ConfigError, match="seed"):
        bootstrap_interval("accuracy", y, y, seed=-1)
    with pytest.raises(ConfigError, match="max_degenerate_share"):
        bootstrap_interval("accuracy", y, y, max_degenerate_share=1)
    with pytest.raises(ConfigError, match="pred_b is required"):
        paired_difference_interval("accuracy", y, y, None)


def test_a_million_rows_take_well_under_seconds():
    import time

    rng = np.random.default_rng(5)
    y, pred, proba = _classifier_output(rng, 1_000_000, 2)
    start = time.perf_counter()
    result = compare_intervals(["f1", "roc_auc"], y, pred, pred[::-1], score_a=proba,
                               score_b=proba[::-1], n_resamples=1000)  # fmt: skip
    elapsed = time.perf_counter() - start
    assert result["f1"]["difference"].low > 0
    assert elapsed < 8.0, f"1M rows took {elapsed:.2f} s"  # a regression, not noise
