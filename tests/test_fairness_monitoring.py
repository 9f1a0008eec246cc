"""Issue 18 item 2: fairness monitored per labelled prediction partition (delayed labels).

Pets again (as in ``tests/test_fairness.py``): classes ``cat``/``dog``/``bird``, sensitive
column ``group``. The champion's stored predictions are right 90 % of the time on
``dt=2026-11-29``; on ``dt=2026-11-30`` it calls 60 % of group A's cats ``dog``, so its
recall of ``cat`` drops by 0.23 since promotion while accuracy falls by 0.08 only (within the
decay tolerance): fairness alone asks for the retrain. The labels
land later with the ``group`` column (predictions keep only ids and predictions). The
champion is registered by hand (no model is needed: the check scores stored predictions) with
its gate record at promotion (``mlops/fairness.json``, computed by the gate's own function).

Real MLflow server, real Airflow task runner (``dag.test()``) for the decay task, the
monitoring summary and the notify task built by the factories, and a real SMTP server
(aiosmtpd) receiving the ``fairness`` e-mail.
"""

from __future__ import annotations

import email
import email.policy
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from airflow.sdk import DAG
from conftest import serialize_dag
from devkit import free_port
from test_drift_operator import retrain_events, states, unique_name, write_parquet, xcom_result

from airflow_mlops.core.errors import DataError

DAYS = ["2026-11-29", "2026-11-30"]
ROWS = 450
SPEC = {
    "sensitive": ["group"],
    "metrics": {
        "recall": {"max": 0.10},
        "demographic_parity_difference": {"max": 0.5},
    },
}


def _pets(rows: int, seed: int, small_group: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pet = rng.choice(["cat", "dog", "bird"], size=rows)
    group = np.where(rng.random(rows) < 0.5, "A", "B")
    if small_group:
        group[:5] = "C"  # too few rows to judge: reported, never a silent pass
    wrong = rng.random(rows) < 0.1
    other = {"cat": "dog", "dog": "bird", "bird": "cat"}
    prediction = np.where(wrong, [other[p] for p in pet], pet)
    return pd.DataFrame({"pet": pet, "group": group, "prediction": prediction})


def _unfair(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """60 % of group A's cats predicted ``dog``: recall of cat drops by 0.23."""
    out = frame.copy()
    hit = (out["pet"] == "cat") & (out["group"] == "A")
    hit &= np.random.default_rng(seed).random(len(out)) < 0.6
    out.loc[hit, "prediction"] = "dog"
    return out


@contextmanager
def session_on(client: Any) -> Any:
    yield client


@pytest.fixture(scope="module")
def world(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pipeline config, the hand-registered champion, two days of stored predictions."""
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.fairness import FAIRNESS_ARTIFACT, FairnessSpec, measure_fairness
    from airflow_mlops.factories.config import parse_config

    root = tmp_path_factory.mktemp("fairness_monitoring")
    name = unique_name("fairmon")
    client = MlflowClient(mlflow_server)
    experiment = client.create_experiment(name)
    run_id = client.create_run(
        experiment, tags={"mlops.target": "pet", "mlops.task": "classification"}
    ).info.run_id
    client.log_metric(run_id, "holdout_accuracy", 0.9)
    promotion = _pets(900, seed=1)
    spec = FairnessSpec.model_validate(SPEC)
    measured = measure_fairness(
        spec, promotion, promotion["pet"].to_numpy(), promotion["prediction"].to_numpy(), None
    )
    client.log_dict(run_id, {"spec": SPEC, **measured, "rules": []}, FAIRNESS_ARTIFACT)
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id).version
    client.set_registered_model_alias(name, "champion", version)

    frames = {
        DAYS[0]: _pets(ROWS, seed=2),
        DAYS[1]: _unfair(_pets(ROWS, 3, small_group=True), seed=4),
    }
    for day, frame in frames.items():
        frame.insert(0, "request_id", [f"{day}-{i}" for i in range(len(frame))])
        stored = frame[["request_id", "prediction"]].assign(
            model_name=name, model_version=int(version)
        )
        write_parquet(stored, root / "predictions" / f"dt={day}" / "part-0.parquet")
    raw = {
        "name": name,
        "data": {
            "train_uri": str(root / "train/"),
            "target": "pet",
            "inference_uri": str(root / "inference/"),
            "predictions_uri": str(root / "predictions/"),
            "id_columns": ["request_id"],
            "allowed_prefixes": [str(root)],
        },
        "evaluation": {"fairness": SPEC},
        "monitoring": {
            "debounce_hours": 0,
            "decay": {
                "labels_uri": str(root / "labels/"),
                "metric": "accuracy",
                "tolerance": 0.2,  # accuracy falls by ~0.09: fairness alone triggers
            },
        },
        "notifications": {
            "notifiers": {
                "ops": {"type": "smtp", "to": ["ops@example.com"], "smtp_conn_id": "smtp_f"}
            },
            "events": {"fairness": ["ops"]},
        },
    }
    return {
        "root": root,
        "name": name,
        "run_id": run_id,
        "version": version,
        "frames": frames,
        "raw": raw,
        "config": parse_config(raw),
        "client": client,
    }


def land_labels(world: dict[str, Any], days: list[str], columns: list[str]) -> str:
    labels = world["root"] / f"labels-{'-'.join(columns)}-{len(days)}"
    for day in days:
        frame = world["frames"][day][["request_id", "pet", *columns]]
        write_parquet(frame, labels / f"dt={day}" / "part-0.parquet")
    return str(labels)


def check(world: dict[str, Any], labels: str, spec: dict[str, Any], tag: str) -> Any:
    import fsspec

    from airflow_mlops.core.champion import read_champion
    from airflow_mlops.core.fairness import FairnessSpec
    from airflow_mlops.core.performance import DecaySettings, check_partitioned_performance
    from airflow_mlops.core.storage import Storage

    client = world["client"]
    return check_partitioned_performance(
        read_champion(client, world["name"]),
        lambda uri: fsspec.filesystem("file"),
        Storage(),
        predictions_uri=str(world["root"] / "predictions"),
        labels_uri=labels,
        id_columns=["request_id"],
        settings=DecaySettings(metric="accuracy", min_labelled_rows=50),
        mlflow_session=lambda: session_on(client),
        report_uri=str(world["root"] / f"{tag}.json"),
        mlflow_artifact=f"monitoring/performance/{tag}/performance.json",
        fairness=FairnessSpec.model_validate(spec),
    )


def test_a_partition_within_bounds_gives_no_fairness_verdict(world):
    outcome = check(world, land_labels(world, DAYS[:1], ["group"]), SPEC, "fair")

    fairness = outcome.result()["fairness"]
    assert fairness["breached"] is False and outcome.triggered is False, fairness
    assert fairness["partition"] == f"dt={DAYS[0]}" and fairness["rows"] == ROWS
    assert fairness["reason"] == f"fairness: within bounds on partition dt={DAYS[0]} [rows {ROWS}]"
    assert fairness["breaches"] == [] and fairness["not_applicable"] == []
    assert not outcome.reason.startswith("fairness"), outcome.reason
    [measured] = outcome.record["fairness_partitions"]
    assert abs(measured["values"]["recall/class_cat"] - 0.9) < 0.08, measured["values"]


def test_a_missing_sensitive_column_is_a_named_error(world):
    labels = land_labels(world, DAYS[:1], [])  # the labels landed without ``group``
    with pytest.raises(DataError, match=r"sensitive column\(s\) \['group'\] are in neither"):
        check(world, labels, SPEC, "missing")


@pytest.fixture(scope="module")
def smtp() -> Any:
    from aiosmtpd.controller import Controller

    class Inbox:
        messages: list[email.message.EmailMessage] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.messages.append(parsed)
            return "250 OK"

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    extra = {"disable_ssl": True, "disable_tls": True, "from_email": "mlops@example.com"}
    conn = {"conn_type": "smtp", "host": "127.0.0.1", "port": controller.port, "extra": extra}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_SMTP_F", json.dumps(conn))
        yield inbox
    controller.stop()


def test_a_crossed_bound_emits_the_retrain_signal_and_the_fairness_notification(
    world, smtp, mlflow_conn, run_dag
):
    from airflow_mlops.factories.monitoring import _decay_operator, _summary_task
    from airflow_mlops.factories.notify import monitoring_notify_task

    config, name = world["config"], world["name"]
    # Day 1 already checked (test above, on other labels): both days labelled now.
    labels = land_labels(world, DAYS, ["group"])
    config = config.model_copy(
        update={
            "monitoring": config.monitoring.model_copy(
                update={"decay": config.monitoring.decay.model_copy(update={"labels_uri": labels})}
            )
        }
    )
    with DAG(unique_name("fairmon"), schedule=None) as dag:
        decay = _decay_operator(config)(model_name=name)
        decay >> _summary_task(config, [("decay", "decay")])([name], False)
        monitoring_notify_task(config)
    serialize_dag(dag)
    dag_run = run_dag(dag)

    assert states(dag_run) == {"decay": "success", "summary": "success", "notify": "success"}
    result = xcom_result(dag_run, "decay")
    fairness = result["fairness"]
    assert fairness["breached"] is True and result["decayed"] is False, result["reason"]
    [breach] = fairness["breaches"]
    assert breach.startswith("recall of class 'cat' dropped by 0.")
    assert breach.endswith("(> 0.100)") and "since promotion" in breach
    where = f"on partition dt={DAYS[1]} [rows {ROWS}]"
    assert result["reason"].startswith(f"fairness: {breach} {where}; no performance decay: ")
    # Group C has 5 rows: reported as not enough rows, never judged.
    assert any("'C'" in s and "not enough rows (5)" in s for s in fairness["not_enough_rows"])
    # The same retrain signal as decay.
    assert result["retrain_signal"]["emit"] is True
    [event] = retrain_events(name)
    assert event["extra"]["trigger"] == "performance_decay"
    assert event["extra"]["fairness_breached"] is True
    assert event["extra"]["reason"].startswith("fairness: recall of class 'cat'")
    # The run summary names the breach.
    [checked] = xcom_result(dag_run, "summary")["checked"]
    assert checked["reason"].startswith(f"fairness: {breach} {where}")
    # The notification.
    notified = xcom_result(dag_run, "notify")
    assert notified["events"] == ["fairness"], notified
    assert [r["ok"] for r in notified["notifications"]] == [True], notified
    [message] = [m for m in smtp.messages if f"[mlops] fairness: {name} " in str(m["subject"])]
    assert str(message["subject"]) == f"[mlops] fairness: {name} (champion v{world['version']})"
    body = message.get_body(("html", "plain")).get_content()
    assert "recall of class &#x27;cat&#x27; dropped by 0." in body, body
    # The history: one point per partition on the champion's run, day 1 logged once.
    history = world["client"].get_metric_history(world["run_id"], "fairness/recall/class_cat")
    by_step = {m.step: m.value for m in history}
    assert len(history) == 2 and len(by_step) == 2, history
    day1, day2 = (by_step[s] for s in sorted(by_step))
    assert day1 - day2 > 0.2
    # The report keeps every partition; the XCom only the verdict.
    report = json.loads(Path(result["report_uri"]).read_text())
    assert [p["partition"] for p in report["fairness_partitions"]] == [f"dt={d}" for d in DAYS]
    assert "fairness_partitions" not in result


def test_config_wires_fairness_into_the_decay_task_and_refuses_an_unsent_event(world):
    from airflow_mlops.core.errors import ConfigError
    from airflow_mlops.factories.config import parse_config
    from airflow_mlops.factories.monitoring import monitoring_dag
    from airflow_mlops.operators.performance import ModelPerformanceOperator

    config = world["config"]
    decay = monitoring_dag(config).get_task("decay")
    assert decay.fairness["metrics"]["recall"]["max"] == 0.10
    raw = {**world["raw"], "evaluation": {}}
    with pytest.raises(ConfigError, match=r"events\.fairness: fairness is monitored by the decay"):
        parse_config(raw)
    with pytest.raises(ConfigError, match="fairness monitoring needs delayed labels"):
        ModelPerformanceOperator(task_id="d", model_name="m", labels_uri="/l/", fairness=SPEC)
