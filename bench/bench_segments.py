"""Segments: N segment models trained, gated and promoted in one CT run, serving check on.

The factory's segmented CT DAG in **batched** mode (``segments.batch_size``, see
``core/segment_batch.py``): ``split_segments`` writes one manifest, ``segment_batch`` is
mapped over chunks of ``--batch-size`` segments and runs detect changes → train → evaluate →
register → promote (serving check on) for each segment of its chunk; ``summary`` reads the
chunks' results. ``--mode chain`` runs the per-segment mapped chain instead (one TaskGroup
map index per segment, at most 1,024 segments).

Each size is one ``dag.test()`` run against a real ``mlflow server``: tasks run in this
process, one after another, so imports are paid once (as in a worker that pre-imports them,
docs/performance.md). Each segment has ``--rows`` rows x 5 numeric features, a Ridge
regressor.

Printed per size: wall time, seconds per model, the projection to 1,000 models (split,
summary and the first segment's one-time set-up once, the rest per model), per-step medians
and totals from the segments' own records (``detect_changes``, ``train``, ``evaluate``,
``register``, ``promote`` and the serving check inside it), CPU seconds per model of this
process with its children and of the MLflow server (load-independent), peak RSS of this
process and of its children (the serving checker), the largest XCom value. ``--profile``
adds a cProfile of the run (cumulative seconds per model in MLflow's ``log_model``,
registration, the alias moves and lock, the serving check, evaluation) and the HTTP requests
to MLflow per model by endpoint. Goal: 1,000 models in <= 15 min on 2 cores.

    .venv/bin/python bench/bench_segments.py --segments 1000            # the goal figure
    .venv/bin/python bench/bench_segments.py --segments 50,100 --workers 1,2 --profile

``--workers`` is ``segments.workers`` (segments of a chunk run at once in threads; default 2
here, 1 in a pipeline).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

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
GOAL_MODELS = 1000
GOAL_S = 15 * 60
STEPS = ("detect_changes", "train", "evaluate", "register", "promote", "serving_check")
# cProfile: where per-model time goes (function name -> label); cumulative, so nested.
PROFILED = {
    "log_fitted_model": "train: log_model (MLflow sklearn flavour)",
    "train_model": "train (whole)",
    "evaluate_challenger": "evaluate: score both models",
    "register_version": "register: create version + wait READY",
    "set_challenger": "register: @challenger move (lock)",
    "promote_to_champion": "promote: @champion compare-and-set (lock)",
    "serving_check_of_version": "promote: serving check (load in clean process)",
    "_record_last_ct": "last CT tag",
    "request": "HTTP requests to MLflow (requests.Session.request)",
}


def make_data(segments: int, rows: int, path: Path) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    n = segments * rows
    features = [f"x{i}" for i in range(N_FEATURES)]
    frame = pd.DataFrame(rng.normal(size=(n, N_FEATURES)), columns=features)
    frame["seg"] = [f"s{i:04d}" for i in np.repeat(np.arange(segments), rows)]
    frame["y"] = frame[features].to_numpy() @ rng.normal(size=N_FEATURES) + rng.normal(
        scale=0.3, size=n
    )
    frame.to_parquet(path)


def build_dag(
    segments: int, data_uri: str, mode: str, batch_size: int | None, workers: int, serving: bool
):
    from airflow_mlops.factories import continuous_training_dag
    from airflow_mlops.factories.config import parse_config

    seg = {"column": "seg", "values": [f"s{i:04d}" for i in range(segments)]}
    if mode == "batched":
        seg.update(batch_size=batch_size or 25, workers=workers)
    name = f"bench_seg_{mode}_{segments}_w{workers}"
    raw = {
        "name": name,
        "data": {"train_uri": data_uri, "target": "y", "exclude": ["seg"]},
        "validation": {"enabled": False},
        "training": {"estimator": "sklearn.linear_model.Ridge", "task": "regression"},
        "promotion": {"serving_check": serving},
        "segments": seg,
        "monitoring": {"enabled": False},
        "retries": 0,
    }
    return continuous_training_dag(parse_config(raw, source=name, base_dir=str(WORKDIR)))


def segment_records(dag_id: str, run_id: str) -> list[dict]:
    """Every segment's record, from the results files the chunk tasks wrote."""
    from conftest import stored_xcom

    class _Run:  # what stored_xcom reads of a DagRun
        pass

    run = _Run()
    run.dag_id, run.run_id = dag_id, run_id
    records = []
    for index in range(1024):
        chunk = stored_xcom(run, "segment_batch", "return_value", index)
        if chunk is None:
            break
        records.extend(json.loads(Path(chunk["results_uri"]).read_text()))
    return records


def step_stats(records: list[dict]) -> dict[str, dict[str, float]]:
    stats = {}
    for step in STEPS:
        values = [r["seconds"][step] for r in records if step in r.get("seconds", {})]
        if values:
            stats[step] = {"median_s": statistics.median(values), "total_s": sum(values)}
    return stats


def profiled(stats) -> dict[str, float]:
    """Cumulative seconds of the PROFILED functions (summed over same-named functions)."""
    totals: dict[str, float] = {}
    for (filename, _, name), row in stats.stats.items():
        label = PROFILED.get(name)
        if label is None or (name == "request" and "requests" not in filename):
            continue
        totals[label] = totals.get(label, 0.0) + row[3]  # cumulative time
    return totals


# Requests by the provider function that sent them ("<request> <- module.function"), for
# --profile: which step to make cheaper.
CALLERS: dict[str, int] = {}


def _provider_caller() -> str:
    """The innermost airflow_mlops frame of the current stack (``module.function``)."""
    import sys
    import threading

    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        # core.mlflow_client wraps every client call: the caller of the wrapper counts.
        if module.startswith("airflow_mlops.") and module != "airflow_mlops.core.mlflow_client":
            return f"{module.removeprefix('airflow_mlops.')}.{frame.f_code.co_name}"
        frame = frame.f_back
    return f"? (thread {threading.current_thread().name.split('_')[0]})"


def count_requests() -> dict[str, int]:
    """Count the HTTP requests this process sends, by method and API path (ids dropped)."""
    import re
    from urllib.parse import urlparse

    import requests

    counts: dict[str, int] = {}
    original = requests.Session.request

    def request(self, method, url, *args, **kwargs):
        path = urlparse(str(url)).path
        if "mlflow-artifacts" in path:
            path = "/".join(path.split("/")[:5]) + "/..."
        key = f"{method} {re.sub(r'/[0-9a-f]{32}', '/<id>', path)}"
        counts[key] = counts.get(key, 0) + 1
        caller = f"{key} <- {_provider_caller()}"
        CALLERS[caller] = CALLERS.get(caller, 0) + 1
        return original(self, method, url, *args, **kwargs)

    requests.Session.request = request
    return counts


# Experiment for a proposed change to core/serving.py (not applied there): the checker
# imports what the first model load imports (MLflow's sklearn flavour and the sklearn
# modules the provider's pipelines use) before it forks, so no child pays them.
WARM_IMPORTS = (
    "sklearn",
    "xgboost",
    "mlflow.sklearn",
    "sklearn.pipeline",
    "sklearn.compose",
    "sklearn.impute",
    "sklearn.preprocessing",
    "sklearn.linear_model",
    "sklearn.ensemble",
)


# ... and loads one tiny model once, so the lazy imports of the first load are paid before
# the first fork too.
WARM_LOAD = """
import tempfile as _tmp, numpy as _np, mlflow.sklearn as _msk
from sklearn.linear_model import Ridge as _Ridge
with _tmp.TemporaryDirectory() as _d:
    _msk.save_model(_Ridge().fit(_np.ones((2, 1)), [0.0, 1.0]), _d + "/m",
                    serialization_format="cloudpickle")
    mlflow.pyfunc.load_model(_d + "/m")
"""


def warm_checker() -> None:
    from airflow_mlops.core import serving

    old = 'for _name in ("sklearn", "xgboost"):'
    ready = "channel.write('{\"ready\": true}\\n')"
    if old not in serving._CHECKER_CODE or ready not in serving._CHECKER_CODE:
        raise SystemExit("--warm-checker: core/serving.py changed; update the experiment")
    code = serving._CHECKER_CODE.replace(old, f"for _name in {WARM_IMPORTS!r}:")
    serving._CHECKER_CODE = code.replace(ready, WARM_LOAD + ready)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their live children (the serving
    checker and its forks, the MLflow server's workers): load-independent, unlike wall time."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
        except psutil.NoSuchProcess:
            continue
    return total


def run_size(
    segments: int,
    rows: int,
    mode: str,
    batch_size: int | None,
    workers: int,
    profile: bool,
    server_pid: int,
    serving: bool = True,
) -> dict:
    data = WORKDIR / f"seg_{mode}_{segments}_w{workers}.parquet"
    make_data(segments, rows, data)
    dag = build_dag(segments, str(data), mode, batch_size, workers, serving)
    profiler = None
    requests_made = count_requests() if profile else {}
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    import os

    cpu_before = cpu_seconds([os.getpid()]), cpu_seconds([server_pid])
    dag_run, seconds = run_dag(dag)
    cpu_after = cpu_seconds([os.getpid()]), cpu_seconds([server_pid])
    if profiler is not None:
        import pstats

        profiler.disable()
        hotspots = profiled(pstats.Stats(profiler))
        dumped = Path(tempfile.gettempdir()) / f"bench_segments_{mode}_{segments}_w{workers}.prof"
        profiler.dump_stats(dumped)
        print(f"cProfile stats: {dumped} (python -m pstats)")
    rows_ = task_rows(dag.dag_id, dag_run.run_id)
    tasks = per_task_totals(rows_)
    sizes = xcom_sizes(dag.dag_id, dag_run.run_id)
    save_xcom_sizes(f"segments_{mode}_{segments}", sizes)
    largest = max(sizes, key=lambda s: s["bytes"]) if sizes else {"bytes": 0}
    records = segment_records(dag.dag_id, dag_run.run_id) if mode == "batched" else []
    once = sum(
        tasks.get(t, {}).get("total_s", 0.0) for t in ("split_segments", "summary")
    )  # paid once per run whatever the count
    # The first segment of the run pays the process's one-time set-up (MLflow's model
    # flavour imports, the serving checker's start): counted once, not per model.
    totals = [r["seconds"]["total"] for r in records if "total" in r.get("seconds", {})]
    warmup = max(totals[0] - statistics.median(totals), 0.0) if len(totals) > 1 else 0.0
    once += warmup
    per_model = (seconds - once) / segments
    result = {
        "segments": segments,
        "mode": mode,
        "batch_size": batch_size if mode == "batched" else None,
        "workers": workers if mode == "batched" else 1,
        "serving_check": serving,
        "state": str(dag_run.state),
        "promoted": sum(1 for r in records if r.get("promoted"))
        if mode == "batched"
        else sum(1 for r in rows_ if r["task_id"].endswith("promote") and r["state"] == "success"),
        "failed": sum(1 for r in records if r.get("failed")),
        "seconds": seconds,
        "once_s": once,
        "warmup_s": warmup,
        "per_model_s": per_model,
        "projected_1000_s": once + per_model * GOAL_MODELS,
        "cpu_task_s": cpu_after[0] - cpu_before[0],
        "cpu_mlflow_s": cpu_after[1] - cpu_before[1],
        "tasks": tasks,
        "steps": step_stats(records),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "largest_xcom": largest,
    }
    if profiler is not None:
        result["profile_per_model_s"] = {k: v / segments for k, v in hotspots.items()}
        result["requests_per_model"] = {
            k: round(v / segments, 2)
            for k, v in sorted(requests_made.items(), key=lambda kv: -kv[1])
        }
        result["requests_by_caller_per_model"] = {
            k: round(v / segments, 2)
            for k, v in sorted(CALLERS.items(), key=lambda kv: -kv[1])
            if v >= segments / 2
        }
        CALLERS.clear()
    return result


def print_result(r: dict, rows: int) -> None:
    n = r["segments"]
    lines = [
        ("run", f"{r['state']} (promoted {r['promoted']}/{n}, failed {r['failed']})"),
        (
            "wall",
            f"{r['seconds']:.1f} s (once per run: {r['once_s']:.1f} s, of which the first "
            f"segment's set-up {r['warmup_s']:.1f} s)",
        ),
        ("per model", f"{r['per_model_s']:.3f} s"),
        (
            "CPU per model",
            f"{(r['cpu_task_s'] + r['cpu_mlflow_s']) / n:.3f} s (task process and its "
            f"children {r['cpu_task_s'] / n:.3f} s, MLflow server {r['cpu_mlflow_s'] / n:.3f} s;"
            " whole run, set-up included)",
        ),
        (
            "1,000 models",
            f"{'measured' if n == GOAL_MODELS else 'projected'} {r['projected_1000_s']:.0f} s "
            f"(goal <= {GOAL_S} s, ratio {r['projected_1000_s'] / GOAL_S:.2f})",
        ),
        (
            "tasks",
            ", ".join(
                f"{t} x{v['count']} median {v['median_s']:.1f}s" for t, v in r["tasks"].items()
            ),
        ),
        (
            "per-segment steps (median / total)",
            ", ".join(
                f"{s} {v['median_s']:.3f}s / {v['total_s']:.0f}s" for s, v in r["steps"].items()
            ),
        ),
        ("peak RSS", f"{r['peak_rss_mb']:.0f} MB (this process, cumulative)"),
        ("children peak RSS", f"{r['children_peak_rss_mb']:.0f} MB (serving checker)"),
        (
            "largest XCom",
            f"{r['largest_xcom']['bytes']} B ({r['largest_xcom'].get('task_id')}, "
            f"key {r['largest_xcom'].get('key')})",
        ),
    ]
    for label, value in sorted((r.get("profile_per_model_s") or {}).items()):
        lines.append((f"profile: {label}", f"{value:.3f} s/model"))
    requests_made = r.get("requests_per_model") or {}
    if requests_made:
        lines.append(("HTTP requests per model", f"{sum(requests_made.values()):.1f}"))
        lines += [(f"  {k}", f"{v}") for k, v in list(requests_made.items())[:25]]
        callers = r.get("requests_by_caller_per_model") or {}
        lines.append(("HTTP requests per model, by provider function", ""))
        lines += [(f"  {k}", f"{v}") for k, v in callers.items()]
    mode = f"{r['mode']}" + (
        f", chunks of {r['batch_size']}, {r['workers']} worker(s)" if r["batch_size"] else ""
    )
    warm = ", warm checker (experiment)" if r.get("warm_checker") else ""
    serving = "on" if r["serving_check"] else "off"
    report(f"Segments: {n} models ({mode}), {rows} rows each, serving check {serving}{warm}", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--segments", "--sizes", default="100", help="comma-separated sizes, e.g. 50,1000"
    )
    parser.add_argument(
        "--serving-check-max",
        type=int,
        default=None,
        help="run the serving check only for sizes up to this (default: all; run_all.py's "
        "smoke run)",
    )
    parser.add_argument("--rows", type=int, default=200, help="rows per segment")
    parser.add_argument("--mode", choices=("batched", "chain"), default="batched")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument(
        "--workers", default="2", help="segments.workers: comma-separated values, e.g. 1,2"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the run")
    parser.add_argument(
        "--warm-checker",
        action="store_true",
        help="experiment: the serving checker pre-imports MLflow's sklearn flavour and "
        "sklearn's pipeline modules (a proposed core/serving.py change)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.segments.split(",")]
    if args.warm_checker:
        warm_checker()
    started = time.perf_counter()
    results = []
    with Environment() as env:
        print(f"mlflow server ready ({env.mlflow.url}) after {time.perf_counter() - started:.0f}s")
        for n in sizes:
            for workers in [int(w) for w in args.workers.split(",")]:
                result = run_size(
                    n,
                    args.rows,
                    args.mode,
                    args.batch_size,
                    workers,
                    args.profile,
                    env.mlflow.process.pid,
                    serving=args.serving_check_max is None or n <= args.serving_check_max,
                )
                result["warm_checker"] = args.warm_checker
                results.append(result)
                print_result(result, args.rows)
    print(json.dumps({"bench": "segments", "results": results}))


if __name__ == "__main__":
    main()
