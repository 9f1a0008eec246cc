"""XCom: the largest XCom value any operator wrote in the benchmark runs (goal <= 64 KB).

The benchmarks that run real DAGs (``bench_segments.py``, and any other that calls
``_airflow.save_xcom_sizes``) store the size of every XCom value they read back from the
metadata DB under ``bench/results/xcom_<bench>.json``; this script reports the largest.
Run it after them (``run_all.py`` does).
"""

from __future__ import annotations

import json

from _common import ROOT, report

RESULTS = ROOT / "bench" / "results"
GOAL_BYTES = 64 * 1024


def main() -> None:
    files = sorted(RESULTS.glob("xcom_*.json"))
    if not files:
        report("XCom", [("no data", "run bench_segments.py first")])
        print(json.dumps({"bench": "xcom", "largest": None}))
        return
    rows, largest, count = [], None, 0
    for path in files:
        sizes = json.loads(path.read_text())
        count += len(sizes)
        if not sizes:
            continue
        top = max(sizes, key=lambda s: s["bytes"])
        rows.append((path.stem.removeprefix("xcom_"), f"{top['bytes']} B ({top['task_id']})"))
        if largest is None or top["bytes"] > largest["bytes"]:
            largest = {**top, "run": path.stem.removeprefix("xcom_")}
    assert largest is not None
    rows.append(
        (
            "largest overall",
            f"{largest['bytes']} B = {largest['bytes'] / 1024:.1f} KB ({largest['task_id']}, "
            f"{largest['run']}); ratio to goal {largest['bytes'] / GOAL_BYTES:.3f} (goal <= 1)",
        )
    )
    report(f"XCom: {count} values in {len(files)} run(s)", rows)
    print(json.dumps({"bench": "xcom", "largest": largest, "values": count}))


if __name__ == "__main__":
    main()
