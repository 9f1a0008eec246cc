"""Holdout metrics shared by training and evaluation.

Both stages call the same three functions so that a champion and a challenger are scored
on the same rows with exactly the same definitions:

>>> y_pred, y_score = predict_for_metrics(model, X_holdout, task)
>>> compute_metrics(task, y_holdout, y_pred, y_score)
{'accuracy': 0.93, 'precision': ..., 'recall': ..., 'f1': ..., 'roc_auc': ..., 'log_loss': ...}

Metric names (stable, also the MLflow metric keys written by training with a prefix):

- classification: ``accuracy``, ``precision``, ``recall``, ``f1``, ``roc_auc``, ``log_loss``.
  Binary targets use the binary definitions (positive class = the larger label, as in
  scikit-learn); more than two classes use macro averages and one-vs-rest ROC AUC.
  ``roc_auc`` and ``log_loss`` need class probabilities (``y_score``); without them they
  are left out rather than invented. ``roc_auc`` is also left out when the holdout holds a
  single class, and both when probability columns cannot be aligned with the labels.
- regression: ``rmse``, ``mae``, ``r2``.

Which direction is better: :data:`HIGHER_IS_BETTER` lists the metrics to maximise; the
others (``log_loss``, ``rmse``, ``mae``) are minimised.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd

from airflow_mlops.core.errors import ConfigError, DataError

__all__ = [
    "CLASSIFICATION_METRICS",
    "HIGHER_IS_BETTER",
    "REGRESSION_METRICS",
    "TASKS",
    "Task",
    "as_proba_matrix",
    "compute_metrics",
    "infer_task",
    "predict_for_metrics",
    "score_column_codes",
    "validate_task",
]

Task = Literal["classification", "regression"]
TASKS: tuple[str, ...] = ("classification", "regression")

CLASSIFICATION_METRICS: tuple[str, ...] = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "log_loss",
)
REGRESSION_METRICS: tuple[str, ...] = ("rmse", "mae", "r2")
HIGHER_IS_BETTER: frozenset[str] = frozenset(
    {"accuracy", "precision", "recall", "f1", "roc_auc", "r2"}
)

# A numeric target with at most this many distinct integer values is treated as class labels.
_MAX_INTEGER_CLASSES = 20


def validate_task(task: str) -> Task:
    """Return ``task`` if it is a known task name, else raise :class:`ConfigError`."""
    if task not in TASKS:
        raise ConfigError(f"task must be one of {list(TASKS)}, got {task!r}")
    return task  # type: ignore[return-value]


def infer_task(y: Any) -> Task:
    """Guess the learning task from a target column.

    ``classification`` for booleans, strings, categoricals and integer columns with at most
    20 distinct values; ``regression`` for any other numeric column (floats, wide-range
    integers). Floats that are all whole numbers with few distinct values (e.g. ``0.0``/``1.0``
    read from CSV) also count as classes. Pass ``task`` explicitly when the guess is wrong.
    """
    series = pd.Series(y).dropna()
    if series.empty:
        raise DataError("cannot infer the task: the target column has no non-null values")
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
        return "classification"
    distinct = series.nunique()
    if pd.api.types.is_integer_dtype(dtype):
        return "classification" if distinct <= _MAX_INTEGER_CLASSES else "regression"
    values = series.to_numpy(dtype=float)
    all_whole = bool(np.all(np.isfinite(values)) and np.all(np.mod(values, 1.0) == 0.0))
    return "classification" if all_whole and distinct <= _MAX_INTEGER_CLASSES else "regression"


def predict_for_metrics(model: Any, X: Any, task: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Predict ``X`` with ``model`` and return ``(y_pred, y_score)`` for :func:`compute_metrics`.

    ``model`` is anything with ``predict`` (a fitted sklearn estimator or Pipeline, or an
    MLflow sklearn-flavour model loaded with ``mlflow.sklearn.load_model``). For
    classification, ``y_score`` is ``predict_proba(X)`` (shape ``(n, n_classes)``, columns in
    ``model.classes_`` order) when the model has it, else ``None``; for regression it is
    always ``None``. A generic ``mlflow.pyfunc`` model only predicts, so it yields no scores.
    """
    validate_task(task)
    y_pred = np.asarray(model.predict(X))
    if task == "regression" or not hasattr(model, "predict_proba"):
        return y_pred, None
    return y_pred, np.asarray(model.predict_proba(X))


def compute_metrics(task: str, y_true: Any, y_pred: Any, y_score: Any = None) -> dict[str, float]:
    """Score predictions; returns ``{metric name: float}`` (see the module docstring).

    ``y_score``: class probabilities, shape ``(n, n_classes)`` with columns in sorted label
    order (scikit-learn's ``classes_``), or shape ``(n,)`` with the positive-class
    probability for a binary task. Ignored for regression. Every value is a finite
    Python float (probabilities are clipped away from 0 before ``log_loss``).
    """
    validate_task(task)
    y_true_arr = np.asarray(y_true)
    y_pred_arr = np.asarray(y_pred)
    if len(y_true_arr) == 0:
        raise DataError("cannot compute metrics on an empty holdout")
    if len(y_true_arr) != len(y_pred_arr):
        raise DataError(
            f"y_true has {len(y_true_arr)} rows but y_pred has {len(y_pred_arr)}: they must match"
        )
    if task == "regression":
        return _regression_metrics(y_true_arr, y_pred_arr)
    return _classification_metrics(y_true_arr, y_pred_arr, y_score)


def _regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as skm  # lazily: promotion tasks import this module

    y_true = y_true.astype(float)
    y_pred = y_pred.astype(float)
    result = {
        "rmse": math.sqrt(skm.mean_squared_error(y_true, y_pred)),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
    }
    # r2 is undefined on a constant holdout (sklearn returns nan or warns); leave it out.
    if len(y_true) >= 2 and np.ptp(y_true) > 0:
        result["r2"] = float(skm.r2_score(y_true, y_pred))
    return result


def _classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, y_score: Any
) -> dict[str, float]:
    from sklearn import metrics as skm  # lazily: promotion tasks import this module

    labels = np.unique(np.concatenate([y_true, y_pred]))
    binary = len(labels) <= 2
    average = "binary" if binary else "macro"
    kwargs: dict[str, Any] = {"average": average, "zero_division": 0}
    if binary:
        # The positive class is the larger label, as sklearn does for {0, 1}; explicit so
        # that string labels ("no"/"yes") work too.
        kwargs["pos_label"] = labels[-1]
    result = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(skm.precision_score(y_true, y_pred, **kwargs)),
        "recall": float(skm.recall_score(y_true, y_pred, **kwargs)),
        "f1": float(skm.f1_score(y_true, y_pred, **kwargs)),
    }
    if y_score is not None:
        y_score = np.asarray(y_score, dtype=float)
        if len(y_score) != len(y_true):
            raise DataError(
                f"y_true has {len(y_true)} rows but y_score has {len(y_score)}: they must match"
            )
        codes = score_column_codes(y_true, labels, y_score)
        if codes is not None:
            result.update(_probability_metrics(codes, as_proba_matrix(y_score)))
    return result


def as_proba_matrix(y_score: np.ndarray) -> np.ndarray:
    """(n,) positive-class probabilities or (n, k) scores -> clipped rows summing to 1."""
    if y_score.ndim == 1:
        y_score = np.column_stack([1.0 - y_score, y_score])
    proba = np.clip(y_score, 1e-15, 1.0)
    return proba / proba.sum(axis=1, keepdims=True)


def score_column_codes(
    y_true: np.ndarray, labels: np.ndarray, y_score: np.ndarray
) -> np.ndarray | None:
    """Index of each true label's column in ``y_score``, or None when it cannot be known.

    Columns follow the model's sorted ``classes_``. Integer labels ``0..k-1`` (XGBoost's
    convention) map to themselves even when some classes are absent from the holdout.
    Other labels are aligned by sorted order when the labels seen in ``y_true`` and
    ``y_pred`` are exactly as many as the columns; otherwise the alignment is unknown
    and the probability metrics are left out rather than guessed.
    """
    n_columns = 2 if y_score.ndim == 1 else y_score.shape[1]
    numeric = np.issubdtype(y_true.dtype, np.number) or y_true.dtype == bool
    if numeric:
        as_float = y_true.astype(float)
        whole = np.all(np.mod(as_float, 1.0) == 0.0)
        if whole and as_float.min() >= 0 and as_float.max() < n_columns:
            return as_float.astype(int)
    if len(labels) == n_columns:
        return np.searchsorted(labels, y_true)
    return None


def _probability_metrics(codes: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """log_loss always; roc_auc when at least two classes are present in the holdout."""
    from sklearn import metrics as skm  # lazily: promotion tasks import this module

    n_columns = proba.shape[1]
    result = {"log_loss": float(skm.log_loss(codes, proba, labels=np.arange(n_columns)))}
    present = np.unique(codes)
    if len(present) < 2:
        return result  # ROC AUC is undefined on a single-class holdout.
    if n_columns == 2:
        result["roc_auc"] = float(skm.roc_auc_score(codes, proba[:, 1]))
    else:
        # Macro one-vs-rest over the classes present in the holdout (a class without
        # positives has no ROC curve); equals sklearn's multi_class="ovr" when all present.
        aucs = [skm.roc_auc_score(codes == code, proba[:, code]) for code in present]
        result["roc_auc"] = float(np.mean(aucs))
    return result
