"""Data manifests: the exact files a run read, and what changed since.

A :class:`Manifest` lists each file a training run read (path, size, ETag or mtime, sha256,
partition). It is JSON (an MLflow artifact) with a short :attr:`Manifest.content_hash` (an
MLflow tag), so a model version traces back to its exact partitions.

:func:`detect_changes` compares a previous manifest with a new listing by (path, size,
ETag/mtime) only: a scheduled check with no new partition reads no data file.
:func:`build_manifest` hashes only the files the previous manifest does not already hold in
the same version, reusing its cached sha256 for the rest. Import-light (no pyarrow).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.datasets import DataFile, fs_path

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "MANIFEST_VERSION",
    "Changes",
    "Manifest",
    "ManifestEntry",
    "build_manifest",
    "detect_changes",
    "hash_data_file",
]

MANIFEST_VERSION = 1
HASH_BLOCK_BYTES = 1 << 20
CONTENT_HASH_CHARS = 16


@dataclass(frozen=True)
class ManifestEntry:
    """One file read: its listing facts plus the sha256 of its bytes."""

    path: str
    size: int
    etag_or_mtime: str
    sha256: str
    partition: dict[str, str] = field(default_factory=dict)

    def stat_key(self) -> tuple[str, int, str]:
        return (self.path, self.size, self.etag_or_mtime)


@dataclass(frozen=True)
class Manifest:
    """The files a run read, sorted by path."""

    files: tuple[ManifestEntry, ...] = ()

    @property
    def content_hash(self) -> str:
        """Short hash of the (path, sha256) pairs: equal iff the same bytes at the same paths."""
        digest = hashlib.sha256()
        for entry in self.files:
            digest.update(f"{entry.path}\t{entry.sha256}\n".encode())
        return digest.hexdigest()[:CONTENT_HASH_CHARS]

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "content_hash": self.content_hash,
            "files": [asdict(entry) for entry in self.files],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        return cls(files=tuple(sorted((ManifestEntry(**e) for e in data["files"]), key=_path)))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class Changes:
    """How a listing differs from a manifest, by path and (size, ETag/mtime)."""

    new: tuple[DataFile, ...]
    removed: tuple[ManifestEntry, ...]
    changed: tuple[DataFile, ...]
    unchanged: tuple[DataFile, ...]

    @property
    def any(self) -> bool:
        return bool(self.new or self.removed or self.changed)

    def summary(self) -> dict[str, Any]:
        """JSON-safe counts and the paths of new, removed and changed files (for XCom)."""
        return {
            "new": [f.path for f in self.new],
            "removed": [e.path for e in self.removed],
            "changed": [f.path for f in self.changed],
            "unchanged": len(self.unchanged),
        }


def detect_changes(previous: Manifest | None, current: Iterable[DataFile]) -> Changes:
    """Compare ``current`` (a listing, already windowed) with ``previous``; reads no data."""
    known = {entry.path: entry for entry in (previous.files if previous else ())}
    new, changed, unchanged = [], [], []
    for file in current:
        entry = known.pop(file.path, None)
        if entry is None:
            new.append(file)
        elif entry.stat_key() != file.stat_key():
            changed.append(file)
        else:
            unchanged.append(file)
    return Changes(tuple(new), tuple(known.values()), tuple(changed), tuple(unchanged))


def build_manifest(
    fs: AbstractFileSystem, files: Sequence[DataFile], previous: Manifest | None = None
) -> Manifest:
    """The manifest of ``files``; only files not in ``previous`` at the same (path, size,
    ETag/mtime) are read to hash them."""
    cached = {entry.stat_key(): entry.sha256 for entry in (previous.files if previous else ())}
    entries = (
        ManifestEntry(
            path=file.path,
            size=file.size,
            etag_or_mtime=file.etag_or_mtime,
            sha256=cached.get(file.stat_key()) or hash_data_file(fs, file),
            partition=dict(file.partition),
        )
        for file in files
    )
    return Manifest(files=tuple(sorted(entries, key=_path)))


def hash_data_file(fs: AbstractFileSystem, file: DataFile) -> str:
    """The sha256 of a file's bytes, streamed a block at a time through ``fs``."""
    digest = hashlib.sha256()
    with fs.open(fs_path(fs, file.path), "rb") as handle:
        while block := handle.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _path(entry: ManifestEntry) -> str:
    return entry.path
