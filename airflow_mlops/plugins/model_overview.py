"""What the MLOps page shows, read from the MLflow model registry (no Airflow import).

For every registered model: the ``@champion`` and ``@challenger`` versions with their key
holdout metrics, the last data-validation and drift verdicts with their reports, the alias
history and links to the MLflow UI. Everything is read; nothing is written.

Where the facts come from (the conventions of the rest of the provider):

- aliases ``champion`` / ``challenger`` and the history summary in the registered-model tag
  ``mlops.alias_history`` (:mod:`airflow_mlops.core.alias_history`);
- frozen state and the last CT run (outcome, reason, notifications sent): the registered-model
  tags ``mlops.frozen`` and ``mlops.last_ct``, decoded (capped, never an error) by
  :mod:`airflow_mlops.core.model_status`;
- key metrics: the ``holdout_<metric>`` metrics of the version's training run
  (:mod:`airflow_mlops.core.training`, :mod:`airflow_mlops.core.metrics`);
- drift: the registered-model tag ``mlops.last_drift``, which the drift operator overwrites
  with its verdict, the task that produced it and the report it attached to the champion's
  run (:mod:`airflow_mlops.operators.drift`), and the tag ``mlops.last_retrain_signal``.
  Reading it costs no call beyond listing the models, however many monitoring runs there
  were (reports of runs older than the tag, found only by listing artifacts, are not read);
- verdicts recorded as tags, for runs and models created outside the operators:
  ``mlops.<kind>.verdict`` / ``.success`` / ``.detected`` and ``mlops.<kind>.report_uri``
  (``<kind>`` is ``validation`` or ``drift``) on the newest run tagged ``mlops.stage=<kind>``
  and ``mlops.model_name=<model>``, else on the champion version and its training run;
- the Airflow DAGs that trained the versions (``mlops.airflow.dag_id``), where the page looks
  for the last data validation (:mod:`airflow_mlops.plugins.airflow_facts`);
- the pipeline (``mlops.pipeline`` on the versions' training runs), which groups segment
  models (``<model>__<segment>``) under it;
- the decay history: the per-partition metrics the delayed-labels decay check logs on the
  champion's training run (``decay/<metric>``, ``decay/label_coverage``, one point per
  partition, :func:`airflow_mlops.core.delayed_labels.log_history`); read only for runs whose
  metrics include them (two calls per such model). The verdict and the pending partitions
  live in the decay task's XCom, read per user in :mod:`airflow_mlops.plugins.airflow_facts`.

- the model card of each version: the version tags ``mlops.model_card.sha256`` (final card)
  and ``mlops.model_card.pending`` (the approval task's pending card) say which exists; the
  link always names one of the fixed card paths (:data:`~airflow_mlops.core.model_card.CARD_ARTIFACTS`);
- the challenger's shadow record: ``mlops/shadow.json`` on its run, read (one artifact read)
  only when the run's ``mlops.shadow.partitions`` tag says it exists, judged against the
  requirement in the version tag ``mlops.shadow.requirement`` (written by the approval task).

A missing piece of information is ``None`` (shown as "—"), never an error: a model
registered by hand, without any of these tags, still gets its row.

``mlflow`` is only imported by the functions that need it, so importing this module is cheap.
Over 600 lines: one read of the registry with its call budget (prefetch, caps) is easier to
keep bounded in one module than split across several.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.drift_verdict import TAG_LAST_DRIFT
from airflow_mlops.core.lineage import (
    TAG_DAG_ID,
    TAG_DECISION_REASON,
    TAG_MODEL_NAME,
    TAG_PIPELINE,
    TAG_STAGE,
)
from airflow_mlops.core.model_card import CARD_ARTIFACTS, card_artifact_for
from airflow_mlops.core.model_status import (
    TAG_LAST_CT,
    FreezeNote,
    LastCt,
    read_frozen,
    read_last_ct,
)
from airflow_mlops.core.retrain_signal import TAG_LAST_RETRAIN_SIGNAL
from airflow_mlops.core.values import parse_bool
from airflow_mlops.links.urls import mlflow_page_url

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "CHECK_KINDS",
    "HOLDOUT_METRIC_PREFIX",
    "MAX_CHECK_RUNS_PREFETCHED",
    "MAX_EXPERIMENTS_SEARCHED",
    "MAX_HISTORY_EVENTS",
    "MAX_KEY_METRICS",
    "PREFERRED_METRICS",
    "REPORT_ARTIFACT_ROOTS",
    "RUNS_PER_SEARCH",
    "CheckRuns",
    "DecayPoint",
    "DecayView",
    "ModelOverview",
    "PendingApproval",
    "PipelineGroup",
    "Prefetched",
    "Verdict",
    "VersionInfo",
    "all_metric_names",
    "apply_decay_result",
    "collect_overview",
    "decay_sparkline",
    "drift_verdict_from_tag",
    "health_problems",
    "history_events",
    "is_report_artifact",
    "iso_from_millis",
    "key_metrics",
    "model_url",
    "overview_of_model",
    "page_sections",
    "report_artifact_of_run",
    "report_uri_of_run",
    "report_uri_of_version",
    "run_url",
    "segment_base",
    "verdict_from_tags",
    "version_url",
]

log = logging.getLogger(__name__)

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
#: Characters of a version's decision reason shown in its table row.
MAX_DECISION_CHARS = 600
MAX_HISTORY_EVENTS = 20
MAX_EXPERIMENTS_SEARCHED = 100
#: Newest check runs of a kind listed at once for all models (one search instead of one per
#: model); a model with no run among them is searched alone unless that was all of them.
MAX_CHECK_RUNS_PREFETCHED = 200

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
class DecayPoint:
    """One prediction partition of the decay history: scored (with its value) or pending."""

    partition: str
    value: float | None = None
    coverage: float | None = None
    status: str = "scored"  # "scored" | "pending" (labels not matured yet)


@dataclass
class DecayView:
    """The decay check of a model: per-partition history (MLflow) and last verdict (Airflow)."""

    metric: str | None = None
    baseline: float | None = None
    points: list[DecayPoint] = field(default_factory=list)
    #: "decay" / "no decay" / "no verdict"; None until the decay task's result is read.
    verdict: str | None = None
    ok: bool | None = None
    reason: str | None = None
    at: str | None = None
    pending_partitions: int = 0
    airflow_task: dict[str, Any] | None = None


@dataclass
class PendingApproval:
    """A human-in-the-loop promotion request still waiting for its answer."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    subject: str | None = None
    created_at: str | None = None
    model_name: str | None = None
    version: str | None = None
    assignees: list[str] = field(default_factory=list)


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
    #: The evaluation's one-line reason (rows compared and excluded, difference intervals).
    decision: str | None = None
    #: The metric of the decay history logged on this version's run, and its holdout value.
    decay_metric: str | None = None
    decay_baseline: float | None = None
    #: The version's model card on its run: the final one, else the pending one (approval).
    card_artifact: str | None = None
    #: The challenger's shadow record beside the champion (core.shadow.shadow_summary).
    shadow: dict[str, Any] | None = None


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
    #: Set while promotions are frozen (tag ``mlops.frozen``).
    frozen: FreezeNote | None = None
    #: The newest CT run's outcome and notifications (tag ``mlops.last_ct``).
    last_ct: LastCt | None = None
    #: The pipeline that trained it (``mlops.pipeline`` on its versions' runs).
    pipeline: str | None = None
    decay: DecayView | None = None
    approvals: list[PendingApproval] = field(default_factory=list)
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
    """A verdict tag as pass/fail, or None (no colour) for an unknown or missing tag."""
    return parse_bool(value, "tag", default=None, true_words=_TRUE, false_words=_FALSE)


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


def drift_verdict_from_tag(raw: str | None) -> Verdict | None:
    """A drift :class:`Verdict` from the ``mlops.last_drift`` tag; None when absent or bad.

    The report is offered only as an artifact of the recorded MLflow run (the page serves
    those from report folders only), never through the URI the tag names.
    """
    record = _json_object(raw)
    if record is None or not isinstance(record.get("detected"), bool):
        return None
    detected = record["detected"]
    verdict = Verdict(
        kind="drift",
        verdict="drift detected" if detected else "no drift",
        ok=not detected,
        at=_text(record.get("at")),
    )
    drifted, tested = record.get("drifted_columns"), record.get("tested_columns")
    if isinstance(tested, int) and isinstance(drifted, int):
        verdict.detail = f"{drifted}/{tested} columns drifted"
    run_id, artifact = _text(record.get("mlflow_run_id")), _text(record.get("report_artifact"))
    if run_id and artifact and is_report_artifact(artifact):
        verdict.run_id, verdict.report_artifact = run_id, artifact
    task = record.get("airflow")
    if isinstance(task, dict) and all(isinstance(task.get(k), str) for k in ("dag_id", "task_id")):
        map_index = task.get("map_index")
        verdict.airflow_task = {
            "dag_id": task["dag_id"],
            "run_id": _text(task.get("run_id")),
            "task_id": task["task_id"],
            "map_index": map_index if isinstance(map_index, int) else -1,
        }
    return verdict


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def is_report_artifact(path: str) -> bool:
    """Only report folders and the model card's exact paths may be served from a run, and
    no path tricks."""
    if path in CARD_ARTIFACTS:
        return True
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
    from airflow_mlops.core.promotion_lock import LOCK_SUFFIX

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


@dataclass
class Prefetched:
    """Model versions and runs read in bulk for one overview (missing ones are read alone)."""

    versions: dict[tuple[str, str], Any] = field(default_factory=dict)
    runs: dict[str, Any] = field(default_factory=dict)


def _version_info(
    client: MlflowClient,
    name: str,
    alias: str,
    version: str,
    prefetched: Prefetched | None = None,
) -> tuple[VersionInfo, dict[str, str]]:
    """The version's facts, and the tags of the version and of its run (for verdicts)."""
    known = prefetched or Prefetched()
    mv = known.versions.get((name, version)) or client.get_model_version(name, version)
    info = VersionInfo(
        alias=alias,
        version=str(mv.version),
        run_id=mv.run_id or None,
        created_at=iso_from_millis(mv.creation_timestamp),
        status=str(mv.status) if mv.status is not None else None,
    )
    tags: dict[str, str] = {}
    if mv.run_id:
        run = known.runs.get(mv.run_id) or client.get_run(mv.run_id)
        info.experiment_id = run.info.experiment_id
        info.metrics = key_metrics(run.data.metrics or {})
        info.decision = _short((run.data.tags or {}).get(TAG_DECISION_REASON))
        info.decay_metric, info.decay_baseline = decay_metric_of(run.data.metrics or {})
        tags.update(run.data.tags or {})
    tags.update(mv.tags or {})  # a tag on the version wins over its run's
    if info.run_id:
        info.card_artifact = card_artifact_for(mv.tags or {})
    return info, tags


def _add_shadow_record(
    client: MlflowClient, overview: ModelOverview, challenger_tags: Mapping[str, str]
) -> None:
    """The challenger's shadow record beside the champion: one artifact read, only for a run
    whose ``mlops.shadow.partitions`` tag says it has one."""
    from airflow_mlops.core.registry import CHALLENGER, CHAMPION
    from airflow_mlops.core.shadow import (
        TAG_SHADOW_PARTITIONS,
        TAG_SHADOW_REQUIREMENT,
        read_requirement,
        read_shadow_records,
        shadow_summary,
    )

    challenger, champion = overview.version(CHALLENGER), overview.version(CHAMPION)
    if (
        challenger is None
        or not challenger.run_id
        or not challenger_tags.get(TAG_SHADOW_PARTITIONS)
    ):
        return
    try:
        records = read_shadow_records(client, challenger.run_id)
    except Exception as err:  # a broken record is shown as such, never hides the model
        challenger.shadow = {"error": f"{type(err).__name__}: {err}"}
        return
    requirement = read_requirement(challenger_tags.get(TAG_SHADOW_REQUIREMENT))
    challenger.shadow = shadow_summary(
        records,
        champion_version=champion.version if champion else None,
        metric=requirement.get("metric"),
        required=requirement.get("required_partitions"),
        min_delta=requirement.get("min_delta", 0.0),
    )


def _short(text: str | None, limit: int = MAX_DECISION_CHARS) -> str | None:
    """A tag's text cut to what a table cell can show (the record holds the rest)."""
    if not text:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    return _check_run_verdict(runs[0], kind)


def _check_run_verdict(run: Any, kind: str) -> Verdict:
    verdict = verdict_from_tags(kind, run.data.tags or {}) or Verdict(kind=kind)
    verdict.run_id = run.info.run_id
    verdict.experiment_id = run.info.experiment_id
    verdict.at = verdict.at or iso_from_millis(run.info.end_time or run.info.start_time)
    return verdict


class CheckRuns:
    """The newest check run of each model, from one search per kind for all models.

    The first search lists the newest :data:`MAX_CHECK_RUNS_PREFETCHED` runs of the kind (all
    models); a model found there needs no search of its own. When that search saw every run
    of the kind, a model it did not find has none; otherwise that model is searched alone.
    Thread-safe: an overview may read its models in parallel.
    """

    def __init__(self, client: MlflowClient, experiment_ids: list[str]) -> None:
        self.client = client
        self.experiment_ids = experiment_ids
        self._newest: dict[str, tuple[dict[str, Verdict], bool]] = {}
        self._lock = threading.Lock()

    def latest(self, name: str, kind: str) -> Verdict | None:
        newest, complete = self._prefetched(kind)
        if name in newest:
            return replace(newest[name])  # each overview gets its own copy
        if complete:
            return None
        return _latest_check_run(self.client, self.experiment_ids, name, kind)

    def _prefetched(self, kind: str) -> tuple[dict[str, Verdict], bool]:
        with self._lock:
            if kind not in self._newest:
                self._newest[kind] = self._search(kind)
            return self._newest[kind]

    def _search(self, kind: str) -> tuple[dict[str, Verdict], bool]:
        if not self.experiment_ids:
            return {}, True
        runs = self.client.search_runs(
            experiment_ids=self.experiment_ids,
            filter_string=f"tags.`{TAG_STAGE}` = '{kind}'",
            order_by=["attributes.start_time DESC"],
            max_results=MAX_CHECK_RUNS_PREFETCHED,
        )
        newest: dict[str, Verdict] = {}
        for run in runs:  # newest first: the first run seen of a model is its newest
            name = (run.data.tags or {}).get(TAG_MODEL_NAME)
            if name and name not in newest:
                newest[name] = _check_run_verdict(run, kind)
        return newest, not getattr(runs, "token", None)


def overview_of_model(
    client: MlflowClient,
    model: Any,
    experiment_ids: list[str],
    check_runs: CheckRuns | None = None,
    prefetched: Prefetched | None = None,
) -> ModelOverview:
    """The overview of one registered model (``model`` from ``search_registered_models``).

    ``check_runs`` shares the check-run searches between the models of one overview.
    """
    from airflow_mlops.core.alias_history import TAG_ALIAS_HISTORY, TAG_FROZEN
    from airflow_mlops.core.registry import CHALLENGER, CHAMPION

    overview = ModelOverview(name=model.name, description=model.description or None)
    model_tags = model.tags or {}
    overview.frozen = read_frozen(model_tags.get(TAG_FROZEN))
    overview.last_ct = read_last_ct(model_tags.get(TAG_LAST_CT))
    aliases = dict(model.aliases or {})
    version_tags: dict[str, dict[str, str]] = {}
    for alias in (CHAMPION, CHALLENGER):
        if alias in aliases:
            info, tags = _version_info(client, model.name, alias, str(aliases[alias]), prefetched)
            overview.versions.append(info)
            version_tags[alias] = tags
    overview.history = history_events((model.tags or {}).get(TAG_ALIAS_HISTORY))
    overview.retrain_signal = _json_object((model.tags or {}).get(TAG_LAST_RETRAIN_SIGNAL))
    overview.lineage_dag_ids = sorted(
        {tags[TAG_DAG_ID] for tags in version_tags.values() if tags.get(TAG_DAG_ID)}
    )
    _add_shadow_record(client, overview, version_tags.get(CHALLENGER, {}))
    pipelines = [tags.get(TAG_PIPELINE) for tags in version_tags.values()]
    overview.pipeline = _short(next((p for p in pipelines if p), None), MAX_NAME_CHARS)
    champion = overview.version(CHAMPION)
    if champion is not None and champion.run_id and champion.decay_metric:
        overview.decay = decay_history(client, champion)
    recorded_drift = drift_verdict_from_tag((model.tags or {}).get(TAG_LAST_DRIFT))
    for kind in CHECK_KINDS:
        if kind == "drift" and recorded_drift is not None:
            verdict: Verdict | None = recorded_drift  # the operator's own record: no search
            run = next((v for v in overview.versions if v.run_id == recorded_drift.run_id), None)
            recorded_drift.experiment_id = run.experiment_id if run else None
        elif check_runs is not None:
            verdict = check_runs.latest(model.name, kind)
        else:
            verdict = _latest_check_run(client, experiment_ids, model.name, kind)
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


# -- decay history, health and pipelines -------------------------------------------------------

#: ``core.delayed_labels.HISTORY_PREFIX`` (that module imports pandas; the page does not).
DECAY_HISTORY_PREFIX = "decay"
#: Newest history points drawn per model.
MAX_DECAY_POINTS = 60
MAX_NAME_CHARS = 120
#: Metrics the decay check watches by default first (core.performance.DEFAULT_METRIC).
_DECAY_METRIC_ORDER = ("f1", "rmse", *PREFERRED_METRICS)


def decay_metric_of(metrics: Mapping[str, float]) -> tuple[str | None, float | None]:
    """The metric of a run's decay history (``decay/<metric>``) and its holdout value."""
    prefix = f"{DECAY_HISTORY_PREFIX}/"
    names = [
        k[len(prefix) :]
        for k in metrics
        if k.startswith(prefix) and k[len(prefix) :] not in ("label_coverage", "labelled_rows")
    ]
    if not names:
        return None, None
    ordered = [m for m in _DECAY_METRIC_ORDER if m in names] + sorted(names)
    metric = ordered[0]
    baseline = metrics.get(f"{HOLDOUT_METRIC_PREFIX}{metric}")
    return metric, float(baseline) if baseline is not None else None


def decay_history(client: MlflowClient, champion: VersionInfo) -> DecayView:
    """The champion run's decay history: one point per scored partition, oldest first."""
    assert champion.run_id and champion.decay_metric
    prefix = DECAY_HISTORY_PREFIX
    values = client.get_metric_history(champion.run_id, f"{prefix}/{champion.decay_metric}")
    coverage = {
        int(m.step): float(m.value)
        for m in client.get_metric_history(champion.run_id, f"{prefix}/label_coverage")
    }
    newest = sorted(values, key=lambda m: int(m.step))[-MAX_DECAY_POINTS:]
    points = [
        DecayPoint(
            partition=_day_of(m.timestamp) or f"step {int(m.step)}",
            value=float(m.value),
            coverage=coverage.get(int(m.step)),
        )
        for m in newest
    ]
    return DecayView(metric=champion.decay_metric, baseline=champion.decay_baseline, points=points)


def _day_of(millis: Any) -> str | None:
    stamp = iso_from_millis(millis)
    return stamp[:10] if stamp else None


_DAY = re.compile(r"(\d{4}-\d{2}-\d{2})")


def apply_decay_result(view: DecayView | None, result: Mapping[str, Any], task: dict) -> DecayView:
    """Add the decay task's XCom result (verdict, reason, pending and recent partitions) to the
    history read from MLflow. The result is untrusted input: texts are cut, numbers checked."""
    # A copy: the cached overview is shared by every user's request.
    view = replace(view, points=[replace(p) for p in view.points]) if view else DecayView()
    check = result.get("check") if isinstance(result.get("check"), Mapping) else None
    if result.get("decayed") is True:
        view.verdict, view.ok = "decay", False
    elif check is not None:
        view.verdict, view.ok = "no decay", True
    else:
        view.verdict, view.ok = "no verdict", None
    view.reason = _short(_text(result.get("reason")), 300)
    if check is not None and isinstance(check.get("metric"), str) and view.metric is None:
        view.metric = _short(check["metric"], MAX_NAME_CHARS)
    if check is not None and view.baseline is None and _number(check.get("baseline")) is not None:
        view.baseline = _number(check.get("baseline"))
    view.airflow_task = task
    counts = result.get("partitions")
    if isinstance(counts, Mapping) and isinstance(counts.get("pending"), int):
        view.pending_partitions = max(0, counts["pending"])
    known = {_partition_day(p.partition): p for p in view.points}
    recent = result.get("recent") if isinstance(result.get("recent"), list) else []
    for entry in recent[-10:]:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("partition"), str):
            continue
        day = _partition_day(entry["partition"])
        status = "pending" if entry.get("status") == "pending" else "scored"
        metrics = entry.get("metrics") if isinstance(entry.get("metrics"), Mapping) else {}
        value = _number(metrics.get(view.metric)) if view.metric else None
        if day in known or (status == "scored" and value is None):
            continue  # MLflow's point wins; a scored value of another metric is not drawn
        point = DecayPoint(
            partition=_short(entry["partition"], MAX_NAME_CHARS) or "?",
            value=value if status == "scored" else None,
            coverage=_number(entry.get("coverage")),
            status=status,
        )
        known[day] = point
        view.points.append(point)
    view.points.sort(key=lambda p: _partition_day(p.partition))
    view.points = view.points[-MAX_DECAY_POINTS:]
    return view


def _partition_day(partition: str) -> str:
    match = _DAY.search(partition)
    return match[1] if match else partition


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if number == number and abs(number) != float("inf") else None


def decay_sparkline(view: DecayView | None, width: int = 220, height: int = 46) -> str:
    """The decay history as an inline SVG (scored values joined by a line, the holdout
    baseline dashed, pending partitions as hollow grey dots on the axis); "" without points.

    Built server-side, every text escaped (partition names come from files and XCom)."""
    from html import escape

    if view is None or not view.points:
        return ""
    pad = 5
    scored = [p.value for p in view.points if p.value is not None]
    bounds = scored + ([view.baseline] if view.baseline is not None else [])
    low, high = (min(bounds), max(bounds)) if bounds else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    step = (width - 2 * pad) / max(len(view.points) - 1, 1)

    def y(value: float) -> float:
        return pad + (high - value) / (high - low) * (height - 2 * pad)

    metric = escape(view.metric or "metric")
    parts = [
        f'<svg class="spark" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{metric} per partition">'
    ]
    if view.baseline is not None:
        by = y(view.baseline)
        parts.append(
            f'<line x1="{pad}" y1="{by:.1f}" x2="{width - pad}" y2="{by:.1f}" '
            f'stroke="#718096" stroke-dasharray="3 3" stroke-width="1">'
            f"<title>{metric} at promotion: {view.baseline:.4f}</title></line>"
        )
    line = [
        f"{pad + i * step:.1f},{y(p.value):.1f}"
        for i, p in enumerate(view.points)
        if p.value is not None
    ]
    if len(line) > 1:
        parts.append(
            f'<polyline fill="none" stroke="#017cee" stroke-width="1.5" points="{" ".join(line)}"/>'
        )
    for i, p in enumerate(view.points):
        x = pad + i * step
        coverage = f", label coverage {p.coverage:.0%}" if p.coverage is not None else ""
        if p.value is None:
            title = escape(f"{p.partition}: pending (labels not matured{coverage})")
            parts.append(
                f'<circle data-pending cx="{x:.1f}" cy="{height - pad:.1f}" r="3" fill="none" '
                f'stroke="#a0aec0" stroke-width="1.5"><title>{title}</title></circle>'
            )
        else:
            title = escape(f"{p.partition}: {view.metric} {p.value:.4f}{coverage}")
            parts.append(
                f'<circle data-scored cx="{x:.1f}" cy="{y(p.value):.1f}" r="2.5" '
                f'fill="#017cee"><title>{title}</title></circle>'
            )
    parts.append("</svg>")
    return "".join(parts)


def health_problems(model: ModelOverview) -> list[str]:
    """Why a model is not healthy; [] when it is.

    Healthy: it has a champion, its last CT run did not fail or get blocked, its last drift
    and decay checks raised no flag, it is not frozen, and its record could be read.
    """
    problems = []
    if model.error:
        problems.append("unreadable")
    if model.version("champion") is None:
        problems.append("no champion")
    ct = model.last_ct
    if ct is not None and (ct.unreadable or ct.outcome in ("failed", "blocked")):
        problems.append(f"last CT {ct.outcome or 'unreadable'}")
    drift = model.checks.get("drift")
    if drift is not None and drift.ok is False:
        problems.append("drift")
    if model.decay is not None and model.decay.ok is False:
        problems.append("decay")
    if model.frozen is not None:
        problems.append("frozen")
    return problems


def segment_base(name: str) -> str | None:
    """``<model>`` of a segment model named ``<model>__<segment>``; None for other names."""
    base, sep, segment = name.rpartition("__")
    return base if sep and base and segment else None


@dataclass
class PipelineGroup:
    """The segment models of one pipeline, shown together with their health count."""

    name: str
    models: list[ModelOverview]
    problems: dict[str, list[str]]

    @property
    def healthy(self) -> int:
        return sum(not p for p in self.problems.values())

    @property
    def unhealthy(self) -> list[ModelOverview]:
        return [m for m in self.models if self.problems[m.name]]


def page_sections(models: list[ModelOverview]) -> list[ModelOverview | PipelineGroup]:
    """The page in order: plain models as they are, segment models (``<model>__<segment>``)
    gathered under their pipeline (``mlops.pipeline``, else ``<model>``) where the first of
    them appears, the models needing attention first."""
    sections: list[ModelOverview | PipelineGroup] = []
    groups: dict[str, PipelineGroup] = {}
    for model in models:
        base = segment_base(model.name)
        if base is None:
            sections.append(model)
            continue
        key = model.pipeline or base
        if key not in groups:
            groups[key] = PipelineGroup(name=key, models=[], problems={})
            sections.append(groups[key])
        groups[key].models.append(model)
        groups[key].problems[model.name] = health_problems(model)
    for group in groups.values():
        group.models.sort(key=lambda m: (not group.problems[m.name], m.name))
    return sections


def collect_overview(
    client: MlflowClient,
    *,
    max_models: int = 50,
    map_fn: Callable[[Callable[[Any], ModelOverview], list[Any]], list[ModelOverview]]
    | None = None,
) -> list[ModelOverview]:
    """Overviews of up to ``max_models`` registered models, by name.

    A model whose details cannot be read gets its row with ``error`` set, so one broken
    model does not hide the others; failing to list the models at all raises. ``map_fn``
    (``map_fn(fn, models) -> list``, in order) may read the models in parallel, e.g.
    :func:`airflow_mlops.plugins.mlflow_calls.thread_map`; by default one after another.
    """
    models = _search_registered_models(client, max_models)
    experiment_ids = _experiment_ids(client) if models else []
    check_runs = CheckRuns(client, experiment_ids)
    mapper = map_fn or (lambda fn, items: [fn(item) for item in items])
    prefetched = _prefetch(client, models, experiment_ids, mapper)

    def one(model: Any) -> ModelOverview:
        try:
            return overview_of_model(client, model, experiment_ids, check_runs, prefetched)
        except Exception as err:
            log.warning("Could not read registered model %s", model.name, exc_info=True)
            return ModelOverview(name=model.name, error=f"{type(err).__name__}: {err}")

    return mapper(one, models)


def _prefetch(
    client: MlflowClient, models: list[Any], experiment_ids: list[str], mapper: Callable
) -> Prefetched:
    """The champion/challenger versions of all models, then all their runs in a few searches
    (instead of one ``get_run`` per version). Failures are left to the per-model reads."""
    from airflow_mlops.core.registry import CHALLENGER, CHAMPION

    wanted = [
        (m.name, str(v))
        for m in models
        for a, v in (m.aliases or {}).items()
        if a in (CHAMPION, CHALLENGER)
    ]

    def version(key: tuple[str, str]) -> Any:
        try:
            return client.get_model_version(*key)
        except Exception:
            return None  # the model's own read reports the error on its row

    found = dict(zip(wanted, mapper(version, wanted), strict=True))
    versions = {k: mv for k, mv in found.items() if mv is not None}
    run_ids = sorted({mv.run_id for mv in versions.values() if mv.run_id})
    return Prefetched(versions=versions, runs=_runs_by_id(client, experiment_ids, run_ids))


_RUN_ID = re.compile(r"^[0-9a-zA-Z_-]{1,64}$")
RUNS_PER_SEARCH = 100


def _runs_by_id(client: MlflowClient, experiment_ids: list[str], run_ids: list[str]) -> dict:
    """Runs by id, ``RUNS_PER_SEARCH`` per search (runs outside ``experiment_ids``, deleted
    runs and odd ids are left out: they are read one by one later)."""
    ids = [r for r in run_ids if _RUN_ID.match(r)]
    runs: dict[str, Any] = {}
    if not experiment_ids:
        return runs
    for start in range(0, len(ids), RUNS_PER_SEARCH):
        chunk = ids[start : start + RUNS_PER_SEARCH]
        quoted = ", ".join(f"'{r}'" for r in chunk)
        try:
            found = client.search_runs(
                experiment_ids=experiment_ids,
                filter_string=f"attributes.run_id IN ({quoted})",
                max_results=len(chunk),
            )
        except Exception:
            log.warning("Could not read %d runs at once; reading them one by one", len(chunk))
            continue
        runs.update({run.info.run_id: run for run in found})
    return runs


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
