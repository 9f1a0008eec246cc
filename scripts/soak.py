#!/usr/bin/env python3
"""Soak run: many consecutive continuous-training runs on the real local stack.

Starts ``deploy/local-stack quick`` (``airflow standalone``: scheduler, dag-processor,
triggerer and api-server with the LocalExecutor; an MLflow tracking server; moto S3) in its
own state directory, with a DAG folder holding one factory-built CT pipeline (validate,
train, evaluate, register, promote with the serving check, summary; training data in S3).
Then it triggers the CT DAG through Airflow's REST API v2, ``--runs`` times, one after the
other, waits for each run to end, and after each run samples the resident memory (RSS) of
every long-running process of the stack.

It fails (exit code 1) when any run does not succeed, when an MLflow run is left RUNNING,
when the registry does not hold exactly one new version per run, or when the memory of a
long-running component keeps growing: least-squares slope over the second half of the runs
above ``--max-growth-mb-per-run``.

Figures go to ``test-artifacts/soak/soak-<timestamp>.json`` and a Markdown table is printed
(quoted in ``docs/reliability.md``). The scheduler runs every task in its own process, so
this takes minutes per run on a small machine: 50 runs is an hour or more on 2 cores.

Usage::

    .venv/bin/python scripts/soak.py --runs 50
    .venv/bin/python scripts/soak.py --runs 5 --keep      # leave the stack running after

Not part of the test suite (nothing under ``tests/`` imports it).
"""

from __future__ import annotations

import argparse
import datetime as dt
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the shared small data set and suite
sys.path.insert(0, str(REPO / "deploy"))  # the local stack and its dev helpers
import local_stack  # noqa: E402
from devkit import AirflowApi  # noqa: E402

PIPELINE_NAME = "soak"
DAG_ID = f"ct__{PIPELINE_NAME}"
MODEL_NAME = "soak-model"
DATA_BUCKET = "mlops"
DATA_KEY = "soak/train.csv"
# Runs cycle through these training sets (seed, label noise): each run trains a model of a
# different quality, so some runs promote a new champion and others keep the old one.
DATA_VARIANTS = [(7, 0.0), (11, 0.6), (13, 0.2), (17, 1.0), (19, 0.4)]
S3_KEY = "local-stack"  # the stack's moto accepts these (see deploy/local_stack.py)
# Long-running components: the memory criterion applies to these only. Task processes come
# and go with every task and are reported separately.
COMPONENTS = {
    "scheduler": ("airflow scheduler",),
    "dag-processor": ("airflow dag-processor", "airflow dag_processor"),
    "triggerer": ("airflow triggerer",),
    "api-server": ("airflow api-server", "airflow api_server", "uvicorn airflow"),
    "standalone": ("airflow standalone",),
    "mlflow": ("mlflow server", "mlflow.server"),
    "s3": ("moto_server",),
}


# -- the pipeline under soak ----------------------------------------------------------------


def write_pipeline(dags_folder: Path, train_uri: str) -> None:
    """One pipeline YAML and its generated DAG stub, as ``airflow-mlops sync-dags`` writes."""
    import yaml
    from reliability._data import POLICY, SUITE

    from airflow_mlops.factories.loader import stub_text

    dags_folder.mkdir(parents=True, exist_ok=True)
    config = {
        "name": PIPELINE_NAME,
        "model_name": MODEL_NAME,
        "description": "Soak test pipeline (scripts/soak.py).",
        "data": {"train_uri": train_uri, "target": "label"},
        "validation": {"suite": SUITE, "on_failure": "fail"},
        "training": {
            "estimator": "sklearn.linear_model.LogisticRegression",
            "params": {"C": 1.0},
            "task": "classification",
        },
        # Absolute floor, and no worse than the champion on the challenger's holdout.
        "evaluation": {"policy": POLICY},
        "promotion": {"approval": "auto", "serving_check": True},
        "monitoring": {"enabled": False},
        "retries": 0,
    }
    (dags_folder / "soak.yaml").write_text(yaml.safe_dump(config))
    (dags_folder / f"mlops_pipeline__{PIPELINE_NAME}.py").write_text(stub_text("soak.yaml"))


def upload_data(s3_url: str) -> list[str]:
    """The training sets in the stack's S3; returns their URIs."""
    import boto3
    from reliability._data import clean_frame, csv_bytes

    client = boto3.client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_KEY,
    )
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if DATA_BUCKET not in existing:
        client.create_bucket(Bucket=DATA_BUCKET)
    client.put_object(Bucket=DATA_BUCKET, Key=DATA_KEY, Body=csv_bytes(clean_frame(400)))
    uris = []
    for seed, noise in DATA_VARIANTS:
        key = f"soak/train-{seed}-{noise}.csv"
        body = csv_bytes(clean_frame(400, seed=seed, noise=noise))
        client.put_object(Bucket=DATA_BUCKET, Key=key, Body=body)
        uris.append(f"s3://{DATA_BUCKET}/{key}")
    return uris


# -- Airflow REST API v2 --------------------------------------------------------------------


def run_once(api: Any, index: int, train_uri: str, timeout_seconds: float) -> dict[str, Any]:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns"
    started = time.monotonic()
    body = {"logical_date": None, "conf": {"train_uri": train_uri}, "note": f"soak run {index}"}
    run = api.call("POST", path, body)
    run_path = f"{path}/{urllib.parse.quote(run['dag_run_id'], safe='')}"
    while run["state"] not in ("success", "failed"):
        if time.monotonic() - started > timeout_seconds:
            break
        time.sleep(3)
        run = api.call("GET", run_path)
    record = {
        "index": index,
        "run_id": run["dag_run_id"],
        "train_uri": train_uri,
        "state": run["state"],
        "seconds": round(time.monotonic() - started, 1),
        "promotion": promotion_outcome(api, run_path),
    }
    if run["state"] != "success":
        tasks = api.call("GET", f"{run_path}/taskInstances")["task_instances"]
        record["tasks"] = {t["task_id"]: t["state"] for t in tasks}
    return record


def promotion_outcome(api: Any, run_path: str) -> str | None:
    """``outcome`` of the promote task's XCom (promoted, not_promoted, ...), if any."""
    try:
        entry = api.call("GET", f"{run_path}/taskInstances/promote/xcomEntries/return_value")
    except urllib.error.HTTPError:
        return None
    value = entry.get("value")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return value.get("outcome") if isinstance(value, dict) else None


# -- memory ---------------------------------------------------------------------------------


def _process_table() -> list[tuple[int, int, str, int]]:
    """(pid, process group, command line, RSS in kB) of every process we can read."""
    rows = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (proc / "status").read_text()
        except OSError:
            continue
        rss = next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
        )
        rows.append((int(proc.name), int(stat[2]), cmdline.strip(), rss))
    return rows


def classify(cmdline: str) -> str:
    component = next(
        (name for name, marks in COMPONENTS.items() if any(m in cmdline for m in marks)), None
    )
    if component is not None:
        return component
    # LocalExecutor worker processes (long-lived pool) and the task processes they supervise.
    return "executor workers and tasks" if "worker" in cmdline else "other"


def stack_processes(stack_pgids: set[int]) -> list[dict[str, Any]]:
    """Every process of *our* stack (by process group): pid, component, RSS, command line."""
    return [
        {"pid": pid, "component": classify(cmdline), "rss_mb": round(rss_kb / 1024, 1),
         "cmdline": cmdline[:160]}
        for pid, pgid, cmdline, rss_kb in _process_table()
        if pgid in stack_pgids
    ]  # fmt: skip


def sample_memory(stack_pgids: set[int]) -> dict[str, float]:
    """RSS (MB) per component of our stack."""
    totals: dict[str, float] = {name: 0.0 for name in COMPONENTS}
    totals["executor workers and tasks"] = 0.0
    totals["other"] = 0.0
    for process in stack_processes(stack_pgids):
        totals[process["component"]] += process["rss_mb"]
    return {k: round(v, 1) for k, v in totals.items()}


def slope(values: list[float]) -> float:
    """Least-squares slope (units per run)."""
    n = len(values)
    if n < 2:
        return 0.0
    xs = list(range(n))
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(values)
    denominator = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values, strict=True)) / denominator


def despike(values: list[float]) -> list[float]:
    """Rolling median of 3: a sample that caught a short-lived fork (the dag-processor parses
    each file in a child with the same command line) does not count as growth."""
    if len(values) < 3:
        return list(values)
    middle = [statistics.median(values[i - 1 : i + 2]) for i in range(1, len(values) - 1)]
    return [values[0], *middle, values[-1]]


def memory_figures(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    figures = {}
    for component in [*COMPONENTS, "executor workers and tasks", "other"]:
        series = [s[component] for s in samples]
        if not any(series):
            continue
        steady = despike(series)
        figures[component] = {
            "first_mb": series[0],
            "max_mb": max(series),
            "last_mb": series[-1],
            "growth_mb": round(steady[-1] - steady[0], 1),
            "second_half_slope_mb_per_run": round(slope(steady[len(steady) // 2 :]), 3),
        }
    return figures


# -- MLflow invariants ----------------------------------------------------------------------


def mlflow_invariants(mlflow_url: str, runs: int) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_url)
    experiment = client.get_experiment_by_name(f"mlops/{PIPELINE_NAME}")
    all_runs = (
        client.search_runs([experiment.experiment_id], max_results=5000) if experiment else []
    )
    statuses: dict[str, int] = {}
    for run in all_runs:
        statuses[run.info.status] = statuses.get(run.info.status, 0) + 1
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'", max_results=5000)
    keys = [v.tags.get("mlops.idempotency_key") for v in versions]
    champion = client.get_registered_model(MODEL_NAME).aliases.get("champion")
    champion_status = gate = None
    if champion:
        version = client.get_model_version(MODEL_NAME, champion)
        champion_status = str(version.status)
        gate = client.get_run(version.run_id).data.tags.get("mlops.decision.promote")
    from airflow_mlops.core.alias_history import alias_history

    moves = [e for e in alias_history(client, MODEL_NAME) if e.get("alias") == "champion"]
    return {
        "champion_moves_in_history": len(moves),
        "champion_passed_gate": gate == "true",
        "mlflow_run_statuses": statuses,
        "model_versions": len(versions),
        "duplicate_idempotency_keys": len(keys) - len(set(keys)),
        "champion": champion,
        "champion_status": champion_status,
        "expected_versions": runs,
    }


# -- main -----------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Soak: {report['runs_requested']} CT runs of `{DAG_ID}` on `deploy/local-stack quick` "
        f"({report['started_at']}, {report['machine']})",
        "",
        f"- runs: {report['succeeded']} succeeded, {report['failed']} failed; duration per run "
        f"median {report['run_seconds']['median']} s, max {report['run_seconds']['max']} s; "
        f"total {report['total_minutes']} min",
        f"- promotion outcomes: {report.get('promotions', 'not recorded')}; @champion moves in "
        f"the alias history: {report['mlflow'].get('champion_moves_in_history', 'not recorded')}",
        f"- MLflow: runs by status {report['mlflow']['mlflow_run_statuses']}, "
        f"{report['mlflow']['model_versions']} model versions for {report['runs_requested']} runs, "
        f"{report['mlflow']['duplicate_idempotency_keys']} duplicate keys, @champion v"
        f"{report['mlflow']['champion']} ({report['mlflow']['champion_status']})",
        "",
        "| component | RSS after run 1 (MB) | max (MB) | after last run (MB) | growth (MB) | slope, 2nd half (MB/run) |",
        "|---|---|---|---|---|---|",
    ]
    for name, fig in report["memory"].items():
        lines.append(
            f"| {name} | {fig['first_mb']} | {fig['max_mb']} | {fig['last_mb']} | "
            f"{fig.get('growth_mb', '')} | {fig['second_half_slope_mb_per_run']} |"
        )
    lines += [
        "",
        f"verdict: **{report['verdict']}** ({'; '.join(report['problems']) or 'no problem'})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--state-dir", type=Path, default=REPO / ".local-stack" / "soak")
    parser.add_argument("--output-dir", type=Path, default=REPO / "test-artifacts" / "soak")
    parser.add_argument("--run-timeout-seconds", type=float, default=900)
    parser.add_argument("--max-growth-mb-per-run", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    parser.add_argument(
        "--report", type=Path, help="only recompute and print the figures of a saved report"
    )
    args = parser.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        saved["memory"] = memory_figures([r["rss_mb"] for r in saved["runs"]])
        print(markdown(saved))
        return 0 if saved["verdict"] == "PASS" else 1

    state_dir = args.state_dir.resolve()
    dags_folder = state_dir / "soak-dags"
    stack_cli = [sys.executable, str(REPO / "deploy" / "local_stack.py"), "quick"]
    subprocess.run([*stack_cli, "stop", "--purge", "--state-dir", str(state_dir)], check=False)
    # The DAG file must exist before the dag-processor's first scan; the data URI is fixed.
    write_pipeline(dags_folder, f"s3://{DATA_BUCKET}/{DATA_KEY}")
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    started = time.monotonic()
    subprocess.run(
        [*stack_cli, "start", "--auto-ports", "--state-dir", str(state_dir),
         "--dags-folder", str(dags_folder)],
        check=True,
    )  # fmt: skip
    report: dict[str, Any] = {"runs_requested": args.runs, "started_at": started_at}
    try:
        state = local_stack.State.load(state_dir)
        stack_pgids = set(state.pids.values())
        train_uris = upload_data(state.s3_url)
        api = AirflowApi(state.airflow_url, local_stack.ADMIN_USER, state.admin_password)
        api.wait_for_dag(DAG_ID)
        api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        runs, samples = [], []
        report["processes_before"] = stack_processes(stack_pgids)
        for index in range(1, args.runs + 1):
            train_uri = train_uris[(index - 1) % len(train_uris)]
            record = run_once(api, index, train_uri, args.run_timeout_seconds)
            sample = sample_memory(stack_pgids)
            record["rss_mb"] = sample
            runs.append(record)
            samples.append(sample)
            print(
                f"[soak] run {index}/{args.runs}: {record['state']} in {record['seconds']} s, "
                f"promotion {record['promotion']}; "
                f"RSS {json.dumps(sample)}",
                flush=True,
            )
        report["processes_after"] = stack_processes(stack_pgids)
        durations = [r["seconds"] for r in runs]
        report.update(
            {
                "machine": f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores",
                "runs": runs,
                "succeeded": sum(r["state"] == "success" for r in runs),
                "failed": sum(r["state"] != "success" for r in runs),
                "run_seconds": {
                    "median": round(statistics.median(durations), 1),
                    "max": max(durations),
                },
                "total_minutes": round((time.monotonic() - started) / 60, 1),
                "promotions": {
                    outcome: sum(r["promotion"] == outcome for r in runs)
                    for outcome in sorted({str(r["promotion"]) for r in runs})
                },
                "memory": memory_figures(samples),
                "mlflow": mlflow_invariants(state.mlflow_url, args.runs),
            }
        )
    finally:
        if not args.keep:
            subprocess.run([*stack_cli, "stop", "--state-dir", str(state_dir)], check=False)

    problems = []
    if report["failed"]:
        problems.append(f"{report['failed']} run(s) did not succeed")
    if report["mlflow"]["mlflow_run_statuses"].get("RUNNING"):
        problems.append("MLflow runs left RUNNING")
    if (
        report["mlflow"]["model_versions"] != args.runs
        or report["mlflow"]["duplicate_idempotency_keys"]
    ):
        problems.append("model versions do not match runs one to one")
    if (
        report["mlflow"]["champion_status"] != "READY"
        or not report["mlflow"]["champion_passed_gate"]
    ):
        problems.append("@champion is not a READY version that passed its gate")
    promoted = report["promotions"].get("promoted", 0)
    if report["mlflow"]["champion_moves_in_history"] != promoted:
        problems.append(
            f"{promoted} promotions but {report['mlflow']['champion_moves_in_history']} "
            "@champion moves in the alias history"
        )
    long_running = [c for c in COMPONENTS if c in report["memory"]]
    for component in long_running:
        growth = report["memory"][component]["second_half_slope_mb_per_run"]
        if args.runs >= 10 and growth > args.max_growth_mb_per_run:
            problems.append(f"{component} RSS grows {growth} MB/run")
    report["problems"] = problems
    report["verdict"] = "PASS" if not problems else "FAIL"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = started_at.replace(":", "").replace("-", "")
    out = args.output_dir / f"soak-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print(f"[soak] report: {out}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
