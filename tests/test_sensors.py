"""Registry sensors and triggers against the real MLflow server: poke, trigger ``run()``, deferral."""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
import time
import uuid
from typing import Any

import pytest
from conftest import stored_xcom

from airflow_mlops.core.errors import ConfigError
from airflow_mlops.sensors.registry import (
    ModelAliasChangedSensor,
    ModelVersionReadySensor,
)
from airflow_mlops.triggers.registry import (
    ModelAliasChangedTrigger,
    ModelVersionReadyTrigger,
)

# -- helpers ---------------------------------------------------------------------------------


class Registry:
    """One tiny logged sklearn model; new registered versions are created from it instantly."""

    def __init__(self, tracking_uri: str) -> None:
        import mlflow
        import numpy as np
        from mlflow.tracking import MlflowClient
        from sklearn.linear_model import LinearRegression

        from airflow_mlops.core.mlflow_settings import MlflowSettings, mlflow_environment

        self.name = f"sense-{uuid.uuid4().hex[:8]}"
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        x = np.arange(8.0).reshape(4, 2)
        with mlflow_environment(MlflowSettings(tracking_uri=tracking_uri)):
            mlflow.set_experiment("airflow-mlops-sensor-tests")
            with mlflow.start_run() as run:
                self.info = mlflow.sklearn.log_model(
                    LinearRegression().fit(x, x[:, 0]),
                    name="model",
                    pip_requirements=["scikit-learn", "cloudpickle"],
                    # Never loaded here; cloudpickle skips skops' slow module scan on save.
                    serialization_format="cloudpickle",
                )
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self.client.create_registered_model(self.name)

    def new_version(self) -> int:
        mv = self.client.create_model_version(
            self.name, self.info.model_uri, run_id=self.run_id, model_id=self.info.model_id
        )
        return int(mv.version)

    def set_alias(self, alias: str, version: int) -> None:
        self.client.set_registered_model_alias(self.name, alias, str(version))


@pytest.fixture(scope="module")
def registry(mlflow_server: str) -> Registry:
    reg = Registry(mlflow_server)
    reg.new_version()  # 1
    reg.new_version()  # 2
    reg.set_alias("champion", 2)
    return reg


def xcom_value(dag_run: Any, task_id: str, key: str = "return_value") -> Any:
    return stored_xcom(dag_run, task_id, key)


def new_dag(prefix: str) -> Any:
    from airflow.sdk import DAG

    return DAG(
        dag_id=f"{prefix}_{uuid.uuid4().hex[:8]}",
        schedule=None,
        start_date=datetime.datetime(2026, 1, 1),
    )


def first_event(trigger: Any, timeout_s: float = 60) -> Any:
    async def _first() -> Any:
        return await asyncio.wait_for(anext(trigger.run()), timeout_s)

    return asyncio.run(_first())


def after(seconds: float, action: Any) -> threading.Thread:
    def _run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=_run, daemon=True)
    thread.start()
    return thread


# -- poke mode in dag.test() -----------------------------------------------------------------


def test_sensors_in_poke_mode_complete_in_dag_test(registry, mlflow_conn, mlflow_server, run_dag):
    with new_dag("sense_poke") as dag:
        ready = ModelVersionReadySensor(
            task_id="ready",
            model_name=registry.name,
            version="{{ params.version }}",
            deferrable=False,
            poke_interval=1,
            timeout=60,
            params={"version": 1},
        )
        moved = ModelAliasChangedSensor(
            task_id="moved",
            model_name=registry.name,
            alias="champion",
            previous_version=1,
            deferrable=False,
            poke_interval=1,
            timeout=60,
        )
        ready >> moved
    dag_run = run_dag(dag)
    assert dag_run.state == "success"

    ready_xcom = xcom_value(dag_run, "ready")
    assert ready_xcom["state"] == "ready" and ready_xcom["registry_status"] == "READY"
    assert ready_xcom["model_uri"] == f"models:/{registry.name}/1"
    assert ready_xcom["run_id"] == registry.run_id
    moved_xcom = xcom_value(dag_run, "moved")
    assert moved_xcom["version"] == "2" and moved_xcom["previous_version"] == "1"
    assert moved_xcom["model_uri"] == f"models:/{registry.name}/2"
    # Links formatted by Airflow from the persisted parameters.
    assert xcom_value(dag_run, "moved", "_link_MlflowModelVersionLink") == (
        f"{mlflow_server}/#/models/{registry.name}/versions/2"
    )
    assert xcom_value(dag_run, "ready", "_link_MlflowRunLink") == (
        f"{mlflow_server}/#/experiments/{registry.experiment_id}/runs/{registry.run_id}"
    )


# -- triggers run directly against the server ------------------------------------------------


def test_version_trigger_waits_for_a_version_created_later(registry, mlflow_conn):
    existing = registry.client.search_model_versions(f"name='{registry.name}'")
    upcoming = max(int(v.version) for v in existing) + 1
    trigger = ModelVersionReadyTrigger(
        model_name=registry.name, version=upcoming, mlflow_conn_id=mlflow_conn, poll_interval=0.5
    )
    started = time.monotonic()
    creator = after(2.0, registry.new_version)
    event = first_event(trigger)
    creator.join()
    assert time.monotonic() - started >= 2.0  # it polled until the version existed
    assert event.payload["status"] == "success"
    assert event.payload["version"] == str(upcoming)
    assert event.payload["registry_status"] == "READY"
    assert event.payload["experiment_id"] == registry.experiment_id


def test_alias_trigger_fires_when_the_alias_moves(registry, mlflow_conn):
    v_old = registry.new_version()
    v_new = registry.new_version()
    registry.set_alias("staging", v_old)
    trigger = ModelAliasChangedTrigger(
        model_name=registry.name,
        alias="staging",
        previous_version=v_old,
        mlflow_conn_id=mlflow_conn,
        poll_interval=0.5,
    )
    mover = after(2.0, lambda: registry.set_alias("staging", v_new))
    event = first_event(trigger)
    mover.join()
    assert event.payload["status"] == "success"
    assert event.payload["version"] == str(v_new)
    assert event.payload["previous_version"] == str(v_old)


def test_alias_trigger_without_baseline_waits_for_the_alias_to_exist(registry, mlflow_conn):
    trigger = ModelAliasChangedTrigger(
        model_name=registry.name,
        alias="brand-new",
        previous_version=None,
        mlflow_conn_id=mlflow_conn,
        poll_interval=0.5,
    )
    mover = after(1.5, lambda: registry.set_alias("brand-new", 1))
    event = first_event(trigger)
    mover.join()
    assert event.payload["status"] == "success" and event.payload["version"] == "1"


def test_trigger_reports_an_unreachable_server_as_an_error(monkeypatch):
    from devkit import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEAD",
        json.dumps(
            {"conn_type": "mlflow", "host": dead, "extra": {"timeout": 2, "max_retries": 0}}
        ),
    )
    trigger = ModelVersionReadyTrigger(
        model_name="m", version=1, mlflow_conn_id="mlflow_dead", poll_interval=0.5
    )
    event = first_event(trigger)
    assert event.payload["status"] == "error"
    assert dead in event.payload["message"]


def test_triggers_serialize_to_an_importable_classpath():
    from airflow.sdk._shared.module_loading import import_string

    for trigger in (
        ModelVersionReadyTrigger(model_name="m", version=3, mlflow_conn_id="c", poll_interval=7),
        ModelAliasChangedTrigger(
            model_name="m", alias="champion", previous_version=4, mlflow_conn_id="c"
        ),
    ):
        classpath, kwargs = trigger.serialize()
        assert classpath.startswith("airflow_mlops.triggers.registry.")
        json.dumps(kwargs)  # JSON-safe
        rebuilt = import_string(classpath)(**kwargs)
        assert rebuilt.serialize() == (classpath, kwargs)


# -- deferral in dag.test() ------------------------------------------------------------------


def _wait_for_trigger_row(classpath: str, since: datetime.datetime, timeout_s: float = 120) -> bool:
    """True once the task deferred: Airflow stored a Trigger row for our trigger class."""
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from sqlalchemy import select

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with create_session() as session:
            found = session.scalars(
                select(Trigger.id).where(
                    Trigger.classpath == classpath, Trigger.created_date >= since
                )
            ).first()
        if found is not None:
            return True
        time.sleep(0.3)
    return False


def test_deferrable_sensor_defers_and_resumes_in_dag_test(registry, mlflow_conn, run_dag):
    v_old = registry.new_version()
    v_new = registry.new_version()
    registry.set_alias("prod", v_old)
    classpath = "airflow_mlops.triggers.registry.ModelAliasChangedTrigger"
    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    deferred = threading.Event()

    def move_alias_once_deferred() -> None:
        # Move the alias only after the task handed over to the trigger, so the sensor can
        # only complete through the trigger's event.
        if _wait_for_trigger_row(classpath, since):
            deferred.set()
            registry.set_alias("prod", v_new)

    with new_dag("sense_defer") as dag:
        ModelAliasChangedSensor(
            task_id="moved",
            model_name=registry.name,
            alias="prod",
            deferrable=True,
            poke_interval=0.5,
            timeout=120,
        )
    mover = threading.Thread(target=move_alias_once_deferred, daemon=True)
    mover.start()
    dag_run = run_dag(dag)
    mover.join(timeout=5)
    assert deferred.is_set(), "the sensor never deferred"
    assert dag_run.state == "success"
    result = xcom_value(dag_run, "moved")
    assert result["version"] == str(v_new) and result["previous_version"] == str(v_old)


def test_deferrable_sensor_does_not_defer_when_already_done(registry, mlflow_conn, run_dag):
    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    with new_dag("sense_nodefer") as dag:
        ModelVersionReadySensor(
            task_id="ready", model_name=registry.name, version=1, deferrable=True, timeout=60
        )
    dag_run = run_dag(dag)
    assert dag_run.state == "success"
    assert not _wait_for_trigger_row(
        "airflow_mlops.triggers.registry.ModelVersionReadyTrigger", since, timeout_s=0.5
    )
    assert xcom_value(dag_run, "ready")["version"] == "1"


# -- parameters and events (no server) -------------------------------------------------------


def test_deferrable_defaults_from_airflow_config(monkeypatch):
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    assert ModelVersionReadySensor(task_id="a", model_name="m", version=1).deferrable is True
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    assert ModelVersionReadySensor(task_id="b", model_name="m", version=1).deferrable is False
    assert (
        ModelVersionReadySensor(task_id="c", model_name="m", version=1, deferrable=True).deferrable
        is True
    )


def test_reschedule_mode_needs_a_previous_version():
    with pytest.raises(ConfigError, match="previous_version is required in reschedule mode"):
        ModelAliasChangedSensor(task_id="a", model_name="m", mode="reschedule", deferrable=False)
    ModelAliasChangedSensor(
        task_id="b", model_name="m", mode="reschedule", previous_version=3, deferrable=False
    )


def test_template_fields():
    assert set(ModelVersionReadySensor.template_fields) == {
        "model_name",
        "version",
        "mlflow_conn_id",
    }
    assert set(ModelAliasChangedSensor.template_fields) == {
        "model_name",
        "alias",
        "previous_version",
        "mlflow_conn_id",
    }


@pytest.mark.parametrize(
    ("event", "error", "match"),
    [
        (None, "AirflowException", "malformed event"),
        ({"no": "status"}, "AirflowException", "malformed event"),
        ({"status": "error", "message": "boom"}, "AirflowException", "boom"),
        ({"status": "failed", "message": "failed registration"}, "AirflowFailException", "failed"),
        ({"status": "weird"}, "AirflowException", "unknown trigger event status"),
        (
            {"status": "success", "state": "pending", "version": "1"},
            "AirflowException",
            "does not satisfy",
        ),
    ],
)
def test_execute_complete_validates_the_event(event, error, match):
    from airflow.sdk import exceptions

    sensor = ModelVersionReadySensor(task_id="a", model_name="m", version=1, deferrable=True)
    with pytest.raises(getattr(exceptions, error), match=match):
        sensor.execute_complete(context={}, event=event)


def test_alias_sensor_rejects_an_unchanged_success_event():
    from airflow.sdk.exceptions import AirflowException

    sensor = ModelAliasChangedSensor(task_id="a", model_name="m", deferrable=True)
    event = {"status": "success", "state": "changed", "version": "3", "previous_version": "3"}
    with pytest.raises(AirflowException, match="does not satisfy"):
        sensor.execute_complete(context={}, event=event)
