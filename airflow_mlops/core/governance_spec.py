"""The governance sections of a pipeline: ``evaluation.fairness`` and ``evaluation.explain``.

Import-light (pydantic only), like :mod:`~airflow_mlops.core.training_config`: the pipeline
config and the evaluate operator validate these specs when a DAG file is parsed, so this
module holds the pydantic models, their parsers and the constants they name, nothing that
measures. Measuring and gating live in :mod:`~airflow_mlops.core.fairness` and
:mod:`~airflow_mlops.core.explanations`, which re-export these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from airflow_mlops.core.errors import ConfigError

__all__ = [
    "DEFAULT_MIN_GROUP_ROWS",
    "DISPARITY_METRICS",
    "FAIRNESS_METRICS",
    "PER_CLASS_METRICS",
    "ExplainSpec",
    "FairnessBound",
    "FairnessSpec",
    "SensitiveColumn",
    "parse_explain",
    "parse_fairness",
]

DISPARITY_METRICS = ("demographic_parity_difference", "equalized_odds_difference")
PER_CLASS_METRICS = ("recall", "precision")
FAIRNESS_METRICS = (*DISPARITY_METRICS, *PER_CLASS_METRICS)
#: Fewer rows in a group and its rates are noise: at 30 rows a rate near 0.5 has a 95 %
#: interval about +/- 0.18 wide.
DEFAULT_MIN_GROUP_ROWS = 30


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- fairness -------------------------------------------------------------------------------


class SensitiveColumn(_Strict):
    """A column the disparities are measured over."""

    column: str = Field(min_length=1)
    exclude_from_features: bool = Field(
        False,
        description="The model must not use it: evaluation refuses a challenger trained on it "
        "(training drops it from the features and keeps it in the holdout to measure over).",
    )


class FairnessBound(_Strict):
    """``max``: the disparity / per-class drop must stay at or under it; ``max_increase``:
    how much it may grow versus the champion."""

    max: float | None = Field(None, ge=0.0)
    max_increase: float | None = Field(None, ge=0.0)

    @model_validator(mode="after")
    def _one_bound(self) -> FairnessBound:
        if self.max is None and self.max_increase is None:
            raise ValueError("give at least one of 'max' or 'max_increase'")
        return self


class FairnessSpec(_Strict):
    """``evaluation.fairness``: sensitive columns, gated metrics and their bounds."""

    sensitive: list[SensitiveColumn] = Field(default_factory=list)
    metrics: dict[Literal[FAIRNESS_METRICS], FairnessBound] = Field(  # type: ignore[valid-type]
        min_length=1
    )
    min_rows: int = Field(
        DEFAULT_MIN_GROUP_ROWS, ge=1, description="Fewest rows a group needs for a verdict."
    )
    small_groups: Literal["fail", "report"] = Field(
        "fail",
        description="A group under min_rows fails the gate ('fail') or is reported as not "
        "applicable ('report'); never a silent pass.",
    )
    positive_label: Any = Field(
        None,
        description="Binary targets: the class whose selection rate is compared (default: "
        "the larger label, scikit-learn's convention).",
    )

    @model_validator(mode="before")
    @classmethod
    def _sensitive_shorthand(cls, data: Any) -> Any:
        """``sensitive: [sex, age_band]`` or ``{sex: {exclude_from_features: true}}``."""
        if not isinstance(data, dict) or "sensitive" not in data:
            return data
        raw = data["sensitive"]
        if isinstance(raw, Mapping):
            raw = [{"column": k, **(v or {})} for k, v in raw.items()]
        if isinstance(raw, list):
            raw = [{"column": v} if isinstance(v, str) else v for v in raw]
        return {**data, "sensitive": raw}

    @model_validator(mode="after")
    def _check(self) -> FairnessSpec:
        columns = [s.column for s in self.sensitive]
        if len(set(columns)) != len(columns):
            raise ValueError("fairness.sensitive lists a column twice")
        if any(m in DISPARITY_METRICS for m in self.metrics) and not columns:
            raise ValueError(
                "fairness.metrics names a disparity over groups "
                f"({', '.join(m for m in self.metrics if m in DISPARITY_METRICS)}): "
                "list the sensitive columns in fairness.sensitive"
            )
        return self

    @property
    def columns(self) -> list[str]:
        return [s.column for s in self.sensitive]

    @property
    def excluded_features(self) -> list[str]:
        """Sensitive columns the model must not use: the CT DAG's train task excludes them
        from the features and keeps them in the holdout (``holdout_columns``)."""
        return [s.column for s in self.sensitive if s.exclude_from_features]


def parse_fairness(value: FairnessSpec | Mapping[str, Any] | None) -> FairnessSpec | None:
    """A spec from a model or a mapping; errors name the field."""
    from pydantic import ValidationError

    if value is None or isinstance(value, FairnessSpec):
        return value
    try:
        return FairnessSpec.model_validate(dict(value))
    except (ValidationError, TypeError, ValueError) as err:
        raise ConfigError(f"invalid evaluation.fairness: {err}") from err


# -- explanations ---------------------------------------------------------------------------


class ExplainSpec(_Strict):
    """``evaluation.explain``: how the challenger's explanations are computed."""

    enabled: bool = True
    max_rows: int = Field(2000, ge=10, description="Rows sampled from the comparison set.")
    n_repeats: int = Field(5, ge=1, le=100, description="Shuffles per feature.")
    top: int = Field(5, ge=1, le=50, description="Features named in the evaluation result.")
    seed: int = Field(0, description="Seeds the sample and the shuffles.")
    shap: bool = Field(
        False,
        description="Add a SHAP summary for tree models (needs the 'explain' extra; importing "
        "shap alone takes ~2 s per task, so it is asked for, not implied by the install).",
    )
    shap_rows: int = Field(
        200,
        ge=10,
        description="Rows of the sample the SHAP summary explains (its cost grows with rows "
        "x trees; mean |SHAP| settles within a few hundred rows).",
    )


def parse_explain(value: ExplainSpec | Mapping[str, Any] | bool | None) -> ExplainSpec:
    """A spec from a model, a mapping, ``True``/``None`` (defaults) or ``False`` (off)."""
    from pydantic import ValidationError

    if isinstance(value, ExplainSpec):
        return value
    if value is None or value is True:
        return ExplainSpec()
    if value is False:
        return ExplainSpec(enabled=False)
    try:
        return ExplainSpec.model_validate(dict(value))
    except (ValidationError, TypeError, ValueError) as err:
        raise ConfigError(f"invalid evaluation.explain: {err}") from err
