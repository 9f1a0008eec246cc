"""Benchmark: what the challenger's explanations add to a train-plus-evaluate run.

Data: the CT-scale table of ``bench_ct_scale.py`` (``--rows`` x ``--columns``, an ``id``,
float features and a binary ``target`` in daily Hive partitions, cached under
``bench/results/ct_scale_cache/``). Each repeat runs in a fresh interpreter (imports done
before the clock starts):

1. **train**: ``core.training.train_model`` (window, manifest, hash split 80/20, fit,
   holdout written, model logged to a local SQLite MLflow store);
2. **evaluate**: ``core.evaluation.evaluate_challenger`` on the recorded holdout (first
   model: the whole holdout, ``--rows`` x 0.2 rows) with the default explanations
   (permutation importance on a seeded 2,000-row sample, 5 repeats; with ``--shap`` also
   the SHAP summary of a tree model on 200 of those rows, ``shap`` imported before the
   clock), timed as a whole;
3. **explain**: the seconds spent inside ``core.explanations.explain_model`` during step 2
   (its own clock, recorded in the explanations artifact).

Ratio = explain / (train + evaluate - explain): the cost added to a run without
explanations. Goal <= 0.20 at 1M rows. ``--estimator hgb`` uses a histogram gradient
boosting classifier instead of the default SGD (a tree model: with ``--shap`` the SHAP
summary applies).

    .venv/bin/python bench/bench_explanations.py --rows 100000          # development size
    .venv/bin/python bench/bench_explanations.py --rows 1000000 --repeats 3
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
from pathlib import Path

from _common import run_json
from bench_ct_scale import HOLDOUT_FRACTION, SEED, SGD_PARAMS, WINDOW, make_dataset

ESTIMATORS = {
    "sgd": ("sklearn.linear_model.SGDClassifier", SGD_PARAMS),
    "hgb": (
        "sklearn.ensemble.HistGradientBoostingClassifier",
        {"max_iter": 50, "random_state": SEED},
    ),
}


def side_main(
    data: Path, tracking_uri: str, work: Path, tag: str, estimator: str, shap: bool
) -> None:
    """Train, evaluate with explanations, in this fresh interpreter; prints one JSON line."""
    if shap:
        import shap as _shap  # noqa: F401  (an import, paid once per worker, not per model)
    import mlflow
    from fsspec.implementations.local import LocalFileSystem
    from mlflow.tracking import MlflowClient

    import airflow_mlops.core.evaluation as ev
    from airflow_mlops.core.provenance import ModelTrust
    from airflow_mlops.core.storage import Storage
    from airflow_mlops.core.training import RunContext, train_model
    from airflow_mlops.core.training_job import TrainingJob

    name, params = ESTIMATORS[estimator]
    config = TrainingJob(
        train_uri=str(data),
        window=WINDOW,
        key=["id"],
        exclude=["id"],
        target="target",
        task="classification",
        experiment_name=f"explain-{tag}",
        model_name=f"explain-{tag}",
        estimator=name,
        params=params,
        preprocessing="none",
        holdout_fraction=HOLDOUT_FRACTION,
        seed=SEED,
        artifacts_uri=str(work / f"artifacts-{tag}"),
    )
    mlflow.set_tracking_uri(tracking_uri)  # log_model and model loading use it
    client = MlflowClient(tracking_uri)
    started = time.perf_counter()
    result = train_model(
        config,
        RunContext(dag_id="bench", run_id=tag, task_id="train"),
        Storage(),
        client,
        filesystem=LocalFileSystem(),
    )
    trained = time.perf_counter()
    challenger = ev.challenger_from_training(client, result.to_dict())
    evaluation = ev.evaluate_challenger(
        client,
        Storage(),
        challenger,
        model_name=f"explain-{tag}",
        policy={"value_thresholds": {"accuracy": {"lower": 0.5}}},
        champion=None,
        trust=ModelTrust(trust_unsigned=True),  # the bench has no signing key configured
        explain={"shap": shap},
    )
    evaluated = time.perf_counter()
    explained = evaluation.artifacts["mlops/explanations.json"]
    if "error" in explained:
        raise RuntimeError(f"explanations failed: {explained['error']}")
    print(
        json.dumps(
            {
                "train_s": trained - started,
                "evaluate_s": evaluated - trained,
                "explain_s": explained["seconds"],
                "explain_rows": explained["rows"],
                "holdout_rows": evaluation.record["holdout"]["rows"],
                "features": len(explained["features"]),
                "top": evaluation.record["explanations"]["top_features"][:3],
                "shap": evaluation.record["explanations"]["shap"],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=40)
    parser.add_argument("--partitions", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--estimator", choices=sorted(ESTIMATORS), default="sgd")
    parser.add_argument(
        "--shap", action="store_true", help="evaluation.explain.shap: true (the explain extra)"
    )
    parser.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tracking", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side_main(args.data, args.tracking, args.work, args.tag, args.estimator, args.shap)
        return

    data = make_dataset(args.rows, args.columns, args.partitions)
    work = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri).search_experiments()  # migrate the DB outside the clock
        runs = []
        for repeat in range(args.repeats):
            command = [sys.executable, __file__, "--side", "--data", str(data)]
            command += ["--tracking", tracking_uri, "--work", str(work)]
            command += ["--tag", f"r{repeat}", "--estimator", args.estimator]
            command += ["--shap"] if args.shap else []
            figures = run_json(command, env)
            base = figures["train_s"] + figures["evaluate_s"] - figures["explain_s"]
            figures["ratio"] = figures["explain_s"] / base
            runs.append(figures)
            print(
                f"[{repeat}] train {figures['train_s']:6.2f} s  evaluate "
                f"{figures['evaluate_s']:6.2f} s  explain {figures['explain_s']:6.2f} s  "
                f"ratio {figures['ratio']:.3f}  (load {os.getloadavg()[0]:.2f})"
            )
        median = {
            key: statistics.median(r[key] for r in runs)
            for key in ("train_s", "evaluate_s", "explain_s", "ratio")
        }
        last = runs[-1]
        print(
            f"\n== Explanations at {args.rows:,} rows x {args.columns} columns ({args.estimator})"
        )
        print(
            f"  holdout {last['holdout_rows']:,} rows; explained on {last['explain_rows']:,} "
            f"rows x {last['features']} features"
        )
        print(
            f"  train {median['train_s']:.2f} s, evaluate {median['evaluate_s']:.2f} s, "
            f"explain {median['explain_s']:.2f} s (medians of {args.repeats})"
        )
        print(f"  added by explanations  {median['ratio']:.1%}  (goal <= 20%)")
        print(f"  top features {[f['feature'] for f in last['top']]}; SHAP: {last['shap']}")
        print(
            json.dumps(
                {
                    "bench": "explanations",
                    "rows": args.rows,
                    "columns": args.columns,
                    "estimator": args.estimator,
                    "runs": runs,
                    "median": median,
                    "load": os.getloadavg(),
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
