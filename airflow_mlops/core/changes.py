"""Decide whether a continuous-training run has something new to learn from.

Level 1 retrains on a schedule, on new data, on drift/decay and when the pipeline's config
or code changes. A scheduled run with the same data and the same config as the champion's
training run has nothing new: it is skipped with that reason instead of producing a
duplicate model.

"Same data" is decided from listings: the files of the training window (path, size,
ETag/mtime) against the manifest the champion's training run recorded
(:func:`compare_with_manifest`), so a check with nothing new reads no data file. A champion
without a manifest is compared by content hash instead (:func:`compare_with_hash`, which
reads the files).

An asset-triggered run trains on the window that ends with the partition that landed:
:func:`new_data_trigger` finds that partition in the triggering asset events (the event's
partition key, else its ``extra``), and the record of the event goes to the task's XCom.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from airflow_mlops.core.data_window import NAME_DATE
from airflow_mlops.core.lineage import TAG_GIT_COMMIT, TAG_PIPELINE_CONFIG_HASH

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from airflow_mlops.core.datasets import DataFile
    from airflow_mlops.core.manifest import Manifest

__all__ = [
    "ALWAYS_TRAIN_RUN_TYPES",
    "SUMMARY_PATHS",
    "ChangeDecision",
    "DataChange",
    "compare_with_hash",
    "compare_with_manifest",
    "decide_retrain",
    "new_data_trigger",
    "partition_end",
    "trigger_tag",
]

# Airflow run types for which the trigger itself is the reason to train.
ALWAYS_TRAIN_RUN_TYPES = frozenset({"manual", "asset_triggered", "backfill"})
#: How many paths of each kind (new, removed, changed) the XCom summary names.
SUMMARY_PATHS = 5
#: MLflow caps tag values (5,000 characters on SQL stores); a trigger tag stays far below.
TRIGGER_TAG_CHARS = 500


@dataclass(frozen=True)
class DataChange:
    """How the training window differs from the champion's data.

    ``basis`` is ``manifest`` (listing compared with the champion's manifest: nothing read)
    or ``content hash`` (no manifest: the window's files were hashed).
    """

    changed: bool
    basis: str
    new: int = 0
    removed: int = 0
    changed_files: int = 0
    unchanged: int = 0
    paths: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Small JSON for XCom: counts and the first few paths of each kind."""
        return asdict(self)


def compare_with_manifest(
    previous: Manifest, listing: Iterable[DataFile], fs: AbstractFileSystem | None = None
) -> DataChange:
    """Compare the window's listing with the champion's manifest by (path, size, ETag/mtime).

    With ``fs``, a window that shares no path with the manifest (the data moved: a
    byte-identical copy under another prefix, as many files of the same sizes) is hashed and
    counts as unchanged when its bytes are the champion's. A window that shares paths is
    decided from the listing alone, so a new or missing partition reads no data file.
    """
    from airflow_mlops.core.manifest import detect_changes

    listing = list(listing)
    changes = detect_changes(previous, listing)
    paths = {
        kind: [item.path for item in items[:SUMMARY_PATHS]]
        for kind, items in (
            ("new", changes.new),
            ("removed", changes.removed),
            ("changed", changes.changed),
        )
        if items
    }
    counts = {
        "new": len(changes.new),
        "removed": len(changes.removed),
        "changed_files": len(changes.changed),
        "unchanged": len(changes.unchanged),
    }
    moved = changes.any and not changes.unchanged and not changes.changed
    if moved and fs is not None and _same_bytes(fs, previous, changes.new):
        return DataChange(changed=False, basis="manifest (same bytes, other paths)", **counts)
    return DataChange(changed=changes.any, basis="manifest", paths=paths, **counts)


def _same_bytes(fs: AbstractFileSystem, previous: Manifest, files: Sequence[DataFile]) -> bool:
    """Whether ``files`` hold exactly the manifest's bytes; hashed only when their count and
    sizes match the manifest's."""
    from collections import Counter

    from airflow_mlops.core.manifest import hash_data_file

    if sorted(f.size for f in files) != sorted(e.size for e in previous.files):
        return False
    return Counter(hash_data_file(fs, f) for f in files) == Counter(
        e.sha256 for e in previous.files
    )


def compare_with_hash(
    fs: AbstractFileSystem, files: Sequence[DataFile], champion_hash: str | None
) -> DataChange:
    """For a champion without a manifest: hash the window's files (this reads them) and
    compare the manifest content hash with the champion's ``mlops.data.sha256``."""
    from airflow_mlops.core.manifest import build_manifest

    current = build_manifest(fs, files, previous=None).content_hash
    return DataChange(changed=current != champion_hash, basis="content hash")


@dataclass(frozen=True)
class ChangeDecision:
    train: bool
    reason: str
    config_hash: str
    champion_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_retrain(
    *,
    run_type: str,
    config_hash: str,
    champion_tags: Mapping[str, str] | None,
    data_changed: bool,
    champion_version: str | None = None,
    code_version: str | None = None,
) -> ChangeDecision:
    """Whether to train, and why, from the trigger, the data comparison and the champion's
    training-run tags.

    ``code_version`` is the commit of the code that would train now; it counts as a change
    only when both it and the champion's ``mlops.git_commit`` are known.
    """

    def decision(train: bool, reason: str) -> ChangeDecision:
        return ChangeDecision(train, reason, config_hash, champion_version)

    if champion_tags is None:
        return decision(True, "first model: no champion yet")
    if run_type in ALWAYS_TRAIN_RUN_TYPES:
        return decision(True, f"{run_type.replace('_', '-')} run")
    reasons = []
    if champion_tags.get(TAG_PIPELINE_CONFIG_HASH) != config_hash:
        reasons.append("pipeline config changed since the champion was trained")
    champion_code = champion_tags.get(TAG_GIT_COMMIT)
    if code_version and champion_code and champion_code != code_version:
        reasons.append(
            f"pipeline code changed since the champion was trained "
            f"({champion_code[:12]} -> {code_version[:12]})"
        )
    if data_changed:
        reasons.append("training data changed since the champion was trained")
    if reasons:
        return decision(True, "; ".join(reasons))
    return decision(False, "no change: same data and config as the champion")


# -- the asset event that triggered a run --------------------------------------------------


def new_data_trigger(
    events: Iterable[Mapping[str, Any]], asset_uri: str | None
) -> dict[str, Any] | None:
    """The record of the newest triggering event of the new-data asset ``asset_uri``, with
    the ``window_end`` it names, or ``None`` when no such event triggered the run.

    ``events`` are plain mappings of Airflow's triggering asset events (``uri``, ``extra``,
    ``partition_key``, ``source_dag_id``, ``source_run_id``, ``source_task_id``,
    ``timestamp``). The window end is the event's partition key (asset partitions, Airflow
    3.2+), else ``extra["partition"]`` (``"dt=2026-12-01"`` or ``"2026-12-01"``), else the
    partition or date in ``extra["uri"]`` (the landed file or folder).
    """
    if not asset_uri:
        return None
    matching = [e for e in events if e.get("uri") == asset_uri]
    if not matching:
        return None
    event = max(matching, key=lambda e: str(e.get("timestamp") or ""))
    extra = dict(event.get("extra") or {})
    landed = event.get("partition_key") or extra.get("partition") or extra.get("uri")
    return {
        "uri": asset_uri,
        "source_dag_id": event.get("source_dag_id"),
        "source_run_id": event.get("source_run_id"),
        "source_task_id": event.get("source_task_id"),
        "timestamp": str(event.get("timestamp") or "") or None,
        "partition_key": event.get("partition_key"),
        "extra": extra,
        "events": len(matching),
        "window_end": partition_end(str(landed)) if landed else None,
    }


def partition_end(text: str) -> str | None:
    """The partition value a window ends with, from a partition or a landed path.

    ``dt=2026-12-01`` and ``.../dt=2026-12-01/part-0.parquet`` give ``2026-12-01`` (the first
    ``key=value`` segment holding a date, else the last one); a plain value gives itself;
    a path without ``key=value`` segments gives the date in its name, else ``None``.
    """
    segments = [unquote(s) for s in text.strip().strip("/").split("/") if s]
    pairs = [s.split("=", 1) for s in segments if "=" in s]
    if pairs:
        dated = [value for _, value in pairs if NAME_DATE.fullmatch(value)]
        return dated[0] if dated else pairs[-1][1]
    if len(segments) == 1 and "." not in segments[0]:
        return segments[0]
    match = NAME_DATE.search(segments[-1]) if segments else None
    return match[1] if match else None


def trigger_tag(run_type: str, trigger: Mapping[str, Any] | None) -> str:
    """The ``mlops.trigger`` tag of the training run: the run type, and for a new-data event
    its asset, partition and source (``asset-triggered: new data file:///data/sales
    partition 2026-12-01 from land_sales/manual__2026-12-01``)."""
    text = run_type.replace("_", "-")
    if trigger:
        source = "/".join(str(trigger.get(k) or "?") for k in ("source_dag_id", "source_run_id"))
        text += f": new data {trigger['uri']}"
        if trigger.get("window_end"):
            text += f" partition {trigger['window_end']}"
        text += f" from {source}"
    return text[:TRIGGER_TAG_CHARS]
