"""Per-task time on real Celery workers, with and without ``--preload`` (run by hand).

Closes the gap ``bench_scheduler_overhead.py`` leaves: that one measures the LocalExecutor;
this one starts the production-shaped stack (``deploy/local-stack prod``: PostgreSQL, Redis,
Airflow's CeleryExecutor with two workers of concurrency 1, an MLflow server on PostgreSQL,
moto S3) once per mode:

- ``cold``: stock Celery workers; every task process imports its libraries itself;
- ``preload``: ``deploy/local-stack prod start --preload``, i.e. ``[celery]
  extra_celery_config`` = :func:`airflow_mlops.preload.celery_extra_config`: each worker
  imports the libraries once at start, and the task processes it forks inherit them.

Per mode it triggers the shipped ``ct__breast_cancer`` DAG ``--runs`` times through REST v2,
each run on a differently shuffled copy of the bundled data (new bytes, so change detection
lets the whole chain run: validate, train, evaluate, register, promote, predict, summary),
and reports each task's median ``end_date - start_date``. Not part of ``make bench``: it
installs PostgreSQL and Redis with apt-get when missing and takes ~10 minutes.

    .venv/bin/python bench/bench_celery_preload.py [--runs 3] [--modes cold,preload]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from _common import report

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy"))
from devkit import AirflowApi  # noqa: E402  (standard library only)

DAG_ID = "ct__breast_cancer"
DATA = REPO / "include" / "data" / "breast_cancer" / "reference.parquet"
BUCKET = "bench-data"
RUN_TIMEOUT_S = 600


def stack_cli(state_dir: Path, *args: str) -> str:
    command = [sys.executable, str(REPO / "deploy" / "local_stack.py"), "prod", *args]
    result = subprocess.run(
        [*command, "--state-dir", str(state_dir)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result.stdout


def shuffled_copies(s3_url: str, runs: int) -> list[str]:
    """``runs`` row-shuffled copies of the bundled data in the stack's S3 (distinct sha256)."""
    import boto3
    import pandas as pd

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id="local-stack",
        aws_secret_access_key="local-stack",
    )
    s3.create_bucket(Bucket=BUCKET)
    frame = pd.read_parquet(DATA)
    uris = []
    for number in range(runs):
        buffer = io.BytesIO()
        frame.sample(frac=1.0, random_state=number).to_parquet(buffer, index=False)
        key = f"breast_cancer/run{number}.parquet"
        s3.put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())
        uris.append(f"s3://{BUCKET}/{key}")
    return uris


def seconds(ti: dict[str, Any]) -> float | None:
    from datetime import datetime

    if not ti.get("start_date") or not ti.get("end_date"):
        return None
    start, end = (
        datetime.fromisoformat(ti[k].replace("Z", "+00:00")) for k in ("start_date", "end_date")
    )
    return (end - start).total_seconds()


def one_run(api: Any, path: str, train_uri: str) -> dict[str, Any]:
    run = api.call(
        "POST", f"{path}/dagRuns", {"logical_date": None, "conf": {"train_uri": train_uri}}
    )
    run_path = f"{path}/dagRuns/{urllib.parse.quote(run['dag_run_id'], safe='')}"
    started = time.monotonic()
    while run["state"] not in ("success", "failed"):
        if time.monotonic() - started > RUN_TIMEOUT_S:
            raise RuntimeError(f"{run['dag_run_id']} still {run['state']} after {RUN_TIMEOUT_S}s")
        time.sleep(3)
        run = api.call("GET", run_path)
    tis = api.call("GET", f"{run_path}/taskInstances")["task_instances"]
    return {
        "state": run["state"],
        "wall": seconds(run),
        "tasks": {ti["task_id"]: {"state": ti["state"], "seconds": seconds(ti)} for ti in tis},
    }


def measure(mode: str, runs: int) -> list[dict[str, Any]]:
    state_dir = REPO / "bench" / ".results" / f"celery-{mode}"
    stack_cli(state_dir, "stop", "--purge")
    start_args = ["start", "--auto-ports", *(["--preload"] if mode == "preload" else [])]
    started = time.monotonic()
    stack_cli(state_dir, *start_args)
    print(f"[{mode}] stack up in {time.monotonic() - started:.0f} s", flush=True)
    try:
        env = json.loads(stack_cli(state_dir, "env").strip().splitlines()[-1])
        api = AirflowApi(env["airflow_url"], env["admin_user"], env["admin_password"])
        path = f"/api/v2/dags/{urllib.parse.quote(DAG_ID)}"
        api.wait_for_dag(DAG_ID)
        api.call("PATCH", path, {"is_paused": False})
        results = []
        for train_uri in shuffled_copies(env["s3_url"], runs):
            result = one_run(api, path, train_uri)
            print(
                f"[{mode}] run {len(results) + 1}: {result['state']} in {result['wall']:.1f} s",
                flush=True,
            )
            if result["state"] != "success":
                raise RuntimeError(f"[{mode}] DAG run failed: {result['tasks']}")
            results.append(result)
        return results
    finally:
        stack_cli(state_dir, "stop", "--purge")


def task_medians(results: list[dict[str, Any]]) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for result in results:
        for task_id, ti in result["tasks"].items():
            if ti["state"] == "success" and ti["seconds"] is not None:
                values.setdefault(task_id, []).append(ti["seconds"])
    return {task_id: statistics.median(v) for task_id, v in values.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default="cold,preload")
    args = parser.parse_args()
    modes = args.modes.split(",")
    per_mode = {mode: measure(mode, args.runs) for mode in modes}
    medians = {mode: task_medians(results) for mode, results in per_mode.items()}
    walls = {
        mode: statistics.median(r["wall"] for r in results) for mode, results in per_mode.items()
    }
    tasks = sorted(set().union(*(m.keys() for m in medians.values())))
    rows = []
    for task_id in tasks:
        figures = [f"{mode} {medians[mode].get(task_id, float('nan')):6.2f} s" for mode in modes]
        if {"cold", "preload"} <= set(modes) and task_id in medians["cold"]:
            figures.append(
                f"preload/cold {medians['preload'][task_id] / medians['cold'][task_id]:.2f}"
            )
        rows.append((task_id, "   ".join(figures)))
    total = {mode: sum(medians[mode].values()) for mode in modes}
    rows.append(("sum of task medians", "   ".join(f"{m} {total[m]:6.2f} s" for m in modes)))
    rows.append(("DAG run wall (median)", "   ".join(f"{m} {walls[m]:6.1f} s" for m in modes)))
    report(f"Celery workers, {args.runs} runs of {DAG_ID} per mode (median task seconds)", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
