"""Segments: one model per value of a column.

Segment model names, the split of one training dataset into per-segment datasets, the row
filter that reads one segment's rows of a dataset (monitoring checks each segment model on
its own rows), and for batched segments (:mod:`airflow_mlops.core.segment_batch`) the
manifest of segment specs, its chunks and the small XCom payloads that point at them.
Import-light: pyarrow is imported when a filter is applied, pandas never here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.storage import Storage, join_uri

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MIN_CHUNKS",
    "MAX_DEFAULT_BATCH_SIZE",
    "MAX_MAPPED",
    "MAX_XCOM_NAMES",
    "PER_SEGMENT_CHAIN_MAX",
    "SegmentSpec",
    "batch_summary",
    "chunk_count",
    "chunk_of",
    "chunk_xcom",
    "default_batch_size",
    "read_manifest",
    "segment_folder",
    "segment_model_name",
    "segment_models",
    "segment_row_filter",
    "split_segments",
    "write_manifest",
]


def segment_model_name(model_name: str, segment: str) -> str:
    """Registered model name of one segment: ``<model>__<segment>`` (registry-safe)."""
    return f"{model_name}__{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(segment))}"


def segment_folder(segment: str) -> str:
    """One folder name for a segment's files; ``.``/``..`` never navigate."""
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(segment))
    return safe if safe.strip(".") else "_" * max(len(safe), 1)


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
    # One pass over the rows (not one comparison of every row per segment): 1,000 segments.
    positions = frame.groupby(frame[column].astype(str), sort=False).indices
    segments = []
    for value in values:
        subset = frame.iloc[positions.get(str(value), [])]
        uri = join_uri(output_prefix, segment_folder(value), "train.parquet")
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


# -- batched mode: the manifest of segment specs, chunks, small XCom payloads ---------------

#: Smallest and largest chunk when ``segments.batch_size`` is unset (see
#: :func:`default_batch_size`).
DEFAULT_BATCH_SIZE = 25
MAX_DEFAULT_BATCH_SIZE = 50
#: An unset ``batch_size`` keeps at least this many chunks to spread over executor slots.
DEFAULT_MIN_CHUNKS = 20
#: Up to this many segments, an unset ``batch_size`` keeps one mapped chain per segment.
PER_SEGMENT_CHAIN_MAX = 100
#: Airflow's default ``[core] max_map_length``: more mapped instances are refused.
MAX_MAPPED = 1024
#: Failed segment names an XCom lists; the full list is in the results file.
MAX_XCOM_NAMES = 100


@dataclass(frozen=True)
class SegmentSpec:
    """One segment: its value, registered model name and the file of its rows."""

    segment: str
    model_name: str
    train_uri: str
    rows: int = 0
    sha256: str | None = None

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> SegmentSpec:
        try:
            return cls(
                segment=str(value["segment"]),
                model_name=str(value["model_name"]),
                train_uri=str(value["train_uri"]),
                rows=int(value.get("rows") or 0),
                sha256=value.get("sha256"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"segment manifest entry {value!r} is malformed: {err}") from err


def chunk_count(segments: int, batch_size: int) -> int:
    """Tasks needed for ``segments`` in chunks of ``batch_size``."""
    if batch_size < 1:
        raise ConfigError(f"segments.batch_size must be at least 1, got {batch_size}")
    return math.ceil(segments / batch_size)


def default_batch_size(segments: int) -> int:
    """The chunk size of a batched pipeline whose ``batch_size`` is unset.

    Each chunk task pays a fixed start (its process, the serving checker's interpreter and
    imports: several CPU seconds, a few segments' worth), so chunks grow from 25 to 50 segments
    as long as at least 20 chunks remain to spread over the executor's slots; beyond that the
    count grows, and past 1,024 chunks (Airflow's map limit) the size does.
    """
    spread = math.ceil(segments / DEFAULT_MIN_CHUNKS)
    size = min(max(spread, DEFAULT_BATCH_SIZE), MAX_DEFAULT_BATCH_SIZE)
    return max(size, math.ceil(segments / MAX_MAPPED))


def chunk_of(specs: Sequence[SegmentSpec], chunk: int, batch_size: int) -> list[SegmentSpec]:
    """The ``chunk``-th slice of ``batch_size`` specs; a chunk index out of range is refused."""
    count = chunk_count(len(specs), batch_size)
    if not 0 <= chunk < count:
        raise ConfigError(f"chunk {chunk} is out of range: {len(specs)} segments make {count}")
    return list(specs[chunk * batch_size : (chunk + 1) * batch_size])


def write_manifest(
    storage: Storage, uri: str, specs: Sequence[Mapping[str, Any]], batch_size: int
) -> dict[str, Any]:
    """Write the segment specs to ``uri``; return the small XCom that points at them.

    The XCom is ``{manifest_uri, segments, batch_size, chunks}`` where ``chunks`` is the list
    of chunk indexes the chunk task is mapped over (``<= 1024`` entries, a few bytes each).
    """
    checked = [dataclasses.asdict(SegmentSpec.from_dict(s)) for s in specs]
    count = chunk_count(len(checked), batch_size)
    if count > MAX_MAPPED:
        raise ConfigError(
            f"{len(checked)} segments in chunks of segments.batch_size={batch_size} make "
            f"{count} tasks; Airflow maps at most {MAX_MAPPED}: raise segments.batch_size"
        )
    storage.write_text(uri, json.dumps({"batch_size": batch_size, "segments": checked}))
    return {
        "manifest_uri": uri,
        "segments": len(checked),
        "batch_size": batch_size,
        "chunks": list(range(count)),
    }


def read_manifest(storage: Storage, uri: str) -> tuple[list[SegmentSpec], int]:
    """(specs, batch size) of a manifest :func:`write_manifest` wrote."""
    try:
        payload = json.loads(storage.read_text(uri))
        specs = [SegmentSpec.from_dict(s) for s in payload["segments"]]
        return specs, int(payload["batch_size"])
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"segment manifest {uri} is malformed: {err}") from err


def chunk_xcom(chunk: int, records: Sequence[Mapping[str, Any]], results_uri: str) -> dict:
    """The chunk task's XCom: counts, failed segment names (capped) and the results file."""
    failed = [r["segment"] for r in records if r["failed"]]
    outcomes: dict[str, int] = {}
    for r in records:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    return {
        "chunk": chunk,
        "results_uri": results_uri,
        "segments": len(records),
        "outcomes": outcomes,
        "failed": len(failed),
        "failed_segments": failed[:MAX_XCOM_NAMES],
        "seconds": round(sum(r["seconds"]["total"] for r in records), 3),
    }


def batch_summary(
    records: Sequence[Mapping[str, Any]], expected: int, missing_chunks: Sequence[int] = ()
) -> dict[str, Any]:
    """The run's outcome over every segment: counts per outcome, failed segments by name
    (capped at :data:`MAX_XCOM_NAMES`; the summary file has them all), and chunks that left
    no results (a task that died before writing them)."""
    failed = [r["segment"] for r in records if r["failed"]]
    outcomes: dict[str, int] = {}
    for r in records:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    unaccounted = expected - len(records)
    parts = [f"{n} {o}" for o, n in sorted(outcomes.items())]
    if unaccounted:
        parts.append(f"{unaccounted} without a result (chunks {list(missing_chunks)[:20]})")
    return {
        "segments": expected,
        "outcomes": outcomes,
        "failed": len(failed),
        "failed_segments": failed[:MAX_XCOM_NAMES],
        "unaccounted": unaccounted,
        "missing_chunks": list(missing_chunks)[:MAX_XCOM_NAMES],
        "outcome": "failed" if failed or unaccounted else "ok",
        "reason": ", ".join(parts) or "no segments",
    }
