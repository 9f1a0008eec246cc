"""Typed pipeline configuration: one YAML file (or one Python object) per model.

A data scientist edits this, not DAG code. Every section has working defaults; an error
names the file and the dotted path of the bad field.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from airflow_mlops.core.constants import (
    DEFAULT_DRIFT_SHARE,
    DEFAULT_MAX_ROWS_PER_SIDE,
    DEFAULT_TOLERANCE,
)
from airflow_mlops.core.data_window import DataWindow
from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.governance_spec import ExplainSpec, FairnessSpec
from airflow_mlops.core.lineage import config_hash
from airflow_mlops.core.policy import DEFAULT_MIN_ROWS, PromotionPolicy
from airflow_mlops.core.prediction_layout import DEFAULT_MIN_LABEL_COVERAGE
from airflow_mlops.core.training_config import TrainingConfig
from airflow_mlops.core.values import TEMPLATE_MARKERS, is_templated
from airflow_mlops.factories.notifications_config import NotificationsConfig
from airflow_mlops.factories.templating import check_config_templates

__all__ = [
    "MAX_CONFIG_VALUES",
    "NAME_PATTERN",
    "ConnectionsConfig",
    "DataConfig",
    "DecayConfig",
    "EvaluationConfig",
    "MonitoringConfig",
    "NotificationsConfig",
    "PipelineConfig",
    "PromotionConfig",
    "SegmentsConfig",
    "ValidationConfig",
    "json_schema",
    "load_config",
    "parse_config",
]

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
# A pipeline file is a few hundred values; YAML aliases can make a 500-byte file expand to
# 10**8 (a "billion laughs" bomb) that would stall the DAG processor. Merge keys (``<<: [*a,
# *a]``) expand inside the YAML loader itself, so the limit is enforced on the node graph
# before anything is constructed, and again on the loaded mapping (``parse_config`` callers).
MAX_CONFIG_VALUES = 100_000


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConnectionsConfig(_Section):
    mlflow_conn_id: str = Field("mlflow_default", description="MLflow connection id.")
    aws_conn_id: str | None = Field("aws_default", description="AWS connection for s3:// URIs.")


class DataConfig(_Section):
    train_uri: str = Field(
        description="Training data: a parquet/csv file, a folder or prefix of such files "
        "(Hive key=value partitions included) or a glob; local path or s3://."
    )
    target: str = Field(description="Label column.")
    window: DataWindow = Field(
        default_factory=DataWindow,
        description="Which partitions training reads: 'all' (default), {last_partitions: N}, "
        "{last: '30d', key: dt} or {last: '30d', time_column: ts}; optional max_rows (a "
        "row-hash sample) and seed.",
    )
    key: list[str] | None = Field(
        None,
        min_length=1,
        description="Columns identifying a row; their hash puts it in training or holdout "
        "(default: the model's feature and target columns).",
    )
    features: list[str] | None = Field(None, description="Feature columns (default: all others).")
    exclude: list[str] = Field(default_factory=list, description="Columns never used as features.")
    new_data_uri: str | None = Field(
        None,
        description="If set, the CT DAG is also scheduled on this Asset: a producer DAG that "
        "lands new data with this URI as outlet triggers retraining.",
    )
    inference_uri: str | None = Field(None, description="Data to score with the champion.")
    predictions_uri: str | None = Field(
        None,
        description="Where batch predictions are written: a file, or a folder/prefix that "
        "gets one partition per run (dt=<partition>/part-<writer>.parquet; needs id_columns).",
    )
    id_columns: list[str] | None = Field(
        None,
        min_length=1,
        description="Columns identifying a prediction: copied into the predictions and used "
        "to join the labels that land later (monitoring.decay).",
    )
    allowed_prefixes: list[str] | None = Field(
        None,
        description="Local folders or s3:// prefixes every data URI must lie under, checked "
        "at run time after trigger params are applied. Default: the folders of the data "
        "URIs written in this file.",
    )

    @field_validator("allowed_prefixes")
    @classmethod
    def _absolute_prefixes(cls, prefixes: list[str] | None) -> list[str] | None:
        for prefix in prefixes or []:
            if not (prefix.startswith("s3://") or prefix.startswith("/")):
                raise ValueError(f"{prefix!r} must be an absolute local path or an s3:// prefix")
            if prefix.startswith("s3://") and not prefix.removeprefix("s3://").strip("/"):
                raise ValueError(f"{prefix!r} names no bucket")
        return prefixes


class ValidationConfig(_Section):
    enabled: bool = True
    suite: str | list[dict[str, Any]] | None = Field(
        None, description="GX 1.x suite JSON file or a list of expectation configs."
    )
    on_failure: Literal["fail", "skip", "warn"] = "fail"

    @field_validator("suite")
    @classmethod
    def _no_code_in_row_conditions(cls, suite: Any) -> Any:
        """Early, GX-free form of the suite check the validation task repeats at run time."""
        for index, entry in enumerate(suite if isinstance(suite, list) else []):
            kwargs = entry.get("kwargs") if isinstance(entry, dict) else None
            if not isinstance(kwargs, dict):
                continue
            parser = kwargs.get("condition_parser")
            if parser not in (None, "great_expectations", "great_expectations__experimental__"):
                raise ValueError(
                    f"expectation {index}: condition_parser {parser!r} is refused (pandas' "
                    "query() runs attribute calls); use condition_parser: great_expectations"
                )
            condition = kwargs.get("row_condition")
            if isinstance(condition, dict) and condition.get("type") == "pass_through":
                raise ValueError(f"expectation {index}: a pass_through row_condition is refused")
        return suite


class EvaluationConfig(_Section):
    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        """YAML 1.1 reads an unquoted ``on:`` key as ``True``: take it as ``on``."""
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    policy: PromotionPolicy | None = Field(
        None,
        description="Promotion policy. Default: the challenger must be at least as good as the "
        "champion on f1 (classification) or rmse (regression), on the same holdout.",
    )
    slices: dict[str, list[Any]] = Field(
        default_factory=dict, description="Column -> values to report and gate per slice."
    )
    on: Literal["holdout", "newest"] = Field(
        "holdout",
        description="Rows compared: the challenger's holdout minus the rows the champion "
        "trained on, or only the partitions after the champion's window.",
    )
    min_rows: int = Field(
        DEFAULT_MIN_ROWS,
        ge=1,
        description="Fewer comparable rows: not promoted, insufficient evidence.",
    )
    fairness: FairnessSpec | None = Field(
        None,
        description="Fairness gate on the same rows: sensitive columns, metrics "
        "(demographic_parity_difference, equalized_odds_difference, recall, precision) and "
        "bounds (max, max_increase). See docs/governance.md.",
    )
    explain: ExplainSpec = Field(
        default_factory=ExplainSpec,
        description="Permutation importance of the challenger on a seeded sample of the same "
        "rows (max_rows, n_repeats, top, seed; shap for tree models when installed).",
    )


class PromotionConfig(_Section):
    approval: Literal["auto", "manual", "auto_if_confident"] = "auto"
    auto_confidence: float | None = Field(
        None,
        ge=0.5,
        lt=1.0,
        description="approval: auto_if_confident: level of the difference's bootstrap "
        "interval whose pessimistic bound must clear each change threshold. Empty: the "
        "threshold's min_confidence, else 0.95 (the level evaluation records).",
    )
    serving_check: bool = True
    approvers: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        description="approval: manual: the Airflow users (ids; user names with the simple "
        "auth manager) who may answer. Empty: any user allowed to edit the DAG's tasks.",
    )
    timeout: float | None = Field(
        None,
        description="approval: manual: seconds to wait for an answer; then on_timeout applies "
        "(recorded as a timeout, answered by nobody). Empty: wait until answered.",
    )
    on_timeout: Literal["reject", "approve"] = Field(
        "reject", description="The answer applied when the timeout passes unanswered."
    )
    require_shadow_partitions: int | None = Field(
        None,
        ge=1,
        description="Shadow evidence before @champion moves: the challenger scored in shadow "
        "(prediction.shadow) beside the current champion on this many labelled partitions; "
        "fewer: not promoted, 'shadow evidence from K of N partitions'.",
    )
    shadow_min_delta: float | None = Field(
        None,
        description="Smallest mean improvement of the challenger over the champion on the "
        "shadow metric over those partitions (metric units; default 0.0).",
    )
    shadow_metric: str | None = Field(
        None, description="The shadow metric; default: the policy's first change metric."
    )

    @field_validator("timeout", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> float | None:
        from airflow_mlops.core.values import parse_seconds

        return None if value is None else parse_seconds(value, "promotion.timeout", positive=True)

    @model_validator(mode="after")
    def _manual_only(self) -> PromotionConfig:
        if self.approval not in ("manual", "auto_if_confident"):
            for name in ("approvers", "timeout"):
                if getattr(self, name):
                    raise ValueError(
                        f"promotion.{name} needs promotion.approval: manual or auto_if_confident"
                    )
        if self.auto_confidence is not None and self.approval != "auto_if_confident":
            raise ValueError(
                "promotion.auto_confidence needs promotion.approval: auto_if_confident"
            )
        if self.on_timeout == "approve" and self.timeout is None:
            raise ValueError("promotion.on_timeout: approve needs promotion.timeout")
        if len(set(self.approvers)) != len(self.approvers):
            raise ValueError("promotion.approvers lists a user twice")
        return self


class PredictionConfig(_Section):
    shadow: bool = Field(
        False,
        description="Batch prediction also scores @challenger (when it differs from "
        "@champion) into <predictions_uri>/_shadow/, which readers skip; the decay check "
        "scores both on the same labelled rows per partition.",
    )


class DecayConfig(_Section):
    labels_uri: str = Field(
        description="Recent predictions joined with their true labels; with data.id_columns "
        "and a predictions folder, a dataset of the id columns and the target landing later."
    )
    min_label_coverage: float = Field(
        DEFAULT_MIN_LABEL_COVERAGE,
        gt=0.0,
        le=1.0,
        description="Delayed labels: share of a prediction partition's rows that must be "
        "labelled before it is scored; the others are reported pending.",
    )
    tolerance: float = Field(
        DEFAULT_TOLERANCE, ge=0.0, description="Largest accepted drop of the metric."
    )
    metric: str | None = Field(
        None, description="Default: f1 (classification) / rmse (regression)."
    )
    on_empty: Literal["fail", "skip"] = Field(
        "fail",
        description="No labelled rows yet (labels land later): fail the decay task, or skip "
        "it. Delayed-labels pipelines usually want skip.",
    )


class MonitoringConfig(_Section):
    enabled: bool = True
    current_uri: str | None = Field(None, description="New inference data to check for drift.")
    reference_uri: str | None = Field(
        None, description="Default: the reference recorded on the champion's training run."
    )
    schedule: str | None = "@daily"
    columns: list[str] | None = None
    drift_share: float = Field(DEFAULT_DRIFT_SHARE, gt=0.0, le=1.0)
    column_methods: dict[str, str] = Field(default_factory=dict)
    column_thresholds: dict[str, float] = Field(default_factory=dict)
    debounce_hours: float = Field(6.0, ge=0.0)
    sample_rows: int = Field(DEFAULT_MAX_ROWS_PER_SIDE, ge=1000)
    decay: DecayConfig | None = None


class SegmentsConfig(_Section):
    column: str = Field(description="Column whose values split the data, one model per value.")
    values: list[str] = Field(min_length=1, description="The segment values to train.")
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Segments trained, gated and promoted per task (batched mode, "
        "core/segment_batch.py). Unset: one mapped chain of tasks per segment up to 100 "
        "segments; above, chunks of 25 to 50 keeping at least 20 chunks (1,000 segments: 20 "
        "chunks of 50).",
    )
    workers: int = Field(
        1,
        ge=1,
        le=8,
        description="Batched mode: segments of a chunk run at once in one task (threads), so "
        "their MLflow requests and serving checks overlap.",
    )

    @property
    def effective_batch_size(self) -> int | None:
        """The chunk size in use, or None for one mapped chain per segment."""
        from airflow_mlops.core.segments import PER_SEGMENT_CHAIN_MAX, default_batch_size

        if self.batch_size is not None:
            return self.batch_size
        count = len(self.values)
        return default_batch_size(count) if count > PER_SEGMENT_CHAIN_MAX else None

    @model_validator(mode="after")
    def _chunks_fit_one_mapped_task(self) -> SegmentsConfig:
        from airflow_mlops.core.segments import MAX_MAPPED, chunk_count

        size = self.effective_batch_size
        if size is not None and chunk_count(len(self.values), size) > MAX_MAPPED:
            raise ValueError(
                f"segments.batch_size {size} makes {chunk_count(len(self.values), size)} "
                f"tasks for {len(self.values)} segments; Airflow maps at most {MAX_MAPPED}"
            )
        return self


class PipelineConfig(_Section):
    """One model's continuous-training pipeline."""

    name: str = Field(pattern=NAME_PATTERN, description="Pipeline name; DAG ids derive from it.")
    model_name: str | None = Field(None, description="Registered model name (default: name).")
    description: str = ""
    owner: str = "mlops"
    schedule: str | None = Field(None, description="Cron or preset for periodic retraining.")
    tags: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, description="DAG tags (Airflow allows 100 characters each)."
    )
    retries: int = Field(1, ge=0)
    connections: ConnectionsConfig = Field(default_factory=ConnectionsConfig)
    data: DataConfig
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    segments: SegmentsConfig | None = None
    prediction: PredictionConfig = Field(default_factory=PredictionConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)

    @model_validator(mode="after")
    def _auto_confidence_is_recorded(self) -> PipelineConfig:
        """auto_if_confident reads intervals from the evaluation record: 0.95, or a change
        threshold's min_confidence. Any other level would always ask: refuse it here."""
        level = self.promotion.auto_confidence
        policy = self.evaluation.policy
        levels = {0.95, *(policy.confidence_levels().values() if policy else ())}
        if level is not None and not any(abs(level - known) < 1e-12 for known in levels):
            raise ValueError(
                f"promotion.auto_confidence: no {level:g} interval is recorded by evaluation; "
                f"use one of {sorted(levels)} (0.95 or a change threshold's min_confidence)"
            )
        return self

    @model_validator(mode="after")
    def _batched_segments_need_no_human(self) -> PipelineConfig:
        """Batched segments (core/segment_batch.py) gate on the policy and the serving check
        only: refuse the gates they do not run rather than promote without them."""
        batched = self.segments is not None and self.segments.effective_batch_size is not None
        if not batched:
            return self
        where = "batched segments (segments.batch_size, or more than 100 segments)"
        if self.promotion.approval != "auto":
            raise ValueError(
                f"promotion.approval: {self.promotion.approval} cannot be used with {where}: a "
                "task promotes a whole chunk and cannot wait for one answer per segment"
            )
        if self.promotion.require_shadow_partitions is not None:
            raise ValueError(f"promotion.require_shadow_partitions is not run by {where}")
        if self.evaluation.fairness is not None:
            raise ValueError(f"evaluation.fairness is not run by {where}")
        return self

    @model_validator(mode="after")
    def _segments_write_no_shared_predictions(self) -> PipelineConfig:
        if self.segments is not None and self.data.predictions_uri:
            raise ValueError(
                "data.predictions_uri cannot be used with segments: every segment would "
                "overwrite the same file; score each segment's model in its own DAG"
            )
        return self

    @model_validator(mode="after")
    def _shadow_needs_partitions_and_labels(self) -> PipelineConfig:
        """Shadow scoring writes beside predictions by partition; shadow evidence needs it
        and the decay check that records it."""
        from airflow_mlops.core.policy import default_direction
        from airflow_mlops.core.prediction_layout import is_partitioned_output

        data, promotion = self.data, self.promotion
        if self.prediction.shadow and not (
            data.inference_uri
            and data.predictions_uri
            and data.id_columns
            and is_partitioned_output(data.predictions_uri)
        ):
            raise ValueError(
                "prediction.shadow needs data.inference_uri, data.id_columns and a "
                "data.predictions_uri folder or prefix (one partition per run)"
            )
        if promotion.require_shadow_partitions is None:
            if promotion.shadow_min_delta is not None or promotion.shadow_metric:
                raise ValueError(
                    "promotion.shadow_min_delta and shadow_metric need "
                    "promotion.require_shadow_partitions"
                )
            return self
        if not self.prediction.shadow or self.monitoring.decay is None:
            raise ValueError(
                "promotion.require_shadow_partitions needs prediction.shadow: true and "
                "monitoring.decay (the decay check records the shadow evidence)"
            )
        metric = promotion.shadow_metric
        if metric and default_direction(metric) is None:
            raise ValueError(f"promotion.shadow_metric {metric!r} is not a known metric")
        return self

    @model_validator(mode="after")
    def _fairness_event_needs_fairness_monitoring(self) -> PipelineConfig:
        """``events.fairness`` is sent by the decay check over labelled prediction partitions:
        refuse an event no run would ever send."""
        from airflow_mlops.core.prediction_layout import is_partitioned_output

        if "fairness" not in self.notifications.events:
            return self
        data = self.data
        if not (
            self.evaluation.fairness is not None
            and self.monitoring.decay is not None
            and data.id_columns
            and data.predictions_uri
            and is_partitioned_output(data.predictions_uri)
        ):
            raise ValueError(
                "notifications.events.fairness: fairness is monitored by the decay check over "
                "delayed labels; it needs evaluation.fairness, monitoring.decay, data.id_columns "
                "and a data.predictions_uri folder or prefix"
            )
        return self

    @model_validator(mode="after")
    def _stale_after_needs_a_scheduled_monitoring_dag(self) -> PipelineConfig:
        """The staleness check is a task of the monitoring DAG: refuse a bound no run checks."""
        if self.notifications.stale_after is None:
            return self
        monitoring = self.monitoring
        if not (monitoring.enabled and (monitoring.current_uri or self.data.inference_uri)):
            raise ValueError(
                "notifications.stale_after: the staleness check runs in the monitoring DAG, "
                "which this pipeline does not get (needs monitoring.enabled and "
                "monitoring.current_uri or data.inference_uri)"
            )
        if monitoring.schedule is None:
            raise ValueError(
                "notifications.stale_after: monitoring.schedule is null, so nothing runs the "
                "staleness check; give the monitoring DAG a schedule (e.g. '@daily')"
            )
        return self

    @model_validator(mode="after")
    def _default_data_prefixes_are_folders(self) -> PipelineConfig:
        """Without ``data.allowed_prefixes``, each data URI's folder becomes an allowed prefix:
        refuse one that allows every file (``/x.csv``, ``/out{{ ds }}.csv``: the folder is
        ``/``) or that no task can check (relative, templated bucket, other scheme)."""
        if self.data.allowed_prefixes is not None:
            return self
        for field, uri in self._data_uris():
            folder = _folder_of(uri)
            if not _is_checkable_folder(folder):
                raise ValueError(
                    f"{field} {uri!r} gives no folder to allow by default ({folder!r}): "
                    "declare data.allowed_prefixes"
                )
        return self

    def _data_uris(self) -> list[tuple[str, str]]:
        """(dotted field, URI) of every data URI written in the file."""
        monitoring = self.monitoring
        uris = {
            "data.train_uri": self.data.train_uri,
            "data.inference_uri": self.data.inference_uri,
            "data.predictions_uri": self.data.predictions_uri,
            "monitoring.current_uri": monitoring.current_uri,
            "monitoring.reference_uri": monitoring.reference_uri,
            "monitoring.decay.labels_uri": monitoring.decay.labels_uri
            if monitoring.decay
            else None,
        }
        return [(field, uri) for field, uri in uris.items() if uri]

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, tags: list[str]) -> list[str]:
        return list(dict.fromkeys(tags))

    @property
    def promotion_policy(self) -> PromotionPolicy | None:
        """``evaluation.policy``; else, with an explicit ``training.task``, the default policy
        of that task. ``None`` leaves the default to the evaluate task, which knows the task
        the model was trained for (see :func:`~airflow_mlops.core.policy.default_policy`)."""
        if self.evaluation.policy is not None:
            return self.evaluation.policy
        if self.training.task is not None:
            from airflow_mlops.core.policy import default_policy

            return default_policy(self.training.task)
        return None

    @property
    def allowed_data_prefixes(self) -> list[str]:
        """``data.allowed_prefixes``, else the folder of every data URI written in the file."""
        if self.data.allowed_prefixes is not None:
            return list(self.data.allowed_prefixes)
        return list(dict.fromkeys(_folder_of(uri) for _, uri in self._data_uris()))

    @property
    def registered_model_name(self) -> str:
        return self.model_name or self.name

    @property
    def experiment_name(self) -> str:
        return self.training.experiment_name or f"mlops/{self.name}"

    @property
    def ct_dag_id(self) -> str:
        return f"ct__{self.name}"

    @property
    def monitoring_dag_id(self) -> str:
        return f"monitor__{self.name}"

    @property
    def rollback_dag_id(self) -> str:
        return f"rollback__{self.name}"

    @property
    def freeze_dag_id(self) -> str:
        return f"freeze__{self.name}"

    def fingerprint(self) -> str:
        """Hash of the effective config (defaults included) and the provider version.

        ``notifications`` is left out: who is told about a run is no reason to retrain."""
        from airflow_mlops import __version__

        config = self.model_dump(mode="json", exclude={"notifications"})
        return config_hash({"config": config, "provider": __version__})


def _folder_of(uri: str) -> str:
    """The folder holding ``uri``, cut before any template (``.../{{ ds }}/x.parquet``)."""
    for marker in TEMPLATE_MARKERS:
        uri = uri.split(marker, 1)[0]
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return f"s3://{bucket}/{key.rsplit('/', 1)[0]}" if "/" in key else f"s3://{bucket}"
    return uri.rsplit("/", 1)[0] or "/"


def _is_checkable_folder(folder: str) -> bool:
    """An absolute local folder other than ``/``, or an ``s3://`` bucket (``file://`` too)."""
    if folder.startswith("s3://"):
        return bool(folder.removeprefix("s3://").split("/", 1)[0])
    if folder.startswith("file://"):
        host, _, path = folder.removeprefix("file://").partition("/")
        folder = "/" + path if host in ("", "localhost") else ""
    return folder.startswith("/") and bool(folder.strip("/"))


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"Invalid pipeline config {source}:"]
    for item in err.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"  - {location}: {item['msg']}")
    return "\n".join(lines)


def _resolve_local_paths(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Relative local paths in ``data``, ``validation`` and ``monitoring`` are relative to the file."""

    def resolve(value: Any, where: str) -> Any:
        if isinstance(value, list) and where == "data.allowed_prefixes":
            return [resolve(item, where) for item in value]
        if isinstance(value, str) and value and "://" not in value and not is_templated(value):
            if "\x00" in value:
                raise ConfigError(f"{where} contains a NUL character: {value!r}")
            path = Path(value)
            return str(path if path.is_absolute() else (base_dir / path).resolve())
        return value

    keys = {
        "data": (
            "train_uri",
            "new_data_uri",
            "inference_uri",
            "predictions_uri",
            "allowed_prefixes",
        ),
        "validation": ("suite",),
        "monitoring": ("current_uri", "reference_uri"),
    }
    resolved = dict(raw)
    for section, fields in keys.items():
        if isinstance(resolved.get(section), dict):
            resolved[section] = {
                k: resolve(v, f"{section}.{k}") if k in fields else v
                for k, v in resolved[section].items()
            }
    monitoring = resolved.get("monitoring")
    decay = monitoring.get("decay") if isinstance(monitoring, dict) else None
    if isinstance(decay, dict) and "labels_uri" in decay:
        resolved["monitoring"] = {
            **monitoring,
            "decay": {
                **decay,
                "labels_uri": resolve(decay["labels_uri"], "monitoring.decay.labels_uri"),
            },
        }
    return resolved


def parse_config(raw: Any, source: str = "<dict>", base_dir: Path | None = None) -> PipelineConfig:
    """Validate a mapping into a :class:`PipelineConfig`; errors name the source and field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"Invalid pipeline config {source}: expected a mapping at the top level.")
    _check_size(raw, source)
    try:
        check_config_templates(raw)
    except ConfigError as err:
        raise type(err)(f"Invalid pipeline config {source}: {err}") from None
    if base_dir is not None:
        try:
            raw = _resolve_local_paths(raw, base_dir)
        except ConfigError as err:
            raise ConfigError(f"Invalid pipeline config {source}: {err}") from None
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
    except RecursionError:
        raise ConfigError(f"Invalid pipeline config {source}: nested too deeply.") from None


def _too_many_values(source: str, limit: int) -> ConfigError:
    return ConfigError(
        f"Invalid pipeline config {source}: it expands to more than {limit} values "
        "(nested YAML aliases or merge keys?)."
    )


def _check_size(raw: Any, source: str, limit: int = MAX_CONFIG_VALUES) -> None:
    """Count values as YAML aliases expand them (iteratively: no recursion limit)."""
    stack, seen = [raw], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > limit:
            raise _too_many_values(source, limit)
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _check_node_size(root: Any, source: str, limit: int = MAX_CONFIG_VALUES) -> None:
    """Count the values of a composed YAML node graph as aliases would expand them.

    Aliases are shared nodes, so each node's expanded size is computed once (post-order,
    iteratively: no recursion limit) and the count stays cheap however large the expansion.
    A node reachable from itself is a recursive alias, which no pipeline needs.
    """
    import yaml

    def children(node: Any) -> list[Any]:
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return list(node.value) if isinstance(node, yaml.SequenceNode) else []

    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if expanded:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children(node))
            if sizes[key] > limit:
                raise _too_many_values(source, limit)
        elif key not in sizes:
            if key in on_path:
                raise ConfigError(
                    f"Invalid pipeline config {source}: a YAML alias refers to a node that "
                    f"contains it (line {node.start_mark.line + 1}): recursive structures are "
                    "not supported."
                )
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children(node) if id(child) not in sizes)


@lru_cache(maxsize=1)
def _bounded_safe_loader() -> type:
    """``yaml.SafeLoader`` that checks the expanded size before constructing anything, and
    reports values it cannot construct as YAML errors with their line."""
    import yaml

    class BoundedSafeLoader(yaml.SafeLoader):
        source = "<yaml>"

        def construct_document(self, node: Any) -> Any:
            _check_node_size(node, self.source)
            return super().construct_document(node)

        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep=deep)
            except (ValueError, TypeError, LookupError, AttributeError, ArithmeticError) as err:
                # PyYAML's own constructors raise these for e.g. `2024-02-30`, `!!int x`,
                # and IndexError for an empty `!!int` / `!!float` (they read value[0]).
                shown = repr(node.value[:100]) if isinstance(node, yaml.ScalarNode) else node.id
                raise yaml.constructor.ConstructorError(
                    None, None, f"cannot read {node.tag} value {shown}: {err}", node.start_mark
                ) from err

    return BoundedSafeLoader


def _safe_load(text: str, source: str) -> Any:
    loader = _bounded_safe_loader()(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config(path: str | Path) -> PipelineConfig:
    """Read a YAML pipeline file. Local relative paths inside it are relative to the file."""
    import yaml

    path = Path(path)
    try:
        raw = _safe_load(path.read_text(encoding="utf-8"), source=str(path))
    except OSError as err:
        raise ConfigError(f"Cannot read pipeline config {path}: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"Pipeline config {path} is not UTF-8 text: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"Pipeline config {path} is not valid YAML: {err}") from err
    except RecursionError:
        raise ConfigError(f"Pipeline config {path} is nested too deeply.") from None
    return parse_config(raw, source=str(path), base_dir=path.parent)


def json_schema() -> str:
    """The JSON schema of a pipeline file (for editors and ``airflow-mlops schema``)."""
    return json.dumps(PipelineConfig.model_json_schema(), indent=2)
