"""The end-to-end continuous-training demo (README command 1: ``make demo``).

Data arrives as it does in a lake: one Hive partition per day. A producer DAG lands each day
of the bundled feed (``include/data/breast_cancer_daily/feed.parquet``) as
``.demo/landing/breast_cancer_daily/dt=YYYY-MM-DD/part.parquet`` and emits the pipeline's
new-data Asset; Airflow queues the CT DAG of ``include/pipelines/demo/breast_cancer_daily.yaml``
on that event, and the run trains on the window that ends with the day that landed. The DAGs
run through Airflow (``dag.test()``'s task runner, XCom, Assets, the scheduler's own
run-creation code, one metadata DB, in one process) with a local MLflow store under
``.demo/``. Scenes:

1. the first days land           -> an asset-triggered CT run -> the first @champion;
2. each new day lands            -> the champion scores it (one prediction partition per day),
                                    monitoring finds no drift, the CT run retrains on its
                                    window and is judged on rows neither model trained on;
3. a shifted day lands           -> the monitoring DAG detects drift and emits the retrain
                                    Asset; one CT run consumes both events and retrains;
4. labels of earlier days arrive -> the decay check joins them with each day's predictions
                                    by id: days with enough labels are scored, others pending;
5. a broken day lands            -> validation blocks it; the champion is unchanged.

The scorer and decay DAGs use the delayed-labels operators; if they do not import, scene 4
says "not in this demo yet" instead of failing the demo.

About 700 lines, one file on purpose: the story, its reporting, and the three small DAG files
(producer, scorer, decay check) it writes into ``.demo/dags`` as templates, so that
``make demo`` needs nothing but this script, the YAML, the suite and the feed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / ".demo"
PIPELINE = "breast_cancer_daily"
PIPELINES = ROOT / "include" / "pipelines" / "demo"
FEED = ROOT / "include" / "data" / PIPELINE / "feed.parquet"
LANDING = DEMO / "landing" / PIPELINE
DAGS = DEMO / "dags"
PREDICTIONS = DEMO / "predictions" / PIPELINE
LABELS = DEMO / "labels" / PIPELINE
PRODUCER = f"land_{PIPELINE}"
SCORER = f"score_{PIPELINE}"
DECAY = f"decay_{PIPELINE}"
LABELS_LAND_ON = ("2026-11-30", "2026-12-02")  # the days labels of earlier days arrive
LATE_LABEL_SHARE = 0.4  # of the newest day's labels arrive first (below the coverage: pending)
FIRST_DAYS, NEW_DAYS = 3, 2  # then one shifted day and one broken day

PRODUCER_DAG = '''"""Producer of {pipeline}: lands one day of the upstream feed and announces it.

Written by scripts/demo.py. A real producer follows the same steps (docs/data.md, "How a
producer DAG should land partitions"): one partition per run, a temporary name then a rename
(names starting with "_" are never read), and an Asset event that names the partition.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk import DAG, Asset, Param, task

FEED = Path({feed})
LANDING = Path({landing})
NEW_DATA = Asset(LANDING.as_uri())  # the pipeline's data.new_data_uri

with DAG(
    {dag_id},
    schedule=None,
    params={{"day": Param({first_day}, type="string", description="the day to land")}},
    tags=["demo", "producer"],
) as dag:

    @task(outlets=[NEW_DATA])
    def land(*, params, outlet_events):
        import pandas as pd

        day = params["day"]
        rows = pd.read_parquet(FEED, filters=[("day", "==", day)]).drop(columns="day")
        if rows.empty:
            raise ValueError(f"the feed has no rows for {{day}}")
        folder = LANDING / f"dt={{day}}"
        folder.mkdir(parents=True, exist_ok=True)
        temporary, final = folder / "_part.parquet.tmp", folder / "part.parquet"
        rows.to_parquet(temporary, index=False)
        os.replace(temporary, final)
        landed = {{"partition": f"dt={{day}}", "uri": str(final), "rows": len(rows)}}
        outlet_events[NEW_DATA].extra = landed
        return landed

    land()
'''


SCORER_DAG = '''"""Batch scoring of {pipeline}: the champion scores each day as it lands.

Written by scripts/demo.py. One prediction partition per day (dt=<day>/part-<writer>.parquet)
with the ids, so labels that land later can be joined to it.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param

from airflow_mlops.operators.prediction import BatchPredictionOperator

with DAG(
    {dag_id},
    schedule=None,
    params={{"day": Param({first_day}, type="string", description="the landed day to score")}},
    tags=["demo", "prediction"],
) as dag:
    BatchPredictionOperator(
        task_id="predict",
        model_name={model},
        input_uri={landing},
        window={{"last_partitions": 1}},
        window_end="{{{{ params.day }}}}",
        output_uri={predictions},
        key_columns=["id"],
    )
'''

DECAY_DAG = '''"""Decay check of {pipeline} with delayed labels: score each day once its labels arrive.

Written by scripts/demo.py. Joins the predictions by partition with the labels dataset by id;
a day whose label coverage reaches min_label_coverage is scored, the others are pending.
"""

from __future__ import annotations

from airflow.sdk import DAG

from airflow_mlops.operators.performance import ModelPerformanceOperator

with DAG({dag_id}, schedule=None, tags=["demo", "monitoring"]) as dag:
    ModelPerformanceOperator(
        task_id="decay",
        model_name={model},
        predictions_uri={predictions},
        labels_uri={labels},
        id_columns=["id"],
        min_label_coverage=0.8,
        min_labelled_rows=50,
        on_empty="skip",
        debounce_seconds=0,
        ct_dag_id={ct_dag_id},
    )
'''


# -- environment -----------------------------------------------------------------------------


def prepare_environment() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    LANDING.mkdir(parents=True)
    os.environ["AIRFLOW_HOME"] = str(DEMO / "airflow")
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["GX_ANALYTICS_ENABLED"] = "False"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # One signing key for the in-process task API (else Airflow warns and makes one per use).
    os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = secrets.token_hex(32)
    for var in [v for v in os.environ if v.startswith(("AIRFLOW_CONN_MLFLOW", "MLFLOW_TRACKING"))]:
        del os.environ[var]


def quiet_logs() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("airflow", "great_expectations", "mlflow", "alembic", "evidently", "py.warnings"):
        logging.getLogger(name).setLevel(logging.ERROR)


def feed_days() -> list[str]:
    import pyarrow.parquet as pq

    days = sorted(set(pq.read_table(FEED, columns=["day"]).column("day").to_pylist()))
    if len(days) != FIRST_DAYS + NEW_DAYS + 2:
        raise SystemExit(f"{FEED} has {len(days)} days; run scripts/make_demo_days.py")
    return days


def write_dag_files(first_day: str) -> None:
    """What a user's deployment holds: the sync-dags stub of the YAML, and a producer DAG."""
    from airflow_mlops.factories.loader import sync_dag_files

    sync_dag_files(PIPELINES, DAGS)
    # JSON strings are Python literals: a path is never pasted into code as code.
    literal = {
        "pipeline": PIPELINE,
        "feed": json.dumps(str(FEED)),
        "landing": json.dumps(str(LANDING)),
        "predictions": json.dumps(f"{PREDICTIONS}/"),
        "labels": json.dumps(str(LABELS)),
        "model": json.dumps(PIPELINE),
        "ct_dag_id": json.dumps(f"ct__{PIPELINE}"),
        "first_day": json.dumps(first_day),
    }
    for dag_id, template in ((PRODUCER, PRODUCER_DAG), (SCORER, SCORER_DAG), (DECAY, DECAY_DAG)):
        text = template.format(dag_id=json.dumps(dag_id), **literal)
        (DAGS / f"{dag_id}.py").write_text(text)


def parse_dags() -> tuple[dict[str, Any], dict[str, str]]:
    """The DAG processor's work: parse the DAGs folder and write the DAGs to the metadata DB.

    Returns the DAGs and the import errors ({file: error})."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    dags: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for bundle in manager.get_all_dag_bundles():
        bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        sync_bag_to_db(bag, bundle.name, bundle.version)
        dags.update(bag.dags)
        errors.update({str(k): str(v) for k, v in bag.import_errors.items()})
    return dags, errors


def unpause(*dag_ids: str) -> None:
    """What a user does in the UI: a paused DAG is not queued on its Assets."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        for dag_id in dag_ids:
            session.query(DagModel).filter_by(dag_id=dag_id).update({"is_paused": False})


# -- running DAGs ----------------------------------------------------------------------------


@contextlib.contextmanager
def output_to_log():
    """Send this process's stdout/stderr (Airflow's structured logs) to the demo log file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(DEMO / "airflow-tasks.log", "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run(dag, **conf):
    """A manual run through ``dag.test()`` (Airflow's task logs go to the demo log file)."""
    with output_to_log():
        return dag.test(run_conf=conf or None)


def queued_runs(dag_id: str) -> list[str]:
    """The scheduler's run-creation half (Airflow's own code, no executor): turn the queued
    Asset events into DagRuns and start them. Returns the run ids it started."""
    from airflow.executors.local_executor import LocalExecutor
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.sqlalchemy import prohibit_commit

    def runs(state: str) -> list[str]:
        with create_session() as session:
            query = session.query(DagRun).filter_by(dag_id=dag_id, state=state)
            return [r.run_id for r in query.order_by(DagRun.id)]

    before = set(runs("running"))
    runner = SchedulerJobRunner(job=Job(), num_runs=1, executors=[LocalExecutor()])
    with output_to_log():
        for _ in range(5):
            with create_session() as session, prohibit_commit(session) as guard:
                runner._create_dagruns_for_dags(guard, session)
                runner._start_queued_dagruns(session)
                guard.commit()
            # On SQLite a run created in this second starts in the next loop.
            if not runs("queued"):
                break
            time.sleep(1)
    return [r for r in runs("running") if r not in before]


def execute(dag, run_id: str):
    """Execute an existing (asset-triggered) DagRun with ``dag.test()``'s in-process task loop.

    ``dag.test()`` makes a new manual run through ``get_or_create_dagrun``; returning the
    existing run from there executes it as it is, run type and consumed events included.
    """
    from unittest import mock

    import airflow.models.dagrun as dagrun_module
    from airflow.models.dagrun import DagRun

    def existing_run(*, dag, session, **_):
        dag_run = session.query(DagRun).filter_by(dag_id=dag.dag_id, run_id=run_id).one()
        dag_run.dag = dag
        return dag_run

    with mock.patch.object(dagrun_module, "get_or_create_dagrun", existing_run), output_to_log():
        return dag.test()


def consumed_events(dag_run) -> list[str]:
    """The asset events a run consumed: ``new data dt=...`` or ``retrain (<trigger>)``."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).one()
        events = sorted(run.consumed_asset_events, key=lambda e: e.timestamp)
        return [describe_event(e.asset.uri, dict(e.extra or {})) for e in events]


def describe_event(uri: str, extra: dict[str, Any]) -> str:
    if "partition" in extra:
        return f"new data {extra['partition']}"
    trigger = extra.get("trigger") or extra.get("reason") or ""
    return f"{uri.rsplit('/', 1)[-1]}{f' ({trigger})' if trigger else ''}"


def xcom(dag_run, task_id: str, key: str = "return_value") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id, key=key)
            .first()
        )
        return None if row is None else XComModel.deserialize_value(row)


def land_labels(landed_on: str, complete: list[str], late: str, rest: bool) -> dict[str, int]:
    """The labels feed lands one partition, ``dt=<landed_on>``: every label of the
    ``complete`` days, and the first LATE_LABEL_SHARE of ``late``'s (or, with ``rest``, the
    others). Returns {day: labels landed}."""
    import pandas as pd

    feed = pd.read_parquet(FEED, columns=["id", "benign", "day"])
    late_rows = feed[feed["day"] == late]
    first = int(len(late_rows) * LATE_LABEL_SHARE)
    late_rows = late_rows.iloc[first:] if rest else late_rows.iloc[:first]
    labels = pd.concat([*(feed[feed["day"] == day] for day in complete), late_rows])
    folder = LABELS / f"dt={landed_on}"
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / "_part.parquet.tmp"
    labels[["id", "benign"]].to_parquet(temporary, index=False)
    os.replace(temporary, folder / "part.parquet")
    return {day: int((labels["day"] == day).sum()) for day in [*complete, late]}


# -- MLflow and Airflow facts ----------------------------------------------------------------


def champion_version(model: str) -> str:
    from mlflow.exceptions import MlflowException

    from airflow_mlops.hooks.mlflow import MlflowHook

    with output_to_log(), MlflowHook().session() as client:
        try:
            return str(client.get_model_version_by_alias(model, "champion").version)
        except MlflowException:
            return "-"


def training_window(run_id: str) -> str:
    """``dt=first..last (N files, R rows; last 4 partitions)`` from the run's manifest."""
    from airflow_mlops.core.lineage import (
        MANIFEST_ARTIFACT_PATH,
        TAG_DATA_ROWS,
        TAG_DATA_WINDOW,
    )
    from airflow_mlops.hooks.mlflow import MlflowHook

    with output_to_log(), MlflowHook().session() as client, tempfile.TemporaryDirectory() as tmp:
        tags = client.get_run(run_id).data.tags
        manifest = json.loads(
            Path(client.download_artifacts(run_id, MANIFEST_ARTIFACT_PATH, tmp)).read_text()
        )
    days = sorted(entry["partition"].get("dt", "?") for entry in manifest["files"])
    rows = tags.get(TAG_DATA_ROWS)
    return (
        f"dt={days[0]}..{days[-1]} ({len(days)} files{f', {rows} rows' if rows else ''}; "
        f"window: {tags.get(TAG_DATA_WINDOW, '?')})"
    )


def retrain_signals(model: str) -> int:
    """Events of the model's retrain Asset so far, from Airflow's metadata DB."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from airflow_mlops.assets import retrain_asset

    with create_session() as session:
        asset = session.query(AssetModel).filter_by(uri=retrain_asset(model).uri).first()
        return (
            0 if asset is None else session.query(AssetEvent).filter_by(asset_id=asset.id).count()
        )


def judged_on(evaluation: dict[str, Any] | None) -> str | None:
    """Rows compared / excluded and the difference intervals, from the decision record."""
    if not evaluation or evaluation.get("champion") is None:
        return None
    comparison = evaluation.get("comparison") or {}
    because = ", ".join(
        f"{n} {why}" for why, n in comparison.get("excluded_because", {}).items() if n
    )
    differences = []
    for metric in ("f1", "roc_auc"):
        diff = (evaluation.get("intervals") or {}).get(metric, {}).get("difference")
        if diff:
            differences.append(
                f"{metric} {diff['estimate']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]"
            )
    confidence = next(
        (
            e["difference"]["confidence"]
            for e in (evaluation.get("intervals") or {}).values()
            if isinstance(e, dict) and e.get("difference")
        ),
        None,
    )
    text = (
        f"{evaluation.get('rows_compared')} of {comparison.get('rows_holdout', '?')} held-out rows "
        f"(excluded {evaluation.get('rows_excluded')}{f': {because}' if because else ''}; "
        f"basis {comparison.get('basis', '?')})"
    )
    if differences:
        level = f", {confidence:.0%}" if confidence else ""
        text += f"; challenger - champion: {', '.join(differences)}{level}"
    return text


def short_reason(summary: dict[str, Any]) -> str:
    """The summary's reason without the evidence in brackets (printed on its own line)."""
    reason = str(summary.get("reason") or "")
    return reason.split(" [rows compared", 1)[0]


# -- the story -------------------------------------------------------------------------------


class Demo:
    def __init__(self, dags: dict[str, Any], started: float) -> None:
        self.ct = dags[f"ct__{PIPELINE}"]
        self.monitor = dags[f"monitor__{PIPELINE}"]
        self.producer = dags[PRODUCER]
        self.scorer = dags.get(SCORER)
        self.decay = dags.get(DECAY)
        self.scored: list[str] = []
        self.model = PIPELINE
        self.started = started
        self.rows: list[tuple[str, str, str, str]] = []

    def say(self, text: str) -> None:
        print(f"  [{time.monotonic() - self.started:4.0f}s] {text}", flush=True)

    def land(self, day: str) -> str:
        """The producer DAG lands one day and emits the new-data Asset event."""
        dag_run = run(self.producer, day=day)
        landed = xcom(dag_run, "land") or {}
        if dag_run.state != "success" or not landed:
            raise SystemExit(f"the producer failed to land {day}: see {DEMO / 'airflow-tasks.log'}")
        self.say(
            f"landed dt={day}: {landed['rows']} rows -> {Path(landed['uri']).relative_to(ROOT)}"
        )
        return landed["uri"]

    def ct_run(self, step: str, dag_run=None) -> dict[str, Any]:
        """Report and record a CT run: ``dag_run``, else the one the queued events created."""
        if dag_run is None:
            started = queued_runs(self.ct.dag_id)
            if len(started) != 1:
                raise SystemExit(f"expected one asset-triggered CT run, got {started}")
            dag_run = execute(self.ct, started[0])
        events = consumed_events(dag_run)
        window_end = xcom(dag_run, "detect_changes", key="window_end") or "the newest partition"
        self.say(
            f"CT run {dag_run.run_id.split('+', 1)[0].split('.', 1)[0]}: "
            f"{'events ' + ', '.join(events) if events else 'no asset event'}; "
            f"window ends with {window_end}"
        )
        summary = xcom(dag_run, "summary") or {}
        train = xcom(dag_run, "train") or {}
        if train.get("run_id"):
            print(f"         trained on {training_window(train['run_id'])}", flush=True)
        evidence = judged_on(xcom(dag_run, "evaluate"))
        if evidence:
            print(f"         judged on {evidence}", flush=True)
        outcome = summary.get("outcome") or str(dag_run.state)
        reason = short_reason(summary)
        print(f"         -> {outcome}: {reason}", flush=True)
        self.rows.append((step, outcome, champion_version(self.model), reason))
        return summary

    def first_days(self, days: list[str]) -> None:
        print(f"1/5 the first {len(days)} days land; the CT DAG trains the first champion ...")
        for day in days[:-1]:
            self.land(day)
        # New DAGs start paused; a paused DAG is not queued on its Assets, but its first
        # asset-triggered run consumes every event since: the days that landed before.
        unpause(self.ct.dag_id, self.monitor.dag_id)
        self.say(f"{self.ct.dag_id} unpaused: each landed day's event now queues a CT run")
        self.land(days[-1])
        self.ct_run(f"days {days[0][5:]}..{days[-1][5:]}")

    def new_day(self, day: str) -> None:
        uri = self.land(day)
        self.score(day)
        self.monitor_day(day, uri)
        self.ct_run(f"day {day[5:]}")

    def score(self, day: str) -> None:
        """The champion scores the day as it lands; its labels come later."""
        if self.scorer is None or self.decay is None:
            return
        dag_run = run(self.scorer, day=day)
        result = xcom(dag_run, "predict") or {}
        if dag_run.state != "success" or not result:
            self.say(f"scoring dt={day} failed ({dag_run.state}): see {DEMO / 'airflow-tasks.log'}")
            return
        self.scored.append(day)
        where = Path(result["output_uri"].removeprefix("file://")).relative_to(ROOT)
        self.say(
            f"champion v{result['model_version']} scored dt={day}: {result['rows']} predictions "
            f"-> {where}"
        )

    def monitor_day(self, day: str, uri: str) -> tuple[bool, str]:
        """The monitoring DAG on the landed day: (drift detected, reason)."""
        before = retrain_signals(self.model)
        monitor_run = run(self.monitor, current_uri=uri)
        drift = xcom(monitor_run, "drift") or {}
        drifted = retrain_signals(self.model) > before
        reason = drift.get("reason") or f"monitoring run {monitor_run.state}"
        verdict = "drift detected, retrain Asset emitted" if drifted else "no drift"
        self.say(f"monitor__{PIPELINE} on dt={day}: {verdict}: {reason}")
        return drifted, reason

    def shifted_day(self, day: str) -> None:
        print(f"3/5 a shifted day lands (dt={day}: the largest tumours); monitoring ...")
        uri = self.land(day)
        self.score(day)
        drifted, reason = self.monitor_day(day, uri)
        verdict = "drift detected" if drifted else "no drift"
        self.rows.append((f"drift {day[5:]}", verdict, champion_version(self.model), reason))
        self.ct_run(f"drift retrain {day[5:]}")

    def labels(self) -> None:
        print("4/5 labels of earlier days arrive; the decay check scores each day ...")
        if not self.scored:
            note = "not in this demo yet: no day was scored by batch prediction"
            self.say(f"delayed labels: {note}")
            self.rows.append(("delayed labels", "skipped", champion_version(self.model), note))
            return
        *complete, late = self.scored
        # The newest day's labels come in two parts: first a share (pending), then the rest.
        for landed_on, rest in zip(LABELS_LAND_ON, (False, True), strict=True):
            counts = land_labels(landed_on, [] if rest else complete, late, rest)
            self.say(
                f"labels landed on {landed_on}: "
                + ", ".join(f"dt={day} {n} rows" for day, n in counts.items() if n)
                + f" -> {LABELS.relative_to(ROOT)}/dt={landed_on}/part.parquet"
            )
            if not self.decay_check(f"labels {landed_on[5:]}"):
                return

    def decay_check(self, step: str) -> bool:
        """Run the decay DAG; print each day's coverage and scores; record the verdict."""
        dag_run = run(self.decay)
        result = xcom(dag_run, "decay") or {}
        if dag_run.state != "success" or not result:
            note = f"the decay check {dag_run.state}: see {DEMO / 'airflow-tasks.log'}"
            self.say(note)
            self.rows.append((step, "failed", champion_version(self.model), note))
            return False
        self.say(f"{DECAY}: {result.get('partitions')}")
        for part in result.get("recent") or []:
            metrics = part.get("metrics") or {}
            scores = ", ".join(f"{m} {metrics[m]:.3f}" for m in ("f1", "accuracy") if m in metrics)
            versions = ",".join(f"v{v}" for v in part.get("model_versions") or [])
            print(
                f"         {part['partition']}: {part['status']:<7} coverage "
                f"{part['coverage']:4.0%} ({part['labelled_rows']}/{part['predicted_rows']} "
                f"labelled; predicted by {versions}){': ' + scores if scores else ''}",
                flush=True,
            )
        if result.get("decayed"):
            outcome = "decay"
        else:
            outcome = "no decay" if result.get("check") else "no verdict"
        reason = str(result.get("reason") or "").removeprefix("no verdict: ")
        print(f"         -> {outcome}: {reason}", flush=True)
        self.rows.append((step, outcome, champion_version(self.model), reason))
        return True

    def broken_day(self, day: str) -> None:
        print(f"5/5 a broken day lands (dt={day}) ...")
        self.land(day)
        self.ct_run(f"broken day {day[5:]}")


def main() -> int:
    started = time.monotonic()
    prepare_environment()
    print(f"airflow-mlops demo: AIRFLOW_HOME={os.environ['AIRFLOW_HOME']}", flush=True)
    print("  migrating the Airflow metadata DB ...", flush=True)
    from airflow.utils.db import initdb

    quiet_logs()
    with output_to_log():
        initdb()
    quiet_logs()
    days = feed_days()
    write_dag_files(days[0])
    with output_to_log():
        dags, errors = parse_dags()
    # The delayed-labels DAGs are optional: without them scene 4 says it is not in the demo.
    optional = {f"{SCORER}.py", f"{DECAY}.py"}
    if {Path(file).name for file in errors} - optional:
        raise SystemExit(f"DAG import errors: {errors}")
    if errors:
        last_lines = "; ".join(error.strip().splitlines()[-1] for error in errors.values())
        print(f"  the delayed-labels DAGs did not import: {last_lines[:300]}")
    unpause(PRODUCER, SCORER, DECAY)
    demo = Demo(dags, started)
    first, new = days[:FIRST_DAYS], days[FIRST_DAYS : FIRST_DAYS + NEW_DAYS]
    shifted, broken = days[FIRST_DAYS + NEW_DAYS], days[-1]

    demo.first_days(first)
    print(
        "2/5 new days land, one at a time: monitor, retrain on the window, judge on unseen rows ..."
    )
    print(
        "    (the split hashes each row's id: a row held out once stays held out, so the rows the\n"
        "     champion trained on never reach the comparison; 'excluded' counts any that would)"
    )
    for day in new:
        demo.new_day(day)
    demo.shifted_day(shifted)
    demo.labels()
    demo.broken_day(broken)

    print_table(demo.rows)
    print_where_to_look(time.monotonic() - started)
    return 0


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("step", "outcome", "champion", "reason")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(3)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, [*widths, 0], strict=True)))
    print("  ".join("-" * w for w in widths) + "  " + "-" * 40)
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row[:3], widths, strict=True)]
        print("  ".join([*cells, row[3][:160]]))


def print_where_to_look(elapsed: float) -> None:
    home = Path(os.environ["AIRFLOW_HOME"])
    print(
        f"\nDone in {elapsed:.0f}s.\n"
        f"  landed partitions: {LANDING}\n"
        f"  predictions and labels by day: {PREDICTIONS}, {LABELS}\n"
        f"  DAG files (the pipeline's sync-dags stub, producer, scorer, decay check): {DAGS}\n"
        f"  Airflow task logs: {DEMO / 'airflow-tasks.log'}\n"
        f"  reports (validation, drift HTML, decisions): {home / 'mlops_artifacts'}\n"
        f"  MLflow store: {home / 'mlflow' / 'mlflow.db'} (artifacts in {home / 'mlflow' / 'artifacts'})\n"
        f"  MLflow UI:    .venv/bin/mlflow ui --backend-store-uri sqlite:///{home / 'mlflow' / 'mlflow.db'}"
        f" --port 5000   then open http://127.0.0.1:5000\n"
        f"  Airflow UI:   AIRFLOW_HOME={home} AIRFLOW__CORE__DAGS_FOLDER={DAGS} "
        ".venv/bin/airflow standalone   then open http://127.0.0.1:8080"
    )


if __name__ == "__main__":
    sys.exit(main())
