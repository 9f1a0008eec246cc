"""Build the daily feed of ``make demo`` from the bundled breast-cancer batches.

Writes ``include/data/breast_cancer_daily/feed.parquet``: the upstream feed a producer DAG
lands one day at a time, with a synthetic ``day`` (one value per day) and a synthetic ``id``
(the row's key: the stable split hashes it, and labels join predictions on it). The days tell the
demo's story:

- 2026-11-23 .. 2026-11-25: the reference batch in three days (the first champion);
- 2026-11-26, 2026-11-27: the clean batch in two days (retrains on a moving window);
- 2026-11-28: the drifted subpopulation (the largest tumours) in one day;
- (labels of 11-26..11-28 arrive on 11-30 and 12-02: scripts/demo.py lands them from this feed;)
- 2026-12-03: a broken day: the feed switched ``mean_area`` to another unit (x100) and lost
  ``mean_texture`` on a quarter of its rows; same columns and types, so only the data
  contract can tell.

Also writes ``include/suites/breast_cancer_daily.json``: the shipped breast_cancer suite plus
the two columns a landed partition adds (``id``: an integer key, unique and complete; ``dt``:
the partition date). Deterministic: run ``.venv/bin/python scripts/make_demo_days.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BATCHES = ROOT / "include" / "data" / "breast_cancer"
FEED = ROOT / "include" / "data" / "breast_cancer_daily" / "feed.parquet"
SUITE_IN = ROOT / "include" / "suites" / "breast_cancer.json"
SUITE_OUT = ROOT / "include" / "suites" / "breast_cancer_daily.json"
FIRST_ID = 100_001
SEED = 7
INT_TYPES = [
    "int8",
    "int16",
    "int32",
    "int64",
    "Int8Dtype",
    "Int16Dtype",
    "Int32Dtype",
    "Int64Dtype",
]


def batch(name: str) -> pd.DataFrame:
    return pd.read_parquet(BATCHES / f"{name}.parquet")


def broken(rows: pd.DataFrame) -> pd.DataFrame:
    """The same columns and types, with values no good day has."""
    rows = rows.copy()
    rows["mean_area"] = rows["mean_area"] * 100
    lost = np.random.default_rng(SEED).choice(len(rows), size=len(rows) // 4, replace=False)
    rows.loc[rows.index[lost], "mean_texture"] = np.nan
    return rows


def days() -> list[tuple[str, pd.DataFrame]]:
    reference, clean, drifted = batch("reference"), batch("clean"), batch("drifted")
    return [
        ("2026-11-23", reference.iloc[0::3]),
        ("2026-11-24", reference.iloc[1::3]),
        ("2026-11-25", reference.iloc[2::3]),
        ("2026-11-26", clean.iloc[0::2]),
        ("2026-11-27", clean.iloc[1::2]),
        ("2026-11-28", drifted),
        ("2026-12-03", broken(clean.iloc[0::2])),
    ]


def feed() -> pd.DataFrame:
    frame = pd.concat([rows.assign(day=day) for day, rows in days()], ignore_index=True)
    frame.insert(0, "id", np.arange(FIRST_ID, FIRST_ID + len(frame), dtype="int64"))
    return frame


def daily_suite() -> dict:
    suite = json.loads(SUITE_IN.read_text())
    suite["name"] = "breast_cancer_daily"
    for expectation in suite["expectations"]:
        if expectation["type"] == "expect_table_columns_to_match_set":
            expectation["kwargs"]["column_set"] = ["id", *expectation["kwargs"]["column_set"], "dt"]
    suite["expectations"] += [
        {"type": t, "kwargs": {"column": "id", **kw}, "meta": {}}
        for t, kw in [
            ("expect_column_values_to_be_in_type_list", {"type_list": INT_TYPES}),
            ("expect_column_values_to_not_be_null", {}),
            ("expect_column_values_to_be_unique", {}),
        ]
    ]
    suite["expectations"].append(
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "dt"}, "meta": {}}
    )
    suite.setdefault("meta", {})["airflow_mlops"] = {
        "generated_by": "scripts/make_demo_days.py from include/suites/breast_cancer.json"
    }
    return suite


def main() -> None:
    frame = feed()
    FEED.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(FEED, index=False)
    print(f"{FEED.relative_to(ROOT)}: {len(frame)} rows x {frame.shape[1]} cols")
    for day, rows in frame.groupby("day"):
        print(f"  {day}: {len(rows)} rows, {rows['benign'].mean():.0%} benign")
    SUITE_OUT.write_text(json.dumps(daily_suite(), indent=2) + "\n")
    print(f"{SUITE_OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
