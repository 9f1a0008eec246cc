"""Exceptions raised by airflow_mlops. Each message names the thing that is wrong."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "DataUriNotAllowedError",
    "DataValidationFailed",
    "DegenerateResamplesError",
    "DeletedExperimentError",
    "EmptyBatchError",
    "EstimatorNotAllowedError",
    "MlflowCallError",
    "MlflowConnectionError",
    "MlopsError",
    "ModelUriError",
    "PipelineFileNameError",
    "PromotionError",
    "SchemaDriftError",
    "TemplateNotAllowedError",
    "TooFewRowsError",
    "UnreadableDataError",
    "UnsupportedFormatError",
    "UntrustedModelError",
]


class MlopsError(Exception):
    """Base class of every error raised on purpose by airflow_mlops."""


class ConfigError(MlopsError, ValueError):
    """A parameter or configuration value is invalid; the message names the field."""


class DataError(MlopsError):
    """Input data cannot be used (missing, unreadable, wrong shape)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data URI points at nothing."""


class UnsupportedFormatError(DataError, ValueError):
    """The data URI has an extension we cannot read or write."""


class UnreadableDataError(DataError):
    """The file exists but cannot be parsed as the format its name claims."""


class DataValidationFailed(MlopsError):
    """Data broke its expectation suite. ``summary`` is the JSON-safe validation summary."""

    def __init__(self, message: str, summary: dict | None = None) -> None:
        super().__init__(message)
        self.summary = summary or {}


class MlflowConnectionError(MlopsError, ConnectionError):
    """The MLflow tracking server cannot be reached or refused our credentials."""


class MlflowCallError(MlopsError):
    """An MLflow call failed and its message held a credential: this is the scrubbed copy."""


class ModelUriError(MlopsError, ValueError):
    """A model URI was refused: only ``models:/`` URIs of the configured registry load."""


class UntrustedModelError(MlopsError):
    """A model version was refused before loading: this provider cannot show it created it."""


class PromotionError(MlopsError):
    """Registration or promotion could not complete; the registry was left unchanged."""


class SchemaDriftError(DataError):
    """Reference and current data do not share the same columns or types."""


class EmptyBatchError(DataError):
    """The current batch has no rows: there is nothing to compare."""


class PipelineFileNameError(ConfigError):
    """A pipeline YAML file name cannot be turned into a generated DAG file safely."""


class TemplateNotAllowedError(ConfigError):
    """A pipeline config value carries Jinja where templating is not allowed (or too much)."""


class EstimatorNotAllowedError(ConfigError):
    """An estimator or preprocessing path is outside the allowed modules, or not an estimator."""


class DataUriNotAllowedError(ConfigError):
    """A data URI (often a trigger parameter) is outside the pipeline's allowed data prefixes."""


class DeletedExperimentError(ConfigError):
    """The experiment name belongs to a deleted MLflow experiment (names are never reused)."""


class TooFewRowsError(DataError):
    """Too few rows to bootstrap a confidence interval; the message names the count."""


class DegenerateResamplesError(DataError):
    """Too many resamples leave the metric undefined (one class, a constant target, ...)."""
