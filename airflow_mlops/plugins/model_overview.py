"""What the MLOps page shows, read from the MLflow model registry (no Airflow import).

For every registered model: the ``@champion`` and ``@challenger`` versions with their key
holdout metrics, the last data-validation and drift verdicts with their reports, the alias
history and links to the MLflow UI. Everything is read; nothing is written.

Where the facts come from (the conventions of the rest of the provider):

- aliases ``champion`` / ``challenger`` and the history summary in the registered-model tag
  ``mlops.alias_history`` (:mod:`airflow_mlops.core.registry`);
- key metrics: the ``holdout_<metric>`` metrics of the version's training run
  (:mod:`airflow_mlops.core.training`, :mod:`airflow_mlops.core.metrics`);
- drift: the newest report the drift operator attached to the champion's run
  (``monitoring/drift/<dag>/<run>/<task>/drift_summary.json`` and ``drift_report.html``,
  :mod:`airflow_mlops.operators.monitoring`), and the registered-model tag
  ``mlops.last_retrain_signal``;
- verdicts recorded as tags, for runs and models created outside the operators:
  ``mlops.<kind>.verdict`` / ``.success`` / ``.detected`` and ``mlops.<kind>.report_uri``
  (``<kind>`` is ``validation`` or ``drift``) on the newest run tagged ``mlops.stage=<kind>``
  and ``mlops.model_name=<model>``, else on the champion version and its training run;
- the Airflow DAGs that trained the versions (``mlops.airflow.dag_id``), where the page looks
  for the last data validation (:mod:`airflow_mlops.plugins.airflow_facts`).

A missing piece of information is ``None`` (shown as "—"), never an error: a model
registered by hand, without any of these tags, still gets its row.

``mlflow`` is only imported by the functions that need it, so importing this module is cheap.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.lineage import TAG_DAG_ID, TAG_MODEL_NAME, TAG_STAGE
from airflow_mlops.links.urls import mlflow_page_url

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

TAG_LAST_RETRAIN_SIGNAL = "mlops.last_retrain_signal"  # core.drift.TAG_LAST_RETRAIN_SIGNAL
# Where DriftReportOperator attaches its report to the champion's run (operators.monitoring).
DRIFT_ARTIFACT_ROOT = "monitoring/drift"
DRIFT_SUMMARY_NAME = "drift_summary.json"
DRIFT_REPORT_NAME = "drift_report.html"
#: Artifact folders the page may serve from a run (reports only, never the model).
REPORT_ARTIFACT_ROOTS = ("monitoring/", "validation/")
HOLDOUT_METRIC_PREFIX = "holdout_"
CHECK_KINDS: tuple[str, ...] = ("validation", "drift")

#: Metrics shown first, in this order, when the run has them (core.metrics names).
PREFERRED_METRICS: tuple[str, ...] = (
    "accuracy",
    "f1",
    "roc_auc",
    "precision",
    "recall",
    "log_loss",
    "rmse",
    "mae",
    "r2",
)
MAX_KEY_METRICS = 6
MAX_HISTORY_EVENTS = 20
MAX_EXPERIMENTS_SEARCHED = 100

_TRUE = {"true", "1", "yes", "passed", "pass", "success", "ok"}
_FALSE = {"false", "0", "no", "failed", "fail", "failure"}


@dataclass
class Verdict:
    """The outcome of one data-validation or drift check."""

    kind: str
    verdict: str | None = None
    ok: bool | None = None  # True: passed / no drift; False: failed / drift; None: unknown
    at: str | None = None
    report_uri: str | None = None
    run_id: str | None = None
    experiment_id: str | None = None
    # Set when the verdict was read from a model version (and its run), not a check run.
    model_version: str | None = None
    detail: str | None = None
    # The report as an artifact of ``run_id`` (served by the page) instead of a URI.
    report_artifact: str | None = None
    # The Airflow task instance that produced the verdict: dag_id, run_id, task_id, map_index.
    airflow_task: dict[str, Any] | None = None
    # What else to know, e.g. that newer runs skipped this check.
    note: str | None = None


@dataclass
class VersionInfo:
    """One model version holding an alias."""

    alias: str
    version: str
    run_id: str | None = None
    experiment_id: str | None = None
    created_at: str | None = None
    status: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ModelOverview:
    """Everything the page shows for one registered model."""

    name: str
    description: str | None = None
    versions: list[VersionInfo] = field(default_factory=list)
    checks: dict[str, Verdict] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    lineage_dag_ids: list[str] = field(default_factory=list)
    retrain_signal: dict[str, Any] | None = None
    error: str | None = None

    def version(self, alias: str) -> VersionInfo | None:
        return next((v for v in self.versions if v.alias == alias), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- pure helpers ---------------------------------------------------------------------------


def iso_from_millis(millis: Any) -> str | None:
    """MLflow timestamps (ms since the epoch) as ISO 8601 UTC, to the second."""
    try:
        value = int(millis)
    except (TypeError, ValueError):
        return None
    if value <= 0:
        return None
    return datetime.fromtimestamp(value / 1000, timezone.utc).isoformat(timespec="seconds")


def key_metrics(metrics: Mapping[str, float], limit: int = MAX_KEY_METRICS) -> dict[str, float]:
    """The holdout metrics worth a glance: preferred names first, then the other holdout ones.

    Falls back to the run's other metrics when it logged no ``holdout_*`` metric (a model
    trained outside the provider).
    """
    holdout = {
        k.removeprefix(HOLDOUT_METRIC_PREFIX): float(v)
        for k, v in metrics.items()
        if k.startswith(HOLDOUT_METRIC_PREFIX)
    }
    source = holdout or {k: float(v) for k, v in metrics.items()}
    ordered = [m for m in PREFERRED_METRICS if m in source]
    ordered += sorted(k for k in source if k not in ordered)
    return {k: source[k] for k in ordered[:limit]}


def _as_bool(value: Any) -> bool | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def verdict_from_tags(kind: str, tags: Mapping[str, str]) -> Verdict | None:
    """A :class:`Verdict` from ``mlops.<kind>.*`` tags, or None when there is none.

    ``mlops.<kind>.verdict`` is free text shown as is; ``mlops.<kind>.success`` (validation)
    and ``mlops.<kind>.detected`` (drift: true means drift) give the pass/fail colour.
    """
    prefix = f"mlops.{kind}."
    verdict = tags.get(f"{prefix}verdict")
    success = _as_bool(tags.get(f"{prefix}success"))
    detected = _as_bool(tags.get(f"{prefix}detected"))
    report_uri = tags.get(f"{prefix}report_uri") or tags.get(f"{prefix}summary_uri")
    if verdict is None and success is None and detected is None and not report_uri:
        return None
    ok = success if success is not None else (None if detected is None else not detected)
    if ok is None and verdict is not None:
        lowered = verdict.strip().lower()
        if lowered in _TRUE or lowered in {"no drift", "no_drift"}:
            ok = True
        elif lowered in _FALSE or lowered in {"drift", "drift detected", "drifted"}:
            ok = False
    if verdict is None and ok is not None:
        if kind == "drift":
            verdict = "no drift" if ok else "drift detected"
        else:
            verdict = "passed" if ok else "failed"
    return Verdict(
        kind=kind, verdict=verdict, ok=ok, at=tags.get(f"{prefix}at"), report_uri=report_uri
    )


def history_events(raw: str | None, limit: int = MAX_HISTORY_EVENTS) -> list[dict[str, Any]]:
    """The ``mlops.alias_history`` summary, newest first; [] when absent or unreadable."""
    if not raw:
        return []
    try:
        events = json.loads(raw)
    except json.JSONDecodeError:
        log.warning("Tag mlops.alias_history is not JSON; ignoring it.")
        return []
    if not isinstance(events, list):
        return []
    kept = [e for e in events if isinstance(e, dict)]
    return list(reversed(kept))[:limit]


def _json_object(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


_STAMP = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2})[_:](\d{2})[_:](\d{2})")


def iso_from_run_folder(name: str) -> str | None:
    """``manual__2026-11-22T08_54_52.79_00_00`` (a path-safe Airflow run id) -> ISO time."""
    found = _STAMP.search(name)
    if not found:
        return None
    day, hour, minute, second = found.groups()
    return f"{day}T{hour}:{minute}:{second}+00:00"


def drift_verdict_from_summary(summary: Mapping[str, Any]) -> Verdict:
    """A drift :class:`Verdict` from the summary written by the drift operator."""
    dataset = summary.get("dataset") if isinstance(summary.get("dataset"), Mapping) else {}
    drifted = dataset.get("drifted") if isinstance(dataset.get("drifted"), bool) else None
    detail = None
    if dataset.get("tested_columns") is not None:
        detail = (
            f"{dataset.get('drifted_columns', '?')}/{dataset['tested_columns']} columns drifted"
        )
    verdict = None if drifted is None else ("drift detected" if drifted else "no drift")
    return Verdict(
        kind="drift", verdict=verdict, ok=None if drifted is None else not drifted, detail=detail
    )


def is_report_artifact(path: str) -> bool:
    """Only report folders may be served from a run, and no path tricks."""
    parts = path.split("/")
    return path.startswith(REPORT_ARTIFACT_ROOTS) and ".." not in parts and "" not in parts


# -- MLflow UI and report links -------------------------------------------------------------


# The same page addresses as the task's extra links (airflow_mlops.links.urls).


def model_url(base: str | None, name: str) -> str | None:
    return mlflow_page_url(base, ("models", name))


def version_url(base: str | None, name: str, version: str) -> str | None:
    return mlflow_page_url(base, ("models", name), ("versions", version))


def run_url(base: str | None, experiment_id: str | None, run_id: str | None) -> str | None:
    return mlflow_page_url(base, ("experiments", experiment_id), ("runs", run_id))


# -- reading the registry -------------------------------------------------------------------


def _search_registered_models(client: MlflowClient, limit: int) -> list[Any]:
    from airflow_mlops.core.registry import LOCK_SUFFIX

    models: list[Any] = []
    token = None
    while len(models) < limit:
        page = client.search_registered_models(
            max_results=min(100, limit), order_by=["name ASC"], page_token=token
        )
        # The promotion lock is itself a registered model: it is not a model to show.
        models.extend(m for m in page if not m.name.endswith(LOCK_SUFFIX))
        token = page.token
        if not token:
            break
    return models[:limit]


def _version_info(
    client: MlflowClient, name: str, alias: str, version: str
) -> tuple[VersionInfo, dict[str, str]]:
    """The version's facts, and the tags of the version and of its run (for verdicts)."""
    mv = client.get_model_version(name, version)
    info = VersionInfo(
        alias=alias,
        version=str(mv.version),
        run_id=mv.run_id or None,
        created_at=iso_from_millis(mv.creation_timestamp),
        status=str(mv.status) if mv.status is not None else None,
    )
    tags: dict[str, str] = {}
    if mv.run_id:
        run = client.get_run(mv.run_id)
        info.experiment_id = run.info.experiment_id
        info.metrics = key_metrics(run.data.metrics or {})
        tags.update(run.data.tags or {})
    tags.update(mv.tags or {})  # a tag on the version wins over its run's
    return info, tags


def _experiment_ids(client: MlflowClient) -> list[str]:
    experiments = client.search_experiments(max_results=MAX_EXPERIMENTS_SEARCHED)
    return [e.experiment_id for e in experiments]


def _latest_check_run(
    client: MlflowClient, experiment_ids: list[str], name: str, kind: str
) -> Verdict | None:
    if not experiment_ids or "'" in name:
        return None
    runs = client.search_runs(
        experiment_ids=experiment_ids,
        filter_string=f"tags.`{TAG_STAGE}` = '{kind}' AND tags.`{TAG_MODEL_NAME}` = '{name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    run = runs[0]
    verdict = verdict_from_tags(kind, run.data.tags or {}) or Verdict(kind=kind)
    verdict.run_id = run.info.run_id
    verdict.experiment_id = run.info.experiment_id
    verdict.at = verdict.at or iso_from_millis(run.info.end_time or run.info.start_time)
    return verdict


def _subfolders(client: MlflowClient, run_id: str, path: str) -> list[str]:
    return [f.path for f in client.list_artifacts(run_id, path) if f.is_dir]


def latest_drift_artifact(client: MlflowClient, run_id: str) -> Verdict | None:
    """The newest drift report attached to ``run_id`` by the drift operator, if any.

    Layout: ``monitoring/drift/<dag>/<run>/<task>[/<map_index>]/drift_summary.json``; the
    newest is the one whose Airflow run id carries the latest timestamp.
    """
    folders: list[str] = []
    for dag_folder in _subfolders(client, run_id, DRIFT_ARTIFACT_ROOT):
        for run_folder in _subfolders(client, run_id, dag_folder):
            folders.extend(_subfolders(client, run_id, run_folder))
    if not folders:
        return None
    newest = max(folders, key=lambda f: (iso_from_run_folder(f.split("/")[3]) or "", f))
    files = {Path(f.path).name: f.path for f in client.list_artifacts(run_id, newest)}
    if DRIFT_SUMMARY_NAME not in files:  # a mapped task: one level deeper
        deeper = _subfolders(client, run_id, newest)
        if not deeper:
            return None
        newest = sorted(deeper)[-1]
        files = {Path(f.path).name: f.path for f in client.list_artifacts(run_id, newest)}
    if DRIFT_SUMMARY_NAME not in files:
        return None
    with tempfile.TemporaryDirectory(prefix="mlops-page-") as tmp:
        local = client.download_artifacts(run_id, files[DRIFT_SUMMARY_NAME], tmp)
        summary = json.loads(Path(local).read_text())
    verdict = drift_verdict_from_summary(summary)
    verdict.at = iso_from_run_folder(newest.split("/")[3])
    verdict.run_id = run_id
    verdict.report_artifact = files.get(DRIFT_REPORT_NAME) or files[DRIFT_SUMMARY_NAME]
    parts = newest.split("/")
    verdict.airflow_task = {"dag_id": parts[2], "run_folder": parts[3], "task_id": parts[4]}
    return verdict


def overview_of_model(client: MlflowClient, model: Any, experiment_ids: list[str]) -> ModelOverview:
    """The overview of one registered model (``model`` from ``search_registered_models``)."""
    from airflow_mlops.core.registry import CHALLENGER, CHAMPION, TAG_ALIAS_HISTORY

    overview = ModelOverview(name=model.name, description=model.description or None)
    aliases = dict(model.aliases or {})
    version_tags: dict[str, dict[str, str]] = {}
    for alias in (CHAMPION, CHALLENGER):
        if alias in aliases:
            info, tags = _version_info(client, model.name, alias, str(aliases[alias]))
            overview.versions.append(info)
            version_tags[alias] = tags
    overview.history = history_events((model.tags or {}).get(TAG_ALIAS_HISTORY))
    overview.retrain_signal = _json_object((model.tags or {}).get(TAG_LAST_RETRAIN_SIGNAL))
    overview.lineage_dag_ids = sorted(
        {tags[TAG_DAG_ID] for tags in version_tags.values() if tags.get(TAG_DAG_ID)}
    )
    for kind in CHECK_KINDS:
        verdict = _latest_check_run(client, experiment_ids, model.name, kind)
        champion = overview.version(CHAMPION)
        if verdict is None and kind == "drift" and champion and champion.run_id:
            verdict = latest_drift_artifact(client, champion.run_id)
            if verdict is not None:
                verdict.experiment_id = champion.experiment_id
        if verdict is None:
            # No dedicated check run: what the champion's (else challenger's) run recorded.
            for alias in (CHAMPION, CHALLENGER):
                found = verdict_from_tags(kind, version_tags.get(alias, {}))
                if found is not None:
                    info = overview.version(alias)
                    found.run_id = info.run_id if info else None
                    found.experiment_id = info.experiment_id if info else None
                    found.model_version = info.version if info else None
                    found.at = found.at or (info.created_at if info else None)
                    verdict = found
                    break
        if verdict is not None:
            overview.checks[kind] = verdict
    return overview


def collect_overview(client: MlflowClient, *, max_models: int = 50) -> list[ModelOverview]:
    """Overviews of up to ``max_models`` registered models, by name.

    A model whose details cannot be read gets its row with ``error`` set, so one broken
    model does not hide the others; failing to list the models at all raises.
    """
    models = _search_registered_models(client, max_models)
    experiment_ids = _experiment_ids(client) if models else []
    overviews = []
    for model in models:
        try:
            overviews.append(overview_of_model(client, model, experiment_ids))
        except Exception as err:
            log.warning("Could not read registered model %s", model.name, exc_info=True)
            overviews.append(ModelOverview(name=model.name, error=f"{type(err).__name__}: {err}"))
    return overviews


def report_uri_of_run(client: MlflowClient, run_id: str, kind: str) -> str | None:
    """The report URI a run recorded for ``kind`` (never a URI supplied by the browser)."""
    if kind not in CHECK_KINDS:
        return None
    run = client.get_run(run_id)
    verdict = verdict_from_tags(kind, run.data.tags or {})
    return verdict.report_uri if verdict else None


def report_artifact_of_run(client: MlflowClient, run_id: str, path: str, dst: str) -> Path | None:
    """Download a report artifact of a run into ``dst`` (report folders only)."""
    if not is_report_artifact(path):
        return None
    return Path(client.download_artifacts(run_id, path, dst))


def report_uri_of_version(client: MlflowClient, name: str, version: str, kind: str) -> str | None:
    """The report URI recorded on a model version (or its run) for ``kind``."""
    if kind not in CHECK_KINDS:
        return None
    _, tags = _version_info(client, name, "", version)
    verdict = verdict_from_tags(kind, tags)
    return verdict.report_uri if verdict else None


def all_metric_names(overviews: Iterable[ModelOverview]) -> list[str]:
    """Union of the metric names shown, in a stable order (for table headers)."""
    names: list[str] = []
    for overview in overviews:
        for version in overview.versions:
            names.extend(k for k in version.metrics if k not in names)
    return names
