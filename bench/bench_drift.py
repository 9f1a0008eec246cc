"""Benchmark: DriftReportOperator's drift path vs raw Evidently on the full data.

Data: two Parquet files of ``--rows`` rows (default 1,000,000) x 20 columns per side
(14 float, 3 low-cardinality int, 3 categorical strings); half of the columns are shifted
in the current side, by amounts from just above Evidently's default threshold to large.

Each measurement runs in its own fresh process so peak RSS is that of one approach only;
libraries are imported before the clock starts in both.

* raw: ``pd.read_parquet`` both files (not timed), then ``Report([DataDriftPreset()],
  include_tests=True).run(current, reference)`` and ``get_html_str`` (timed): what a user
  gets by handing Evidently the full frames.
* operator: ``airflow_mlops.core.drift.compute_drift`` from the two Parquet URIs (schema
  check, streaming read, sampling, Evidently on the sample, summary, sanitised HTML) plus
  writing the HTML and JSON summary (all timed, reading included). This is the whole of
  the operator's ``execute()`` except the MLflow lookups and uploads.

Prints both times, their ratio (goal >= 4x), the share of columns whose drift verdict
agrees (goal >= 95 %), and each process's peak RSS against the in-memory size of the data
(goal: operator <= 2x data size). Usage::

    .venv/bin/python bench/bench_drift.py [--rows 1000000] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import run_json

N_FLOAT, N_INT, N_CAT = 14, 3, 3
# Shifts of the shifted columns (in standard deviations for floats): the smallest is just
# above the 0.1 normed-Wasserstein threshold, where sampling error matters most.
FLOAT_SHIFTS = [0.12, 0.15, 0.2, 0.3, 0.5, 0.8, 1.0]


def make_side(rows: int, shifted: bool, seed: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    columns = {}
    for i in range(N_FLOAT):
        values = rng.normal(0.0, 1.0, rows) if i % 2 else rng.gamma(2.0, 1.0, rows)
        if shifted and i < len(FLOAT_SHIFTS):
            values = values + FLOAT_SHIFTS[i] * values.std()
        columns[f"f{i:02d}"] = values
    for i in range(N_INT):
        p = [0.4, 0.3, 0.2, 0.1]
        if shifted and i < 2:
            p = [0.1, 0.2, 0.3, 0.4] if i == 0 else [0.25, 0.25, 0.25, 0.25]
        columns[f"i{i}"] = rng.choice(4, rows, p=p).astype("int64")
    labels = np.array(["north", "south", "east", "west", "centre"])
    for i in range(N_CAT):
        p = [0.35, 0.25, 0.2, 0.15, 0.05]
        if shifted and i < 1:
            p = [0.05, 0.15, 0.2, 0.25, 0.35]
        columns[f"c{i}"] = pd.Categorical(labels[rng.choice(5, rows, p=p)])
    return pd.DataFrame(columns)


def generate(workdir: Path, rows: int) -> dict:
    reference = make_side(rows, shifted=False, seed=1)
    current = make_side(rows, shifted=True, seed=2)
    size = int(reference.memory_usage(deep=True).sum() + current.memory_usage(deep=True).sum())
    ref_path, cur_path = workdir / "reference.parquet", workdir / "current.parquet"
    reference.to_parquet(ref_path, index=False)
    current.to_parquet(cur_path, index=False)
    shifted = [f"f{i:02d}" for i in range(len(FLOAT_SHIFTS))] + ["i0", "i1", "c0"]
    return {
        "reference": str(ref_path),
        "current": str(cur_path),
        "data_bytes": size,
        "columns": list(reference.columns),
        "shifted": shifted,
    }


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    ``VmHWM`` rather than ``getrusage``: on Linux ``ru_maxrss`` of a freshly exec'd child
    starts at the RSS of the parent it was forked from (here: the process holding the
    generated data), which would overstate the child's own peak.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_raw(reference: str, current: str) -> dict:
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    from airflow_mlops.core.drift import column_results_from_snapshot

    ref, cur = pd.read_parquet(reference), pd.read_parquet(current)
    rss_loaded = _rss_mb()
    start, cpu = time.perf_counter(), time.process_time()
    snapshot = Report([DataDriftPreset()], include_tests=True).run(cur, ref)
    html = snapshot.get_html_str(as_iframe=False)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    results = column_results_from_snapshot(json.loads(snapshot.json()))
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "verdicts": {k: v["drifted"] for k, v in results.items()},
        "scores": {k: v["score"] for k, v in results.items()},
        "html_bytes": len(html),
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": _rss_mb(),
    }


def run_operator(reference: str, current: str, outdir: str) -> dict:
    import evidently  # noqa: F401  (import cost excluded, as for the raw run)

    from airflow_mlops.core import drift
    from airflow_mlops.core.storage import Storage

    storage = Storage()
    rss_imported = _rss_mb()
    start, cpu = time.perf_counter(), time.process_time()
    result = drift.compute_drift(reference, current, storage, drift.DriftSettings())
    storage.write_text(f"{outdir}/drift_report.html", result.html)
    storage.write_text(f"{outdir}/drift_summary.json", json.dumps(result.summary, indent=2))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    columns = result.summary["columns"]
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "verdicts": {k: v["drifted"] for k, v in columns.items()},
        "scores": {k: v["score"] for k, v in columns.items()},
        "methods": {k: v["method"] for k, v in columns.items()},
        "sampling": result.summary["sampling"],
        "rss_after_import_mb": rss_imported,
        "peak_rss_mb": _rss_mb(),
    }


def in_subprocess(mode: str, *args: str) -> dict:
    return run_json([sys.executable, __file__, "--child", mode, *args])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        mode, *rest = args.child
        result = run_raw(*rest) if mode == "raw" else run_operator(*rest)
        print(json.dumps(result))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-drift-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        data = generate(workdir, args.rows)
        print(
            f"generated 2 x {args.rows:,} rows x {len(data['columns'])} columns "
            f"({data['data_bytes'] / 1e6:.0f} MB in memory) in {time.perf_counter() - t0:.0f} s; "
            f"shifted: {', '.join(data['shifted'])}"
        )
        operator = in_subprocess("operator", data["reference"], data["current"], str(workdir))
        raw = in_subprocess("raw", data["reference"], data["current"])
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    columns = data["columns"]
    same = [c for c in columns if raw["verdicts"].get(c) == operator["verdicts"].get(c)]
    expected = set(data["shifted"])
    data_mb = data["data_bytes"] / 2**20
    print()
    print(f"{'column':8} {'method':13} {'raw score':>10} {'op score':>10}  raw   op  shifted")
    for c in columns:
        print(
            f"{c:8} {operator['methods'][c]:13} {raw['scores'][c]:10.4f} "
            f"{operator['scores'][c]:10.4f}  {'D' if raw['verdicts'][c] else '-':4} "
            f"{'D' if operator['verdicts'][c] else '-':3}  {'yes' if c in expected else ''}"
        )
    sampling = operator["sampling"]
    print()
    print(
        f"sample: {sampling['reference']['sampled_rows']:,} of {sampling['reference']['rows']:,} "
        f"rows per side, {sampling['reference']['method']}, seed {sampling['policy']['seed']}"
    )
    print("                                           wall clock    CPU time")
    print(
        f"raw Evidently DataDriftPreset, full data : {raw['seconds']:8.1f} s  "
        f"{raw['cpu_seconds']:8.1f} s"
    )
    print(
        f"operator drift path (read..report)       : {operator['seconds']:8.1f} s  "
        f"{operator['cpu_seconds']:8.1f} s"
    )
    ratio = raw["seconds"] / operator["seconds"]
    cpu_ratio = raw["cpu_seconds"] / operator["cpu_seconds"]
    print(
        f"speed-up                                 : {ratio:8.1f} x  {cpu_ratio:8.1f} x"
        "   (goal >= 4x; CPU time is the fairer figure on a shared machine)"
    )
    print(
        f"same verdict                             : {len(same)}/{len(columns)} = "
        f"{len(same) / len(columns):.0%}   (goal >= 95%)"
    )
    print(
        f"verdicts right vs the planted shifts     : raw "
        f"{sum(raw['verdicts'][c] == (c in expected) for c in columns)}/{len(columns)}, operator "
        f"{sum(operator['verdicts'][c] == (c in expected) for c in columns)}/{len(columns)}"
    )
    print(
        f"data size in memory (both sides)         : {data_mb:8.0f} MiB (2x = {2 * data_mb:.0f} MiB)"
    )
    print(
        f"operator peak RSS (whole process)        : {operator['peak_rss_mb']:8.0f} MiB "
        f"= {operator['peak_rss_mb'] / data_mb:.2f}x data   (goal <= 2x); "
        f"after imports {operator['rss_after_import_mb']:.0f} MiB"
    )
    print(
        f"raw Evidently peak RSS (whole process)   : {raw['peak_rss_mb']:8.0f} MiB "
        f"= {raw['peak_rss_mb'] / data_mb:.2f}x data; after loading the frames "
        f"{raw['rss_after_load_mb']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
