"""Small helpers shared by the benchmarks: subprocess timing, medians, peak RSS."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def run_python(code: str, env: dict[str, str] | None = None, timeout: int = 600) -> dict:
    """Run ``code`` in a fresh interpreter; it must print one JSON object on its last line."""
    return run_json([PY, "-c", code], {**os.environ, **(env or {})}, timeout)


def run_json(
    argv: list[str], env: dict[str, str] | None = None, timeout: int | None = None
) -> dict:
    """Run ``argv`` (a fresh interpreter); the JSON object on the last line of its stdout."""
    result = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    return statistics.median(values)


def peak_rss_mb() -> float:
    """Peak RSS of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - start, value


def report(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n== {title}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")


PLAIN_REQUIREMENTS = (
    "mlflow",
    "scikit-learn",
    "numpy",
    "pandas",
    "scipy",
    "cloudpickle",
    "xgboost",
)


def pinned_requirements(names: tuple[str, ...] = PLAIN_REQUIREMENTS) -> list[str]:
    """What a plain script pins when it logs a model (installed versions; default: sklearn +
    XGBoost)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in names]
