"""A model card per registered version: what it is for, what it learned from, how it was
judged and who decided, written once when the promotion decision is final.

The card is built only from what the run already recorded (the version and its run's tags,
params and metrics, the manifest, the decision and promotion records, the fairness and
explanation artifacts) plus the two facts the promote task holds (the pipeline's description
and the validate task's summary). It is stored on the version's run as
``mlops/model_card.json`` (canonical JSON, whose sha256 is tagged on the version as
``mlops.model_card.sha256``) and ``mlops/model_card.html`` (self-contained: inline CSS, no
script, a Content-Security-Policy that allows none, every value escaped).

Before the decision, the approval task writes a *pending* card of the version it asks about
(:func:`write_pending_card`: the same sections, the decision "awaiting approval" with its
approvers and policy) at ``mlops/model_card/pending/model_card.{json,html}`` and tags its hash
as ``mlops.model_card.pending``; it never touches the final card or its tag. The MLOps page
serves exactly these four paths (:data:`CARD_ARTIFACTS`, :func:`card_route`).

Immutable: once the version carries the hash tag, :func:`store_model_card` keeps that card;
the card holds no clock reading of its own, so a retried promote task rebuilds the same bytes.
:func:`read_model_card` refuses a card whose bytes no longer match the tag.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.drift_check import TRAINING_DRIFT_ARTIFACT
from airflow_mlops.core.errors import MlopsError
from airflow_mlops.core.lineage import (
    MANIFEST_ARTIFACT_PATH,
    TAG_CLASS_BALANCE,
    TAG_DAG_ID,
    TAG_DATA_FILES,
    TAG_DATA_MANIFEST_HASH,
    TAG_DATA_URI,
    TAG_DATA_WINDOW,
    TAG_ESTIMATOR,
    TAG_FEATURES,
    TAG_FEATURES_URI,
    TAG_GIT_COMMIT,
    TAG_MAP_INDEX,
    TAG_PIPELINE,
    TAG_PIPELINE_CONFIG_HASH,
    TAG_PROVIDER_VERSION,
    TAG_RUN_ID,
    TAG_SEARCH_BEST_PARAMS,
    TAG_SPLIT,
    TAG_TARGET,
    TAG_TASK,
    TAG_TASK_ID,
    TAG_TRIGGER,
    TAG_TRY_NUMBER,
)
from airflow_mlops.core.shadow import TAG_SHADOW_PARTITIONS

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

__all__ = [
    "CARD_ARTIFACTS",
    "MODEL_CARD_HTML",
    "MODEL_CARD_JSON",
    "PENDING_CARD_HTML",
    "PENDING_CARD_JSON",
    "TAG_MODEL_CARD_PENDING",
    "TAG_MODEL_CARD_SHA256",
    "ModelCardError",
    "ModelCardRef",
    "build_model_card",
    "card_artifact_for",
    "card_bytes",
    "card_route",
    "read_model_card",
    "render_html",
    "store_model_card",
    "write_model_card",
    "write_pending_card",
]

MODEL_CARD_JSON = "mlops/model_card.json"
MODEL_CARD_HTML = "mlops/model_card.html"
TAG_MODEL_CARD_SHA256 = "mlops.model_card.sha256"
PENDING_CARD_JSON = "mlops/model_card/pending/model_card.json"
PENDING_CARD_HTML = "mlops/model_card/pending/model_card.html"
TAG_MODEL_CARD_PENDING = "mlops.model_card.pending"
#: The only run artifacts the MLOps page serves besides the report folders.
CARD_ARTIFACTS = (MODEL_CARD_HTML, MODEL_CARD_JSON, PENDING_CARD_HTML, PENDING_CARD_JSON)
CARD_SCHEMA_VERSION = 1
# The card lists this many manifest files; the count, bytes and content hash cover them all.
MAX_LISTED_FILES = 50
_FAIRNESS_ARTIFACT = "mlops/fairness.json"
_EXPLANATIONS_ARTIFACT = "mlops/explanations.json"
_DECISION_ARTIFACT = "mlops/decision.json"
_PROMOTION_ARTIFACT = "mlops/promotion.json"
# A batched segment's training task id: ``<task>[<segment>]`` (core.segment_batch).
_BATCHED_TASK_ID = re.compile(r"\[[^\]]+\]$")


class ModelCardError(MlopsError):
    """A card cannot be built, is missing, or no longer matches its recorded hash."""


@dataclass(frozen=True)
class ModelCardRef:
    """Where a version's card is and the sha256 of its JSON bytes."""

    json_uri: str
    html_uri: str
    sha256: str
    written: bool  # False when the version already had its card

    def to_dict(self) -> dict[str, Any]:
        return {
            "json_uri": self.json_uri,
            "html_uri": self.html_uri,
            "sha256": self.sha256,
            "written": self.written,
        }


# -- building -------------------------------------------------------------------------------


def build_model_card(
    client: MlflowClient,
    model_name: str,
    version: str,
    *,
    intended_use: str = "",
    validation: Mapping[str, Any] | None = None,
    promotion: Mapping[str, Any] | None = None,
    shadow_requirement: Mapping[str, Any] | None = None,
    model_version: ModelVersion | None = None,
) -> dict[str, Any]:
    """The card of ``model_name`` ``version`` from its recorded facts (JSON-safe).

    ``promotion`` is the promote task's record (``mlops/promotion.json``); read from the run
    when not given. ``validation`` is the validate task's summary, ``None`` when the pipeline
    validates nothing. ``shadow_requirement`` (``required_partitions``, ``metric``,
    ``min_delta``) judges the shadow record when the promotion record has no shadow verdict.
    ``model_version``: the version as the caller just read it (else read here).
    """
    from airflow_mlops.core.mlflow_client import read_run_text

    model_version = model_version or client.get_model_version(model_name, str(version))
    run_id = model_version.run_id
    if not run_id:
        raise ModelCardError(f"{model_name} v{version} has no training run to describe")
    run = client.get_run(run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics

    def artifact(path: str) -> Any:
        text = read_run_text(client, run_id, path)
        return None if text is None else json.loads(text)

    if promotion is None:
        promotion = artifact(_PROMOTION_ARTIFACT)
    decision = dict((promotion or {}).get("decision") or artifact(_DECISION_ARTIFACT) or {})
    card = {
        "schema_version": CARD_SCHEMA_VERSION,
        "model": {
            "name": model_name,
            "version": str(version),
            "run_id": run_id,
            "source": model_version.source,
            "registered_at_ms": model_version.creation_timestamp,
            "task": tags.get(TAG_TASK),
        },
        "intended_use": intended_use or "(the pipeline has no description)",
        "data": _data_section(tags, params, artifact(MANIFEST_ARTIFACT_PATH), validation),
        "training": _training_section(tags, params, metrics),
        # Each evaluation artifact is read only when the decision record names it.
        "evaluation": _evaluation_section(
            decision,
            artifact(_FAIRNESS_ARTIFACT) if decision.get("fairness") else None,
            artifact(_EXPLANATIONS_ARTIFACT) if decision.get("explanations") else None,
        ),
        "drift": _drift_section(
            tags,
            decision,
            artifact(TRAINING_DRIFT_ARTIFACT) if decision.get("training_drift") else None,
        ),
        "decision": _decision_section(decision, promotion),
        "lineage": _lineage_section(tags),
    }
    # The promote step's shadow_evidence verdict and the shadow records it judged, if any.
    shadow_gate = (promotion or {}).get("shadow")
    card["evaluation"]["shadow"] = shadow_gate
    card["evaluation"]["shadow_record"] = (
        _shadow_record(client, run_id, decision, shadow_gate, shadow_requirement)
        if tags.get(TAG_SHADOW_PARTITIONS)  # no extra MLflow read for a run without a record
        else None
    )
    return json.loads(json.dumps(card, default=str))


def _shadow_record(
    client: MlflowClient,
    run_id: str,
    decision: Mapping[str, Any],
    gate: Mapping[str, Any] | None,
    requirement: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """The challenger's shadow record beside the champion it was evaluated against; the
    rule's verdict is the promote step's when it judged one, else judged from ``requirement``."""
    from airflow_mlops.core.shadow import read_shadow_records, shadow_summary

    requirement = dict(requirement or {})
    if gate:
        requirement = {"metric": gate.get("metric")}  # the verdict below is the gate's own
    champion = (decision.get("champion") or {}).get("version")
    try:
        records = read_shadow_records(client, run_id)
    except MlopsError as err:  # a broken record is shown as such; the card is still written
        return {"error": str(err)}
    summary = shadow_summary(
        records,
        champion_version=None if champion is None else str(champion),
        metric=requirement.get("metric"),
        required=requirement.get("required_partitions"),
        min_delta=float(requirement.get("min_delta") or 0.0),
    )
    if summary is not None and gate:
        summary["required_partitions"] = gate.get("required_partitions")
        summary["rule"] = {
            "verdict": gate.get("verdict"),
            "met": gate.get("verdict") == "pass",
            "detail": gate.get("detail"),
        }
    return summary


def _data_section(
    tags: Mapping[str, str],
    params: Mapping[str, str],
    manifest: Mapping[str, Any] | None,
    validation: Mapping[str, Any] | None,
) -> dict[str, Any]:
    files = list((manifest or {}).get("files") or [])
    return {
        "uri": tags.get(TAG_DATA_URI),
        "window": tags.get(TAG_DATA_WINDOW),
        "target": tags.get(TAG_TARGET),
        "features": _json_or_none(tags.get(TAG_FEATURES)) or tags.get(TAG_FEATURES_URI),
        "manifest": {
            "content_hash": tags.get(TAG_DATA_MANIFEST_HASH),
            "files": len(files) if manifest else _as_int(tags.get(TAG_DATA_FILES)),
            "total_bytes": sum(int(f.get("size") or 0) for f in files) if manifest else None,
            "listed": [
                {k: f.get(k) for k in ("path", "size", "sha256", "partition")}
                for f in files[:MAX_LISTED_FILES]
            ],
            "recorded": manifest is not None,
        },
        "rows": {
            "train": _as_int(params.get("train_rows")),
            "holdout": _as_int(params.get("holdout_rows")),
        },
        "class_balance": _json_or_none(tags.get(TAG_CLASS_BALANCE)),
        "validation": (
            dict(validation)
            if validation
            else {"status": "not run", "note": "the pipeline has no validation suite"}
        ),
    }


def _training_section(
    tags: Mapping[str, str], params: Mapping[str, str], metrics: Mapping[str, float]
) -> dict[str, Any]:
    return {
        "estimator": tags.get(TAG_ESTIMATOR) or params.get("estimator"),
        "preprocessing": params.get("preprocessing"),
        "params": {
            k.removeprefix("model."): v for k, v in params.items() if k.startswith("model.")
        },
        "split": _json_or_none(tags.get(TAG_SPLIT)),
        "search": {
            "best_params": _json_or_none(tags.get(TAG_SEARCH_BEST_PARAMS)),
            "cv_best_score": metrics.get("cv_best_score"),
        }
        if tags.get(TAG_SEARCH_BEST_PARAMS)
        else None,
        "holdout_metrics": {
            k.removeprefix("holdout_"): v for k, v in metrics.items() if k.startswith("holdout_")
        },
    }


def _evaluation_section(
    decision: Mapping[str, Any],
    fairness: Mapping[str, Any] | None,
    explanations: Mapping[str, Any] | None,
) -> dict[str, Any]:
    return {
        "evaluated_at": decision.get("evaluated_at"),
        "on": (decision.get("comparison") or {}).get("on"),
        "rows_compared": decision.get("rows_compared"),
        "rows_excluded": decision.get("rows_excluded"),
        "min_rows": decision.get("min_rows"),
        "challenger_metrics": decision.get("challenger_metrics"),
        "champion_metrics": decision.get("champion_metrics"),
        "champion_version": (decision.get("champion") or {}).get("version"),
        "intervals": decision.get("intervals"),
        "slice_metrics": decision.get("slice_metrics"),
        "fairness": fairness if fairness is not None else decision.get("fairness"),
        "top_features": _top_features(explanations, decision.get("explanations")),
    }


def _top_features(explanations: Mapping[str, Any] | None, summary: Any) -> Any:
    """The explanation artifact's ranked features (20 at most), else the record's summary."""
    if explanations and isinstance(explanations.get("features"), list):
        return {
            "method": explanations.get("method"),
            "rows": explanations.get("rows"),
            "features": explanations["features"][:20],
            "shap": explanations.get("shap"),
        }
    return summary


def _drift_section(
    tags: Mapping[str, str], decision: Mapping[str, Any], recorded: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What started the run, and the evaluate task's training-data drift record."""
    trigger = _json_or_none(tags.get(TAG_TRIGGER)) or tags.get(TAG_TRIGGER)
    if recorded and recorded.get("status") == "first_model":
        versus: Any = recorded.get("note") or "first model: no previous champion"
    elif recorded:
        versus = dict(recorded)
    elif decision and decision.get("champion") is None:
        versus = "first model: no previous champion"
    elif _BATCHED_TASK_ID.search(tags.get(TAG_TASK_ID) or ""):
        versus = "not computed for batched segments"
    else:
        versus = "not computed: the evaluation recorded no training-data drift"
    return {"trigger": trigger, "training_data_vs_previous_champion": versus}


def _decision_section(
    decision: Mapping[str, Any], promotion: Mapping[str, Any] | None
) -> dict[str, Any]:
    promotion = promotion or {}
    approval = promotion.get("approval") or None
    moved = promotion.get("promotion") or {}
    return {
        "policy_verdict": decision.get("outcome"),
        "policy_reason": decision.get("reason"),
        "rules": decision.get("rules"),
        "policy": decision.get("policy"),
        "outcome": promotion.get("outcome") or "undecided",
        "reason": promotion.get("reason"),
        "decided_by": (approval or {}).get("by") or ("policy" if promotion else None),
        "approval": approval,
        # auto | manual | auto_if_confident, and what that policy did (auto-approved or asked).
        "approval_policy": (promotion.get("approval_policy") or {}).get("policy")
        or ("manual" if approval else "auto" if promotion else None),
        "approval_policy_outcome": (promotion.get("approval_policy") or {}).get("reason"),
        "champion_before": moved.get("previous_version"),
        "serving_check_ok": (promotion.get("serving_check") or {}).get("ok"),
        "history_event": moved.get("event"),
    }


def _lineage_section(tags: Mapping[str, str]) -> dict[str, Any]:
    return {
        "pipeline": tags.get(TAG_PIPELINE),
        "airflow": {
            "dag_id": tags.get(TAG_DAG_ID),
            "run_id": tags.get(TAG_RUN_ID),
            "task_id": tags.get(TAG_TASK_ID),
            "map_index": tags.get(TAG_MAP_INDEX),
            "try_number": tags.get(TAG_TRY_NUMBER),
        },
        "config_hash": tags.get(TAG_PIPELINE_CONFIG_HASH),
        "git_commit": tags.get(TAG_GIT_COMMIT),
        "provider_version": tags.get(TAG_PROVIDER_VERSION),
    }


def _json_or_none(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _as_int(text: Any) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


# -- storing and reading ---------------------------------------------------------------------


def card_bytes(card: Mapping[str, Any]) -> bytes:
    """The canonical JSON bytes of ``card``: what is stored and hashed."""
    return json.dumps(card, sort_keys=True, indent=1, ensure_ascii=False).encode()


def store_model_card(
    client: MlflowClient, card: Mapping[str, Any], *, read: ModelVersion | None = None
) -> ModelCardRef:
    """Log the card's JSON and HTML on the version's run and tag its hash on the version;
    a version that already has a card keeps it. ``read``: the version as the caller just
    read it, to check for a card without a second read."""
    name, version, run_id = (card["model"][k] for k in ("name", "version", "run_id"))
    read = read or client.get_model_version(name, version)
    existing = read.tags.get(TAG_MODEL_CARD_SHA256)
    if existing:
        return _card_ref(client, run_id, existing, written=False)
    data = card_bytes(card)
    client.log_text(run_id, data.decode(), MODEL_CARD_JSON)
    client.log_text(run_id, render_html(card), MODEL_CARD_HTML)
    digest = hashlib.sha256(data).hexdigest()
    # Tagged last: a card whose upload failed midway is rewritten by the retry.
    client.set_model_version_tag(name, version, TAG_MODEL_CARD_SHA256, digest)
    return _card_ref(client, run_id, digest, written=True)


def _card_ref(client: MlflowClient, run_id: str, digest: str, *, written: bool) -> ModelCardRef:
    from airflow_mlops.core.mlflow_client import run_location

    base = run_location(client, run_id).artifact_uri.rstrip("/")
    return ModelCardRef(
        f"{base}/{MODEL_CARD_JSON}", f"{base}/{MODEL_CARD_HTML}", digest, written=written
    )


def write_model_card(
    client: MlflowClient,
    model_name: str,
    version: str,
    *,
    intended_use: str = "",
    validation: Mapping[str, Any] | None = None,
    promotion: Mapping[str, Any] | None = None,
) -> ModelCardRef:
    """Build and store the card of a version whose promotion decision is final."""
    model_version = client.get_model_version(model_name, str(version))
    existing = model_version.tags.get(TAG_MODEL_CARD_SHA256)
    if existing:
        return _card_ref(client, model_version.run_id, existing, written=False)
    card = build_model_card(
        client,
        model_name,
        version,
        intended_use=intended_use,
        validation=validation,
        promotion=promotion,
        model_version=model_version,
    )
    return store_model_card(client, card, read=model_version)


def write_pending_card(
    client: MlflowClient,
    model_name: str,
    version: str,
    *,
    awaiting: Mapping[str, Any],
    intended_use: str = "",
    validation: Mapping[str, Any] | None = None,
    shadow_requirement: Mapping[str, Any] | None = None,
) -> ModelCardRef:
    """The card a reviewer reads before answering: decision "awaiting approval" plus
    ``awaiting`` (approvers, policy, deadline). Overwritten by each approval request; the
    final card and its hash tag are never touched."""
    card = build_model_card(
        client,
        model_name,
        version,
        intended_use=intended_use,
        validation=validation,
        promotion={},  # no promotion yet: an older record on the run is not this decision
        shadow_requirement=shadow_requirement,
    )
    approvers = [str(a) for a in awaiting.get("approvers") or []]
    card["decision"].update(
        outcome="awaiting approval",
        reason=f"awaiting approval: approvers {', '.join(approvers) or 'any user with access'}, "
        f"policy {awaiting.get('policy') or 'manual'}",
        approval_policy=awaiting.get("policy") or "manual",
        decided_by=None,
        awaiting=json.loads(json.dumps(dict(awaiting), default=str)),
    )
    data = card_bytes(card)
    run_id = card["model"]["run_id"]
    client.log_text(run_id, data.decode(), PENDING_CARD_JSON)
    client.log_text(run_id, render_html(card), PENDING_CARD_HTML)
    digest = hashlib.sha256(data).hexdigest()
    client.set_model_version_tag(model_name, str(version), TAG_MODEL_CARD_PENDING, digest)
    from airflow_mlops.core.mlflow_client import run_location

    base = run_location(client, run_id).artifact_uri.rstrip("/")
    return ModelCardRef(
        f"{base}/{PENDING_CARD_JSON}", f"{base}/{PENDING_CARD_HTML}", digest, written=True
    )


def card_artifact_for(version_tags: Mapping[str, str]) -> str | None:
    """The card HTML to link for a version: the final one, else the pending one, else None.

    The tags only say whether a card exists; the path is always one of :data:`CARD_ARTIFACTS`.
    """
    if version_tags.get(TAG_MODEL_CARD_SHA256):
        return MODEL_CARD_HTML
    if version_tags.get(TAG_MODEL_CARD_PENDING):
        return PENDING_CARD_HTML
    return None


def card_route(run_id: str, path: str) -> str:
    """The MLOps page's route serving card ``path`` of ``run_id``, relative to the page's
    mount (``/mlops`` in Airflow); each part quoted."""
    from urllib.parse import quote

    if path not in CARD_ARTIFACTS:
        raise ModelCardError(f"{path!r} is not a model card path")
    return f"/reports/runs/{quote(run_id, safe='')}/artifacts/{quote(path)}"


def read_model_card(client: MlflowClient, model_name: str, version: str) -> dict[str, Any]:
    """The stored card, checked against the hash tagged on the version."""
    from mlflow.exceptions import MlflowException

    from airflow_mlops.core.mlflow_client import read_run_text

    try:
        model_version = client.get_model_version(model_name, str(version))
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ModelCardError(f"{model_name} v{version} is not a registered version") from err
    expected = model_version.tags.get(TAG_MODEL_CARD_SHA256)
    if not expected:
        raise ModelCardError(
            f"{model_name} v{version} has no model card yet (it is written when the "
            "promotion decision is final)"
        )
    text = read_run_text(client, model_version.run_id, MODEL_CARD_JSON)
    if text is None:
        raise ModelCardError(f"{model_name} v{version}: {MODEL_CARD_JSON} is missing from its run")
    if hashlib.sha256(text.encode()).hexdigest() != expected:
        raise ModelCardError(
            f"{model_name} v{version}: {MODEL_CARD_JSON} does not match the hash recorded in "
            f"tag {TAG_MODEL_CARD_SHA256}; it was changed after it was written"
        )
    return json.loads(text)


# -- HTML -----------------------------------------------------------------------------------

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
    "color:#1d2430}h1{font-size:1.5rem}h2{font-size:1.15rem;border-bottom:1px solid #ccd;"
    "padding-bottom:.2rem;margin-top:1.6rem}table{border-collapse:collapse;margin:.4rem 0}"
    "th,td{border:1px solid #dde;padding:.2rem .5rem;text-align:left;vertical-align:top;"
    "font-size:.9rem}th{background:#f3f5f9}code{font-size:.85rem}"
    ".outcome{font-weight:bold}"
)
_SECTIONS = (
    ("intended_use", "Intended use"),
    ("data", "Data"),
    ("training", "Training"),
    ("evaluation", "Evaluation"),
    ("drift", "Drift"),
    ("decision", "Decision"),
    ("lineage", "Lineage"),
)


def render_html(card: Mapping[str, Any]) -> str:
    """The card as one self-contained HTML page; every key and value is escaped."""
    model = card.get("model") or {}
    title = f"Model card: {model.get('name')} version {model.get('version')}"
    decision = card.get("decision") or {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="outcome">Decision: {escape(str(decision.get("outcome")))} '
        f"({escape(str(decision.get('reason') or decision.get('policy_reason') or ''))})</p>",
        _html_value(model),
    ]
    for key, heading in _SECTIONS:
        parts.append(f"<h2>{escape(heading)}</h2>")
        parts.append(_html_value(card.get(key)))
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_value(value: Any, depth: int = 0) -> str:
    if isinstance(value, Mapping):
        if not value:
            return "<em>none</em>"
        rows = "".join(
            f"<tr><th>{escape(str(k))}</th><td>{_html_value(v, depth + 1)}</td></tr>"
            for k, v in value.items()
        )
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if not value:
            return "<em>none</em>"
        if depth > 3:
            return f"<code>{escape(json.dumps(value, default=str))}</code>"
        return "<ol>" + "".join(f"<li>{_html_value(v, depth + 1)}</li>" for v in value) + "</ol>"
    if value is None:
        return "<em>not recorded</em>"
    return escape(str(value))
