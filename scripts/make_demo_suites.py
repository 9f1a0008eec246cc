"""Write the shipped GX suites include/suites/<dataset>.json with airflow-mlops' infer_suite.

The contract is inferred from every well-formed batch (reference, clean, drifted) with a
0.5 range margin, and the row-count upper bound is opened: training data grows over time and
the drifted subpopulation is valid data. Schema breaks (missing columns, wrong types, nulls in
complete columns) still fail it. Run: ``.venv/bin/python scripts/make_demo_suites.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from airflow_mlops.core.suite_inference import infer_suite

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    for dataset in ("breast_cancer", "diabetes"):
        data = ROOT / "include" / "data" / dataset
        frame = pd.concat(
            [pd.read_parquet(data / f"{b}.parquet") for b in ("reference", "clean", "drifted")],
            ignore_index=True,
        )
        suite = infer_suite(frame, name=dataset, margin=0.5)
        for expectation in suite["expectations"]:
            if expectation["type"] == "expect_table_row_count_to_be_between":
                expectation["kwargs"] = {"min_value": 50, "max_value": None}
        out = ROOT / "include" / "suites" / f"{dataset}.json"
        out.write_text(json.dumps(suite, indent=2) + "\n")
        print(f"{out.relative_to(ROOT)}: {len(suite['expectations'])} expectations")


if __name__ == "__main__":
    main()
