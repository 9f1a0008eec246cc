"""Score a challenger and the current champion on rows neither trained on, then decide.

The holdout is the one recorded by training (``mlops.holdout.uri`` on the challenger's
run) and must still hash to ``mlops.holdout.sha256``: if the file changed, the comparison
would not be on the rows the training metrics describe, so a mismatch is an error, not a
warning. Both models are loaded from the registry by ``models:/`` URIs only (the logged
model ``models:/m-<id>`` for the challenger, ``models:/<name>/<version>`` for the champion,
the alias resolved to its version first so the record names exactly what was scored) and
both are scored with the same :mod:`airflow_mlops.core.metrics` functions as training.

With a champion, the rows compared are the holdout rows the champion did not train on
(:mod:`airflow_mlops.core.comparison`, from its recorded manifest and split), or only the
partitions after its window (``on="newest"``). Fewer than ``min_rows`` such rows and the
decision is "insufficient evidence". Each gated metric and the challenger-minus-champion
difference get a seeded bootstrap interval (:mod:`airflow_mlops.core.confidence`), which
``min_confidence`` policy rules read.

A little over 600 lines: scoring, the intervals and the record are one reading of "what did
this decision rest on"; the comparison-set rules live in :mod:`airflow_mlops.core.comparison`.

The result is a JSON-safe decision record (policy verdict, both models' metrics, per-slice
metrics, every rule with its values) that is logged as an MLflow artifact on the
challenger's run and returned to the operator for XCom.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from airflow_mlops.core.comparison import (
    ComparisonSet,
    champion_facts,
    comparison_set,
    run_manifest,
)
from airflow_mlops.core.datasets import SOURCE_FILE_COLUMN
from airflow_mlops.core.drift_check import TRAINING_DRIFT_ARTIFACT
from airflow_mlops.core.errors import ConfigError, DataError, MlflowConnectionError
from airflow_mlops.core.explanations import (
    EXPLANATIONS_ARTIFACT,
    ExplainSpec,
    explain_model,
    explanations_summary,
    parse_explain,
)
from airflow_mlops.core.fairness import (
    FAIRNESS_ARTIFACT,
    FairnessSpec,
    check_sensitive_columns,
    fairness_rules,
    fairness_summary,
    measure_fairness,
    parse_fairness,
)
from airflow_mlops.core.lineage import (
    TAG_DECISION_CHAMPION,
    TAG_DECISION_PROMOTE,
    TAG_DECISION_REASON,
    TAG_FEATURES,
    TAG_HOLDOUT_SHA256,
    TAG_HOLDOUT_URI,
    TAG_MODEL_NAME,
    TAG_MODEL_URI,
    TAG_REFERENCE_URI,
    TAG_TARGET,
    TAG_TASK,
)
from airflow_mlops.core.metrics import compute_metrics, predict_for_metrics, validate_task
from airflow_mlops.core.mlflow_client import run_location
from airflow_mlops.core.model_uri import parse_model_uri
from airflow_mlops.core.policy import (
    DEFAULT_MIN_ROWS,
    EVALUATION_ON,
    Evidence,
    PromotionPolicy,
    decide,
    parse_policy,
)
from airflow_mlops.core.provenance import ModelTrust, verified_local_copy
from airflow_mlops.core.registry import CHAMPION, Champion, resolve_champion
from airflow_mlops.core.stable_split import StableSplit
from airflow_mlops.core.storage import Storage, TableRead

__all__ = [
    "DECISION_ARTIFACT",
    "Challenger",
    "Evaluation",
    "ModelScore",
    "challenger_from_training",
    "evaluate_challenger",
    "input_columns",
    "load_holdout",
    "load_model_for_scoring",
    "log_artifacts",
    "log_record",
    "model_input",
    "score_model",
    "slice_masks",
    "tag_decision",
    "xcom_summary",
]

log = logging.getLogger(__name__)

DECISION_ARTIFACT = "mlops/decision.json"
_RUN_TAG_VALUE_LIMIT = 5000  # stay well under MLflow's run tag limit (8000)


@dataclass(frozen=True)
class Challenger:
    """Where the challenger comes from: its training run, logged model and lineage facts."""

    run_id: str
    model_uri: str
    holdout_uri: str
    holdout_sha256: str
    task: str
    target: str
    features: list[str] | None
    model_name: str | None
    split_seed: int = 0  # seeds the bootstrap intervals, so a rerun gives the same ones

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model_uri": self.model_uri,
            "task": self.task,
            "target": self.target,
            "features": self.features,
        }


@dataclass(frozen=True)
class ModelScore:
    """Metrics of one model on the holdout, overall and per slice (None: empty slice), and
    the predictions they come from (for the bootstrap intervals)."""

    metrics: dict[str, float]
    slices: dict[str, dict[str, float] | None]
    y_pred: np.ndarray | None = None
    y_score: np.ndarray | None = None


# -- inputs ---------------------------------------------------------------------------------


def challenger_from_training(
    client: MlflowClient, training_result: Mapping[str, Any]
) -> Challenger:
    """Read the challenger's lineage from its training run; the run's tags are the truth.

    ``training_result`` is the XCom of the training task (at least ``run_id``). When it also
    carries ``model_uri``/``holdout_uri``/``holdout_sha256`` they must agree with the run's
    tags: a disagreement means the XCom and MLflow describe different models.
    """
    if not isinstance(training_result, Mapping) or not training_result.get("run_id"):
        raise ConfigError(
            "training_result must be the training task's result, a mapping with at least "
            f"'run_id'; got {training_result!r}"
        )
    run_id = str(training_result["run_id"])
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise DataError(f"training run {run_id} cannot be read from MLflow: {err}") from err
    tags = run.data.tags
    recorded = {
        "model_uri": tags.get(TAG_MODEL_URI) or training_result.get("model_uri"),
        "holdout_uri": tags.get(TAG_HOLDOUT_URI),
        "holdout_sha256": tags.get(TAG_HOLDOUT_SHA256),
        "target": tags.get(TAG_TARGET),
        "task": tags.get(TAG_TASK) or training_result.get("task"),
    }
    missing = [
        tag
        for tag, key in (
            (TAG_MODEL_URI, "model_uri"),
            (TAG_HOLDOUT_URI, "holdout_uri"),
            (TAG_HOLDOUT_SHA256, "holdout_sha256"),
            (TAG_TARGET, "target"),
            (TAG_TASK, "task"),
        )
        if not recorded[key]
    ]
    if missing:
        raise DataError(
            f"training run {run_id} lacks the lineage tags {missing}: evaluation cannot know "
            "which holdout to score on (was it logged by TrainModelOperator?)"
        )
    for key in ("model_uri", "holdout_uri", "holdout_sha256"):
        given = training_result.get(key)
        if given and str(given) != recorded[key]:
            raise DataError(
                f"training_result[{key!r}] is {given!r} but run {run_id} records "
                f"{recorded[key]!r}: the XCom and MLflow disagree, refusing to evaluate"
            )
    parse_model_uri(recorded["model_uri"])  # only registry URIs load
    return Challenger(
        run_id=run_id,
        model_uri=recorded["model_uri"],
        holdout_uri=recorded["holdout_uri"],
        holdout_sha256=recorded["holdout_sha256"],
        task=validate_task(recorded["task"]),
        target=recorded["target"],
        features=_features_from_tags(tags),
        model_name=tags.get(TAG_MODEL_NAME) or training_result.get("model_name"),
        split_seed=_split_seed(tags),
    )


def _split_seed(tags: Mapping[str, str]) -> int:
    try:
        split = StableSplit.from_tags(tags)
    except DataError:
        return 0
    return 0 if split is None else split.seed


def _features_from_tags(tags: Mapping[str, str]) -> list[str] | None:
    raw = tags.get(TAG_FEATURES)
    if not raw:
        return None
    try:
        features = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return [str(f) for f in features] if isinstance(features, list) else None


def load_holdout(storage: Storage, challenger: Challenger) -> TableRead:
    """Read the recorded holdout and check its hash against the one training recorded."""
    table = storage.read_table(challenger.holdout_uri)
    if table.sha256 != challenger.holdout_sha256:
        raise DataError(
            f"holdout {challenger.holdout_uri} has sha256 {table.sha256} but training run "
            f"{challenger.run_id} recorded {TAG_HOLDOUT_SHA256}={challenger.holdout_sha256}: "
            "the file changed since training, so the champion and challenger cannot be "
            "compared on the rows the training metrics describe"
        )
    if challenger.target not in table.frame.columns:
        raise DataError(
            f"holdout {challenger.holdout_uri} has no target column {challenger.target!r} "
            f"(columns: {table.columns})"
        )
    if table.rows == 0:
        raise DataError(f"holdout {challenger.holdout_uri} has no rows")
    return table


# -- scoring --------------------------------------------------------------------------------


def load_model_for_scoring(
    model_uri: str, *, client: MlflowClient | None = None, trust: ModelTrust | None = None
) -> tuple[Any, Any]:
    """Load a model by registry URI; the sklearn flavour when present (for probabilities).

    Returns ``(model, model_info)``. Any other flavour loads through ``mlflow.pyfunc`` and
    yields predictions only (no ``roc_auc``/``log_loss``). The model is downloaded and
    checked first (``trust``, see :mod:`airflow_mlops.core.provenance`); an untrusted one
    raises :class:`~airflow_mlops.core.errors.UntrustedModelError` before any unpickling.
    ``client`` defaults to one on the current MLflow configuration.
    """
    import shutil
    import tempfile
    import weakref

    import mlflow
    from mlflow.models import Model

    uri = parse_model_uri(model_uri).uri
    client = client or MlflowClient()
    try:
        work_dir = tempfile.mkdtemp(prefix="mlops-model-")
        local = verified_local_copy(client, uri, work_dir, trust)
        info = Model.load(local)
        if "sklearn" in (info.flavors or {}):
            model = mlflow.sklearn.load_model(local)
        else:
            model = mlflow.pyfunc.load_model(local)
        # The files must outlive the load (some flavours read them lazily): they go with
        # the model object, or now when it cannot be weakly referenced.
        try:
            weakref.finalize(model, shutil.rmtree, work_dir, True)
        except TypeError:
            shutil.rmtree(work_dir, ignore_errors=True)
        return model, info
    except MlflowException as err:
        raise DataError(f"model {uri} cannot be loaded from the registry: {err}") from err


def input_columns(info: Any, fallback: Sequence[str] | None) -> list[str] | None:
    """Column names the model's signature expects, else ``fallback``."""
    signature = getattr(info, "signature", None)
    if signature is not None and signature.inputs is not None:
        try:
            names = signature.inputs.input_names()
        except Exception:  # tensor signatures have no column names
            names = None
        if names and all(isinstance(n, str) for n in names):
            return list(names)
    return list(fallback) if fallback else None


def model_input(
    frame: pd.DataFrame, columns: Sequence[str] | None, target: str, label: str
) -> pd.DataFrame:
    """The holdout's feature columns for one model; missing columns are an error."""
    if columns is None:  # every column but the target and the row's source file
        return frame.drop(columns=[target, SOURCE_FILE_COLUMN], errors="ignore")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{label} needs columns {missing} that the holdout does not have: it cannot be "
            "scored on the same rows as the other model"
        )
    return frame[list(columns)]


def slice_masks(
    frame: pd.DataFrame, slices: Mapping[str, Sequence[Any]] | None
) -> dict[str, np.ndarray]:
    """``{"column=value": boolean mask}`` for each requested slice value."""
    masks: dict[str, np.ndarray] = {}
    for column, values in (slices or {}).items():
        if column not in frame.columns:
            raise ConfigError(
                f"slices: column {column!r} is not in the holdout (columns: {list(frame.columns)})"
            )
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise ConfigError(f"slices[{column!r}] must be a list of values, got {values!r}")
        series = frame[column]
        for value in values:
            mask = (series == value).to_numpy()
            if not mask.any():
                # Values from JSON/YAML arrive as text; compare as text before giving up.
                mask = (series.astype(str) == str(value)).to_numpy()
            masks[f"{column}={value}"] = mask
    return masks


def score_model(
    model: Any,
    X: pd.DataFrame,
    y: pd.Series,
    task: str,
    masks: Mapping[str, np.ndarray],
) -> ModelScore:
    """Predict once, then compute overall and per-slice metrics from the same predictions."""
    y_pred, y_score = predict_for_metrics(model, X, task)
    y_true = y.to_numpy()
    metrics = compute_metrics(task, y_true, y_pred, y_score)
    per_slice: dict[str, dict[str, float] | None] = {}
    for name, mask in masks.items():
        if not mask.any():
            per_slice[name] = None
            continue
        per_slice[name] = compute_metrics(
            task, y_true[mask], y_pred[mask], None if y_score is None else y_score[mask]
        )
    return ModelScore(metrics=metrics, slices=per_slice, y_pred=y_pred, y_score=y_score)


# -- the whole evaluation -------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """A decision and its full record (JSON-safe), and the larger tables to log beside it
    (``{artifact path: JSON-safe dict}``: fairness per group, explanations)."""

    record: dict[str, Any]
    artifacts: Mapping[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def promote(self) -> bool:
        return bool(self.record["promote"])

    @property
    def champion_version(self) -> str | None:
        champion = self.record.get("champion")
        return None if champion is None else champion["version"]


def evaluate_challenger(
    client: MlflowClient,
    storage: Storage,
    challenger: Challenger,
    *,
    model_name: str,
    policy: PromotionPolicy | Mapping[str, Any] | str,
    slices: Mapping[str, Sequence[Any]] | None = None,
    champion_alias: str = CHAMPION,
    champion: Champion | str | None = "resolve",
    trust: ModelTrust | None = None,
    on: str = "holdout",
    min_rows: int = DEFAULT_MIN_ROWS,
    confidence: float = 0.95,
    fairness: FairnessSpec | Mapping[str, Any] | None = None,
    explain: ExplainSpec | Mapping[str, Any] | bool = False,
    training_drift: bool = False,
) -> Evaluation:
    """Score the challenger and the champion on the rows neither trained on, and decide.

    ``champion="resolve"`` reads the alias now; pass a :class:`Champion` (or None) to score
    against a specific version, as promotion does when the alias moved since evaluation.
    ``on``/``min_rows``: ``evaluation.on`` and ``evaluation.min_rows`` (see
    :mod:`airflow_mlops.core.comparison`); ``confidence``: level of the recorded intervals.
    Both models are checked under ``trust`` before they load (see ``core.provenance``).
    ``fairness``: the fairness gate (:mod:`airflow_mlops.core.fairness`), measured on the
    same rows; ``explain``: the challenger's permutation importance
    (:mod:`airflow_mlops.core.explanations`), off by default here; ``training_drift``: the
    drift of the challenger's training reference against the champion's
    (:func:`airflow_mlops.core.drift_check.training_data_drift`), off by default here (the
    evaluate task turns it on; batched segments and re-evaluations do not pay for it).
    """
    policy = parse_policy(policy)
    fairness_spec = parse_fairness(fairness)
    explain_spec = parse_explain(explain)
    if fairness_spec is not None and challenger.task != "classification":
        raise ConfigError(
            f"evaluation.fairness needs a classification model; {challenger.model_uri} is a "
            f"{challenger.task} model"
        )
    min_rows = _check_min_rows(min_rows)
    if on not in EVALUATION_ON:
        raise ConfigError(f"evaluation.on must be one of {list(EVALUATION_ON)}, got {on!r}")
    holdout = load_holdout(storage, challenger)
    if champion == "resolve":
        champion = resolve_champion(client, model_name, champion_alias)
    comparison = None
    frame = holdout.frame
    if champion is not None:
        facts = champion_facts(client, storage, champion)
        comparison = comparison_set(
            frame, facts, challenger_manifest=run_manifest(client, challenger.run_id), on=on
        )
        log.info("Comparison set: %s", comparison.to_record())
        if comparison.rows_compared >= min_rows:
            frame = frame[comparison.mask].reset_index(drop=True)
    compared = champion is None or (comparison is not None and comparison.rows_compared >= min_rows)
    y = frame[challenger.target]
    masks = slice_masks(frame, slices)

    model, info = load_model_for_scoring(challenger.model_uri, client=client, trust=trust)
    X = model_input(
        frame,
        input_columns(info, challenger.features),
        challenger.target,
        f"challenger {challenger.model_uri}",
    )
    if fairness_spec is not None:
        check_sensitive_columns(fairness_spec, list(frame.columns), list(X.columns))
    challenger_score = score_model(model, X, y, challenger.task, masks)

    champion_score = None
    if champion is not None:
        # Loaded (and its provenance checked) even when too few rows are comparable: an
        # untrusted champion is reported as such, not hidden behind "insufficient evidence".
        champion_model, champion_info = load_model_for_scoring(
            champion.model_uri, client=client, trust=trust
        )
    if champion is not None and compared:
        fallback = _champion_features(client, champion)
        X_b = model_input(
            frame,
            input_columns(champion_info, fallback),
            challenger.target,
            f"champion {champion.model_uri}",
        )
        champion_score = score_model(champion_model, X_b, y, challenger.task, masks)

    slice_metrics = None
    if masks and compared:
        slice_metrics = {
            name: {
                "rows": int(mask.sum()),
                "challenger": challenger_score.slices[name],
                "champion": None if champion_score is None else champion_score.slices[name],
            }
            for name, mask in masks.items()
        }
    intervals, bounds, interval_error = metric_intervals(
        policy, y.to_numpy(), challenger_score, champion_score, challenger.split_seed, confidence
    )
    evidence = None
    if comparison is not None:
        evidence = Evidence(
            rows_compared=comparison.rows_compared,
            min_rows=min_rows,
            rows_excluded=comparison.rows_excluded,
            difference_bounds=bounds,
            interval_error=interval_error,
        )
    artifacts: dict[str, dict[str, Any]] = {}
    extra_rules = []
    if fairness_spec is not None:
        measured = measure_fairness(
            fairness_spec,
            frame,
            y.to_numpy(),
            challenger_score.y_pred,
            None if champion_score is None else champion_score.y_pred,
        )
        extra_rules = fairness_rules(measured, fairness_spec)
        artifacts[FAIRNESS_ARTIFACT] = {
            "spec": fairness_spec.model_dump(mode="json"),
            **measured,
            "rules": [r.to_dict() for r in extra_rules],
        }
    decision = decide(
        challenger_score.metrics,
        None if champion_score is None else champion_score.metrics,
        policy,
        slice_metrics,
        evidence,
        extra_rules,
    )
    record = decision.to_record()
    if fairness_spec is not None:
        record["fairness"] = fairness_summary(extra_rules, FAIRNESS_ARTIFACT)
    if explain_spec.enabled:
        explained = _explain(model, X, y, challenger.task, explain_spec)
        artifacts[EXPLANATIONS_ARTIFACT] = explained
        record["explanations"] = explanations_summary(
            explained, explain_spec.top, EXPLANATIONS_ARTIFACT
        )
    if training_drift:
        drift = _training_drift(client, storage, challenger, champion)
        artifacts[TRAINING_DRIFT_ARTIFACT] = drift
        record["training_drift"] = _training_drift_summary(drift)
    comparison_record = _comparison_record(comparison, holdout.rows, on)
    record.update(
        {
            "reason": _with_evidence(decision.reason, comparison_record, intervals),
            "model_name": model_name,
            "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "challenger": challenger.to_dict(),
            "champion": None if champion is None else champion.to_dict(),
            "champion_alias": champion_alias,
            "holdout": holdout.lineage(),
            "slices": None if not slices else {k: list(v) for k, v in slices.items()},
            "comparison": comparison_record,
            "rows_compared": comparison_record["rows_compared"],
            "rows_excluded": comparison_record["rows_excluded"],
            "min_rows": min_rows,
            "intervals": intervals,
            "metrics_rows": "comparison" if compared else "challenger holdout (no comparison)",
        }
    )
    return Evaluation(
        record=json.loads(json.dumps(record, default=str)),
        artifacts={k: json.loads(json.dumps(v, default=str)) for k, v in artifacts.items()},
    )


def _explain(model: Any, X: pd.DataFrame, y: pd.Series, task: str, spec: ExplainSpec) -> dict:
    """Explanations inform, never gate: a failure is recorded and logged, the decision stands."""
    try:
        return explain_model(model, X, y, task, spec)
    except Exception as err:  # e.g. a pyfunc model refusing a shuffled column's dtype
        log.warning("Explanations of the challenger failed: %s", err)
        return {"error": f"{type(err).__name__}: {err}"}


def _training_drift(
    client: MlflowClient, storage: Storage, challenger: Challenger, champion: Champion | None
) -> dict[str, Any]:
    """The challenger's training data against the champion's (the version scored above).

    Evidence for the reviewer, never a gate: a failure is recorded and logged."""
    import time

    from airflow_mlops.core.drift_check import training_data_drift

    if champion is None:
        return {"status": "first_model", "note": "first model: no previous champion"}
    base = {"champion_version": champion.version, "champion_run_id": champion.run_id}
    try:
        uris = {
            "challenger": client.get_run(challenger.run_id).data.tags.get(TAG_REFERENCE_URI),
            "champion": champion.run_id
            and client.get_run(champion.run_id).data.tags.get(TAG_REFERENCE_URI),
        }
    except MlflowException as err:
        return {**base, "status": "not computed", "note": f"a run cannot be read: {err}"}
    missing = [side for side, uri in uris.items() if not uri]
    if missing:
        note = f"the {' and '.join(missing)} run has no {TAG_REFERENCE_URI} tag"
        return {**base, "status": "not computed", "note": note, "reference_uris": uris}
    started = time.monotonic()
    try:
        drift = training_data_drift(storage, uris["challenger"], uris["champion"])
    except Exception as err:  # schema change, unreadable file: said in the card, not raised
        log.warning("Training-data drift against champion v%s failed: %s", champion.version, err)
        drift = {"status": "error", "error": f"{type(err).__name__}: {err}"}
    seconds = round(time.monotonic() - started, 2)
    log.info("Training-data drift against champion v%s took %.2f s", champion.version, seconds)
    return {**base, **drift, "reference_uris": uris, "seconds": seconds}


def _training_drift_summary(drift: Mapping[str, Any]) -> dict[str, Any]:
    """The decision record's line about the training-data drift (the artifact has it all)."""
    dataset = drift.get("dataset") or {}
    return {
        "status": drift.get("status"),
        "champion_version": drift.get("champion_version"),
        "drifted": dataset.get("drifted"),
        "drifted_share": dataset.get("drifted_share"),
        "drifted_columns": [c["column"] for c in drift.get("drifted_columns") or []],
        "note": drift.get("note") or drift.get("error"),
        "artifact_path": TRAINING_DRIFT_ARTIFACT,
    }


def _check_min_rows(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"evaluation.min_rows must be a positive integer, got {value!r}")
    return value


def _comparison_record(comparison: ComparisonSet | None, rows: int, on: str) -> dict[str, Any]:
    if comparison is not None:
        return comparison.to_record()
    return {
        "on": on,
        "basis": "first_model",
        "rows_holdout": rows,
        "rows_compared": rows,
        "rows_excluded": 0,
        "excluded_because": {},
        "explanation": "no champion: the challenger is judged on its whole holdout",
    }


def metric_intervals(
    policy: PromotionPolicy,
    y_true: np.ndarray,
    challenger: ModelScore,
    champion: ModelScore | None,
    seed: int,
    confidence: float,
) -> tuple[dict[str, Any], dict[str, dict[str, float]], str | None]:
    """Bootstrap intervals of each gated metric (and the difference, with a champion).

    Returns ``(record, bounds, error)``: ``record`` maps a metric to ``{challenger, champion,
    difference}`` intervals at ``confidence`` (or ``{"error": ...}``); ``bounds`` the
    difference interval at each ``min_confidence`` level the policy asks for; ``error`` the
    first reason an interval could not be computed.
    """
    from airflow_mlops.core.confidence import METRICS, compare_intervals

    levels = policy.confidence_levels()
    record: dict[str, Any] = {}
    bounds: dict[str, dict[str, float]] = {}
    first_error = None
    for metric in policy.named_metrics():
        if metric not in METRICS or metric not in challenger.metrics:
            continue
        if champion is not None and metric not in champion.metrics:
            continue
        wanted = [confidence, *([levels[metric]] if metric in levels else [])]
        try:
            computed = [
                compare_intervals(
                    [metric],
                    y_true,
                    challenger.y_pred,
                    None if champion is None else champion.y_pred,
                    score_a=challenger.y_score,
                    score_b=None if champion is None else champion.y_score,
                    seed=seed,
                    confidence=level,
                )[metric]
                for level in dict.fromkeys(wanted)
            ]
        except DataError as err:  # too few rows, degenerate resamples, undefined metric
            record[metric] = {"error": str(err)}
            first_error = first_error or f"{metric}: {err}"
            continue
        names = {"a": "challenger", "b": "champion", "difference": "difference"}
        record[metric] = {names[k]: v.to_dict() for k, v in computed[0].items()}
        if metric in levels and "difference" in computed[-1]:
            diff = computed[-1]["difference"]
            bounds[metric] = {"confidence": diff.confidence, "low": diff.low, "high": diff.high}
    return record, bounds, first_error


def _with_evidence(reason: str, comparison: Mapping[str, Any], intervals: Mapping[str, Any]) -> str:
    """The policy's reason plus what it rests on: rows compared/excluded, the differences."""
    if comparison["basis"] == "first_model":
        return reason
    because = ", ".join(f"{n} {why}" for why, n in comparison["excluded_because"].items() if n)
    text = (
        f"{reason} [rows compared {comparison['rows_compared']}, excluded "
        f"{comparison['rows_excluded']}{f' ({because})' if because else ''}; "
        f"on={comparison['on']}, basis={comparison['basis']}"
    )
    for metric, entry in intervals.items():
        diff = entry.get("difference")
        if diff:
            text += (
                f"; {metric} difference {diff['estimate']:+.4f} "
                f"[{diff['low']:+.4f}, {diff['high']:+.4f}] ({diff['confidence']:.0%})"
            )
    return text + "]"


def _champion_features(client: MlflowClient, champion: Champion) -> list[str] | None:
    """The champion's training features, from its run's tags (when its signature has none)."""
    if not champion.run_id:
        return None
    try:
        return _features_from_tags(client.get_run(champion.run_id).data.tags)
    except MlflowException:
        return None


def log_record(
    client: MlflowClient, run_id: str, record: Mapping[str, Any], artifact_file: str
) -> str:
    """Log ``record`` as a JSON artifact on ``run_id`` (overwrites on retry); return its URI."""
    try:
        client.log_dict(run_id, dict(record), artifact_file)
        artifact_uri = run_location(client, run_id).artifact_uri
    except MlflowException as err:
        raise MlflowConnectionError(
            f"could not store {artifact_file} on MLflow run {run_id}: {err}"
        ) from err
    return f"{artifact_uri.rstrip('/')}/{artifact_file}"


def log_artifacts(client: MlflowClient, run_id: str, evaluation: Evaluation) -> dict[str, Any]:
    """Log the evaluation's tables on ``run_id``; the record with their URIs filled in."""
    record = dict(evaluation.record)
    for path, payload in evaluation.artifacts.items():
        uri = log_record(client, run_id, payload, path)
        for key in ("fairness", "explanations", "training_drift"):
            if isinstance(record.get(key), dict) and record[key].get("artifact_path") == path:
                record[key] = {**record[key], "artifact_uri": uri}
    return record


def tag_decision(client: MlflowClient, run_id: str, record: Mapping[str, Any]) -> None:
    """Searchable summary of the decision on the challenger's run."""
    from mlflow.entities import RunTag

    champion = record.get("champion") or {}
    tags = [
        RunTag(TAG_DECISION_PROMOTE, str(bool(record["promote"])).lower()),
        RunTag(TAG_DECISION_REASON, str(record["reason"])[:_RUN_TAG_VALUE_LIMIT]),
        RunTag(TAG_DECISION_CHAMPION, str(champion.get("version") or "none")),
    ]
    client.log_batch(run_id, tags=tags)


def xcom_summary(record: Mapping[str, Any], artifact_uri: str) -> dict[str, Any]:
    """The evaluation XCom: the decision record plus where it is stored."""
    return {**record, "decision_artifact_uri": artifact_uri}
