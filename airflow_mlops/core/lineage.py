"""Lineage and idempotency: the tags every MLflow object created by the pipeline carries.

The orchestrator (Airflow) is described by :class:`RunContext`, a plain dataclass, so the
core stays importable and testable without Airflow.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

TAG_PREFIX = "mlops."
TAG_IDEMPOTENCY_KEY = f"{TAG_PREFIX}idempotency_key"
TAG_DAG_ID = f"{TAG_PREFIX}airflow.dag_id"
TAG_RUN_ID = f"{TAG_PREFIX}airflow.run_id"
TAG_TASK_ID = f"{TAG_PREFIX}airflow.task_id"
TAG_TRY_NUMBER = f"{TAG_PREFIX}airflow.try_number"
TAG_MAP_INDEX = f"{TAG_PREFIX}airflow.map_index"
TAG_PROVIDER_VERSION = f"{TAG_PREFIX}provider_version"
TAG_GIT_COMMIT = f"{TAG_PREFIX}git_commit"
TAG_CONFIG_HASH = f"{TAG_PREFIX}config_hash"
# Hash of the whole pipeline config (validation, training, policy, ...) and provider version.
TAG_PIPELINE_CONFIG_HASH = f"{TAG_PREFIX}pipeline.config_hash"
TAG_PIPELINE = f"{TAG_PREFIX}pipeline"


@dataclass(frozen=True)
class RunContext:
    """Who is running: the Airflow task instance, or a script (all fields optional)."""

    dag_id: str = "manual"
    run_id: str = "manual"
    task_id: str = "manual"
    try_number: int = 1
    map_index: int = -1

    @property
    def idempotency_key(self) -> str:
        """Stable across retries of the same task instance; differs between runs."""
        raw = f"{self.dag_id}|{self.run_id}|{self.task_id}|{self.map_index}"
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
            TAG_PROVIDER_VERSION: __version__,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_hash(config: Any) -> str:
    """sha256 of a JSON-serialisable configuration, independent of key order."""
    payload = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()
