"""The estimator, its preprocessing and its search: everything scikit-learn builds before a fit.

- Dotted paths from configuration are checked against an allow-list *before* anything is
  imported (:func:`check_module_allowed`, :func:`import_object`): a pipeline file is
  configuration, not code. scikit-learn and XGBoost are allowed by default (classes only);
  ``[mlops] allowed_estimator_modules`` adds the user's own modules (classes and factories).
- :func:`resolve_estimator` builds an unfitted estimator with its params, checked by name and
  by scikit-learn's own constraints; :func:`build_pipeline` puts the preprocessing
  (:func:`build_preprocessor` or the user's factory) in front of it.
- :func:`build_search` wraps the pipeline in a grid or randomized search with the split's
  CV folds (:func:`cv_splitter`) and a scoring that suits the task.

No MLflow here, and nothing that reads data.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import (
    GridSearchCV,
    KFold,
    RandomizedSearchCV,
    StratifiedKFold,
    TimeSeriesSplit,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from airflow_mlops.core.errors import ConfigError, EstimatorNotAllowedError
from airflow_mlops.core.training_config import DEFAULT_ESTIMATORS, describe_callable
from airflow_mlops.core.training_job import SplitPolicy, TrainingJob

__all__ = [
    "BUILTIN_ESTIMATOR_MODULES",
    "allowed_module_prefixes",
    "build_pipeline",
    "build_preprocessor",
    "build_search",
    "check_module_allowed",
    "cv_splitter",
    "default_scoring",
    "final_estimator",
    "import_object",
    "is_estimator",
    "pipeline_param_name",
    "resolve_estimator",
    "resolve_preprocessing",
    "set_estimator_params",
    "to_distribution",
    "validate_estimator_params",
]

#: Modules estimators may come from without configuration (``[mlops]
#: allowed_estimator_modules`` adds more).
BUILTIN_ESTIMATOR_MODULES = ("sklearn", "xgboost")


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
    seed: int | None = None,
) -> Any:
    """An unfitted estimator (or Pipeline) from a dotted path, class or factory, with params.

    A class with a ``random_state`` parameter the params leave unset gets ``seed``, so the
    same data and settings train the same model (scikit-learn's default draws a new one).

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
        estimator = _construct(target, params, label, seed)
        params = {}
    elif callable(target) and not is_estimator(target):
        try:
            estimator = target()
        except Exception as err:
            raise ConfigError(
                f"estimator factory {label} raised {type(err).__name__}: {err}"
            ) from err
    else:
        estimator = clone(target) if is_estimator(target) else target
    if not is_estimator(estimator):
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
    if not callable(target) and not is_estimator(target):
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


def is_estimator(obj: Any) -> bool:
    """An estimator instance (not a class): it has ``fit``, ``predict`` and ``get_params``."""
    return not inspect.isclass(obj) and all(
        callable(getattr(obj, m, None)) for m in ("fit", "predict", "get_params")
    )


def _construct(cls: type, params: Mapping[str, Any], label: str, seed: int | None) -> Any:
    # Check names against the defaults first: XGBoost swallows unknown kwargs silently.
    try:
        defaults = cls()
    except Exception as err:
        raise ConfigError(f"estimator {label} cannot be built without arguments: {err}") from err
    if not is_estimator(defaults):
        raise ConfigError(
            f"estimator {label} is not a scikit-learn compatible estimator: it has no "
            "fit/predict/get_params methods"
        )
    known = defaults.get_params(deep=False)
    _check_param_names(known, params, label)
    if seed is not None and "random_state" in known and params.get("random_state") is None:
        params = {**params, "random_state": seed}
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
            config.estimator, task, dict(config.params), config.allowed_modules, config.split.seed
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


def build_search(config: TrainingJob, pipeline: Pipeline, task: str) -> Any:
    """A scikit-learn search over the pipeline; its trials are logged as nested runs."""
    spec = config.search
    assert spec is not None
    space = {pipeline_param_name(name): value for name, value in spec.space.items()}
    _check_param_names(pipeline.get_params(deep=True), space, "pipeline (search.space)")
    cv = cv_splitter(task, spec.cv, config.split)
    scoring = spec.scoring or default_scoring(task, pipeline)
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
    """Time-ordered folds for an out-of-time split, stratified folds for classification
    (inside the training side: unlike the holdout, CV folds need not stay put across runs)."""
    if policy.time_column is not None:
        return TimeSeriesSplit(n_splits=folds)
    if task == "classification":
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=policy.seed)
    return KFold(n_splits=folds, shuffle=True, random_state=policy.seed)


def default_scoring(task: str, pipeline: Pipeline) -> str:
    if task == "regression":
        return "neg_root_mean_squared_error"
    has_proba = hasattr(final_estimator(pipeline), "predict_proba")
    return "neg_log_loss" if has_proba else "accuracy"
