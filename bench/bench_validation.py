"""Benchmark: DataValidationOperator vs raw Great Expectations on the same data.

1,000,000 rows x 20 columns (parquet), a 20-expectation suite, result format SUMMARY.
Each measurement runs in its own fresh process, so peak RSS is per contender, and imports
are excluded from the timings (both sides pay the same GX import). Modes:

* ``operator``: ``DataValidationOperator.execute()``: read bytes, sha256, parse parquet,
  validate, build the summary, write the full JSON report;
* ``raw_gx``: ``pandas.read_parquet`` + an ephemeral GX context + the same suite, the
  result converted to JSON (what a hand-written GX task does);
* ``core_in_memory`` / ``raw_gx_in_memory``: the validation alone on a frame already in
  memory (shows where any overhead comes from).

Usage: ``.venv/bin/python bench/bench_validation.py [--rows N] [--repeats R]``.
Goal: operator time / raw GX time <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("operator", "raw_gx", "core_in_memory", "raw_gx_in_memory")


def make_data(path: Path, rows: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(42)
    columns = {}
    for i in range(10):
        columns[f"f{i}"] = rng.normal(i, 1 + i, rows)
    for i in range(5):
        columns[f"n{i}"] = rng.integers(0, 1000 * (i + 1), rows)
    for i in range(4):
        columns[f"s{i}"] = rng.choice([f"cat_{k}" for k in range(5 + i)], rows)
    columns["label"] = (rng.random(rows) < 0.3).astype("int64")
    pd.DataFrame(columns).to_parquet(path, index=False)


def suite() -> list[dict]:
    """20 expectations touching every column kind."""
    between = [
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": f"f{i}", "min_value": -1000, "max_value": 1000},
        }
        for i in range(6)
    ]
    not_null = [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": c}}
        for c in ("f6", "f7", "n0", "n1", "s0", "label")
    ]
    in_set = [
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": f"s{i}", "value_set": [f"cat_{k}" for k in range(5 + i)]},
        }
        for i in range(3)
    ]
    table = [
        {
            "type": "expect_table_row_count_to_be_between",
            "kwargs": {"min_value": 1, "max_value": 10**8},
        },
        {
            "type": "expect_table_columns_to_match_set",
            "kwargs": {
                "column_set": [
                    *(f"f{i}" for i in range(10)),
                    *(f"n{i}" for i in range(5)),
                    *(f"s{i}" for i in range(4)),
                    "label",
                ]
            },
        },
    ]
    other = [
        {
            "type": "expect_column_values_to_be_in_type_list",
            "kwargs": {"column": "n2", "type_list": ["int32", "int64"]},
        },
        {
            "type": "expect_column_mean_to_be_between",
            "kwargs": {"column": "label", "min_value": 0.1, "max_value": 0.5},
        },
        {
            "type": "expect_column_max_to_be_between",
            "kwargs": {"column": "n3", "min_value": 0, "max_value": 10**6},
        },
    ]
    expectations = [*between, *not_null, *in_set, *table, *other]
    assert len(expectations) == 20
    return expectations


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def raw_gx_validate(frame, expectations: list[dict]) -> bool:
    """What a hand-written GX 1.x task does: ephemeral context, suite, run, result to JSON."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            progress_bars=ProgressBarsConfig(globally=False),
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        ),
    )
    batch = (
        context.data_sources.add_pandas("ds")
        .add_dataframe_asset("a")
        .add_batch_definition_whole_dataframe("b")
    )
    gx_suite = context.suites.add(
        gx.ExpectationSuite(
            name="bench",
            expectations=[ExpectationConfiguration(**e).to_domain_obj() for e in expectations],
        )
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="v", data=batch, suite=gx_suite)
    )
    result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
    json.dumps(result.to_json_dict())
    return bool(result.success)


def warm_up(data: Path, expectations: list[dict]) -> None:
    """Same for every mode: GX and pyarrow initialise lazily on first use; keep that, like
    the imports, outside the clock."""
    import pyarrow.parquet as pq

    from airflow_mlops.core.suite import parse_suite
    from airflow_mlops.core.validation import validate_frame

    tiny = pq.ParquetFile(data).read_row_group(0).slice(0, 1000).to_pandas()
    raw_gx_validate(tiny, expectations)
    validate_frame(tiny, parse_suite(expectations))


def run_mode(mode: str, data: Path, suite_file: Path, report: Path) -> dict:
    """Runs in a child process; prints one JSON line."""
    import logging

    import pandas as pd

    from airflow_mlops.core.suite import parse_suite
    from airflow_mlops.core.validation import validate_frame
    from airflow_mlops.operators.validation import DataValidationOperator

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    expectations = json.loads(suite_file.read_text())["expectations"]
    warm_up(data, expectations)
    frame = pd.read_parquet(data) if mode.endswith("in_memory") else None
    rss_before = peak_rss_mb()

    start = time.perf_counter()
    if mode == "operator":
        op = DataValidationOperator(
            task_id="validate", data_uri=str(data), suite=str(suite_file), report_uri=str(report)
        )
        success = op.execute({})["success"]
    elif mode == "raw_gx":
        success = raw_gx_validate(pd.read_parquet(data), expectations)
    elif mode == "core_in_memory":
        success = validate_frame(frame, parse_suite(expectations)).success
    else:
        success = raw_gx_validate(frame, expectations)
    elapsed = time.perf_counter() - start
    return {
        "mode": mode,
        "seconds": elapsed,
        "success": bool(success),
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
    }


def measure(mode: str, data: Path, suite_file: Path, report: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(data), str(suite_file), str(report)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--child", nargs=4, metavar=("MODE", "DATA", "SUITE", "REPORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        mode, data, suite_file, report = args.child
        print(json.dumps(run_mode(mode, Path(data), Path(suite_file), Path(report))))
        return

    with tempfile.TemporaryDirectory(prefix="bench-validation-") as tmp:
        work = Path(tmp)
        data, suite_file, report = work / "data.parquet", work / "suite.json", work / "report.json"
        os.environ.setdefault("AIRFLOW_HOME", str(work / "airflow"))
        make_data(data, args.rows)
        suite_file.write_text(json.dumps({"name": "bench", "expectations": suite()}))
        print(
            f"data: {args.rows:,} rows x 20 columns, {data.stat().st_size / 1e6:.1f} MB parquet; 20 expectations; SUMMARY"
        )
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        for _ in range(args.repeats):  # interleaved, so machine load hits every mode alike
            for mode in MODES:
                runs[mode].append(measure(mode, data, suite_file, report))
        print(f"{'mode':<18} {'median s':>9} {'min s':>7} {'peak RSS MB':>12}  success")
        medians = {}
        for mode in MODES:
            seconds = [r["seconds"] for r in runs[mode]]
            medians[mode] = statistics.median(seconds)
            rss = max(r["peak_rss_mb"] for r in runs[mode])
            ok = all(r["success"] for r in runs[mode])
            print(f"{mode:<18} {medians[mode]:>9.2f} {min(seconds):>7.2f} {rss:>12.0f}  {ok}")
        ratio = medians["operator"] / medians["raw_gx"]
        ratio_mem = medians["core_in_memory"] / medians["raw_gx_in_memory"]
        print(f"ratio operator / raw GX (read + validate): {ratio:.2f}  (goal <= 1.2)")
        print(f"ratio core / raw GX (in memory, validate only): {ratio_mem:.2f}")


if __name__ == "__main__":
    main()
