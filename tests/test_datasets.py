"""Datasets by URI (core.datasets), training windows (core.data_window) and manifests
(core.manifest), on local folders and on the moto S3 server through StorageHook."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fsspec.implementations.arrow import ArrowFSWrapper
from fsspec.implementations.local import LocalFileSystem

from airflow_mlops.core.data_window import (
    DataWindow,
    read_window,
    sample_mask,
    sample_rows,
    sample_seed,
    select_window,
    window_row_filter,
)
from airflow_mlops.core.datasets import (
    SOURCE_FILE_COLUMN,
    filter_partitions,
    read_files,
    resolve_files,
)
from airflow_mlops.core.errors import (
    ConfigError,
    DataNotFoundError,
    UnreadableDataError,
    UnsupportedFormatError,
)
from airflow_mlops.core.manifest import Manifest, build_manifest, detect_changes
from airflow_mlops.core.storage import sha256_file

DAYS = ["2026-11-28", "2026-11-29", "2026-11-30", "2026-12-01"]


class _CountedFile:
    def __init__(self, handle, owner):
        self._handle, self._owner = handle, owner

    def read(self, *args):
        data = self._handle.read(*args)
        self._owner.bytes_read += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


class ReadCountingFS(LocalFileSystem):
    """The local filesystem, counting files opened and bytes read through it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.opens = 0
        self.bytes_read = 0

    def _open(self, path, mode="rb", **kwargs):
        self.opens += 1
        return _CountedFile(super()._open(path, mode, **kwargs), self)


def day_frame(day: str, rows: int = 4, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": [float(start + i) for i in range(rows)],
            "label": [i % 2 for i in range(rows)],
            "ts": pd.date_range(day, periods=rows, freq="6h"),
        }
    )


def land_days(root: Path, days=DAYS, fmt: str = "parquet") -> Path:
    for n, day in enumerate(days):
        folder = root / f"dt={day}"
        folder.mkdir(parents=True, exist_ok=True)
        frame = day_frame(day, start=10 * n)
        if fmt == "parquet":
            frame.to_parquet(folder / "part-0.parquet", index=False)
        else:
            frame.to_csv(folder / "part-0.csv.gz", index=False)
    return root


@pytest.fixture
def fs() -> ReadCountingFS:
    return ReadCountingFS(skip_instance_cache=True)  # fresh counters: fsspec caches instances


@pytest.fixture
def sales(tmp_path: Path) -> Path:
    return land_days(tmp_path / "sales")


# -- listing ------------------------------------------------------------------------------


def test_resolve_lists_hive_partitions_sorted_without_reading(fs, sales):
    (sales / "_SUCCESS").write_text("")
    (sales / "dt=2026-12-01" / ".part-1.parquet.tmp").write_bytes(b"half")
    (sales / "dt=2026-12-01" / "_temporary").mkdir()
    (sales / "dt=2026-12-01" / "_temporary" / "part-9.parquet").write_bytes(b"x")

    files = resolve_files(fs, str(sales))

    assert [f.partition for f in files] == [{"dt": d} for d in DAYS]
    assert [f.path for f in files] == sorted(f.path for f in files)
    first = files[0]
    assert first.size == (sales / "dt=2026-11-28" / "part-0.parquet").stat().st_size
    assert first.etag_or_mtime.startswith("mtime:2") and first.format == "parquet"
    assert fs.opens == 0


def test_resolve_a_file_and_a_glob(fs, sales):
    one = sales / "dt=2026-11-29" / "part-0.parquet"
    assert [f.path for f in resolve_files(fs, f"file://{one}")] == [str(one)]
    globbed = resolve_files(fs, f"{sales}/dt=2026-11-3*/*.parquet")
    assert [f.partition for f in globbed] == [{"dt": "2026-11-30"}]
    assert len(resolve_files(fs, f"{sales}/**/*.parquet")) == len(DAYS)


def test_resolve_empty_or_missing_prefix_names_it(fs, tmp_path):
    empty = tmp_path / "empty"
    (empty / "dt=2026-12-01").mkdir(parents=True)
    (empty / "dt=2026-12-01" / "notes.txt").write_text("no data here")
    with pytest.raises(DataNotFoundError, match=f"No data files under {empty}"):
        resolve_files(fs, str(empty))
    with pytest.raises(DataNotFoundError, match=r"Nothing at .*missing"):
        resolve_files(fs, str(tmp_path / "missing"))


def test_resolve_refuses_mixed_formats_and_depths(fs, sales):
    day_frame(DAYS[0]).to_csv(sales / "dt=2026-11-28" / "extra.csv", index=False)
    with pytest.raises(UnsupportedFormatError, match=r"extra\.csv is csv"):
        resolve_files(fs, str(sales))
    (sales / "dt=2026-11-28" / "extra.csv").unlink()
    day_frame(DAYS[0]).to_parquet(sales / "stray.parquet")
    with pytest.raises(UnreadableDataError, match=r"stray.parquet has partition keys none"):
        resolve_files(fs, str(sales))


# -- reading ------------------------------------------------------------------------------


def test_read_only_requested_columns_and_pushes_partition_filter(fs, sales):
    import pyarrow.compute as pc

    files = resolve_files(fs, str(sales))
    frame = read_files(fs, files, columns=["x", "dt"], row_filter=pc.field("dt") >= "2026-11-30")
    assert list(frame.columns) == ["x", "dt"]
    assert sorted(frame["dt"].unique()) == ["2026-11-30", "2026-12-01"]
    assert len(frame) == 8

    chosen = filter_partitions(files, {"dt": ["2026-11-28"]})
    assert [f.partition["dt"] for f in chosen] == ["2026-11-28"]
    assert read_files(fs, chosen)["x"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_read_tags_each_row_with_its_file_as_the_manifest_spells_it(fs, sales):
    files = resolve_files(fs, str(sales))
    frame = read_files(fs, files, columns=["x"], source_column=SOURCE_FILE_COLUMN)
    assert list(frame.columns) == ["x", SOURCE_FILE_COLUMN]
    paths = [e.path for e in build_manifest(fs, files).files]
    assert frame[SOURCE_FILE_COLUMN].astype(str).tolist() == [p for p in paths for _ in range(4)]
    clash = sales.parent / "clash.parquet"
    day_frame(DAYS[0]).assign(**{SOURCE_FILE_COLUMN: "x"}).to_parquet(clash, index=False)
    with pytest.raises(UnreadableDataError, match=f"has a column '{SOURCE_FILE_COLUMN}'"):
        read_files(fs, resolve_files(fs, str(clash)), source_column=SOURCE_FILE_COLUMN)


def test_read_csv_partitions_promotes_inferred_types(fs, tmp_path):
    root = tmp_path / "csv"
    for day, xs in ((DAYS[0], [1, 2]), (DAYS[1], [0.5])):
        (root / f"dt={day}").mkdir(parents=True)
        pd.DataFrame({"x": xs}).to_csv(root / f"dt={day}" / "p.csv.gz", index=False)
    frame = read_files(fs, resolve_files(fs, str(root)))
    assert frame["x"].tolist() == [1.0, 2.0, 0.5]
    assert frame["dt"].tolist() == [DAYS[0], DAYS[0], DAYS[1]]


def test_read_names_partition_with_different_schema(fs, sales):
    bad = sales / "dt=2026-11-30" / "part-0.parquet"
    day_frame(DAYS[2]).rename(columns={"x": "x2"}).to_parquet(bad, index=False)
    with pytest.raises(
        UnreadableDataError, match=rf"{bad} has a different schema.*\['x'\].*\['x2'\]"
    ):
        read_files(fs, resolve_files(fs, str(sales)))
    day_frame(DAYS[2]).astype({"label": "string"}).to_parquet(bad, index=False)
    with pytest.raises(UnreadableDataError, match=f"{bad} has other column types"):
        read_files(fs, resolve_files(fs, str(sales)))


def test_read_names_truncated_and_empty_files(fs, sales):
    bad = sales / "dt=2026-11-29" / "part-0.parquet"
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(UnreadableDataError, match=f"{bad} cannot be read as parquet"):
        read_files(fs, resolve_files(fs, str(sales)))
    bad.write_bytes(b"")
    with pytest.raises(UnreadableDataError, match=rf"{bad} is empty \(0 bytes\)"):
        read_files(fs, resolve_files(fs, str(sales)))


def test_read_names_partition_key_clashing_with_a_column(fs, tmp_path):
    root = tmp_path / "clash"
    (root / "label=1").mkdir(parents=True)
    day_frame(DAYS[0]).to_parquet(root / "label=1" / "p.parquet", index=False)
    with pytest.raises(UnreadableDataError, match=r"label=1/p.parquet has a data column 'label'"):
        read_files(fs, resolve_files(fs, str(root)))


def test_read_names_a_missing_column(fs, sales):
    with pytest.raises(UnreadableDataError, match=r"Columns \['nope'\] are not in the dataset"):
        read_files(fs, resolve_files(fs, str(sales)), columns=["x", "nope"])


# -- windows ------------------------------------------------------------------------------


def test_window_config_forms():
    assert DataWindow.model_validate("all").kind == "all"
    assert DataWindow.model_validate({"last_partitions": 3}).kind == "last_partitions"
    window = DataWindow.model_validate({"last": "2d", "max_rows": 5, "seed": 1})
    assert window.last == timedelta(days=2)
    assert window.describe() == "last 2d by partition date; max 5 rows (seed 1)"
    assert DataWindow.model_validate(window.model_dump()) == window
    for bad in (
        {"last": "0d"},
        {"last": "2 fortnights"},
        {"last_partitions": 2, "last": "1d"},
        {"time_column": "ts"},
    ):
        with pytest.raises(ValueError, match="window"):
            DataWindow.model_validate(bad)


def test_select_last_partitions_and_last_duration(sales):
    files = resolve_files(LocalFileSystem(), str(sales))
    last2 = select_window(files, DataWindow(last_partitions=2))
    assert [f.partition["dt"] for f in last2] == DAYS[-2:]
    ending = select_window(files, DataWindow(last_partitions=2), end="2026-11-29")
    assert [f.partition["dt"] for f in ending] == DAYS[:2]
    by_days = select_window(files, DataWindow(last="3d"))
    assert [f.partition["dt"] for f in by_days] == DAYS[1:]
    aware_end = datetime(2026, 11, 30, tzinfo=timezone.utc)
    assert len(select_window(files, DataWindow(last="1d"), end=aware_end)) == 1
    with pytest.raises(DataNotFoundError, match="selects no file"):
        select_window(files, DataWindow(last_partitions=1), end="2026-01-01")
    with pytest.raises(ConfigError, match=r"window\.key 'region' is not a partition key"):
        select_window(files, DataWindow(last_partitions=1, key="region"))
    # "all" ending at a partition (a backfill, a new-data event) reads nothing newer.
    assert select_window(files, DataWindow(), end="2026-11-29") == files[:2]
    assert select_window(files, DataWindow()) == files


def test_select_daily_files_without_partition_folders(tmp_path):
    root = tmp_path / "daily"
    root.mkdir()
    for day in DAYS:
        day_frame(day).to_parquet(root / f"events_{day.replace('-', '')}.parquet")
    files = resolve_files(LocalFileSystem(), str(root))
    picked = select_window(files, DataWindow(last="2d"))
    assert [Path(f.path).name for f in picked] == [
        "events_20261130.parquet",
        "events_20261201.parquet",
    ]


def test_time_column_window_filters_rows_and_caps_with_seeded_sample(sales):
    fs = LocalFileSystem()
    window = DataWindow(last="1d", time_column="ts", max_rows=3, seed=7)
    end = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    read = read_window(fs, str(sales), window, end=end)
    # (2026-11-30 12:00, 2026-12-01 12:00]: 2026-11-30 18:00 and 2026-12-01 00:00, 06:00, 12:00
    full = read_files(fs, read.files, row_filter=window_row_filter(window, end=end))
    assert full["ts"].min() == pd.Timestamp("2026-11-30 18:00") and len(full) == 4
    assert len(read.frame) == 3 and read.frame.equals(sample_rows(full, window))
    assert len(read.files) == len(DAYS)


def test_row_cap_samples_by_row_hash_so_membership_can_be_recomputed():
    from airflow_mlops.core.stable_split import holdout_mask_for_keys, row_keys

    frame = pd.DataFrame({"id": range(1000), "x": [i % 7 for i in range(1000)]})
    window = DataWindow(max_rows=100, seed=3)
    kept = sample_rows(frame, window)
    assert len(kept) == 100 and kept.index.is_monotonic_increasing
    # Row order and the other rows present do not change which rows are kept...
    shuffled = sample_rows(frame.sample(frac=1, random_state=1), window)
    assert set(shuffled["id"]) == set(kept["id"])
    # ...and the recorded cut (a fraction) gives the same rows back.
    keys = row_keys(frame)
    mask, fraction = sample_mask(keys, window)
    assert np.array_equal(mask, holdout_mask_for_keys(keys, fraction, sample_seed(window)))
    assert np.array_equal(np.flatnonzero(mask), kept.index.to_numpy())
    # By key columns; the source-file column never counts in a content hash.
    assert set(sample_rows(frame, window, ["id"])["id"]) != set(kept["id"])
    tagged = frame.assign(**{SOURCE_FILE_COLUMN: "a.parquet"})
    assert sample_rows(tagged, window)["id"].tolist() == kept["id"].tolist()
    assert sample_mask(keys, DataWindow())[1] is None


# -- manifests ----------------------------------------------------------------------------


def test_manifest_records_files_and_round_trips(fs, sales):
    files = resolve_files(fs, str(sales))
    manifest = build_manifest(fs, files)
    first = manifest.files[0]
    assert first.sha256 == sha256_file(first.path)
    assert first.partition == {"dt": DAYS[0]} and first.size == files[0].size
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert json.loads(manifest.to_json())["content_hash"] == manifest.content_hash
    assert len(manifest.content_hash) == 16
    assert fs.bytes_read == manifest.total_bytes


def test_check_with_no_new_partition_reads_no_data_and_hashes_only_new_files(fs, sales):
    previous = build_manifest(fs, resolve_files(fs, str(sales)))
    fs.opens = fs.bytes_read = 0

    changes = detect_changes(previous, resolve_files(fs, str(sales)))
    assert not changes.any and len(changes.unchanged) == len(DAYS)
    assert build_manifest(fs, resolve_files(fs, str(sales)), previous) == previous
    assert (fs.opens, fs.bytes_read) == (0, 0)

    land_days(sales, ["2026-12-02"])
    (sales / "dt=2026-11-28" / "part-0.parquet").unlink()
    changed = sales / "dt=2026-11-29" / "part-0.parquet"
    day_frame(DAYS[1], rows=5).to_parquet(changed, index=False)
    listing = resolve_files(fs, str(sales))
    changes = detect_changes(previous, listing)
    assert changes.summary() == {
        "new": [str(sales / "dt=2026-12-02" / "part-0.parquet")],
        "removed": [str(sales / "dt=2026-11-28" / "part-0.parquet")],
        "changed": [str(changed)],
        "unchanged": 2,
    }
    current = build_manifest(fs, listing, previous)
    assert fs.opens == 2  # the new file and the changed one
    assert current.content_hash != previous.content_hash


# -- S3 (moto) through StorageHook --------------------------------------------------------


class CountingArrowFS(ArrowFSWrapper):
    """The hook's pyarrow S3 filesystem, counting files opened through fsspec."""

    opens = 0

    def _open(self, path, mode="rb", **kwargs):
        CountingArrowFS.opens += 1
        return super()._open(path, mode, **kwargs)


def test_storage_hook_gives_the_local_filesystem_for_paths(tmp_path):
    from airflow_mlops.hooks.storage import StorageHook

    for uri in (str(tmp_path), f"file://{tmp_path}"):
        assert isinstance(StorageHook().get_filesystem(uri), LocalFileSystem)


def test_s3_partitioned_prefix_through_storage_hook(s3_server, s3_bucket, tmp_path):
    import boto3

    from airflow_mlops.hooks.storage import StorageHook

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    local = land_days(tmp_path / "landing")
    for path in sorted(local.rglob("*.parquet")):
        client.upload_file(str(path), s3_bucket, f"sales/{path.relative_to(local)}")
    client.put_object(Bucket=s3_bucket, Key="sales/_SUCCESS", Body=b"")
    uri = f"s3://{s3_bucket}/sales"

    hook_fs = StorageHook(aws_conn_id="aws_default").get_filesystem(uri)
    fs = CountingArrowFS(hook_fs.fs)
    files = resolve_files(fs, uri)
    assert [f.path for f in files] == [f"{uri}/dt={day}/part-0.parquet" for day in DAYS]
    assert all(f.etag_or_mtime.startswith(("etag:", "mtime:")) for f in files)

    read = read_window(
        fs,
        uri,
        DataWindow(last_partitions=2),
        columns=["x", "dt"],
        source_column=SOURCE_FILE_COLUMN,
    )
    assert sorted(read.frame["dt"].unique()) == DAYS[-2:] and len(read.frame) == 8
    assert set(read.frame[SOURCE_FILE_COLUMN]) == {f.path for f in read.files}

    previous = build_manifest(fs, files)
    assert previous.files[0].sha256 == sha256_file(local / f"dt={DAYS[0]}" / "part-0.parquet")
    CountingArrowFS.opens = 0
    changes = detect_changes(previous, resolve_files(fs, uri))
    assert not changes.any and CountingArrowFS.opens == 0

    with pytest.raises(DataNotFoundError, match=f"s3://{s3_bucket}/nothing"):
        resolve_files(fs, f"s3://{s3_bucket}/nothing")
    client.put_object(Bucket=s3_bucket, Key="sales/dt=2026-12-02/part-0.parquet", Body=b"PAR1oops")
    with pytest.raises(
        UnreadableDataError, match=f"{uri}/dt=2026-12-02/part-0.parquet cannot be read"
    ):
        read_files(fs, resolve_files(fs, uri))
