"""Lineage and idempotency: the tags every MLflow object created by the pipeline carries.

The orchestrator (Airflow) is described by :class:`RunContext`, a plain dataclass, so the
core stays importable and testable without Airflow.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_DEPLOYMENT",
    "HOLDOUT_METRIC_PREFIX",
    "MANIFEST_ARTIFACT_PATH",
    "MODEL_ARTIFACT_NAME",
    "TAG_ARTIFACT_DIGEST",
    "TAG_CLASS_BALANCE",
    "TAG_CONFIG_HASH",
    "TAG_DAG_ID",
    "TAG_DATA_FILES",
    "TAG_DATA_MANIFEST_HASH",
    "TAG_DATA_ROWS",
    "TAG_DATA_SAMPLE_FRACTION",
    "TAG_DATA_SHA256",
    "TAG_DATA_URI",
    "TAG_DATA_WINDOW",
    "TAG_DECISION_CHAMPION",
    "TAG_DECISION_PROMOTE",
    "TAG_DECISION_REASON",
    "TAG_DEPLOYMENT",
    "TAG_ERROR",
    "TAG_ESTIMATOR",
    "TAG_FEATURES",
    "TAG_FEATURES_URI",
    "TAG_GIT_COMMIT",
    "TAG_HOLDOUT_ROWS",
    "TAG_HOLDOUT_SHA256",
    "TAG_HOLDOUT_URI",
    "TAG_IDEMPOTENCY_KEY",
    "TAG_MAP_INDEX",
    "TAG_MODEL_NAME",
    "TAG_MODEL_URI",
    "TAG_PIPELINE",
    "TAG_PIPELINE_CONFIG_HASH",
    "TAG_PREFIX",
    "TAG_PROVIDER_VERSION",
    "TAG_REFERENCE_SHA256",
    "TAG_REFERENCE_URI",
    "TAG_RUN_ID",
    "TAG_SEARCH_BEST_PARAMS",
    "TAG_SIGNATURE",
    "TAG_SOURCE_MODEL_URI",
    "TAG_SOURCE_RUN_ID",
    "TAG_SPLIT",
    "TAG_SPLIT_TIME_CUTOFF",
    "TAG_STAGE",
    "TAG_TARGET",
    "TAG_TASK",
    "TAG_TASK_ID",
    "TAG_TRIAL_INDEX",
    "TAG_TRIGGER",
    "TAG_TRY_NUMBER",
    "RunContext",
    "config_hash",
    "detect_git_commit",
    "signature_tags",
]

TAG_PREFIX = "mlops."
TAG_IDEMPOTENCY_KEY = f"{TAG_PREFIX}idempotency_key"
TAG_DAG_ID = f"{TAG_PREFIX}airflow.dag_id"
TAG_RUN_ID = f"{TAG_PREFIX}airflow.run_id"
TAG_TASK_ID = f"{TAG_PREFIX}airflow.task_id"
TAG_TRY_NUMBER = f"{TAG_PREFIX}airflow.try_number"
TAG_MAP_INDEX = f"{TAG_PREFIX}airflow.map_index"
# The deployment (``[mlops] deployment``) whose runs these are: part of the idempotency key, so
# staging and production sharing one MLflow never reuse each other's runs or versions.
TAG_DEPLOYMENT = f"{TAG_PREFIX}deployment"
DEFAULT_DEPLOYMENT = "default"
TAG_PROVIDER_VERSION = f"{TAG_PREFIX}provider_version"
TAG_GIT_COMMIT = f"{TAG_PREFIX}git_commit"
TAG_CONFIG_HASH = f"{TAG_PREFIX}config_hash"
# Hash of the whole pipeline config (validation, training, policy, ...) and provider version.
TAG_PIPELINE_CONFIG_HASH = f"{TAG_PREFIX}pipeline.config_hash"
TAG_PIPELINE = f"{TAG_PREFIX}pipeline"
# What started the CT run that trained: the run type, or the new-data asset event (source
# DAG/run, asset URI, partition) that set its window's end (core.changes.trigger_tag).
TAG_TRIGGER = f"{TAG_PREFIX}trigger"

# Tag keys written on the training run (read by evaluation, promotion and drift monitoring).
TAG_STAGE = "mlops.stage"  # "training" on the run, "training.trial" on search trials
TAG_DATA_URI = "mlops.data.uri"
# The manifest's content hash (core.manifest): one value for a file, a folder or a window.
TAG_DATA_SHA256 = "mlops.data.sha256"
TAG_DATA_MANIFEST_HASH = "mlops.data.manifest_hash"
TAG_DATA_FILES = "mlops.data.files"  # how many files the run read
TAG_DATA_WINDOW = "mlops.data.window"  # DataWindow.describe()
# Share of the window's rows kept by the max_rows cap (a row-hash sample, see
# core.training_data.cap_rows); absent when every row was read.
TAG_DATA_SAMPLE_FRACTION = "mlops.data.sample_fraction"
TAG_DATA_ROWS = "mlops.data.rows"
TAG_CLASS_BALANCE = "mlops.data.class_balance"  # JSON {label: rows} trained and held out
TAG_HOLDOUT_URI = "mlops.holdout.uri"
TAG_HOLDOUT_SHA256 = "mlops.holdout.sha256"
TAG_HOLDOUT_ROWS = "mlops.holdout.rows"
TAG_REFERENCE_URI = "mlops.reference.uri"
TAG_REFERENCE_SHA256 = "mlops.reference.sha256"
TAG_TARGET = "mlops.target"
TAG_TASK = "mlops.task"
TAG_FEATURES = "mlops.features"  # JSON list, in the model's input order
TAG_FEATURES_URI = "mlops.features.uri"  # set instead when the JSON list exceeds a tag's size
TAG_MODEL_NAME = "mlops.model_name"
TAG_MODEL_URI = "mlops.model_uri"
TAG_ESTIMATOR = "mlops.estimator"
TAG_SPLIT = "mlops.split"  # JSON of the split policy
TAG_SPLIT_TIME_CUTOFF = "mlops.split.time_cutoff"
TAG_SEARCH_BEST_PARAMS = "mlops.search.best_params"  # JSON object
TAG_TRIAL_INDEX = "mlops.search.trial_index"
TAG_ERROR = "mlops.error"
# Written on model versions by registration (core.registry).
TAG_SOURCE_MODEL_URI = "mlops.source_model_uri"
TAG_SOURCE_RUN_ID = "mlops.source_run_id"
# Written on the logged model by training and copied onto its versions by registration;
# checked by core.provenance before a load.
TAG_SIGNATURE = "mlops.signature"
TAG_ARTIFACT_DIGEST = "mlops.artifact_digest"
#: The run artifact holding the manifest of the exact files the run read (Manifest.to_json()).
MANIFEST_ARTIFACT_PATH = "mlops/manifest.json"
HOLDOUT_METRIC_PREFIX = "holdout_"
MODEL_ARTIFACT_NAME = "model"


@dataclass(frozen=True)
class RunContext:
    """Who is running: the Airflow task instance, or a script (all fields optional)."""

    dag_id: str = "manual"
    run_id: str = "manual"
    task_id: str = "manual"
    try_number: int = 1
    map_index: int = -1
    deployment: str = DEFAULT_DEPLOYMENT

    @property
    def idempotency_key(self) -> str:
        """Stable across retries of the same task instance; differs between runs and between
        deployments (a staging and a production Airflow may share one MLflow)."""
        raw = f"{self.deployment}|{self.dag_id}|{self.run_id}|{self.task_id}|{self.map_index}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def as_tags(self) -> dict[str, str]:
        from airflow_mlops import __version__

        return {
            TAG_IDEMPOTENCY_KEY: self.idempotency_key,
            TAG_DAG_ID: self.dag_id,
            TAG_RUN_ID: self.run_id,
            TAG_TASK_ID: self.task_id,
            TAG_TRY_NUMBER: str(self.try_number),
            TAG_MAP_INDEX: str(self.map_index),
            TAG_DEPLOYMENT: self.deployment,
            TAG_PROVIDER_VERSION: __version__,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def signature_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    """The signature tags among a logged model's ``tags``, for registration to copy."""
    return {k: tags[k] for k in (TAG_SIGNATURE, TAG_ARTIFACT_DIGEST) if k in (tags or {})}


def config_hash(config: Any) -> str:
    """sha256 of a JSON-serialisable configuration, independent of key order."""
    payload = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


_GIT_COMMIT_ENV_VARS = ("MLOPS_GIT_COMMIT", "GIT_COMMIT", "GITHUB_SHA")


def detect_git_commit(start_dir: str | None) -> str | None:
    """Commit of the code that trains: from env (``MLOPS_GIT_COMMIT``, ``GIT_COMMIT``,
    ``GITHUB_SHA``), else read from the ``.git`` folder above ``start_dir`` (no subprocess)."""
    for name in _GIT_COMMIT_ENV_VARS:
        if os.environ.get(name):
            return os.environ[name].strip()
    if not start_dir:
        return None
    for folder in (Path(start_dir).resolve(), *Path(start_dir).resolve().parents):
        git_dir = folder / ".git"
        if git_dir.is_dir():
            return _read_head(git_dir)
    return None


def _read_head(git_dir: Path) -> str | None:
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return None
    if not head.startswith("ref: "):
        return head or None
    ref = head.removeprefix("ref: ")
    ref_file = git_dir / ref
    if ref_file.is_file():
        return ref_file.read_text().strip() or None
    packed = git_dir / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0]
    return None  # a branch without commits yet


#: The promotion decision, tagged on the challenger's training run by evaluation (the page
#: shows the reason: rows compared and excluded, the difference intervals).
TAG_DECISION_PROMOTE = "mlops.decision.promote"
TAG_DECISION_REASON = "mlops.decision.reason"
TAG_DECISION_CHAMPION = "mlops.decision.champion_version"
