"""Benchmark: TrainModelOperator vs a plain script doing the same XGBoost fit + MLflow logging.

Data: ``--rows`` (default 1,000,000) rows x 20 numeric feature columns (2 % missing) and a
binary target, written once as parquet. Both paths fit the same pipeline (median imputer +
``XGBClassifier(n_estimators=100, max_depth=6, tree_method="hist", n_jobs=2)``) on the same
stratified 80/20 split, score the holdout, and log params, metrics and the model (signature,
input example, explicit pip requirements) to a real ``mlflow server`` on 127.0.0.1.

The operator path runs through Airflow's real task runner (``dag.test()``), so it also pays
the task's Airflow bookkeeping, the data hash, the holdout and drift-reference writes and the
idempotency lookups. Paths alternate ``--repeats`` times. On a shared machine wall time
swings with other processes' load, so the script prints wall medians and minima and the
process CPU time (all threads), which measures the work done rather than the waiting.
MLflow API calls are counted at MLflow's REST layer (one count per HTTP request).

    .venv/bin/python bench/bench_training.py [--rows 1000000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

WORKDIR = Path(tempfile.mkdtemp(prefix="bench-training-"))
os.environ["AIRFLOW_HOME"] = str(WORKDIR / "airflow")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(WORKDIR / "dags"))
for _var in [v for v in os.environ if v.startswith(("MLFLOW_TRACKING", "AIRFLOW_CONN_"))]:
    del os.environ[_var]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))  # for _servers
from _common import pinned_requirements  # noqa: E402
from _servers import mlflow_server_for  # noqa: E402

N_FEATURES = 20
XGB_PARAMS = {"n_estimators": 100, "max_depth": 6, "tree_method": "hist", "n_jobs": 2}
SEED = 42


class CallCounter:
    """Counts MLflow REST requests by endpoint."""

    def __init__(self) -> None:
        from mlflow.utils import rest_utils

        self.calls: Counter[str] = Counter()
        self._module = rest_utils
        self._real = rest_utils.http_request

        def counting(host_creds, endpoint, method, *args, **kwargs):
            self.calls[endpoint.split("/api/")[-1]] += 1
            return self._real(host_creds, endpoint, method, *args, **kwargs)

        rest_utils.http_request = counting
        # Artifact uploads/downloads go through the same function, imported by name.
        from mlflow.store.artifact import http_artifact_repo

        http_artifact_repo.http_request = counting

    def take(self) -> Counter[str]:
        taken, self.calls = self.calls, Counter()
        return taken


def make_data(rows: int, path: Path) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(SEED)
    features = rng.normal(size=(rows, N_FEATURES))
    weights = rng.normal(size=N_FEATURES)
    logits = features @ weights / np.sqrt(N_FEATURES) + rng.normal(scale=0.5, size=rows)
    frame = pd.DataFrame(features, columns=[f"f{i:02d}" for i in range(N_FEATURES)])
    mask = rng.random(frame.shape) < 0.02
    frame = frame.mask(mask)
    frame["target"] = (logits > 0).astype(int)
    frame.to_parquet(path, index=False)


def plain_script(data_path: Path, tracking_uri: str, experiment: str) -> dict:
    """What a competent engineer writes by hand: same fit, same logging, no extras."""
    import math

    import mlflow
    import pandas as pd
    import xgboost
    from mlflow.models import infer_signature
    from sklearn import metrics as skm
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    frame = pd.read_parquet(data_path)
    X, y = frame.drop(columns=["target"]), frame["target"]
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.2, random_state=SEED, stratify=y
    )
    pipeline = Pipeline(
        [
            (
                "preprocess",
                ColumnTransformer([("numeric", SimpleImputer(strategy="median"), list(X.columns))]),
            ),
            ("model", xgboost.XGBClassifier(**XGB_PARAMS)),
        ]
    )
    with mlflow.start_run():
        pipeline.fit(X_train, y_train)
        proba = pipeline.predict_proba(X_test)
        pred = proba.argmax(axis=1)
        metrics = {
            "accuracy": skm.accuracy_score(y_test, pred),
            "precision": skm.precision_score(y_test, pred),
            "recall": skm.recall_score(y_test, pred),
            "f1": skm.f1_score(y_test, pred),
            "roc_auc": skm.roc_auc_score(y_test, proba[:, 1]),
            "log_loss": skm.log_loss(y_test, proba),
        }
        mlflow.log_params(pipeline.named_steps["model"].get_params())
        example = X_train.head(5)
        requirements = pinned_requirements()
        mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(example, pipeline.predict(example)),
            input_example=example,
            pip_requirements=requirements,
            serialization_format="cloudpickle",
        )
        mlflow.log_metrics(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    return metrics


DAG_FILE = """
import json, os, time
from airflow.sdk import DAG
from airflow_mlops.operators.training import TrainModelOperator


class TimedTrainModelOperator(TrainModelOperator):
    # Records how long execute() itself took, apart from dag.test()'s own bookkeeping.
    def execute(self, context):
        started, cpu = time.perf_counter(), time.process_time()
        result = super().execute(context)
        with open(os.environ["BENCH_EXECUTE_TIMES"], "a") as handle:
            handle.write(f"{time.perf_counter() - started},{time.process_time() - cpu}\\n")
        return result


with DAG("bench_training", schedule=None) as dag:
    TimedTrainModelOperator(
        task_id="train",
        train_uri=os.environ["BENCH_TRAIN_URI"],
        target="target",
        experiment_name="{{ dag_run.conf['experiment'] }}",
        estimator="xgboost.XGBClassifier",
        estimator_params=json.loads(os.environ["BENCH_XGB_PARAMS"]),
        artifacts_uri="{{ dag_run.conf['artifacts'] }}",
    )
"""


def load_bench_dag(data_path: Path):
    """Write the DAG file into the DAGs folder (dag.test() re-parses it) and import it."""
    import importlib.util

    dags = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dags.mkdir(parents=True, exist_ok=True)
    (dags / "bench_training_dag.py").write_text(DAG_FILE)
    os.environ["BENCH_TRAIN_URI"] = str(data_path)
    os.environ["BENCH_XGB_PARAMS"] = json.dumps(XGB_PARAMS)
    os.environ["BENCH_EXECUTE_TIMES"] = str(WORKDIR / "execute_times.txt")
    spec = importlib.util.spec_from_file_location(
        "bench_training_dag", dags / "bench_training_dag.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def plain_metrics(tracking_uri: str, experiment: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run.data.metrics


def operator_run(dag, experiment: str) -> None:
    dag_run = dag.test(
        run_conf={"experiment": experiment, "artifacts": str(WORKDIR / "artifacts" / experiment)}
    )
    if dag_run.state != "success":
        raise RuntimeError(f"operator DAG run ended {dag_run.state}")


def operator_metrics(tracking_uri: str, experiment: str) -> dict:
    """Read back the operator's holdout metrics (outside the timed and counted section)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id],
        filter_string="tags.`mlops.stage` = 'training'",
    )
    return {k.removeprefix("holdout_"): v for k, v in run.data.metrics.items()}


def timed(
    name: str, dag, data_path: Path, tracking_uri: str, experiment: str
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    started, cpu = time.perf_counter(), time.process_time()
    if name == "plain":
        plain_script(data_path, tracking_uri, experiment)
    else:
        operator_run(dag, experiment)
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    server = mlflow_server_for(WORKDIR / "mlflow").start()
    try:
        from airflow.utils.db import initdb

        initdb()
        data_path = WORKDIR / "train.parquet"
        started = time.perf_counter()
        make_data(args.rows, data_path)
        print(
            f"data: {args.rows:,} rows x {N_FEATURES} features, "
            f"{data_path.stat().st_size / 1e6:.0f} MB parquet, made in {time.perf_counter() - started:.1f} s"
        )
        server.wait_ready()
        os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps(
            {"conn_type": "mlflow", "host": server.url}
        )
        # Import everything once so neither path pays first-import costs.
        import mlflow  # noqa: F401
        import xgboost  # noqa: F401

        import airflow_mlops.core.training  # noqa: F401

        dag = load_bench_dag(data_path)

        # Warm-up on a small file: first-call costs (lazy imports, first model save, Airflow
        # DB sessions) are paid once here, by neither timed path.
        warm_path = WORKDIR / "warmup.parquet"
        make_data(5_000, warm_path)
        dag = load_bench_dag(warm_path)
        for name in ("plain", "operator"):
            timed(name, dag, warm_path, server.url, f"warmup-{name}")
        dag = load_bench_dag(data_path)

        counter = CallCounter()
        wall: dict[str, list[float]] = {"plain": [], "operator": [], "execute": []}
        cpu: dict[str, list[float]] = {"plain": [], "operator": [], "execute": []}
        calls: dict[str, Counter[str]] = {}
        for repeat in range(args.repeats):
            # Alternate which path goes first, so neither always gets the warmer caches.
            order = ("plain", "operator") if repeat % 2 == 0 else ("operator", "plain")
            for name in order:
                experiment = f"bench-{name}-{repeat}"
                counter.take()
                elapsed, used = timed(name, dag, data_path, server.url, experiment)
                calls[name] = counter.take()
                wall[name].append(elapsed)
                cpu[name].append(used)
                if name == "operator":
                    roc_auc = operator_metrics(server.url, experiment)["roc_auc"]
                else:
                    roc_auc = plain_metrics(server.url, experiment)["roc_auc"]
                print(
                    f"[{repeat}] {name:8s} wall {elapsed:7.2f} s  cpu {used:7.2f} s  "
                    f"load {os.getloadavg()[0]:4.1f}  roc_auc={roc_auc:.4f}  "
                    f"mlflow calls={sum(calls[name].values())}"
                )

        lines = Path(os.environ["BENCH_EXECUTE_TIMES"]).read_text().split()[-args.repeats :]
        for line in lines:
            w, c = (float(v) for v in line.split(","))
            wall["execute"].append(w)
            cpu["execute"].append(c)
        print()
        labels = {
            "plain": "plain script",
            "operator": "operator, dag.test() end to end",
            "execute": "operator, execute() only",
        }
        for key, label in labels.items():
            print(
                f"{label:32s}: wall median {statistics.median(wall[key]):7.2f} s, "
                f"min {min(wall[key]):7.2f} s  | cpu median {statistics.median(cpu[key]):7.2f} s"
                f"  (wall runs: {', '.join(f'{t:.2f}' for t in wall[key])})"
            )
        for key in ("execute", "operator"):
            print(
                f"ratio {labels[key]} / plain: wall median "
                f"{statistics.median(wall[key]) / statistics.median(wall['plain']):.3f}, "
                f"wall min {min(wall[key]) / min(wall['plain']):.3f}, "
                f"cpu median {statistics.median(cpu[key]) / statistics.median(cpu['plain']):.3f}"
                "  (goal <= 1.15)"
            )
        for name in ("plain", "operator"):
            detail = ", ".join(f"{k} x{v}" for k, v in sorted(calls[name].items()))
            print(f"MLflow API calls per run, {name}: {sum(calls[name].values())}  ({detail})")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
