"""Read and write tabular data and report files by URI: local paths and ``s3://bucket/key``.

Every table read also yields the sha256 of the exact bytes read, so each model can be
traced back to its data. The S3 client is injected (``s3_client_factory``) so this module
needs no Airflow: the Airflow side builds the client from an AWS connection.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from airflow_mlops.core.errors import (
    DataNotFoundError,
    UnreadableDataError,
    UnsupportedFormatError,
)

if TYPE_CHECKING:
    import pandas as pd

TABLE_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv"}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], block_bytes: int = 1 << 20) -> str:
    """The sha256 of a local file, read a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


def is_s3_uri(uri: str) -> bool:
    return uri.startswith("s3://")


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an ``s3://`` URI."""
    cleaned = [p.strip("/") for p in parts if p]
    if is_s3_uri(base):
        return "/".join([base.rstrip("/"), *cleaned])
    return str(Path(base).joinpath(*cleaned))


class UncheckableUriError(ValueError):
    """A URI that cannot be compared with a root; the message says why, never the URI."""


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def normalize_uri(uri: str, *, resolve_links: bool = True) -> str:
    """The canonical form of a local path or ``s3://`` URI, for "is it under that root".

    Refused with :class:`UncheckableUriError`: empty values, control characters,
    backslashes, ``.``/``..``/empty segments (one trailing ``/`` is allowed), ``file://``
    naming another host or carrying ``?``/``#``, ``?``/``#``/``%`` in an ``s3://`` URI, any
    other scheme, and relative paths. So no spelling of a URI can pass a check that its
    plain form fails. Local paths are absolute; with ``resolve_links`` symlinks are
    resolved (a link inside a root may point outside it).
    """
    text = str(uri).strip()
    if not text:
        raise UncheckableUriError("it is empty")
    if any(unicodedata.category(char) == "Cc" for char in text):
        raise UncheckableUriError("it contains a control character")
    if "\\" in text:
        raise UncheckableUriError("it contains a backslash")
    if is_s3_uri(text):
        return _normalize_s3(text)
    if text.startswith("file://"):
        host, _, path = text.removeprefix("file://").partition("/")
        if host not in ("", "localhost"):
            raise UncheckableUriError(f"it names another host ({host!r})")
        if "?" in path or "#" in path:
            raise UncheckableUriError("a file:// URI with a query or fragment")
        text = "/" + path
    elif _SCHEME.match(text):
        raise UncheckableUriError("only local paths and s3:// URIs can be checked")
    if not text.startswith("/"):
        raise UncheckableUriError("it is not an absolute path")
    _refuse_dot_segments(text.split("/")[1:])
    if resolve_links:
        return os.path.realpath(text)
    return text.rstrip("/") or "/"


def _normalize_s3(text: str) -> str:
    bucket, _, key = text.removeprefix("s3://").partition("/")
    if not bucket or any(char in text for char in "?#%"):
        raise UncheckableUriError("not a plain s3://bucket/key URI (no '?', '#' or '%')")
    if key:
        _refuse_dot_segments(key.split("/"))
    return f"s3://{bucket}/{key}"


def _refuse_dot_segments(segments: list[str]) -> None:
    """No ``.``, ``..`` or empty segment; the last may be empty (a trailing ``/``)."""
    if any(s in (".", "..") for s in segments) or "" in segments[:-1]:
        raise UncheckableUriError("it has '.', '..' or empty segments")


def is_under_root(uri: str, root: str, *, resolve_links: bool = True) -> bool:
    """``uri`` is ``root`` or below it: whole path segments (``/data`` does not cover
    ``/data2``), the same bucket, never a local path under an ``s3://`` root or the reverse.

    Both are normalised first (:func:`normalize_uri`, which raises
    :class:`UncheckableUriError` for either one that cannot be checked).
    """
    path = normalize_uri(uri, resolve_links=resolve_links)
    base = normalize_uri(root, resolve_links=resolve_links)
    if is_s3_uri(path) != is_s3_uri(base):
        return False
    folder = base.rstrip("/")
    if not folder:  # the local root "/"
        return True
    return path.rstrip("/") == folder or path.startswith(folder + "/")


def table_format(uri: str) -> str:
    """``parquet`` or ``csv`` from the URI's extension; anything else is refused."""
    lowered = uri.lower()
    for suffix, fmt in sorted(TABLE_FORMATS.items(), key=lambda kv: -len(kv[0])):
        if lowered.endswith(suffix):
            return fmt
    raise UnsupportedFormatError(
        f"Cannot tell the table format of {uri!r}: expected one of "
        f"{', '.join(sorted(TABLE_FORMATS))}."
    )


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket or not key:
        raise UnsupportedFormatError(f"Malformed S3 URI {uri!r}: expected s3://bucket/key.")
    return bucket, key


def local_path(uri: str) -> Path:
    """The local path of a plain path or ``file:///path`` URI; other hosts and schemes refused."""
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            # file://<host>/path names another machine: never read or write the local /path.
            raise UnsupportedFormatError(
                f"{uri!r} names the host {parsed.netloc!r}: only local file:///path URIs "
                "are supported."
            )
        uri = parsed.path
    if "://" in uri:
        raise UnsupportedFormatError(
            f"Unsupported URI scheme in {uri!r}: use a local path or s3://bucket/key."
        )
    return Path(uri)


@dataclass(frozen=True)
class TableRead:
    """A table read from storage together with its lineage facts."""

    frame: pd.DataFrame
    uri: str
    sha256: str
    rows: int
    columns: list[str]
    format: str

    def lineage(self) -> dict[str, Any]:
        """JSON-safe lineage facts (no data)."""
        return {"uri": self.uri, "sha256": self.sha256, "rows": self.rows, "format": self.format}


class Storage:
    """Byte, text, JSON and table I/O on local paths and S3 URIs."""

    def __init__(self, s3_client_factory: Callable[[], Any] | None = None) -> None:
        self._s3_client_factory = s3_client_factory
        self._s3_client: Any = None

    # -- bytes -----------------------------------------------------------------------------
    def _s3(self) -> Any:
        if self._s3_client is None:
            if self._s3_client_factory is None:
                raise UnsupportedFormatError(
                    "An s3:// URI was given but no S3 connection is configured (set aws_conn_id)."
                )
            self._s3_client = self._s3_client_factory()
        return self._s3_client

    def read_bytes(self, uri: str) -> bytes:
        if is_s3_uri(uri):
            bucket, key = _split_s3(uri)
            client = self._s3()
            try:
                return client.get_object(Bucket=bucket, Key=key)["Body"].read()
            except client.exceptions.NoSuchKey as err:
                raise DataNotFoundError(f"No object at {uri}.") from err
            except client.exceptions.NoSuchBucket as err:
                raise DataNotFoundError(f"Bucket of {uri} does not exist.") from err
        path = local_path(uri)
        if not path.is_file():
            raise DataNotFoundError(f"No file at {uri}.")
        return path.read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write atomically: readers never see a half-written file."""
        if is_s3_uri(uri):
            bucket, key = _split_s3(uri)
            self._s3().put_object(Bucket=bucket, Key=key, Body=data)
            return
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, uri: str) -> bool:
        if is_s3_uri(uri):
            bucket, key = _split_s3(uri)
            client = self._s3()
            try:
                client.head_object(Bucket=bucket, Key=key)
                return True
            except client.exceptions.ClientError as err:
                if err.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                    return False
                raise
        return local_path(uri).is_file()

    # -- text and JSON ----------------------------------------------------------------------
    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str))

    def read_json(self, uri: str) -> Any:
        text = self.read_text(uri)
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise UnreadableDataError(f"{uri} is not valid JSON: {err}") from err

    # -- tables -----------------------------------------------------------------------------
    def read_table(self, uri: str, columns: list[str] | None = None) -> TableRead:
        """Read a parquet or csv table; the hash covers the exact bytes stored."""
        fmt = table_format(uri)
        data = self.read_bytes(uri)
        if not data:
            raise UnreadableDataError(f"{uri} is empty (0 bytes).")
        frame = parse_table(data, fmt, uri, columns)
        return TableRead(
            frame=frame,
            uri=uri,
            sha256=sha256_bytes(data),
            rows=len(frame),
            columns=[str(c) for c in frame.columns],
            format=fmt,
        )

    def write_table(self, frame: pd.DataFrame, uri: str) -> str:
        """Write ``frame`` in the format the URI's extension names; returns the sha256."""
        data = serialize_table(frame, table_format(uri), uri)
        self.write_bytes(uri, data)
        return sha256_bytes(data)

    def sha256(self, uri: str) -> str:
        return sha256_bytes(self.read_bytes(uri))


def parse_table(data: bytes, fmt: str, uri: str, columns: list[str] | None = None) -> pd.DataFrame:
    import pandas as pd

    try:
        if fmt == "parquet":
            return pd.read_parquet(io.BytesIO(data), columns=columns)
        compression = "gzip" if uri.lower().endswith(".gz") else None
        return pd.read_csv(io.BytesIO(data), usecols=columns, compression=compression)
    except pd.errors.EmptyDataError as err:
        raise UnreadableDataError(f"{uri} has no columns (empty csv).") from err
    except (
        ValueError,
        OSError,
        UnicodeDecodeError,
        EOFError,
        zlib.error,
        pd.errors.ParserError,
    ) as err:
        # pyarrow raises ArrowInvalid (a ValueError) for garbage bytes; a damaged .csv.gz
        # raises EOFError (truncated) or zlib.error (corrupted) from the gzip module.
        raise UnreadableDataError(f"{uri} cannot be read as {fmt}: {err}") from err


def serialize_table(frame: pd.DataFrame, fmt: str, uri: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "parquet":
        frame.to_parquet(buffer, index=False)
    else:
        compression = "gzip" if uri.lower().endswith(".gz") else None
        frame.to_csv(buffer, index=False, compression=compression)
    return buffer.getvalue()
