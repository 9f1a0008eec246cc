"""Seeded bootstrap confidence intervals for a holdout metric and for two models' difference.

The metrics are those of :mod:`airflow_mlops.core.metrics` (``CLASSIFICATION_METRICS``,
``REGRESSION_METRICS``) with the same definitions: the estimate equals
:func:`~airflow_mlops.core.metrics.compute_metrics` on the same rows. The difference of two
models is a paired bootstrap: each resample draws the rows once and scores both models on
them, so what the two share (the rows' difficulty) cancels out.

How it stays fast at millions of rows: every metric is a function of a few sums over rows
(counts of true/false positives per class, sums of squared errors, ...). Each row becomes
a short vector of such statistics; a resample is a vector of weights, and its metric comes
from ``weights @ statistics``.

- Up to ``max_blocks`` rows (default 2,000), the resampled units are the rows themselves:
  the ordinary (multinomial) bootstrap, exactly.
- Above, the rows are dealt at random (seeded) into ``max_blocks`` blocks of equal size and
  the blocks are resampled: the random-groups bootstrap. Block sums are independent and
  identically distributed, so the resampled spread of any smooth function of the sums
  matches the row bootstrap's. Cost: one pass over the rows to sum the blocks, then
  ``n_resamples x max_blocks`` work whatever the row count.
  The price is that the interval's width is estimated from ``max_blocks`` units (a relative
  error of about 1/sqrt(2 x max_blocks), 1.6 % at 2,000).
- ``roc_auc`` is not a sum over rows; it is resampled through its linearisation (each row's
  placement value, as in DeLong's method): exact in its estimate and first-order in its
  spread, which is what DeLong's test uses too.

Label metrics keep the label set and the positive class of the full rows in every
resample. A resample where a quantity the full-data metric divides by is zero (no
positive row for ``recall``, one class for ``roc_auc``, a constant target for ``r2``) is
*degenerate*: its metric is undefined. By default any degenerate resample raises
:class:`~airflow_mlops.core.errors.DegenerateResamplesError` naming the metric and the
count; with ``max_degenerate_share`` the caller may accept a few, which are dropped and counted
in the result. Fewer than ``MIN_ROWS`` rows raise
:class:`~airflow_mlops.core.errors.TooFewRowsError`. The interval is the percentile interval
of the resampled values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

from airflow_mlops.core.errors import (
    ConfigError,
    DataError,
    DegenerateResamplesError,
    TooFewRowsError,
)
from airflow_mlops.core.metrics import (  # the alignment helpers are compute_metrics' own:
    CLASSIFICATION_METRICS,  # shared so that an interval's estimate cannot disagree with it
    HIGHER_IS_BETTER,
    REGRESSION_METRICS,
    as_proba_matrix,
    score_column_codes,
)

__all__ = [
    "DEFAULT_MAX_BLOCKS",
    "DEFAULT_RESAMPLES",
    "METRICS",
    "MIN_ROWS",
    "Interval",
    "bootstrap_interval",
    "compare_intervals",
    "paired_difference_interval",
]

DEFAULT_RESAMPLES = 1000
DEFAULT_MAX_BLOCKS = 2000
#: Below this many rows a bootstrap interval says more about the resampling than the model.
MIN_ROWS = 20
#: The metrics an interval can be computed for: all of core.metrics'.
METRICS: tuple[str, ...] = CLASSIFICATION_METRICS + REGRESSION_METRICS
_CONFUSION_METRICS = frozenset({"precision", "recall", "f1"})


@dataclass(frozen=True)
class Interval:
    """A metric's (or a difference's) estimate and percentile bootstrap interval.

    For a difference, ``estimate`` is model A's metric minus model B's, in the metric's
    units; ``higher_is_better`` says which sign favours A.
    """

    metric: str
    estimate: float
    low: float
    high: float
    confidence: float
    n_rows: int
    n_resamples: int
    resampled_units: int
    degenerate_resamples: int
    higher_is_better: bool
    seed: int
    method: str = "bootstrap-percentile"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: plain floats, ints, strings and booleans."""
        return asdict(self)


# -- per-metric statistics ------------------------------------------------------------------
#
# A metric is (columns, reduce): ``columns`` is an (n, s) float array of per-row statistics;
# ``reduce(sums)`` maps (r, s) sums to (values (r,), denominators (r, d)). A denominator that
# is zero in a resample but not in the full data makes that resample degenerate.

Reducer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (scikit-learn's ``zero_division=0``)."""
    safe = np.where(den > 0, den, 1.0)
    return np.where(den > 0, num / safe, 0.0)


def _mean_of(columns: np.ndarray) -> tuple[np.ndarray, Reducer]:
    """Columns ``[1, value]``: the metric is the mean value."""
    return columns, lambda s: (s[:, 1] / s[:, 0], s[:, :1])


class _ModelRows:
    """One model's predictions on the rows, with what several metrics share computed once."""

    def __init__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: Any) -> None:
        self.y_true = y_true
        self.y_pred = y_pred
        self.y_score = y_score

    @cached_property
    def labels(self) -> np.ndarray:
        return np.unique(np.concatenate([self.y_true, self.y_pred]))

    @cached_property
    def confusion_columns(self) -> np.ndarray:
        """Per class: [true positive, predicted, actual]; binary: the positive class only."""
        labels = self.labels
        # Binary: the positive class is the larger label (as compute_metrics); else macro.
        classes = labels[-1:] if len(labels) <= 2 else labels
        columns = np.empty((len(self.y_true), 3 * len(classes)), dtype=np.float64)
        for i, label in enumerate(classes):
            is_true = self.y_true == label
            is_pred = self.y_pred == label
            columns[:, 3 * i] = is_true & is_pred
            columns[:, 3 * i + 1] = is_pred
            columns[:, 3 * i + 2] = is_true
        return columns

    @cached_property
    def aligned_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes, proba) exactly as compute_metrics aligns them, or a named error."""
        if self.y_score is None:
            raise ConfigError("roc_auc and log_loss need class probabilities (y_score)")
        y_score = np.asarray(self.y_score, dtype=float)
        if len(y_score) != len(self.y_true):
            raise DataError(
                f"y_true has {len(self.y_true)} rows but y_score has {len(y_score)}: "
                "they must match"
            )
        codes = score_column_codes(self.y_true, self.labels, y_score)
        if codes is None:
            raise DataError(
                "roc_auc and log_loss are not defined here: the probability columns cannot "
                "be aligned with the labels (compute_metrics leaves them out too)"
            )
        return codes, as_proba_matrix(y_score)


def _label_statistics(metric: str, rows: _ModelRows) -> tuple[np.ndarray, Reducer]:
    if metric == "accuracy":
        correct = rows.y_true == rows.y_pred
        return _mean_of(np.column_stack([np.ones(len(correct)), correct]))

    def reduce(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tp, pred, true = sums[:, 0::3], sums[:, 1::3], sums[:, 2::3]
        if metric == "precision":
            den, per_class = pred, _ratio(tp, pred)
        elif metric == "recall":
            den, per_class = true, _ratio(tp, true)
        else:  # f1
            den = pred + true
            per_class = _ratio(2.0 * tp, den)
        return per_class.mean(axis=1), den

    return rows.confusion_columns, reduce


def _placements(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, float]:
    """Each row's placement value (DeLong) and the AUC; ties count one half, as sklearn's.

    A positive's placement is the share of negatives scored below it, a negative's the
    share of positives scored above it. One sort, then counts per group of tied scores.
    """
    order = np.argsort(score)
    ordered = score[order]
    pos = positive[order].astype(np.float64)
    new_group = np.empty(len(ordered), dtype=bool)
    new_group[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new_group[1:])
    group = np.cumsum(new_group) - 1
    pos_in_group = np.bincount(group, weights=pos)
    neg_in_group = np.bincount(group, weights=1.0 - pos)
    n_pos, n_neg = pos_in_group.sum(), neg_in_group.sum()
    neg_below = np.cumsum(neg_in_group) - neg_in_group
    pos_above = n_pos - np.cumsum(pos_in_group)
    v10 = (neg_below + 0.5 * neg_in_group) / n_neg
    v01 = (pos_above + 0.5 * pos_in_group) / n_pos
    placement = np.empty(len(score), dtype=np.float64)
    placement[order] = np.where(pos > 0, v10[group], v01[group])
    return placement, float(placement[positive].mean())


def _probability_statistics(metric: str, rows: _ModelRows) -> tuple[np.ndarray, Reducer]:
    codes, proba = rows.aligned_scores
    if metric == "log_loss":
        loss = -np.log(proba[np.arange(len(codes)), codes])
        return _mean_of(np.column_stack([np.ones(len(codes)), loss]))
    present = np.unique(codes)
    if len(present) < 2:
        raise DataError("metric 'roc_auc' is not defined on rows that hold a single class")
    # Binary: the positive column; multiclass: macro one-vs-rest over the present classes.
    targets = [1] if proba.shape[1] == 2 else list(present)
    columns = np.empty((len(codes), 4 * len(targets)), dtype=np.float64)
    aucs = []
    for i, code in enumerate(targets):
        positive = codes == code
        placement, auc = _placements(positive, proba[:, code])
        aucs.append(auc)
        columns[:, 4 * i] = positive
        columns[:, 4 * i + 1] = np.where(positive, placement, 0.0)
        columns[:, 4 * i + 2] = ~positive
        columns[:, 4 * i + 3] = np.where(positive, 0.0, placement)
    full_aucs = np.array(aucs)

    def reduce(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_pos, v10, n_neg, v01 = (sums[:, i::4] for i in range(4))
        # Linearised AUC: each side's mean placement moves the AUC by its deviation.
        values = _ratio(v10, n_pos) + _ratio(v01, n_neg) - full_aucs
        return np.clip(values, 0.0, 1.0).mean(axis=1), np.hstack([n_pos, n_neg])

    return columns, reduce


def _regression_statistics(metric: str, rows: _ModelRows) -> tuple[np.ndarray, Reducer]:
    y = rows.y_true.astype(np.float64)
    error = y - rows.y_pred.astype(np.float64)
    ones = np.ones(len(y))
    if metric == "rmse":
        columns = np.column_stack([ones, error**2])
        return columns, lambda s: (np.sqrt(s[:, 1] / s[:, 0]), s[:, :1])
    if metric == "mae":
        return _mean_of(np.column_stack([ones, np.abs(error)]))
    if len(y) < 2 or np.ptp(y) == 0:
        raise DataError("metric 'r2' is not defined on a constant target")
    centred = y - y.mean()  # centred once: the resampled total sum of squares stays exact
    columns = np.column_stack([ones, centred, centred**2, error**2])

    def reduce(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total = sums[:, 2] - sums[:, 1] ** 2 / sums[:, 0]
        total = np.where(total > 1e-12 * np.abs(sums[:, 2]), total, 0.0)
        return 1.0 - _ratio(sums[:, 3], total), total[:, None]

    return columns, reduce


def _statistics(metric: str, rows: _ModelRows) -> tuple[np.ndarray, Reducer]:
    if metric in REGRESSION_METRICS:
        return _regression_statistics(metric, rows)
    if metric in ("roc_auc", "log_loss"):
        return _probability_statistics(metric, rows)
    return _label_statistics(metric, rows)


# -- resampling -----------------------------------------------------------------------------


def _check_settings(
    n_resamples: Any, confidence: Any, seed: Any, max_blocks: Any, max_degenerate_share: Any
) -> None:
    def is_int(value: Any) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)

    if not is_int(n_resamples) or n_resamples < 100:
        raise ConfigError(f"n_resamples must be an integer >= 100, got {n_resamples!r}")
    if not is_number(confidence) or not 0.5 <= float(confidence) < 1.0:
        raise ConfigError(f"confidence must be a number in [0.5, 1), got {confidence!r}")
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not is_int(max_blocks) or max_blocks < 100:
        raise ConfigError(f"max_blocks must be an integer >= 100, got {max_blocks!r}")
    if not is_number(max_degenerate_share) or not 0.0 <= float(max_degenerate_share) < 1.0:
        raise ConfigError(
            f"max_degenerate_share must be a number in [0, 1), got {max_degenerate_share!r}"
        )


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; known metrics: {list(METRICS)}")
    return metric


def _as_rows(name: str, values: Any, n_rows: int | None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise DataError(f"{name} must be one-dimensional, got shape {array.shape}")
    if n_rows is not None and len(array) != n_rows:
        raise DataError(f"y_true has {n_rows} rows but {name} has {len(array)}: they must match")
    return array


class _Units:
    """What is resampled: the rows themselves, or ``max_blocks`` random blocks of rows."""

    def __init__(self, n_rows: int, max_blocks: int, rng: np.random.Generator) -> None:
        self.n_rows = n_rows
        if n_rows <= max_blocks:
            self.block = None
            self.count = n_rows
        else:
            self.block = rng.permutation(n_rows) % max_blocks
            self.count = max_blocks

    def sums(self, columns: np.ndarray) -> np.ndarray:
        """(units, s): each unit's column sums."""
        if self.block is None:
            return columns
        return np.column_stack(
            [np.bincount(self.block, weights=col, minlength=self.count) for col in columns.T]
        )

    def resample_counts(self, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
        """(n_resamples, units) multinomial counts: each resample draws ``units`` units."""
        draws = rng.integers(0, self.count, size=(n_resamples, self.count))
        draws += np.arange(n_resamples)[:, None] * self.count
        counts = np.bincount(draws.ravel(), minlength=n_resamples * self.count)
        return counts.reshape(n_resamples, self.count).astype(np.float64)


def _defined(full_den: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Resamples where every denominator positive on the full rows stays positive."""
    return np.all((den > 0) | (full_den <= 0), axis=1)


def _interval(
    metric: str,
    estimate: float,
    values: np.ndarray,
    defined: np.ndarray,
    *,
    confidence: float,
    n_rows: int,
    n_units: int,
    seed: int,
    max_degenerate_share: float,
) -> Interval:
    n_resamples = len(values)
    degenerate = int(n_resamples - defined.sum())
    if degenerate > max_degenerate_share * n_resamples:
        raise DegenerateResamplesError(
            f"metric {metric!r} is undefined in {degenerate} of {n_resamples} bootstrap "
            f"resamples of {n_rows} rows (a resample lost every row of a class, or the "
            "target was constant): too few rows of a class for an interval"
        )
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values[defined], [alpha, 1.0 - alpha])
    if not np.isfinite([estimate, low, high]).all():
        raise DataError(f"metric {metric!r} is not finite on these rows: no interval")
    return Interval(
        metric=metric,
        estimate=float(estimate),
        low=float(low),
        high=float(high),
        confidence=float(confidence),
        n_rows=n_rows,
        n_resamples=n_resamples,
        resampled_units=n_units,
        degenerate_resamples=degenerate,
        higher_is_better=metric in HIGHER_IS_BETTER,
        seed=seed,
    )


def compare_intervals(
    metrics: Sequence[str],
    y_true: Any,
    pred_a: Any,
    pred_b: Any = None,
    *,
    score_a: Any = None,
    score_b: Any = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
    max_blocks: int = DEFAULT_MAX_BLOCKS,
    max_degenerate_share: float = 0.0,
) -> dict[str, dict[str, Interval]]:
    """Intervals for several metrics of model A, and of B and A - B when B is given.

    Returns ``{metric: {"a": Interval, "b": Interval, "difference": Interval}}`` (only
    ``"a"`` without ``pred_b``). All metrics and both models share the same resamples, so
    the rows are summed once; this is the call evaluation makes for its gated metrics.
    """
    _check_settings(n_resamples, confidence, seed, max_blocks, max_degenerate_share)
    names = [_check_metric(m) for m in metrics]
    if not names:
        raise ConfigError("metrics is empty: name at least one metric")
    y_true = _as_rows("y_true", y_true, None)
    n_rows = len(y_true)
    if n_rows < MIN_ROWS:
        raise TooFewRowsError(f"a bootstrap interval needs at least {MIN_ROWS} rows, got {n_rows}")
    rows = {"a": _ModelRows(y_true, _as_rows("pred_a", pred_a, n_rows), score_a)}
    if pred_b is not None:
        rows["b"] = _ModelRows(y_true, _as_rows("pred_b", pred_b, n_rows), score_b)

    rng = np.random.default_rng(seed)
    units = _Units(n_rows, max_blocks, rng)
    counts = units.resample_counts(n_resamples, rng)
    # precision, recall and f1 share one model's confusion columns: sum them once.
    unit_sums: dict[tuple[str, str], np.ndarray] = {}
    resampled: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, float]] = {}
    for name in names:
        for model, model_rows in rows.items():
            columns, reduce = _statistics(name, model_rows)
            shared = (model, "confusion" if name in _CONFUSION_METRICS else name)
            if shared not in unit_sums:
                unit_sums[shared] = units.sums(columns)
            summed = unit_sums[shared]
            values, den = reduce(counts @ summed)
            full_value, full_den = reduce(summed.sum(axis=0, keepdims=True))
            resampled[name, model] = (values, _defined(full_den, den), float(full_value[0]))

    settings = {
        "confidence": float(confidence),
        "n_rows": n_rows,
        "n_units": units.count,
        "seed": int(seed),
        "max_degenerate_share": max_degenerate_share,
    }
    result: dict[str, dict[str, Interval]] = {}
    for name in names:
        per_metric = {}
        for model in rows:
            values, defined, estimate = resampled[name, model]
            per_metric[model] = _interval(name, estimate, values, defined, **settings)
        if "b" in rows:
            values_a, defined_a, estimate_a = resampled[name, "a"]
            values_b, defined_b, estimate_b = resampled[name, "b"]
            per_metric["difference"] = _interval(
                name,
                estimate_a - estimate_b,
                values_a - values_b,
                defined_a & defined_b,
                **settings,
            )
        result[name] = per_metric
    return result


def bootstrap_interval(
    metric: str,
    y_true: Any,
    y_pred: Any,
    *,
    y_score: Any = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
    max_blocks: int = DEFAULT_MAX_BLOCKS,
    max_degenerate_share: float = 0.0,
) -> Interval:
    """Bootstrap interval of one metric (a name from ``core.metrics``) of one model.

    ``y_score`` (class probabilities, as for ``compute_metrics``) is needed by ``roc_auc``
    and ``log_loss``. Same seed and rows → same interval.
    """
    return compare_intervals(
        [metric],
        y_true,
        y_pred,
        score_a=y_score,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        max_blocks=max_blocks,
        max_degenerate_share=max_degenerate_share,
    )[metric]["a"]


def paired_difference_interval(
    metric: str,
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    *,
    score_a: Any = None,
    score_b: Any = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
    max_blocks: int = DEFAULT_MAX_BLOCKS,
    max_degenerate_share: float = 0.0,
) -> Interval:
    """Paired bootstrap interval of ``metric(A) - metric(B)`` on the same rows.

    Each resample draws rows once and scores both models on them. For a metric in
    ``HIGHER_IS_BETTER`` a positive difference favours A; for the others (log_loss, rmse,
    mae) a negative one does.
    """
    if pred_b is None:
        raise ConfigError("pred_b is required for a paired difference")
    return compare_intervals(
        [metric],
        y_true,
        pred_a,
        pred_b,
        score_a=score_a,
        score_b=score_b,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        max_blocks=max_blocks,
        max_degenerate_share=max_degenerate_share,
    )[metric]["difference"]
