"""The one training configuration: a pipeline file's ``training:`` section, the settings
``TrainModelOperator`` builds from its arguments, and what :func:`core.training.train_model`
reads, with one set of defaults.

Import-light (pydantic only): factories validate it when a DAG file is parsed. Fields that
name code (``estimator``, ``preprocessing``) hold a dotted path, or in Python a class or
callable; the task is never guessed here from a name but at run time from the constructed
estimator (see :func:`airflow_mlops.core.training_data.resolve_task`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from airflow_mlops.core.errors import ConfigError

__all__ = [
    "DEFAULT_ESTIMATORS",
    "STRATIFY_REFUSED",
    "SearchConfig",
    "TrainingConfig",
    "describe_callable",
    "validation_problems",
]

#: The estimator for each task when ``estimator`` is not set.
DEFAULT_ESTIMATORS = {
    "classification": "sklearn.ensemble.RandomForestClassifier",
    "regression": "sklearn.ensemble.RandomForestRegressor",
}

#: Why ``stratify`` is refused wherever it is set (YAML ``training:``, operator arguments).
STRATIFY_REFUSED = (
    "stratify cannot be honoured: the train/holdout split is hash-based (a row's side "
    "depends only on its key and the seed, so that it stays on that side in later runs); "
    "remove it. Each side is checked to hold at least two classes."
)

Task = Literal["classification", "regression"]
CodeSpec = str | SkipJsonSchema[Callable[..., Any]] | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class SearchConfig(_Strict):
    """Optional hyperparameter search, cross-validated; each trial becomes a nested run.

    ``space`` maps parameter names to candidates. Names without ``__`` are parameters of
    the estimator (``max_depth``); names starting with ``model__`` or ``preprocess__``
    address the pipeline directly. For ``grid`` every value is a list. For ``random`` a
    value is a list (sampled uniformly), a scipy distribution, or a JSON-friendly dict
    ``{"distribution": "uniform" | "loguniform" | "randint", "low": a, "high": b}``
    (``randint`` includes ``high``).
    """

    method: Literal["random", "grid"] = "random"
    space: dict[str, Any] = Field(
        min_length=1, description="Parameter name -> list of values or distribution."
    )
    n_iter: int = Field(10, ge=1)
    cv: int = Field(3, ge=2)
    scoring: str | None = None
    n_jobs: int = 1

    _numbers_are_not_booleans = field_validator("n_iter", "cv", "n_jobs", mode="before")(
        classmethod(lambda cls, value: _not_boolean(value))
    )


class TrainingConfig(_Strict):
    """How a model is trained; the same fields and defaults in YAML, operator and core."""

    estimator: CodeSpec = Field(
        None,
        description="Dotted path to an estimator class or a factory function. Default: "
        "RandomForestClassifier / RandomForestRegressor for the task.",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Estimator parameters.")
    task: Task | None = Field(
        None,
        description="Default: the estimator's own kind (scikit-learn is_classifier / "
        "is_regressor), else inferred from the target column.",
    )
    preprocessing: CodeSpec = Field(
        "default",
        description="'default' (impute, one-hot categoricals), 'none' or a dotted path to "
        "f(X) -> transformer.",
    )
    holdout_fraction: float = Field(
        0.25,
        gt=0.0,
        lt=1.0,
        description="Share of rows held out, by row hash (about this share: each row's side "
        "is decided by its key alone).",
    )
    seed: int = Field(42, description="Seed of the split, CV folds and search.")
    time_column: str | None = Field(None, description="Out-of-time holdout on this column.")
    search: SearchConfig | None = None
    experiment_name: str | None = Field(None, description="Default: 'mlops/<pipeline name>'.")

    _numbers_are_not_booleans = field_validator("holdout_fraction", "seed", mode="before")(
        classmethod(lambda cls, value: _not_boolean(value))
    )

    @model_validator(mode="before")
    @classmethod
    def _no_stratify(cls, values: Any) -> Any:
        if isinstance(values, Mapping) and "stratify" in values:
            raise ValueError(STRATIFY_REFUSED)
        return values

    @field_serializer("estimator", "preprocessing")
    def _code_as_text(self, value: Any) -> str | None:
        return value if value is None or isinstance(value, str) else describe_callable(value)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], label: str = "training") -> TrainingConfig:
        """Validate ``values`` (rendered operator arguments); errors name the field."""
        return build(cls, values, label)


def _not_boolean(value: Any) -> Any:
    # pydantic reads True as 1 in lax mode; a boolean where a number belongs is a mistake.
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


def build(cls: type[BaseModel], values: Mapping[str, Any], label: str) -> Any:
    """``cls.model_validate(values)``, with a :class:`ConfigError` that names each field."""
    try:
        return cls.model_validate(dict(values))
    except ValidationError as err:
        raise ConfigError(f"invalid {label}: {validation_problems(err, label)}") from None


def validation_problems(err: ValidationError, root: str = "config") -> str:
    """``field: message (got value)`` for each problem; unknown keys said plainly."""
    problems = []
    for item in err.errors():
        loc = [str(part) for part in item["loc"] if not isinstance(part, int)]
        if item["type"] == "extra_forbidden" and loc:
            owner = ".".join(loc[:-1]) or root
            problems.append(f"{owner} has unknown field {loc[-1]!r}")
            continue
        where = ".".join(loc) or "(root)"
        problems.append(f"{where}: {item['msg']} (got {item.get('input')!r:.80})")
    return "; ".join(problems)


def describe_callable(obj: Any) -> str:
    """A stable text for a dotted path, class or function (used in params and tags)."""
    if obj is None or isinstance(obj, str):
        return str(obj)
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{name}"
