"""Decide whether a continuous-training run has something new to learn from.

Level 1 retrains on a schedule, on new data, on drift/decay and when the pipeline's config
changes. A scheduled run with the same data and the same config as the champion's training
run has nothing new: it is skipped with that reason instead of producing a duplicate model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from airflow_mlops.core.lineage import TAG_DATA_SHA256, TAG_GIT_COMMIT, TAG_PIPELINE_CONFIG_HASH

__all__ = ["ALWAYS_TRAIN_RUN_TYPES", "ChangeDecision", "decide_retrain"]

# Airflow run types for which the trigger itself is the reason to train.
ALWAYS_TRAIN_RUN_TYPES = frozenset({"manual", "asset_triggered", "backfill"})


@dataclass(frozen=True)
class ChangeDecision:
    train: bool
    reason: str
    data_sha256: str
    config_hash: str
    champion_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_retrain(
    *,
    run_type: str,
    data_sha256: str,
    config_hash: str,
    champion_tags: dict[str, str] | None,
    champion_version: str | None = None,
    code_version: str | None = None,
) -> ChangeDecision:
    """Whether to train, and why, from the trigger and the champion's training-run tags.

    ``code_version`` is the commit of the code that would train now; it counts as a change
    only when both it and the champion's ``mlops.git_commit`` are known.
    """

    def decision(train: bool, reason: str) -> ChangeDecision:
        return ChangeDecision(train, reason, data_sha256, config_hash, champion_version)

    if champion_tags is None:
        return decision(True, "first model: no champion yet")
    if run_type in ALWAYS_TRAIN_RUN_TYPES:
        return decision(True, f"{run_type.replace('_', '-')} run")
    reasons = []
    if champion_tags.get(TAG_PIPELINE_CONFIG_HASH) != config_hash:
        reasons.append("pipeline config changed since the champion was trained")
    champion_code = champion_tags.get(TAG_GIT_COMMIT)
    if code_version and champion_code and champion_code != code_version:
        reasons.append(
            f"pipeline code changed since the champion was trained "
            f"({champion_code[:12]} -> {code_version[:12]})"
        )
    if champion_tags.get(TAG_DATA_SHA256) != data_sha256:
        reasons.append("training data changed since the champion was trained")
    if reasons:
        return decision(True, "; ".join(reasons))
    return decision(False, "no change: same data and config as the champion")
