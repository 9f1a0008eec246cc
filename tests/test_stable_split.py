"""Hash-based split: a row's side depends only on its key, the seed and the fraction."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core.errors import ConfigError, DataError
from airflow_mlops.core.stable_split import (
    HASH_SCHEME,
    StableSplit,
    check_split_classes,
    hashed_columns,
    holdout_mask,
    row_keys,
    rows_from_files,
    trained_on,
)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 20_000
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "city": rng.choice(["paris", "lyon", "nice"], n),
            "x": rng.normal(size=n),
            "y": rng.integers(0, 2, n),
        }
    )


def test_keys_and_sides_are_pinned():
    # Golden values: a change of hashing rules (or of pandas' string hash) moves rows
    # between train and holdout for every recorded model, so it must be deliberate (bump
    # HASH_SCHEME) and never slip in with a library upgrade.
    frame = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "name": ["a", "b", "c"],
            "x": [0.5, 1.0, float("nan")],
            "t": pd.to_datetime(["2026-01-01 00:00", "2026-06-30 12:00", "2026-12-01 00:00"]),
        }
    )
    assert row_keys(frame).tolist() == [
        16672119798289727838,
        2105285765848444577,
        3428416836549991058,
    ]
    assert row_keys(frame, ["id"]).tolist() == [
        11028426030083068036,
        15995898753954399801,
        12823476627494699889,
    ]
    assert row_keys(frame, ["name", "id"]).tolist() == [
        1806702277049978535,
        17865664261271914115,
        7667561850348729398,
    ]
    sides = holdout_mask(pd.DataFrame({"id": range(20)}), 0.3, 7, ["id"])
    assert sides.astype(int).tolist() == [
        1,
        1,
        0,
        1,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        1,
        0,
        1,
        0,
        0,
        1,
        0,
        0,
        0,
    ]
    assert HASH_SCHEME == "mlops-rowhash-v1"


@pytest.mark.parametrize("key_columns", [None, ["id"], ["city", "id"]])
def test_side_does_not_depend_on_row_order_or_other_rows(frame, key_columns):
    mask = holdout_mask(frame, 0.25, 11, key_columns)
    order = np.random.default_rng(0).permutation(len(frame))
    shuffled = frame.iloc[order].reset_index(drop=True)
    assert np.array_equal(holdout_mask(shuffled, 0.25, 11, key_columns), mask[order])
    subset = frame.iloc[::7]
    assert np.array_equal(holdout_mask(subset, 0.25, 11, key_columns), mask[::7])
    # Appending a new batch leaves the old rows where they were.
    grown = pd.concat([frame, frame.assign(id=frame["id"] + len(frame))], ignore_index=True)
    assert np.array_equal(holdout_mask(grown, 0.25, 11, key_columns)[: len(frame)], mask)


def test_holdout_share_is_close_to_the_fraction(frame):
    n = len(frame)
    for fraction in (0.1, 0.25, 0.5):
        share = holdout_mask(frame, fraction, 5, ["id"]).mean()
        assert abs(share - fraction) < 4 * math.sqrt(fraction * (1 - fraction) / n)


def test_seed_reshuffles_and_fraction_nests(frame):
    a = holdout_mask(frame, 0.3, 1, ["id"])
    b = holdout_mask(frame, 0.3, 2, ["id"])
    assert abs((a == b).mean() - (0.3**2 + 0.7**2)) < 0.02  # independent-looking splits
    smaller = holdout_mask(frame, 0.2, 1, ["id"])
    assert not (smaller & ~a).any()  # the 0.2 holdout is inside the 0.3 one


def test_key_hashing_ignores_other_columns_and_content_hashing_does_not(frame):
    changed = frame.assign(x=frame["x"] + 1.0)
    assert np.array_equal(row_keys(changed, ["id"]), row_keys(frame, ["id"]))
    assert (row_keys(changed) != row_keys(frame)).all()
    # Content hashing does not depend on column order, and duplicates share a key.
    assert np.array_equal(row_keys(frame[frame.columns[::-1]]), row_keys(frame))
    doubled = pd.concat([frame.head(50), frame.head(50)], ignore_index=True)
    keys = row_keys(doubled)
    assert np.array_equal(keys[:50], keys[50:])
    # Key columns that name an entity keep all its rows on one side (a grouped split).
    by_city = holdout_mask(frame, 0.5, 3, ["city"])
    assert frame.groupby(by_city)["city"].nunique().sum() == 3


def test_same_values_hash_alike_whatever_the_column_type():
    ints = pd.DataFrame({"k": np.array([1, -5, 7], dtype="int64")})
    variants = [
        ints.astype("int32"),
        ints.astype("Int64"),
        ints.astype("float64"),
        ints.astype(object),
    ]
    for variant in variants:
        assert np.array_equal(row_keys(variant, ["k"]), row_keys(ints, ["k"])), variant.dtypes
    texts = pd.DataFrame({"k": ["a", "b", None]})
    for variant in (texts.astype("string"), texts.astype("category")):
        assert np.array_equal(row_keys(variant), row_keys(texts)), variant.dtypes
    stamps = pd.DataFrame({"k": pd.to_datetime(["2026-01-01", "2026-05-01"])})
    micro = stamps.astype("datetime64[us]")
    aware = stamps.assign(k=stamps["k"].dt.tz_localize("UTC").dt.tz_convert("Asia/Tokyo"))
    for variant in (micro, aware):
        assert np.array_equal(row_keys(variant, ["k"]), row_keys(stamps, ["k"]))
    zeros = pd.DataFrame({"k": [0.0, -0.0, 0.25]})
    keys = row_keys(zeros)
    assert keys[0] == keys[1] != keys[2]


def test_errors_name_the_bad_input(frame):
    with pytest.raises(DataError, match=r"key column\(s\) \['nope'\]"):
        holdout_mask(frame, 0.2, 1, ["id", "nope"])
    with_nulls = frame.head(10).assign(id=[1, None] * 5)
    with pytest.raises(DataError, match="key column 'id' has 5 null"):
        holdout_mask(with_nulls, 0.2, 1, ["id"])
    for bad in (0, 1, 1.5, -0.1, float("nan"), True, "0.2"):
        with pytest.raises(ConfigError, match="holdout_fraction"):
            holdout_mask(frame, bad, 1, ["id"])
    for bad in (1.5, "7", None):
        with pytest.raises(ConfigError, match="seed"):
            holdout_mask(frame, 0.2, bad, ["id"])
    with pytest.raises(ConfigError, match="key_columns is empty"):
        row_keys(frame, [])
    # Content hashing accepts nulls: a row with a missing feature is still a row.
    assert len(row_keys(with_nulls)) == 10


def test_trained_on_is_manifest_rows_on_the_train_side(frame):
    files = np.where(frame["id"] < 15_000, "dt=2026-12-01/a.parquet", "dt=2026-12-02/a.parquet")
    data = frame.assign(__filename=files)
    in_manifest = rows_from_files(data, "__filename", ["dt=2026-12-01/a.parquet"])
    used = trained_on(data, ["id"], 9, 0.2, in_training_data=in_manifest)
    held_out = holdout_mask(data, 0.2, 9, ["id"])
    assert np.array_equal(used, in_manifest & ~held_out)
    assert not used[frame["id"] >= 15_000].any()
    assert np.array_equal(trained_on(data, ["id"], 9, 0.2), ~held_out)
    with pytest.raises(DataError, match="file column '__file'"):
        rows_from_files(data, "__file", [])
    with pytest.raises(DataError, match="in_training_data has 3 values"):
        trained_on(data, ["id"], 9, 0.2, in_training_data=np.ones(3, dtype=bool))


def test_recorded_split_round_trips_through_tags(frame):
    split = StableSplit.resolved(frame, 0.2, 9)
    assert split.key_columns == ("city", "id", "x", "y") and split.by_content
    tags = split.to_tags()
    assert all(isinstance(v, str) for v in tags.values())
    again = StableSplit.from_tags(tags)
    assert again == split
    # Evaluation data carries an extra column: the recorded columns still find the rows.
    wider = frame.assign(dt="2026-12-01")
    assert np.array_equal(again.trained_on(wider), ~split.holdout(frame))
    assert StableSplit.from_tags({}) is None
    with pytest.raises(DataError, match="hashing scheme 'other'"):
        StableSplit.from_tags({**tags, "mlops.split.scheme": "other"})
    with pytest.raises(DataError, match="malformed"):
        StableSplit.from_tags({**tags, "mlops.split.seed": "x"})
    assert hashed_columns(frame, "id") == ["id"]


def test_class_check_refuses_a_one_class_side():
    y = np.array([0, 1] * 5)
    check_split_classes(y, np.array([False] * 6 + [True] * 4), "label")  # two classes each
    y = np.array([0] * 8 + [1] * 2)
    with pytest.raises(DataError, match=r"the training side .* 1 class"):
        check_split_classes(y, np.array([False] * 8 + [True] * 2), "label")


def test_a_million_rows_split_quickly():
    import time

    big = pd.DataFrame({"id": np.arange(1_000_000), "region": np.repeat(["n", "s"], 500_000)})
    start = time.perf_counter()
    mask = holdout_mask(big, 0.2, 1, ["id", "region"])
    elapsed = time.perf_counter() - start
    assert abs(mask.mean() - 0.2) < 0.002
    assert elapsed < 2.0, f"1M rows took {elapsed:.2f} s"
