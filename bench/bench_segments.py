"""Segments: N segment models trained, gated and promoted in one CT run, serving check on.

The factory's segmented CT DAG in **batched** mode (``segments.batch_size``, see
``core/segment_batch.py``): ``split_segments`` writes one manifest, ``segment_batch`` is
mapped over chunks of ``--batch-size`` segments (default: the pipeline's own,
``core.segments.default_batch_size``: 50 at 1,000 segments) and runs detect changes → train
→ evaluate → register → promote (serving check on) for each segment of its chunk;
``summary`` reads the chunks' results. ``--mode chain`` runs the per-segment mapped chain
instead (one TaskGroup map index per segment, at most 1,024 segments).

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

    .venv/bin/python bench/bench_segments.py --executor local --segments 1000 \
        --mlflow-workers 2 --parallelism 2                                  # the goal figure
    .venv/bin/python bench/bench_segments.py --segments 50,100 --workers 1,2 --profile

``--workers`` is ``segments.workers`` (segments of a chunk run at once in threads; default 2
here, 1 in a pipeline).

``--executor local`` runs the same batched pipeline the way a deployment does: the real
Airflow stack of the e2e tests (``tests/_airflow_stack.py``: scheduler, dag-processor,
triggerer, api-server; LocalExecutor with ``[core] parallelism`` 2, i.e. two chunk task
processes at once, forked from a scheduler that preloaded the operators' libraries; SQLite;
its own ``AIRFLOW_HOME`` under the bench's work dir) with the bench's MLflow server as
``mlflow_default``. The pipeline is a DAG file in the stack's DAGs folder built by the
factory from its configuration (``--workers`` defaults to 1 here); one run is triggered
through the REST API and polled to its end. Printed: wall time from the trigger to the
run's end (and the run's own start -> end), seconds per model over the chunk phase (first
chunk start -> last chunk end; the rest is once per run), CPU seconds per model of the
whole stack (every process and descendant, exited task processes included through their
parents' reaped-children times, and the serving checkers the task processes leave behind,
reaped here as a child subreaper), split by Airflow server (its own process, and what runs
below it), and of the MLflow server, chunk task durations, the
first segment of each chunk against the median (a task process's own set-up, by step),
peak RSS (VmHWM sampled every 2 s) of a chunk task process, of its serving checker, of the
scheduler, the per-step medians and the largest XCom, as above.

    .venv/bin/python bench/bench_segments.py --executor local --segments 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sqlite3
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

from airflow_mlops.core.segments import default_batch_size

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


def pipeline_raw(
    segments: int, data_uri: str, mode: str, batch_size: int | None, workers: int, serving: bool
) -> dict:
    """The benchmarked pipeline's configuration (what a user writes in YAML)."""
    seg = {"column": "seg", "values": [f"s{i:04d}" for i in range(segments)]}
    if mode == "batched":
        seg.update(batch_size=batch_size or default_batch_size(segments), workers=workers)
    return {
        "name": f"bench_seg_{mode}_{segments}_w{workers}",
        "data": {"train_uri": data_uri, "target": "y", "exclude": ["seg"]},
        "validation": {"enabled": False},
        "training": {"estimator": "sklearn.linear_model.Ridge", "task": "regression"},
        "promotion": {"serving_check": serving},
        "segments": seg,
        "monitoring": {"enabled": False},
        "retries": 0,
    }


def build_dag(raw: dict):
    from airflow_mlops.factories import continuous_training_dag
    from airflow_mlops.factories.config import parse_config

    return continuous_training_dag(parse_config(raw, source=raw["name"], base_dir=str(WORKDIR)))


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


def cpu_by_server(stack) -> dict[str, dict[str, float]]:
    """Per Airflow server: CPU seconds of its own process and of its descendants (task
    processes below the scheduler, reaped ones included through their parents)."""
    import psutil

    shares = {}
    for server in stack.servers:
        try:
            times = psutil.Process(server.process.pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        whole = cpu_seconds([server.process.pid])
        own = times.user + times.system
        shares[server.name] = {"own": own, "descendants": whole - own}
    return shares


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
    raw = pipeline_raw(segments, str(data), mode, batch_size, workers, serving)
    dag = build_dag(raw)
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
        "batch_size": raw["segments"].get("batch_size"),
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


# -- --executor local: the real scheduler, chunks as parallel task processes -----------------

# The DAG file the stack's dag-processor parses: the same pipeline as build_dag, built by the
# factory from its configuration.
DAG_FILE = """\
import json

from airflow_mlops.factories import continuous_training_dag, parse_config

raw = json.loads({raw!r})
dag = continuous_training_dag(parse_config(raw, source={source!r}, base_dir={base!r}))
"""
RUN_TIMEOUT_S = 40 * 60
TERMINAL = ("success", "failed", "upstream_failed", "skipped", "removed")


def _vm_hwm_mb(pid: int) -> float:
    """Peak RSS (VmHWM) of a live process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakSampler:
    """Samples, every few seconds, the peak RSS (VmHWM) of the scheduler and each of its
    descendants: task processes are found by their title (``airflow worker -- <ti id>``),
    their own children (the serving checker) by their task ancestor.

    Also reaps the orphans this process inherits as a child subreaper (:func:`start_stack`):
    a chunk stops its serving checker when it ends, but a task process that leaves by
    ``os._exit`` before that (a kill, a crash) does not wait for it; such a checker ends on
    EOF, reparented here, and its CPU (with its own reaped forks) is counted, not lost."""

    def __init__(self, scheduler_pid: int, every_s: float = 2.0) -> None:
        import threading

        import psutil

        self.scheduler_pid, self.every_s = scheduler_pid, every_s
        self.tasks: dict[str, float] = {}  # ti id -> peak MB of the task process
        self.task_children: dict[str, float] = {}  # ti id -> peak MB of any of its children
        self.scheduler_mb = 0.0
        self.seen: set[int] = set()  # every pid seen below the scheduler
        self.orphan_cpu_s = 0.0  # reaped orphans seen below the scheduler
        self.other_orphans = 0
        self.own = {child.pid for child in psutil.Process().children()}  # our Popen'd servers
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> PeakSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        deadline = time.monotonic() + 10  # the last chunk's checker ends on EOF
        while self.reap_orphans() and time.monotonic() < deadline:
            time.sleep(0.2)

    def _loop(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.reap_orphans()
            self.done.wait(self.every_s)

    def reap_orphans(self) -> int:
        """Reap the inherited orphans that exited; returns how many are still alive."""
        import os

        import psutil

        alive = 0
        for child in psutil.Process().children():
            if child.pid in self.own:
                continue
            try:
                pid, _, usage = os.wait4(child.pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if pid == 0:
                alive += 1
            elif pid in self.seen:
                self.orphan_cpu_s += usage.ru_utime + usage.ru_stime
            else:
                self.other_orphans += 1
        return alive

    def sample(self) -> None:
        import psutil

        try:
            frontier = [(psutil.Process(self.scheduler_pid), None)]
        except psutil.NoSuchProcess:
            return
        while frontier:
            proc, task = frontier.pop()
            try:
                title = " ".join(proc.cmdline()).strip()
                peak = _vm_hwm_mb(proc.pid)
                children = proc.children()
            except (psutil.Error, OSError):
                continue
            self.seen.add(proc.pid)
            if proc.pid == self.scheduler_pid:
                self.scheduler_mb = max(self.scheduler_mb, peak)
            elif task is not None:
                self.task_children[task] = max(self.task_children.get(task, 0.0), peak)
            elif title.startswith("airflow worker -- ") and "LocalExecutor" not in title:
                task = title.removeprefix("airflow worker -- ").split()[0].replace("-", "")
                self.tasks[task] = max(self.tasks.get(task, 0.0), peak)
            frontier += [(child, task) for child in children]


def _stack_db(stack) -> sqlite3.Connection:
    return sqlite3.connect(stack.home / "airflow.db")


def _task_instances(stack, dag_id: str, run_id: str) -> list[dict]:
    """The run's task instances from the stack's metadata DB (id, times, state)."""
    with contextlib.closing(_stack_db(stack)) as db:
        rows = db.execute(
            "SELECT id, task_id, map_index, state, start_date, end_date, duration "
            "FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (dag_id, run_id),
        ).fetchall()
    keys = ("id", "task_id", "map_index", "state", "start_date", "end_date", "duration")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _chunk_xcoms(stack, dag_id: str, run_id: str) -> list[dict]:
    """Each chunk's XCom (results URI and counts), by map index."""
    with contextlib.closing(_stack_db(stack)) as db:
        rows = db.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? "
            "AND key = 'return_value' ORDER BY map_index",
            (dag_id, run_id, "segment_batch"),
        ).fetchall()
    return [json.loads(value) for (value,) in rows]


def _when(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def wait_run_end(stack, api, dag_id: str, run_id: str, chunks: int) -> dict:
    """Poll until the run ends (reading the stack's DB, which costs the stack no CPU); print
    the finished chunks every minute; the run as the REST API reports it."""
    from _airflow_stack import quote

    started = time.monotonic()
    next_report = started + 60
    while time.monotonic() - started < RUN_TIMEOUT_S:
        with contextlib.closing(_stack_db(stack)) as db:
            (state,) = db.execute(
                "SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)
            ).fetchone()
        if state in ("success", "failed"):
            return api.call("GET", f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}")
        if time.monotonic() >= next_report:
            tis = _task_instances(stack, dag_id, run_id)
            done = sum(1 for t in tis if t["task_id"] == "segment_batch" and t["state"] in TERMINAL)
            print(f"  {time.monotonic() - started:5.0f}s: {done}/{chunks} chunk tasks finished")
            next_report += 60
        time.sleep(2)
    raise TimeoutError(f"{dag_id} {run_id} still running after {RUN_TIMEOUT_S}s")


def run_size_local(
    segments: int,
    rows: int,
    batch_size: int | None,
    workers: int,
    stack,
    server_pid: int,
    serving: bool = True,
) -> dict:
    """One run of the batched pipeline on the stack; the figures of :func:`run_size`."""
    from _airflow_stack import quote

    data = WORKDIR / f"seg_local_{segments}_w{workers}.parquet"
    make_data(segments, rows, data)
    raw = pipeline_raw(segments, str(data), "batched", batch_size, workers, serving)
    raw["name"] = f"bench_seg_local_{segments}_w{workers}"
    dag_file = DAG_FILE.format(raw=json.dumps(raw), source=raw["name"], base=str(WORKDIR))
    (stack.dags_folder / f"{raw['name']}.py").write_text(dag_file)
    dag_id = build_dag_id(raw)
    api = stack.api("admin")
    api.wait_for_dag(dag_id, timeout_seconds=300)
    batch_size = raw["segments"]["batch_size"]
    chunks = -(-segments // batch_size)
    stack_pids = [server.process.pid for server in stack.servers]
    scheduler = next(s for s in stack.servers if s.name == "scheduler")
    cpu_before = cpu_seconds(stack_pids), cpu_seconds([server_pid])
    servers_before = cpu_by_server(stack)
    with PeakSampler(scheduler.process.pid) as peaks:
        triggered = time.time()
        path = f"/api/v2/dags/{quote(dag_id)}/dagRuns"
        run_id = api.call("POST", path, {"logical_date": None})["dag_run_id"]
        run = wait_run_end(stack, api, dag_id, run_id, chunks)
        observed = time.time() - triggered
    cpu_after = cpu_seconds(stack_pids), cpu_seconds([server_pid])
    servers_after = cpu_by_server(stack)
    seconds = _when(run["end_date"]) - triggered if run.get("end_date") else observed
    run_s = _when(run["end_date"]) - _when(run["start_date"])
    tis = _task_instances(stack, dag_id, run_id)
    rows_ = task_rows(dag_id, run_id, stack.home / "airflow.db")
    tasks = per_task_totals(rows_)
    sizes = xcom_sizes(dag_id, run_id, stack.home / "airflow.db")
    save_xcom_sizes(f"segments_local_{segments}", sizes)
    largest = max(sizes, key=lambda s: s["bytes"]) if sizes else {"bytes": 0}
    per_chunk = [
        json.loads(Path(x["results_uri"]).read_text()) for x in _chunk_xcoms(stack, dag_id, run_id)
    ]
    records = [r for chunk in per_chunk for r in chunk]
    totals = [r["seconds"]["total"] for r in records if "total" in r.get("seconds", {})]
    firsts = [
        c[0]["seconds"]["total"] for c in per_chunk if c and "total" in c[0].get("seconds", {})
    ]
    chunk_tis = [t for t in tis if t["task_id"] == "segment_batch" and t["start_date"]]
    # Per model: the chunk phase (first chunk start -> last chunk end) over the models; the
    # rest of the wall time (trigger -> first chunk, split, summary, scheduling) once per run.
    phase = (
        max(_when(t["end_date"]) for t in chunk_tis)
        - min(_when(t["start_date"]) for t in chunk_tis)
        if chunk_tis and all(t["end_date"] for t in chunk_tis)
        else seconds
    )
    once = max(seconds - phase, 0.0)
    per_model = phase / segments
    by_id = {str(t["id"]).replace("-", ""): t for t in tis}
    chunk_peaks = [
        mb for ti, mb in peaks.tasks.items() if by_id.get(ti, {}).get("task_id") == "segment_batch"
    ]
    other_peaks = [
        mb for ti, mb in peaks.tasks.items() if by_id.get(ti, {}).get("task_id") != "segment_batch"
    ]
    checker_peaks = [
        mb
        for ti, mb in peaks.task_children.items()
        if by_id.get(ti, {}).get("task_id") == "segment_batch"
    ]
    durations = [float(t["duration"] or 0.0) for t in chunk_tis]
    edges = sorted(
        (_when(t[key]), step)
        for t in chunk_tis
        if t["end_date"]
        for key, step in (("start_date", 1), ("end_date", -1))
    )
    running = [0]
    for _, step in edges:  # an end sorts before a start at the same instant
        running.append(running[-1] + step)
    return {
        "executor": "local",
        "segments": segments,
        "mode": "batched",
        "batch_size": batch_size,
        "workers": workers,
        "serving_check": serving,
        "state": run["state"],
        "promoted": sum(1 for r in records if r.get("promoted")),
        "failed": sum(1 for r in records if r.get("failed")),
        "seconds": seconds,
        "observed_s": observed,
        "run_s": run_s,
        "once_s": once,
        "warmup_s": 0.0,
        "per_model_s": per_model,
        "projected_1000_s": once + per_model * GOAL_MODELS,
        "cpu_task_s": cpu_after[0] - cpu_before[0] + peaks.orphan_cpu_s,
        "cpu_orphans_s": peaks.orphan_cpu_s,
        "orphans_not_from_the_stack": peaks.other_orphans,
        "cpu_mlflow_s": cpu_after[1] - cpu_before[1],
        "cpu_by_server_s": {
            name: {
                part: servers_after[name][part] - servers_before.get(name, {}).get(part, 0.0)
                for part in ("own", "descendants")
            }
            for name in servers_after
        },
        "tasks": tasks,
        "chunk_task_s": {
            "count": len(durations),
            "median": statistics.median(durations) if durations else 0.0,
            "max": max(durations, default=0.0),
            "at_once": max(running),
        },
        "first_segment_s": {
            "median_of_chunks": statistics.median(firsts) if firsts else 0.0,
            "median_all": statistics.median(totals) if totals else 0.0,
            "steps": first_segment_steps(per_chunk, records),
        },
        "steps": step_stats(records),
        "peak_rss_mb": max(chunk_peaks, default=0.0),
        "children_peak_rss_mb": max(checker_peaks, default=0.0),
        "other_task_peak_rss_mb": max(other_peaks, default=0.0),
        "scheduler_peak_rss_mb": peaks.scheduler_mb,
        "task_processes_sampled": len(peaks.tasks),
        "largest_xcom": largest,
    }


def start_stack(cleanup: contextlib.ExitStack, parallelism: int):
    """The real Airflow stack (its own home under the bench's work dir, apart from the
    private home ``_airflow`` set for this process); tasks reach the bench's MLflow server."""
    import ctypes
    import os

    from _airflow_stack import AirflowStack

    stack = AirflowStack(
        WORKDIR / "stack",
        users={"admin": "admin"},
        extra_env={
            "AIRFLOW_CONN_MLFLOW_DEFAULT": os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"],
            # Airflow 3.3's LocalExecutor runs [core] parallelism task processes at once (it
            # has no [local_executor] parallelism option); the stack's default is 4.
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        },
    )
    cleanup.callback(stack.stop)
    # Orphans of the stack (see PeakSampler) are reparented here, not to init, so their CPU
    # can be counted.
    PR_SET_CHILD_SUBREAPER = 36
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        stack.start()
    except BaseException:
        print(stack.log_tails(60))
        raise
    return stack


def first_segment_steps(per_chunk: list[list[dict]], records: list[dict]) -> dict[str, float]:
    """Step -> median over chunks of the chunk's first segment's seconds, minus the median
    over all segments: where each task process's one-time set-up goes."""
    excess = {}
    for step in STEPS:
        firsts = [c[0]["seconds"][step] for c in per_chunk if c and step in c[0].get("seconds", {})]
        every = [r["seconds"][step] for r in records if step in r.get("seconds", {})]
        if firsts and every:
            excess[step] = statistics.median(firsts) - statistics.median(every)
    return excess


def build_dag_id(raw: dict) -> str:
    """The CT DAG's id for this configuration (the factory's naming)."""
    from airflow_mlops.factories.config import parse_config

    return parse_config(raw, source=raw["name"], base_dir=str(WORKDIR)).ct_dag_id


def _dagtest_peaks(r: dict) -> list[tuple[str, str]]:
    return [
        ("peak RSS", f"{r['peak_rss_mb']:.0f} MB (this process, cumulative)"),
        ("children peak RSS", f"{r['children_peak_rss_mb']:.0f} MB (serving checker)"),
    ]


def _local_lines(r: dict) -> list[tuple[str, str]]:
    chunk, first = r["chunk_task_s"], r["first_segment_s"]
    by_server = ", ".join(
        f"{name} {cpu['own'] / r['segments']:.3f}"
        + (f" (+ below it {cpu['descendants'] / r['segments']:.3f})" if cpu["descendants"] else "")
        for name, cpu in r.get("cpu_by_server_s", {}).items()
    )
    return [
        ("CPU per model by server", f"{by_server} s; checkers of exited tasks apart"),
        (
            "chunk tasks",
            f"{chunk['count']} x median {chunk['median']:.1f} s, max {chunk['max']:.1f} s; at "
            f"most {chunk['at_once']} at once",
        ),
        (
            "first segment of a chunk",
            f"median {first['median_of_chunks']:.2f} s (median segment {first['median_all']:.2f}"
            " s: the excess is each task process's own set-up; by step: "
            + ", ".join(f"{k} +{v:.2f}s" for k, v in first["steps"].items() if v >= 0.1)
            + ")",
        ),
        (
            "peak RSS",
            f"{r['peak_rss_mb']:.0f} MB (a chunk task process, VmHWM, max over "
            f"{r['task_processes_sampled']} task processes sampled every 2 s)",
        ),
        ("children peak RSS", f"{r['children_peak_rss_mb']:.0f} MB (serving checker)"),
        (
            "other peaks",
            "split/summary task "
            + (f"{r['other_task_peak_rss_mb']:.0f} MB" if r["other_task_peak_rss_mb"] else "-")
            + ", scheduler "
            f"{r['scheduler_peak_rss_mb']:.0f} MB (preloaded libraries, shared with the forks)",
        ),
    ]


def print_result(r: dict, rows: int) -> None:
    n = r["segments"]
    local = r.get("executor") == "local"
    wall = (
        f"{r['seconds']:.1f} s trigger -> run end (the run's own start -> end "
        f"{r['run_s']:.1f} s; outside the chunk phase, once per run: {r['once_s']:.1f} s)"
        if local
        else f"{r['seconds']:.1f} s (once per run: {r['once_s']:.1f} s, of which the first "
        f"segment's set-up {r['warmup_s']:.1f} s)"
    )
    where = (
        "Airflow stack: scheduler, executor workers, task processes (exited ones included), "
        "dag-processor, triggerer, api-server"
        if local
        else "task process and its children"
    )
    lines = [
        ("run", f"{r['state']} (promoted {r['promoted']}/{n}, failed {r['failed']})"),
        ("wall", wall),
        (
            "per model",
            f"{r['per_model_s']:.3f} s"
            + (" (chunk phase: first chunk start -> last chunk end)" if local else ""),
        ),
        (
            "CPU per model",
            f"{(r['cpu_task_s'] + r['cpu_mlflow_s']) / n:.3f} s ({where} "
            f"{r['cpu_task_s'] / n:.3f} s"
            + (
                f" (of which serving checkers left by exited tasks {r['cpu_orphans_s'] / n:.3f} s)"
                if local
                else ""
            )
            + f", MLflow server {r['cpu_mlflow_s'] / n:.3f} s; whole run, set-up included)",
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
        *(_local_lines(r) if local else _dagtest_peaks(r)),
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
    if local:
        mode += (
            f", LocalExecutor: real scheduler, {r['parallelism']} parallel task processes, "
            f"MLflow server with {r['mlflow_workers']} worker(s)"
        )
    serving = "on" if r["serving_check"] else "off"
    report(f"Segments: {n} models ({mode}), {rows} rows each, serving check {serving}", lines)


def main() -> None:
    import signal
    import sys

    # A `kill` ends the run through the cleanup below (servers, the Airflow stack, WORKDIR).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
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
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="segments.batch_size (default: the pipeline's own default for the count, "
        "core.segments.default_batch_size)",
    )
    parser.add_argument(
        "--workers",
        default=None,
        help="segments.workers: comma-separated values, e.g. 1,2 (default 2; 1 with "
        "--executor local)",
    )
    parser.add_argument(
        "--executor",
        choices=("dagtest", "local"),
        default="dagtest",
        help="dagtest: dag.test() in this process; local: the real scheduler with the "
        "LocalExecutor (2 parallel task processes, tests/_airflow_stack.py)",
    )
    parser.add_argument(
        "--parallelism",
        type=int,
        default=2,
        help="--executor local: task processes at once ([core] parallelism), default 2",
    )
    parser.add_argument(
        "--mlflow-workers",
        type=int,
        default=1,
        help="uvicorn worker processes of the MLflow server (mlflow server --workers)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the run")
    args = parser.parse_args()
    sizes = [int(s) for s in args.segments.split(",")]
    local = args.executor == "local"
    if local and (args.mode != "batched" or args.profile):
        parser.error("--executor local runs --mode batched, without --profile")
    args.workers = args.workers or ("1" if local else "2")
    started = time.perf_counter()
    results = []
    with Environment(args.mlflow_workers) as env, contextlib.ExitStack() as cleanup:
        print(f"mlflow server ready ({env.mlflow.url}) after {time.perf_counter() - started:.0f}s")
        stack = start_stack(cleanup, args.parallelism) if local else None
        if stack is not None:
            print(f"Airflow stack healthy ({stack.url}) after {time.perf_counter() - started:.0f}s")
        for n in sizes:
            for workers in [int(w) for w in args.workers.split(",")]:
                serving = args.serving_check_max is None or n <= args.serving_check_max
                if stack is not None:
                    result = run_size_local(
                        n,
                        args.rows,
                        args.batch_size,
                        workers,
                        stack,
                        env.mlflow.process.pid,
                        serving,
                    )
                    result.update(parallelism=args.parallelism)
                    result["mlflow_workers"] = args.mlflow_workers
                    results.append(result)
                    print_result(result, args.rows)
                    continue
                result = run_size(
                    n,
                    args.rows,
                    args.mode,
                    args.batch_size,
                    workers,
                    args.profile,
                    env.mlflow.process.pid,
                    serving=serving,
                )
                result["mlflow_workers"] = args.mlflow_workers
                results.append(result)
                print_result(result, args.rows)
    print(json.dumps({"bench": "segments", "executor": args.executor, "results": results}))


if __name__ == "__main__":
    main()
