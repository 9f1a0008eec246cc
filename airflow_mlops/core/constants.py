"""Names and defaults shared by the operators and the heavy core modules.

Standard library only and no imports at all: operators and factories read these at DAG-parse
time, while :mod:`airflow_mlops.core.drift_sampling` and :mod:`airflow_mlops.core.performance`
(which load pandas) use the same values at run time. One definition each, so no copy can
drift away from it.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "DEFAULT_DRIFT_SHARE",
    "DEFAULT_MAX_ROWS_PER_SIDE",
    "DEFAULT_MIN_LABELLED_ROWS",
    "DEFAULT_TOLERANCE",
    "DRIFT_REPORT_NAME",
    "DRIFT_SUMMARY_NAME",
    "PERFORMANCE_REPORT_NAME",
    "TOLERANCE_MODES",
]

#: Share of drifted columns at which the dataset counts as drifted.
DEFAULT_DRIFT_SHARE = 0.5
#: Rows per side (reference, current) that go to Evidently at most: a drift check's sample cap.
DEFAULT_MAX_ROWS_PER_SIDE = 50_000
#: Fewer labelled rows than this give no performance verdict.
DEFAULT_MIN_LABELLED_ROWS = 100
#: Largest accepted drop of the watched metric (in ``tolerance_mode`` units).
DEFAULT_TOLERANCE = 0.05
#: How a performance drop is measured: in metric units, or as a share of the baseline.
TOLERANCE_MODES: tuple[str, ...] = ("absolute", "relative")
#: File names of the monitoring reports, in the report folder and on the champion's MLflow run.
DRIFT_REPORT_NAME = "drift_report.html"
DRIFT_SUMMARY_NAME = "drift_summary.json"
PERFORMANCE_REPORT_NAME = "performance.json"
#: Rows scored per batch-prediction chunk.
DEFAULT_CHUNK_ROWS = 50_000
