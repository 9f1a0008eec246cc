"""Train a candidate model and record it in MLflow with everything needed to trust it.

One call, :func:`train_model`, goes from a dataset URI (a file, a folder or prefix of
Hive partitions, or a glob; read through the fsspec filesystem the caller passes, within
the job's :class:`~airflow_mlops.core.data_window.DataWindow`) to a finished MLflow run
that holds:

- the manifest of the exact files read (artifact ``mlops/manifest.json``) and its content
  hash as ``mlops.data.sha256`` / ``mlops.data.manifest_hash``, the file count and the
  window; the hash split's settings (``mlops.split.*``), so the rows a model trained on can
  be worked out later;

- params and holdout metrics, logged in batches (``MlflowClient.log_batch``), never one
  request per value;
- the fitted scikit-learn ``Pipeline`` (preprocessing + estimator; XGBoost estimators too)
  logged with the sklearn flavour, a signature, an input example and explicit pinned pip
  requirements, so MLflow never spends seconds inferring them in a subprocess;
- lineage tags (:mod:`airflow_mlops.core.lineage`'s ``TAG_*`` constants, plus
  :meth:`RunContext.as_tags`): which data, with which hash, which rows were held out
  (written to storage, hashed) so that evaluation scores the champion on exactly the same
  rows, and which reference data drift monitoring compares against.

Retry safety: every run carries the task's idempotency key. Before training we look for a
run with the same key: a FINISHED one that trained on the same data (sha256) and
configuration is returned as is (no retraining, no second run); one trained on other
inputs is left alone and a new run trains; a RUNNING one is the leftover of a killed try
and is marked FAILED, and after our run is created any other RUNNING run of the key (a
replayed create request) is marked KILLED. All inputs are validated before any run starts,
and any error inside the run marks it FAILED before re-raising, so no run is ever left
RUNNING by a failure we can observe.

This module is the workflow and its retry safety; the stages live in their own modules:
the job's settings in :mod:`~airflow_mlops.core.training_job`, data checks and the split in
:mod:`~airflow_mlops.core.training_data`, the estimator, preprocessing and search in
:mod:`~airflow_mlops.core.estimators`, and what is written to MLflow in
:mod:`~airflow_mlops.core.training_logging`.

No Airflow import here: the orchestrator is described by :class:`RunContext`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from mlflow.entities import RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH
from sklearn.pipeline import Pipeline

from airflow_mlops.core.data_window import select_window, window_row_filter
from airflow_mlops.core.datasets import SOURCE_FILE_COLUMN, DataFile, read_files, resolve_files
from airflow_mlops.core.errors import ConfigError, DataError, MlopsError
from airflow_mlops.core.estimators import build_pipeline, build_search, pipeline_param_name
from airflow_mlops.core.jsonsafe import json_safe
from airflow_mlops.core.lineage import (
    HOLDOUT_METRIC_PREFIX,
    MANIFEST_ARTIFACT_PATH,
    TAG_CONFIG_HASH,
    TAG_DATA_SHA256,
    TAG_DATA_URI,
    TAG_ERROR,
    TAG_GIT_COMMIT,
    TAG_HOLDOUT_SHA256,
    TAG_HOLDOUT_URI,
    TAG_IDEMPOTENCY_KEY,
    TAG_MODEL_URI,
    TAG_PIPELINE_CONFIG_HASH,
    TAG_REFERENCE_SHA256,
    TAG_REFERENCE_URI,
    TAG_SEARCH_BEST_PARAMS,
    TAG_STAGE,
    TAG_TASK,
    RunContext,
    config_hash,
    detect_git_commit,
)
from airflow_mlops.core.manifest import Manifest, build_manifest
from airflow_mlops.core.metrics import compute_metrics, predict_for_metrics
from airflow_mlops.core.mlflow_client import get_or_create_experiment
from airflow_mlops.core.storage import Storage, join_uri
from airflow_mlops.core.training_data import (
    PreparedData,
    check_estimator_accepts_target,
    holdout_frame,
    prepare_data,
    reference_frame,
)
from airflow_mlops.core.training_job import TrainingJob
from airflow_mlops.core.training_logging import (
    MLFLOW_PARENT_RUN_ID,
    STAGE_TRAINING,
    data_tags,
    lineage_tags,
    log_fitted_model,
    log_model_metrics,
    log_params_and_tags,
    log_search_trials,
    run_params,
)

if TYPE_CHECKING:
    import pandas as pd
    from fsspec import AbstractFileSystem

__all__ = [
    "ARTIFACTS_URI_ENV",
    "TrainingInterrupted",
    "TrainingResult",
    "default_artifacts_uri",
    "fail_leftover_runs",
    "kill_replayed_duplicates",
    "latest_finished",
    "local_filesystem",
    "mark_run_failed",
    "read_training_data",
    "result_from_run",
    "reuse_fingerprint",
    "runs_for_key",
    "sign_trained_model",
    "train_model",
]

log = logging.getLogger(__name__)

#: Environment form of ``[mlops] artifacts_uri`` (core reads no Airflow config).
ARTIFACTS_URI_ENV = "AIRFLOW__MLOPS__ARTIFACTS_URI"


class TrainingInterrupted(MlopsError):
    """The task was killed while training; the run was marked FAILED, not finished."""


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


# -- Workflow -------------------------------------------------------------------------------
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
    filesystem: AbstractFileSystem | None = None,
) -> TrainingResult:
    """Train, evaluate on the holdout and log to MLflow; idempotent per ``context``.

    ``filesystem`` reads ``config.train_uri`` (fsspec; the operator passes
    ``StorageHook.get_filesystem(train_uri)``); default: the local filesystem, for local
    URIs only. ``storage`` writes the holdout and the drift reference.

    The MLflow tracking URI must already point where ``client`` points (the MLflow hook's
    ``session()`` does both): ``mlflow.sklearn.log_model`` uses the process-wide URI.
    ``on_run_started(run_id)`` lets the caller remember the run to fail it when killed;
    ``should_stop()`` is polled between stages and before finishing, so a run whose task
    was killed is never marked FINISHED afterwards. With ``signing_key`` the logged model is
    signed (:mod:`airflow_mlops.core.provenance`) before the run finishes.

    A finished run of the same task instance is reused only if it trained on the same data
    (URI and manifest hash: the same bytes in the same files) with the same configuration:
    a task cleared and re-run after its data was fixed, or after a new partition landed in
    its window, trains again. The files are listed and hashed before that check; rows are
    read only when training.
    """
    experiment_id = experiment_id or get_or_create_experiment(client, config.experiment_name)
    key = context.idempotency_key

    earlier = runs_for_key(client, experiment_id, key)
    # Leftovers of killed tries are dead whatever happens next (even if reading fails).
    fail_leftover_runs(client, experiment_id, earlier)
    # Everything that can be wrong with the inputs is found from here, before any run exists.
    fs = filesystem if filesystem is not None else local_filesystem(config.train_uri)
    files = select_window(resolve_files(fs, config.train_uri), config.window, end=config.window_end)
    frame = None
    if any(r.info.status == "FINISHED" for r in earlier):
        manifest = build_manifest(fs, files)  # decides whether a finished run is reused
    else:
        manifest, frame = _hash_while_reading(fs, config, files)
    expected = reuse_fingerprint(config, manifest.content_hash)
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
    if frame is None:
        frame = read_training_data(fs, config, files)
    prepared = prepare_data(
        config, frame, manifest.content_hash, len(frame), list(files[0].partition)
    )
    del frame  # the split's frames hold what training needs
    pipeline = build_pipeline(config, prepared.task, prepared.X_train, prepared.estimator)
    check_estimator_accepts_target(pipeline, prepared)
    search = build_search(config, pipeline, prepared.task) if config.search else None
    artifacts_uri = config.artifacts_uri or default_artifacts_uri(config.train_uri, key)

    tags = {
        **{str(k): str(v) for k, v in config.extra_tags.items()},
        **context.as_tags(),
        **lineage_tags(config, prepared, artifacts_uri),
        **data_tags(config, prepared, manifest),
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
        client.log_text(run_id, manifest.to_json(), MANIFEST_ARTIFACT_PATH)
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
    from concurrent.futures import ThreadPoolExecutor

    holdout_uri = join_uri(artifacts_uri, "holdout.parquet")
    reference_uri = join_uri(artifacts_uri, "reference.parquet")
    # The holdout and reference files depend on the split only: written while the model fits
    # (parquet encoding and the estimators' inner loops release the GIL).
    with ThreadPoolExecutor(1, thread_name_prefix="split-files") as pool:
        writing = pool.submit(
            _write_split_files, storage, prepared, config, holdout_uri, reference_uri
        )
        fitted, best_params, fit_seconds = _fit(
            config, prepared, pipeline, search, client, experiment_id, run_id, stop
        )
        holdout_sha, reference_sha = writing.result()
    _raise_if_stopped(stop)

    y_pred, y_score = predict_for_metrics(fitted, prepared.X_holdout, prepared.task)
    metrics = compute_metrics(prepared.task, prepared.y_holdout, y_pred, y_score)

    run_tags = {TAG_HOLDOUT_SHA256: holdout_sha, TAG_REFERENCE_SHA256: reference_sha}
    if best_params is not None:
        run_tags[TAG_SEARCH_BEST_PARAMS] = json.dumps(best_params, sort_keys=True)
    # Params go in before the model: log_model copies the run's params onto the model.
    log_params_and_tags(client, run_id, run_params(config, prepared, fitted), run_tags)
    model_info = log_fitted_model(fitted, prepared, config, run_id)
    # Metrics go in after the model, attached to it: log_model would otherwise fetch the
    # history of every metric already on the run (one request per metric).
    metric_values = {f"{HOLDOUT_METRIC_PREFIX}{k}": v for k, v in metrics.items()}
    metric_values["fit_seconds"] = fit_seconds
    if best_params is not None:
        metric_values["cv_best_score"] = float(search.best_score_)
    log_model_metrics(
        client,
        run_id,
        model_info.model_id,
        metric_values,
        {TAG_MODEL_URI: model_info.model_uri},
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


def _fit(
    config: TrainingJob,
    prepared: PreparedData,
    pipeline: Pipeline,
    search: Any,
    client: MlflowClient,
    experiment_id: str,
    run_id: str,
    stop: Callable[[], bool],
) -> tuple[Any, dict[str, Any] | None, float]:
    """(fitted model, best params of the search or ``None``, fit seconds)."""
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
    return fitted, best_params, time.perf_counter() - started


def _write_split_files(
    storage: Storage,
    prepared: PreparedData,
    config: TrainingJob,
    holdout_uri: str,
    reference_uri: str,
) -> tuple[str, str]:
    """Write the holdout and the drift reference; returns their sha256."""
    holdout_sha = storage.write_table(holdout_frame(prepared, config.target), holdout_uri)
    reference = reference_frame(prepared.X_train, config.reference_max_rows, config.split.seed)
    return holdout_sha, storage.write_table(reference, reference_uri)


def _raise_if_stopped(stop: Callable[[], bool]) -> None:
    if stop():
        raise TrainingInterrupted("training was interrupted (task killed); run marked FAILED")


# -- Data -----------------------------------------------------------------------------------
def local_filesystem(uri: str) -> AbstractFileSystem:
    """The local fsspec filesystem, for a local ``uri``; a remote one needs the caller's."""
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(
            f"train_uri {uri} is remote: pass its filesystem (TrainModelOperator takes it "
            "from StorageHook.get_filesystem)"
        )
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem()


def read_training_data(
    fs: AbstractFileSystem, config: TrainingJob, files: Sequence[DataFile]
) -> pd.DataFrame:
    """The rows of ``files`` (the window's), with each row's source file, read once.

    Only the needed columns are read when ``features`` is set. A file whose size or
    ETag/mtime changed since it was listed and hashed (rewritten while training started)
    fails the read, naming it: the manifest must describe the bytes trained on.
    """
    frame = _read_rows(fs, config, files)
    _refuse_changed_files(fs, config, files)
    return frame


def _hash_while_reading(
    fs: AbstractFileSystem, config: TrainingJob, files: Sequence[DataFile]
) -> tuple[Manifest, pd.DataFrame]:
    """The manifest and the rows, the files hashed in a thread while pyarrow reads them
    (hashlib and pyarrow release the GIL): for runs with no finished run to reuse, whose
    rows are read whatever the hash. Files are checked unchanged once both are done."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="manifest") as pool:
        hashing = pool.submit(build_manifest, fs, files)
        frame = _read_rows(fs, config, files)
        manifest = hashing.result()
    _refuse_changed_files(fs, config, files)
    return manifest, frame


def _read_rows(
    fs: AbstractFileSystem, config: TrainingJob, files: Sequence[DataFile]
) -> pd.DataFrame:
    return read_files(
        fs,
        files,
        columns=_columns_to_read(config),
        row_filter=window_row_filter(config.window, end=config.window_end),
        source_column=SOURCE_FILE_COLUMN,
    )


def _refuse_changed_files(
    fs: AbstractFileSystem, config: TrainingJob, files: Sequence[DataFile]
) -> None:
    listed = {f.path: f.stat_key() for f in resolve_files(fs, config.train_uri)}
    changed = [f.path for f in files if listed.get(f.path) != f.stat_key()]
    if changed:
        raise DataError(
            f"data files {changed[:5]} changed or disappeared while they were read: "
            "the manifest would not describe the rows; retry once the writer is done"
        )


def _columns_to_read(config: TrainingJob) -> list[str] | None:
    if config.features is None:
        return None
    wanted = [*config.features, config.target, *(config.key or ())]
    if config.time_column:
        wanted.append(config.time_column)
    return list(dict.fromkeys(wanted))


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
    (URI and manifest content hash), the training configuration and, when given, the
    pipeline's."""
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


def _run_name(config: TrainingJob, context: RunContext) -> str:
    base = config.model_name or config.target
    return f"train-{base}-{context.task_id}"[:250]
