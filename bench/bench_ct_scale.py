"""Benchmark: a CT training run at scale through ``core.training.train_model`` vs a plain script.

Data: ``--rows`` rows x ``--columns`` columns (an ``id``, float features and a binary
``target``) in ``--partitions`` daily Hive partitions (``dt=YYYY-MM-DD/part-0.parquet``),
written once, deterministically, into a cache folder (``bench/results/ct_scale_cache/``).
Both sides read the last 30 days (every partition), split 80/20 by the hash of ``id``
(``core.stable_split``), fit the same cheap estimator (``SGDClassifier``, a fixed number of
epochs, so the data path dominates), score the holdout and log params, metrics and the model
(signature, input example, pinned requirements) to the same local MLflow store (sqlite
tracking DB, local artifacts).

- **mlops**: ``train_model`` with a local fsspec filesystem: listing, window, manifest
  (sha256 of every file), ``pyarrow.dataset`` read with each row's source file, checks,
  hash split, fit, holdout and drift-reference parquet writes, lineage tags.
- **plain**: ``pyarrow.dataset`` read with a partition filter, the same hash split, fit,
  predict, metrics, ``mlflow.sklearn.log_model``.

Each side runs in its own fresh interpreter (imports done before the clock starts), which
reports its wall time and peak RSS (``ru_maxrss``, imports included); sides alternate over
``--repeats``. Goals: time <= 1.15x, peak RSS <= 1.2x the plain script's.

    .venv/bin/python bench/bench_ct_scale.py                      # 5M x 40, 30 partitions
    .venv/bin/python bench/bench_ct_scale.py --rows 500000        # the make-bench size
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from _common import pinned_requirements, run_json

HERE = Path(__file__).resolve().parent
CACHE = HERE / "results" / "ct_scale_cache"
SEED = 42
FIRST_DAY = date(2026, 11, 1)
WINDOW = {"last": "30d"}
SGD_PARAMS = {"loss": "log_loss", "max_iter": 5, "tol": None, "random_state": SEED}
HOLDOUT_FRACTION = 0.2
SGD_REQUIREMENTS = ("mlflow", "scikit-learn", "numpy", "cloudpickle")


# -- data ---------------------------------------------------------------------------------
def dataset_dir(rows: int, columns: int, partitions: int) -> Path:
    return CACHE / f"{rows}x{columns}x{partitions}"


def make_dataset(rows: int, columns: int, partitions: int) -> Path:
    """Write the partitions once (deterministic: one seeded generator per partition)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = dataset_dir(rows, columns, partitions)
    if (root / "_COMPLETE").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    n_features = columns - 2  # id and target
    weights = np.random.default_rng(SEED).normal(size=n_features)
    bounds = np.linspace(0, rows, partitions + 1).astype(int)
    for day in range(partitions):
        rng = np.random.default_rng([SEED, day])
        n = int(bounds[day + 1] - bounds[day])
        features = rng.normal(size=(n, n_features))
        logits = features @ weights / np.sqrt(n_features) + rng.normal(scale=0.5, size=n)
        arrays = {"id": pa.array(np.arange(bounds[day], bounds[day + 1], dtype=np.int64))}
        arrays.update({f"f{i:02d}": pa.array(features[:, i]) for i in range(n_features)})
        arrays["target"] = pa.array((logits > 0).astype(np.int64))
        folder = root / f"dt={FIRST_DAY + timedelta(days=day)}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(arrays), folder / "part-0.parquet")
    (root / "_COMPLETE").write_text("")  # a writer's side file: skipped by both readers
    return root


# -- the two sides (each in a fresh interpreter) -------------------------------------------
def run_mlops(data: Path, tracking_uri: str, work: Path, tag: str) -> None:
    import mlflow
    from fsspec.implementations.local import LocalFileSystem
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.storage import Storage
    from airflow_mlops.core.training import RunContext, train_model
    from airflow_mlops.core.training_job import TrainingJob

    config = TrainingJob(
        train_uri=str(data),
        window=WINDOW,
        key=["id"],
        exclude=["id"],
        target="target",
        task="classification",
        experiment_name=f"mlops-{tag}",
        estimator="sklearn.linear_model.SGDClassifier",
        params=SGD_PARAMS,
        preprocessing="none",
        holdout_fraction=HOLDOUT_FRACTION,
        seed=SEED,
        artifacts_uri=str(work / f"artifacts-{tag}"),
    )
    context = RunContext(dag_id="bench", run_id=tag, task_id="train")
    mlflow.set_tracking_uri(tracking_uri)  # log_model uses the process-wide URI
    client = MlflowClient(tracking_uri)
    result = train_model(config, context, Storage(), client, filesystem=LocalFileSystem())
    assert result.metrics["roc_auc"] > 0.6, result.metrics


def run_plain(data: Path, tracking_uri: str, work: Path, tag: str) -> None:
    """What a competent engineer writes by hand: same read, split, fit and logging."""
    import mlflow
    import numpy as np
    import pyarrow.dataset as pads
    from mlflow.models import infer_signature
    from sklearn import metrics as skm
    from sklearn.linear_model import SGDClassifier

    from airflow_mlops.core.stable_split import holdout_mask_for_keys, row_keys

    dataset = pads.dataset(str(data), format="parquet", partitioning="hive")
    # The last 30 days, counted back from the newest partition (its folder name).
    present = sorted({p.split("dt=")[1].split("/")[0] for p in dataset.files})
    start = str(date.fromisoformat(present[-1]) - timedelta(days=30))
    table = dataset.to_table(filter=pads.field("dt") > start)
    frame = table.to_pandas(self_destruct=True, split_blocks=True)
    del table
    mask = holdout_mask_for_keys(row_keys(frame, ["id"]), HOLDOUT_FRACTION, SEED)
    features = [c for c in frame.columns if c not in {"id", "target", "dt"}]
    X_train, y_train = frame.loc[~mask, features], frame.loc[~mask, "target"]
    X_test, y_test = frame.loc[mask, features], frame.loc[mask, "target"]
    del frame
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(f"plain-{tag}")
    with mlflow.start_run():
        model = SGDClassifier(**SGD_PARAMS).fit(X_train, y_train)
        proba = model.predict_proba(X_test)
        pred = model.classes_[proba.argmax(axis=1)]
        metrics = {
            "accuracy": skm.accuracy_score(y_test, pred),
            "precision": skm.precision_score(y_test, pred),
            "recall": skm.recall_score(y_test, pred),
            "f1": skm.f1_score(y_test, pred),
            "roc_auc": skm.roc_auc_score(y_test, proba[:, 1]),
            "log_loss": skm.log_loss(y_test, np.clip(proba, 1e-15, 1)),
        }
        mlflow.log_params(model.get_params())
        example = X_train.head(5)
        mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, model.predict(example)),
            input_example=example,
            pip_requirements=pinned_requirements(SGD_REQUIREMENTS),
            serialization_format="cloudpickle",
        )
        mlflow.log_metrics(metrics)
    assert metrics["roc_auc"] > 0.6, metrics


def side_main(side: str, data: Path, tracking_uri: str, work: Path, tag: str) -> None:
    """One measured run, in this fresh interpreter; prints one JSON line."""
    import resource

    # Imports first, so neither side's clock includes them (peak RSS does, on both sides).
    import mlflow  # noqa: F401
    import pyarrow.dataset  # noqa: F401
    import sklearn.linear_model  # noqa: F401

    import airflow_mlops.core.training  # noqa: F401

    started, cpu = time.perf_counter(), time.process_time()
    (run_mlops if side == "mlops" else run_plain)(data, tracking_uri, work, tag)
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"side": side, "wall_s": elapsed, "cpu_s": used, "peak_rss_mb": peak}))


# -- driver -------------------------------------------------------------------------------
def measure(side: str, data: Path, tracking_uri: str, work: Path, tag: str) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, __file__, "--side", side, "--data", str(data)]
    command += ["--tracking", tracking_uri, "--work", str(work), "--tag", tag]
    return run_json(command, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--columns", type=int, default=40)
    parser.add_argument("--partitions", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--side", choices=["mlops", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tracking", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side_main(args.side, args.data, args.tracking, args.work, args.tag)
        return

    started = time.perf_counter()
    data = make_dataset(args.rows, args.columns, args.partitions)
    size = sum(p.stat().st_size for p in data.rglob("*.parquet"))
    print(
        f"data: {args.rows:,} rows x {args.columns} columns in {args.partitions} daily "
        f"partitions, {size / 1e6:.0f} MB parquet ({time.perf_counter() - started:.1f} s, "
        f"cache {data})"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-ct-scale-"))
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    try:
        # Create the tracking DB once (its migration is neither side's cost).
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri).search_experiments()
        runs: dict[str, list[dict]] = {"plain": [], "mlops": []}
        for repeat in range(args.repeats):
            order = ("plain", "mlops") if repeat % 2 == 0 else ("mlops", "plain")
            for side in order:
                load = os.getloadavg()[0]
                figures = measure(side, data, tracking_uri, work, f"{side}-{repeat}")
                runs[side].append(figures)
                print(
                    f"[{repeat}] {side:5s} wall {figures['wall_s']:7.2f} s  cpu "
                    f"{figures['cpu_s']:7.2f} s  peak RSS {figures['peak_rss_mb']:7.0f} MB  "
                    f"(load before {load:.2f})"
                )
        wall = {s: statistics.median(r["wall_s"] for r in runs[s]) for s in runs}
        cpu = {s: statistics.median(r["cpu_s"] for r in runs[s]) for s in runs}
        rss = {s: max(r["peak_rss_mb"] for r in runs[s]) for s in runs}
        load = os.getloadavg()
        print(f"\n== CT run at scale ({args.rows:,} rows x {args.columns} columns)")
        print(f"  partitions       {args.partitions} daily, window last 30d (all of them)")
        for side in ("plain", "mlops"):
            print(
                f"  {side:16s} wall {wall[side]:.2f} s, cpu {cpu[side]:.2f} s, "
                f"peak RSS {rss[side]:.0f} MB"
            )
        print(f"  time ratio       {wall['mlops'] / wall['plain']:.3f}  (goal <= 1.15)")
        print(f"  cpu ratio        {cpu['mlops'] / cpu['plain']:.3f}")
        print(f"  peak RSS ratio   {rss['mlops'] / rss['plain']:.3f}  (goal <= 1.2)")
        print(f"  load average     {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (after)")
        print(
            json.dumps(
                {
                    "bench": "ct_scale",
                    "rows": args.rows,
                    "columns": args.columns,
                    "partitions": args.partitions,
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "peak_rss_mb": rss,
                    "time_ratio": wall["mlops"] / wall["plain"],
                    "rss_ratio": rss["mlops"] / rss["plain"],
                    "load": load,
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
