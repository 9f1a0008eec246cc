"""TrainModelOperator: train a candidate model and record it in MLflow, retry-safely."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.training_config import STRATIFY_REFUSED
from airflow_mlops.hooks.signing import model_signing_key
from airflow_mlops.hooks.storage import StorageHook
from airflow_mlops.links.mlflow import mlflow_links, persist_mlflow_links
from airflow_mlops.operators.base import (
    MlopsBaseOperator,
    allowed_estimator_modules,
    configured_artifacts_root,
    rendered_window,
    window_param,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.data_window import DataWindow
    from airflow_mlops.core.training_config import TrainingConfig
    from airflow_mlops.core.training_job import TrainingJob

__all__ = ["TrainModelOperator"]

# The operator arguments that are fields of TrainingConfig (``estimator_params`` is its
# ``params``: ``params`` is Airflow's own on every operator).
_CONFIG_ARGUMENTS = {
    "estimator": "estimator",
    "estimator_params": "params",
    "task": "task",
    "preprocessing": "preprocessing",
    "holdout_fraction": "holdout_fraction",
    "seed": "seed",
    "time_column": "time_column",
    "search": "search",
    "experiment_name": "experiment_name",
}


class TrainModelOperator(MlopsBaseOperator):
    """Fit a scikit-learn / XGBoost model on ``train_uri`` and log it to MLflow.

    The data (parquet or CSV: a file, a folder or prefix of Hive partitions, or a glob;
    local or ``s3://``, read through ``StorageHook.get_filesystem``) is read within
    ``window``, recorded as a manifest of the exact files (artifact ``mlops/manifest.json``,
    tag ``mlops.data.manifest_hash``), checked, split into training and holdout rows by row
    hash (``key``; a row keeps its side in later runs), fitted inside a ``Pipeline``
    (default preprocessing: impute, one-hot for categoricals), scored on the holdout and
    logged with params, metrics, signature, input example, pinned pip requirements and
    lineage tags. The holdout and the drift reference
    are written under ``artifacts_uri`` (default: ``[mlops] artifacts_uri``, else
    ``$AIRFLOW_HOME/mlops_artifacts`` for local data; never next to the data) and their
    hashes are tagged. Dotted estimator paths must name ``sklearn``/``xgboost`` classes or
    come from ``[mlops] allowed_estimator_modules``.
    See ``docs/operators/training.md`` and :mod:`airflow_mlops.core.training`.

    Retries are safe: the run carries the task's idempotency key (which includes
    ``[mlops] deployment``); a retry returns the finished run of an earlier try instead of
    training again, but only if that run trained on the same data (URI and manifest hash)
    and configuration, so a task cleared after its data was fixed, or after a partition
    landed in its window, trains again. A RUNNING
    leftover of a killed try is marked FAILED, a duplicate left by a replayed create-run
    request KILLED. ``on_kill`` (SIGTERM, timeout) marks the active run FAILED.

    With a signing connection (``[mlops] signing_conn_id``, default ``mlops_signing``) the
    logged model is signed (tag ``mlops.signature``), so later tasks can tell it from a
    model someone else put in the registry (see ``docs/security.md``).

    ``stratify`` is refused with a :class:`ConfigError`: the split is hash-based (a row's side
    depends on its key and the seed only), so it cannot be stratified; instead each side is
    checked to hold at least two classes.

    Returns (XCom) ``{run_id, experiment_id, model_uri, holdout_uri, holdout_sha256,
    reference_uri, task, metrics, best_params, idempotency_key, reused}``.

    :param train_uri: training data: a file, a folder or prefix, or a glob (templated).
    :param window: which partitions (and rows) to read: ``"all"`` (default), or a mapping
        such as ``{"last_partitions": 7}``, ``{"last": "30d"}``, ``{"max_rows": 100000}``
        (:class:`~airflow_mlops.core.data_window.DataWindow`; templated).
    :param window_end: the newest partition or time the window may include, e.g. the
        partition that landed (templated string); default: the newest there is.
    :param key: columns whose hash puts a row in training or holdout (templated); default:
        the model's feature and target columns.
    :param target: target column (templated).
    :param training: a :class:`~airflow_mlops.core.training_config.TrainingConfig` (a
        pipeline file's ``training:`` section) or a mapping of its fields; the arguments
        below that are its fields override it. Not templated itself: its fields are.
    :param experiment_name: MLflow experiment, created when missing (templated); default
        ``training.experiment_name``.
    :param model_name: registered model name this candidate is for; tagged (templated).
    :param features: feature columns (templated); default: all but target/exclude/time column.
    :param exclude: columns never used as features (templated).
    :param holdout_columns: columns kept in the holdout file though not features (the
        sensitive columns a fairness gate measures but the model must not learn from).
    :param estimator: dotted path to an estimator class or factory function
        (``xgboost.XGBClassifier``), or the class/callable itself (templated when a string).
        Default: RandomForestClassifier / RandomForestRegressor for the task.
    :param estimator_params: estimator parameters (templated); named so because ``params``
        is Airflow's own (DAG params) on every operator.
    :param task: ``classification`` or ``regression`` (templated). Default: the estimator's
        own kind (``sklearn.base.is_classifier`` / ``is_regressor``), else inferred from the
        target (non-numeric or few distinct whole values: classification), as logged.
    :param preprocessing: ``"default"``, ``None`` (raw columns) or a dotted path / callable
        ``f(X) -> transformer`` (templated when a string).
    :param holdout_fraction: share of rows held out (templated), default 0.25.
    :param seed: seed of the hash split, CV folds and random search (templated), default 42.
    :param time_column: hold out the latest rows by this column instead (templated).
    :param search: ``{"method": "random"|"grid", "space": {...}, "n_iter", "cv", "scoring",
        "n_jobs"}`` (templated); each trial is logged as a nested run.
    :param artifacts_uri: where the holdout/reference files go (templated); default
        ``<[mlops] artifacts_uri>/<dag>/<run>/<task>/training/`` when that option is set,
        else ``$AIRFLOW_HOME/mlops_artifacts/training/<idempotency key>/`` (local data only).
    :param reference_max_rows: cap of the drift reference sample (templated).
    :param serialization_format: ``cloudpickle`` (default), ``skops`` or ``pickle``.
    :param extra_tags: more tags for the training run (e.g. the pipeline's config hash);
        they cannot override the lineage tags the operator writes.
    """

    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "train_uri",
        "window",
        "window_end",
        "key",
        "target",
        "experiment_name",
        "model_name",
        "features",
        "exclude",
        "holdout_columns",
        "estimator",
        "estimator_params",
        "task",
        "preprocessing",
        "holdout_fraction",
        "seed",
        "time_column",
        "search",
        "artifacts_uri",
        "reference_max_rows",
        "serialization_format",
        "extra_tags",
    )
    operator_extra_links = mlflow_links()
    ui_color = "#dff5d5"

    def __init__(
        self,
        *,
        train_uri: str,
        target: str,
        window: str | Mapping[str, Any] | DataWindow | None = None,
        window_end: str | None = None,
        key: Sequence[str] | None = None,
        experiment_name: str | None = None,
        training: TrainingConfig | Mapping[str, Any] | None = None,
        model_name: str | None = None,
        features: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        holdout_columns: Sequence[str] | None = None,
        estimator: str | Callable[..., Any] | None = None,
        estimator_params: Mapping[str, Any] | None = None,
        task: str | None = None,
        preprocessing: str | Callable[..., Any] | None = None,
        holdout_fraction: float | str | None = None,
        seed: int | str | None = None,
        time_column: str | None = None,
        search: Mapping[str, Any] | None = None,
        artifacts_uri: str | None = None,
        reference_max_rows: int | str = 100_000,
        serialization_format: str = "cloudpickle",
        extra_tags: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if "stratify" in kwargs:
            raise ConfigError(f"{kwargs.get('task_id', 'train')}: {STRATIFY_REFUSED}")
        super().__init__(**kwargs)
        self.train_uri = train_uri
        self.window = window_param(window)
        self.window_end = window_end
        self.key = list(key) if key is not None else None
        self.target = target
        self.model_name = model_name
        self.features = list(features) if features is not None else None
        self.exclude = list(exclude) if exclude is not None else []
        self.holdout_columns = list(holdout_columns or [])
        # One config: the explicit arguments over ``training``'s fields, each kept in its
        # own (templated) attribute; unset ones keep TrainingConfig's defaults.
        explicit = {
            "estimator": estimator,
            "estimator_params": estimator_params,
            "task": task,
            "preprocessing": preprocessing,
            "holdout_fraction": holdout_fraction,
            "seed": seed,
            "time_column": time_column,
            "search": search,
            "experiment_name": experiment_name,
        }
        base = _training_fields(training)
        values = {
            argument: value if value is not None else base.get(field)
            for (argument, value), field in zip(
                explicit.items(), _CONFIG_ARGUMENTS.values(), strict=True
            )
        }
        self.experiment_name = values["experiment_name"]
        # Airflow 3 calls a callable found in a template field as a render function, so a
        # class or factory is kept aside and only dotted paths (strings) are templated.
        self.estimator, self._estimator_object = _split_callable(values["estimator"])
        params = values["estimator_params"]
        self.estimator_params = dict(params) if params is not None else {}
        self.task = values["task"]
        self.preprocessing, self._preprocessing_object = _split_callable(values["preprocessing"])
        self.holdout_fraction = values["holdout_fraction"]
        self.seed = values["seed"]
        self.time_column = values["time_column"]
        self.search = dict(values["search"]) if values["search"] is not None else None
        self.artifacts_uri = artifacts_uri
        self.reference_max_rows = reference_max_rows
        self.serialization_format = serialization_format
        self.extra_tags = dict(extra_tags) if extra_tags is not None else {}
        self._active_run_id: str | None = None
        self._killed = False
        self._openlineage_result: dict[str, Any] | None = None

    def training_config(self) -> TrainingJob:
        """The one training config, from the rendered fields, with the task's data and run
        labels (:class:`~airflow_mlops.core.training_job.TrainingJob`); errors name the field."""
        from airflow_mlops.core.training_job import TrainingJob

        if not self.experiment_name:
            raise ConfigError(
                f"{self.task_id}: experiment_name is not set (argument or training.experiment_name)"
            )
        settings = {
            "estimator": self._estimator_object or self.estimator or None,
            "params": self.estimator_params,
            "task": self.task or None,
            "preprocessing": self._preprocessing_object or self.preprocessing,
            "holdout_fraction": self.holdout_fraction,
            "seed": self.seed,
            "time_column": self.time_column or None,
            "search": self.search,
        }
        return TrainingJob.from_values(
            {
                # Unset (None) settings take TrainingConfig's defaults.
                **{k: v for k, v in settings.items() if v is not None},
                "train_uri": self.train_uri,
                "window": rendered_window(self.window),
                "window_end": self.window_end or None,
                "key": self.key or None,
                "target": self.target,
                "experiment_name": self.experiment_name,
                "model_name": self.model_name or None,
                "features": self.features,
                "exclude": self.exclude,
                "holdout_columns": self.holdout_columns,
                "artifacts_uri": self.artifacts_uri or None,
                "reference_max_rows": self.reference_max_rows,
                "serialization_format": self.serialization_format,
                "extra_tags": self.extra_tags,
                "allowed_modules": allowed_estimator_modules(),
            }
        )

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core.training import train_model

        config = self.training_config()
        run = self.run_context(context)
        if config.artifacts_uri is None and configured_artifacts_root():
            # A configured root (often shared S3) beats "next to the data": the data's folder
            # may be read-only, and other workers must read the holdout back.
            config = config.model_copy(
                update={"artifacts_uri": self.default_report_uri(context, "training")}
            )
        self._killed = False
        hook = self.mlflow_hook
        signing_key = model_signing_key()
        filesystem = StorageHook(aws_conn_id=self.aws_conn_id).get_filesystem(config.train_uri)
        with hook.session() as client:
            experiment_id = hook.get_or_create_experiment(config.experiment_name)
            result = train_model(
                config,
                run,
                self.storage,
                client,
                experiment_id=experiment_id,
                source_dir=_dag_folder(context),
                on_run_started=self._remember_run,
                should_stop=lambda: self._killed,
                signing_key=signing_key,
                filesystem=filesystem,
            )
        self._active_run_id = None
        self.log.info(
            "%s run %s: model %s, holdout metrics %s",
            "Reused finished" if result.reused else "Trained",
            result.run_id,
            result.model_uri,
            result.metrics,
        )
        persist_mlflow_links(
            context,
            tracking_uri=hook.tracking_uri,
            experiment_id=result.experiment_id,
            run_id=result.run_id,
        )
        self._openlineage_result = result.to_dict()
        return self._openlineage_result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (called by the provider's listener): the window read, with the
        manifest the MLflow run recorded, -> the logged model, holdout and reference."""
        from airflow_mlops.openlineage import recorded_training_data, training_lineage

        result = getattr(self, "_openlineage_result", None)
        if not result:  # failed: the data it was to read, by URI
            return training_lineage(str(self.train_uri), None, "")
        try:
            tags, manifest = recorded_training_data(self.mlflow_hook, result["run_id"])
        except Exception as err:  # lineage is a report: still name the data, say what failed
            self.log.warning(
                "OpenLineage: no manifest from MLflow run %s: %s", result["run_id"], err
            )
            tags, manifest = {}, None
        return training_lineage(
            str(self.train_uri), result, self.mlflow_hook.tracking_uri, tags, manifest
        )

    def _remember_run(self, run_id: str) -> None:
        self._active_run_id = run_id
        self.log.info("Started MLflow run %s", run_id)

    def on_kill(self) -> None:
        """Mark the active run FAILED; training stops at its next checkpoint."""
        self._killed = True
        run_id = self._active_run_id
        if run_id is None:
            return
        from airflow_mlops.core.training import mark_run_failed

        try:
            with self.mlflow_hook.session() as client:
                mark_run_failed(client, run_id, "task killed (on_kill: SIGTERM or timeout)")
        except Exception:
            # on_kill runs inside a signal handler: raising here would replace the kill's
            # own exception. A run left RUNNING is failed by the next try (see core).
            self.log.exception("Could not mark MLflow run %s FAILED while being killed", run_id)
            return
        self.log.warning("Task killed: MLflow run %s marked FAILED.", run_id)


def _split_callable(value: Any) -> tuple[Any, Any]:
    """(templatable value, callable kept out of templating)."""
    if value is not None and not isinstance(value, str) and callable(value):
        return None, value
    return value, None


def _training_fields(training: Any) -> dict[str, Any]:
    """The fields of a TrainingConfig, or of a mapping validated as one (unknown keys are
    refused), kept as given: classes stay classes."""
    from airflow_mlops.core.training_config import TrainingConfig

    if training is None:
        return {}
    if isinstance(training, Mapping):
        training = TrainingConfig.from_values(training)
    if not isinstance(training, TrainingConfig):
        raise ConfigError(
            f"training must be a TrainingConfig or a mapping, got {type(training).__name__}"
        )
    return {name: getattr(training, name) for name in TrainingConfig.model_fields}


def _dag_folder(context: Context) -> str | None:
    """Folder of the DAG file, where the git commit of the training code is looked up."""
    dag = context.get("dag")
    fileloc = getattr(dag, "fileloc", None)
    return os.path.dirname(fileloc) if fileloc else None
