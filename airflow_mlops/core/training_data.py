"""The training data, checked and split before any MLflow run exists.

:func:`prepare_data` selects the feature columns, checks the target (present, no missing
value, two classes or a numeric target), refuses infinite values and empty feature columns,
learns the task (:func:`resolve_task`: the setting, else the estimator's kind, else the
target) and cuts the holdout (:func:`split_data`: by row hash, see
:mod:`~airflow_mlops.core.stable_split`, or out-of-time on a time column), failing with the
actual counts when the data is too small or a side holds a single class.
:func:`holdout_frame` and :func:`reference_frame` are the two tables training writes for
evaluation and drift monitoring.

Rows carry their source file in :data:`~airflow_mlops.core.datasets.SOURCE_FILE_COLUMN`;
it and the Hive partition columns are never features unless ``features`` lists a partition
column. The window's row cap (``window.max_rows``) is applied here, by the same row keys
as the split (:func:`cap_rows`), so which rows a run kept can be recomputed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import is_classifier, is_regressor
from sklearn.pipeline import Pipeline

from airflow_mlops.core.data_window import DataWindow, sample_mask
from airflow_mlops.core.datasets import SOURCE_FILE_COLUMN
from airflow_mlops.core.errors import ConfigError, DataError
from airflow_mlops.core.estimators import final_estimator, resolve_estimator
from airflow_mlops.core.metrics import infer_task
from airflow_mlops.core.stable_split import (
    StableSplit,
    check_split_classes,
    holdout_mask_for_keys,
    row_keys,
)
from airflow_mlops.core.training_config import DEFAULT_ESTIMATORS, SearchConfig, describe_callable
from airflow_mlops.core.training_job import SplitPolicy, TrainingJob

__all__ = [
    "MIN_HOLDOUT_ROWS",
    "MIN_TRAIN_ROWS",
    "PreparedData",
    "cap_rows",
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
    #: The hash split's settings (``None`` for the time split): logged as ``mlops.split.*``.
    split: StableSplit | None = None
    #: Holdout columns kept beside features and target: the source file of each row and the
    #: hashed columns that are not features, so evaluation can recompute row keys.
    holdout_extra: pd.DataFrame | None = None
    #: The row cap's cut (:func:`cap_rows`), ``None`` when every row of the window was kept.
    sample_fraction: float | None = None


def prepare_data(
    config: TrainingJob,
    frame: pd.DataFrame,
    sha256: str,
    rows: int,
    partition_columns: tuple[str, ...] | list[str] = (),
) -> PreparedData:
    """Select columns, check the target, infer the task, cap and split. Raises before any run.

    ``partition_columns`` are the dataset's Hive partition keys (read as string columns):
    not features unless ``features`` names them.
    """
    columns = [str(c) for c in frame.columns]
    if config.target not in columns:
        raise DataError(
            f"target column {config.target!r} is not in {config.train_uri} "
            f"(columns: {columns[:50]})"
        )
    features = select_features(config, columns, partition_columns)
    hashed = list(config.key) if config.key else sorted({*features, config.target})
    frame, sample_fraction = cap_rows(frame, config.window, hashed, by_content=not config.key)
    rows = len(frame) if sample_fraction is not None else rows
    target = frame[config.target]
    null_targets = int(target.isna().sum())
    if null_targets:
        raise DataError(
            f"target column {config.target!r} has {null_targets} missing value(s) in "
            f"{config.train_uri}: drop or fill them before training"
        )
    estimator = None
    if config.task is None and config.estimator is not None:
        # Built before the split: its kind decides the task; reused for the pipeline.
        estimator = resolve_estimator(
            config.estimator,
            "classification",
            dict(config.params),
            config.allowed_modules,
            config.split.seed,
        )
    task = resolve_task(config, target, estimator)
    check_target(task, target, config.target)
    check_finite(frame, [*features, config.target], config.train_uri)
    if config.preprocessing == "default":
        _check_default_preprocessing_supports(frame, features)
    # Before the split too: an empty column is named as such, not as a split too small
    # (rows that differ only by missing values share their hash, hence their side).
    check_features_have_values(frame, config.train_uri, features)
    split = None
    if config.split.time_column is None:
        # The columns as recorded: data.key in order, else the content columns sorted.
        split = StableSplit(
            float(config.split.holdout_fraction),
            int(config.split.seed),
            tuple(hashed),
            not config.key,
        )
    train, holdout, cutoff = split_data(
        frame, features, config.target, task, config.split, config.search, split
    )
    y_train = _renumbered(train.pop(config.target))
    # The hash split's training rows hold exactly the features once the target is popped:
    # taking them as they are avoids a second copy of the largest frame.
    X_train = _renumbered(train if list(train.columns) == features else train[features])
    del train
    check_features_have_values(X_train, config.train_uri)
    measured = [*(split.key_columns if split else ()), *config.holdout_columns]
    kept = [c for c in dict.fromkeys(measured) if c not in {*features, config.target}]
    if SOURCE_FILE_COLUMN in holdout.columns:
        kept.append(SOURCE_FILE_COLUMN)
    return PreparedData(
        task=task,
        features=features,
        X_train=X_train,
        y_train=y_train,
        X_holdout=holdout[features].reset_index(drop=True),
        y_holdout=holdout[config.target].reset_index(drop=True),
        data_sha256=sha256,
        data_rows=rows,
        time_cutoff=cutoff,
        estimator=estimator,
        split=split,
        holdout_extra=holdout[kept].reset_index(drop=True) if kept else None,
        sample_fraction=sample_fraction,
    )


def _renumbered(data: Any) -> Any:
    """``data`` (a fresh selection) indexed 0..n-1 in place: reset_index would copy it."""
    data.index = pd.RangeIndex(len(data))
    return data


def cap_rows(
    frame: pd.DataFrame, window: DataWindow, hashed: list[str], *, by_content: bool
) -> tuple[pd.DataFrame, float | None]:
    """At most ``window.max_rows`` rows, kept by the hash of the split's columns
    (:func:`~airflow_mlops.core.data_window.sample_mask`), and the cut as a fraction
    (``None``: no cap applied). The same keys as the split: a row kept in one run is kept in
    another of the same window settings whenever the cut allows."""
    if not window.max_rows or len(frame) <= window.max_rows:
        return frame, None
    missing = [c for c in hashed if c not in frame.columns]
    if missing:
        raise DataError(f"data.key column(s) {missing} are not in the data")
    keys = row_keys(frame, hashed, by_content=by_content)
    mask, fraction = sample_mask(keys, window)
    log.info("Row cap: kept %d of %d rows (%s).", int(mask.sum()), len(frame), window.describe())
    return frame[mask], fraction


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


def select_features(
    config: TrainingJob, columns: list[str], partition_columns: tuple[str, ...] | list[str] = ()
) -> list[str]:
    """``features`` if given, else every column but target, ``exclude``, the time column, the
    partition columns and the source-file column."""
    time_column = config.split.time_column
    if time_column is not None and time_column not in columns:
        raise DataError(
            f"training.time_column {time_column!r} is not in {config.train_uri} (columns: {columns[:50]})"
        )
    if config.features is not None:
        if SOURCE_FILE_COLUMN in config.features:
            raise ConfigError(
                f"features must not list {SOURCE_FILE_COLUMN!r}: it names each row's source "
                "file, which is no signal a model can use on new data"
            )
        missing = [f for f in config.features if f not in columns]
        if missing:
            raise DataError(
                f"features {missing} are not in {config.train_uri} (columns: {columns[:50]})"
            )
        features = list(dict.fromkeys(config.features))
    else:
        dropped = {config.target, *config.exclude, *partition_columns, SOURCE_FILE_COLUMN}
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


def check_features_have_values(
    X_train: pd.DataFrame, uri: str, columns: list[str] | None = None
) -> None:
    """Refuse feature columns (``columns``, default all) with no value in the training rows.
    The imputers would drop them silently (or scikit-learn would fail on "0 features" when
    none is left), and an empty column is almost always a broken upstream load, not a
    signal. Columns are checked in place, never copied out."""
    names = X_train.columns if columns is None else columns
    empty = [str(c) for c in names if not X_train[c].notna().any()]
    if empty:
        raise DataError(
            f"feature columns {empty[:50]} of {uri} have no value in any of the "
            f"{len(X_train)} training rows: fix the data or list them in exclude"
        )


def _check_default_preprocessing_supports(frame: pd.DataFrame, features: list[str]) -> None:
    unsupported = [
        c
        for c in features
        if pd.api.types.is_datetime64_any_dtype(frame[c])
        or pd.api.types.is_timedelta64_dtype(frame[c])
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
    split: StableSplit | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """``(training rows, holdout rows, time cutoff)``: by ``split`` (row hash) or, without
    it, by ``policy.time_column``; fail with the actual counts when a side is too small."""
    n = len(frame)
    min_train = max(MIN_TRAIN_ROWS, search.cv if search else 0)
    if split is None:
        n_holdout = math.ceil(n * policy.holdout_fraction)
        _check_sizes(n - n_holdout, n_holdout, min_train, policy, "")
        train, holdout, cutoff = _split_by_time(frame, policy, n_holdout)
    else:
        mask = holdout_mask_for_keys(split.keys(frame), split.holdout_fraction, split.seed)
        n_holdout = int(mask.sum())
        _check_sizes(n - n_holdout, n_holdout, min_train, policy, " (hash split)")
        if task == "classification":
            check_split_classes(frame[target].to_numpy(), mask, target)
        # Training rows need only the model's columns; holdout rows keep every column.
        train, holdout, cutoff = frame.loc[~mask, [*features, target]], frame[mask], None
    if task == "classification":
        _check_training_classes(train[target], target, search)
    return train, holdout, cutoff


def _check_sizes(
    n_train: int, n_holdout: int, min_train: int, policy: SplitPolicy, how: str
) -> None:
    if n_holdout < MIN_HOLDOUT_ROWS or n_train < min_train:
        raise DataError(
            f"dataset too small to split: {n_train + n_holdout} rows with "
            f"training.holdout_fraction {policy.holdout_fraction} give {n_train} training "
            f"and {n_holdout} holdout rows{how}; need at least {min_train} training and "
            f"{MIN_HOLDOUT_ROWS} holdout rows"
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
    """Features and target of the holdout, exactly the rows the metrics were computed on,
    then the hashed columns that are not features and each row's source file."""
    frame = prepared.X_holdout.copy()
    frame[target] = prepared.y_holdout.to_numpy()
    if prepared.holdout_extra is not None:
        for column in prepared.holdout_extra.columns:
            frame[column] = prepared.holdout_extra[column].to_numpy()
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
