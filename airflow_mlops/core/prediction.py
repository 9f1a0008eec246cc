"""Batch scoring: a registered model version scores a dataset chunk by chunk.

The model is named by a registry URI only (see :mod:`airflow_mlops.core.model_uri`). An alias
(``models:/churn@champion``) is resolved to its version *first* and the pinned URI
(``models:/churn/7``) is what loads, so every written row names the exact version that
produced it even if the alias moves while the job runs.

One input file is streamed: parquet in record batches, CSV in pandas chunks, so memory is
bounded by the chunk size. A dataset (a folder or prefix, Hive partitions, a glob, or any
read with a ``window``/``window_end``) is read through
:func:`airflow_mlops.core.data_window.read_window` (only the model's columns when its
signature names them) and scored chunk by chunk; its lineage is the manifest content hash of
the files read. The output is streamed to a temporary file and published atomically
(``os.replace`` next to the target for local paths, a single PUT for S3), so a retry simply
overwrites it and readers never see a half-written file.

Predictions by partition (:mod:`airflow_mlops.core.prediction_layout`) also carry the
classifier's probabilities when the model has ``predict_proba``: ``score`` (the positive
class's) for two classes, ``score_<class>`` for more, so the decay check can compute
``roc_auc`` and ``log_loss`` from the stored predictions.

Over ~600 lines on purpose: resolving, reading, scoring and publishing are one streaming
job whose parts share the chunk and column contract; the output layout (partition URIs) is
in :mod:`airflow_mlops.core.prediction_layout`, which the factories import at parse time.
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_mlops.core.constants import DEFAULT_CHUNK_ROWS
from airflow_mlops.core.errors import (
    ConfigError,
    DataError,
    DataNotFoundError,
    ModelUriError,
    UnreadableDataError,
)
from airflow_mlops.core.model_uri import ModelUri, parse_model_uri
from airflow_mlops.core.provenance import ModelTrust, verified_local_copy
from airflow_mlops.core.storage import (
    Storage,
    is_s3_uri,
    local_path,
    sha256_bytes,
    sha256_file,
    table_format,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.data_window import DataWindow

__all__ = [
    "MODEL_NAME_COLUMN",
    "MODEL_VERSION_COLUMN",
    "PREDICTION_COLUMN",
    "SCORE_COLUMN",
    "PredictionResult",
    "ResolvedModel",
    "conform_to_signature",
    "feature_columns_for",
    "load_model",
    "open_chunks",
    "open_dataset_chunks",
    "prediction_frame",
    "resolve_model_version",
    "run_batch_prediction",
    "score_dataset",
    "score_frame",
    "widen_integer_columns",
]

PREDICTION_COLUMN = "prediction"
MODEL_NAME_COLUMN = "model_name"
MODEL_VERSION_COLUMN = "model_version"
SCORE_COLUMN = "score"


@dataclass(frozen=True)
class ResolvedModel:
    """A registry URI pinned to one model version."""

    requested_uri: str
    name: str
    version: int
    run_id: str | None
    status: str

    @property
    def pinned_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class PredictionResult:
    """What a batch prediction wrote; :meth:`to_xcom` is the JSON pushed to XCom."""

    output_uri: str
    output_sha256: str
    output_format: str
    rows: int
    chunks: int
    input_uri: str
    input_sha256: str
    model_name: str
    model_version: int
    model_uri: str
    requested_model_uri: str
    model_run_id: str | None
    prediction_columns: list[str]
    input_files: int = 1
    partition: str | None = None

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


# -- model resolution ------------------------------------------------------------------------


def resolve_model_version(
    client: MlflowClient, model_uri: str, *, allowed_registry_uri: str | None = None
) -> ResolvedModel:
    """Validate ``model_uri`` and pin it to one READY registered version.

    Refuses logged-model URIs (``models:/m-<id>``): predictions must name a registered version.
    """
    from mlflow.exceptions import MlflowException

    parsed: ModelUri = parse_model_uri(model_uri, allowed_registry_uri=allowed_registry_uri)
    if parsed.is_logged_model or parsed.name is None:
        raise ModelUriError(
            f"Refused model URI {model_uri!r} for batch prediction: a logged model has no "
            "registry version to record with the predictions; register it and use "
            "'models:/<name>@<alias>' or 'models:/<name>/<version>'."
        )
    from airflow_mlops.core.registry import current_alias_version

    try:
        number = (
            str(parsed.version)
            if parsed.alias is None
            else current_alias_version(client, parsed.name, parsed.alias)
        )
        if number is None:  # the model or its alias is missing: nothing else is swallowed
            raise ModelUriError(
                f"Model URI {parsed.uri!r} resolves to nothing: registered model "
                f"{parsed.name!r} has no alias {parsed.alias!r}."
            )
        version: ModelVersion = client.get_model_version(parsed.name, number)
    except MlflowException as err:
        if getattr(err, "error_code", None) in {
            "RESOURCE_DOES_NOT_EXIST",
            "INVALID_PARAMETER_VALUE",
        }:
            what = f"alias {parsed.alias!r}" if parsed.alias else f"version {parsed.version}"
            raise ModelUriError(
                f"Model URI {parsed.uri!r} resolves to nothing: registered model "
                f"{parsed.name!r} has no {what} ({err.message})."
            ) from err
        raise
    status = str(version.status)
    if status != "READY":
        raise ModelUriError(
            f"Model version {parsed.name}/{version.version} (from {parsed.uri!r}) is not READY "
            f"(status {status}); wait for it with ModelVersionReadySensor."
        )
    return ResolvedModel(
        requested_uri=parsed.uri,
        name=parsed.name,
        version=int(version.version),
        run_id=version.run_id or None,
        status=status,
    )


def feature_columns_for(
    model: Any, columns: Sequence[str], key_columns: Sequence[str]
) -> list[str]:
    """The columns fed to the model: the signature's inputs when named, else all but the keys."""
    schema = model.metadata.get_input_schema() if model.metadata else None
    if schema is not None and schema.has_input_names():
        return list(schema.input_names())
    return [c for c in columns if c not in set(key_columns)]


def conform_to_signature(frame: pd.DataFrame, model: Any) -> pd.DataFrame:
    """Widen integer columns to the float type the model's signature declares.

    CSV chunks are typed chunk by chunk: a float column whose values in one chunk happen to be
    whole numbers is read as int64 there, and MLflow refuses int64 -> float64 ("can not safely
    convert"). Without this, whether a job succeeds would depend on where chunks split. Other
    mismatches are left for MLflow's schema check to report.
    """
    schema = model.metadata.get_input_schema() if model.metadata else None
    return widen_integer_columns(frame, schema)


def widen_integer_columns(frame: pd.DataFrame, schema: Any) -> pd.DataFrame:
    """Cast integer columns that ``schema`` (an MLflow input ``Schema``) declares as floats."""
    from mlflow.types import DataType

    if schema is None or not schema.has_input_names():
        return frame
    widen = {DataType.double: "float64", DataType.float: "float32"}
    for spec in schema.inputs:
        spec_type = getattr(spec, "type", None)
        target = next((dtype for kind, dtype in widen.items() if spec_type == kind), None)
        column = getattr(spec, "name", None)
        if target and column in frame.columns and pd.api.types.is_integer_dtype(frame[column]):
            frame[column] = frame[column].astype(target)
    return frame


# -- reading in chunks -----------------------------------------------------------------------


@dataclass
class _Source:
    """An opened input: its column names, its chunks and the sha256 of its bytes."""

    uri: str
    fmt: str
    columns: list[str]
    chunks: Iterator[pd.DataFrame]
    sha256: str
    files: int = 1


def open_chunks(storage: Storage, uri: str, chunk_rows: int, stack: ExitStack) -> _Source:
    """Open ``uri`` (parquet or CSV, local or S3) and iterate it ``chunk_rows`` rows at a time."""
    fmt = table_format(uri)
    handle: Any
    if is_s3_uri(uri):
        # The S3 object is fetched once (compressed size); decoding stays chunked.
        data = storage.read_bytes(uri)
        digest = sha256_bytes(data)
        handle = io.BytesIO(data)
    else:
        path = local_path(uri)
        if not path.is_file():
            raise DataNotFoundError(f"No file at {uri}.")
        digest = sha256_file(path)
        handle = stack.enter_context(open(path, "rb"))  # noqa: SIM115 - closed by the stack
    try:
        if fmt == "parquet":
            parquet = pq.ParquetFile(handle)
            columns = list(parquet.schema_arrow.names)
            chunks = (batch.to_pandas() for batch in parquet.iter_batches(batch_size=chunk_rows))
        else:
            compression = "gzip" if uri.lower().endswith(".gz") else None
            reader = pd.read_csv(handle, chunksize=chunk_rows, compression=compression)
            stack.enter_context(reader)
            first = next(reader, None)
            if first is None:
                raise DataError(f"{uri} has no rows to score.")
            columns = [str(c) for c in first.columns]
            chunks = _prepend(first, reader)
    except pd.errors.EmptyDataError as err:
        raise UnreadableDataError(f"{uri} has no columns (empty csv).") from err
    except (pa.ArrowInvalid, ValueError, OSError, pd.errors.ParserError) as err:
        raise UnreadableDataError(f"{uri} cannot be read as {fmt}: {err}") from err
    return _Source(
        uri=uri, fmt=fmt, columns=columns, chunks=_readable(chunks, uri, fmt), sha256=digest
    )


def open_dataset_chunks(
    fs: AbstractFileSystem,
    uri: str,
    chunk_rows: int,
    *,
    window: DataWindow | None = None,
    end: str | None = None,
    columns: Sequence[str] | None = None,
) -> _Source:
    """Read the dataset ``uri`` within ``window`` (ending ``end``) and iterate it
    ``chunk_rows`` rows at a time; ``sha256`` is the manifest content hash of its files."""
    from airflow_mlops.core.data_window import read_window
    from airflow_mlops.core.manifest import build_manifest

    read = read_window(fs, uri, window, columns=columns, end=end or None)
    frame = read.frame
    chunks = (frame.iloc[i : i + chunk_rows] for i in range(0, len(frame), chunk_rows))
    return _Source(
        uri=uri,
        fmt=read.files[0].format,
        columns=[str(c) for c in frame.columns],
        chunks=chunks,
        sha256=build_manifest(fs, read.files).content_hash,
        files=len(read.files),
    )


def _signature_columns(model: Any, feature_columns: Sequence[str] | None) -> list[str] | None:
    """The columns the model needs when known before reading (to read only those)."""
    if feature_columns:
        return list(feature_columns)
    schema = model.metadata.get_input_schema() if model.metadata else None
    if schema is not None and schema.has_input_names():
        return list(schema.input_names())
    return None


def _prepend(first: pd.DataFrame, rest: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    yield first
    yield from rest


def _readable(chunks: Iterator[pd.DataFrame], uri: str, fmt: str) -> Iterator[pd.DataFrame]:
    """Chunks are decoded lazily: a corrupt later part must still fail as unreadable data."""
    try:
        yield from chunks
    except (pa.ArrowInvalid, pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise UnreadableDataError(f"{uri} cannot be read as {fmt}: {err}") from err


# -- predictions -----------------------------------------------------------------------------


def prediction_frame(raw: Any, rows: int, column: str = PREDICTION_COLUMN) -> pd.DataFrame:
    """Normalise what ``model.predict`` returned to a frame with one row per input row.

    One output becomes ``prediction``; several (multi-output, class probabilities) become
    ``prediction_<name or index>``.
    """
    if isinstance(raw, dict):
        frame = pd.DataFrame({str(k): np.asarray(v).ravel() for k, v in raw.items()})
    elif isinstance(raw, pd.DataFrame):
        frame = raw.reset_index(drop=True)
    elif isinstance(raw, pd.Series):
        frame = raw.reset_index(drop=True).to_frame()
    else:
        array = np.asarray(raw)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array.ravel()
        frame = pd.DataFrame(array) if array.ndim == 2 else pd.DataFrame({0: array})
    if len(frame) != rows:
        raise DataError(f"The model returned {len(frame)} predictions for {rows} input rows.")
    if frame.shape[1] == 1:
        frame.columns = [column]
    else:
        frame.columns = [f"{column}_{c}" for c in frame.columns]
    return frame


def score_frame(model: Any, inputs: pd.DataFrame) -> pd.DataFrame | None:
    """The classifier's probabilities for ``inputs``, or None when the model has none.

    Two classes: one column ``score`` (the probability of the larger label, the positive
    class of :mod:`airflow_mlops.core.metrics`); more: ``score_<class>`` in ``classes_``
    order. Reached through the pyfunc wrapper's raw model (the sklearn flavour).
    """
    try:
        raw = model.get_raw_model()
    except (AttributeError, NotImplementedError):
        raw = model
    if not hasattr(raw, "predict_proba"):
        return None
    proba = np.asarray(raw.predict_proba(inputs), dtype=float)
    if proba.ndim != 2 or len(proba) != len(inputs):
        return None
    if proba.shape[1] == 2:
        return pd.DataFrame({SCORE_COLUMN: proba[:, 1]})
    classes = list(getattr(raw, "classes_", range(proba.shape[1])))
    return pd.DataFrame({f"{SCORE_COLUMN}_{c}": proba[:, i] for i, c in enumerate(classes)})


class _ChunkWriter:
    """Streams frames into a local file of the output's format; same schema for every chunk."""

    def __init__(self, path: Path, fmt: str, gzip_csv: bool) -> None:
        self.path = path
        self.fmt = fmt
        self.gzip_csv = gzip_csv
        self._parquet: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._csv: Any = None

    def write(self, frame: pd.DataFrame) -> None:
        if self.fmt == "parquet":
            self._write_parquet(frame)
        else:
            self._write_csv(frame)

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        if self._schema is None:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            self._schema = table.schema.remove_metadata()
            self._parquet = pq.ParquetWriter(self.path, self._schema)
            table = table.replace_schema_metadata(None)
        else:
            try:
                table = pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                raise DataError(
                    f"A later chunk does not fit the output schema of the first chunk "
                    f"({self._schema}): {err}"
                ) from err
        assert self._parquet is not None
        self._parquet.write_table(table)

    def _write_csv(self, frame: pd.DataFrame) -> None:
        header = self._csv is None
        if self._csv is None:
            opener = gzip.open if self.gzip_csv else open
            self._csv = opener(self.path, "wt", newline="", encoding="utf-8")
        frame.to_csv(self._csv, index=False, header=header)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._csv is not None:
            self._csv.close()


def _check_columns(
    source_columns: Sequence[str],
    key_columns: Sequence[str],
    features: Sequence[str],
    prediction_column: str,
    uri: str,
) -> None:
    reserved = {prediction_column, MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN}
    clashing = sorted(reserved & set(key_columns))
    if clashing:
        raise ConfigError(
            f"key_columns {clashing} clash with the output columns {sorted(reserved)}."
        )
    missing_keys = [c for c in key_columns if c not in source_columns]
    if missing_keys:
        raise ConfigError(
            f"key_columns {missing_keys} are not in {uri} (columns: {list(source_columns)})."
        )
    missing = [c for c in features if c not in source_columns]
    if missing:
        raise DataError(
            f"{uri} lacks the model's input column(s) {missing} (columns: {list(source_columns)})."
        )


def score_dataset(
    *,
    model: Any,
    resolved: ResolvedModel,
    storage: Storage,
    input_uri: str,
    output_uri: str,
    key_columns: Sequence[str] = (),
    feature_columns: Sequence[str] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    prediction_column: str = PREDICTION_COLUMN,
    fs: AbstractFileSystem | None = None,
    window: DataWindow | None = None,
    window_end: str | None = None,
    with_scores: bool = False,
    partition: str | None = None,
) -> PredictionResult:
    """Score ``input_uri`` with an already loaded ``model``; write and publish ``output_uri``.

    A dataset input (:func:`~airflow_mlops.core.prediction_layout.is_dataset_input`) needs
    ``fs`` and is read within ``window`` ending ``window_end``; ``with_scores`` adds the
    classifier's probabilities (:func:`score_frame`); ``partition`` is recorded as given.
    """
    from airflow_mlops.core.prediction_layout import is_dataset_input, reads_a_window

    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be a positive integer, got {chunk_rows!r}.")
    out_fmt = table_format(output_uri)
    local_output = not is_s3_uri(output_uri)
    windowed = reads_a_window(window, window_end)
    with ExitStack() as stack:
        if is_dataset_input(input_uri, windowed=windowed):
            if fs is None:
                raise ConfigError(f"Reading the dataset {input_uri} needs its filesystem.")
            needed = _signature_columns(model, feature_columns)
            source = open_dataset_chunks(
                fs,
                input_uri,
                chunk_rows,
                window=window,
                end=window_end,
                columns=list(dict.fromkeys([*key_columns, *needed])) if needed else None,
            )
        else:
            source = open_chunks(storage, input_uri, chunk_rows, stack)
        features = list(feature_columns or feature_columns_for(model, source.columns, key_columns))
        _check_columns(source.columns, key_columns, features, prediction_column, input_uri)
        if with_scores and any(c.startswith(SCORE_COLUMN) for c in key_columns):
            raise ConfigError(f"key_columns {list(key_columns)} clash with the score columns.")
        tmp_path = _temp_output_path(output_uri, local_output, stack)
        writer = _ChunkWriter(tmp_path, out_fmt, gzip_csv=output_uri.lower().endswith(".gz"))
        rows = chunks = 0
        prediction_columns: list[str] = []
        try:
            for chunk in source.chunks:
                if chunk.empty:
                    continue
                inputs = conform_to_signature(chunk[features].copy(), model)
                predictions = prediction_frame(model.predict(inputs), len(chunk), prediction_column)
                scores = score_frame(model, inputs) if with_scores else None
                parts = [chunk[list(key_columns)].reset_index(drop=True), predictions]
                if scores is not None:
                    parts.append(scores)
                out = pd.concat(parts, axis=1)
                prediction_columns = [c for c in out.columns if c not in set(key_columns)]
                out[MODEL_NAME_COLUMN] = resolved.name
                out[MODEL_VERSION_COLUMN] = np.int64(resolved.version)
                writer.write(out)
                rows += len(chunk)
                chunks += 1
        finally:
            writer.close()
        if rows == 0:
            raise DataError(f"{input_uri} has no rows to score.")
        output_sha256 = sha256_file(tmp_path)
        _publish(storage, tmp_path, output_uri, local_output)
    return PredictionResult(
        output_uri=output_uri,
        output_sha256=output_sha256,
        output_format=out_fmt,
        rows=rows,
        chunks=chunks,
        input_uri=input_uri,
        input_sha256=source.sha256,
        model_name=resolved.name,
        model_version=resolved.version,
        model_uri=resolved.pinned_uri,
        requested_model_uri=resolved.requested_uri,
        model_run_id=resolved.run_id,
        prediction_columns=prediction_columns,
        input_files=source.files,
        partition=partition,
    )


def _temp_output_path(output_uri: str, local_output: bool, stack: ExitStack) -> Path:
    """A temporary file: next to a local target (same filesystem, so rename is atomic)."""
    if local_output:
        target = local_path(output_uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    else:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mlops-pred-"))) / "out"
    stack.callback(lambda: tmp.unlink(missing_ok=True))
    return tmp


def _publish(storage: Storage, tmp_path: Path, output_uri: str, local_output: bool) -> None:
    if local_output:
        os.replace(tmp_path, local_path(output_uri))
    else:
        # One PUT: S3 makes the new object visible all at once.
        storage.write_bytes(output_uri, tmp_path.read_bytes())


# -- the whole job ---------------------------------------------------------------------------


def load_model(
    client: MlflowClient, pinned_uri: str, dst_dir: str, trust: ModelTrust | None = None
) -> Any:
    """Download a pinned registry URI into ``dst_dir``, check who created it (``trust``,
    see :mod:`airflow_mlops.core.provenance`) and only then load it as a pyfunc model."""
    import mlflow.pyfunc

    local = verified_local_copy(client, pinned_uri, dst_dir, trust)
    return mlflow.pyfunc.load_model(local)


def run_batch_prediction(
    *,
    client: MlflowClient,
    storage: Storage,
    model_uri: str,
    input_uri: str,
    output_uri: str,
    key_columns: Sequence[str] = (),
    feature_columns: Sequence[str] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    allowed_registry_uri: str | None = None,
    trust: ModelTrust | None = None,
    fs: AbstractFileSystem | None = None,
    window: DataWindow | None = None,
    window_end: str | None = None,
    with_scores: bool = False,
    partition: str | None = None,
) -> PredictionResult:
    """Resolve ``model_uri`` to a version, load it, score ``input_uri``, write ``output_uri``.

    Call with MLflow configured for the right server (inside ``MlflowHook.session()``). The
    version is refused before anything is unpickled unless ``trust`` accepts it
    (:class:`~airflow_mlops.core.errors.UntrustedModelError`). ``fs``, ``window``,
    ``window_end``, ``with_scores`` and ``partition``: see :func:`score_dataset`.
    """
    resolved = resolve_model_version(client, model_uri, allowed_registry_uri=allowed_registry_uri)
    # The downloaded artifacts are removed after scoring, so a long-lived worker does not
    # accumulate model copies; they must outlive scoring (some flavours read files lazily).
    with tempfile.TemporaryDirectory(prefix="mlops-model-") as model_dir:
        model = load_model(client, resolved.pinned_uri, model_dir, trust)
        return score_dataset(
            model=model,
            resolved=resolved,
            storage=storage,
            input_uri=input_uri,
            output_uri=output_uri,
            key_columns=key_columns,
            feature_columns=feature_columns,
            chunk_rows=chunk_rows,
            fs=fs,
            window=window,
            window_end=window_end,
            with_scores=with_scores,
            partition=partition,
        )
