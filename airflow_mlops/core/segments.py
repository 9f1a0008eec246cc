"""Segments: one model per value of a column.

Segment model names, the split of one training dataset into per-segment datasets, and the
row filter that reads one segment's rows of a dataset (monitoring checks each segment model
on its own rows). Import-light: pyarrow is imported when a filter is applied.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.storage import Storage, join_uri

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "segment_model_name",
    "segment_models",
    "segment_row_filter",
    "split_segments",
]


def segment_model_name(model_name: str, segment: str) -> str:
    """Registered model name of one segment: ``<model>__<segment>`` (registry-safe)."""
    return f"{model_name}__{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(segment))}"


def segment_models(model_name: str, values: Sequence[str]) -> list[tuple[str, str]]:
    """``(segment value, segment model name)`` per value, in order.

    :class:`ConfigError` naming ``segments.values`` when two values give one model name
    (``"a b"`` and ``"a_b"``): their champions, checks and retrain signals would collide.
    """
    pairs = [(str(value), segment_model_name(model_name, value)) for value in values]
    seen: dict[str, str] = {}
    for value, model in pairs:
        if model in seen:
            raise ConfigError(
                f"segments.values {seen[model]!r} and {value!r} both name the model {model!r}: "
                "give segments values that stay distinct once made registry-safe."
            )
        seen[model] = value
    return pairs


def segment_row_filter(column: str, value: str) -> Callable[[pa.Schema], Any]:
    """The rows of one segment, as :func:`split_segments` picks them (the column's value as
    text equals ``value``): a function of the dataset schema, for pyarrow's readers."""

    def row_filter(schema: pa.Schema) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        if column not in schema.names:
            raise ConfigError(
                f"segments.column {column!r} is not a column of the data to monitor "
                f"(columns: {', '.join(schema.names[:20])})."
            )
        field = pc.field(column)
        kind = schema.field(column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            field = field.cast(pa.string())
        return field == pa.scalar(str(value), pa.string())

    return row_filter


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
