"""DAG parse time: 10 factory-built pipelines vs a hand-written DAG file with the same tasks.

Each variant is parsed in a fresh interpreter (as the DAG processor does, after its own
``import airflow.sdk``); the figure is the time to execute the DAG file. Median of N runs.
Goal: factory / hand-written <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from _common import ROOT, median, report, run_python

N_PIPELINES = 10

FACTORY_FILE = """
from airflow_mlops.factories import continuous_training_dag, monitoring_dag
from airflow_mlops.factories.config import parse_config
import yaml
base = yaml.safe_load(open({yaml!r}))
for i in range({n}):
    raw = dict(base, name=f"bench_{{i}}")
    config = parse_config(raw, source=f"bench_{{i}}", base_dir={base_dir!r})
    for dag in (continuous_training_dag(config), monitoring_dag(config)):
        globals()[dag.dag_id] = dag
"""

HAND_FILE = """
import datetime as dt
from airflow.sdk import DAG, BaseOperator, Asset, task
from airflow.providers.standard.operators.empty import EmptyOperator
for i in range({n}):
    with DAG(f"ct_hand_{{i}}", schedule=Asset(f"mlops://models/hand_{{i}}/retrain"),
             start_date=dt.datetime(2024, 1, 1), catchup=False) as ct:
        ids = {ct_ids!r}
        tasks = [EmptyOperator(task_id=t) for t in ids]
        for a, b in zip(tasks, tasks[1:]):
            a >> b
    with DAG(f"monitor_hand_{{i}}", schedule="@daily", start_date=dt.datetime(2024, 1, 1),
             catchup=False) as mon:
        EmptyOperator(task_id="drift")
    globals()[ct.dag_id] = ct
    globals()[mon.dag_id] = mon
"""

MEASURE = """
import json, runpy, time
import airflow.sdk  # the DAG processor has this loaded already
from airflow.providers.standard.operators.empty import EmptyOperator
start = time.perf_counter()
ns = runpy.run_path({path!r})
elapsed = time.perf_counter() - start
from airflow.sdk import DAG
dags = [v for v in ns.values() if isinstance(v, DAG)]
print(json.dumps({{"seconds": elapsed, "dags": len(dags), "tasks": sum(len(d.tasks) for d in dags)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-parse-"))
    try:
        yaml_path = ROOT / "include" / "pipelines" / "breast_cancer.yaml"
        factory = work / "factory_dags.py"
        factory.write_text(
            FACTORY_FILE.format(yaml=str(yaml_path), n=N_PIPELINES, base_dir=str(yaml_path.parent))
        )
        probe = run_python(MEASURE.format(path=str(factory)))
        ct_ids = [
            "detect_changes",
            "validate",
            "train",
            "evaluate",
            "register",
            "promote",
            "predict",
            "summary",
        ]
        hand = work / "hand_dags.py"
        hand.write_text(HAND_FILE.format(n=N_PIPELINES, ct_ids=ct_ids))
        results = {}
        for name, path in (("factory", factory), ("hand-written", hand)):
            runs = [run_python(MEASURE.format(path=str(path))) for _ in range(args.repeat)]
            results[name] = {
                "median_s": median([r["seconds"] for r in runs]),
                "dags": runs[0]["dags"],
                "tasks": runs[0]["tasks"],
            }
        ratio = results["factory"]["median_s"] / results["hand-written"]["median_s"]
        report(
            f"DAG parse: {N_PIPELINES} pipelines (median of {args.repeat} fresh interpreters)",
            [
                (
                    "factory",
                    f"{results['factory']['median_s'] * 1000:.0f} ms "
                    f"({results['factory']['dags']} DAGs, {results['factory']['tasks']} tasks)",
                ),
                (
                    "hand-written",
                    f"{results['hand-written']['median_s'] * 1000:.0f} ms "
                    f"({results['hand-written']['dags']} DAGs, {results['hand-written']['tasks']} tasks)",
                ),
                ("ratio", f"{ratio:.2f} (goal <= 1.2)"),
            ],
        )
        print(
            json.dumps({"bench": "parse", **results, "ratio": ratio, "probe_tasks": probe["tasks"]})
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
