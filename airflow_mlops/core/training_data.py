"""The training data, checked and split before any MLflow run exists.

:func:`prepare_data` selects the feature columns, checks the target (present, no missing
value, two classes or a numeric target), refuses infinite values and empty feature columns,
learns the task (:func:`resolve_task`: the setting, else the estimator's kind, else the
target) and cuts the holdout (:func:`split_data`: random, stratified for classification, or
out-of-time on a time column), failing with the numbers when the data is too small.
:func:`holdout_frame` and :func:`reference_frame` are the two tables training writes for
evaluation and drift monitoring.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import is_classifier, is_regressor
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from airflow_mlops.core.errors import ConfigError, DataError
from airflow_mlops.core.estimators import final_estimator, resolve_estimator
from airflow_mlops.core.metrics import infer_task
from airflow_mlops.core.training_config import DEFAULT_ESTIMATORS, SearchConfig, describe_callable
from airflow_mlops.core.training_job import SplitPolicy, TrainingJob

__all__ = [
    "MIN_HOLDOUT_ROWS",
    "MIN_TRAIN_ROWS",
    "PreparedData",
    "check_estimator_accepts_target",
    "check_features_have_values",
    "check_finite",
    "check_target",
    "holdout_frame",
    "prepare_data",
    "reference_frame",
    "resolve_task",
    "select_features",
    "split_data",
]

log = logging.getLogger(__name__)

# Below these a split is refused: metrics such as r2 and roc_auc need two holdout rows, and a
# model fitted on fewer rows than this is not worth logging.
MIN_TRAIN_ROWS = 4
MIN_HOLDOUT_ROWS = 2


@dataclass
class PreparedData:
    """Validated, split data: everything is checked before an MLflow run starts."""

    task: str
    features: list[str]
    X_train: pd.DataFrame
    y_train: pd.Series
    X_holdout: pd.DataFrame
    y_holdout: pd.Series
    data_sha256: str
    data_rows: int
    time_cutoff: str | None = None
    #: The estimator built to learn the task, when it was built before the split.
    estimator: Any = None


def prepare_data(config: TrainingJob, frame: pd.DataFrame, sha256: str, rows: int) -> PreparedData:
    """Select columns, check the target, infer the task and split. Raises before any run."""
    columns = [str(c) for c in frame.columns]
    if config.target not in columns:
        raise DataError(
            f"target column {config.target!r} is not in {config.train_uri} "
            f"(columns: {columns[:50]})"
        )
    features = select_features(config, columns)
    target = frame[config.target]
    null_targets = int(target.isna().sum())
    if null_targets:
        raise DataError(
            f"target column {config.target!r} has {null_targets} missing value(s) in "
            f"{config.train_uri}: drop or fill them before training"
        )
    estimator = None
    if config.task is None and config.estimator is not None:
        # Built before the split: its kind decides stratification; reused for the pipeline.
        estimator = resolve_estimator(
            config.estimator, "classification", dict(config.params), config.allowed_modules
        )
    task = resolve_task(config, target, estimator)
    check_target(task, target, config.target)
    check_finite(frame, [*features, config.target], config.train_uri)
    if config.preprocessing == "default":
        _check_default_preprocessing_supports(frame[features])
    X_train, y_train, X_holdout, y_holdout, cutoff = split_data(
        frame, features, config.target, task, config.split, config.search
    )
    check_features_have_values(X_train, config.train_uri)
    return PreparedData(
        task=task,
        features=features,
        X_train=X_train,
        y_train=y_train,
        X_holdout=X_holdout,
        y_holdout=y_holdout,
        data_sha256=sha256,
        data_rows=rows,
        time_cutoff=cutoff,
        estimator=estimator,
    )


def resolve_task(config: TrainingJob, target: pd.Series, estimator: Any = None) -> str:
    """``config.task`` if set, else the constructed estimator's kind (scikit-learn's
    ``is_classifier`` / ``is_regressor``; XGBoost and Pipelines answer too), else the
    target's (:func:`~airflow_mlops.core.metrics.infer_task`), which is logged. Never the
    estimator's name."""
    if config.task is not None:
        return config.task
    if estimator is not None:
        if is_classifier(estimator):
            return "classification"
        if is_regressor(estimator):
            return "regression"
    task = infer_task(target)
    why = (
        "non-numeric, boolean or few distinct whole values"
        if task == "classification"
        else "numeric with many distinct values"
    )
    source = (
        f"estimator {describe_callable(config.estimator)} is neither a classifier nor a regressor"
        if estimator is not None
        else f"no estimator is set (default: {DEFAULT_ESTIMATORS[task]})"
    )
    log.info(
        "Task %r inferred from target column %r (%s): %s; set task to choose.",
        task,
        config.target,
        why,
        source,
    )
    return task


def select_features(config: TrainingJob, columns: list[str]) -> list[str]:
    """``features`` if given, else every column but target, ``exclude`` and the time column."""
    time_column = config.split.time_column
    if time_column is not None and time_column not in columns:
        raise DataError(
            f"training.time_column {time_column!r} is not in {config.train_uri} (columns: {columns[:50]})"
        )
    if config.features is not None:
        missing = [f for f in config.features if f not in columns]
        if missing:
            raise DataError(
                f"features {missing} are not in {config.train_uri} (columns: {columns[:50]})"
            )
        features = list(dict.fromkeys(config.features))
    else:
        dropped = {config.target, *config.exclude}
        if time_column is not None:
            dropped.add(time_column)
        features = [c for c in columns if c not in dropped]
    features = [f for f in features if f not in set(config.exclude)]
    if not features:
        raise ConfigError(
            f"no feature columns left in {config.train_uri} after removing target and exclude"
        )
    return features


def check_target(task: str, target: pd.Series, name: str) -> None:
    """A classifier needs two classes or more; a regressor needs a numeric target."""
    if task == "classification":
        classes = target.unique()
        if len(classes) < 2:
            raise DataError(
                f"target column {name!r} holds a single class ({classes[0]!r}): a classifier "
                "needs at least two classes"
            )
        return
    if pd.api.types.is_bool_dtype(target) or not pd.api.types.is_numeric_dtype(target):
        raise DataError(
            f"target column {name!r} has non-numeric dtype {target.dtype} but task is "
            "'regression': use a numeric target or task='classification'"
        )


def check_finite(frame: pd.DataFrame, columns: list[str], uri: str) -> None:
    """Refuse infinite values before any run exists; imputers and estimators reject them
    deep inside scikit-learn without naming the column."""
    infinite = {}
    for column in columns:
        series = frame[column]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            count = int(np.isinf(series.to_numpy(dtype="float64", na_value=np.nan)).sum())
            if count:
                infinite[column] = count
    if infinite:
        raise DataError(
            f"columns {sorted(infinite)} of {uri} hold infinite values ({infinite} rows): "
            "replace or drop them before training"
        )


def check_features_have_values(X_train: pd.DataFrame, uri: str) -> None:
    """Refuse feature columns with no value in the training rows. The imputers would drop
    them silently (or scikit-learn would fail on "0 features" when none is left), and an
    empty column is almost always a broken upstream load, not a signal."""
    empty = [str(c) for c in X_train.columns if not X_train[c].notna().any()]
    if empty:
        raise DataError(
            f"feature columns {empty[:50]} of {uri} have no value in any of the "
            f"{len(X_train)} training rows: fix the data or list them in exclude"
        )


def _check_default_preprocessing_supports(X: pd.DataFrame) -> None:
    unsupported = [
        c
        for c in X.columns
        if pd.api.types.is_datetime64_any_dtype(X[c]) or pd.api.types.is_timedelta64_dtype(X[c])
    ]
    if unsupported:
        raise ConfigError(
            f"feature columns {unsupported} are datetimes, which the default preprocessing "
            "cannot encode: exclude them, derive numeric features, or pass preprocessing"
        )


def split_data(
    frame: pd.DataFrame,
    features: list[str],
    target: str,
    task: str,
    policy: SplitPolicy,
    search: SearchConfig | None,
) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.Series, str | None]:
    """Cut the holdout; fail with the numbers when the data is too small to split."""
    n = len(frame)
    n_holdout = math.ceil(n * policy.holdout_fraction)
    min_train = max(MIN_TRAIN_ROWS, search.cv if search else 0)
    if n_holdout < MIN_HOLDOUT_ROWS or n - n_holdout < min_train:
        raise DataError(
            f"dataset too small to split: {n} rows with training.holdout_fraction "
            f"{policy.holdout_fraction} leave {n - n_holdout} training and {n_holdout} holdout "
            f"rows; need at least {min_train} training and {MIN_HOLDOUT_ROWS} holdout rows"
        )
    if policy.time_column is not None:
        train, holdout, cutoff = _split_by_time(frame, policy, n_holdout)
    else:
        stratify = frame[target] if task == "classification" and policy.stratify else None
        if stratify is not None:
            _check_stratifiable(stratify, n_holdout, n - n_holdout, target)
        train, holdout = train_test_split(
            frame, test_size=n_holdout, random_state=policy.seed, stratify=stratify
        )
        cutoff = None
    if task == "classification":
        _check_training_classes(train[target], target, search)
    return (
        train[features].reset_index(drop=True),
        train[target].reset_index(drop=True),
        holdout[features].reset_index(drop=True),
        holdout[target].reset_index(drop=True),
        cutoff,
    )


def _split_by_time(
    frame: pd.DataFrame, policy: SplitPolicy, n_holdout: int
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    time_values = frame[policy.time_column]
    if time_values.isna().any():
        raise DataError(f"training.time_column {policy.time_column!r} has missing values")
    ordered = frame.sort_values(policy.time_column, kind="stable")
    cutoff = ordered[policy.time_column].iloc[len(ordered) - n_holdout]
    # Rows tied with the cutoff go to the holdout: training is strictly earlier.
    train = ordered[ordered[policy.time_column] < cutoff]
    holdout = ordered[ordered[policy.time_column] >= cutoff]
    if len(train) < MIN_TRAIN_ROWS:
        raise DataError(
            f"dataset too small to split by time: only {len(train)} row(s) are earlier than "
            f"the cutoff {cutoff!r} of training.time_column {policy.time_column!r}"
        )
    return train, holdout, str(cutoff)


def _check_stratifiable(y: pd.Series, n_holdout: int, n_train: int, target: str) -> None:
    counts = y.value_counts()
    rare = counts[counts < 2]
    if len(rare):
        raise DataError(
            f"dataset too small to split: class(es) {list(rare.index)[:10]} of target "
            f"{target!r} have a single row; a stratified split needs 2 rows per class "
            "(add data, or set stratify to false: training.stratify in a pipeline file)"
        )
    if n_holdout < len(counts) or n_train < len(counts):
        raise DataError(
            f"dataset too small to split: {len(counts)} classes need at least that many rows "
            f"on each side, got {n_train} training and {n_holdout} holdout rows "
            "(raise training.holdout_fraction or add data)"
        )


def _check_training_classes(y_train: pd.Series, target: str, search: SearchConfig | None) -> None:
    counts = y_train.value_counts()
    if len(counts) < 2:
        raise DataError(
            f"the training split of target {target!r} holds a single class; a classifier "
            "needs at least two (check the split's time column or add data)"
        )
    if search is not None and counts.min() < search.cv:
        raise DataError(
            f"dataset too small for {search.cv}-fold cross-validation: class "
            f"{counts.idxmin()!r} has {counts.min()} training rows (lower training.search.cv or add data)"
        )


def holdout_frame(prepared: PreparedData, target: str) -> pd.DataFrame:
    """Features and target of the holdout, exactly the rows the metrics were computed on."""
    frame = prepared.X_holdout.copy()
    frame[target] = prepared.y_holdout.to_numpy()
    return frame


def reference_frame(X_train: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """Training features for drift monitoring, a seeded sample when larger than ``max_rows``."""
    if len(X_train) <= max_rows:
        return X_train
    return X_train.sample(n=max_rows, random_state=seed).reset_index(drop=True)


def check_estimator_accepts_target(pipeline: Pipeline, prepared: PreparedData) -> None:
    """XGBoost classifiers only take labels 0..k-1: say so before a run starts."""
    estimator = final_estimator(pipeline)
    if prepared.task != "classification" or not type(estimator).__module__.startswith("xgboost"):
        return
    labels = np.sort(pd.concat([prepared.y_train, prepared.y_holdout]).unique())
    expected = np.arange(len(labels))
    if not (pd.api.types.is_numeric_dtype(labels.dtype) and np.array_equal(labels, expected)):
        raise DataError(
            f"XGBoost classifiers need target labels 0..{len(labels) - 1}, got "
            f"{labels[:10].tolist()}: encode the target column as integers first"
        )
