"""Run every benchmark (``make bench``) and print each figure with its ratio.

Absolute seconds are reported but not judged: the machines are shared and noisy; the ratios
compare two measurements taken in the same run. ``--quick`` uses smaller sizes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (script, full-size args, quick args)
BENCHMARKS = [
    ("bench_import.py", [], ["--repeat", "3"]),
    ("bench_parse.py", [], ["--repeat", "3"]),
    ("bench_validation.py", [], ["--rows", "100000"]),
    ("bench_training.py", [], ["--rows", "100000"]),
    ("bench_drift.py", [], ["--rows", "100000"]),
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("only", nargs="*", help="run only these scripts")
    args = parser.parse_args()
    failures = []
    started = time.monotonic()
    for script, full, quick in BENCHMARKS:
        if args.only and script not in args.only:
            continue
        path = HERE / script
        if not path.exists():
            print(f"\n== {script}: missing", flush=True)
            failures.append(script)
            continue
        print(f"\n### {script}", flush=True)
        result = subprocess.run(
            [sys.executable, str(path), *(quick if args.quick else full)], cwd=HERE
        )
        if result.returncode != 0:
            failures.append(script)
    print(f"\nall benchmarks: {time.monotonic() - started:.0f}s; failed: {failures or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
