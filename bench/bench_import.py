"""Import cost: ``import airflow.sdk`` vs the same plus every public airflow_mlops module.

Fresh interpreter per sample; median of N. Goal: <= 150 ms added, no heavy library loaded.
Three module sets are measured in the same run:

- every public module, literally (includes ``plugins.mlops_app``, the UI page's FastAPI app
  that only the API server imports, and ``operators.approval``, imported only by pipelines
  with ``approval: manual``; both import what they exist for: FastAPI, Airflow's HITL);
- what Airflow processes load: all but those two and the ``cli`` module (the plugin class
  ``plugins.mlops_page`` is included: every task process loads it when
  ``lazy_discover_providers=False``);
- the DAG-authoring path: the previous set without ``plugins`` (what a DAG file and the DAG
  processor import).
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import ROOT, median, report, run_python

sys.path.insert(0, str(ROOT / "tests"))

from test_imports import HEAVY

# Not forbidden, but worth seeing: each cost 30-500 ms in a task process before the fixes.
EXTRA = ("fastapi", "pydantic.v1", "airflow.providers.standard.operators.hitl")

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
    # Loaded only by what needs them: the page's app in the API server; the approval
    # operator by DAGs with a human approval, and its trigger by the triggerer.
    on_demand = (
        "airflow_mlops.plugins.mlops_app",
        "airflow_mlops.operators.approval",
        "airflow_mlops.triggers.approval",
    )
    processes = [m for m in modules if m not in on_demand and m != "airflow_mlops.cli"]
    dag_path = [m for m in processes if not m.startswith("airflow_mlops.plugins")]
    sets = {"all": modules, "processes": processes, "dag_path": dag_path}
    figures = {}
    # Alternate the sets so that load changes on the shared machine hit all of them alike.
    runs: dict[str, list[dict]] = {name: [] for name in sets}
    for _ in range(args.repeat):
        for name, mods in sets.items():
            runs[name].append(run_python(CODE.format(modules=mods, heavy=HEAVY + EXTRA)))
    for name, samples in runs.items():
        figures[name] = {
            "sdk_s": median([r["sdk"] for r in samples]),
            "added_s": median([r["added"] for r in samples]),
            "heavy": sorted({m for r in samples for m in r["heavy"]}),
        }
    rows = []
    for name, label, count in (
        ("all", "every public module", len(modules)),
        ("processes", "loaded by Airflow processes", len(processes)),
        ("dag_path", "DAG-authoring path", len(dag_path)),
    ):
        f = figures[name]
        rows += [
            (f"{label} ({count} modules): import airflow.sdk", f"{f['sdk_s'] * 1000:.0f} ms"),
            (f"{label}: + airflow_mlops", f"+{f['added_s'] * 1000:.0f} ms (goal <= 150 ms)"),
            (f"{label}: ratio (total / sdk)", f"{(f['sdk_s'] + f['added_s']) / f['sdk_s']:.3f}"),
            (f"{label}: heavy/extra libraries loaded", ", ".join(f["heavy"]) or "none"),
        ]
    report(f"Import cost (median of {args.repeat} fresh interpreters per set)", rows)
    print(json.dumps({"bench": "import", **figures}))


if __name__ == "__main__":
    main()
