"""How cost grows with rows and columns: validation, drift and the training fit (core calls).

Three shapes: 100k x 20, 1M x 20 (10x rows) and 100k x 80 (4x columns), all numeric with 2 %
missing values. Per shape, in this process (imports paid before the clock):

* validation: ``core.validation.validate_frame`` with 2 expectations per column (range and
  not-null), so the suite grows with the columns as a real suite does;
* drift: ``core.drift.compute_drift`` between two parquet files (the current side shifted on
  a quarter of the columns), default sampling (50,000 rows per side);
* training fit: the provider's default pipeline (median imputer) + ``XGBClassifier``
  (50 trees, depth 6, hist, 2 threads) fitted on 75 % of the rows.

Printed: seconds per step and shape, and the growth factor against 100k x 20 (1.0 = flat,
10.0 = linear in rows, 4.0 = linear in columns).

    .venv/bin/python bench/bench_scaling.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import report

SHAPES = [(100_000, 20), (1_000_000, 20), (100_000, 80)]
BASE = SHAPES[0]


def make_pair(rows: int, columns: int, folder: Path) -> tuple[Path, Path]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(rows + columns)
    names = [f"c{i:02d}" for i in range(columns)]
    paths = []
    for side, shift in (("reference", 0.0), ("current", 0.5)):
        data = rng.normal(size=(rows, columns))
        data[:, : max(1, columns // 4)] += shift
        frame = pd.DataFrame(data, columns=names).mask(rng.random((rows, columns)) < 0.02)
        frame["label"] = (np.nan_to_num(data[:, 0]) + rng.normal(size=rows) > 0).astype(int)
        path = folder / f"{side}-{rows}x{columns}.parquet"
        frame.to_parquet(path, index=False)
        paths.append(path)
    return paths[0], paths[1]


def time_validation(frame, columns: list[str]) -> float:
    from airflow_mlops.core.suite import parse_suite
    from airflow_mlops.core.validation import validate_frame

    expectations = []
    for column in columns:
        expectations.append(
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": column, "min_value": -50, "max_value": 50},
            }
        )
        expectations.append(
            {
                "type": "expect_column_values_to_not_be_null",
                "kwargs": {"column": column, "mostly": 0.9},
            }
        )
    suite = parse_suite(expectations)
    started = time.perf_counter()
    result = validate_frame(frame, suite)
    elapsed = time.perf_counter() - started
    if not result.success:
        raise RuntimeError("the scaling suite should pass")
    return elapsed


def time_drift(reference: Path, current: Path, columns: int) -> float:
    from airflow_mlops.core.drift import compute_drift
    from airflow_mlops.core.storage import Storage

    started = time.perf_counter()
    result = compute_drift(str(reference), str(current), Storage())
    elapsed = time.perf_counter() - started
    shifted = {f"c{i:02d}" for i in range(max(1, columns // 4))}
    missed = shifted - set(result.summary["drifted_columns"])
    if missed:
        raise RuntimeError(f"shifted columns not reported as drifted: {sorted(missed)}")
    return elapsed


def time_fit(frame) -> float:
    from sklearn.pipeline import Pipeline

    from airflow_mlops.core.estimators import build_preprocessor, resolve_estimator

    X, y = frame.drop(columns=["label"]), frame["label"]
    n = int(len(X) * 0.75)
    params = {"n_estimators": 50, "max_depth": 6, "tree_method": "hist", "n_jobs": 2}
    estimator = resolve_estimator("xgboost.XGBClassifier", "classification", params)
    pipeline = Pipeline([("preprocess", build_preprocessor(X, 50)), ("model", estimator)])
    started = time.perf_counter()
    pipeline.fit(X.iloc[:n], y.iloc[:n])
    return time.perf_counter() - started


def warm_up(folder: Path) -> None:
    """First-call costs (imports, GX and Evidently initialisation) outside the clock."""
    import pandas as pd

    reference, current = make_pair(2_000, 4, folder)
    frame = pd.read_parquet(reference)
    time_validation(frame, [c for c in frame.columns if c != "label"])
    time_drift(reference, current, 4)
    time_fit(frame)


def main() -> None:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        folder = Path(tmp)
        warm_up(folder)
        for rows, columns in SHAPES:
            reference, current = make_pair(rows, columns, folder)
            frame = pd.read_parquet(reference)
            names = [c for c in frame.columns if c != "label"]
            runs = {"validation": [], "drift": [], "training fit": []}
            for _ in range(args.repeats):
                runs["validation"].append(time_validation(frame, names))
                runs["drift"].append(time_drift(reference, current, columns))
                runs["training fit"].append(time_fit(frame))
            results[f"{rows}x{columns}"] = {k: statistics.median(v) for k, v in runs.items()}
            print(f"{rows:,} x {columns}: {results[f'{rows}x{columns}']}", flush=True)
    base = results[f"{BASE[0]}x{BASE[1]}"]
    rows_out = []
    for step in ("validation", "drift", "training fit"):
        cells = []
        for rows, columns in SHAPES:
            value = results[f"{rows}x{columns}"][step]
            cells.append(f"{rows // 1000}k x {columns}: {value:.2f} s ({value / base[step]:.1f}x)")
        rows_out.append((step, "; ".join(cells)))
    report("Scaling: seconds (growth vs 100k x 20; rows x10, columns x4)", rows_out)
    print(json.dumps({"bench": "scaling", "results": results}))


if __name__ == "__main__":
    main()
