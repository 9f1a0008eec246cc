"""Typed pipeline configuration: one YAML file (or one Python object) per model.

A data scientist edits this, not DAG code. Every section has working defaults; an error
names the file and the dotted path of the bad field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.lineage import config_hash
from airflow_mlops.core.policy import PromotionPolicy

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConnectionsConfig(_Section):
    mlflow_conn_id: str = Field("mlflow_default", description="MLflow connection id.")
    aws_conn_id: str | None = Field("aws_default", description="AWS connection for s3:// URIs.")


class DataConfig(_Section):
    train_uri: str = Field(description="Training data (parquet/csv; local path or s3://).")
    target: str = Field(description="Label column.")
    features: list[str] | None = Field(None, description="Feature columns (default: all others).")
    exclude: list[str] = Field(default_factory=list, description="Columns never used as features.")
    new_data_uri: str | None = Field(
        None,
        description="If set, the CT DAG is also scheduled on this Asset: a producer DAG that "
        "lands new data with this URI as outlet triggers retraining.",
    )
    inference_uri: str | None = Field(None, description="Data to score with the champion.")
    predictions_uri: str | None = Field(None, description="Where batch predictions are written.")


class ValidationConfig(_Section):
    enabled: bool = True
    suite: str | list[dict[str, Any]] | None = Field(
        None, description="GX 1.x suite JSON file or a list of expectation configs."
    )
    on_failure: Literal["fail", "skip", "warn"] = "fail"


class SearchConfig(_Section):
    method: Literal["random", "grid"] = "random"
    space: dict[str, Any] = Field(description="Parameter name -> list of values or distribution.")
    n_iter: int = Field(10, ge=1)
    cv: int = Field(3, ge=2)
    scoring: str | None = None


class TrainingConfig(_Section):
    estimator: str = Field(
        "sklearn.ensemble.RandomForestClassifier",
        description="Dotted path to an estimator class or a factory function.",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    task: Literal["classification", "regression"] | None = None
    holdout_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    seed: int = 42
    time_column: str | None = None
    search: SearchConfig | None = None
    experiment_name: str | None = Field(None, description="Default: 'mlops/<pipeline name>'.")


class EvaluationConfig(_Section):
    policy: PromotionPolicy | None = Field(
        None,
        description="Promotion policy. Default: the challenger must be at least as good as the "
        "champion on f1 (classification) or rmse (regression), on the same holdout.",
    )
    slices: dict[str, list[Any]] = Field(
        default_factory=dict, description="Column -> values to report and gate per slice."
    )


class PromotionConfig(_Section):
    approval: Literal["auto", "manual"] = "auto"
    serving_check: bool = True


class DecayConfig(_Section):
    labels_uri: str = Field(description="Recent predictions joined with their true labels.")
    tolerance: float = Field(0.05, ge=0.0, description="Largest accepted drop of the metric.")
    metric: str | None = Field(
        None, description="Default: f1 (classification) / rmse (regression)."
    )


class MonitoringConfig(_Section):
    enabled: bool = True
    current_uri: str | None = Field(None, description="New inference data to check for drift.")
    reference_uri: str | None = Field(
        None, description="Default: the reference recorded on the champion's training run."
    )
    schedule: str | None = "@daily"
    columns: list[str] | None = None
    drift_share: float = Field(0.5, gt=0.0, le=1.0)
    column_methods: dict[str, str] = Field(default_factory=dict)
    column_thresholds: dict[str, float] = Field(default_factory=dict)
    debounce_hours: float = Field(6.0, ge=0.0)
    sample_rows: int = Field(50_000, ge=1000)
    decay: DecayConfig | None = None


class SegmentsConfig(_Section):
    column: str = Field(description="Column whose values split the data, one model per value.")
    values: list[str] = Field(min_length=1, description="The segment values to train.")


class PipelineConfig(_Section):
    """One model's continuous-training pipeline."""

    name: str = Field(pattern=NAME_PATTERN, description="Pipeline name; DAG ids derive from it.")
    model_name: str | None = Field(None, description="Registered model name (default: name).")
    description: str = ""
    owner: str = "mlops"
    schedule: str | None = Field(None, description="Cron or preset for periodic retraining.")
    tags: list[str] = Field(default_factory=list)
    retries: int = Field(1, ge=0)
    connections: ConnectionsConfig = Field(default_factory=ConnectionsConfig)
    data: DataConfig
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    segments: SegmentsConfig | None = None

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, tags: list[str]) -> list[str]:
        return list(dict.fromkeys(tags))

    @property
    def task(self) -> str:
        """The training task, from ``training.task`` or the estimator's name."""
        if self.training.task:
            return self.training.task
        return "regression" if "Regress" in self.training.estimator else "classification"

    @property
    def promotion_policy(self) -> PromotionPolicy:
        if self.evaluation.policy is not None:
            return self.evaluation.policy
        metric = "rmse" if self.task == "regression" else "f1"
        return PromotionPolicy.model_validate({"change_thresholds": {metric: {"min_delta": 0.0}}})

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

    def fingerprint(self) -> str:
        """Hash of the effective config (defaults included) and the provider version."""
        from airflow_mlops import __version__

        return config_hash({"config": self.model_dump(mode="json"), "provider": __version__})


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"Invalid pipeline config {source}:"]
    for item in err.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"  - {location}: {item['msg']}")
    return "\n".join(lines)


def _resolve_local_paths(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Relative local paths in ``data``, ``validation`` and ``monitoring`` are relative to the file."""

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value and "://" not in value and "{{" not in value:
            path = Path(value)
            return str(path if path.is_absolute() else (base_dir / path).resolve())
        return value

    keys = {
        "data": ("train_uri", "new_data_uri", "inference_uri", "predictions_uri"),
        "validation": ("suite",),
        "monitoring": ("current_uri", "reference_uri"),
    }
    resolved = dict(raw)
    for section, fields in keys.items():
        if isinstance(resolved.get(section), dict):
            resolved[section] = {
                k: resolve(v) if k in fields else v for k, v in resolved[section].items()
            }
    decay = (resolved.get("monitoring") or {}).get("decay")
    if isinstance(decay, dict) and "labels_uri" in decay:
        resolved["monitoring"] = {
            **resolved["monitoring"],
            "decay": {**decay, "labels_uri": resolve(decay["labels_uri"])},
        }
    return resolved


def parse_config(raw: Any, source: str = "<dict>", base_dir: Path | None = None) -> PipelineConfig:
    """Validate a mapping into a :class:`PipelineConfig`; errors name the source and field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"Invalid pipeline config {source}: expected a mapping at the top level.")
    if base_dir is not None:
        raw = _resolve_local_paths(raw, base_dir)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path) -> PipelineConfig:
    """Read a YAML pipeline file. Local relative paths inside it are relative to the file."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"Cannot read pipeline config {path}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"Pipeline config {path} is not valid YAML: {err}") from err
    return parse_config(raw, source=str(path), base_dir=path.parent)


def json_schema() -> str:
    """The JSON schema of a pipeline file (for editors and ``airflow-mlops schema``)."""
    return json.dumps(PipelineConfig.model_json_schema(), indent=2)
