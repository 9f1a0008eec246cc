"""The two sides of a drift check, read once: streamed tables, the schema check, the sample.

Parquet is read one column and one row group (or scan batch) at a time, only the columns
under test; each chunk updates a small full-data profile (non-missing count, distinct values
up to a cap) and contributes the rows drawn by a seeded sample (uniform, or stratified on one
column). Memory stays at one decoded column chunk plus the sample, whatever the input size.

A side is one file read through :class:`~airflow_mlops.core.storage.Storage`, or, given an
fsspec filesystem, a dataset (a folder or prefix of files, Hive partitions included, or a
glob; :mod:`airflow_mlops.core.datasets`) within an optional
:class:`~airflow_mlops.core.data_window.DataWindow`, streamed file by file with
``pyarrow.dataset``, so an error names the file.
:mod:`airflow_mlops.core.drift` plans the columns from the profiles and runs Evidently on
the sample.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from airflow_mlops.core.constants import DEFAULT_MAX_ROWS_PER_SIDE
from airflow_mlops.core.errors import (
    ConfigError,
    DataNotFoundError,
    SchemaDriftError,
    UnreadableDataError,
)
from airflow_mlops.core.storage import is_s3_uri, local_path, table_format

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from airflow_mlops.core.data_window import DataWindow
    from airflow_mlops.core.storage import Storage

__all__ = [
    "DISTINCT_CAP",
    "EVIDENTLY_INTEGER_CARDINALITY_LIMIT",
    "KIND_FAMILY",
    "MAX_STRATA",
    "PARQUET_BUFFER_BYTES",
    "ColumnProfile",
    "Kind",
    "SamplingPolicy",
    "Side",
    "SideSample",
    "TableSource",
    "arrow_kind",
    "check_schema",
    "choose_rows",
    "sample_side",
]

PARQUET_BUFFER_BYTES = 1 << 20
MAX_STRATA = 1_000

# Evidently 0.7 treats an integer column with at most this many distinct values as
# categorical (evidently/core/datasets.py); the column plan in core/drift.py mirrors it.
EVIDENTLY_INTEGER_CARDINALITY_LIMIT = 10
# Distinct values tracked per column: enough to decide every rule the column plan mirrors.
DISTINCT_CAP = EVIDENTLY_INTEGER_CARDINALITY_LIMIT + 1

# Column kinds derived from Arrow types; the family is what must match between sides.
Kind = Literal["int", "float", "boolean", "string", "datetime", "null", "other"]
KIND_FAMILY: dict[str, str] = {
    "null": "null",  # no values at all: compatible with every family
    "int": "numeric",
    "float": "numeric",
    "boolean": "boolean",
    "string": "string",
    "datetime": "datetime",
    "other": "other",
}
Side = Literal["reference", "current"]
_SIDE_SEED = {"reference": 0, "current": 1}


# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingPolicy:
    """How many rows per side Evidently sees, and how they are drawn.

    :param max_rows_per_side: cap per side; a side with fewer rows is used whole.
    :param seed: the same seed, inputs and policy always draw the same rows.
    :param stratify_by: optional low-cardinality column (segment, country, day) whose mix
        is kept exactly (proportional allocation) instead of approximately.
    """

    max_rows_per_side: int = DEFAULT_MAX_ROWS_PER_SIDE
    seed: int = 0
    stratify_by: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_rows_per_side, bool) or not isinstance(self.max_rows_per_side, int):
            raise ConfigError(
                f"sampling.max_rows_per_side must be an integer, got {self.max_rows_per_side!r}"
            )
        if self.max_rows_per_side < 1_000:
            raise ConfigError(
                "sampling.max_rows_per_side must be at least 1000 (smaller samples make the "
                f"drift scores too noisy), got {self.max_rows_per_side}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"sampling.seed must be a non-negative integer, got {self.seed!r}")


# -- reading: schema, batches ---------------------------------------------------------------


def arrow_kind(data_type: pa.DataType) -> Kind:
    """The kind of an Arrow type (dictionaries count as their value type)."""
    if pa.types.is_dictionary(data_type):
        return arrow_kind(data_type.value_type)
    if pa.types.is_null(data_type):
        return "null"
    if pa.types.is_integer(data_type):
        return "int"
    if pa.types.is_floating(data_type) or pa.types.is_decimal(data_type):
        return "float"
    if pa.types.is_boolean(data_type):
        return "boolean"
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return "string"
    if pa.types.is_temporal(data_type):
        return "datetime"
    return "other"


class TableSource:
    """A table to stream: Parquet (local, memory-mapped; or S3 bytes) or CSV (read whole).

    Parquet is the format for large inputs: its schema and row count come from the file
    footer and batches decode only the requested columns. CSV has no footer, so it is
    parsed once in full (all columns) and then streamed from memory.

    With ``filesystem`` (fsspec, e.g. ``StorageHook.get_filesystem(uri)``), a ``uri`` naming
    a folder, prefix or glob, or any ``uri`` with a ``window``, is read as a dataset: its
    files are listed, the window's are kept (``window_end``: the newest partition or time to
    include), every file's schema is checked, and rows are streamed file by file. Hive
    partition keys are where a row sits, not data: they are left out of :meth:`kinds`.
    ``row_filter`` (a pyarrow expression or a function of the schema returning one, e.g. a
    segment's rows) keeps only matching rows and reads the ``uri`` as a dataset. A single
    file URI without a window or filter keeps the one-file reader.
    """

    def __init__(
        self,
        uri: str,
        storage: Storage,
        *,
        filesystem: AbstractFileSystem | None = None,
        window: DataWindow | None = None,
        window_end: str | None = None,
        row_filter: Any = None,
    ) -> None:
        self.uri = uri
        self._parquet: pq.ParquetFile | None = None
        self._table: pa.Table | None = None
        self._dataset: _DatasetReader | None = None
        self.partition_columns: tuple[str, ...] = ()
        #: The files read, when read as a dataset (empty for the one-file reader).
        self.files: list[Any] = []
        filtered = window is not None or row_filter is not None
        if filesystem is not None and (filtered or not _names_one_file(uri)):
            self._open_dataset(filesystem, window, window_end, row_filter)
            return
        self.format = table_format(uri)
        if self.format == "parquet":
            self._parquet = self._open_parquet(uri, storage)
            self.schema = self._parquet.schema_arrow
            self.num_rows = self._parquet.metadata.num_rows
        else:
            self._table = self._read_csv(uri, storage)
            self.schema = self._table.schema
            self.num_rows = self._table.num_rows

    @staticmethod
    def _open_parquet(uri: str, storage: Storage) -> pq.ParquetFile:
        try:
            if is_s3_uri(uri):
                return pq.ParquetFile(
                    pa.BufferReader(storage.read_bytes(uri)),
                    buffer_size=PARQUET_BUFFER_BYTES,
                    pre_buffer=False,
                )
            path = local_path(uri)
            if not path.is_file():
                raise DataNotFoundError(f"No file at {uri}.")
            # Buffered page reads without memory-mapping: only the pages being decoded are
            # held (a memory map would count every touched page of the file as resident).
            return pq.ParquetFile(
                str(path), memory_map=False, buffer_size=PARQUET_BUFFER_BYTES, pre_buffer=False
            )
        except (pa.ArrowInvalid, OSError) as err:
            if isinstance(err, DataNotFoundError):
                raise
            raise UnreadableDataError(f"{uri} cannot be read as parquet: {err}") from err

    @staticmethod
    def _read_csv(uri: str, storage: Storage) -> pa.Table:
        data = storage.read_bytes(uri)
        compression = "gzip" if uri.lower().endswith(".gz") else None
        try:
            frame = pd.read_csv(io.BytesIO(data), compression=compression)
        except pd.errors.EmptyDataError as err:
            raise UnreadableDataError(f"{uri} has no columns (empty csv).") from err
        except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
            raise UnreadableDataError(f"{uri} cannot be read as csv: {err}") from err
        return _csv_table(frame)

    def _open_dataset(
        self,
        fs: AbstractFileSystem,
        window: DataWindow | None,
        window_end: str | None,
        extra_filter: Any = None,
    ) -> None:
        from airflow_mlops.core.data_window import DataWindow, select_window, window_row_filter
        from airflow_mlops.core.datasets import open_dataset, read_files, resolve_files

        window = window or DataWindow()
        if window.max_rows:
            raise ConfigError(
                f"window.max_rows does not apply to drift data ({self.uri}): the drift "
                "sample is capped by sample_rows."
            )
        files = select_window(resolve_files(fs, self.uri), window, end=window_end)
        self.files = files
        self.format = files[0].format
        self.partition_columns = tuple(files[0].partition)
        row_filter = _both_filters(window_row_filter(window, end=window_end), extra_filter)
        if self.format == "csv":
            # CSV has no footer: read whole, as a single csv file is.
            self._table = _csv_table(read_files(fs, files, row_filter=row_filter))
            self.schema, self.num_rows = self._table.schema, self._table.num_rows
            return
        dataset = open_dataset(fs, files)
        where = _resolved(row_filter, dataset.schema) if row_filter is not None else None
        self._dataset = _DatasetReader(fs, dataset, files, where)
        self.schema = dataset.schema
        self.num_rows = self._dataset.count_rows()

    def kinds(self) -> dict[str, Kind]:
        """Column name -> kind, in file order (partition keys left out)."""
        return {
            f.name: arrow_kind(f.type) for f in self.schema if f.name not in self.partition_columns
        }

    def iter_column(self, column: str) -> Iterator[pa.Array]:
        """One column, one row group at a time (CSV: one in-memory chunk at a time).

        Column by column rather than row batches: a file written as a single row group of
        millions of rows would otherwise be decoded whole, all columns at once.
        """
        if self._dataset is not None:
            yield from self._dataset.iter_column(column)
        elif self._parquet is not None:
            for index in range(self._parquet.metadata.num_row_groups):
                chunked = self._parquet.read_row_group(index, columns=[column]).column(0)
                yield from chunked.chunks
        else:
            assert self._table is not None
            yield from self._table.column(column).chunks

    def read_column(self, column: str) -> pa.ChunkedArray:
        if self._dataset is not None:
            field_type = self.schema.field(column).type
            return pa.chunked_array(list(self._dataset.iter_column(column)), type=field_type)
        if self._parquet is not None:
            return self._parquet.read(columns=[column]).column(0)
        assert self._table is not None
        return self._table.column(column)


def _both_filters(first: Any, second: Any) -> Any:
    """Two row filters (expressions or functions of the schema) as one, ``None`` for none."""
    if first is None or second is None:
        return first if second is None else second

    def both(schema: pa.Schema) -> Any:
        return _resolved(first, schema) & _resolved(second, schema)

    return both


def _resolved(row_filter: Any, schema: pa.Schema) -> Any:
    return row_filter(schema) if callable(row_filter) else row_filter


def _names_one_file(uri: str) -> bool:
    """A URI spelt as one data file (no wildcard, a table suffix)."""
    from airflow_mlops.core.datasets import GLOB_CHARS
    from airflow_mlops.core.storage import TABLE_FORMATS

    lowered = uri.lower()
    return not GLOB_CHARS.search(uri) and any(lowered.endswith(s) for s in TABLE_FORMATS)


def _csv_table(frame: pd.DataFrame) -> pa.Table:
    """A parsed CSV as Arrow. A column without a single value has no type in CSV (pandas
    says float64): it is marked null, so it is reported as "all values missing", not as a
    type change."""
    empty = [c for c in frame.columns if frame[c].isna().all()]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for name in empty:
        index = table.schema.get_field_index(name)
        table = table.set_column(index, pa.field(name, pa.null()), pa.nulls(len(table)))
    return table


class _DatasetReader:
    """A parquet dataset streamed one column at a time, file by file, in the files' order
    (the sample's row positions count rows in that order); errors name the file."""

    BATCH_ROWS = 1 << 17

    def __init__(self, fs: Any, dataset: Any, files: Sequence[Any], where: Any) -> None:
        from airflow_mlops.core.datasets import fs_path

        by_path = {fs_path(fs, f.path): f for f in files}
        self._parts = [(fragment, by_path[fragment.path]) for fragment in dataset.get_fragments()]
        self._schema = dataset.schema
        self._where = where

    def count_rows(self) -> int:
        # Without a filter, from the files' footers; with one, by scanning its columns.
        return sum(
            self._guarded(file, lambda f=fragment: f.count_rows(filter=self._where))
            for fragment, file in self._parts
        )

    def iter_column(self, column: str) -> Iterator[pa.Array]:
        for fragment, file in self._parts:
            batches = self._guarded(
                file,
                lambda f=fragment: f.to_batches(
                    schema=self._schema,
                    columns=[column],
                    filter=self._where,
                    batch_size=self.BATCH_ROWS,
                    use_threads=False,
                ),
            )
            while True:
                batch = self._guarded(file, lambda b=batches: next(b, None))
                if batch is None:
                    break
                yield batch.column(0)

    @staticmethod
    def _guarded(file: Any, read: Any) -> Any:
        try:
            return read()
        except (pa.ArrowException, OSError, ValueError) as err:
            raise UnreadableDataError(
                f"{file.path} cannot be read as {file.format}: {err}"
            ) from err


# -- schema check ---------------------------------------------------------------------------


def _missing(side: str, names: Iterable[str], table: Mapping[str, str]) -> list[str]:
    """``["missing from <side>: [...]"]`` for the ``names`` absent from ``table``, else []."""
    absent = [c for c in names if c not in table]
    return [f"missing from {side}: {absent}"] if absent else []


def check_schema(
    reference: Mapping[str, str],
    current: Mapping[str, str],
    columns: Sequence[str] | None = None,
) -> list[str]:
    """Return the columns to test, or raise :class:`SchemaDriftError` naming every problem.

    ``reference`` / ``current`` map column name -> kind (see :func:`arrow_kind`). Kinds
    are compared by family: ``int`` and ``float`` are both numeric (a column of integers
    read with a missing value becomes float), everything else must match exactly. A column
    without a single value on one side has no type there (``null``) and matches anything:
    it is reported as drifted later, not as a schema change.
    With ``columns=None`` both sides must have exactly the same column set.
    """
    if columns is None:
        problems = _missing("current", reference, current)
        problems += _missing("reference", current, reference)
        selected = [c for c in reference if c in current]
    else:
        problems = _missing("reference", columns, reference)
        problems += _missing("current", columns, current)
        selected = [c for c in columns if c in reference and c in current]
    changed = [
        f"{c!r} ({reference[c]} -> {current[c]})"
        for c in selected
        if "null" not in (reference[c], current[c])
        and KIND_FAMILY[reference[c]] != KIND_FAMILY[current[c]]
    ]
    if changed:
        problems.append("type changed: " + ", ".join(changed))
    if problems:
        raise SchemaDriftError(
            "Schema drift between reference and current data; " + "; ".join(problems) + "."
        )
    return selected


# -- sampling and the full-data profile -----------------------------------------------------


@dataclass
class ColumnProfile:
    """Full-data facts about one column on one side, gathered while streaming."""

    rows: int = 0
    non_missing: int = 0
    distinct: set[Any] = field(default_factory=set)
    many_values: bool = False  # more than DISTINCT_CAP distinct values seen

    def update(self, array: pa.Array) -> None:
        self.rows += len(array)
        if pa.types.is_floating(array.type):
            # Evidently drops NaN and +/-inf as well as nulls before testing.
            finite = pc.is_finite(array)
            self.non_missing += int(pc.sum(finite).as_py() or 0)
            if not self.many_values:
                self._add_distinct(pc.filter(array, finite))
        else:
            self.non_missing += len(array) - array.null_count
            if not self.many_values:
                self._add_distinct(array.drop_null())

    def _add_distinct(self, values: pa.Array) -> None:
        # A high-cardinality column shows itself in its first values: hashing a prefix
        # avoids building a hash table of a million distinct floats just to learn that.
        prefix = pc.unique(values.slice(0, 1_000))
        if len(prefix) > DISTINCT_CAP:
            self.many_values = True
            self.distinct = set()
            return
        unique = pc.unique(values)
        if len(unique) <= DISTINCT_CAP:
            self.distinct |= set(unique.to_pylist())
        if len(unique) > DISTINCT_CAP or len(self.distinct) > DISTINCT_CAP:
            self.many_values = True
            self.distinct = set()


@dataclass
class SideSample:
    """The rows Evidently sees for one side, and how they were chosen."""

    frame: pd.DataFrame
    rows: int
    sampled_rows: int
    method: str  # "all rows" | "uniform" | "stratified"
    profiles: dict[str, ColumnProfile]
    strata: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "sampled_rows": self.sampled_rows,
            "sampled": self.sampled_rows < self.rows,
            "method": self.method,
            "strata": self.strata,
        }


def choose_rows(
    total: int, policy: SamplingPolicy, side: Side, strata_codes: np.ndarray | None = None
) -> np.ndarray | None:
    """Sorted row positions to keep, or ``None`` for "all rows" (``total`` within the cap).

    Uniform: a simple random sample without replacement. Stratified: proportional
    allocation with largest-remainder rounding (each stratum keeps its exact share up to
    one row), then a simple random sample inside each stratum. Seeded per side so
    reference and current draws are independent but reproducible.
    """
    cap = policy.max_rows_per_side
    if total <= cap:
        return None
    rng = np.random.default_rng([policy.seed, _SIDE_SEED[side]])
    if strata_codes is None:
        return np.sort(rng.choice(total, size=cap, replace=False))
    counts = np.bincount(strata_codes)
    quotas = cap * counts / total
    allocation = np.floor(quotas).astype(np.int64)
    shortfall = cap - int(allocation.sum())
    if shortfall:
        # Largest remainders first; ties broken by stratum order for determinism.
        order = np.argsort(-(quotas - allocation), kind="stable")[:shortfall]
        allocation[order] += 1
    by_stratum = np.argsort(strata_codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    picked = [
        rng.choice(by_stratum[bounds[i] : bounds[i + 1]], size=int(k), replace=False)
        for i, k in enumerate(allocation)
        if k > 0
    ]
    return np.sort(np.concatenate(picked))


def _strata_codes(source: TableSource, column: str, side: Side) -> np.ndarray:
    encoded = pc.dictionary_encode(source.read_column(column)).combine_chunks()
    n_strata = len(encoded.dictionary) + (1 if encoded.null_count else 0)
    if n_strata > MAX_STRATA:
        raise ConfigError(
            f"sampling.stratify_by={column!r} has {n_strata} distinct values in the {side} data; "
            f"stratified sampling needs a low-cardinality column (at most {MAX_STRATA})."
        )
    # Nulls form their own stratum, coded after the real values.
    return encoded.indices.fill_null(len(encoded.dictionary)).to_numpy().astype(np.int64)


def sample_side(
    source: TableSource,
    columns: Sequence[str],
    kinds: Mapping[str, str],
    policy: SamplingPolicy,
    side: Side,
) -> SideSample:
    """Stream ``columns`` of ``source`` once: profile every row, keep the sampled ones.

    Column by column, chunk by chunk: memory holds one decoded chunk of one column plus
    the sample, whatever the size of the input.
    """
    total = source.num_rows
    strata_codes = None
    if policy.stratify_by is not None and total > policy.max_rows_per_side:
        strata_codes = _strata_codes(source, policy.stratify_by, side)
    keep = choose_rows(total, policy, side, strata_codes)
    profiles = {c: ColumnProfile() for c in columns}
    sampled: list[pa.ChunkedArray] = []
    for name in columns:
        pieces: list[pa.Array] = []
        offset = 0
        for chunk in source.iter_column(name):
            profiles[name].update(chunk)
            if keep is None:
                pieces.append(chunk)
            else:
                lo, hi = np.searchsorted(keep, [offset, offset + len(chunk)])
                if hi > lo:
                    pieces.append(chunk.take(pa.array(keep[lo:hi] - offset)))
            offset += len(chunk)
        sampled.append(pa.chunked_array(pieces, type=source.schema.field(name).type))
    schema = pa.schema([source.schema.field(c) for c in columns])
    frame = pa.Table.from_arrays(sampled, schema=schema).to_pandas()
    method = (
        "all rows" if keep is None else ("stratified" if strata_codes is not None else "uniform")
    )
    return SideSample(
        frame=frame,
        rows=total,
        sampled_rows=len(frame),
        method=method,
        profiles=profiles,
        strata=int(np.count_nonzero(np.bincount(strata_codes)))
        if strata_codes is not None
        else None,
    )
