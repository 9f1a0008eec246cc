"""Fixed cost per task: the imports a task process pays, cold vs inherited from a preloaded worker.

Under the real scheduler each task instance runs in its own process. On Linux, Airflow 3.3's
task supervisor ``os.fork()``s the task process from the executor's worker process
(LocalExecutor: a ``multiprocessing`` worker forked from the scheduler; Celery: the prefork
pool process), so every module already imported in that worker is inherited for free, and
everything else is imported again by every task. This benchmark measures, per operator
family, in one fresh interpreter that has imported Airflow's task runner (as the worker has):

- **cold**: a forked child imports the operator's libraries (today's per-task cost);
- **preload**: the parent imports them once (the one-off cost a worker preload pays);
- **warm**: a child forked *after* the preload imports them again (the per-task cost with a
  preload: the modules are inherited).

It does not start a scheduler; see docs/performance.md for how to enable a preload
(``[celery] celery_config_options`` ``imports``; ``airflow_local_settings.py`` for the
LocalExecutor) and for what was and was not measured under the real scheduler.

    .venv/bin/python bench/bench_task_overhead.py
"""

from __future__ import annotations

import argparse
import json

from _common import report, run_python

# The libraries each operator imports inside execute() (via airflow_mlops.core.*).
GROUPS = {
    "DriftReportOperator": ["pandas", "evidently", "airflow_mlops.core.drift"],
    "DataValidationOperator": ["pandas", "great_expectations", "airflow_mlops.core.validation"],
    "TrainModelOperator": ["pandas", "sklearn", "mlflow", "airflow_mlops.core.training"],
    "Register/PromoteModelOperator": ["mlflow", "airflow_mlops.core.alias_moves"],
}

CODE = """
import importlib, json, os, time
import airflow.sdk.execution_time.task_runner  # loaded in the worker before it forks tasks
mods = {mods!r}

def in_child():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        t = time.perf_counter()
        for m in mods:
            importlib.import_module(m)
        os.write(w, str(time.perf_counter() - t).encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.waitpid(pid, 0)
    return float(data)

cold = in_child()
t = time.perf_counter()
for m in mods:
    importlib.import_module(m)
preload = time.perf_counter() - t
warm = in_child()
print(json.dumps({{"cold": cold, "preload": preload, "warm": warm}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    rows, out = [], {}
    for operator, mods in GROUPS.items():
        runs = [
            run_python(CODE.format(mods=mods), env={"GX_ANALYTICS_ENABLED": "False"})
            for _ in range(args.repeat)
        ]
        cold = sorted(r["cold"] for r in runs)[len(runs) // 2]
        warm = sorted(r["warm"] for r in runs)[len(runs) // 2]
        preload = sorted(r["preload"] for r in runs)[len(runs) // 2]
        out[operator] = {"cold_s": cold, "warm_s": warm, "preload_s": preload}
        rows.append(
            (
                operator,
                f"cold {cold:.2f} s per task; preloaded worker {warm * 1000:.1f} ms per task "
                f"(one-off preload {preload:.2f} s); saved per task {cold - warm:.2f} s",
            )
        )
    report(f"Per-task import cost in a forked task process (median of {args.repeat})", rows)
    print(json.dumps({"bench": "task_overhead", **out}))


if __name__ == "__main__":
    main()
