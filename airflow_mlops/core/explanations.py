"""Explanations per version: permutation importance of the challenger on the comparison set.

Permutation importance (scikit-learn, model-agnostic) shuffles one feature at a time and
measures how much the challenger's score drops: the features it relies on. It runs on a
seeded sample of the comparison set (at most ``max_rows`` rows; the rows neither model
trained on) with a scorer built on ``predict`` only, so any MLflow flavour works: accuracy
for classification, R^2 for regression. ``n_repeats`` shuffles per feature give a standard
deviation beside each mean.

An optional SHAP summary (mean absolute SHAP value per feature) is added for tree models
when the ``shap`` package is importable; otherwise it is skipped and the record and the log
say why. Explanations inform the reviewer; they never gate a promotion.

The spec is in :mod:`~airflow_mlops.core.governance_spec` (import-light); scikit-learn and
shap are imported inside the functions.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

# The spec and its parser live in the import-light module the pipeline config reads.
from airflow_mlops.core.governance_spec import ExplainSpec, parse_explain

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "EXPLANATIONS_ARTIFACT",
    "ExplainSpec",
    "explain_model",
    "explanations_summary",
    "parse_explain",
]

log = logging.getLogger(__name__)

EXPLANATIONS_ARTIFACT = "mlops/explanations.json"
#: Estimator modules whose models SHAP's TreeExplainer reads.
_TREE_MODULES = ("sklearn.tree", "sklearn.ensemble", "xgboost", "lightgbm", "catboost")


def explain_model(
    model: Any, X: pd.DataFrame, y: pd.Series, task: str, spec: ExplainSpec
) -> dict[str, Any]:
    """Permutation importance (and maybe SHAP) of ``model`` on a sample of ``X``; JSON-safe."""
    from sklearn.inspection import permutation_importance
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    X = _sample(X, spec.max_rows, spec.seed)
    y = y.loc[X.index]
    X, y = X.reset_index(drop=True), y.reset_index(drop=True)
    # One thread: hundreds of predictions on a few thousand rows each, where OpenMP's
    # start-up and spinning cost more than they save (HistGradientBoosting: 0.25 s per
    # predict with the default threads on a busy 2-core machine, 0.014 s with one).
    with threadpool_limits(1):
        result = permutation_importance(
            model,
            X,
            y,
            scoring=_scorer(task),
            n_repeats=spec.n_repeats,
            random_state=spec.seed,
            n_jobs=1,
        )
    features = sorted(
        (
            {
                "feature": str(name),
                "importance_mean": float(mean),
                "importance_std": float(std),
            }
            for name, mean, std in zip(
                X.columns, result.importances_mean, result.importances_std, strict=True
            )
        ),
        key=lambda f: -f["importance_mean"],
    )
    record: dict[str, Any] = {
        "method": "permutation_importance",
        "scoring": "accuracy" if task == "classification" else "r2",
        "rows": len(X),
        "max_rows": spec.max_rows,
        "n_repeats": spec.n_repeats,
        "seed": spec.seed,
        "features": features,
    }
    record["shap"] = (
        shap_summary(model, _sample(X, spec.shap_rows, spec.seed))
        if spec.shap
        else {"skipped": "explain.shap is false"}
    )
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def _scorer(task: str) -> Any:
    """A scorer on ``predict`` only: works for sklearn models and MLflow pyfunc ones alike.

    Plain numpy, not ``sklearn.metrics``: their input checks cost about as much as the
    prediction itself, and the scorer runs ``n_repeats`` times per feature."""
    import numpy as np

    def accuracy(estimator: Any, X: Any, y: Any) -> float:
        return float(np.mean(np.asarray(estimator.predict(X)).ravel() == np.asarray(y)))

    def r2(estimator: Any, X: Any, y: Any) -> float:
        truth = np.asarray(y, dtype=float)
        residual = truth - np.asarray(estimator.predict(X), dtype=float).ravel()
        total = float(((truth - truth.mean()) ** 2).sum())
        return 1.0 - float((residual**2).sum()) / total if total else 0.0

    return accuracy if task == "classification" else r2


def shap_summary(model: Any, X: pd.DataFrame) -> dict[str, Any]:
    """Mean |SHAP| per input of a tree model, or ``{"skipped": why}``."""
    estimator, transform = _final_tree(model)
    if estimator is None:
        return _skipped(f"{type(_last_step(model)).__name__} is not a tree model")
    try:
        import shap
    except ImportError:
        return _skipped("the shap package is not installed (install the 'explain' extra)")
    import numpy as np

    try:
        data = X if transform is None else transform.transform(X)
        names = _names(transform, X, data.shape[1])
        values = np.asarray(shap.TreeExplainer(estimator).shap_values(data))
    except Exception as err:  # shap refuses some estimators: recorded, never a failed run
        log.warning("SHAP summary failed: %s", err)
        return {"error": f"{type(err).__name__}: {err}"}
    # Classifiers: one array per class, as a list (class, row, input) or with a trailing
    # class axis (row, input, class) depending on the shap version: average the classes.
    if values.ndim == 3:
        values = np.abs(values).mean(axis=2 if values.shape[0] == data.shape[0] else 0)
    else:
        values = np.abs(values)
    means = values.mean(axis=0)
    ranked = sorted(zip(names, means.tolist(), strict=True), key=lambda item: -item[1])
    return {
        "method": "shap.TreeExplainer",
        "rows": int(data.shape[0]),
        "features": [{"feature": n, "mean_abs_shap": float(v)} for n, v in ranked],
    }


def _sample(X: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """At most ``rows`` rows of ``X``, a seeded random sample when it has more."""
    return X.sample(n=rows, random_state=seed) if len(X) > rows else X


def _skipped(why: str) -> dict[str, Any]:
    log.info("SHAP summary skipped: %s", why)
    return {"skipped": why}


def _last_step(model: Any) -> Any:
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def _final_tree(model: Any) -> tuple[Any, Any]:
    """``(tree estimator, preprocessing pipeline or None)``; ``(None, None)`` for others."""
    estimator = _last_step(model)
    if not type(estimator).__module__.startswith(_TREE_MODULES):
        return None, None
    steps = getattr(model, "steps", None)
    return estimator, (model[:-1] if steps and len(steps) > 1 else None)


def _names(transform: Any, X: pd.DataFrame, width: int) -> list[str]:
    """Names of the tree's inputs: the preprocessing's output names, else positions."""
    if transform is None:
        return [str(c) for c in X.columns]
    try:
        names = [str(n) for n in transform.get_feature_names_out()]
    except Exception:  # a step without output names
        names = []
    return names if len(names) == width else [f"input_{i}" for i in range(width)]


def explanations_summary(record: dict[str, Any], top: int, artifact_path: str) -> dict[str, Any]:
    """The small part for XCom: the top features and whether SHAP ran."""
    if "error" in record:
        return {"artifact_path": artifact_path, "error": record["error"]}
    shap = record.get("shap") or {}
    return {
        "artifact_path": artifact_path,
        "method": record["method"],
        "rows": record["rows"],
        "top_features": [
            {"feature": f["feature"], "importance": round(f["importance_mean"], 6)}
            for f in record["features"][:top]
        ],
        "shap": "skipped: " + shap["skipped"] if "skipped" in shap else shap.get("method"),
        "seconds": record.get("seconds"),
    }
