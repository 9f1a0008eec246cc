"""Where predictions by partition live: output URIs and names, with no heavy import.

A batch prediction whose ``predictions_uri`` is a folder or prefix writes one Hive partition
per run, ``<predictions_uri>/<column>=<key>/part-<writer>.parquet``: the key is the run's
partition (``window_end``) or its data interval date (``ds``), the file name a hash of the
writing task (DAG, task, map index). A rerun or a retry of the same partition therefore
overwrites the same file instead of adding a copy whose rows the decay check would count
twice. A ``predictions_uri`` naming a file (``.parquet``, ``.csv``, ``.csv.gz``) is one table,
written whole. The factories and the operators call these at DAG parse time, so this module
imports nothing heavy.

Shadow scoring (``prediction.shadow``) writes the ``@challenger``'s predictions of the same
partition to ``<predictions_uri>/_shadow/<column>=<key>/part-<writer>.parquet``: a folder
whose name starts with ``_`` is skipped by dataset readers (pyarrow's default
``ignore_prefixes``, :data:`airflow_mlops.core.datasets.IGNORED_PREFIXES`), so a consumer
reading ``<predictions_uri>`` still sees only the champion's rows.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.core.storage import TABLE_FORMATS

__all__ = [
    "DEFAULT_MIN_LABEL_COVERAGE",
    "DEFAULT_PARTITION_COLUMN",
    "SHADOW_FOLDER",
    "is_dataset_input",
    "is_partitioned_output",
    "partition_key",
    "partition_output_uri",
    "reads_a_window",
    "shadow_predictions_uri",
    "writer_hash",
]

#: Share of a partition's predictions that must have their label before it is scored.
DEFAULT_MIN_LABEL_COVERAGE = 0.8
DEFAULT_PARTITION_COLUMN = "dt"
#: The shadow predictions' folder inside ``predictions_uri`` (``_``: readers skip it).
SHADOW_FOLDER = "_shadow"

_GLOB = re.compile(r"[*?\[]")
_SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,99}$")
_TEMPLATE = re.compile(r"{{|{%")


def _names_a_table_file(uri: str) -> bool:
    lowered = uri.lower()
    return not uri.endswith("/") and any(lowered.endswith(s) for s in TABLE_FORMATS)


def is_partitioned_output(uri: str) -> bool:
    """A ``predictions_uri`` that names a folder or prefix (not a parquet/csv file name)."""
    return not _names_a_table_file(uri.strip())


def is_dataset_input(uri: str, *, windowed: bool = False) -> bool:
    """Whether ``uri`` is read as a dataset (folder, prefix, glob, or any windowed read)
    rather than streamed as one file."""
    uri = uri.strip()
    return windowed or bool(_GLOB.search(uri)) or not _names_a_table_file(uri)


def reads_a_window(window: Any, window_end: str | None) -> bool:
    """Whether a read is windowed: an end, a partition window or a row cap (a
    :class:`~airflow_mlops.core.data_window.DataWindow` or None)."""
    if window_end:
        return True
    return window is not None and (window.kind != "all" or bool(window.max_rows))


def partition_key(value: str, column: str = DEFAULT_PARTITION_COLUMN) -> tuple[str, str]:
    """``(column, key)`` of a run's partition: ``dt=2026-12-01`` or ``2026-12-01`` (with
    ``column``); a midnight timestamp names its day."""
    text = str(value).strip()
    if "=" in text:
        column, _, text = text.partition("=")
    if "T00:00:00" in text:  # a data-interval timestamp at midnight names a day
        text = text.split("T", 1)[0]
    if not _SAFE_NAME.match(column):
        raise ConfigError(f"partition column {column!r} must be a plain identifier.")
    if _TEMPLATE.search(text) or not _SAFE_VALUE.match(text):
        raise ConfigError(
            f"partition {value!r} cannot name a folder: use letters, digits and . _ : + - "
            "(e.g. 2026-12-01)."
        )
    return column, text


def writer_hash(*parts: object) -> str:
    """16 hex characters identifying the task that writes a partition."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def partition_output_uri(
    predictions_uri: str, partition: str, writer: str, column: str = DEFAULT_PARTITION_COLUMN
) -> str:
    """``<predictions_uri>/<column>=<key>/part-<writer>.parquet``."""
    column, key = partition_key(partition, column)
    return f"{predictions_uri.strip().rstrip('/')}/{column}={key}/part-{writer}.parquet"


def shadow_predictions_uri(predictions_uri: str) -> str:
    """``<predictions_uri>/_shadow``: where the challenger's shadow partitions go."""
    if not is_partitioned_output(predictions_uri):
        raise ConfigError(
            f"shadow scoring needs predictions by partition: {predictions_uri!r} names one "
            "file; give a folder or prefix (one partition per run)."
        )
    return f"{predictions_uri.strip().rstrip('/')}/{SHADOW_FOLDER}"
