"""Storage by URI on local paths and the real moto S3 server."""

from __future__ import annotations

import pandas as pd
import pytest

from airflow_mlops.core.errors import DataNotFoundError, UnreadableDataError, UnsupportedFormatError
from airflow_mlops.core.storage import (
    Storage,
    UncheckableUriError,
    is_under_root,
    join_uri,
    normalize_uri,
    sha256_bytes,
)
from airflow_mlops.hooks.storage import StorageHook


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame({"x": [1.0, 2.0, None], "city": ["a", "b", "é </script>"], "y": [0, 1, 0]})


@pytest.mark.parametrize("name", ["t.parquet", "t.csv", "t.csv.gz"])
def test_local_roundtrip_and_hash(tmp_path, frame, name):
    storage = Storage()
    uri = str(tmp_path / "sub" / name)
    digest = storage.write_table(frame, uri)
    read = storage.read_table(uri)
    pd.testing.assert_frame_equal(read.frame, frame, check_dtype=False)
    assert read.sha256 == digest == sha256_bytes((tmp_path / "sub" / name).read_bytes())
    assert read.rows == 3 and read.columns == ["x", "city", "y"]
    assert read.lineage()["uri"] == uri


def test_s3_and_local_hash_identical_for_same_bytes(tmp_path, frame, s3_bucket):
    storage = StorageHook(aws_conn_id="aws_default").get_storage()
    local_uri = str(tmp_path / "t.parquet")
    s3_uri = f"s3://{s3_bucket}/data/t.parquet"
    local_hash = storage.write_table(frame, local_uri)
    storage.write_bytes(s3_uri, (tmp_path / "t.parquet").read_bytes())
    read = storage.read_table(s3_uri)
    assert read.sha256 == local_hash
    pd.testing.assert_frame_equal(read.frame, frame)
    assert storage.exists(s3_uri) and not storage.exists(f"s3://{s3_bucket}/nope.parquet")


def test_s3_json_and_text(s3_bucket):
    storage = StorageHook().get_storage()
    storage.write_json(f"s3://{s3_bucket}/r/summary.json", {"ok": True})
    assert storage.read_json(f"s3://{s3_bucket}/r/summary.json") == {"ok": True}


def test_s3_missing_key_and_bucket(s3_bucket):
    storage = StorageHook().get_storage()
    with pytest.raises(DataNotFoundError, match=f"No object at s3://{s3_bucket}/missing.csv"):
        storage.read_table(f"s3://{s3_bucket}/missing.csv")
    with pytest.raises(DataNotFoundError, match="does not exist"):
        storage.read_bytes("s3://no-such-bucket-xyz/a.csv")


def test_s3_without_connection_is_a_clear_error():
    with pytest.raises(UnsupportedFormatError, match="no S3 connection is configured"):
        Storage().read_bytes("s3://b/k.csv")


def test_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="No file at"):
        Storage().read_table(str(tmp_path / "nope.parquet"))


@pytest.mark.parametrize("name", ["data.txt", "data.xlsx", "data"])
def test_unknown_format(tmp_path, name):
    (tmp_path / name).write_text("a,b\n1,2\n")
    with pytest.raises(UnsupportedFormatError, match="Cannot tell the table format"):
        Storage().read_table(str(tmp_path / name))


def test_garbage_parquet_and_empty_files(tmp_path):
    (tmp_path / "g.parquet").write_bytes(b"\x00garbage bytes, not parquet")
    with pytest.raises(UnreadableDataError, match="cannot be read as parquet"):
        Storage().read_table(str(tmp_path / "g.parquet"))
    (tmp_path / "e.csv").write_bytes(b"")
    with pytest.raises(UnreadableDataError, match=r"empty \(0 bytes\)"):
        Storage().read_table(str(tmp_path / "e.csv"))
    (tmp_path / "n.csv").write_text("\n\n")
    with pytest.raises(UnreadableDataError, match="no columns"):
        Storage().read_table(str(tmp_path / "n.csv"))


def test_unsupported_scheme():
    with pytest.raises(UnsupportedFormatError, match="Unsupported URI scheme"):
        Storage().read_bytes("gs://bucket/a.csv")


def test_join_uri():
    assert join_uri("s3://b/prefix/", "x", "/y.json") == "s3://b/prefix/x/y.json"
    assert join_uri("/tmp/a", "b", "c.json") == "/tmp/a/b/c.json"


def test_atomic_local_write_leaves_no_temp_files(tmp_path):
    Storage().write_text(str(tmp_path / "r.html"), "<html/>")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


# -- "is this URI under that root": the one rule of the plugin, the data prefixes, reports ---


@pytest.mark.parametrize(
    ("uri", "root"),
    [
        ("/data/in/x.csv", "/data/in"),
        ("/data/in/x.csv", "/data/in/"),
        ("file:///data/in/x.csv", "/data/in"),
        ("file://localhost/data/in/x.csv", "/data/in"),
        ("/data/in", "/data/in"),
        ("s3://bucket/data/x.csv", "s3://bucket/data/"),
        ("s3://bucket/data/x.csv", "s3://bucket"),
    ],
)
def test_uris_under_their_root(uri, root):
    assert is_under_root(uri, root)


@pytest.mark.parametrize(
    ("uri", "root"),
    [
        ("/data/in2/x.csv", "/data/in"),  # a sibling sharing the root's name as a prefix
        ("s3://bucket/data2/x.csv", "s3://bucket/data"),
        ("s3://other/data/x.csv", "s3://bucket/data"),  # another bucket
        ("s3://bucket/data/x.csv", "/data"),  # never s3 under a local root, nor the reverse
        ("/data/x.csv", "s3://bucket/data"),
    ],
)
def test_uris_outside_their_root(uri, root):
    assert not is_under_root(uri, root)


@pytest.mark.parametrize(
    "uri",
    [
        "/data/in/../../etc/passwd",  # '..' is refused even where it would resolve inside
        "/data/in/./x.csv",
        "/data/in//x.csv",
        "//data/in/x.csv",
        "s3://bucket/data/../secrets/x.csv",
        "s3://bucket/data//x.csv",
        "s3://bucket/data/%2e%2e/x.csv",
        "s3://bucket/data/x.csv#frag",
        "file://otherhost/data/in/x.csv",  # another machine's /data/in
        "file:///data/in/x.csv?q",
        "/data/in/a\\..\\b",
        "/data/in/x\x00.csv",
        "https://host/data/in/x.csv",
        "data/in/x.csv",
        "",
    ],
)
def test_uris_that_cannot_be_checked_are_refused(uri):
    with pytest.raises(UncheckableUriError):
        is_under_root(uri, "/data/in")
    with pytest.raises(UncheckableUriError):
        is_under_root("/data/in/x.csv", uri)  # a bad root is refused the same way


def test_links_are_resolved_unless_asked_not_to(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert not is_under_root(str(root / "link" / "x.html"), str(root))
    assert is_under_root(str(root / "link" / "x.html"), str(root), resolve_links=False)
    assert normalize_uri(f"file://{root}/", resolve_links=False) == str(root)
