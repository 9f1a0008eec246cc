"""The training window: which part of a dataset a run reads.

:class:`DataWindow` is the ``data.window`` setting (pydantic, import-light): ``all``, the last
N partitions, or the last duration by a date-like partition key or by a time column, plus an
optional row cap with a seeded sample. :func:`select_window` picks files from a listing
without reading them; :func:`window_row_filter` is the row filter of a time-column window;
:func:`read_window` does resolve → select → read → sample in one call.

The row cap samples by row hash, not by row position (:func:`sample_mask`): a row is kept
when its position under the window's seed (:func:`~airflow_mlops.core.stable_split.hash_positions`
of its :func:`~airflow_mlops.core.stable_split.row_keys`, with the seed salted apart from the
split's) is among the ``max_rows`` lowest. The kept rows are exactly those whose position is
below a threshold, returned as a fraction: with that fraction, the seed and the hashed
columns, anyone can recompute which rows of the window a run kept, whatever their order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from airflow_mlops.core.datasets import DataFile, read_files, resolve_files
from airflow_mlops.core.errors import ConfigError, DataNotFoundError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from fsspec import AbstractFileSystem

__all__ = [
    "SAMPLE_SEED_SALT",
    "DataWindow",
    "WindowRead",
    "format_duration",
    "parse_duration",
    "read_window",
    "sample_mask",
    "sample_rows",
    "sample_seed",
    "select_window",
    "window_row_filter",
]

# Salts the window's seed so that the row cap's sample and the split (same seed number)
# order the rows independently: else the holdout would be a subset of the kept rows' lowest.
SAMPLE_SEED_SALT = 0x6D6C6F7073636170  # "mlopscap"

DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# A date in a file name, for datasets of daily files without key=value folders.
NAME_DATE = re.compile(r"(\d{4}-\d{2}-\d{2}(?:[T ]\d{2}(?::?\d{2}){0,2})?|\d{8})")


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``, ``"45s"``, seconds, or a ``timedelta``."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    match = DURATION.match(str(value))
    if not match:
        raise ConfigError(
            f"window.last: {value!r} is not a duration; write e.g. '30d', '12h', '2w'."
        )
    return timedelta(**{DURATION_UNITS[match[2]]: int(match[1])})


def format_duration(value: timedelta) -> str:
    """The compact form :func:`parse_duration` reads: ``2d``, ``12h``, ``90m``, ``45s``."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class DataWindow(BaseModel):
    """Which partitions (and rows) a run reads. ``"all"`` or a mapping, e.g.
    ``{"last_partitions": 7}``, ``{"last": "30d", "key": "dt"}``,
    ``{"last": "90d", "time_column": "event_time", "max_rows": 100000, "seed": 1}``.

    ``key`` names the partition key that orders partitions (default: the only key, else the
    one whose values are all dates; with no ``key=value`` folders, each file is a partition,
    ordered by the date in its name, else by path).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    last_partitions: int | None = Field(default=None, ge=1)
    last: timedelta | None = None
    key: str | None = None
    time_column: str | None = None
    max_rows: int | None = Field(default=None, ge=1)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _all_is_the_default(cls, value: Any) -> Any:
        if value == "all":
            return {}
        return value

    @field_validator("last", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if value is None:
            return None
        duration = parse_duration(value)
        if duration <= timedelta(0):
            raise ValueError(f"window.last must be positive, not {value!r}")
        return duration

    @field_serializer("last")
    def _compact_duration(self, value: timedelta | None) -> str | None:
        return None if value is None else format_duration(value)

    @model_validator(mode="after")
    def _one_kind(self) -> DataWindow:
        if self.last_partitions is not None and self.last is not None:
            raise ValueError("set one of window.last_partitions and window.last, not both")
        if self.time_column and self.last is None:
            raise ValueError("window.time_column needs window.last (a duration)")
        if self.time_column and self.key:
            raise ValueError("window.last goes by window.key or window.time_column, not both")
        return self

    @property
    def kind(self) -> Literal["all", "last_partitions", "last"]:
        if self.last_partitions is not None:
            return "last_partitions"
        return "last" if self.last is not None else "all"

    def describe(self) -> str:
        """One line for logs and run tags, e.g. ``last 7 partitions; max 1000 rows (seed 0)``."""
        text = {
            "all": "all partitions",
            "last_partitions": f"last {self.last_partitions} partitions",
            "last": f"last {format_duration(self.last or timedelta())} by "
            f"{self.time_column or self.key or 'partition date'}",
        }[self.kind]
        if self.max_rows:
            text += f"; max {self.max_rows} rows (seed {self.seed})"
        return text


# -- selecting files ----------------------------------------------------------------------


def select_window(
    files: Sequence[DataFile], window: DataWindow, *, end: datetime | date | str | None = None
) -> list[DataFile]:
    """The files in ``window``, from a listing (no data read).

    ``end`` is the newest partition to include (a date, datetime or partition value; e.g. the
    partition that landed, or the run's data interval end); default: the newest there is.
    ``all`` with an ``end`` keeps the dated partitions up to it (every file when partitions
    hold no dates: there is nothing to compare an end with). A time-column window keeps
    every file: its rows are cut by :func:`window_row_filter`.
    """
    if window.time_column or (window.kind == "all" and end is None):
        return list(files)
    if window.kind == "all":
        return _all_up_to(files, window, end)
    order = _partition_order(files, window)
    values = sorted(set(order.values()))
    if end is not None:
        cap = _order_value(end, dates=isinstance(values[0], datetime))
        values = [v for v in values if v <= cap]
    if window.kind == "last_partitions":
        kept = set(values[-window.last_partitions :])
    else:
        kept = _values_in_last(values, window, files)
    selected = [f for f in files if order[f.path] in kept]
    if not selected:
        raise DataNotFoundError(
            f"The window ({window.describe()}, ending {end}) selects no file of the dataset "
            f"of {files[0].path}."
        )
    return selected


def _all_up_to(files: Sequence[DataFile], window: DataWindow, end: Any) -> list[DataFile]:
    try:
        order = _partition_order(files, window)
    except ConfigError:  # several undated partition keys: no order to cut
        return list(files)
    if not all(isinstance(value, datetime) for value in order.values()):
        return list(files)
    cap = _order_value(end, dates=True)
    selected = [f for f in files if order[f.path] <= cap]
    if not selected:
        raise DataNotFoundError(
            f"The window ({window.describe()}, ending {end}) selects no file of the dataset "
            f"of {files[0].path}."
        )
    return selected


def _values_in_last(values: list[Any], window: DataWindow, files: Sequence[DataFile]) -> set:
    if values and not isinstance(values[0], datetime):
        raise ConfigError(
            f"window.last ({window.last}) needs date-like partition values; the dataset of "
            f"{files[0].path} has e.g. {values[0]!r}."
        )
    if not values:
        return set()
    start = values[-1] - window.last
    return {v for v in values if v > start}


def _partition_order(files: Sequence[DataFile], window: DataWindow) -> dict[str, Any]:
    """Each file's ordering value: its partition's date (or int, or text)."""
    if not files:
        raise DataNotFoundError("No data files to select a window from.")
    raw = {f.path: _partition_value(f, _order_key(files, window)) for f in files}
    dates = all(_as_datetime(v) is not None for v in raw.values())
    return {path: _order_value(value, dates=dates) for path, value in raw.items()}


def _order_key(files: Sequence[DataFile], window: DataWindow) -> str | None:
    keys = list(files[0].partition)
    if window.key:
        if window.key not in keys:
            raise ConfigError(
                f"window.key {window.key!r} is not a partition key of the dataset of "
                f"{files[0].path}; its keys are {keys or 'none'}."
            )
        return window.key
    if len(keys) <= 1:
        return keys[0] if keys else None
    dated = [k for k in keys if all(_as_datetime(f.partition[k]) for f in files)]
    if not dated:
        raise ConfigError(
            f"Set window.key: the dataset of {files[0].path} has partition keys {keys} and "
            "none of them holds dates only."
        )
    return dated[0]


def _partition_value(file: DataFile, key: str | None) -> str:
    if key is not None:
        return file.partition[key]
    name = file.path.rsplit("/", 1)[-1]
    match = NAME_DATE.search(name)
    return match[1] if match else file.path


def _order_value(value: Any, *, dates: bool) -> Any:
    if dates:
        parsed = _as_datetime(value)
        if parsed is None:
            raise ConfigError(f"window end {value!r} is not a date.")
        return parsed
    text = str(value)
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


def _as_datetime(value: Any) -> datetime | None:
    """A naive UTC datetime from a date, datetime or ISO text; ``None`` if not date-like."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


# -- rows ---------------------------------------------------------------------------------


def window_row_filter(
    window: DataWindow, *, end: datetime | date | str | None = None
) -> Callable[[pa.Schema], Any] | None:
    """For a time-column window, a function of the dataset schema returning the filter
    ``end - last < time_column <= end`` (``end`` default: now, UTC); else ``None``.

    It is a function because the cut-off literal must have the column's type (with or
    without a time zone); :func:`airflow_mlops.core.datasets.read_files` calls it.
    """
    if not window.time_column:
        return None
    column = window.time_column
    stop = _as_datetime(end if end is not None else datetime.now(timezone.utc))
    if stop is None:
        raise ConfigError(f"window end {end!r} is not a date.")
    start = stop - window.last

    def row_filter(schema: pa.Schema) -> Any:
        return _time_range(schema, column, start, stop)

    return row_filter


def _time_range(schema: pa.Schema, column: str, start: datetime, stop: datetime) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    if column not in schema.names:
        raise ConfigError(
            f"window.time_column {column!r} is not a column; columns: {schema.names}."
        )
    kind = schema.field(column).type
    if pa.types.is_timestamp(kind) and kind.tz:
        start, stop = (t.replace(tzinfo=timezone.utc) for t in (start, stop))
    elif pa.types.is_date(kind):
        start, stop = start.date(), stop.date()
    elif not pa.types.is_timestamp(kind):
        raise ConfigError(f"window.time_column {column!r} holds {kind}, not timestamps or dates.")
    field = pc.field(column)
    return (field > pa.scalar(start, type=kind)) & (field <= pa.scalar(stop, type=kind))


def sample_mask(keys: Any, window: DataWindow) -> tuple[Any, float | None]:
    """``(keep mask, fraction)`` for ``window.max_rows`` by row hash (module docstring).

    ``keys`` are the rows' :func:`~airflow_mlops.core.stable_split.row_keys`. Exactly
    ``max_rows`` rows are kept (fewer only when duplicate keys tie at the cut); ``fraction``
    is the cut: ``holdout_mask_for_keys(keys, fraction, window.seed ^ SAMPLE_SEED_SALT)``
    gives the same mask. ``(all True, None)`` when no cap applies.
    """
    import numpy as np

    from airflow_mlops.core.stable_split import hash_positions

    rows = len(keys)
    if not window.max_rows or rows <= window.max_rows:
        return np.ones(rows, dtype=bool), None
    positions = hash_positions(keys, sample_seed(window))
    cut = np.partition(positions, window.max_rows)[window.max_rows]
    # cut < 2**53: exact as a double, and so is the division by a power of two.
    return positions < cut, float(cut) / 2.0**53


def sample_seed(window: DataWindow) -> int:
    """The seed of the row cap's hash sample (the window's seed, salted)."""
    return (window.seed ^ SAMPLE_SEED_SALT) & ((1 << 64) - 1)


def sample_rows(
    frame: pd.DataFrame, window: DataWindow, key_columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """At most ``window.max_rows`` rows, chosen by row hash (:func:`sample_mask`), in their
    original order. Rows are keyed by ``key_columns``, else by their content (every column
    but :data:`~airflow_mlops.core.datasets.SOURCE_FILE_COLUMN`)."""
    if not window.max_rows or len(frame) <= window.max_rows:
        return frame
    from airflow_mlops.core.datasets import SOURCE_FILE_COLUMN
    from airflow_mlops.core.stable_split import row_keys

    if key_columns is None:
        content = sorted(str(c) for c in frame.columns if c != SOURCE_FILE_COLUMN)
        keys = row_keys(frame, content, by_content=True)
    else:
        keys = row_keys(frame, list(key_columns))
    mask, _ = sample_mask(keys, window)
    return frame[mask]


@dataclass(frozen=True)
class WindowRead:
    """A window's rows and the exact files they came from (for the manifest)."""

    frame: pd.DataFrame
    files: list[DataFile]


def read_window(
    fs: AbstractFileSystem,
    uri: str,
    window: DataWindow | None = None,
    *,
    columns: Sequence[str] | None = None,
    end: datetime | date | str | None = None,
    source_column: str | None = None,
    key_columns: Sequence[str] | None = None,
) -> WindowRead:
    """List ``uri``, keep the files in ``window``, read them, cap the rows (by the hash of
    ``key_columns``, else of each row's content: :func:`sample_rows`). ``source_column``
    adds each row's file path (:func:`~airflow_mlops.core.datasets.read_files`)."""
    window = window or DataWindow()
    files = select_window(resolve_files(fs, uri), window, end=end)
    frame = read_files(
        fs,
        files,
        columns=columns,
        row_filter=window_row_filter(window, end=end),
        source_column=source_column,
    )
    return WindowRead(frame=sample_rows(frame, window, key_columns), files=files)
