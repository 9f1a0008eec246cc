"""Segments: 1, 4, 16 and 100 segment models (small data each) trained, gated and promoted.

The factory's segmented CT DAG (``segments:`` in the pipeline config) runs the per-segment
chain (detect_changes -> train -> evaluate -> register -> promote -> summary) as a mapped
TaskGroup, one map index per segment. Each size is one ``dag.test()`` run against a real
``mlflow server``: tasks run in this process, one after another, so Python imports are paid
once for the whole run (as in a worker that pre-imports them, see docs/performance.md).
Each segment has ``--rows`` rows x 5 numeric features, a Ridge regressor.

Printed per size: wall time of the run, seconds per model, per-task medians, peak RSS of
this process and of its children (the promote task's serving check forks one child per model
from a ``python -I`` checker process started once per run, see ``core/serving.py``), and the
largest XCom value. Goal: 100 models in <= 15 min on 2 cores.

    .venv/bin/python bench/bench_segments.py [--sizes 1,4,16,100] [--rows 200]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import _airflow  # noqa: F401  (first: private AIRFLOW_HOME before airflow is imported)
from _airflow import (
    WORKDIR,
    Environment,
    per_task_totals,
    run_dag,
    save_xcom_sizes,
    task_rows,
    xcom_sizes,
)
from _common import report

N_FEATURES = 5
GOAL_100_S = 15 * 60


def make_data(segments: int, rows: int, path: str) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    n = segments * rows
    frame = pd.DataFrame(rng.normal(size=(n, N_FEATURES)), columns=[f"x{i}" for i in range(5)])
    frame["seg"] = [f"s{i:03d}" for i in np.repeat(np.arange(segments), rows)]
    weights = rng.normal(size=N_FEATURES)
    frame["y"] = frame[[f"x{i}" for i in range(5)]].to_numpy() @ weights + rng.normal(
        scale=0.3, size=n
    )
    frame.to_parquet(path)


def build_dag(segments: int, data_uri: str, serving_check: bool):
    from airflow_mlops.factories import continuous_training_dag
    from airflow_mlops.factories.config import parse_config

    raw = {
        "name": f"bench_seg_{segments}",
        "data": {"train_uri": data_uri, "target": "y", "exclude": ["seg"]},
        "validation": {"enabled": False},
        "training": {"estimator": "sklearn.linear_model.Ridge", "task": "regression"},
        "promotion": {"serving_check": serving_check},
        "segments": {"column": "seg", "values": [f"s{i:03d}" for i in range(segments)]},
        "monitoring": {"enabled": False},
        "retries": 0,
    }
    config = parse_config(raw, source=f"bench_seg_{segments}", base_dir=str(WORKDIR))
    return continuous_training_dag(config)


def run_size(segments: int, rows: int, serving_check: bool) -> dict:
    data = WORKDIR / f"seg_{segments}.parquet"
    make_data(segments, rows, str(data))
    dag = build_dag(segments, str(data), serving_check)
    dag_run, seconds = run_dag(dag)
    rows_ = task_rows(dag.dag_id, dag_run.run_id)
    states = {r["state"] for r in rows_}
    promoted = sum(1 for r in rows_ if r["task_id"].endswith("promote") and r["state"] == "success")
    sizes = xcom_sizes(dag.dag_id, dag_run.run_id)
    save_xcom_sizes(f"segments_{segments}", sizes)
    largest = max(sizes, key=lambda s: s["bytes"]) if sizes else {"bytes": 0}
    return {
        "segments": segments,
        "state": str(dag_run.state),
        "task_states": sorted(str(s) for s in states),
        "promote_success": promoted,
        "seconds": seconds,
        "per_model_s": seconds / segments,
        "tasks": per_task_totals(rows_),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "largest_xcom": largest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,16,100")
    parser.add_argument("--rows", type=int, default=200, help="rows per segment")
    parser.add_argument(
        "--serving-check-max",
        type=int,
        default=100,
        help="run the promote task's serving check only for sizes up to this (default: all)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.perf_counter()
    results = []
    with Environment() as env:
        print(f"mlflow server ready ({env.mlflow.url}) after {time.perf_counter() - started:.0f}s")
        for n in sizes:
            serving_check = n <= args.serving_check_max
            result = run_size(n, args.rows, serving_check)
            result["serving_check"] = serving_check
            results.append(result)
            per_task = ", ".join(
                f"{t.rsplit('.', 1)[-1]} {v['median_s']:.2f}s" for t, v in result["tasks"].items()
            )
            report(
                f"Segments: {n} model(s), {args.rows} rows each, serving check "
                f"{'on' if serving_check else 'off'}",
                [
                    ("run", f"{result['state']} (promote ok: {result['promote_success']}/{n})"),
                    ("wall", f"{result['seconds']:.1f} s"),
                    ("per model", f"{result['per_model_s']:.2f} s"),
                    ("per-task medians", per_task),
                    ("peak RSS", f"{result['peak_rss_mb']:.0f} MB (this process, cumulative)"),
                    ("children peak RSS", f"{result['children_peak_rss_mb']:.0f} MB"),
                    (
                        "largest XCom",
                        f"{result['largest_xcom']['bytes']} B "
                        f"({result['largest_xcom'].get('task_id')})",
                    ),
                ],
            )
    goal_rows = []
    for r in results:
        if r["segments"] < 2:
            continue
        projected = r["per_model_s"] * 100
        goal_rows.append(
            (
                f"{r['segments']} models, serving check {'on' if r['serving_check'] else 'off'}",
                f"{r['seconds']:.0f} s; 100 models {'measured' if r['segments'] == 100 else 'projected'}: "
                f"{projected:.0f} s (goal <= {GOAL_100_S} s, ratio {projected / GOAL_100_S:.2f})",
            )
        )
    if goal_rows:
        report("Segments: goal (100 models trained, gated, promoted in <= 15 min)", goal_rows)
    print(json.dumps({"bench": "segments", "results": results}))


if __name__ == "__main__":
    main()
