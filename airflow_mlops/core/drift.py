"""Data drift on Evidently 0.7: sampling, schema checks, the report, its summary, the debounce.

The verdicts are Evidently's (``Report`` + ``DataDriftPreset`` on ``Dataset`` /
``DataDefinition``; never ``evidently.legacy``). This module decides what Evidently is
given so that the verdicts stay right on millions of rows:

1. **Schema first** (:func:`check_schema`): reference and current must have the columns
   under test with the same type family, read from file metadata before any data. A
   mismatch raises :class:`SchemaDriftError` naming the columns (fail closed).
2. **One streaming pass per side** (:func:`sample_side`): Parquet is read one column and
   one row group at a time, only the columns under test; each chunk updates a small
   full-data profile (non-missing count, distinct values up to a cap) and contributes the
   rows drawn by a seeded sample. Memory stays at one decoded column chunk plus the
   sample, whatever the input size.
3. **Column plan from the full data** (:func:`plan_columns`): Evidently picks a column's
   type and drift method from the data it sees (e.g. > 1,000 reference rows selects normed
   Wasserstein instead of a K-S p-value). We reproduce that choice from the *full-data*
   profile and pin it, so a sample never changes the method; columns Evidently cannot test
   (all values missing, datetimes) get a defined outcome here instead of an exception.
4. **Evidently on the sample** (:func:`run_drift_report`), then :func:`summarize` reads
   per-column method, score, threshold and verdict from the snapshot's JSON.
5. **Safe HTML** (:func:`sanitize_report_html`): Evidently embeds data and column names
   in a ``<script>`` block without escaping ``</script>``; we escape ``<``, ``>`` and ``&``
   inside that block so no value can end it.

The debounce (:func:`decide_retrain_signal`) is a pure function; the operator feeds it
the last retrain event and the number of active CT runs read from Airflow.
"""

from __future__ import annotations

import html as html_lib
import io
import json
import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from airflow_mlops.core.errors import (
    ConfigError,
    DataError,
    DataNotFoundError,
    EmptyBatchError,
    MlopsError,
    SchemaDriftError,
    UnreadableDataError,
)
from airflow_mlops.core.storage import is_s3_uri, local_path, table_format

if TYPE_CHECKING:
    from airflow_mlops.core.storage import Storage

SUMMARY_SCHEMA_VERSION = 1

# Tags read from / written to MLflow. Training (core/training.py) writes the run tags on the
# champion's run; the values are repeated here so this module does not import training.
TAG_REFERENCE_URI = "mlops.reference.uri"
TAG_FEATURES = "mlops.features"
TAG_FEATURES_URI = "mlops.features.uri"
TAG_TARGET = "mlops.target"
TAG_TASK = "mlops.task"
TAG_LAST_RETRAIN_SIGNAL = "mlops.last_retrain_signal"
#: Registered-model tag holding the newest drift verdict (read by the MLOps page).
TAG_LAST_DRIFT = "mlops.last_drift"
#: Registered-model tag values are VARCHAR(5000) on MLflow's SQL stores.
MAX_MODEL_TAG_CHARS = 5000

OnDrift = Literal["emit", "fail", "skip", "branch"]
ON_DRIFT_POLICIES: tuple[str, ...] = ("emit", "fail", "skip", "branch")

DEFAULT_MAX_ROWS_PER_SIDE = 50_000
DEFAULT_DEBOUNCE_SECONDS = 6 * 3600
PARQUET_BUFFER_BYTES = 1 << 20
MAX_STRATA = 1_000

# Evidently 0.7 rules we mirror (evidently/core/datasets.py and
# evidently/legacy/calculations/stattests/registry.py::_get_default_stattest).
EVIDENTLY_INTEGER_CARDINALITY_LIMIT = 10
EVIDENTLY_SMALL_REFERENCE_ROWS = 1_000
EVIDENTLY_FEW_VALUES = 5
# Distinct values tracked per column: enough to decide every rule above.
DISTINCT_CAP = EVIDENTLY_INTEGER_CARDINALITY_LIMIT + 1

# Methods whose score is a p-value (drift when score < threshold); the others are distances.
P_VALUE_METHODS = frozenset(
    {"ks", "chisquare", "z", "anderson", "cramer_von_mises", "es", "fisher_exact", "g_test"}
    | {"mannw", "t_test", "empirical_mmd"}
)

# Evidently registers these tests by name for categorical columns only, yet its automatic
# choice applies them to numerical columns with few values: such a column cannot be pinned
# by name and is left to Evidently's choice (only happens with <= 1,000 reference values).
_NOT_PINNABLE = frozenset({("numerical", "chisquare"), ("numerical", "z")})
# Display names Evidently reports for the methods it picks itself.
_METHOD_BY_DISPLAY_NAME = {
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensenshannon",
    "K-S p_value": "ks",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
    "Absolute text content drift": "abs_text_content_drift",
    "Percentile text content drift": "perc_text_content_drift",
}

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


@dataclass(frozen=True)
class DriftSettings:
    """What to compare and how: columns, per-column overrides, the dataset verdict rule.

    :param columns: columns under test; ``None`` compares every column and requires both
        sides to have the same column set.
    :param per_column_method: Evidently stat-test name per column (``"ks"``, ``"psi"``, ...);
        other columns get the method Evidently would choose on the full data.
    :param per_column_threshold: threshold per column (p-value or distance, per method).
    :param drift_share: the dataset drifts when drifted columns / tested columns >= this.
    """

    columns: tuple[str, ...] | None = None
    per_column_method: Mapping[str, str] = field(default_factory=dict)
    per_column_threshold: Mapping[str, float] = field(default_factory=dict)
    drift_share: float = 0.5
    sampling: SamplingPolicy = field(default_factory=SamplingPolicy)

    def __post_init__(self) -> None:
        if self.columns is not None:
            if isinstance(self.columns, str) or not all(isinstance(c, str) for c in self.columns):
                raise ConfigError(f"columns must be a list of column names, got {self.columns!r}")
            if not self.columns:
                raise ConfigError("columns must not be empty (omit it to compare every column)")
            duplicates = sorted({c for c in self.columns if list(self.columns).count(c) > 1})
            if duplicates:
                raise ConfigError(f"columns lists these names more than once: {duplicates}")
            object.__setattr__(self, "columns", tuple(self.columns))
        share = self.drift_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ConfigError(f"drift_share must be a number in (0, 1], got {share!r}")
        for name, method in dict(self.per_column_method).items():
            if not isinstance(method, str) or not method:
                raise ConfigError(
                    f"per_column_method[{name!r}] must be a stat-test name, got {method!r}"
                )
        for name, value in dict(self.per_column_threshold).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(
                    f"per_column_threshold[{name!r}] must be a non-negative number, got {value!r}"
                )


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
    """

    def __init__(self, uri: str, storage: Storage) -> None:
        self.uri = uri
        self.format = table_format(uri)
        self._parquet: pq.ParquetFile | None = None
        self._table: pa.Table | None = None
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
        # A column without a single value has no type in CSV (pandas says float64): mark it
        # null so it is reported as "all values missing", not as a type change.
        empty = [c for c in frame.columns if frame[c].isna().all()]
        table = pa.Table.from_pandas(frame, preserve_index=False)
        for name in empty:
            index = table.schema.get_field_index(name)
            table = table.set_column(index, pa.field(name, pa.null()), pa.nulls(len(table)))
        return table

    def kinds(self) -> dict[str, Kind]:
        """Column name -> kind, in file order."""
        return {f.name: arrow_kind(f.type) for f in self.schema}

    def iter_column(self, column: str) -> Iterator[pa.Array]:
        """One column, one row group at a time (CSV: one in-memory chunk at a time).

        Column by column rather than row batches: a file written as a single row group of
        millions of rows would otherwise be decoded whole, all columns at once.
        """
        if self._parquet is not None:
            for index in range(self._parquet.metadata.num_row_groups):
                chunked = self._parquet.read_row_group(index, columns=[column]).column(0)
                yield from chunked.chunks
        else:
            assert self._table is not None
            yield from self._table.column(column).chunks

    def read_column(self, column: str) -> pa.ChunkedArray:
        if self._parquet is not None:
            return self._parquet.read(columns=[column]).column(0)
        assert self._table is not None
        return self._table.column(column)


# -- schema check ---------------------------------------------------------------------------


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
    problems: list[str] = []
    if columns is None:
        only_ref = [c for c in reference if c not in current]
        only_cur = [c for c in current if c not in reference]
        if only_ref:
            problems.append(f"missing from current: {only_ref}")
        if only_cur:
            problems.append(f"missing from reference: {only_cur}")
        selected = [c for c in reference if c in current]
    else:
        missing_ref = [c for c in columns if c not in reference]
        missing_cur = [c for c in columns if c not in current]
        if missing_ref:
            problems.append(f"missing from reference: {missing_ref}")
        if missing_cur:
            problems.append(f"missing from current: {missing_cur}")
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


# -- the column plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnPlan:
    """What happens to one column: tested by Evidently, or a defined outcome of our own."""

    name: str
    kind: str
    evidently_type: (
        str | None
    )  # "numerical" | "categorical" | "text"; None = not given to Evidently
    method: str | None = None  # None: left to Evidently (see _NOT_PINNABLE)
    method_source: str | None = None  # "override" | "auto (full data)" | "auto (Evidently)"
    outcome: str = "tested"  # "tested" | "missing_one_side" | "not_tested"
    reason: str | None = None


def default_method(evidently_type: str, reference_rows: int, n_values: int) -> str:
    """The stat test Evidently 0.7 picks for a column, from the full-data counts.

    Mirrors ``_get_default_stattest``: up to 1,000 reference rows, K-S for numbers and
    chi-square / Z-test for few values; above, normed Wasserstein for numbers and
    Jensen-Shannon for categories or numbers with at most 5 distinct values.
    """
    if evidently_type == "text":
        return (
            "abs_text_content_drift"
            if reference_rows > EVIDENTLY_SMALL_REFERENCE_ROWS
            else "perc_text_content_drift"
        )
    few_values = n_values <= EVIDENTLY_FEW_VALUES
    if reference_rows <= EVIDENTLY_SMALL_REFERENCE_ROWS:
        if evidently_type == "numerical" and not few_values:
            return "ks"
        return "chisquare" if n_values > 2 else "z"
    if evidently_type == "numerical" and not few_values:
        return "wasserstein"
    return "jensenshannon"


def _evidently_type(
    name: str, kind: str, ref: ColumnProfile, cur: ColumnProfile, ref_sample: pd.Series
) -> str | None:
    """The column type Evidently would infer on the full data (both sides pooled)."""
    if kind == "boolean":
        return "categorical"
    if kind == "float":
        return "numerical"
    if kind == "int":
        if ref.non_missing < ref.rows or cur.non_missing < cur.rows:
            return "numerical"  # pandas reads integers with missing values as float
        pooled = ref.distinct | cur.distinct
        many = (
            ref.many_values or cur.many_values or len(pooled) > EVIDENTLY_INTEGER_CARDINALITY_LIMIT
        )
        return "numerical" if many else "categorical"
    if kind == "string":
        # Evidently calls a string column text when over half its values are distinct.
        # Exact distinct counts over millions of strings are costly: judged on the sample.
        values = ref_sample.dropna()
        return "text" if values.nunique() > 0.5 * len(values) else "categorical"
    return None


def plan_columns(
    columns: Sequence[str],
    kinds: Mapping[str, str],
    reference: SideSample,
    current: SideSample,
    settings: DriftSettings,
) -> list[ColumnPlan]:
    """Decide, per column, the Evidently type and pinned method or a defined outcome."""
    unknown = sorted(
        (set(settings.per_column_method) | set(settings.per_column_threshold)) - set(columns)
    )
    if unknown:
        raise ConfigError(
            f"per_column_method / per_column_threshold name columns not under test: {unknown}"
        )
    plans = []
    for name in columns:
        ref, cur = reference.profiles[name], current.profiles[name]
        kind = kinds[name]
        if ref.non_missing == 0 and cur.non_missing == 0:
            plans.append(
                ColumnPlan(
                    name,
                    kind,
                    None,
                    outcome="not_tested",
                    reason="all values missing on both sides",
                )
            )
            continue
        if ref.non_missing == 0 or cur.non_missing == 0:
            empty_side = "reference" if ref.non_missing == 0 else "current"
            plans.append(
                ColumnPlan(
                    name,
                    kind,
                    None,
                    method="all_missing",
                    outcome="missing_one_side",
                    reason=f"all values missing in {empty_side}",
                )
            )
            continue
        ev_type = _evidently_type(name, kind, ref, cur, reference.frame[name])
        if ev_type is None:
            plans.append(
                ColumnPlan(
                    name,
                    kind,
                    None,
                    outcome="not_tested",
                    reason=f"{kind} columns have no drift test",
                )
            )
            continue
        if name in settings.per_column_method:
            method, source = settings.per_column_method[name], "override"
        else:
            n_values = len(ref.distinct | cur.distinct)
            if ref.many_values or cur.many_values:
                n_values = DISTINCT_CAP + 1
            method, source = default_method(ev_type, ref.non_missing, n_values), "auto (full data)"
            if (ev_type, method) in _NOT_PINNABLE:
                method, source = None, "auto (Evidently)"
        plans.append(ColumnPlan(name, kind, ev_type, method=method, method_source=source))
    if not any(p.outcome != "not_tested" for p in plans):
        reasons = {p.name: p.reason for p in plans}
        raise DataError(f"No column can be tested for drift: {reasons}")
    return plans


# -- Evidently ------------------------------------------------------------------------------


@dataclass
class EvidentlyRun:
    snapshot_json: dict[str, Any]
    html: str


def run_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    plans: Sequence[ColumnPlan],
    settings: DriftSettings,
    metadata: Mapping[str, Any] | None = None,
) -> EvidentlyRun:
    """Evidently's ``DataDriftPreset`` on the planned columns, with their pinned methods."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    tested = [p for p in plans if p.evidently_type is not None]
    names = [p.name for p in tested]
    by_type = {
        t: [p.name for p in tested if p.evidently_type == t]
        for t in ("numerical", "categorical", "text")
    }
    # Every list given explicitly: Evidently then skips its own type inference pass.
    definition = DataDefinition(
        numerical_columns=by_type["numerical"],
        categorical_columns=by_type["categorical"],
        text_columns=by_type["text"],
        datetime_columns=[],
        unknown_columns=[],
        list_columns=[],
    )
    thresholds = {k: float(v) for k, v in settings.per_column_threshold.items() if k in names}
    preset = DataDriftPreset(
        columns=names,
        drift_share=float(settings.drift_share),
        per_column_method={p.name: p.method for p in tested if p.method is not None},
        per_column_threshold=thresholds or None,
    )
    report = Report([preset], include_tests=True, metadata=dict(metadata or {}))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # Constant columns make Evidently's correlation plots divide by zero: harmless.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(
            Dataset.from_pandas(current[names], data_definition=definition),
            Dataset.from_pandas(reference[names], data_definition=definition),
        )
        html = snapshot.get_html_str(as_iframe=False)
    return EvidentlyRun(snapshot_json=json.loads(snapshot.json()), html=html)


def evidently_version() -> str:
    from evidently import __version__

    return str(__version__)


# -- the summary ----------------------------------------------------------------------------


def _score_kind(method: str) -> str:
    return "p_value" if method in P_VALUE_METHODS else "distance"


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def column_results_from_snapshot(snapshot_json: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per column: method, score, threshold, drifted, read from Evidently's snapshot JSON.

    The verdict is the status of Evidently's own per-column drift test (FAIL = drifted).
    """
    metrics = {
        m["id"]: m
        for m in snapshot_json.get("metrics", [])
        if m.get("config", {}).get("type", "").endswith(":ValueDrift")
    }
    status_by_metric = {
        t["metric_config"]["metric_id"]: t["status"]
        for t in snapshot_json.get("tests", [])
        if t.get("metric_config", {}).get("metric_id") in metrics
    }
    results: dict[str, dict[str, Any]] = {}
    for metric_id, metric in metrics.items():
        config = metric["config"]
        status = status_by_metric.get(metric_id)
        if status is None:
            raise MlopsError(
                f"Evidently returned no drift test for column {config.get('column')!r}; "
                "cannot tell whether it drifted."
            )
        results[config["column"]] = {
            "score": _finite_or_none(metric.get("value")),
            "threshold": _finite_or_none(config.get("threshold")),
            "evidently_method": config.get("method"),
            "drifted": status == "FAIL",
        }
    return results


def summarize(
    plans: Sequence[ColumnPlan],
    evidently_results: Mapping[str, Mapping[str, Any]],
    settings: DriftSettings,
    reference: SideSample,
    current: SideSample,
    inputs: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON summary (schema documented in docs/operators/monitoring.md)."""
    columns: dict[str, dict[str, Any]] = {}
    for plan in plans:
        entry: dict[str, Any] = {
            "kind": plan.kind,
            "type": plan.evidently_type,
            "outcome": plan.outcome,
            "method": plan.method,
            "method_source": plan.method_source,
            "score_kind": None,
            "score": None,
            "threshold": None,
            "drifted": False,
            "reason": plan.reason,
        }
        if plan.outcome == "tested":
            result = evidently_results.get(plan.name)
            if result is None:
                raise MlopsError(f"Evidently returned no result for column {plan.name!r}.")
            method = plan.method or _METHOD_BY_DISPLAY_NAME.get(
                result["evidently_method"], result["evidently_method"]
            )
            entry.update(
                method=method,
                score_kind=_score_kind(method),
                score=result["score"],
                threshold=result["threshold"],
                drifted=result["drifted"],
            )
        elif plan.outcome == "missing_one_side":
            entry.update(drifted=True, score=1.0, score_kind="missing_share")
        columns[plan.name] = entry
    counted = [name for name, c in columns.items() if c["outcome"] != "not_tested"]
    drifted = [name for name in counted if columns[name]["drifted"]]
    share = len(drifted) / len(counted)
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "dataset": {
            "drifted": share >= settings.drift_share,
            "drift_share": float(settings.drift_share),
            "drifted_share": share,
            "drifted_columns": len(drifted),
            "tested_columns": len(counted),
        },
        "drifted_columns": drifted,
        "not_tested_columns": {
            n: c["reason"] for n, c in columns.items() if c["outcome"] == "not_tested"
        },
        "columns": columns,
        "sampling": {
            "policy": asdict(settings.sampling),
            "reference": reference.describe(),
            "current": current.describe(),
        },
        "inputs": dict(inputs),
        "engine": {"evidently": evidently_version(), "preset": "DataDriftPreset"},
    }


def small_summary(summary: Mapping[str, Any], max_columns: int = 50) -> dict[str, Any]:
    """The XCom-sized part of the summary: the verdict and (at most 50) drifted columns."""
    drifted = list(summary["drifted_columns"])
    return {
        "dataset": dict(summary["dataset"]),
        "drifted_columns": drifted[:max_columns],
        "drifted_columns_truncated": len(drifted) > max_columns,
        "sampled": {
            side: summary["sampling"][side]["sampled"] for side in ("reference", "current")
        },
    }


# -- HTML -----------------------------------------------------------------------------------

_DRAW_CALL = re.compile(r"window\.drawDashboard\((metric_[0-9a-f]{32}),")
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


def sanitize_report_html(report_html: str) -> str:
    """Escape ``<``, ``>`` and ``&`` inside Evidently's embedded data ``<script>`` block.

    Evidently 0.7 writes ``var metric_<uuid> = {json};`` and the additional graphs as raw
    ``json.dumps`` output inside ``<script>``; a column name or value holding
    ``</script>`` or ``<!--`` would end or confuse that block. In JSON those characters
    only occur inside strings, where ``\\u003c`` is the same character to JavaScript: the
    report shows the original text and the HTML parser never sees a tag. The block is
    located by the dashboard id (a random uuid, which data cannot forge). An unexpected
    layout raises instead of writing unsafe HTML.
    """
    draws = _DRAW_CALL.findall(report_html)
    if not draws:
        raise MlopsError("Cannot sanitise the Evidently report: its dashboard call was not found.")
    dashboard_id = draws[-1]
    start_marker = f"<script>\n    var {dashboard_id} = "
    graphs_marker = f";\n    var additional_graphs_{dashboard_id} = "
    start = report_html.find(start_marker)
    graphs = report_html.find(graphs_marker, start)
    # json.dumps never emits a raw newline, so the first "\n</script>" after the second
    # variable is the real end of the block.
    end = report_html.find(";\n</script>", graphs)
    if start < 0 or graphs < 0 or end < 0:
        raise MlopsError(
            "Cannot sanitise the Evidently report: its data block has an unexpected layout "
            f"(evidently {evidently_version()})."
        )
    body_start = start + len("<script>")
    block = report_html[body_start:end]
    escaped = re.sub(r"[<>&]", lambda m: _SCRIPT_ESCAPES[m.group(0)], block)
    return report_html[:body_start] + escaped + report_html[end:]


def sampling_banner(summary: Mapping[str, Any]) -> str:
    """A short, escaped HTML note stating what the report was computed on."""
    sampling = summary["sampling"]
    parts = []
    for side in ("reference", "current"):
        s = sampling[side]
        if s["sampled"]:
            parts.append(
                f"{side}: {s['method']} sample of {s['sampled_rows']:,} of {s['rows']:,} rows"
            )
        else:
            parts.append(f"{side}: all {s['rows']:,} rows")
    policy = sampling["policy"]
    text = (
        "; ".join(parts)
        + f" (seed {policy['seed']}, cap {policy['max_rows_per_side']:,} rows per side"
        + (f", stratified by {policy['stratify_by']}" if policy.get("stratify_by") else "")
        + ")."
    )
    not_tested = summary.get("not_tested_columns") or {}
    missing = [n for n, c in summary["columns"].items() if c["outcome"] == "missing_one_side"]
    if missing:
        text += f" Drifted without a test (all values missing on one side): {missing}."
    if not_tested:
        text += f" Not tested: {dict(not_tested)}."
    return (
        '<div style="font-family:sans-serif;padding:8px 16px;background:#fff8e1;'
        'border-bottom:1px solid #e0c068">airflow-mlops drift report. '
        f"{html_lib.escape(text)}</div>"
    )


def finalize_report_html(report_html: str, summary: Mapping[str, Any]) -> str:
    """Sanitised Evidently HTML with the sampling banner at the top of the body."""
    safe = sanitize_report_html(report_html)
    marker = "<body>"
    at = safe.find(marker)
    if at < 0:
        raise MlopsError("Cannot place the sampling note: the report has no <body>.")
    at += len(marker)
    return safe[:at] + "\n" + sampling_banner(summary) + safe[at:]


# -- the whole computation ------------------------------------------------------------------


@dataclass
class DriftResult:
    summary: dict[str, Any]
    html: str

    @property
    def drifted(self) -> bool:
        return bool(self.summary["dataset"]["drifted"])


def compute_drift(
    reference_uri: str,
    current_uri: str,
    storage: Storage,
    settings: DriftSettings | None = None,
) -> DriftResult:
    """Schema check, sampling, Evidently, summary and safe HTML for two tables by URI.

    Raises :class:`SchemaDriftError` (columns or types differ), :class:`EmptyBatchError`
    (current has no rows), :class:`DataError` (reference has no rows, or nothing testable).
    """
    settings = settings or DriftSettings()
    reference_source = TableSource(reference_uri, storage)
    current_source = TableSource(current_uri, storage)
    ref_kinds, cur_kinds = reference_source.kinds(), current_source.kinds()
    columns = check_schema(ref_kinds, cur_kinds, settings.columns)
    stratify = settings.sampling.stratify_by
    if stratify is not None:
        check_schema(ref_kinds, cur_kinds, [stratify])
    if reference_source.num_rows == 0:
        raise DataError(f"The reference data {reference_uri} has no rows.")
    if current_source.num_rows == 0:
        raise EmptyBatchError(f"The current batch {current_uri} has no rows: nothing to compare.")
    kinds = {c: _pooled_kind(ref_kinds[c], cur_kinds[c]) for c in columns}
    reference = sample_side(reference_source, columns, kinds, settings.sampling, "reference")
    current = sample_side(current_source, columns, kinds, settings.sampling, "current")
    plans = plan_columns(columns, kinds, reference, current, settings)
    inputs = {"reference_uri": reference_uri, "current_uri": current_uri}
    run = None
    if any(p.evidently_type is not None for p in plans):
        run = run_drift_report(reference.frame, current.frame, plans, settings, metadata=inputs)
    results = column_results_from_snapshot(run.snapshot_json) if run else {}
    summary = summarize(plans, results, settings, reference, current, inputs)
    report_html = finalize_report_html(run.html, summary) if run else _no_report_html(summary)
    return DriftResult(summary=summary, html=report_html)


def _pooled_kind(reference: str, current: str) -> str:
    """int on one side and float on the other is tested as float (as pandas would load it);
    a side without any value (``null``) takes the other side's kind."""
    if {reference, current} == {"int", "float"}:
        return "float"
    return current if reference == "null" else reference


def _no_report_html(summary: Mapping[str, Any]) -> str:
    """When every testable column is missing on one side Evidently has nothing to run on."""
    body = html_lib.escape(json.dumps(summary["dataset"]))
    return (
        "<!DOCTYPE html><html><head><meta charset='UTF-8'></head><body>"
        + sampling_banner(summary)
        + f"<pre>{body}</pre></body></html>"
    )


# -- the champion: default reference and features ------------------------------------------


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
            target = self.tags.get(TAG_TARGET)
            return [c for c in TableSource(uri, storage).schema.names if c != target]
        return None


def read_champion(client: Any, model_name: str) -> ChampionFacts | None:
    """The champion's version, run tags and run metrics; None when there is no champion."""
    from airflow_mlops.core.evaluation import resolve_champion

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


# -- retrain signal: the debounce -----------------------------------------------------------


@dataclass(frozen=True)
class RetrainDecision:
    """Whether to emit the retrain signal now, and why (logged and pushed to XCom)."""

    emit: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"emit": self.emit, "reason": self.reason}


def decide_retrain_signal(
    *,
    triggered: bool,
    trigger_reason: str,
    now: datetime,
    last_signal_at: datetime | None,
    debounce_seconds: float,
    active_ct_runs: int,
) -> RetrainDecision:
    """At most one retrain signal per window, and none while a CT run is queued or running.

    ``now`` and ``last_signal_at`` must both be timezone-aware.
    """
    if not triggered:
        return RetrainDecision(False, f"no retrain needed: {trigger_reason}")
    if active_ct_runs > 0:
        return RetrainDecision(
            False, f"{trigger_reason}; not signalled: {active_ct_runs} CT run(s) queued or running"
        )
    if last_signal_at is not None:
        elapsed = now - last_signal_at
        window = timedelta(seconds=debounce_seconds)
        if elapsed < window:
            return RetrainDecision(
                False,
                f"{trigger_reason}; not signalled: debounced, last signal at "
                f"{last_signal_at.isoformat()} ({int(elapsed.total_seconds())} s ago, window "
                f"{int(debounce_seconds)} s)",
            )
    return RetrainDecision(True, trigger_reason)


def validate_debounce_seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"debounce_seconds must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"debounce_seconds must be >= 0, got {value!r}")
    return seconds


def last_drift_tag(
    summary: Mapping[str, Any],
    *,
    at: str,
    airflow_task: Mapping[str, Any],
    mlflow_run_id: str | None = None,
    report_artifact: str | None = None,
    report_uri: str | None = None,
    champion_version: str | None = None,
    max_chars: int = MAX_MODEL_TAG_CHARS,
) -> str:
    """The value of :data:`TAG_LAST_DRIFT`: the verdict, where its report is, who made it.

    JSON that fits a registered-model tag (``max_chars``): drifted column names are dropped
    first, then the URIs, when the value would be too long. The page reads it with one
    registry call instead of listing the report folders of every monitoring run.
    """
    dataset = summary["dataset"]
    record: dict[str, Any] = {
        "detected": bool(dataset["drifted"]),
        "drifted_columns": int(dataset["drifted_columns"]),
        "tested_columns": int(dataset["tested_columns"]),
        "drifted_share": float(dataset["drifted_share"]),
        "drift_share": float(dataset["drift_share"]),
        "at": at,
        "champion_version": champion_version,
        "mlflow_run_id": mlflow_run_id,
        "report_artifact": report_artifact,
        "report_uri": report_uri,
        "airflow": {k: airflow_task.get(k) for k in ("dag_id", "run_id", "task_id", "map_index")},
        "columns": list(summary.get("drifted_columns", []))[:20],
    }
    for optional in ("columns", "report_uri", "report_artifact"):
        value = json.dumps(record, allow_nan=False)
        if len(value) <= max_chars:
            return value
        record.pop(optional)
    value = json.dumps(record, allow_nan=False)
    if len(value) > max_chars:
        raise MlopsError(f"The drift verdict does not fit a {max_chars}-character tag: {value!r}")
    return value


def drift_reason(summary: Mapping[str, Any]) -> str:
    """One line for logs, the asset event and the MLflow tag."""
    ds = summary["dataset"]
    cols = summary["drifted_columns"]
    shown = ", ".join(cols[:10]) + (f" (+{len(cols) - 10} more)" if len(cols) > 10 else "")
    verdict = "data drift" if ds["drifted"] else "no dataset drift"
    return (
        f"{verdict}: {ds['drifted_columns']}/{ds['tested_columns']} columns drifted "
        f"(share {ds['drifted_share']:.2f}, threshold {ds['drift_share']:.2f})"
        + (f": {shown}" if cols else "")
    )
