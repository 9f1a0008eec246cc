"""The champion as monitoring sees it: ``<model>@champion``'s version, run tags and metrics.

:func:`read_champion` is :func:`airflow_mlops.core.registry.resolve_champion` plus the
champion run's tags and metrics; the drift and performance checks share it. Import-light
(operators import :class:`ChampionFacts` for type hints): the registry and the table reader
are imported inside the functions that need them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.errors import MlopsError
from airflow_mlops.core.lineage import TAG_FEATURES, TAG_FEATURES_URI, TAG_REFERENCE_URI, TAG_TARGET

if TYPE_CHECKING:
    from airflow_mlops.core.storage import Storage

__all__ = ["ChampionFacts", "read_champion"]


@dataclass(frozen=True)
class ChampionFacts:
    """What monitoring needs from the model registry about ``<model>@champion``."""

    model_name: str
    version: str
    run_id: str | None
    experiment_id: str | None
    model_uri: str
    tags: dict[str, str]
    metrics: dict[str, float]

    @property
    def reference_uri(self) -> str | None:
        return self.tags.get(TAG_REFERENCE_URI) or None

    def features(self, storage: Storage | None = None) -> list[str] | None:
        """The training features: the JSON list tag, else the columns of the table that
        training points at when the list was too long for a tag (minus the target)."""
        raw = self.tags.get(TAG_FEATURES)
        if raw:
            try:
                features = json.loads(raw)
            except json.JSONDecodeError as err:
                raise MlopsError(
                    f"Tag {TAG_FEATURES} of run {self.run_id} is not a JSON list: {err}"
                ) from err
            if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
                raise MlopsError(f"Tag {TAG_FEATURES} of run {self.run_id} is not a list of names.")
            return features
        uri = self.tags.get(TAG_FEATURES_URI)
        if uri and storage is not None:
            # pyarrow only here: reads the file's schema (a Parquet footer), not its rows.
            from airflow_mlops.core.drift_sampling import TableSource

            target = self.tags.get(TAG_TARGET)
            return [c for c in TableSource(uri, storage).schema.names if c != target]
        return None


def read_champion(client: Any, model_name: str) -> ChampionFacts | None:
    """The champion's version, run tags and run metrics; None when there is no champion."""
    from airflow_mlops.core.registry import resolve_champion

    champion = resolve_champion(client, model_name)
    if champion is None:
        return None
    tags: dict[str, str] = {}
    metrics: dict[str, float] = {}
    experiment_id = None
    if champion.run_id:
        run = client.get_run(champion.run_id)
        tags, metrics = dict(run.data.tags), dict(run.data.metrics)
        experiment_id = run.info.experiment_id
    return ChampionFacts(
        model_name=model_name,
        version=champion.version,
        run_id=champion.run_id,
        experiment_id=experiment_id,
        model_uri=champion.model_uri,
        tags=tags,
        metrics=metrics,
    )
