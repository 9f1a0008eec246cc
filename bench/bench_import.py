"""Import cost: ``import airflow.sdk`` vs the same plus every public airflow_mlops module.

Fresh interpreter per sample; median of N. Goal: <= 150 ms added, no heavy library loaded.
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import ROOT, median, report, run_python

sys.path.insert(0, str(ROOT / "tests"))

HEAVY = (
    "pandas",
    "numpy",
    "mlflow",
    "great_expectations",
    "evidently",
    "sklearn",
    "xgboost",
    "scipy",
)

CODE = """
import importlib, json, sys, time
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
for name in {modules!r}:
    importlib.import_module(name)
t2 = time.perf_counter()
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"sdk": t1 - t0, "added": t2 - t1, "heavy": heavy}}))
"""


def main() -> None:
    from test_imports import public_modules

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    modules = public_modules()
    runs = [run_python(CODE.format(modules=modules, heavy=HEAVY)) for _ in range(args.repeat)]
    sdk = median([r["sdk"] for r in runs])
    added = median([r["added"] for r in runs])
    heavy = sorted({m for r in runs for m in r["heavy"]})
    report(
        f"Import cost (median of {args.repeat} fresh interpreters, {len(modules)} modules)",
        [
            ("import airflow.sdk", f"{sdk * 1000:.0f} ms"),
            ("+ airflow_mlops (all public)", f"+{added * 1000:.0f} ms (goal <= 150 ms)"),
            ("ratio (total / sdk)", f"{(sdk + added) / sdk:.2f}"),
            ("heavy libraries loaded", ", ".join(heavy) or "none"),
        ],
    )
    print(json.dumps({"bench": "import", "sdk_s": sdk, "added_s": added, "heavy": heavy}))


if __name__ == "__main__":
    main()
