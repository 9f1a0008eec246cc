"""Which reports the MLOps page may serve, and reading them with a byte cap.

A report URI comes from an MLflow tag or a task's XCom: anyone with MLflow write access (or
the ``USER`` role, which may patch XCom) can set it. So the api-server never opens such a
URI as given. It serves only:

- MLflow artifacts of a run the page shows, under the report folders
  (:data:`airflow_mlops.plugins.model_overview.REPORT_ARTIFACT_ROOTS`), read through MLflow;
- HTML and JSON objects (:data:`REPORT_SUFFIXES`) under the configured ``[mlops]
  artifacts_uri`` (a local folder or an ``s3://`` prefix), never the data files the same root
  holds (holdout, reference, segments, predictions). The URI is normalised before the
  prefix check (:func:`airflow_mlops.core.storage.is_under_root`, the provider's one "is
  this URI under that root" rule): ``..``/``.``/empty segments are refused, ``file://`` must
  name no other host, local paths are resolved (symlinks followed) and checked again, and the
  opened file is checked a third time through its file descriptor; S3 keys are compared on
  whole path segments of the same bucket.

Reads go in 64 KiB chunks and stop at the first chunk past ``[mlops] report_max_bytes``
(413): a body is never held in memory beyond the cap plus one chunk. ``http(s)://`` report
URIs are never fetched nor redirected to: the page shows them as plain links. Every refusal is a :class:`ReportRefused` with an HTTP status and a short
reason that does not echo the URI (it may be a secret path).

Standard library and :mod:`airflow_mlops.core.storage` (itself standard library at import)
only: this module is imported by the api-server's routes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from airflow_mlops.core.storage import UncheckableUriError, is_under_root, normalize_uri

DEFAULT_MAX_REPORT_BYTES = 50 * 1024 * 1024
CHUNK_BYTES = 64 * 1024
EXTERNAL_SCHEMES = ("http://", "https://")
#: Media types a report may be served as; anything else is sent as a download.
SERVED_MEDIA_TYPES = frozenset({"text/html", "application/json", "text/plain", "text/csv"})
#: The only files served from under ``[mlops] artifacts_uri``: the provider's reports are HTML
#: or JSON. The same root holds holdout, reference, segment and prediction data (parquet,
#: csv): a forged tag or XCom must not turn the page into a download of another team's data.
REPORT_SUFFIXES = (".html", ".htm", ".json")


class ReportRefused(Exception):
    """A report the page will not serve: ``status`` (4xx) and a short ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class LocalReport:
    """A report file under a local artifacts root (``path`` and ``root`` are resolved)."""

    path: Path
    root: Path


@dataclass(frozen=True)
class S3Report:
    """A report object under an ``s3://`` artifacts root."""

    bucket: str
    key: str


def is_external(uri: str) -> bool:
    """An ``http(s)://`` report: shown as a link by the page, never fetched by the server."""
    return uri.lower().startswith(EXTERNAL_SCHEMES)


# -- where a report may come from ----------------------------------------------------------


def locate(uri: str, root: str | None) -> LocalReport | S3Report:
    """Where ``uri`` lies under the artifacts ``root``, or :class:`ReportRefused`."""
    if not uri or "\x00" in uri:
        raise ReportRefused(400, "The report URI is empty or malformed.")
    if is_external(uri):
        raise ReportRefused(404, "This report is an external link: open it from the page.")
    if not root:
        raise ReportRefused(403, "No [mlops] artifacts_uri is configured: only MLflow reports.")
    if uri.startswith("s3://"):
        if not root.startswith("s3://"):
            raise ReportRefused(403, "The report is outside the configured artifacts_uri.")
        return _locate_s3(uri, root)
    path = _local_path(uri)
    if root.startswith("s3://"):
        raise ReportRefused(403, "The report is outside the configured artifacts_uri.")
    return _locate_local(path, _root_path(root))


def _root_path(root: str) -> str:
    """The configured local root as an absolute, normalised path (``file://`` accepted)."""
    if root.startswith("file://"):
        root = unquote(urlparse(root).path)
    return os.path.normpath(os.path.abspath(root))


def _local_path(uri: str) -> str:
    """The path of a plain absolute path or ``file:///path``; other schemes and hosts refused."""
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost") or parsed.query or parsed.fragment:
            raise ReportRefused(400, "Only local file:///path report URIs are served.")
        uri = unquote(parsed.path)
        if "\x00" in uri:  # %00: os calls would raise ValueError (a 500), not refuse
            raise ReportRefused(400, "The report URI is empty or malformed.")
    elif "://" in uri or ":" in uri.split("/", 1)[0]:
        raise ReportRefused(400, "Unsupported report URI scheme.")
    if not uri.startswith("/"):
        raise ReportRefused(400, "A local report URI must be an absolute path.")
    return _checkable(uri, "The report URI has a malformed or '.'/'..' segment.", resolve=False)


def _checkable(uri: str, malformed: str, *, resolve: bool = True) -> str:
    """``uri`` normalised for the root check, or a 400 saying it is ``malformed``."""
    try:
        return normalize_uri(uri, resolve_links=resolve)
    except UncheckableUriError as err:
        raise ReportRefused(400, malformed) from err


def _within(uri: str, root: str, *, resolve: bool) -> bool:
    try:
        return is_under_root(uri, root, resolve_links=resolve)
    except UncheckableUriError:  # e.g. a file renamed since with a newline in its name
        return False


def _locate_local(path: str, root: str) -> LocalReport:
    """Lexical prefix check, then the same check on the resolved (symlink-free) paths."""
    if not _within(path, root, resolve=False):
        raise ReportRefused(403, "The report is outside the configured artifacts_uri.")
    if not _within(path, root, resolve=True):
        raise ReportRefused(403, "The report resolves outside the configured artifacts_uri.")
    return LocalReport(path=Path(os.path.realpath(path)), root=Path(os.path.realpath(root)))


def _locate_s3(uri: str, root: str) -> S3Report:
    normalized = _checkable(uri, "Malformed s3:// report URI.")
    bucket, _, key = normalized.removeprefix("s3://").partition("/")
    if not key or key.endswith("/"):
        raise ReportRefused(404, "The report is a folder, not a file.")
    _checkable(root, "Malformed s3:// artifacts_uri.")
    if not is_under_root(normalized, root):
        raise ReportRefused(403, "The report is outside the configured artifacts_uri.")
    return S3Report(bucket=bucket, key=key)


# -- reading with a cap --------------------------------------------------------------------


def read_capped(chunks: Iterator[bytes], cap: int) -> bytes:
    """Join ``chunks`` but stop as soon as more than ``cap`` bytes arrived (413)."""
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > cap:
            raise ReportRefused(413, f"The report is larger than {cap} bytes.")
    return bytes(body)


def read_local(report: LocalReport, cap: int, suffixes: tuple[str, ...] | None = None) -> bytes:
    """Read a located local report: a regular file still under its root once opened, and
    named with one of ``suffixes`` when given."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(report.path, flags)
    except FileNotFoundError as err:
        raise ReportRefused(404, "The report does not exist.") from err
    except OSError as err:  # a symlink swapped in since the check (ELOOP), a FIFO, ...
        raise ReportRefused(403, "The report cannot be opened.") from err
    try:
        _check_opened_file(fd, report.root, cap)
        if suffixes is not None:
            _check_report_name(report.path.name, suffixes)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as file:
        return read_capped(iter(lambda: file.read(CHUNK_BYTES), b""), cap)


def _check_report_name(name: str, suffixes: tuple[str, ...]) -> None:
    if not name.lower().endswith(suffixes):
        raise ReportRefused(403, "Only HTML and JSON reports are served from artifacts_uri.")


def _check_opened_file(fd: int, root: Path, cap: int) -> None:
    """A regular file, no larger than ``cap``, really under ``root`` once opened (Linux
    ``/proc`` says where the descriptor points: a race cannot swap in another file)."""
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise ReportRefused(404, "The report is a folder, not a file.")
    if not stat.S_ISREG(info.st_mode):
        raise ReportRefused(403, "The report is not a regular file.")
    link = f"/proc/self/fd/{fd}"
    if os.path.islink(link) and not _within(os.readlink(link), str(root), resolve=False):
        raise ReportRefused(403, "The report resolves outside the configured artifacts_uri.")
    if info.st_size > cap:
        raise ReportRefused(413, f"The report is larger than {cap} bytes.")


def read_s3(client: Any, report: S3Report, cap: int) -> bytes:
    """Stream an S3 report object (boto3 ``client``), refusing it past ``cap`` bytes."""
    try:
        response = client.get_object(Bucket=report.bucket, Key=report.key)
    except Exception as err:
        code = getattr(err, "response", {}).get("Error", {}).get("Code")
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            raise ReportRefused(404, "The report does not exist.") from err
        if code in ("AccessDenied", "403"):
            raise ReportRefused(403, "The report cannot be read with the connection.") from err
        raise
    body = response["Body"]
    try:
        if int(response.get("ContentLength") or 0) > cap:
            raise ReportRefused(413, f"The report is larger than {cap} bytes.")
        return read_capped(iter(lambda: body.read(CHUNK_BYTES), b""), cap)
    finally:
        body.close()


def read_report(uri: str, root: str | None, cap: int, s3_client: Callable[[], Any]) -> bytes:
    """The bytes of the report at ``uri`` if it lies under ``root``, else :class:`ReportRefused`."""
    located = locate(uri, root)
    if isinstance(located, S3Report):
        _check_report_name(located.key, REPORT_SUFFIXES)
        return read_s3(s3_client(), located, cap)
    return read_local(located, cap, REPORT_SUFFIXES)


def media_type(name: str) -> str:
    """The type a report is served as: HTML, JSON, text or CSV, else a download."""
    import mimetypes

    guessed = mimetypes.guess_type(name.split("?")[0])[0]
    return guessed if guessed in SERVED_MEDIA_TYPES else "application/octet-stream"
