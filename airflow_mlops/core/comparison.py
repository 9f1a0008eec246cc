"""The comparison set: the challenger's holdout rows that neither model trained on.

The challenger never trained on its own holdout. The champion may have: with cumulative data
its training rows come back in the challenger's holdout, and a model that memorised them
wins there. :func:`comparison_set` keeps only the rows the champion provably did not train
on, from what its training run recorded (``mlops/manifest.json`` and the ``mlops.split.*``
tags, see :mod:`airflow_mlops.core.stable_split`) and the file each holdout row came from
(its ``__mlops_file`` column). Unsure means excluded. In order of preference:

1. ``membership``: the champion has a manifest and split tags. A row is excluded when its
   file is in the champion's manifest and the champion's split puts it on the train side,
   or when its file is there under the same path with another sha256 (the rows may overlap
   what the champion read; which ones cannot be told).
2. ``files_not_in_champion_manifest``: a manifest but no split (a time split, or a split
   under unknown settings): only rows from files the manifest does not list.
3. ``files_newer_than_champion``: no manifest: only rows from files the challenger's manifest
   dates (mtime, else a date partition) after the champion run's start and that are not
   under the champion's recorded data URI.
4. ``champion_holdout`` (with 2 or 3): rows equal, on the columns both holdouts share, to a
   row of the champion's own recorded holdout, which it did not train on. This is what
   makes a champion trained before manifests existed comparable at all; an exact duplicate
   of such a row on the champion's training side (possible only with the old random
   split) cannot be detected.

``on="newest"`` (forward evaluation) keeps only rows from partitions after the champion's
window: files not in its manifest dated after every file it lists, or, without a manifest,
files dated after its run started. :func:`champion_facts` reads the facts from MLflow
(:class:`ChampionFacts`); :func:`comparison_set` decides from them alone, so every rule is
unit-testable without a server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from airflow_mlops.core.datasets import SOURCE_FILE_COLUMN
from airflow_mlops.core.errors import ConfigError, DataError, MlflowConnectionError
from airflow_mlops.core.lineage import (
    MANIFEST_ARTIFACT_PATH,
    TAG_DATA_URI,
    TAG_HOLDOUT_SHA256,
    TAG_HOLDOUT_URI,
)
from airflow_mlops.core.manifest import Manifest, ManifestEntry
from airflow_mlops.core.policy import EVALUATION_ON
from airflow_mlops.core.stable_split import StableSplit, row_keys

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.registry import Champion
    from airflow_mlops.core.storage import Storage

__all__ = [
    "ChampionFacts",
    "ComparisonSet",
    "champion_facts",
    "comparison_set",
    "entry_moment",
    "run_manifest",
]


_DATE = re.compile(r"(\d{4}-\d{2}-\d{2}(?:[T ]\d{2}(?::?\d{2}){0,2})?|\d{8})")
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class ChampionFacts:
    """What the champion's training run recorded about the rows it read."""

    run_id: str | None
    manifest: Manifest | None = None
    split: StableSplit | None = None
    started_at: datetime | None = None
    data_uri: str | None = None
    holdout: pd.DataFrame | None = None  # its recorded holdout, hash-checked
    notes: tuple[str, ...] = ()  # why a fact is missing (unreadable artifact, ...)


@dataclass(frozen=True)
class ComparisonSet:
    """Which holdout rows are compared, and why the others are not."""

    mask: np.ndarray
    on: str
    basis: str
    explanation: str
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def rows_compared(self) -> int:
        return int(self.mask.sum())

    @property
    def rows_excluded(self) -> int:
        return int(len(self.mask) - self.mask.sum())

    def to_record(self) -> dict[str, Any]:
        return {
            "on": self.on,
            "basis": self.basis,
            "rows_holdout": len(self.mask),
            "rows_compared": self.rows_compared,
            "rows_excluded": self.rows_excluded,
            "excluded_because": dict(self.excluded),
            "explanation": self.explanation,
        }


def entry_moment(entry: ManifestEntry) -> datetime | None:
    """When a file's rows came to be: its date partition, else the date in its name, else its
    mtime (naive UTC); None for an ETag-only file without a date."""
    for value in entry.partition.values():
        moment = _as_moment(value)
        if moment is not None:
            return moment
    match = _DATE.search(entry.path.rsplit("/", 1)[-1])
    if match and (moment := _as_moment(match[1])) is not None:
        return moment
    if entry.etag_or_mtime.startswith("mtime:"):
        return _as_moment(entry.etag_or_mtime.removeprefix("mtime:"))
    return None


def _as_moment(text: Any) -> datetime | None:
    raw = str(text)
    if re.fullmatch(r"\d{8}", raw):
        raw = f"{raw[:4]}-{raw[4:6]}-{raw[6:]}"
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is not None:
        return moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def comparison_set(
    frame: pd.DataFrame,
    champion: ChampionFacts,
    *,
    challenger_manifest: Manifest | None,
    on: Literal["holdout", "newest"] = "holdout",
) -> ComparisonSet:
    """The rows of the challenger's holdout ``frame`` to compare the two models on."""
    if on not in EVALUATION_ON:
        raise ConfigError(f"evaluation.on must be one of {list(EVALUATION_ON)}, got {on!r}")
    files = _row_files(frame)
    if on == "newest":
        return _newest(frame, files, champion, challenger_manifest)
    if champion.manifest is not None and champion.split is not None and files is not None:
        return _by_membership(frame, files, champion, challenger_manifest)
    if champion.manifest is not None and files is not None:
        listed = files.isin({e.path for e in champion.manifest.files}).to_numpy(dtype=bool)
        result = ComparisonSet(
            ~listed,
            on,
            "files_not_in_champion_manifest",
            "the champion recorded its files but no hash split, so which of their rows it "
            "trained on is unknown: only rows from files it did not read are compared",
            {"champion_membership_unknown": int(listed.sum())},
        )
    elif champion.manifest is None and files is not None and challenger_manifest is not None:
        newer = _files_newer_than_champion(challenger_manifest.files, champion)
        keep = files.isin(newer).to_numpy(dtype=bool)
        result = ComparisonSet(
            keep,
            on,
            "files_newer_than_champion",
            "the champion recorded no manifest: only rows from files dated after its "
            f"training run started ({champion.started_at}) and outside its data URI "
            f"({champion.data_uri}) are compared",
            {"not_newer_than_champion": int((~keep).sum())},
        )
    else:
        result = ComparisonSet(
            np.zeros(len(frame), dtype=bool),
            on,
            "none",
            _why_unknown(champion, files, challenger_manifest),
            {"champion_membership_unknown": len(frame)},
        )
    return _with_champion_holdout(frame, result, champion)


def _row_files(frame: pd.DataFrame) -> pd.Series | None:
    if SOURCE_FILE_COLUMN not in frame.columns:
        return None
    return frame[SOURCE_FILE_COLUMN].astype(str)


def _why_unknown(
    champion: ChampionFacts, files: pd.Series | None, challenger_manifest: Manifest | None
) -> str:
    if files is None:
        why = f"the challenger's holdout has no {SOURCE_FILE_COLUMN} column"
    elif champion.started_at is None:
        why = "the champion has no manifest and no training run start"
    elif challenger_manifest is None:
        why = "neither model recorded a manifest"
    else:
        why = "the champion recorded neither a manifest nor split settings"
    notes = f" ({'; '.join(champion.notes)})" if champion.notes else ""
    return f"which rows the champion trained on cannot be worked out: {why}{notes}"


def _same_version_files(
    champion_manifest: Manifest, challenger_manifest: Manifest | None
) -> tuple[set[str], set[str]]:
    """Champion files the challenger read with the same sha256, and those changed or unknown."""
    theirs = {e.path: e.sha256 for e in champion_manifest.files}
    ours = {e.path: e.sha256 for e in (challenger_manifest.files if challenger_manifest else ())}
    same = {path for path, sha in theirs.items() if ours.get(path) == sha}
    return same, set(theirs) - same


def _by_membership(
    frame: pd.DataFrame,
    files: pd.Series,
    champion: ChampionFacts,
    challenger_manifest: Manifest | None,
) -> ComparisonSet:
    assert champion.manifest is not None and champion.split is not None
    same, changed = _same_version_files(champion.manifest, challenger_manifest)
    in_same = files.isin(same).to_numpy(dtype=bool)
    in_changed = files.isin(changed).to_numpy(dtype=bool)
    explanation = (
        "rows the champion trained on (its manifest's files, train side of its recorded "
        "split) and rows of files changed since it read them are excluded"
    )
    trained = np.zeros(len(frame), dtype=bool)
    unknown = np.zeros(len(frame), dtype=bool)
    try:  # only rows of the champion's files can be on its train side: hash just those
        if in_same.any():
            trained[in_same] = champion.split.trained_on(frame[in_same])
    except DataError as err:  # e.g. a column the champion hashed is not in this holdout
        trained[:] = False
        unknown = in_same
        explanation += f"; the champion's split cannot be recomputed here ({err}), so every "
        explanation += "row of its files is excluded"
    excluded = {
        "champion_trained_on": int(trained.sum()),
        "file_changed_since_champion": int(in_changed.sum()),
    }
    if unknown.any():
        excluded["champion_membership_unknown"] = int(unknown.sum())
    keep = ~(trained | in_changed | unknown)
    return ComparisonSet(keep, "holdout", "membership", explanation, excluded)


def _under(path: str, uri: str | None) -> bool:
    if not uri:
        return False
    # A prefix match, not a folder match: "unsure" must err towards "the champion read it".
    return path.startswith(_GLOB.split(uri, 1)[0].rstrip("/"))


def _files_newer_than_champion(
    entries: Iterable[ManifestEntry], champion: ChampionFacts
) -> set[str]:
    if champion.started_at is None:
        return set()
    start = _naive_utc(champion.started_at)
    newer = set()
    for entry in entries:
        moment = entry_moment(entry)
        if moment is not None and moment > start and not _under(entry.path, champion.data_uri):
            newer.add(entry.path)
    return newer


def _newest(
    frame: pd.DataFrame,
    files: pd.Series | None,
    champion: ChampionFacts,
    challenger_manifest: Manifest | None,
) -> ComparisonSet:
    """Forward evaluation: rows from partitions after the champion's window only."""
    entries = challenger_manifest.files if challenger_manifest else ()
    if files is None or challenger_manifest is None:
        mask = np.zeros(len(frame), dtype=bool)
        return ComparisonSet(
            mask,
            "newest",
            "none",
            "forward evaluation needs the files of the challenger's rows (its manifest and "
            f"the {SOURCE_FILE_COLUMN} column): none recorded",
            {"not_after_champion_window": len(frame)},
        )
    if champion.manifest is not None:
        moments = [entry_moment(e) for e in champion.manifest.files]
        listed = {e.path for e in champion.manifest.files}
        if not moments or any(m is None for m in moments):
            after: set[str] = set()
            explanation = "the champion's files carry no dates, so none can be said to follow"
        else:
            end = max(m for m in moments if m is not None)
            after = {
                e.path
                for e in entries
                if e.path not in listed and (m := entry_moment(e)) is not None and m > end
            }
            explanation = f"only rows from partitions dated after the champion's window ({end})"
    else:
        after = _files_newer_than_champion(entries, champion)
        explanation = (
            "the champion recorded no manifest: only rows from files dated after its training "
            f"run started ({champion.started_at})"
        )
    keep = files.isin(after).to_numpy(dtype=bool)
    return ComparisonSet(
        keep,
        "newest",
        "partitions_after_champion_window",
        explanation,
        {"not_after_champion_window": int((~keep).sum())},
    )


def _with_champion_holdout(
    frame: pd.DataFrame, result: ComparisonSet, champion: ChampionFacts
) -> ComparisonSet:
    """Add the rows that also sit in the champion's own recorded holdout (see rule 4)."""
    theirs = champion.holdout
    if theirs is None or len(theirs) == 0:
        return result
    shared = sorted((set(frame.columns) & set(theirs.columns)) - {SOURCE_FILE_COLUMN}, key=str)
    if not shared:
        return result
    try:  # content hashing of the shared columns: nulls are values here, not missing keys
        held_out = np.isin(row_keys(frame[shared]), row_keys(theirs[shared]))
    except DataError:
        return result
    added = held_out & ~result.mask
    if not added.any():
        return result
    keep = result.mask | held_out
    excluded = dict(result.excluded)
    # The added rows leave the first exclusion reason they were counted under.
    first = next(iter(excluded), None)
    if first is not None:
        excluded[first] = max(0, excluded[first] - int(added.sum()))
    basis = "champion_holdout" if result.basis == "none" else f"{result.basis}+champion_holdout"
    explanation = (
        f"{result.explanation}; plus {int(added.sum())} row(s) that are in the champion's own "
        "recorded holdout (it did not train on them)"
    )
    return ComparisonSet(keep, result.on, basis, explanation, excluded)


# -- reading the facts from MLflow ----------------------------------------------------------


def run_manifest(client: MlflowClient, run_id: str | None) -> Manifest | None:
    """The run's ``mlops/manifest.json``, or None when it logged none (or no run is named)."""
    from airflow_mlops.core.mlflow_client import read_run_text

    if not run_id:
        return None
    text = read_run_text(client, run_id, MANIFEST_ARTIFACT_PATH)
    if text is None:
        return None
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{MANIFEST_ARTIFACT_PATH} of run {run_id} is not a manifest: {err}"
        ) from err


def champion_facts(client: MlflowClient, storage: Storage, champion: Champion) -> ChampionFacts:
    """What the champion's training run recorded: manifest, split, start, data URI and (when
    its membership is otherwise unknown) its own hash-checked holdout."""
    from mlflow.exceptions import MlflowException

    if not champion.run_id:
        return ChampionFacts(None, notes=(f"version {champion.version} has no training run",))
    try:
        run = client.get_run(champion.run_id)
    except MlflowException as err:
        raise MlflowConnectionError(
            f"champion run {champion.run_id} cannot be read from MLflow: {err}"
        ) from err
    tags = run.data.tags
    notes: list[str] = []
    manifest = run_manifest(client, champion.run_id)
    try:
        split = StableSplit.from_tags(tags)
    except DataError as err:  # another hashing scheme: fall back, as without a split
        split = None
        notes.append(str(err))
    started = (
        datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc)
        if run.info.start_time
        else None
    )
    holdout = None
    if manifest is None or split is None:
        holdout = _champion_holdout(storage, tags, notes)
    return ChampionFacts(
        run_id=champion.run_id,
        manifest=manifest,
        split=split,
        started_at=started,
        data_uri=tags.get(TAG_DATA_URI),
        holdout=holdout,
        notes=tuple(notes),
    )


def _champion_holdout(
    storage: Storage, tags: Mapping[str, str], notes: list[str]
) -> pd.DataFrame | None:
    uri, sha = tags.get(TAG_HOLDOUT_URI), tags.get(TAG_HOLDOUT_SHA256)
    if not uri or not sha:
        notes.append("the champion recorded no holdout")
        return None
    try:
        table = storage.read_table(uri)
    except DataError as err:
        notes.append(f"the champion's holdout cannot be read: {err}")
        return None
    if table.sha256 != sha:
        notes.append(f"the champion's holdout {uri} changed since its training (sha256)")
        return None
    return table.frame
