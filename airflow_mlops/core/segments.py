"""Split one dataset into per-segment datasets (one model per segment)."""

from __future__ import annotations

import re
from typing import Any

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.storage import Storage, join_uri


def segment_model_name(model_name: str, segment: str) -> str:
    """Registered model name of one segment: ``<model>__<segment>`` (registry-safe)."""
    return f"{model_name}__{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(segment))}"


def split_segments(
    storage: Storage,
    train_uri: str,
    column: str,
    values: list[str],
    output_prefix: str,
    model_name: str,
) -> list[dict[str, Any]]:
    """Write each segment's rows to ``<output_prefix>/<segment>/train.parquet``.

    Returns one small dict per configured segment, in order. A segment with no rows is kept
    (its own validation/training then fails with a clear error) so one bad segment never
    hides the others.
    """
    table = storage.read_table(train_uri)
    frame = table.frame
    if column not in frame.columns:
        raise ConfigError(
            f"segments.column {column!r} is not a column of {train_uri} "
            f"(columns: {', '.join(map(str, frame.columns[:20]))})."
        )
    keys = frame[column].astype(str)
    segments = []
    for value in values:
        subset = frame[keys == str(value)]
        uri = join_uri(
            output_prefix, re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(value)), "train.parquet"
        )
        sha = storage.write_table(subset.reset_index(drop=True), uri)
        segments.append(
            {
                "segment": str(value),
                "train_uri": uri,
                "rows": len(subset),
                "sha256": sha,
                "model_name": segment_model_name(model_name, value),
            }
        )
    return segments
