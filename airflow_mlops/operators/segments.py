"""SegmentBatchOperator: train, gate and promote one chunk of segment models in one task."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.policy import DEFAULT_MIN_ROWS
from airflow_mlops.links.mlflow import mlflow_links
from airflow_mlops.operators.base import (
    MlopsBaseOperator,
    allowed_estimator_modules,
    as_data_window,
    check_data_uri,
    configured_artifacts_root,
    mask_error,
    rendered_window,
    window_param,
)
from airflow_mlops.operators.registry import (
    _emit_champion_moved,
    _lock_options,
    _serving_options,
    _with_champion_alias_outlet,
)
from airflow_mlops.operators.validation import DataValidationOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_mlops.core.training_config import TrainingConfig

__all__ = ["SegmentBatchOperator"]


class SegmentBatchOperator(MlopsBaseOperator):
    """Run the CT chain for chunk ``chunk`` of a segment manifest, one segment after another.

    Each segment goes through detect changes → validate (with a ``suite``) → train →
    evaluate → register → promote (serving check included) with the same core functions as
    the per-segment tasks, with its own idempotency key; see
    :mod:`airflow_mlops.core.segment_batch`. A segment's failure is recorded and the chunk
    goes on; the per-segment results go to ``<artifacts>/.../segment_results.json`` and the
    task fails at the end, naming the failed segments, if any failed. XCom:
    ``{chunk, results_uri, segments, outcomes, failed, failed_segments, seconds}``.

    ``promotion.approval: manual`` is not available here (one task, many models). Models
    whose ``@champion`` moved get a ``champion_asset`` event each, as from the promote task.

    :param manifest_uri: the segment manifest ``split_segments`` wrote (templated).
    :param chunk: which chunk of the manifest this task runs (mapped).
    :param training: the pipeline's ``training:`` section (not templated).
    :param suite: the validation suite (path, dict or list); None skips validation.
    :param workers: segments run at once (threads; ``segments.workers``).
    """

    template_fields: Sequence[str] = (
        *MlopsBaseOperator.template_fields,
        "manifest_uri",
        "chunk",
        "target",
        "key",
        "features",
        "exclude",
        "window",
        "experiment_name",
        "policy",
        "slices",
        "suite",
        "on_failure",
        "config_hash",
        "serving_check",
        "serving_sample_rows",
        "serving_timeout_seconds",
        "extra_tags",
    )
    operator_extra_links = mlflow_links()
    ui_color = "#e0f0d8"
    # Borrowed so a suite is found exactly as the validate task finds it.
    load_suite = DataValidationOperator.load_suite
    _resolve_suite_path = DataValidationOperator._resolve_suite_path

    def __init__(
        self,
        *,
        manifest_uri: Any,
        chunk: int | str,
        target: str,
        experiment_name: str,
        training: TrainingConfig | Mapping[str, Any] | None = None,
        key: Sequence[str] | None = None,
        features: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        window: Any = None,
        policy: Mapping[str, Any] | None = None,
        slices: Mapping[str, Sequence[Any]] | None = None,
        evaluation_on: str = "holdout",
        min_rows: int = DEFAULT_MIN_ROWS,
        suite: Any = None,
        on_failure: str = "fail",
        config_hash: str = "",
        new_data_asset_uri: str | None = None,
        serving_check: bool = True,
        serving_sample_rows: int = 100,
        serving_timeout_seconds: float = 600.0,
        lock_ttl_seconds: float = 900.0,
        lock_wait_seconds: float = 1800.0,
        extra_tags: Mapping[str, str] | None = None,
        workers: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**_with_champion_alias_outlet(kwargs))
        self.manifest_uri = manifest_uri
        self.chunk = chunk
        self.target = target
        self.experiment_name = experiment_name
        self.training = training
        self.key = list(key) if key else None
        self.features = list(features) if features else None
        self.exclude = list(exclude or [])
        self.window = window_param(window)
        self.policy = policy
        self.slices = slices
        self.evaluation_on = evaluation_on
        self.min_rows = min_rows
        self.suite = suite
        self.on_failure = on_failure
        self.config_hash = config_hash
        self.new_data_asset_uri = new_data_asset_uri
        self.serving_check = serving_check
        self.serving_sample_rows = serving_sample_rows
        self.serving_timeout_seconds = serving_timeout_seconds
        self.lock_ttl_seconds = lock_ttl_seconds
        self.lock_wait_seconds = lock_wait_seconds
        self.extra_tags = dict(extra_tags or {})
        self.workers = workers
        self._killed = False

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_mlops.core import segment_batch as sb
        from airflow_mlops.core.changes import new_data_trigger, trigger_tag
        from airflow_mlops.core.lineage import TAG_TRIGGER, detect_git_commit
        from airflow_mlops.core.promotion import PromotionOptions
        from airflow_mlops.core.segments import chunk_of, chunk_xcom, read_manifest
        from airflow_mlops.hooks.signing import model_signing_key, model_trust
        from airflow_mlops.hooks.storage import StorageHook
        from airflow_mlops.operators.changes import _dag_folder, _triggering_events

        specs, batch_size = read_manifest(self.storage, str(self.manifest_uri))
        chunk = int(self.chunk)
        mine = chunk_of(specs, chunk, batch_size)
        for spec in mine:  # the manifest is read from storage: its paths are checked too
            if self.allowed_data_prefixes is not None:
                check_data_uri(
                    spec.train_uri, self.allowed_data_prefixes, "segment train_uri", self.dag_id
                )
        dag_run = context["dag_run"]
        run_type = str(getattr(dag_run.run_type, "value", dag_run.run_type))
        trigger = new_data_trigger(_triggering_events(context), self.new_data_asset_uri)
        window_end = (trigger or {}).get("window_end") or None
        lock = _lock_options(self.lock_ttl_seconds, self.lock_wait_seconds)
        hook = self.mlflow_hook
        storage_hook = StorageHook(aws_conn_id=self.aws_conn_id)
        results_uri = self.default_report_uri(context, "segment_results.json")
        # Same URI on every try: a retry keeps what an earlier try finished (see core).
        earlier = (
            json.loads(self.storage.read_text(results_uri))
            if self.storage.exists(results_uri)
            else []
        )
        with hook.session() as client:
            settings = sb.BatchSettings(
                job=self._job({TAG_TRIGGER: trigger_tag(run_type, trigger)}),
                trust=_once(model_trust),
                promotion=PromotionOptions(serving=_serving_options(self), lock_options=lock),
                policy=self.policy or None,
                slices=self.slices or None,
                evaluation_on=str(self.evaluation_on),
                min_rows=int(self.min_rows),
                suite=self.load_suite(context) if self.suite else None,
                on_failure=str(self.on_failure),
                run_type=run_type,
                config_hash=str(self.config_hash),
                code_version=detect_git_commit(_dag_folder(context)),
                experiment_id=hook.get_or_create_experiment(str(self.experiment_name)),
                signing_key=model_signing_key(),
                source_dir=_dag_folder(context),
                artifacts_prefix=(
                    self.default_report_uri(context, "segments")
                    if configured_artifacts_root()
                    else None
                ),
                report_prefix=self.default_report_uri(context, "validation"),
                lock_options=lock,
                mask=mask_error,
                workers=int(self.workers),
            )
            records = sb.run_segment_batch(
                mine,
                settings,
                self.run_context(context),
                client,
                self.storage,
                storage_hook.get_filesystem,
                window_end=window_end,
                should_stop=lambda: self._killed,
                earlier=earlier,
                on_record=lambda done: self.storage.write_text(results_uri, json.dumps(done)),
            )
        if not records:  # an empty chunk still leaves its (empty) results
            self.storage.write_text(results_uri, "[]")
        for record in records:
            if record["promoted"] and record["steps"].get("promote") == "success":
                _emit_champion_moved(
                    context, record["model_name"], {"version": record["challenger_version"]}
                )
        result = chunk_xcom(chunk, records, results_uri)
        self.log.info("chunk %s: %s; results %s", chunk, result["outcomes"], results_uri)
        if result["failed"]:
            failed = [r for r in records if r["failed"]]
            context["ti"].xcom_push(key="return_value", value=result)  # stays inspectable
            raise sb.SegmentBatchFailed(
                f"{len(failed)} of {len(records)} segment(s) failed: "
                + "; ".join(
                    f"{r['segment']} ({r['outcome']}: {r['reason'][:200]})" for r in failed[:20]
                )
            )
        return result

    def _job(self, tags: Mapping[str, str]) -> Any:
        """The pipeline's training job; each segment replaces ``train_uri``/``model_name``."""
        from airflow_mlops.core.training_config import TrainingConfig
        from airflow_mlops.core.training_job import TrainingJob

        training = self.training
        if isinstance(training, Mapping):
            training = TrainingConfig.from_values(training)
        # Every field as set (``preprocessing: None`` means raw columns, not the default).
        base = (
            {name: getattr(training, name) for name in TrainingConfig.model_fields}
            if training is not None
            else {}
        )
        base.pop("experiment_name", None)
        if not self.experiment_name:
            raise ConfigError(f"{self.task_id}: experiment_name is not set")
        return TrainingJob.from_values(
            {
                **base,
                "train_uri": "segment",  # replaced per segment
                "window": as_data_window(rendered_window(self.window)),
                "key": self.key or None,
                "target": self.target,
                "experiment_name": self.experiment_name,
                "features": self.features,
                "exclude": self.exclude,
                "extra_tags": {**self.extra_tags, **tags},
                "allowed_modules": allowed_estimator_modules(),
            }
        )

    def on_kill(self) -> None:
        """Stop before the next segment (training polls the flag between its stages too)."""
        self._killed = True


def _once(provider: Callable[[], Any]) -> Callable[[], Any]:
    """``provider()`` called on first use only: the signing key is read once per chunk task,
    not once per model load (each load still checks the model against it)."""
    cache: list[Any] = []

    def get() -> Any:
        if not cache:
            cache.append(provider())
        return cache[0]

    return get
