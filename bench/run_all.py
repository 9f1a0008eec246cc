"""Run every benchmark (``make bench``) and print each figure with its ratio.

Absolute seconds are reported but not judged: the machines are shared and noisy; the ratios
compare two measurements taken in the same run. ``--quick`` uses smaller sizes.

Each benchmark's full output (Airflow and MLflow logs included) goes to
``bench/results/<script>.log``; the console shows its figures (the ``==`` blocks and the
JSON line), its wall time and the machine's load average before it started.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (script, full-size args, quick args)
BENCHMARKS = [
    ("bench_import.py", [], ["--repeat", "3"]),
    ("bench_parse.py", [], ["--repeat", "3"]),
    ("bench_scheduler_overhead.py", [], ["--runs", "1"]),
    ("bench_segments.py", [], ["--sizes", "1,4", "--serving-check-max", "1"]),
    ("bench_validation.py", ["--repeats", "2"], ["--rows", "100000"]),
    ("bench_drift.py", [], ["--rows", "100000"]),
    ("bench_evaluation.py", [], ["--rows", "100000", "--repeats", "1"]),
    ("bench_manifest.py", [], ["--files", "200", "--repeats", "3"]),
    ("bench_e2e.py", [], ["--rows", "100000", "--repeats", "1"]),
    ("bench_ct_scale.py", ["--rows", "1000000"], ["--rows", "200000"]),  # full: --rows 5000000
    ("bench_scaling.py", [], []),
    # 50 models x 365 daily monitoring runs (~7 min to write them), then the real api-server.
    ("bench_page.py", [], ["--days", "30", "--cold", "10", "--warm", "100"]),
    ("bench_xcom.py", [], []),  # last: reads the XCom sizes the DAG benchmarks above saved
]
# Not in `make bench` (the 20-minute budget), run by hand when needed: bench_training.py (the
# train task alone, which bench_e2e.py times inside the whole CT run) and
# bench_task_overhead.py (import cost per operator family in a forked process, a diagnostic
# for what bench_scheduler_overhead.py measures under the real scheduler) and
# bench_celery_preload.py (the worker preload on real Celery workers, via local-stack prod).
RESULTS = HERE / "results"


LOG_LINE = re.compile(r"^(\[?\d{4}-\d\d-\d\d[T ]|\s*\{\"|model \S+: )")


def _figures(stdout: str) -> str:
    """The ``== title`` blocks (and their indented rows) and the JSON result line.

    Scripts that print their own tables (no ``==`` block) are shown whole, minus log lines.
    """
    if not any(line.startswith("== ") for line in stdout.splitlines()):
        return "\n".join(
            line
            for line in stdout.splitlines()
            if line.startswith('{"bench"') or not LOG_LINE.match(line)
        )
    keep, in_block = [], False
    for line in stdout.splitlines():
        if line.startswith("== "):
            in_block = True
            keep.append(line)
        elif in_block and line.startswith("  "):
            keep.append(line)
        else:
            in_block = False
            if line.startswith('{"bench"'):
                keep.append(line)
    return "\n".join(keep)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("only", nargs="*", help="run only these scripts")
    args = parser.parse_args()
    failures = []
    started = time.monotonic()
    if not args.only:  # a full run: XCom sizes of earlier runs must not count
        for stale in RESULTS.glob("xcom_*.json"):
            stale.unlink()
    for script, full, quick in BENCHMARKS:
        if args.only and script not in args.only:
            continue
        path = HERE / script
        if not path.exists():
            print(f"\n== {script}: missing", flush=True)
            failures.append(script)
            continue
        load = os.getloadavg()
        print(
            f"\n### {script} (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})", flush=True
        )
        RESULTS.mkdir(exist_ok=True)
        log_path = RESULTS / f"{path.stem}.log"
        t0 = time.monotonic()
        with log_path.open("w") as log:
            result = subprocess.run(
                [sys.executable, str(path), *(quick if args.quick else full)],
                cwd=HERE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                check=False,
            )
            log.write(result.stdout)
        print(_figures(result.stdout), flush=True)
        print(f"  ({time.monotonic() - t0:.0f} s; full log: {log_path})", flush=True)
        if result.returncode != 0:
            failures.append(script)
            print(f"  FAILED with exit code {result.returncode}; see {log_path}", flush=True)
    print(f"\nall benchmarks: {time.monotonic() - started:.0f}s; failed: {failures or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
