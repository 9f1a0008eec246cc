"""Train a candidate model and record it in MLflow with everything needed to trust it.

One call, :func:`train_model`, goes from a table URI to a finished MLflow run that holds:

- params and holdout metrics, logged in batches (``MlflowClient.log_batch``), never one
  request per value;
- the fitted scikit-learn ``Pipeline`` (preprocessing + estimator; XGBoost estimators too)
  logged with the sklearn flavour, a signature, an input example and explicit pinned pip
  requirements, so MLflow never spends seconds inferring them in a subprocess;
- lineage tags (the ``TAG_*`` constants below, plus :meth:`RunContext.as_tags`): which data,
  with which hash, which rows were held out (written to storage, hashed) so that evaluation
  scores the champion on exactly the same rows, and which reference data drift monitoring
  compares against.

Retry safety: every run carries the task's idempotency key. Before training we look for a
run with the same key: a FINISHED one that trained on the same data (sha256) and
configuration is returned as is (no retraining, no second run); one trained on other
inputs is left alone and a new run trains; a RUNNING one is the leftover of a killed try
and is marked FAILED, and after our run is created any other RUNNING run of the key (a
replayed create request) is marked KILLED. All inputs are validated before any run starts,
and any error inside the run marks it FAILED before re-raising, so no run is ever left
RUNNING by a failure we can observe.

No Airflow import here: the orchestrator is described by :class:`RunContext`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH
from pydantic import Field, model_validator
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import (
    GridSearchCV,
    KFold,
    RandomizedSearchCV,
    StratifiedKFold,
    TimeSeriesSplit,
    train_test_split,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from airflow_mlops.core.errors import (
    ConfigError,
    DataError,
    EstimatorNotAllowedError,
    MlopsError,
)
from airflow_mlops.core.jsonsafe import json_safe
from airflow_mlops.core.lineage import (
    HOLDOUT_METRIC_PREFIX,
    MODEL_ARTIFACT_NAME,
    TAG_CONFIG_HASH,
    TAG_DATA_ROWS,
    TAG_DATA_SHA256,
    TAG_DATA_URI,
    TAG_ERROR,
    TAG_ESTIMATOR,
    TAG_FEATURES,
    TAG_FEATURES_URI,
    TAG_GIT_COMMIT,
    TAG_HOLDOUT_ROWS,
    TAG_HOLDOUT_SHA256,
    TAG_HOLDOUT_URI,
    TAG_IDEMPOTENCY_KEY,
    TAG_MODEL_NAME,
    TAG_MODEL_URI,
    TAG_PIPELINE_CONFIG_HASH,
    TAG_REFERENCE_SHA256,
    TAG_REFERENCE_URI,
    TAG_SEARCH_BEST_PARAMS,
    TAG_SPLIT,
    TAG_SPLIT_TIME_CUTOFF,
    TAG_STAGE,
    TAG_TARGET,
    TAG_TASK,
    TAG_TRIAL_INDEX,
    RunContext,
    config_hash,
    detect_git_commit,
)
from airflow_mlops.core.metrics import compute_metrics, infer_task, predict_for_metrics
from airflow_mlops.core.mlflow_client import get_or_create_experiment
from airflow_mlops.core.storage import Storage, join_uri
from airflow_mlops.core.training_config import (
    DEFAULT_ESTIMATORS,
    SearchConfig,
    TrainingConfig,
    build,
    describe_callable,
)

log = logging.getLogger(__name__)

MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"

STAGE_TRAINING = "training"
STAGE_TRIAL = "training.trial"
#: Modules estimators may come from without configuration (``[mlops]
#: allowed_estimator_modules`` adds more).
BUILTIN_ESTIMATOR_MODULES = ("sklearn", "xgboost")
#: Environment form of ``[mlops] artifacts_uri`` (core reads no Airflow config).
ARTIFACTS_URI_ENV = "AIRFLOW__MLOPS__ARTIFACTS_URI"
# Below these a split is refused: metrics such as r2 and roc_auc need two holdout rows, and a
# model fitted on fewer rows than this is not worth logging.
MIN_TRAIN_ROWS = 4
MIN_HOLDOUT_ROWS = 2
# Libraries the loaded model always needs; the estimator's own package is added on top.
_BASE_REQUIREMENTS = ("mlflow", "scikit-learn", "numpy", "pandas", "scipy")
_MODULE_TO_DISTRIBUTION = {"sklearn": "scikit-learn", "xgboost": "xgboost", "lightgbm": "lightgbm"}


class TrainingInterrupted(MlopsError):
    """The task was killed while training; the run was marked FAILED, not finished."""


# -- Configuration --------------------------------------------------------------------------
class TrainingJob(TrainingConfig):
    """One training task: the :class:`TrainingConfig` (same fields, same defaults) plus the
    data it reads, the labels of its run and the deployment's limits. Built with
    :meth:`from_values` for errors that name the field; every value is checked at construction.

    ``estimator``: dotted path to a class or factory (``xgboost.XGBClassifier``,
    ``my_pkg.models.build``), or the class/callable itself; ``None`` picks a RandomForest
    model for the task. Classes get ``params`` as constructor arguments; factories are called
    without arguments and ``params`` are applied with ``set_params``. ``preprocessing``:
    ``"default"`` (median impute numerics, most-frequent impute + one-hot categoricals),
    ``None``/``"none"`` (the estimator gets the raw columns), or a dotted path / callable
    ``f(X: DataFrame) -> transformer``.
    """

    train_uri: str = Field(pattern=r"\S")
    target: str = Field(pattern=r"\S")
    experiment_name: str = Field(pattern=r"\S")  # type: ignore[assignment]
    model_name: str | None = None
    features: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    artifacts_uri: str | None = None
    reference_max_rows: int = Field(100_000, ge=1)
    max_one_hot_categories: int = Field(50, ge=1)
    serialization_format: Literal["cloudpickle", "skops", "pickle"] = "cloudpickle"
    input_example_rows: int = Field(5, ge=1)
    extra_tags: dict[str, str] = Field(default_factory=dict)
    #: More modules dotted paths may name, from ``[mlops] allowed_estimator_modules``.
    allowed_modules: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _target_is_no_feature(self) -> TrainingJob:
        if self.features is not None and self.target in self.features:
            raise ValueError(f"features must not contain the target column {self.target!r}")
        return self

    @classmethod
    def from_values(cls, values: Mapping[str, Any], label: str = "training job") -> TrainingJob:
        return build(cls, values, label)

    @property
    def split(self) -> SplitPolicy:
        return SplitPolicy(self.holdout_fraction, self.seed, self.stratify, self.time_column)

    def fingerprint(self) -> dict[str, Any]:
        """JSON-safe description of the configuration (for ``mlops.config_hash``); the run's
        labels (``extra_tags``) and the deployment's ``allowed_modules`` are not part of it."""
        return self.model_dump(mode="json", exclude={"extra_tags", "allowed_modules"})


@dataclass(frozen=True)
class SplitPolicy:
    """How the holdout is cut (the split fields of :class:`TrainingConfig`).

    Random split: ``holdout_fraction`` of the rows, drawn with ``seed``, stratified by the
    target for classification (unless ``stratify`` is false). Out-of-time split: with
    ``time_column``, the latest ``holdout_fraction`` of rows by time are held out and every
    training row is strictly earlier than every holdout row; the time column is not a
    feature unless listed in ``features``.
    """

    holdout_fraction: float
    seed: int
    stratify: bool
    time_column: str | None


# -- Results --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingResult:
    """What a training task returns (small JSON, fit for XCom)."""

    run_id: str
    experiment_id: str
    model_uri: str
    holdout_uri: str
    holdout_sha256: str
    reference_uri: str
    task: str
    metrics: dict[str, float]
    best_params: dict[str, Any] | None
    idempotency_key: str
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


# -- Public entry point ---------------------------------------------------------------------
def train_model(
    config: TrainingJob,
    context: RunContext,
    storage: Storage,
    client: MlflowClient,
    *,
    experiment_id: str | None = None,
    source_dir: str | None = None,
    on_run_started: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    signing_key: bytes | None = None,
) -> TrainingResult:
    """Train, evaluate on the holdout and log to MLflow; idempotent per ``context``.

    The MLflow tracking URI must already point where ``client`` points (the MLflow hook's
    ``session()`` does both): ``mlflow.sklearn.log_model`` uses the process-wide URI.
    ``on_run_started(run_id)`` lets the caller remember the run to fail it when killed;
    ``should_stop()`` is polled between stages and before finishing, so a run whose task
    was killed is never marked FINISHED afterwards. With ``signing_key`` the logged model is
    signed (:mod:`airflow_mlops.core.provenance`) before the run finishes.

    A finished run of the same task instance is reused only if it trained on the same data
    (URI and sha256) with the same configuration: a task cleared and re-run after its data
    file was fixed trains again.
    """
    experiment_id = experiment_id or get_or_create_experiment(client, config.experiment_name)
    key = context.idempotency_key

    earlier = runs_for_key(client, experiment_id, key)
    # Leftovers of killed tries are dead whatever happens next (even if reading fails).
    fail_leftover_runs(client, experiment_id, earlier)
    # Everything that can be wrong with the inputs is found from here, before any run exists.
    table = storage.read_table(config.train_uri)
    expected = reuse_fingerprint(config, table.sha256)
    previous = latest_finished(earlier, expected)
    if previous is not None:
        log.info("Run %s already finished for key %s: reusing it.", previous.info.run_id, key)
        return result_from_run(previous, key)
    stale = [r.info.run_id for r in earlier if r.info.status == "FINISHED"]
    if stale:
        log.info(
            "Finished run(s) %s of this task trained on other data or configuration: "
            "training again.",
            stale,
        )
    prepared = prepare_data(config, table.frame, table.sha256, table.rows)
    pipeline = build_pipeline(config, prepared.task, prepared.X_train, prepared.estimator)
    check_estimator_accepts_target(pipeline, prepared)
    search = build_search(config, pipeline, prepared) if config.search else None
    artifacts_uri = config.artifacts_uri or default_artifacts_uri(config.train_uri, key)

    tags = {
        **{str(k): str(v) for k, v in config.extra_tags.items()},
        **context.as_tags(),
        **lineage_tags(config, prepared, artifacts_uri),
        **expected,
    }
    commit = detect_git_commit(source_dir)
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    run = client.create_run(experiment_id, tags=tags, run_name=_run_name(config, context))
    run_id = run.info.run_id
    kill_replayed_duplicates(client, experiment_id, key, run_id)
    if on_run_started is not None:
        on_run_started(run_id)
    stop = should_stop or (lambda: False)
    try:
        result = _train_in_run(
            config,
            prepared,
            pipeline,
            search,
            storage,
            client,
            experiment_id,
            run_id,
            artifacts_uri,
            stop,
        )
        result = TrainingResult(
            **{**result, "experiment_id": experiment_id, "idempotency_key": key}
        )
        if signing_key is not None:
            sign_trained_model(client, result.model_uri, signing_key)
        _raise_if_stopped(stop)
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        return result
    except BaseException as err:
        # BaseException: SIGTERM-driven interrupts and SystemExit must fail the run too.
        mark_run_failed(client, run_id, f"{type(err).__name__}: {err}")
        raise


def _train_in_run(
    config: TrainingJob,
    prepared: PreparedData,
    pipeline: Pipeline,
    search: Any,
    storage: Storage,
    client: MlflowClient,
    experiment_id: str,
    run_id: str,
    artifacts_uri: str,
    stop: Callable[[], bool],
) -> dict[str, Any]:
    started = time.perf_counter()
    best_params: dict[str, Any] | None = None
    if search is not None:
        search.fit(prepared.X_train, prepared.y_train)
        _raise_if_stopped(stop)
        log_search_trials(client, experiment_id, run_id, search)
        fitted = search.best_estimator_
        # Report the best params under the names the user wrote in search.space.
        user_names = {pipeline_param_name(name): name for name in config.search.space}
        best_params = json_safe({user_names.get(k, k): v for k, v in search.best_params_.items()})
    else:
        fitted = pipeline.fit(prepared.X_train, prepared.y_train)
    fit_seconds = time.perf_counter() - started
    _raise_if_stopped(stop)

    y_pred, y_score = predict_for_metrics(fitted, prepared.X_holdout, prepared.task)
    metrics = compute_metrics(prepared.task, prepared.y_holdout, y_pred, y_score)

    holdout_uri = join_uri(artifacts_uri, "holdout.parquet")
    reference_uri = join_uri(artifacts_uri, "reference.parquet")
    holdout_sha = storage.write_table(holdout_frame(prepared, config.target), holdout_uri)
    reference = reference_frame(prepared.X_train, config.reference_max_rows, config.split.seed)
    reference_sha = storage.write_table(reference, reference_uri)
    _raise_if_stopped(stop)

    run_tags = {TAG_HOLDOUT_SHA256: holdout_sha, TAG_REFERENCE_SHA256: reference_sha}
    if best_params is not None:
        run_tags[TAG_SEARCH_BEST_PARAMS] = json.dumps(best_params, sort_keys=True)
    # Params go in before the model: log_model copies the run's params onto the model.
    client.log_batch(
        run_id,
        params=_as_params(run_params(config, prepared, fitted)),
        tags=_as_tags(run_tags),
    )
    model_info = log_fitted_model(fitted, prepared, config, run_id)
    # Metrics go in after the model, attached to it: log_model would otherwise fetch the
    # history of every metric already on the run (one request per metric).
    now = _now_ms()
    metric_values = {f"{HOLDOUT_METRIC_PREFIX}{k}": v for k, v in metrics.items()}
    metric_values["fit_seconds"] = fit_seconds
    if best_params is not None:
        metric_values["cv_best_score"] = float(search.best_score_)
    client.log_batch(
        run_id,
        metrics=[
            Metric(k, float(v), now, 0, model_id=model_info.model_id)
            for k, v in metric_values.items()
        ],
        tags=[RunTag(TAG_MODEL_URI, model_info.model_uri)],
    )
    return {
        "run_id": run_id,
        "model_uri": model_info.model_uri,
        "holdout_uri": holdout_uri,
        "holdout_sha256": holdout_sha,
        "reference_uri": reference_uri,
        "task": prepared.task,
        "metrics": metrics,
        "best_params": best_params,
    }


def _raise_if_stopped(stop: Callable[[], bool]) -> None:
    if stop():
        raise TrainingInterrupted("training was interrupted (task killed); run marked FAILED")


# -- Idempotency ----------------------------------------------------------------------------
def runs_for_key(client: MlflowClient, experiment_id: str, key: str) -> list[Any]:
    """Training runs (any status) carrying the idempotency ``key``, newest first; one request."""
    return client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_IDEMPOTENCY_KEY}` = '{key}' AND tags.`{TAG_STAGE}` = '{STAGE_TRAINING}'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )


def reuse_fingerprint(config: TrainingJob, data_sha256: str) -> dict[str, str]:
    """The tags a finished run must carry, exactly, to be reused for ``config``: the data
    (URI and sha256), the training configuration and, when given, the pipeline's."""
    fingerprint = {
        TAG_DATA_URI: config.train_uri,
        TAG_DATA_SHA256: data_sha256,
        TAG_CONFIG_HASH: config_hash(config.fingerprint()),
    }
    pipeline_hash = config.extra_tags.get(TAG_PIPELINE_CONFIG_HASH)
    if pipeline_hash:
        fingerprint[TAG_PIPELINE_CONFIG_HASH] = str(pipeline_hash)
    return fingerprint


def latest_finished(runs: Sequence[Any], expected: Mapping[str, str] | None = None) -> Any:
    """The newest FINISHED run among ``runs`` (newest first) whose tags hold ``expected``."""
    wanted = dict(expected or {})
    return next(
        (
            r
            for r in runs
            if r.info.status == "FINISHED"
            and all(r.data.tags.get(k) == v for k, v in wanted.items())
        ),
        None,
    )


def kill_replayed_duplicates(
    client: MlflowClient, experiment_id: str, key: str, run_id: str
) -> list[str]:
    """Mark KILLED the other RUNNING runs of this key: MLflow's client retries POSTs, so a
    replayed create-run can leave a second run that nobody would ever finish.

    Airflow never runs two tries of one task instance together, and leftovers of earlier
    tries were failed before ``run_id`` was created, so any other RUNNING run is a replay.
    """
    killed = []
    for run in runs_for_key(client, experiment_id, key):
        if run.info.run_id == run_id or run.info.status != "RUNNING":
            continue
        try:
            client.log_batch(
                run.info.run_id,
                tags=[RunTag(TAG_ERROR, f"duplicate of run {run_id} (replayed create request)")],
            )
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            killed.append(run.info.run_id)
        except Exception:  # never fail the training for a leftover; it is only logged
            log.exception("Could not mark duplicate MLflow run %s KILLED", run.info.run_id)
    if killed:
        log.warning("Marked duplicate run(s) %s of key %s KILLED (replayed create).", killed, key)
    return killed


def sign_trained_model(client: MlflowClient, model_uri: str, signing_key: bytes) -> None:
    """Sign the logged model's stored files (see :mod:`airflow_mlops.core.provenance`)."""
    import tempfile

    from airflow_mlops.core.model_uri import parse_model_uri
    from airflow_mlops.core.provenance import sign_logged_model

    model_id = parse_model_uri(model_uri).model_id
    if model_id is None:
        raise MlopsError(f"cannot sign {model_uri!r}: it is not a logged model (models:/m-<id>)")
    with tempfile.TemporaryDirectory(prefix="mlops-sign-") as work_dir:
        sign_logged_model(client, model_id, signing_key, work_dir)


def fail_leftover_runs(client: MlflowClient, experiment_id: str, runs: Sequence[Any]) -> list[str]:
    """Mark FAILED the RUNNING runs (and their trials) a killed earlier try left behind."""
    failed = []
    for run in (r for r in runs if r.info.status == "RUNNING"):
        trials = client.search_runs(
            [experiment_id],
            filter_string=(
                f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run.info.run_id}' "
                "AND attributes.status = 'RUNNING'"
            ),
        )
        for trial in trials:
            client.set_terminated(trial.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        mark_run_failed(client, run.info.run_id, "left RUNNING by an earlier try that was killed")
        failed.append(run.info.run_id)
    if failed:
        log.warning("Marked leftover RUNNING run(s) %s FAILED before retraining.", failed)
    return failed


def mark_run_failed(client: MlflowClient, run_id: str, reason: str) -> None:
    """Record why and set FAILED; a failure to do so is logged, never hides the cause."""
    try:
        client.log_batch(run_id, tags=[RunTag(TAG_ERROR, reason[:MAX_TAG_VAL_LENGTH])])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    except Exception:  # the caller re-raises the original error; this one is only logged
        log.exception("Could not mark MLflow run %s FAILED", run_id)


def result_from_run(run: Any, key: str) -> TrainingResult:
    """Rebuild the recorded result of a finished training run from its tags and metrics."""
    tags = run.data.tags
    missing = [t for t in (TAG_MODEL_URI, TAG_HOLDOUT_URI, TAG_HOLDOUT_SHA256) if t not in tags]
    if missing:
        raise MlopsError(
            f"MLflow run {run.info.run_id} is FINISHED for this task but lacks tags {missing}: "
            "it was not written by TrainModelOperator; delete it or change the experiment"
        )
    metrics = {
        k.removeprefix(HOLDOUT_METRIC_PREFIX): float(v)
        for k, v in run.data.metrics.items()
        if k.startswith(HOLDOUT_METRIC_PREFIX)
    }
    best = tags.get(TAG_SEARCH_BEST_PARAMS)
    return TrainingResult(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        model_uri=tags[TAG_MODEL_URI],
        holdout_uri=tags[TAG_HOLDOUT_URI],
        holdout_sha256=tags[TAG_HOLDOUT_SHA256],
        reference_uri=tags.get(TAG_REFERENCE_URI, ""),
        task=tags.get(TAG_TASK, ""),
        metrics=metrics,
        best_params=json.loads(best) if best else None,
        idempotency_key=key,
        reused=True,
    )


# -- Data preparation -----------------------------------------------------------------------
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


def default_artifacts_uri(train_uri: str, key: str, root: str | None = None) -> str:
    """``<artifacts root>/training/<idempotency key>``: stable across retries.

    Never "next to the data": the data's bucket may belong to someone else, or be read-only.
    ``root`` defaults to ``AIRFLOW__MLOPS__ARTIFACTS_URI``, else a local folder under
    ``$AIRFLOW_HOME`` that only suits local data: remote data without a configured root is
    refused, since other workers could not read a holdout written to this machine.
    """
    root = root or os.environ.get(ARTIFACTS_URI_ENV) or None
    if root is None:
        if "://" in train_uri and not train_uri.startswith("file://"):
            raise ConfigError(
                f"train_uri {train_uri} is remote but no artifacts location is configured: set "
                "[mlops] artifacts_uri (or pass artifacts_uri) for the holdout and reference files"
            )
        home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
        root = os.path.join(home, "mlops_artifacts")
    return join_uri(root, "training", key)


# -- Estimator and pipeline -----------------------------------------------------------------
def allowed_module_prefixes(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """Modules dotted paths may be imported from: scikit-learn, XGBoost and ``extra`` (the
    ``[mlops] allowed_estimator_modules`` setting), without trailing dots."""
    return (*BUILTIN_ESTIMATOR_MODULES, *(m.strip().rstrip(".") for m in extra if m.strip()))


def check_module_allowed(path: str, field_name: str, allowed: Sequence[str] = ()) -> None:
    """Refuse a dotted path outside the allowed modules *before* importing anything: an import
    runs the module's code, and a pipeline YAML is configuration, not code."""
    parts = path.strip().split(".")
    if any(not part.isidentifier() or part.startswith("_") for part in parts):
        raise EstimatorNotAllowedError(
            f"{field_name} {path!r} must be a dotted path of public names like "
            "'package.module.Name'"
        )
    module_name = ".".join(parts[:-1])
    prefixes = allowed_module_prefixes(allowed)
    if not any(module_name == p or module_name.startswith(p + ".") for p in prefixes):
        raise EstimatorNotAllowedError(
            f"{field_name} {path!r} is not in an allowed module {list(prefixes)}: add its "
            "module to [mlops] allowed_estimator_modules to use it"
        )


def import_object(path: str, field_name: str, allowed: Sequence[str] = ()) -> Any:
    """Import ``package.module.Name`` from an allowed module; a clear error names the field."""
    module_name, _, attr = path.strip().rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{field_name} {path!r} must be a dotted path like 'package.module.Name'")
    check_module_allowed(path, field_name, allowed)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{field_name} {path!r} cannot be imported: {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ConfigError(f"{field_name} {path!r}: module {module_name!r} has no {attr!r}") from err


def resolve_estimator(
    spec: str | Callable[..., Any] | None,
    task: str,
    params: Mapping[str, Any],
    allowed: Sequence[str] = (),
) -> Any:
    """An unfitted estimator (or Pipeline) from a dotted path, class or factory, with params.

    A dotted path must name an estimator class (anything with ``fit`` and ``get_params``)
    from an allowed module (:func:`check_module_allowed`); factories are accepted only from
    the user's ``allowed`` modules, since scikit-learn/XGBoost functions are not factories.
    Nothing is constructed or called before those checks.
    """
    spec = spec if spec is not None else DEFAULT_ESTIMATORS[task]
    label = describe_callable(spec)
    target = spec
    if isinstance(spec, str):
        target = import_object(spec, "estimator", allowed)
        _check_imported_estimator(spec, target, allowed)
    if inspect.isclass(target):
        estimator = _construct(target, params, label)
        params = {}
    elif callable(target) and not _is_estimator(target):
        try:
            estimator = target()
        except Exception as err:
            raise ConfigError(
                f"estimator factory {label} raised {type(err).__name__}: {err}"
            ) from err
    else:
        estimator = clone(target) if _is_estimator(target) else target
    if not _is_estimator(estimator):
        raise ConfigError(
            f"estimator {label} is not a scikit-learn compatible estimator: it has no "
            "fit/predict/get_params methods"
        )
    if params:
        set_estimator_params(estimator, params, label)
    validate_estimator_params(estimator, label)
    return estimator


def _check_imported_estimator(path: str, target: Any, allowed: Sequence[str]) -> None:
    if inspect.isclass(target):
        if not all(callable(getattr(target, m, None)) for m in ("fit", "get_params")):
            raise EstimatorNotAllowedError(
                f"estimator {path!r} is a class but not an estimator: it has no fit/get_params"
            )
        return
    builtin = any(path == m or path.startswith(m + ".") for m in BUILTIN_ESTIMATOR_MODULES)
    user_modules = allowed_module_prefixes(allowed)[len(BUILTIN_ESTIMATOR_MODULES) :]
    user = any(path.startswith(m + ".") for m in user_modules)
    if builtin and not user:
        raise EstimatorNotAllowedError(
            f"estimator {path!r} is not an estimator class: from scikit-learn and XGBoost only "
            "classes are accepted (factories only from [mlops] allowed_estimator_modules)"
        )
    if not callable(target) and not _is_estimator(target):
        raise EstimatorNotAllowedError(
            f"estimator {path!r} is neither an estimator class nor a factory function"
        )


def _check_user_module(path: str, field_name: str, allowed: Sequence[str]) -> None:
    """A dotted path to a function that will be *called* must come from the user's own
    ``[mlops] allowed_estimator_modules``: scikit-learn/XGBoost functions are not such
    factories, and a pipeline file must not call them (``sklearn.datasets.fetch_openml``)."""
    user_modules = allowed_module_prefixes(allowed)[len(BUILTIN_ESTIMATOR_MODULES) :]
    if not any(path.strip().startswith(m + ".") for m in user_modules):
        raise EstimatorNotAllowedError(
            f"{field_name} {path!r} is not in [mlops] allowed_estimator_modules "
            f"{list(user_modules)}: dotted {field_name} paths name your own functions only"
        )


def _is_estimator(obj: Any) -> bool:
    return not inspect.isclass(obj) and all(
        callable(getattr(obj, m, None)) for m in ("fit", "predict", "get_params")
    )


def _construct(cls: type, params: Mapping[str, Any], label: str) -> Any:
    # Check names against the defaults first: XGBoost swallows unknown kwargs silently.
    try:
        defaults = cls()
    except Exception as err:
        raise ConfigError(f"estimator {label} cannot be built without arguments: {err}") from err
    if not _is_estimator(defaults):
        raise ConfigError(
            f"estimator {label} is not a scikit-learn compatible estimator: it has no "
            "fit/predict/get_params methods"
        )
    _check_param_names(defaults.get_params(deep=False), params, label)
    try:
        return cls(**params)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"params rejected by estimator {label}: {err}") from err


def _check_param_names(known: Mapping[str, Any], params: Mapping[str, Any], label: str) -> None:
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(
            f"params {unknown} are not parameters of estimator {label}; "
            f"valid names: {sorted(known)}"
        )


def set_estimator_params(estimator: Any, params: Mapping[str, Any], label: str) -> None:
    """``set_params`` with a ConfigError naming the unknown or rejected parameter."""
    _check_param_names(estimator.get_params(deep=True), params, label)
    try:
        estimator.set_params(**params)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"params rejected by estimator {label}: {err}") from err


def validate_estimator_params(estimator: Any, label: str) -> None:
    """Run scikit-learn's own parameter constraints (types, ranges) without fitting."""
    steps = estimator.steps if isinstance(estimator, Pipeline) else [(None, estimator)]
    for _, step in steps:
        if step in (None, "passthrough") or not hasattr(step, "_parameter_constraints"):
            continue
        validate = getattr(step, "_validate_params", None)
        if validate is None:
            continue
        try:
            validate()
        except (TypeError, ValueError) as err:
            raise ConfigError(f"invalid params for estimator {label}: {err}") from err


def build_preprocessor(X: pd.DataFrame, max_categories: int) -> ColumnTransformer:
    """Median-impute numeric columns; impute + one-hot categorical and boolean ones.

    Output is dense (``sparse_threshold=0``): XGBoost treats absent sparse entries as
    missing, which would silently turn numeric zeros into NaN.
    """
    numeric, categorical, boolean = [], [], []
    for column in X.columns:
        dtype = X[column].dtype
        if pd.api.types.is_bool_dtype(dtype):
            boolean.append(column)
        elif pd.api.types.is_numeric_dtype(dtype):
            numeric.append(column)
        else:
            categorical.append(column)
    one_hot = {
        "handle_unknown": "infrequent_if_exist",
        "max_categories": max_categories,
        "sparse_output": False,
    }
    transformers = []
    if numeric:
        transformers.append(("numeric", SimpleImputer(strategy="median"), numeric))
    if categorical:
        transformers.append(
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("one_hot", OneHotEncoder(**one_hot)),
                    ]
                ),
                categorical,
            )
        )
    if boolean:
        # A bool column has no missing values (those would make it object); SimpleImputer
        # refuses the bool dtype, so it goes straight to the encoder.
        transformers.append(("boolean", OneHotEncoder(**one_hot), boolean))
    return ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)


def build_pipeline(
    config: TrainingJob, task: str, X_train: pd.DataFrame, estimator: Any = None
) -> Pipeline:
    """``Pipeline([("preprocess", ...), ("model", estimator)])``; no preprocess step if None.

    ``estimator``: one already built from ``config`` (:func:`prepare_data` builds it to learn
    the task); else it is built here."""
    if estimator is None:
        estimator = resolve_estimator(
            config.estimator, task, dict(config.params), config.allowed_modules
        )
    preprocess = resolve_preprocessing(config, X_train)
    steps = (
        [("model", estimator)]
        if preprocess is None
        else [("preprocess", preprocess), ("model", estimator)]
    )
    return Pipeline(steps)


def resolve_preprocessing(config: TrainingJob, X_train: pd.DataFrame) -> Any:
    spec = config.preprocessing
    if spec is None or spec == "none":
        return None
    if spec == "default":
        return build_preprocessor(X_train, config.max_one_hot_categories)
    if isinstance(spec, str):
        _check_user_module(spec, "preprocessing", config.allowed_modules)
    factory = (
        import_object(spec, "preprocessing", config.allowed_modules)
        if isinstance(spec, str)
        else spec
    )
    if not callable(factory):
        raise ConfigError(f"preprocessing {spec!r} must be 'default', None or a callable")
    transformer = factory(X_train)
    if not (
        callable(getattr(transformer, "fit", None))
        and callable(getattr(transformer, "transform", None))
    ):
        raise ConfigError(
            f"preprocessing {describe_callable(spec)} returned {type(transformer).__name__}, "
            "which has no fit/transform methods"
        )
    return transformer


def final_estimator(pipeline: Pipeline) -> Any:
    step = pipeline.steps[-1][1]
    return final_estimator(step) if isinstance(step, Pipeline) else step


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


def build_search(config: TrainingJob, pipeline: Pipeline, prepared: PreparedData) -> Any:
    """A scikit-learn search over the pipeline; its trials are logged as nested runs."""
    spec = config.search
    assert spec is not None
    space = {pipeline_param_name(name): value for name, value in spec.space.items()}
    _check_param_names(pipeline.get_params(deep=True), space, "pipeline (search.space)")
    cv = cv_splitter(prepared.task, spec.cv, config.split)
    scoring = spec.scoring or default_scoring(prepared.task, pipeline)
    common = {
        "scoring": scoring,
        "cv": cv,
        "n_jobs": spec.n_jobs,
        "refit": True,
        # A failing candidate must fail the task, not become a silent NaN score.
        "error_score": "raise",
    }
    if spec.method == "grid":
        for name, values in space.items():
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(
                    f"search.space[{name!r}] must be a non-empty list for a grid search"
                )
        return GridSearchCV(pipeline, {k: list(v) for k, v in space.items()}, **common)
    distributions = {name: to_distribution(name, value) for name, value in space.items()}
    return RandomizedSearchCV(
        pipeline, distributions, n_iter=spec.n_iter, random_state=config.split.seed, **common
    )


def pipeline_param_name(name: str) -> str:
    """Estimator parameter names are addressed inside the ``model`` step of the pipeline."""
    if name.startswith(("model__", "preprocess__")):
        return name
    return f"model__{name}"


def to_distribution(name: str, value: Any) -> Any:
    """A list, a scipy distribution, or a ``{"distribution", "low", "high"}`` dict."""
    from scipy import stats

    if isinstance(value, (list, tuple)) and value:
        return list(value)
    if callable(getattr(value, "rvs", None)):
        return value
    if isinstance(value, Mapping) and {"distribution", "low", "high"} <= set(value):
        kind, low, high = value["distribution"], value["low"], value["high"]
        if not all(isinstance(b, (int, float)) for b in (low, high)) or low >= high:
            raise ConfigError(
                f"search.space[{name!r}]: low must be a number below high, got {value}"
            )
        if kind == "uniform":
            return stats.uniform(low, high - low)
        if kind == "loguniform":
            if low <= 0:
                raise ConfigError(f"search.space[{name!r}]: loguniform needs low > 0, got {low}")
            return stats.loguniform(low, high)
        if kind == "randint":
            return stats.randint(int(low), int(high) + 1)
        raise ConfigError(
            f"search.space[{name!r}]: distribution must be uniform, loguniform or randint, got {kind!r}"
        )
    raise ConfigError(
        f"search.space[{name!r}] must be a non-empty list, a scipy distribution or "
        f'{{"distribution": ..., "low": ..., "high": ...}}, got {value!r}'
    )


def cv_splitter(task: str, folds: int, policy: SplitPolicy) -> Any:
    """Time-ordered folds for an out-of-time split, stratified folds for classification."""
    if policy.time_column is not None:
        return TimeSeriesSplit(n_splits=folds)
    if task == "classification" and policy.stratify:
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=policy.seed)
    return KFold(n_splits=folds, shuffle=True, random_state=policy.seed)


def default_scoring(task: str, pipeline: Pipeline) -> str:
    if task == "regression":
        return "neg_root_mean_squared_error"
    has_proba = hasattr(final_estimator(pipeline), "predict_proba")
    return "neg_log_loss" if has_proba else "accuracy"


# -- MLflow logging -------------------------------------------------------------------------
def lineage_tags(config: TrainingJob, prepared: PreparedData, artifacts_uri: str) -> dict[str, str]:
    """Tags known before training starts (hashes of written files are added later)."""
    features_json = json.dumps(prepared.features)
    tags = {
        TAG_STAGE: STAGE_TRAINING,
        TAG_DATA_URI: config.train_uri,
        TAG_DATA_SHA256: prepared.data_sha256,
        TAG_DATA_ROWS: str(prepared.data_rows),
        TAG_HOLDOUT_URI: join_uri(artifacts_uri, "holdout.parquet"),
        TAG_HOLDOUT_ROWS: str(len(prepared.X_holdout)),
        TAG_REFERENCE_URI: join_uri(artifacts_uri, "reference.parquet"),
        TAG_TARGET: config.target,
        TAG_TASK: prepared.task,
        TAG_ESTIMATOR: describe_callable(config.estimator or DEFAULT_ESTIMATORS[prepared.task]),
        TAG_SPLIT: json.dumps(asdict(config.split), sort_keys=True),
    }
    if len(features_json) <= MAX_TAG_VAL_LENGTH:
        tags[TAG_FEATURES] = features_json
    else:
        # Too long for a tag: the holdout file's columns are the features plus the target.
        tags[TAG_FEATURES_URI] = join_uri(artifacts_uri, "holdout.parquet")
    if config.model_name:
        tags[TAG_MODEL_NAME] = config.model_name
    if prepared.time_cutoff is not None:
        tags[TAG_SPLIT_TIME_CUTOFF] = prepared.time_cutoff
    return tags


def run_params(config: TrainingJob, prepared: PreparedData, fitted: Pipeline) -> dict[str, Any]:
    """The estimator's effective params plus the training configuration's key choices."""
    params: dict[str, Any] = {
        f"model.{k}": v
        for k, v in final_estimator(fitted).get_params(deep=False).items()
        if not _is_estimator(v)
    }
    params.update(
        {
            "estimator": describe_callable(config.estimator or DEFAULT_ESTIMATORS[prepared.task]),
            "preprocessing": describe_callable(config.preprocessing),
            "task": prepared.task,
            "target": config.target,
            "n_features": len(prepared.features),
            "train_rows": len(prepared.X_train),
            "holdout_rows": len(prepared.X_holdout),
            "split.holdout_fraction": config.split.holdout_fraction,
            "split.seed": config.split.seed,
            "split.stratify": config.split.stratify,
            "split.time_column": config.split.time_column,
        }
    )
    if config.search is not None:
        params.update(
            {
                "search.method": config.search.method,
                "search.n_iter": config.search.n_iter,
                "search.cv": config.search.cv,
                "search.scoring": config.search.scoring or default_scoring(prepared.task, fitted),
            }
        )
    return params


def log_search_trials(
    client: MlflowClient, experiment_id: str, parent_run_id: str, search: Any
) -> None:
    """One nested, finished run per candidate: params, CV scores and fit time, batched."""
    results = search.cv_results_
    now = _now_ms()
    for index, candidate in enumerate(results["params"]):
        trial = client.create_run(
            experiment_id,
            tags={
                MLFLOW_PARENT_RUN_ID: parent_run_id,
                TAG_STAGE: STAGE_TRIAL,
                TAG_TRIAL_INDEX: str(index),
            },
            run_name=f"trial-{index}",
        )
        metrics = {
            "cv_mean_score": results["mean_test_score"][index],
            "cv_std_score": results["std_test_score"][index],
            "cv_rank": results["rank_test_score"][index],
            "cv_mean_fit_seconds": results["mean_fit_time"][index],
        }
        client.log_batch(
            trial.info.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=_as_params({k.removeprefix("model__"): v for k, v in candidate.items()}),
        )
        client.set_terminated(trial.info.run_id, RunStatus.to_string(RunStatus.FINISHED))


def log_fitted_model(
    fitted: Pipeline, prepared: PreparedData, config: TrainingJob, run_id: str
) -> Any:
    """Log the pipeline with signature, input example and pinned requirements."""
    from mlflow.models import infer_signature

    example = prepared.X_train.head(config.input_example_rows)
    # Integer columns are declared as doubles: a served request with a missing value in
    # such a column arrives as float and would otherwise fail schema enforcement, while the
    # pipeline imputes it fine.
    integer_columns = [c for c in example.columns if pd.api.types.is_integer_dtype(example[c])]
    schema_example = example.astype({c: "float64" for c in integer_columns})
    signature = infer_signature(schema_example, fitted.predict(example))
    with _quiet_pickle_warning(config.serialization_format):
        return mlflow.sklearn.log_model(
            fitted,
            name=MODEL_ARTIFACT_NAME,
            run_id=run_id,
            signature=signature,
            input_example=example,
            pip_requirements=pinned_requirements(fitted, config.serialization_format),
            serialization_format=config.serialization_format,
        )


@contextlib.contextmanager
def _quiet_pickle_warning(serialization_format: str) -> Iterator[None]:
    """MLflow warns on every cloudpickle save; the choice is deliberate and documented
    (docs/operators/training.md), so the warning is dropped for that one call."""
    logger = logging.getLogger("mlflow.sklearn")
    previous = logger.level
    if serialization_format != "skops":
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def pinned_requirements(model: Any, serialization_format: str) -> list[str]:
    """``dist==version`` for MLflow, the sklearn stack, the serializer and the estimator's
    own library (``xgboost``...), from the installed versions: no inference subprocess."""
    distributions = list(_BASE_REQUIREMENTS)
    distributions.append("skops" if serialization_format == "skops" else "cloudpickle")
    for module in sorted(_model_modules(model)):
        dist = _distribution_of(module)
        if dist:
            distributions.append(dist)
    pinned = []
    for dist in dict.fromkeys(distributions):
        try:
            pinned.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            log.warning("Requirement %s is not installed; it is left out of the model's pins", dist)
    return pinned


def _model_modules(model: Any) -> set[str]:
    """Top-level modules of every object in a (nested) pipeline."""
    found = {type(model).__module__.split(".")[0]}
    if hasattr(model, "get_params"):
        for value in model.get_params(deep=True).values():
            if hasattr(value, "fit"):
                found.add(type(value).__module__.split(".")[0])
    return found


def _distribution_of(module: str) -> str | None:
    if module in _MODULE_TO_DISTRIBUTION:
        return _MODULE_TO_DISTRIBUTION[module]
    if module in ("builtins", "__main__"):
        return None
    candidates = importlib.metadata.packages_distributions().get(module) or []
    return candidates[0] if candidates else None


def _as_params(values: Mapping[str, Any]) -> list[Param]:
    return [
        Param(str(k), _truncate(_param_text(v), MAX_PARAM_VAL_LENGTH)) for k, v in values.items()
    ]


def _as_tags(values: Mapping[str, str]) -> list[RunTag]:
    return [RunTag(k, _truncate(str(v), MAX_TAG_VAL_LENGTH)) for k, v in values.items()]


def _param_text(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(json_safe(value), sort_keys=True)
    return str(value)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _now_ms() -> int:
    return int(time.time() * 1000)


def _run_name(config: TrainingJob, context: RunContext) -> str:
    base = config.model_name or config.target
    return f"train-{base}-{context.task_id}"[:250]
