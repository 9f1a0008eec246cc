"""What a training run records in MLflow, besides its status.

- :func:`lineage_tags`: the tags known before the fit (data URI and hash, holdout and
  reference URIs, target, task, estimator, split); the tag names are
  :mod:`airflow_mlops.core.lineage`'s ``TAG_*`` constants.
- :func:`data_tags`: what was read (manifest hash, file count, window, row-cap fraction)
  and the hash split's settings (``mlops.split.*``), the contract evaluation reads.
- :func:`run_params`: the estimator's effective params and the configuration's key choices.
- :func:`log_search_trials`: one nested, finished run per search candidate.
- :func:`log_fitted_model`: the fitted pipeline with signature, input example and
  :func:`pinned_requirements` (so MLflow never infers them in a subprocess).
- :func:`log_params_and_tags` / :func:`log_model_metrics`: one batched request each, values
  cut to MLflow's limits.

``STAGE_*`` are the values of ``mlops.stage`` that tell a training run from a search trial.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH
from sklearn.pipeline import Pipeline

from airflow_mlops.core.estimators import default_scoring, final_estimator, is_estimator
from airflow_mlops.core.jsonsafe import json_safe
from airflow_mlops.core.lineage import (
    MODEL_ARTIFACT_NAME,
    TAG_CLASS_BALANCE,
    TAG_DATA_FILES,
    TAG_DATA_MANIFEST_HASH,
    TAG_DATA_ROWS,
    TAG_DATA_SAMPLE_FRACTION,
    TAG_DATA_SHA256,
    TAG_DATA_URI,
    TAG_DATA_WINDOW,
    TAG_ESTIMATOR,
    TAG_FEATURES,
    TAG_FEATURES_URI,
    TAG_HOLDOUT_ROWS,
    TAG_HOLDOUT_URI,
    TAG_MODEL_NAME,
    TAG_REFERENCE_URI,
    TAG_SPLIT,
    TAG_SPLIT_TIME_CUTOFF,
    TAG_STAGE,
    TAG_TARGET,
    TAG_TASK,
    TAG_TRIAL_INDEX,
)
from airflow_mlops.core.storage import join_uri
from airflow_mlops.core.training_config import DEFAULT_ESTIMATORS, describe_callable
from airflow_mlops.core.training_data import PreparedData
from airflow_mlops.core.training_job import TrainingJob

if TYPE_CHECKING:
    from airflow_mlops.core.manifest import Manifest

__all__ = [
    "MLFLOW_PARENT_RUN_ID",
    "STAGE_TRAINING",
    "STAGE_TRIAL",
    "class_balance",
    "data_tags",
    "lineage_tags",
    "log_fitted_model",
    "log_model_metrics",
    "log_params_and_tags",
    "log_search_trials",
    "pinned_requirements",
    "run_params",
]

log = logging.getLogger(__name__)

MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"

STAGE_TRAINING = "training"
STAGE_TRIAL = "training.trial"
# Libraries the loaded model always needs; the estimator's own package is added on top.
_BASE_REQUIREMENTS = ("mlflow", "scikit-learn", "numpy", "pandas", "scipy")
_MODULE_TO_DISTRIBUTION = {"sklearn": "scikit-learn", "xgboost": "xgboost", "lightgbm": "lightgbm"}


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
        # Too long for a tag: the reference file's columns are exactly the features, in
        # order (the holdout also carries the target, the source file and hashed columns).
        tags[TAG_FEATURES_URI] = join_uri(artifacts_uri, "reference.parquet")
    if config.model_name:
        tags[TAG_MODEL_NAME] = config.model_name
    if prepared.time_cutoff is not None:
        tags[TAG_SPLIT_TIME_CUTOFF] = prepared.time_cutoff
    if prepared.task == "classification":
        balance = class_balance(prepared)
        if len(balance) <= MAX_TAG_VAL_LENGTH:
            tags[TAG_CLASS_BALANCE] = balance
    return tags


def class_balance(prepared: PreparedData) -> str:
    """JSON ``{label: {"train": rows, "holdout": rows}}`` (model cards show it)."""
    train = prepared.y_train.value_counts()
    holdout = prepared.y_holdout.value_counts()
    labels = sorted(set(train.index) | set(holdout.index), key=str)
    return json.dumps(
        {str(k): {"train": int(train.get(k, 0)), "holdout": int(holdout.get(k, 0))} for k in labels}
    )


def data_tags(config: TrainingJob, prepared: PreparedData, manifest: Manifest) -> dict[str, str]:
    """The files read (``mlops.data.*``) and the hash split's settings (``mlops.split.*``;
    none for the time split)."""
    tags = {
        TAG_DATA_MANIFEST_HASH: manifest.content_hash,
        TAG_DATA_FILES: str(len(manifest.files)),
        TAG_DATA_WINDOW: config.window.describe(),
    }
    if prepared.sample_fraction is not None:
        tags[TAG_DATA_SAMPLE_FRACTION] = repr(prepared.sample_fraction)
    if prepared.split is not None:
        tags.update(prepared.split.to_tags())
    return tags


def run_params(config: TrainingJob, prepared: PreparedData, fitted: Pipeline) -> dict[str, Any]:
    """The estimator's effective params plus the training configuration's key choices."""
    params: dict[str, Any] = {
        f"model.{k}": v
        for k, v in final_estimator(fitted).get_params(deep=False).items()
        if not is_estimator(v)
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
            "split.key": json.dumps(config.key) if config.key else None,
            "data.window": config.window.describe(),
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
        version = _installed_version(dist)
        if version is None:
            log.warning("Requirement %s is not installed; it is left out of the model's pins", dist)
        else:
            pinned.append(f"{dist}=={version}")
    return pinned


@functools.cache
def _installed_version(dist: str) -> str | None:
    """The installed version of ``dist`` (read once per process: packages do not change
    under a running task), or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


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


def log_params_and_tags(
    client: MlflowClient, run_id: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> None:
    """``params`` (containers as JSON text) and ``tags`` in one request, cut to MLflow's limits."""
    client.log_batch(run_id, params=_as_params(params), tags=_as_tags(tags))


def log_model_metrics(
    client: MlflowClient,
    run_id: str,
    model_id: str,
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
) -> None:
    """``metrics``, attached to the logged model ``model_id``, and ``tags`` in one request."""
    now = _now_ms()
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0, model_id=model_id) for k, v in metrics.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
