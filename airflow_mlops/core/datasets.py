"""Datasets by URI: list the data files a URI names, and read them into one frame.

A data URI names a parquet/csv file, a folder or prefix of such files (Hive-style
``key=value/`` partitions included) or a glob, on any fsspec filesystem (local, ``s3://``,
...). The filesystem is passed in, so this module needs no Airflow: the Airflow side builds
it from a connection (:meth:`airflow_mlops.hooks.storage.StorageHook.get_filesystem`).

:func:`resolve_files` lists and stats only: it never reads a data file. :func:`read_files`
reads with ``pyarrow.dataset`` (only the requested columns, filters pushed down) straight into
one pandas frame, with no copy of the raw bytes kept beside it. pyarrow and pandas are
imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import unquote, urlsplit

from airflow_mlops.core.errors import (
    DataNotFoundError,
    UnreadableDataError,
    UnsupportedFormatError,
)
from airflow_mlops.core.storage import TABLE_FORMATS, local_path, table_format

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.dataset as pads
    from fsspec import AbstractFileSystem

__all__ = [
    "SOURCE_FILE_COLUMN",
    "DataFile",
    "RowFilter",
    "arrow_filesystem",
    "filter_partitions",
    "fs_path",
    "open_dataset",
    "read_files",
    "resolve_files",
]

#: A pyarrow filter expression, or a function of the dataset schema returning one (for
#: filters whose literal must match a column's type, such as a timestamp cut-off).
RowFilter = Union["pads.Expression", Callable[["pa.Schema"], "pads.Expression"]]

#: The column :func:`read_files` adds (``source_column=``) for each row's file: its
#: :attr:`DataFile.path`, spelt as in manifest entries. Metadata, never a feature.
SOURCE_FILE_COLUMN = "__mlops_file"

GLOB_CHARS = re.compile(r"[*?\[]")
LOCAL_SCHEMES = ("", "file")
# Writers' side files (_SUCCESS, _metadata, .tmp files of atomic writes): pyarrow.dataset's
# default ignore_prefixes, applied to every path segment below the dataset root.
IGNORED_PREFIXES = (".", "_")


@dataclass(frozen=True)
class DataFile:
    """One data file of a dataset, as listed (no data read).

    ``path`` is a URI (``s3://bucket/key``) or an absolute local path. ``etag_or_mtime`` is the
    store's ETag (``etag:...``) when it gives one, else the modification time
    (``mtime:<ISO>``): with ``size`` it tells whether a file changed without reading it.
    ``partition`` holds the Hive ``key=value`` segments below the dataset root.
    """

    path: str
    size: int
    etag_or_mtime: str
    partition: dict[str, str] = field(default_factory=dict)

    @property
    def format(self) -> str:
        return table_format(self.path)

    def stat_key(self) -> tuple[str, int, str]:
        """What identifies this file's version without reading it."""
        return (self.path, self.size, self.etag_or_mtime)


# -- listing ------------------------------------------------------------------------------


def resolve_files(fs: AbstractFileSystem, uri: str) -> list[DataFile]:
    """The data files ``uri`` names, sorted by path, from one listing (no data read).

    A file gives itself; a folder or prefix gives every parquet/csv file below it (files and
    folders starting with ``.`` or ``_`` are writers' side files and are skipped); a glob
    (``*``, ``?``, ``[...]``, ``**`` across folders) gives the files it matches.
    """
    scheme = _scheme(uri)
    root = fs_path(fs, uri)
    if GLOB_CHARS.search(root):
        base = _glob_base(root)
        pattern = _glob_regex(root)
        entries = [e for e in _list_below(fs, base, uri) if pattern.fullmatch(e["name"])]
    else:
        info = _info(fs, root, uri)
        if info["type"] == "file":
            table_format(uri)  # refuse a single file of an unknown format by name
            return [_data_file(info, scheme, base=None)]
        base = root
        entries = _list_below(fs, base, uri)
    files = [
        _data_file(e, scheme, base)
        for e in entries
        if _is_data_file(e["name"], base) and e.get("type", "file") == "file"
    ]
    if not files:
        raise DataNotFoundError(
            f"No data files under {uri}: expected {', '.join(sorted(TABLE_FORMATS))} files."
        )
    files.sort(key=lambda f: f.path)
    _check_one_format(files)
    _check_same_partition_keys(files)
    return files


def filter_partitions(
    files: Sequence[DataFile], wanted: Mapping[str, Collection[str]]
) -> list[DataFile]:
    """The files whose partition values are among ``wanted[key]`` for every key (no read)."""
    for key in wanted:
        if files and key not in files[0].partition:
            raise DataNotFoundError(
                f"Partition key {key!r} is not in the dataset; its keys are "
                f"{sorted(files[0].partition) or 'none'}."
            )
    return [f for f in files if all(f.partition[k] in set(v) for k, v in wanted.items())]


def _scheme(uri: str) -> str:
    return urlsplit(uri).scheme if "://" in uri else ""


def fs_path(fs: AbstractFileSystem, uri: str) -> str:
    """The path ``fs`` takes for ``uri`` (no scheme; absolute for local files)."""
    if _scheme(uri) in LOCAL_SCHEMES:
        return str(local_path(uri).absolute())  # refuses file://<other host>/...
    return fs._strip_protocol(uri).rstrip("/")


def _uri(scheme: str, path: str) -> str:
    return path if scheme in LOCAL_SCHEMES else f"{scheme}://{path.lstrip('/')}"


def _info(fs: AbstractFileSystem, path: str, uri: str) -> dict[str, Any]:
    try:
        return fs.info(path)
    except FileNotFoundError as err:
        raise DataNotFoundError(f"Nothing at {uri}.") from err


def _list_below(fs: AbstractFileSystem, base: str, uri: str) -> list[dict[str, Any]]:
    """Every file below ``base`` with its size and ETag/mtime, in as few listing calls as
    the store allows (one paginated listing on S3)."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    try:
        if isinstance(fs, ArrowFSWrapper):
            # fsspec's generic find() lists folder by folder; pyarrow lists a prefix at once.
            return _arrow_list_below(fs, base)
        return list(fs.find(base, detail=True).values())
    except FileNotFoundError as err:
        raise DataNotFoundError(f"Nothing at {uri}.") from err


def _arrow_list_below(fs: Any, base: str) -> list[dict[str, Any]]:
    from pyarrow.fs import FileSelector, FileType

    infos = fs.fs.get_file_info(FileSelector(base, recursive=True, allow_not_found=True))
    return [
        {"name": i.path, "size": i.size, "type": "file", "mtime": i.mtime}
        for i in infos
        if i.type == FileType.File
    ]


def _is_data_file(name: str, base: str | None) -> bool:
    below = name[len(base) :].lstrip("/") if base else name.rsplit("/", 1)[-1]
    if any(part.startswith(IGNORED_PREFIXES) for part in below.split("/")):
        return False
    lowered = name.lower()
    return any(lowered.endswith(suffix) for suffix in TABLE_FORMATS)


def _data_file(info: Mapping[str, Any], scheme: str, base: str | None) -> DataFile:
    name = info["name"]
    return DataFile(
        path=_uri(scheme, name),
        size=int(info.get("size") or 0),
        etag_or_mtime=_version_tag(info),
        partition=_hive_partition(name, base),
    )


def _version_tag(info: Mapping[str, Any]) -> str:
    """``etag:<ETag>`` when the store gives one, else ``mtime:<ISO time, UTC>``."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if isinstance(mtime, (int, float)):
        mtime = datetime.fromtimestamp(mtime, tz=timezone.utc)
    if isinstance(mtime, datetime):
        return f"mtime:{mtime.astimezone(timezone.utc).isoformat()}"
    if mtime:
        return f"mtime:{mtime}"
    raise DataNotFoundError(f"The store gives neither an ETag nor an mtime for {info['name']}.")


def _hive_partition(name: str, base: str | None) -> dict[str, str]:
    if not base:
        return {}
    folders = name[len(base) :].strip("/").split("/")[:-1]
    pairs = (unquote(part).split("=", 1) for part in folders if "=" in part)
    return {key: value for key, value in pairs}


def _glob_base(pattern: str) -> str:
    """The folder above the first segment holding a wildcard."""
    head = GLOB_CHARS.split(pattern, 1)[0]
    return head.rsplit("/", 1)[0] if "/" in head else ""


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``**`` crosses folders, ``*`` and ``?`` stay within one, ``[...]`` is a class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            out.append("[" + pattern[i + 1 : end].replace("!", "^", 1) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _check_one_format(files: Sequence[DataFile]) -> None:
    first = files[0]
    for other in files[1:]:
        if other.format != first.format:
            raise UnsupportedFormatError(
                f"One dataset holds one format: {first.path} is {first.format} but "
                f"{other.path} is {other.format}."
            )


def _check_same_partition_keys(files: Sequence[DataFile]) -> None:
    keys = list(files[0].partition)
    for other in files[1:]:
        if list(other.partition) != keys:
            raise UnreadableDataError(
                f"{other.path} has partition keys {list(other.partition) or 'none'} but "
                f"{files[0].path} has {keys or 'none'}: every file of a dataset sits at the "
                "same partition depth."
            )


# -- reading ------------------------------------------------------------------------------


def read_files(
    fs: AbstractFileSystem,
    files: Sequence[DataFile],
    *,
    columns: Sequence[str] | None = None,
    row_filter: RowFilter | None = None,
    source_column: str | None = None,
) -> pd.DataFrame:
    """Read ``files`` (one dataset, from :func:`resolve_files`) into one pandas frame.

    Partition keys become string columns. Only ``columns`` are read (all when ``None``);
    ``row_filter`` is pushed down (partition pruning, parquet statistics). Every file's
    schema is checked first, so a file that cannot be read, holds other columns or types
    than the first file, or has a data column named like a partition key fails with an
    error naming it.

    With ``source_column`` (e.g. :data:`SOURCE_FILE_COLUMN`), the frame gets that column,
    last: each row's :attr:`DataFile.path`, dictionary-encoded (a pandas categorical of
    strings: one copy of each path, not one per row).
    """
    dataset = open_dataset(fs, files)
    schema = dataset.schema
    _check_columns(columns, schema, files[0])
    if source_column is not None and source_column in schema.names:
        raise UnreadableDataError(
            f"{files[0].path} has a column {source_column!r}, the name reserved for each "
            "row's source file: rename it."
        )
    by_path = {fs_path(fs, f.path): f for f in files}
    table = _scan(dataset, by_path, columns, _resolve_filter(row_filter, schema), source_column)
    # self_destruct frees each Arrow buffer once converted: one copy of the data at a time.
    return table.to_pandas(self_destruct=True, split_blocks=True)


def open_dataset(fs: AbstractFileSystem, files: Sequence[DataFile]) -> pads.FileSystemDataset:
    """``files`` (one dataset) as a ``pyarrow.dataset``, every file's schema checked.

    Reads each file's footer (parquet) or header (csv), no rows. The schema is the files'
    common one plus the partition keys as string columns; its fragments are in the order of
    ``files``. Fails naming the file that is empty, unreadable, has other columns or types
    than the first file, or a data column named like a partition key.
    """
    if not files:
        raise DataNotFoundError("No data files to read (the window selected none).")
    import pyarrow.dataset as pads

    arrow_fs = arrow_filesystem(fs)
    file_format = _file_format(files[0].format)
    fragments = [_fragment(file_format, arrow_fs, fs, f) for f in files]
    schemas = [_physical_schema(fragment, f) for fragment, f in zip(fragments, files, strict=True)]
    data_schema = _common_schema(files, schemas, files[0].format)
    schema = _with_partition_columns(data_schema, files)
    return pads.FileSystemDataset(fragments, schema, file_format, arrow_fs)


def arrow_filesystem(fs: AbstractFileSystem) -> Any:
    """The pyarrow filesystem for ``fs``: the native one when there is one (local, or a
    pyarrow filesystem wrapped for fsspec), else fsspec behind pyarrow's handler."""
    from fsspec.implementations.arrow import ArrowFSWrapper
    from fsspec.implementations.local import LocalFileSystem
    from pyarrow import fs as pafs

    if isinstance(fs, ArrowFSWrapper):
        return fs.fs
    if type(fs) is LocalFileSystem:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _file_format(fmt: str) -> Any:
    import pyarrow.dataset as pads

    return pads.ParquetFileFormat() if fmt == "parquet" else pads.CsvFileFormat()


def _fragment(file_format: Any, arrow_fs: Any, fs: Any, file: DataFile) -> Any:
    """The file as a pyarrow fragment carrying its partition values (its footer, once read
    for the schema check, is kept for the scan)."""
    return file_format.make_fragment(
        fs_path(fs, file.path),
        filesystem=arrow_fs,
        partition_expression=_partition_expression(file.partition),
    )


def _physical_schema(fragment: Any, file: DataFile) -> pa.Schema:
    import pyarrow as pa

    if file.size == 0:
        raise UnreadableDataError(f"{file.path} is empty (0 bytes).")
    try:
        return fragment.physical_schema
    except (pa.ArrowException, OSError, ValueError) as err:
        raise UnreadableDataError(f"{file.path} cannot be read as {file.format}: {err}") from err


def _common_schema(files: Sequence[DataFile], schemas: Sequence[pa.Schema], fmt: str) -> pa.Schema:
    """The first file's schema, if every file has the same columns and compatible types.

    CSV types are inferred per file (a column of whole numbers one day, decimals the next),
    so they are promoted; parquet types are the writer's and must match (a null column aside).
    """
    import pyarrow as pa

    merged = schemas[0]
    promote = "permissive" if fmt == "csv" else "default"
    for file, schema in zip(files[1:], schemas[1:], strict=True):
        _check_same_columns(file, schema, files[0], schemas[0])
        try:
            merged = pa.unify_schemas([merged, schema], promote_options=promote)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise UnreadableDataError(
                f"{file.path} has other column types than {files[0].path}: {err}"
            ) from err
    return merged


def _check_same_columns(file: DataFile, schema: Any, first: DataFile, first_schema: Any) -> None:
    missing = sorted(set(first_schema.names) - set(schema.names))
    extra = sorted(set(schema.names) - set(first_schema.names))
    if missing or extra:
        raise UnreadableDataError(
            f"{file.path} has a different schema than {first.path}: "
            f"missing columns {missing}, extra columns {extra}."
        )


def _with_partition_columns(schema: pa.Schema, files: Sequence[DataFile]) -> pa.Schema:
    import pyarrow as pa

    for key in files[0].partition:
        if key in schema.names:
            clashing = files[0]
            raise UnreadableDataError(
                f"{clashing.path} has a data column {key!r} that clashes with its partition "
                f"folder '{key}={clashing.partition[key]}': rename one of them."
            )
        schema = schema.append(pa.field(key, pa.string()))
    return schema


def _check_columns(columns: Sequence[str] | None, schema: pa.Schema, first: DataFile) -> None:
    missing = [c for c in columns or () if c not in schema.names]
    if missing:
        raise UnreadableDataError(
            f"Columns {missing} are not in the dataset of {first.path}; it has {schema.names}."
        )


def _partition_expression(partition: Mapping[str, str]) -> Any:
    import pyarrow.compute as pc

    expression = pc.scalar(True)
    for key, value in partition.items():
        expression = expression & (pc.field(key) == value)
    return expression


def _resolve_filter(row_filter: RowFilter | None, schema: pa.Schema) -> Any:
    return row_filter(schema) if callable(row_filter) else row_filter


def _scan(
    dataset: Any,
    by_path: Mapping[str, DataFile],
    columns: Any,
    where: Any,
    source_column: str | None = None,
) -> Any:
    """The whole scan at once; on failure, scan file by file to name the bad one."""
    import pyarrow as pa

    columns = list(columns) if columns else None
    try:
        if source_column is None:
            return dataset.to_table(columns=columns, filter=where)
        return _scan_with_source(dataset, by_path, columns, where, source_column)
    except (pa.ArrowException, OSError, ValueError) as err:
        for fragment in dataset.get_fragments():
            file = by_path[fragment.path]
            try:
                fragment.to_table(schema=dataset.schema, columns=columns, filter=where)
            except (pa.ArrowException, OSError, ValueError) as file_err:
                raise UnreadableDataError(
                    f"{file.path} cannot be read as {file.format}: {file_err}"
                ) from file_err
        first = next(iter(by_path.values()))
        raise UnreadableDataError(f"The dataset of {first.path} cannot be read: {err}") from err


def _scan_with_source(
    dataset: Any, by_path: Mapping[str, DataFile], columns: Any, where: Any, name: str
) -> Any:
    """The scan plus ``name``: each row's :attr:`DataFile.path`, dictionary-encoded.

    Each batch comes tagged with its fragment, so every chunk of the column is a run of one
    dictionary code: no per-row path string is ever built (pyarrow's ``__filename`` field
    would materialise one per row before it could be encoded).
    """
    import numpy as np
    import pyarrow as pa

    scanner = dataset.scanner(columns=columns, filter=where)
    batches, sources = [], []
    for tagged in scanner.scan_batches():
        batch = tagged.record_batch
        if not batch.num_rows:  # a filtered-out file must not become a category
            continue
        batches.append(batch)
        indices = pa.array(np.zeros(batch.num_rows, dtype=np.int32))
        path = pa.array([by_path[tagged.fragment.path].path], pa.string())
        sources.append(pa.DictionaryArray.from_arrays(indices, path))
    table = pa.Table.from_batches(batches, schema=scanner.projected_schema)
    kind = pa.dictionary(pa.int32(), pa.string())
    return table.append_column(pa.field(name, kind), pa.chunked_array(sources, type=kind))
