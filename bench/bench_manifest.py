"""Benchmark: the scheduled "anything new?" check on a partitioned dataset with nothing new.

Data: ``--files`` (default 1,000) daily Hive partitions ``dt=YYYY-MM-DD/part-0.parquet`` of
``--rows`` rows each, on local disk and on a moto S3 server (``--no-s3`` skips S3).

* baseline: ``build_manifest`` of the whole listing (hashes every file), once, untimed goal.
* check: ``resolve_files`` (one listing with sizes and ETag/mtime) + ``detect_changes``
  against that manifest + ``build_manifest(..., previous)``, the median of ``--repeats``.

Goals: check <= 2 s, and 0 bytes of data files read: counted on the filesystem the check
uses (every ``open`` and every byte read through it) and, on local disk, by the process's
own read counter (``/proc/self/io`` ``rchar``, which counts every byte any ``read()``
returned). Usage::

    .venv/bin/python bench/bench_manifest.py [--files 1000] [--rows 2000] [--repeats 5] [--no-s3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from _common import ROOT, median, report

GOAL_SECONDS = 2.0


class CountedFile:
    """A file handle that adds the bytes it returns to its filesystem class's counter."""

    def __init__(self, handle, counter: type) -> None:
        self._handle, self._counter = handle, counter

    def read(self, *args):
        data = self._handle.read(*args)
        self._counter.bytes_read += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


def counting(base: type) -> type:
    """``base`` (an fsspec filesystem class) counting files opened and bytes read."""

    class Counted(base):
        opens = 0
        bytes_read = 0

        def _open(self, path, mode="rb", **kwargs):
            Counted.opens += 1
            return CountedFile(super()._open(path, mode, **kwargs), Counted)

    return Counted


def process_rchar() -> int:
    """Bytes this process got from read() calls so far (reading this file included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return -1


def rchar_of_reading_rchar() -> int:
    first = process_rchar()
    return process_rchar() - first


def land_partitions(root: Path, files: int, rows: int) -> int:
    """``files`` daily partitions (the same bytes in each; the check reads none of them)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f"f{i}": rng.normal(size=rows) for i in range(10)})
    first = root / "part.parquet"
    root.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(first, index=False)
    start = date(2024, 1, 1)
    for n in range(files):
        folder = root / f"dt={start + timedelta(days=n)}"
        folder.mkdir()
        shutil.copyfile(first, folder / "part-0.parquet")
    size = first.stat().st_size
    first.unlink()
    return size


def measure_check(fs, uri: str, repeats: int) -> dict:
    from airflow_mlops.core.datasets import resolve_files
    from airflow_mlops.core.manifest import build_manifest, detect_changes

    t0 = time.perf_counter()
    previous = build_manifest(fs, resolve_files(fs, uri))
    baseline_s = time.perf_counter() - t0
    type(fs).opens = type(fs).bytes_read = 0
    rchar_before = process_rchar()
    times, outcome = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        listing = resolve_files(fs, uri)
        changes = detect_changes(previous, listing)
        current = build_manifest(fs, listing, previous)
        times.append(time.perf_counter() - t0)
        outcome = (changes.any, len(changes.unchanged), current == previous)
    return {
        "files": len(previous.files),
        "data_bytes": previous.total_bytes,
        "baseline_manifest_s": round(baseline_s, 3),
        "check_median_s": round(median(times), 3),
        "check_max_s": round(max(times), 3),
        "opens": type(fs).opens,
        "bytes_read_through_fs": type(fs).bytes_read,
        "process_rchar_bytes": process_rchar() - rchar_before - rchar_of_reading_rchar(),
        "anything_new": outcome[0],
        "unchanged": outcome[1],
        "same_manifest": outcome[2],
    }


def local_run(root: Path, repeats: int) -> dict:
    from fsspec.implementations.local import LocalFileSystem

    fs = counting(LocalFileSystem)(skip_instance_cache=True)
    return measure_check(fs, str(root), repeats)


def s3_run(root: Path, workdir: Path, repeats: int) -> dict:
    """The same partitions on moto S3, through StorageHook.get_filesystem (the real path)."""
    import boto3

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "deploy"))  # tests/_servers imports devkit
    from _servers import moto_server_for
    from fsspec.implementations.arrow import ArrowFSWrapper

    server = moto_server_for(workdir / "moto").start()
    try:
        server.wait_ready()
        os.environ["AIRFLOW_CONN_BENCH_S3"] = json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": server.url, "region_name": "us-east-1"},
            }
        )
        client = boto3.client(
            "s3",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket="bench")
        for path in sorted(root.rglob("*.parquet")):
            client.upload_file(str(path), "bench", f"sales/{path.relative_to(root)}")
        from airflow_mlops.hooks.storage import StorageHook

        uri = "s3://bench/sales"
        hook_fs = StorageHook(aws_conn_id="bench_s3").get_filesystem(uri)
        fs = counting(ArrowFSWrapper)(hook_fs.fs)
        figures = measure_check(fs, uri, repeats)
        figures.pop("process_rchar_bytes")  # socket reads of listings count there too
        return figures
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-s3", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-manifest-"))
    try:
        size = land_partitions(workdir / "sales", args.files, args.rows)
        results = {"local": local_run(workdir / "sales", args.repeats)}
        if not args.no_s3:
            results["s3"] = s3_run(workdir / "sales", workdir, args.repeats)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    for where, fig in results.items():
        report(
            f"manifest check, {where}: {fig['files']} partitions x {size} B, nothing new",
            [
                ("first manifest (hash all)", f"{fig['baseline_manifest_s']} s"),
                (
                    "check (list+detect+manifest)",
                    f"median {fig['check_median_s']} s, max {fig['check_max_s']} s "
                    f"(goal <= {GOAL_SECONDS} s)",
                ),
                ("files opened by the check", str(fig["opens"])),
                ("data bytes read by the check", f"{fig['bytes_read_through_fs']} (goal 0)"),
                *(
                    [("process read() bytes", str(fig["process_rchar_bytes"]))]
                    if "process_rchar_bytes" in fig
                    else []
                ),
                (
                    "verdict",
                    f"anything new: {fig['anything_new']}; unchanged {fig['unchanged']}; "
                    f"same manifest: {fig['same_manifest']}",
                ),
            ],
        )
    print(json.dumps({"bench": "manifest", "file_bytes": size, "results": results}))


if __name__ == "__main__":
    main()
