"""Hash-based train/holdout split: a row's side depends only on its key and the split seed.

As in TFX's hash-based splits, each row gets a stable 64-bit key (:func:`row_keys`) from its
key columns (``data.key``) or, without them, from its whole content. The key is mixed with
the split seed and the row is held out when the mixed value falls in the lowest
``holdout_fraction`` of the 64-bit range (:func:`holdout_mask`). Consequences:

- the same row with the same settings lands on the same side in every run, whatever the
  row order and whichever other rows are present, so a row held out once stays held out
  when later batches are appended;
- exact duplicate rows (content hashing) or rows sharing a key share a side, so a copy of a
  holdout row never leaks into training; key columns that name an entity (a customer id)
  give a grouped split;
- with one seed, the holdout at fraction 0.2 is a subset of the holdout at 0.25;
- the holdout size is binomial around ``holdout_fraction * n``, not exact, and the split is
  not stratified: :func:`check_split_classes` refuses a classification split where either
  side holds fewer than two classes.

:func:`trained_on` answers "which of these rows did a model train on" from the split
settings its training run recorded (:class:`StableSplit`, see :meth:`StableSplit.to_tags`)
and which rows came from the files of its data manifest.

The hash (scheme ``HASH_SCHEME``, recorded with the split) is computed from values, never
from Python's ``hash`` (salted per process) or from memory layout:

- integers, booleans and whole-valued floats become the same signed 64-bit integer (so a
  column read as ``int32``, ``Int64`` or ``float64`` after a missing value elsewhere hashes
  alike); other floats use their IEEE-754 bits, with ``-0.0`` as ``0.0``;
- datetimes become UTC nanoseconds since the epoch, whatever their unit (``ns``/``us``) or
  time zone; timedeltas nanoseconds;
- strings (``object``, ``string``, ``category``) are hashed by ``pandas.util.hash_array``:
  SipHash-2-4 of the UTF-8 bytes under pandas' fixed key, unchanged since pandas 0.20;
- nulls of any kind (``None``, ``NaN``, ``NaT``, ``pd.NA``) share one value;
- the columns are folded in key order (content hashing: columns sorted by name, so column
  order does not matter): ``h = splitmix64(31 * h + value)``, starting from a constant.

So the key is stable across processes, platforms (fixed-width integer arithmetic) and file
formats. It changes if the hashed columns change: with content hashing, adding a column
(a partition column such as ``dt``) reshuffles every row, which is why training records
the exact hashed columns and :func:`trained_on` needs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from airflow_mlops.core.errors import ConfigError, DataError

__all__ = [
    "HASH_SCHEME",
    "StableSplit",
    "check_split_classes",
    "hash_positions",
    "hashed_columns",
    "holdout_mask",
    "holdout_mask_for_keys",
    "row_keys",
    "rows_from_files",
    "trained_on",
]

#: Name of the hashing rules above; recorded with a split so that a later change of rules
#: is detected instead of silently moving rows between sides.
HASH_SCHEME = "mlops-rowhash-v1"

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NULL_VALUE = np.uint64(0x6E756C6C6E756C6C)  # one value for every kind of null
_SEED_SALT = 0x73706C6974736565  # separates the seed's mixing from the keys'
_TAG_PREFIX = "mlops.split."


def _mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (in place on a copy; wraps modulo 2**64)."""
    z = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def _validate_fraction(holdout_fraction: Any) -> float:
    if isinstance(holdout_fraction, bool) or not isinstance(
        holdout_fraction, (int, float, np.floating)
    ):
        raise ConfigError(f"holdout_fraction must be a number in (0, 1), got {holdout_fraction!r}")
    value = float(holdout_fraction)
    if not 0.0 < value < 1.0:
        raise ConfigError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    return value


def _validate_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"split seed must be an integer, got {seed!r}")
    return int(seed) & _MASK64


def hashed_columns(frame: pd.DataFrame, key_columns: Sequence[str] | None) -> list[str]:
    """The columns a row's key is computed from: ``key_columns`` in order, else all, sorted.

    Record this list with the model (:meth:`StableSplit.resolved`): content hashing over a
    frame with an extra column gives every row another key.
    """
    if key_columns is None:
        columns = [str(c) for c in frame.columns]
        if len(set(columns)) != len(columns):
            raise DataError("cannot hash rows by content: the frame has duplicate column names")
        if not columns:
            raise DataError("cannot hash rows by content: the frame has no columns")
        return sorted(columns)
    if isinstance(key_columns, str):
        key_columns = [key_columns]
    columns = list(key_columns)
    if not columns:
        raise ConfigError("key_columns is empty: name at least one column, or pass None")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"key column(s) {missing} are not in the data (columns: {list(frame.columns)[:20]})"
        )
    return columns


def row_keys(
    frame: pd.DataFrame,
    key_columns: Sequence[str] | None = None,
    *,
    by_content: bool | None = None,
) -> np.ndarray:
    """Stable 64-bit id (``uint64``) of each row, from ``key_columns`` or the row's content.

    Key columns must have no nulls (a null key cannot identify a row: the error names the
    column and how many); content hashing accepts nulls. ``by_content=True`` hashes the
    given ``key_columns`` (sorted, as recorded) as content, nulls accepted, without copying
    them out of a wider frame. See the module docstring for what the key is stable to.
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"row_keys needs a pandas DataFrame, got {type(frame).__name__}")
    if by_content is None:
        by_content = key_columns is None
    columns = hashed_columns(frame, key_columns)
    if not by_content:
        for column in columns:
            nulls = int(frame[column].isna().sum())
            if nulls:
                raise DataError(
                    f"key column {column!r} has {nulls} null value(s): every row needs a key "
                    "(fill them, or choose key columns without nulls)"
                )
    acc = np.full(len(frame), _GOLDEN, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in columns:
            acc = _mix64(acc * np.uint64(31) + _column_values(frame[column]))
    return acc


def _column_values(series: pd.Series) -> np.ndarray:
    """One uint64 per value, following the canonical rules of the module docstring."""
    nulls = series.isna().to_numpy()
    out = _canonical_values(series, nulls)
    if nulls.any():
        out[nulls] = _NULL_VALUE
    return out


def _canonical_values(series: pd.Series, nulls: np.ndarray) -> np.ndarray:
    """One unmixed uint64 per value (anything at the null positions)."""
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        categories = pd.Series(dtype.categories)
        categories = _canonical_values(categories, categories.isna().to_numpy())
        codes = series.cat.codes.to_numpy()
        out = categories[np.where(codes < 0, 0, codes)] if len(categories) else codes.astype("u8")
    elif pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
        wide = pd.api.types.is_unsigned_integer_dtype(dtype) and dtype.itemsize == 8
        out = _integers(series.to_numpy(dtype=np.uint64 if wide else np.int64, na_value=0))
    elif pd.api.types.is_float_dtype(dtype):
        out = _floats(series.to_numpy(dtype=np.float64, na_value=np.nan))
    elif pd.api.types.is_datetime64_any_dtype(dtype):
        values = series
        if getattr(dtype, "tz", None) is not None:
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        out = _integers(values.astype("datetime64[ns]").to_numpy().view(np.int64))
    elif pd.api.types.is_timedelta64_dtype(dtype):
        out = _integers(series.astype("timedelta64[ns]").to_numpy().view(np.int64))
    else:
        out = _objects(series, nulls)
    return out


def _integers(values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == np.uint64:  # beyond int64: keep the bits (no int64 can collide here)
        return array.copy()
    return array.astype(np.int64).view(np.uint64)


def _floats(values: np.ndarray) -> np.ndarray:
    """Whole floats as the integer they equal (-0.0 as 0); others (NaN, inf) as their bits."""
    with np.errstate(invalid="ignore"):
        as_int = values.astype(np.int64)
        whole = as_int.astype(np.float64) == values
    if not whole.any():
        return values.view(np.uint64).copy()
    # Out-of-range casts differ by platform (wrap or saturate): keep such values as bits.
    whole &= np.abs(values) < 2.0**63
    return np.where(whole, as_int.view(np.uint64), values.view(np.uint64))


def _objects(series: pd.Series, nulls: np.ndarray) -> np.ndarray:
    """Strings by pandas' SipHash; numbers, booleans and dates stored as objects canonically."""
    kind = pd.api.types.infer_dtype(series, skipna=True)
    filled = series[~nulls] if nulls.any() else series
    out = np.zeros(len(series), dtype=np.uint64)
    if kind in ("integer", "boolean", "floating", "mixed-integer-float", "decimal"):
        out[~nulls] = (
            _floats(filled.to_numpy(dtype=np.float64))
            if kind != "integer"
            else (_integers(filled.to_numpy(dtype=np.int64)))
        )
    elif kind in ("datetime", "datetime64", "date"):
        stamps = pd.Series(pd.to_datetime(filled, utc=True))
        out[~nulls] = _canonical_values(stamps, np.zeros(len(stamps), dtype=bool))
    else:
        texts = filled.to_numpy(dtype=object)
        if kind not in ("string", "empty"):
            texts = np.array([str(v) for v in texts], dtype=object)
        out[~nulls] = pd.util.hash_array(texts, categorize=True)
    return out


def hash_positions(keys: np.ndarray, seed: int) -> np.ndarray:
    """Each key's position in ``[0, 2**53)`` under ``seed`` (``uint64``): the split holds a
    row out at fraction ``f`` iff its position is below ``f * 2**53``. A seeded sample of
    exactly ``k`` rows (the ``k`` lowest positions) uses it too."""
    seed_value = _mix64(np.array([_validate_seed(seed) ^ _SEED_SALT], dtype=np.uint64))[0]
    return _mix64(np.asarray(keys, dtype=np.uint64) ^ seed_value) >> np.uint64(11)


def holdout_mask_for_keys(keys: np.ndarray, holdout_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the held-out rows for precomputed :func:`row_keys`."""
    fraction = _validate_fraction(holdout_fraction)
    # Top 53 bits as an exact double in [0, 1): the threshold compare has no rounding.
    return hash_positions(keys, seed).astype(np.float64) < fraction * 2.0**53


def holdout_mask(
    frame: pd.DataFrame,
    holdout_fraction: float,
    seed: int,
    key_columns: Sequence[str] | None = None,
) -> np.ndarray:
    """``True`` for the rows of ``frame`` that the split with these settings holds out."""
    fraction = _validate_fraction(holdout_fraction)
    _validate_seed(seed)
    return holdout_mask_for_keys(row_keys(frame, key_columns), fraction, seed)


def rows_from_files(frame: pd.DataFrame, file_column: str, files: Sequence[str]) -> np.ndarray:
    """``True`` for rows whose ``file_column`` (the file each row was read from) is in ``files``.

    ``files`` are the paths of a model's data manifest; the reader adds the column (e.g.
    pyarrow.dataset's ``__filename``) and the paths must be spelt the same way.
    """
    if file_column not in frame.columns:
        raise DataError(
            f"file column {file_column!r} is not in the data: cannot tell which rows came "
            "from the model's manifest files"
        )
    return frame[file_column].isin(set(files)).to_numpy(dtype=bool)


def trained_on(
    frame: pd.DataFrame,
    key_columns: Sequence[str] | None,
    seed: int,
    holdout_fraction: float,
    *,
    in_training_data: np.ndarray | None = None,
    keys: np.ndarray | None = None,
) -> np.ndarray:
    """``True`` for the rows of ``frame`` that a model trained with these split settings used.

    A row was trained on when it was in the model's training data (``in_training_data``:
    the rows from its manifest's files, see :func:`rows_from_files`; ``None`` means every
    row of ``frame``) and is on the train side of the split. Pass the ``key_columns`` the
    model recorded (for content hashing, its recorded column list, not ``None``, unless
    ``frame`` holds exactly those columns). ``keys`` skips hashing when the caller already
    computed :func:`row_keys` with the same columns.
    """
    fraction = _validate_fraction(holdout_fraction)
    if keys is None:
        keys = row_keys(frame, key_columns)
    elif len(keys) != len(frame):
        raise DataError(f"keys has {len(keys)} values for a frame of {len(frame)} rows")
    train_side = ~holdout_mask_for_keys(keys, fraction, seed)
    if in_training_data is None:
        return train_side
    in_training_data = np.asarray(in_training_data, dtype=bool)
    if in_training_data.shape != train_side.shape:
        raise DataError(
            f"in_training_data has {in_training_data.shape[0]} values for a frame of "
            f"{len(frame)} rows"
        )
    return train_side & in_training_data


def check_split_classes(y: Any, holdout: np.ndarray, target: str) -> None:
    """Refuse a classification split where the train or the holdout side has < 2 classes.

    The hash split is not stratified (a row's side cannot depend on the other rows); class
    shares on each side follow the data's up to binomial noise. This is the check that
    replaces stratification's guarantees where they matter.
    """
    values = pd.Series(np.asarray(y))
    holdout = np.asarray(holdout, dtype=bool)
    for side, mask in (("training", ~holdout), ("holdout", holdout)):
        classes = values[mask].nunique()
        if classes < 2:
            raise DataError(
                f"the {side} side of the hash split holds {classes} class(es) of target "
                f"{target!r} ({int(mask.sum())} rows); a classifier and its metrics need at "
                "least two (add data, or raise training.holdout_fraction)"
            )


@dataclass(frozen=True)
class StableSplit:
    """Split settings as a training run records them and evaluation reads them back.

    ``key_columns`` is the resolved list of hashed columns (:meth:`resolved`), ``by_content``
    says whether they are the whole row (no ``data.key``).
    """

    holdout_fraction: float
    seed: int
    key_columns: tuple[str, ...]
    by_content: bool
    scheme: str = HASH_SCHEME

    def __post_init__(self) -> None:
        _validate_fraction(self.holdout_fraction)
        _validate_seed(self.seed)
        if not self.key_columns:
            raise ConfigError("a recorded split needs its hashed columns")

    @classmethod
    def resolved(
        cls,
        frame: pd.DataFrame,
        holdout_fraction: float,
        seed: int,
        key_columns: Sequence[str] | None = None,
    ) -> StableSplit:
        """The settings with the concrete columns hashed for ``frame``."""
        columns = hashed_columns(frame, key_columns)
        return cls(float(holdout_fraction), int(seed), tuple(columns), key_columns is None)

    def keys(self, frame: pd.DataFrame) -> np.ndarray:
        """:func:`row_keys` of the recorded columns; content hashing accepts nulls there
        (a missing feature value), key columns do not."""
        return row_keys(frame, list(self.key_columns), by_content=self.by_content)

    def holdout(self, frame: pd.DataFrame) -> np.ndarray:
        return holdout_mask_for_keys(self.keys(frame), self.holdout_fraction, self.seed)

    def trained_on(
        self, frame: pd.DataFrame, in_training_data: np.ndarray | None = None
    ) -> np.ndarray:
        return trained_on(
            frame,
            list(self.key_columns),
            self.seed,
            self.holdout_fraction,
            in_training_data=in_training_data,
            keys=self.keys(frame),
        )

    def to_tags(self) -> dict[str, str]:
        """MLflow tags (strings) that :meth:`from_tags` reads back."""
        import json

        return {
            f"{_TAG_PREFIX}scheme": self.scheme,
            f"{_TAG_PREFIX}holdout_fraction": repr(self.holdout_fraction),
            f"{_TAG_PREFIX}seed": str(self.seed),
            f"{_TAG_PREFIX}key_columns": json.dumps(list(self.key_columns)),
            f"{_TAG_PREFIX}by_content": "true" if self.by_content else "false",
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> StableSplit | None:
        """The recorded split, or ``None`` when the run recorded none (membership unknown).

        A split recorded under another hashing scheme is refused: its rows' sides cannot
        be recomputed here, and guessing would put the champion's training rows back.
        """
        import json

        if f"{_TAG_PREFIX}scheme" not in tags:
            return None
        scheme = tags[f"{_TAG_PREFIX}scheme"]
        if scheme != HASH_SCHEME:
            raise DataError(
                f"the run's split used hashing scheme {scheme!r}, this version computes "
                f"{HASH_SCHEME!r}: its training rows cannot be worked out"
            )
        try:
            return cls(
                holdout_fraction=float(tags[f"{_TAG_PREFIX}holdout_fraction"]),
                seed=int(tags[f"{_TAG_PREFIX}seed"]),
                key_columns=tuple(json.loads(tags[f"{_TAG_PREFIX}key_columns"])),
                by_content=tags.get(f"{_TAG_PREFIX}by_content") == "true",
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"the run's split tags are incomplete or malformed: {exc}") from exc
