"""The whole drift check of new data against the champion's reference, as one call.

:func:`check_champion_drift` is what ``DriftReportOperator`` runs: compute the drift
(:func:`airflow_mlops.core.drift.compute_drift`), write the HTML report and the JSON summary,
attach both to the champion's MLflow run, overwrite the model's ``mlops.last_drift`` tag and
build the small XCom result. :func:`reference_for` picks the reference table. The operator
keeps only what Airflow knows: the rendered parameters, where reports go, the task's
identity, skipping and the retrain signal.

Import-light at module level (standard library and light core modules): the heavy drift
module is imported when the check runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.constants import DRIFT_REPORT_NAME, DRIFT_SUMMARY_NAME
from airflow_mlops.core.drift_verdict import TAG_LAST_DRIFT, drift_reason, last_drift_tag
from airflow_mlops.core.errors import ConfigError, MlopsError
from airflow_mlops.core.lineage import TAG_REFERENCE_URI

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.champion import ChampionFacts
    from airflow_mlops.core.data_window import DataWindow
    from airflow_mlops.core.drift import DriftSettings
    from airflow_mlops.core.storage import Storage

__all__ = [
    "TRAINING_DRIFT_ARTIFACT",
    "DriftOutcome",
    "NothingCheckedError",
    "NothingToCompareError",
    "check_champion_drift",
    "reference_for",
    "training_data_drift",
]

log = logging.getLogger(__name__)

#: The evaluate task's record of :func:`training_data_drift` on the challenger's run.
TRAINING_DRIFT_ARTIFACT = "mlops/training_drift.json"
# Rows per side Evidently sees for the training-data comparison: both references are already
# samples of training data, and this is evidence for a reviewer, not a monitoring verdict.
TRAINING_DRIFT_ROWS_PER_SIDE = 5_000
TRAINING_DRIFT_TOP_COLUMNS = 10


class NothingToCompareError(MlopsError):
    """No champion yet and no explicit reference: there is nothing to compare with."""


class NothingCheckedError(MlopsError):
    """A monitoring run whose every check was skipped (no champion of any model it watches):
    it fails rather than end green having checked nothing."""


def reference_for(
    champion: ChampionFacts | None, reference_uri: str | None, model_name: str
) -> str:
    """The explicit ``reference_uri``, else the champion's recorded reference table.

    :class:`NothingToCompareError` without either (a monitoring DAG may run before the first
    model exists); :class:`ConfigError` when the champion's run has no reference tag.
    """
    explicit = (reference_uri or "").strip()
    if explicit:
        return explicit
    if champion is None:
        raise NothingToCompareError(
            f"{model_name} has no champion yet and no reference_uri was given: "
            "there is nothing to compare the new data with."
        )
    if not champion.reference_uri:
        raise ConfigError(
            f"No reference_uri given and the champion's run {champion.run_id} has no "
            f"{TAG_REFERENCE_URI} tag: pass reference_uri."
        )
    return champion.reference_uri


@dataclass(frozen=True)
class DriftOutcome:
    """The XCom ``result``, the verdict, and whether the reports went to the champion's run."""

    result: dict[str, Any]
    drifted: bool
    attached: bool

    @property
    def summary_uri(self) -> str:
        return str(self.result["summary_uri"])


def check_champion_drift(
    champion: ChampionFacts | None,
    storage: Storage,
    current_uri: str,
    *,
    model_name: str,
    reference_uri: str,
    settings: DriftSettings,
    html_uri: str,
    summary_uri: str,
    mlflow_session: Callable[[], AbstractContextManager[MlflowClient]],
    mlflow_folder: str | None,
    airflow_task: Mapping[str, Any],
    filesystem: Callable[[str], AbstractFileSystem] | None = None,
    window: DataWindow | None = None,
    window_end: str | None = None,
    row_filter: Any = None,
    reference_filter: Any = None,
) -> DriftOutcome:
    """Drift of ``current_uri`` against ``reference_uri``, its reports and its records.

    With ``filesystem`` (a URI's fsspec filesystem), either side may be a dataset: a file,
    folder or prefix (Hive partitions included) or glob; the current side is read within
    ``window`` (default: all of it) ending at ``window_end`` (default: the newest
    partition). Without it, each side is one file read through ``storage``. ``row_filter``
    and ``reference_filter`` (with ``filesystem``; e.g.
    :func:`airflow_mlops.core.segments.segment_row_filter`) keep only the matching rows of
    the current and the reference side: one segment's rows.

    The report goes to ``html_uri`` and the summary to ``summary_uri``; with a champion run
    and an ``mlflow_folder`` both are also logged on that run (the same folder on every try,
    so a retry overwrites). With a champion, its model's ``mlops.last_drift`` tag gets the
    verdict. Raises what :func:`~airflow_mlops.core.drift.compute_drift` raises
    (``EmptyBatchError`` for an empty current batch, ``SchemaDriftError``, ...), before
    anything is written.
    """
    from airflow_mlops.core.drift import compute_drift, small_summary
    from airflow_mlops.core.drift_sampling import TableSource

    log.info(
        "Drift of %s vs %s on %s (sample cap %s rows per side, seed %s)",
        current_uri,
        reference_uri,
        list(settings.columns) if settings.columns else "all columns",
        settings.sampling.max_rows_per_side,
        settings.sampling.seed,
    )
    sources = None
    if (row_filter is not None or reference_filter is not None) and filesystem is None:
        raise ConfigError("a row filter (segment) needs the data's filesystem to read with.")
    if filesystem is not None:
        reference = TableSource(
            reference_uri,
            storage,
            filesystem=filesystem(reference_uri),
            row_filter=reference_filter,
        )
        current = TableSource(
            current_uri,
            storage,
            filesystem=filesystem(current_uri),
            window=window,
            window_end=window_end,
            row_filter=row_filter,
        )
        if current.files:
            log.info(
                "Current data: %d file(s) of %s (%s)",
                len(current.files),
                current_uri,
                window.describe() if window else "all partitions",
            )
        sources = (reference, current)
    drift = compute_drift(reference_uri, current_uri, storage, settings, sources=sources)
    summary = drift.summary
    storage.write_text(html_uri, drift.html)
    # Not write_json: it sorts keys, and the columns' order is the data's order.
    storage.write_text(summary_uri, json.dumps(summary, indent=2, allow_nan=False))
    log.info("Drift report written to %s, summary to %s", html_uri, summary_uri)
    report_artifact = None
    if champion is not None and champion.run_id and mlflow_folder:
        report_artifact = f"{mlflow_folder}/{DRIFT_REPORT_NAME}"
        with mlflow_session() as client:
            client.log_text(champion.run_id, drift.html, report_artifact)
            client.log_dict(champion.run_id, summary, f"{mlflow_folder}/{DRIFT_SUMMARY_NAME}")
        log.info("Report attached to MLflow run %s under %s/", champion.run_id, mlflow_folder)
    if champion is not None:
        _record_last_drift(
            mlflow_session, champion, summary, report_artifact, html_uri, airflow_task
        )
    reason = drift_reason(summary)
    log.info("%s", reason)
    result = {
        "model_name": model_name,
        "champion_version": champion.version if champion else None,
        "mlflow_run_id": champion.run_id if champion else None,
        "reference_uri": reference_uri,
        "current_uri": current_uri,
        "report_uri": html_uri,
        "summary_uri": summary_uri,
        **small_summary(summary),
        "reason": reason,
    }
    return DriftOutcome(result=result, drifted=drift.drifted, attached=report_artifact is not None)


def _record_last_drift(
    mlflow_session: Callable[[], AbstractContextManager[MlflowClient]],
    champion: ChampionFacts,
    summary: Mapping[str, Any],
    report_artifact: str | None,
    report_uri: str,
    airflow_task: Mapping[str, Any],
) -> None:
    """Overwrite the model's ``mlops.last_drift`` tag with this verdict (a retry rewrites
    the same task's verdict), so the MLOps page reads it without listing artifacts."""
    from mlflow.exceptions import MlflowException

    value = last_drift_tag(
        summary,
        at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        airflow_task=airflow_task,
        mlflow_run_id=champion.run_id if report_artifact else None,
        report_artifact=report_artifact,
        report_uri=report_uri,
        champion_version=champion.version,
    )
    try:
        with mlflow_session() as client:
            client.set_registered_model_tag(champion.model_name, TAG_LAST_DRIFT, value)
    except MlflowException as err:
        # The XCom and the reports hold the verdict; the tag only speeds up the page.
        log.warning("Could not tag %s with the drift verdict: %s", champion.model_name, err)


def training_data_drift(
    storage: Storage,
    challenger_reference_uri: str,
    champion_reference_uri: str,
    *,
    max_rows_per_side: int = TRAINING_DRIFT_ROWS_PER_SIDE,
    top: int = TRAINING_DRIFT_TOP_COLUMNS,
) -> dict[str, Any]:
    """Drift of the challenger's training reference against the champion's, as small JSON.

    The same computation as monitoring (:func:`~airflow_mlops.core.drift.compute_drift`:
    column plan from the full files, Evidently on a seeded sample of ``max_rows_per_side``)
    on the columns both references have; columns only one side has are listed, not tested.
    The result keeps the verdict, the ``top`` drifted columns and the rows on each side.
    """
    from airflow_mlops.core.drift import DriftSettings, compute_drift
    from airflow_mlops.core.drift_sampling import SamplingPolicy, TableSource
    from airflow_mlops.core.errors import DataError

    champion = TableSource(champion_reference_uri, storage)
    challenger = TableSource(challenger_reference_uri, storage)
    champion_kinds, challenger_kinds = champion.kinds(), challenger.kinds()
    common = [c for c in challenger_kinds if c in champion_kinds]
    if not common:
        raise DataError("the two training references share no column: nothing to compare")
    settings = DriftSettings(
        columns=tuple(common), sampling=SamplingPolicy(max_rows_per_side=max_rows_per_side)
    )
    summary = compute_drift(
        champion_reference_uri,
        challenger_reference_uri,
        storage,
        settings,
        sources=(champion, challenger),
        html=False,
    ).summary
    columns = summary["columns"]
    drifted = [
        {"column": name, **{k: columns[name].get(k) for k in ("method", "score", "threshold")}}
        for name in summary["drifted_columns"]
    ]
    methods: dict[str, int] = {}
    for entry in columns.values():
        if entry.get("method"):
            methods[entry["method"]] = methods.get(entry["method"], 0) + 1
    sampling = summary["sampling"]
    return {
        "status": "computed",
        "dataset": dict(summary["dataset"]),
        "drifted_columns": drifted[:top],
        "drifted_columns_truncated": len(drifted) > top,
        "methods": methods,
        "rows": {
            "challenger": sampling["current"]["rows"],
            "champion": sampling["reference"]["rows"],
            "sampled_per_side": max_rows_per_side,
        },
        "only_in_challenger": [c for c in challenger_kinds if c not in champion_kinds][:top],
        "only_in_champion": [c for c in champion_kinds if c not in challenger_kinds][:top],
        "not_tested_columns": dict(list(summary["not_tested_columns"].items())[:top]),
        "engine": summary["engine"],
    }
